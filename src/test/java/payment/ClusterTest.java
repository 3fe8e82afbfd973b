package payment;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Several nodes, one payment service, on lin-kv: the cluster harness with its checker, and one node up close. */
class ClusterTest {
    @TempDir
    Path dir;

    private ClusterHarness.Settings settings(List<String> command, int kills) {
        return new ClusterHarness.Settings(command, 3, 4, 40, 20261127, kills, 5, 2000, dir);
    }

    /** Three nodes on lin-kv, killed and restarted while sagas run: the checker finds nothing wrong. */
    @Test
    void threeNodesOnLinKvWithKillsGiveNoAnomaly() throws Exception {
        ClusterHarness.Report report = new ClusterHarness(settings(Node.command(List.of(), "--store", "lin-kv"), 4)).run();
        assertTrue(report.valid(), report.summary());
        assertEquals(4, report.kills(), report.summary());
        assertEquals(report.requests(), report.answered(), "every request got a definite answer: " + report.summary());
        assertTrue(report.replies().getOrDefault("ChargePayment_ok", 0) > 100, report.summary());
        assertTrue(report.replies().getOrDefault("error 14", 0) > 0, "late charges of compensated steps: " + report.summary());
    }

    /** The checker can fail: nodes that share no state charge a retry sent elsewhere twice. */
    @Test
    void nodesWithoutASharedStoreAreCaughtChargingTwice() throws Exception {
        ClusterHarness.Report report = new ClusterHarness(settings(Node.command(List.of()), 0)).run();
        assertTrue(!report.valid(), report.summary());
        assertTrue(report.anomalies().stream().anyMatch(a -> a.contains("different charge results") || a.contains("was given to two keys")),
                report.summary());
    }

    // ---- one node up close, with the test playing lin-kv -------------------------------------------------

    private static String readLine(BufferedReader reader, int seconds) throws Exception {
        return CompletableFuture.supplyAsync(() -> {
            try {
                return reader.readLine();
            } catch (java.io.IOException e) {
                throw new RuntimeException(e);
            }
        }).get(seconds, TimeUnit.SECONDS);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parse(String line) throws Exception {
        return (Map<String, Object>) ClusterHarness.parse(line);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> body(Map<String, Object> message) {
        return (Map<String, Object>) message.get("body");
    }

    /**
     * Before init a cluster node can do nothing (11); its lin-kv requests carry msg_ids no earlier process
     * used; a reply of the wrong type is dropped; a lin-kv that does not answer in time gets the client an
     * indefinite error 0, and the late reply is ignored.
     */
    @Test
    void aNodeWaitsForLinKvNoLongerThanItsTimeoutAndIgnoresWhatComesLate() throws Exception {
        long startedAt = System.currentTimeMillis();
        Process node = Node.start(List.of(), dir.resolve("stderr"), "--store", "lin-kv", "--kv-timeout", "300");
        OutputStream stdin = node.getOutputStream();
        BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8));

        stdin.write(Wire.charge(1, "s", 1, "5").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        Map<String, Object> early = parse(readLine(stdout, 20));
        assertEquals(11L, body(early).get("code"), early.toString());

        stdin.write(Wire.envelope("c0", "{\"type\":\"init\",\"msg_id\":1,\"node_id\":\"n1\",\"node_ids\":[\"n1\",\"n2\"]}")
                .getBytes(StandardCharsets.UTF_8));
        stdin.write(Wire.charge(2, "s", 1, "5").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        // init reserves the first blocks of payment and refund ids, so that no first charge waits for one:
        // a read of each counter, then init_ok. The charge waits for the payment ids.
        Map<String, Object> read = parse(readLine(stdout, 10));
        assertEquals("lin-kv", read.get("dest"));
        assertEquals(Map.of("type", "read", "key", "ids/payments", "msg_id", body(read).get("msg_id")), body(read));
        Map<String, Object> readRefundIds = parse(readLine(stdout, 10));
        assertEquals(Map.of("type", "read", "key", "ids/refunds", "msg_id", (Long) body(read).get("msg_id") + 1), body(readRefundIds));
        assertEquals("init_ok", body(parse(readLine(stdout, 10))).get("type"));
        long msgId = (Long) body(read).get("msg_id");
        assertTrue(msgId >= startedAt * 1000, "msg_ids start past any earlier process's: " + msgId);

        // A reply whose type does not fit the request is dropped; the request keeps waiting.
        stdin.write(("{\"src\":\"lin-kv\",\"dest\":\"n1\",\"body\":{\"type\":\"cas_ok\",\"in_reply_to\":" + msgId + "}}\n").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        Map<String, Object> timedOut = parse(readLine(stdout, 10));
        assertEquals(0L, body(timedOut).get("code"), timedOut.toString());
        assertEquals("lin-kv did not answer a read within 300 ms: the outcome is unknown; a retry will tell", body(timedOut).get("text"));
        assertEquals(2L, body(timedOut).get("in_reply_to"));

        // The real reply, late: ignored (and never answered).
        stdin.write(("{\"src\":\"lin-kv\",\"dest\":\"n1\",\"body\":{\"type\":\"error\",\"code\":20,\"in_reply_to\":" + msgId + "}}\n").getBytes(StandardCharsets.UTF_8));

        // A value this service never writes: the client gets an indefinite error, and the node goes on.
        stdin.write(Wire.charge(3, "s", 1, "5").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        Map<String, Object> again = parse(readLine(stdout, 10));
        assertEquals("read", body(again).get("type"));
        stdin.write(("{\"src\":\"lin-kv\",\"dest\":\"n1\",\"body\":{\"type\":\"read_ok\",\"value\":[1,2],\"in_reply_to\":"
                + body(again).get("msg_id") + "}}\n").getBytes(StandardCharsets.UTF_8));
        stdin.flush();
        Map<String, Object> strange = parse(readLine(stdout, 10));
        assertEquals(13L, body(strange).get("code"), strange.toString());
        assertEquals(3L, body(strange).get("in_reply_to"));
        stdin.close();
        assertEquals(null, readLine(stdout, 10), "nothing more on stdout");
        assertTrue(node.waitFor(10, TimeUnit.SECONDS));
        assertEquals(0, node.exitValue());
        String log = Files.readString(dir.resolve("stderr"));
        assertTrue(log.contains("a reply of type cas_ok to a read (msg_id " + msgId + "): dropped"), log);
        assertTrue(log.contains("a reply from lin-kv (in_reply_to " + msgId + "), and this node waits for none: dropped"), log);
        assertTrue(!log.contains("shares no state"), "a node of the cluster shares its state: " + log);
    }

    @Test
    void aClusterNodeTakesNoJournalBalanceOrFaults() {
        for (String[] args : List.of(new String[] {"--store", "lin-kv", "--journal", "j"}, new String[] {"--store=lin-kv", "--balance", "5"},
                new String[] {"--store", "lin-kv", "--faults", "drop=0.1"}, new String[] {"--store", "redis"})) {
            assertTrue(org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> PaymentNode.Options.parse(args)).getMessage().contains("--store"), String.join(" ", args));
        }
    }
}
