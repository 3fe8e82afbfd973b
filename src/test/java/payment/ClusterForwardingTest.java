package payment;

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * One node appends for all (docs/CLUSTER.md, "Forwarding"): a follower forwards its batch instead of racing for the
 * log's end, the appender carries it and pushes the landed slot back; a follower whose appender does not bring
 * its batch appends it itself, and a batch that lands twice (forwarded, then appended by its own node) is applied
 * once by every node. Played by {@link SimCluster}; the assertions are on the wire (who casts), the replies, and the
 * log as lin-kv holds it.
 */
class ClusterForwardingTest {
    private static final long KV_TIMEOUT_MILLIS = 400;

    private final ByteArrayOutputStream stderr = new ByteArrayOutputStream();
    private SimCluster cluster;
    private long msgId;
    /** The sender of every cas delivered since the last clear. */
    private final List<String> casSenders = new ArrayList<>();
    /** The sender of every read delivered since the last clear. */
    private final List<String> readSenders = new ArrayList<>();

    @AfterEach
    void stopNodes() throws InterruptedException {
        SimCluster.shutDown(cluster);
    }

    private long charge(String node, int step, SimCluster.Rule rule) {
        cluster.request(node, "c1", "{\"type\":\"ChargePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":" + step
                + ",\"params\":{\"user_id\":\"u1\",\"amount\":10}}");
        cluster.runUntilQuiet(recording(rule));
        return msgId;
    }

    /** The rule, and every cas it lets through noted by its sender. */
    private SimCluster.Rule recording(SimCluster.Rule rule) {
        return message -> {
            SimCluster.Fate fate = rule.fate(message);
            if (fate == SimCluster.Fate.DELIVER && "cas".equals(message.type())) {
                casSenders.add(message.src);
            }
            if (fate == SimCluster.Fate.DELIVER && "read".equals(message.type())) {
                readSenders.add(message.src);
            }
            return fate;
        };
    }

    private String paymentIdOf(long request) {
        for (JsonNode message : cluster.clientReplies) {
            if (message.path("body").path("in_reply_to").asLong(-1) == request) {
                assertEquals("ChargePayment_ok", message.path("body").path("type").asText(), message.toString());
                return message.path("body").path("result").path("payment_id").asText();
            }
        }
        throw new AssertionError("no reply to request " + request);
    }

    /** The entries of the log as lin-kv holds them, slot 1 first. */
    private List<ClusterService.LogEntry> log() {
        return cluster.logEntries();
    }

    /**
     * n1 and n2 append for themselves at first (neither has applied an entry of the other), each losing a slot to
     * the other; once n2 has applied an entry of n1's (a status read on n2 reads slot 3), n2 takes n1, the lesser
     * id, for the appender.
     */
    private void twoNodesWithAnAppender() {
        cluster = new SimCluster(List.of("n1", "n2"), KV_TIMEOUT_MILLIS, stderr, null);
        cluster.runUntilQuiet(SimCluster.HONEST);
        assertEquals("p1", paymentIdOf(charge("n1", 1, SimCluster.HONEST)));
        assertEquals("p2", paymentIdOf(charge("n2", 2, SimCluster.HONEST)), "slot 1 lost to n1, then slot 2");
        assertEquals("p3", paymentIdOf(charge("n1", 3, SimCluster.HONEST)), "slot 2 lost to n2, then slot 3");
        cluster.request("n2", "c1", "{\"type\":\"PaymentStatus\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":3}");
        cluster.runUntilQuiet(SimCluster.HONEST);
        casSenders.clear();
        readSenders.clear();
    }

    @Test
    void aFollowerForwardsItsBatchAndTheAppendersEntryCarriesIt() {
        twoNodesWithAnAppender();
        long forwarded = charge("n2", 4, SimCluster.HONEST);
        assertEquals("p4", paymentIdOf(forwarded));
        assertEquals(List.of("n1"), casSenders, "the follower casts nothing: the appender's one cas carries its batch");
        List<ClusterService.LogEntry> log = log();
        assertEquals(4, log.size());
        ClusterService.LogEntry carrier = log.get(3);
        assertEquals("n1", carrier.appender());
        assertEquals(1, carrier.batches().size(), "n2's batch alone");
        assertTrue(carrier.batches().get(0).id().startsWith("n2/"), carrier.batches().get(0).id());
        assertEquals(forwarded, carrier.batches().get(0).requests().get(0).msgId(), "the forwarded request, as its client sent it");
        assertEquals(List.of(), readSenders, "n2 read nothing to answer it: n1 pushed the slot to it");
    }

    @Test
    void aBatchTheAppenderDoesNotBringIsAppendedByItsNodeAndAppliedOnceWhenBothLand() throws InterruptedException {
        twoNodesWithAnAppender();
        // A capture before its reservation, forwarded and held: n1 never hears of it in time; n2 appends it itself
        // after the patience, and the table refuses it (14, nothing recorded).
        SimCluster.Rule holdForwards = message -> message.src.equals("n2") && message.dest.equals("n1") ? SimCluster.Fate.HOLD : SimCluster.Fate.DELIVER;
        long capture = send("n2", "{\"type\":\"CapturePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":4,"
                + "\"params\":{\"payment_id\":\"p4\",\"amount\":10}}", holdForwards);
        assertEquals(1, cluster.held.size(), "the forward, held");
        Thread.sleep(KV_TIMEOUT_MILLIS / 4 + 20);
        cluster.expireAll();   // time passes: n2's patience runs out
        cluster.runUntilQuiet(recording(SimCluster.HONEST));
        assertEquals(14, replyTo(capture).path("code").asInt(), replyTo(capture).toString());
        assertEquals(List.of("n2"), casSenders, "n2 appended its batch itself");
        assertTrue(stderr.toString().contains("appending it here"), "the takeover is logged");

        // The reservation comes to n2 (which appends it itself: n1 let it down), then the held forward reaches n1,
        // which has applied neither: it carries the capture again, and its entry lands after the reservation.
        // Applied again the capture would succeed; every node skips the copy instead.
        long reserve = send("n2", "{\"type\":\"ReservePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":4,"
                + "\"params\":{\"user_id\":\"u1\",\"amount\":10}}", SimCluster.HONEST);
        assertEquals("p4", replyTo(reserve).path("result").path("payment_id").asText(), replyTo(reserve).toString());
        cluster.release(message -> true);
        cluster.runUntilQuiet(SimCluster.HONEST);
        List<ClusterService.LogEntry> log = log();
        long copies = log.stream().flatMap(entry -> entry.batches().stream())
                .filter(batch -> Long.valueOf(capture).equals(batch.requests().get(0).msgId())).count();
        assertEquals(2, copies, "the capture is in the log twice: in n2's entry, then in n1's after the reservation");
        for (String node : List.of("n1", "n2")) {
            long status = send(node, "{\"type\":\"PaymentStatus\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":4}", SimCluster.HONEST);
            assertEquals("reserved", replyTo(status).path("status").asText(), node + " applied the copy: " + replyTo(status));
        }
    }

    private long send(String node, String body, SimCluster.Rule rule) {
        cluster.request(node, "c1", body);
        cluster.runUntilQuiet(recording(rule));
        return msgId;
    }

    private JsonNode replyTo(long request) {
        for (JsonNode message : cluster.clientReplies) {
            if (message.path("body").path("in_reply_to").asLong(-1) == request) {
                return message.path("body");
            }
        }
        throw new AssertionError("no reply to request " + request);
    }
}
