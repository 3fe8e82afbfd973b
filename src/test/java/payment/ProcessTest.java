package payment;

import org.junit.jupiter.api.Test;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The node as a real process on real pipes, started the way run.sh starts it. */
class ProcessTest {

    private static Process start(String... args) throws IOException {
        return Node.start(args);
    }

    /** Each reply is on stdout while the node waits for more input: an interactive client is never left waiting. */
    @Test
    void answersEachRequestBeforeWaitingForTheNextAndExits0AtEndOfInput() throws Exception {
        Process node = start();
        OutputStream stdin = node.getOutputStream();
        BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8));

        stdin.write(Wire.init(1).getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        assertEquals(Wire.initOk(1, 0).trim(), Lines.readLine(stdout, Duration.ofSeconds(20)));

        stdin.write(Wire.charge(2, "saga42", 2, "99.99").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        assertEquals(Wire.chargeOk("saga42", 2, "p1", "99.99").to(2, 1).trim(), Lines.readLine(stdout, Duration.ofSeconds(10)));

        stdin.write(Wire.charge(3, "saga42", 2, "99.99").getBytes(StandardCharsets.UTF_8));
        stdin.close();
        assertEquals(Wire.chargeOk("saga42", 2, "p1", "99.99").cached().to(3, 2).trim(), Lines.readLine(stdout, Duration.ofSeconds(10)));
        assertEquals(null, Lines.readLine(stdout, Duration.ofSeconds(10)), "nothing but replies on stdout");
        assertTrue(node.waitFor(10, TimeUnit.SECONDS));
        assertEquals(0, node.exitValue());
    }

    /** run.sh passes a class-data archive when it has one: a broken one must change nothing that is printed. */
    @Test
    void aBrokenClassDataArchiveChangesNothingOnStdout() throws Exception {
        java.nio.file.Path junk = java.nio.file.Files.createTempFile("broken", ".jsa");
        java.nio.file.Files.writeString(junk, "not an archive");
        Process node = Node.start(java.util.List.of("-XX:SharedArchiveFile=" + junk), null);
        node.getOutputStream().write((Wire.init(1) + Wire.charge(2, "saga42", 2, "99.99")).getBytes(StandardCharsets.UTF_8));
        node.getOutputStream().close();
        String out = new String(node.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(node.waitFor(20, TimeUnit.SECONDS));
        assertEquals(0, node.exitValue());
        assertEquals(Wire.initOk(1, 0)
                + Wire.chargeOk("saga42", 2, "p1", "99.99").to(2, 1), out);
        java.nio.file.Files.delete(junk);
    }

    @Test
    void helpGoesToStdoutAndExits0() throws Exception {
        Process node = start("--help");
        String out = new String(node.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(node.waitFor(20, TimeUnit.SECONDS));
        assertEquals(0, node.exitValue());
        assertEquals(CommandLine.USAGE, out);
    }

    @Test
    void anUnknownOptionIsAUsageErrorOnStderr() throws Exception {
        assertEquals(new Node.Run(2, "", "payment-node: unknown option: --bogus (see --help)\n"), Node.runProcess("--bogus"));
    }
}
