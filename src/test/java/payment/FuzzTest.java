package payment;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.BufferedOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Hostile input for the real process with a 64 MB heap: after every bad line comes a probe (a fresh
 * charge), which must be answered correctly; every bad line that can be answered must be; the node
 * must reach the end of its input and exit 0.
 */
class FuzzTest {
    @TempDir
    Path dir;

    private static final int PROBE_IDS = 1_000_000;      // msg_id of the probe after bad input i: PROBE_IDS + i
    private static final int ANSWERABLE_IDS = 2_000_000; // msg_id of a bad but answerable line i: ANSWERABLE_IDS + i

    private static byte[] ascii(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    /** A charge line without its newline. */
    private static String request(int msgId, String sagaId, String amount) {
        return Wire.charge(msgId, sagaId, 1, amount).trim();
    }

    @Test
    void hostileInputNeverStopsTheNodeAndEveryProbeIsServed() throws Exception {
        Random random = new Random(7);
        Path input = dir.resolve("fuzz.in");
        Map<Integer, String> answerable = new TreeMap<>();   // msg_id -> the reply type it must get
        int bad = 0;
        try (OutputStream out = new BufferedOutputStream(Files.newOutputStream(input), 1 << 20)) {
            String template = request(0, "mut", "12.50");
            List<byte[]> hostile = new ArrayList<>();
            for (int i = 0; i < 400; i++) {                       // random bytes, newlines and all
                byte[] noise = new byte[1 + random.nextInt(300)];
                random.nextBytes(noise);
                hostile.add(noise);
            }
            for (int i = 0; i < 400; i++) {                       // truncated JSON
                hostile.add(ascii(template.substring(0, random.nextInt(template.length() - 1))));
            }
            for (int i = 0; i < 400; i++) {                       // single bytes flipped, dropped or doubled
                byte[] line = ascii(template);
                int at = random.nextInt(line.length);
                switch (random.nextInt(3)) {
                    case 0 -> line[at] = (byte) random.nextInt(256);
                    case 1 -> line = concat(Arrays.copyOf(line, at), Arrays.copyOfRange(line, at + 1, line.length));
                    default -> line = concat(Arrays.copyOf(line, at + 1), Arrays.copyOfRange(line, at, line.length));
                }
                hostile.add(line);
            }
            hostile.add(concat(ascii("{\"src\":\"c1\",\"body\":{\"type\":\"init\",\"saga_id\":\""), new byte[] {(byte) 0xC3, (byte) 0x28},
                    ascii("\"}}")));                                                                     // invalid UTF-8
            hostile.add(new byte[] {0, 0, '{', 0, '}'});                                                   // NUL bytes
            hostile.add(ascii("{\"src\":\"c1\",\"body\":{\"deep\":" + "[".repeat(100_000) + "]".repeat(100_000) + "}}"));
            for (byte[] line : hostile) {
                out.write(line);
                out.write('\n');
                out.write(ascii(request(PROBE_IDS + bad, "probe-" + bad, "1.5") + "\n"));
                bad++;
            }
            // Bad lines that can be answered, each with the reply it must get.
            List<String> answerableLines = List.of(
                    request(ANSWERABLE_IDS + bad, "digits", "9".repeat(100_000)),
                    request(ANSWERABLE_IDS + bad + 1, "exponent", "1e999999999"),
                    request(ANSWERABLE_IDS + bad + 2, "crlf", "3.25") + "\r",
                    request(ANSWERABLE_IDS + bad + 3, "x".repeat(50 << 20), "1"));           // a 50 MB saga_id: too long
            List<String> expectedTypes = List.of("error", "error", "ChargePayment_ok", "error");
            for (int i = 0; i < answerableLines.size(); i++) {
                answerable.put(ANSWERABLE_IDS + bad, expectedTypes.get(i));
                out.write(ascii(answerableLines.get(i) + "\n"));
                out.write(ascii(request(PROBE_IDS + bad, "probe-" + bad, "1.5") + "\n"));
                bad++;
            }
            out.write(ascii(request(PROBE_IDS + bad, "probe-" + bad, "1.5")));   // the last line has no newline
            bad++;
        }

        Path stdout = dir.resolve("fuzz.out");
        Path stderr = dir.resolve("fuzz.err");
        Process fuzzed = new ProcessBuilder(Node.command(List.of("-Xmx64m")))
                .redirectInput(input.toFile()).redirectOutput(stdout.toFile()).redirectError(stderr.toFile()).start();
        assertTrue(fuzzed.waitFor(180, TimeUnit.SECONDS), "the node hung");
        String errors = Files.readString(stderr);
        assertEquals(0, fuzzed.exitValue(), errors.length() > 2000 ? errors.substring(errors.length() - 2000) : errors);
        assertFalse(errors.contains("internal error"), "a bad line reached code 13");
        assertFalse(errors.contains("OutOfMemoryError"), "out of memory");

        int probes = 0;
        Map<Integer, String> answered = new TreeMap<>();
        for (String line : Files.readAllLines(stdout)) {
            Wire.Reply reply = Wire.read(line);
            if (reply.sagaId() != null && reply.sagaId().startsWith("probe-")) {
                assertEquals("ChargePayment_ok", reply.type(), line);
                assertEquals("1.5", reply.result().get("charged"), line);
                assertTrue(reply.result().get("payment_id").matches("p\\d+"), line);
                assertEquals(PROBE_IDS + probes, reply.inReplyTo(), "probes answered in order");
                assertEquals("probe-" + probes, reply.sagaId());
                probes++;
                continue;
            }
            if (reply.inReplyTo() != null && reply.inReplyTo() >= ANSWERABLE_IDS) {
                answered.put(reply.inReplyTo().intValue(), reply.type());
            }
        }
        assertEquals(bad, probes, "every probe after a bad line was served");
        assertEquals(answerable, answered, "every answerable bad line got its reply");
    }

    private static byte[] concat(byte[]... parts) {
        int size = 0;
        for (byte[] part : parts) {
            size += part.length;
        }
        byte[] all = new byte[size];
        int at = 0;
        for (byte[] part : parts) {
            System.arraycopy(part, 0, all, at, part.length);
            at += part.length;
        }
        return all;
    }
}
