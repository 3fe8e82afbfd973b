package payment.bench;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import payment.Node;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The benchmark's workload is the shared tools' (so that its figures compare with theirs), the node answers it
 * exactly as the benchmark expects, and a tiny benchmark run prints a well-formed report or, for a node that
 * answers otherwise, a failure. Nothing here asserts on a timing.
 */
@Tag("slow")
class BenchTest {
    @TempDir
    Path workDir;

    private static String sha256(byte[] bytes) throws NoSuchAlgorithmException {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
    }

    private record Workload(byte[] requests, byte[] replies, BenchWorkload.Counts counts) {
    }

    private static Workload workload(int messages, long seed) throws IOException {
        ByteArrayOutputStream requests = new ByteArrayOutputStream();
        ByteArrayOutputStream replies = new ByteArrayOutputStream();
        BenchWorkload.Counts counts = BenchWorkload.write(messages, seed, requests, replies);
        return new Workload(requests.toByteArray(), replies.toByteArray(), counts);
    }

    /**
     * The digests are those of {@code workload.py --messages 2000 --seed 1} (and of the Python peer's replies
     * to it, {@code peers/payment_node.py}), of {@code --messages 3000 --seed 4294967298} (a seed of two 32-bit
     * words) and of latency.py's {@code make_requests(2000, 7, 0.3)}, computed with the shared tools in
     * shared/bench/.
     */
    @Test
    void theWorkloadIsTheSharedToolsByteForByte() throws Exception {
        Workload small = workload(2000, 1);
        assertEquals("a43ee79cda2394b88f2bbcd9ee3294a1fbcf3c54289dc89015a479891c2c84d7", sha256(small.requests));
        assertEquals("4088d751d0546dd9dc2aca1a1ffa39e299dcbca09a0e6cc57a6ce980c62ff37e", sha256(small.replies));
        assertEquals("charge=1015, charge_retry=422, refund=395, refund_retry=168", small.counts.toString());
        assertEquals("8e38b9685981a95dccd99946550371c47adad98bc2ae343136e179c245082ac5", sha256(workload(3000, 4294967298L).requests));

        ByteArrayOutputStream latency = new ByteArrayOutputStream();
        for (BenchWorkload.Exchange exchange : BenchWorkload.latencyRequests(2000, 7)) {
            latency.write(exchange.request());
        }
        assertEquals("af558668386e3c6dda85f0177aa778a0225d5e577544daeb26ea0df5f35c2acf", sha256(latency.toByteArray()));
    }

    @Test
    void theNodeAnswersBothWorkloadsExactlyAsTheBenchmarkExpects() throws IOException {
        Workload workload = workload(2000, 3);
        assertEquals(new String(workload.replies, StandardCharsets.US_ASCII), Node.run(workload.requests).stdout());

        ByteArrayOutputStream requests = new ByteArrayOutputStream();
        StringBuilder replies = new StringBuilder(BenchWorkload.INIT_OK);
        requests.writeBytes(BenchWorkload.INIT.getBytes(StandardCharsets.US_ASCII));
        for (BenchWorkload.Exchange exchange : BenchWorkload.latencyRequests(500, 3)) {
            requests.writeBytes(exchange.request());
            replies.append(new String(exchange.reply(), StandardCharsets.US_ASCII));
        }
        assertEquals(replies.toString(), Node.run(requests.toByteArray()).stdout());
    }

    private Bench.Settings tiny(Bench.Side candidate) {
        Bench.Side node = new Bench.Side("baseline", "the node's classes", Node.command(List.of()));
        return new Bench.Settings(node, candidate, 2000, 1, 1, 200, 1, 60, workDir);
    }

    private static String printed(Bench.Report report, Bench.Settings settings) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        Bench.print(report, settings, new PrintStream(bytes, true, StandardCharsets.UTF_8));
        return bytes.toString(StandardCharsets.UTF_8);
    }

    @Test
    void aTinyRunPrintsEveryMetricForBothSidesWithTheirRatio() throws IOException {
        Bench.Settings settings = tiny(new Bench.Side("candidate", "the node's classes", Node.command(List.of())));
        Bench.Report report = Bench.run(settings, new PrintStream(ByteArrayOutputStream.nullOutputStream()));
        String out = printed(report, settings);

        assertEquals(0, report.status(), out);
        assertTrue(out.contains("\noutput:    identical (cmp): both sides wrote the 2,001 expected replies, byte for byte\n"), out);
        assertTrue(out.contains("workload:  init + 2,000 requests, seed 1 (charge=1015, charge_retry=422, refund=395, refund_retry=168)"), out);
        assertEquals(List.of("throughput, msg/s", "CPU per throughput run, s", "peak RSS, MiB", "latency p50, µs", "latency p90, µs",
                "latency p99, µs", "start-up to init_ok, ms"), report.rows().stream().map(Bench.Row::metric).toList());
        Pattern number = Pattern.compile("[0-9][0-9,]*(\\.[0-9]+)?");
        for (Bench.Row row : report.rows()) {
            assertTrue(row.baseline() > 0 && row.candidate() > 0, row.toString());
            String line = Bench.tableLine(row);
            assertTrue(out.contains("\n" + line + "\n"), line);
            String[] cells = line.split(" \\| ");
            assertEquals(5, cells.length, line);
            for (int cell = 1; cell <= 3; cell++) {
                assertTrue(number.matcher(cells[cell]).matches(), "cell " + cell + " of " + line);
            }
            assertEquals(String.format(java.util.Locale.ROOT, "%.3f", row.candidate() / row.baseline()), cells[3], line);
            assertTrue(cells[4].matches("(n/a|[0-9]+\\.[0-9]{2}\\*?)( / (n/a|[0-9]+\\.[0-9]{2}\\*?)| \\(both\\)) \\|"), line);
        }
        Matcher runs = Pattern.compile("(?m)^runs: (baseline|candidate) (throughput|latency|start-up)").matcher(out);
        int runLines = 0;
        while (runs.find()) {
            runLines++;
        }
        assertEquals(6, runLines, out);
    }

    /** A node whose replies are not the expected ones gets no figures: here cat, which echoes each request. */
    @Test
    void aSideThatAnswersOtherwiseIsAFailureNotAFigure() throws IOException {
        Bench.Settings settings = tiny(Bench.fromCommand("candidate", "cat"));
        Bench.Report report = Bench.run(settings, new PrintStream(ByteArrayOutputStream.nullOutputStream()));
        String out = printed(report, settings);

        assertEquals(1, report.status(), out);
        assertTrue(report.rows().isEmpty(), out);
        assertTrue(out.contains("output:    FAIL: candidate's reply 1 differs from the expected reply (byte 8):\n"
                + "           got:      " + BenchWorkload.INIT.strip() + "\n"
                + "           expected: " + BenchWorkload.INIT_OK.strip() + "\n"), out);
        assertFalse(out.contains("| throughput"), out);
    }

    /** The command line's --workload-only writes the file the shared tools can be run on, too. */
    @Test
    void theWorkloadFileIsTheSharedToolsWorkload() throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        PrintStream silent = new PrintStream(ByteArrayOutputStream.nullOutputStream());
        int status = Bench.cli(new String[] {"--workload-only", "--messages", "2000", "--workdir", workDir.toString()}, workDir,
                new PrintStream(out, true, StandardCharsets.UTF_8), silent);
        assertEquals(0, status, out.toString(StandardCharsets.UTF_8));
        assertEquals("a43ee79cda2394b88f2bbcd9ee3294a1fbcf3c54289dc89015a479891c2c84d7",
                sha256(java.nio.file.Files.readAllBytes(workDir.resolve("workload-2000-seed1.jsonl"))));
        assertEquals("4088d751d0546dd9dc2aca1a1ffa39e299dcbca09a0e6cc57a6ce980c62ff37e",
                sha256(java.nio.file.Files.readAllBytes(workDir.resolve("workload-2000-seed1.expected"))));
    }

    @Test
    void aBadOptionIsAUsageErrorBeforeAnythingRuns() {
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream silent = new PrintStream(ByteArrayOutputStream.nullOutputStream());
        int status = Bench.cli(new String[] {"--runs", "0"}, workDir, silent, new PrintStream(err, true, StandardCharsets.UTF_8));
        assertEquals(2, status);
        assertTrue(err.toString(StandardCharsets.UTF_8).startsWith("bench: --runs must be at least 1, got 0\nusage: tests/bench.sh"), err.toString());
    }
}
