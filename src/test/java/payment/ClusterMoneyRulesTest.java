package payment;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The four schedules of issue 20 that broke the choreography of records, intents and fences, each played by
 * {@link SimCluster} (a real linearizable lin-kv behind a network that holds, drops or delivers chosen
 * messages late) against the cluster that is the card's table fed by one log. Messages are chosen by what
 * they do (a node's write, a reply on its way to a node), never by a key's name, and the assertions are
 * about what clients are told and about money, so that the node may change its lin-kv calls and these tests
 * still mean the same. Each expected answer is the one node's answer in the order the requests reached the
 * log: no schedule gives the cluster an answer that no one-node order gives.
 */
class ClusterMoneyRulesTest {
    /** Long enough that no call of an honest step times out on a slow machine; only held or dropped calls do. */
    private static final long KV_TIMEOUT_MILLIS = 500;

    private final ByteArrayOutputStream stderr = new ByteArrayOutputStream();
    private SimCluster cluster;
    private long msgId;

    @AfterEach
    void stopNodes() throws InterruptedException {
        SimCluster.shutDown(cluster);
    }

    private SimCluster cluster(String... nodes) {
        return clusterWith(List.of(), nodes);
    }

    /** Nodes started with these options too (the same on every node, as a harness starts them). */
    private SimCluster clusterWith(List<String> options, String... nodes) {
        cluster = new SimCluster(List.of(nodes), KV_TIMEOUT_MILLIS, stderr, null, options.toArray(new String[0]));
        cluster.runUntilQuiet(SimCluster.HONEST);   // each node replays the (empty) log before it answers
        return cluster;
    }

    // ---- requests and replies ---------------------------------------------------------------------------

    /** Every request is of one saga, {@value #SAGA}: a refund may name the payment of another of its steps. */
    private static final String SAGA = "trip";

    private long charge(String node, int step, String amount, SimCluster.Rule rule) {
        return send(node, "{\"type\":\"ChargePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + SAGA
                + "\",\"step\":" + step + ",\"params\":{\"user_id\":\"u1\",\"amount\":" + amount + "}}", rule);
    }

    private long refund(String node, int step, String paymentId, String amount, SimCluster.Rule rule) {
        List<String> params = new ArrayList<>();
        if (paymentId != null) {
            params.add("\"payment_id\":\"" + paymentId + "\"");
        }
        if (amount != null) {
            params.add("\"amount\":" + amount);
        }
        return send(node, "{\"type\":\"RefundPayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + SAGA
                + "\",\"step\":" + step + ",\"compensating\":true" + (params.isEmpty() ? "" : ",\"params\":{" + String.join(",", params) + "}") + "}", rule);
    }

    private long status(String node, int step) {
        return send(node, "{\"type\":\"PaymentStatus\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + SAGA + "\",\"step\":" + step + "}", SimCluster.HONEST);
    }

    private long send(String node, String body, SimCluster.Rule rule) {
        cluster.request(node, "c1", body);
        cluster.runUntilQuiet(rule);
        return msgId;
    }

    /** The reply to request {@code id} (null: none yet), its body without in_reply_to and msg_id. */
    private JsonNode reply(long id) {
        JsonNode found = null;
        for (JsonNode message : cluster.clientReplies) {
            if (message.path("body").path("in_reply_to").asLong(-1) == id) {
                if (found != null) {
                    fail("two replies to request " + id + ": " + found + " and " + message);
                }
                found = message;
            }
        }
        if (found == null) {
            return null;
        }
        ObjectNode body = found.get("body").deepCopy();
        body.remove("in_reply_to");
        body.remove("msg_id");
        return body;
    }

    private static void assertBody(String expected, JsonNode actual, String what) {
        assertNotNull(actual, what + ": no reply");
        try {
            assertEquals(SimCluster.EXACT_JSON.readTree(expected), actual, what);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A node's own write to lin-kv (the append of its entry): what a pause or a kill cuts off. */
    private static SimCluster.Rule holdingWritesOf(String node) {
        return message -> message.src.equals(node) && "cas".equals(message.type()) ? SimCluster.Fate.HOLD : SimCluster.Fate.DELIVER;
    }

    private static boolean writeOf(SimCluster.Message message, String node) {
        return message.src.equals(node) && "cas".equals(message.type());
    }

    // ---- a: money invented from an orphan record ---------------------------------------------------------

    /**
     * A charge retried on a second node once left an orphan payment record behind (its id p2, its step naming
     * another payment), and a refund naming that id with no amount was answered "refunded 100" for money never
     * charged. On the log there is no record but the entries: the retry is answered from the table (p1,
     * cached), no id is used up, and p2 is a payment the service does not know: without an amount it is error
     * 12; with one it is refunded as asked and its step is closed, as on one node.
     */
    @Test
    void aRetryOnAnotherNodeLeavesNoPaymentBehindForARefundToDrawOn() {
        cluster("n1", "n2");
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"charged\":100}}",
                reply(charge("n1", 1, "100", SimCluster.HONEST)), "the charge");
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"charged\":100},\"note\":\"cached_result\"}",
                reply(charge("n2", 1, "100", SimCluster.HONEST)), "its retry on another node");

        JsonNode refused = reply(refund("n2", 2, "p2", null, SimCluster.HONEST));
        assertEquals(12, refused.path("code").asInt(), refused.toString());
        assertEquals("amount_required", refused.path("reason").asText(), refused.toString());

        assertBody("{\"type\":\"RefundPayment_ok\",\"saga_id\":\"trip\",\"step\":2,\"result\":{\"refund_id\":\"r1\",\"refunded\":5}}",
                reply(refund("n1", 2, "p2", "5", SimCluster.HONEST)), "a refund of a payment the service does not know, with its amount");
        JsonNode closed = reply(charge("n2", 2, "7", SimCluster.HONEST));
        assertEquals(14, closed.path("code").asInt(), "the step it closed refuses its charge: " + closed);
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":3,\"result\":{\"payment_id\":\"p2\",\"charged\":9}}",
                reply(charge("n2", 3, "9", SimCluster.HONEST)), "the next charge takes p2: the retry used up no id");
        assertBody("{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"trip\",\"step\":1,\"status\":\"charged\",\"payment\":{\"payment_id\":\"p1\","
                + "\"charged\":100,\"refunded\":0}}", reply(status("n1", 1)), "p1 untouched");
    }

    // ---- b: a voided intent applied after all --------------------------------------------------------------

    /**
     * Three requests under one refund key, with other params, on three nodes: the first is paused with its
     * write in flight, the second is sent and its node dies before it hears anything back, the third comes, then
     * the first is released. On the log the key takes the first request that lands (which one depends on where
     * each node's batch went), every other request on the key is a reuse (22), and the money moved is exactly
     * that one refund's: no payment shows refunded money that the key's one result does not account for.
     */
    @Test
    void threeRequestsOnOneRefundKeyMoveTheMoneyOfOneRefund() {
        cluster("n1", "n2", "n3");
        charge("n1", 1, "100", SimCluster.HONEST);   // p1
        charge("n2", 2, "100", SimCluster.HONEST);   // p2

        long first = refund("n1", 3, "p1", "10", holdingWritesOf("n1"));
        assertEquals(1, cluster.held.size(), "the first request's write is in flight");
        long second = refund("n2", 3, "p2", "20", message -> message.dest.equals("n2") && message.src.equals(SimCluster.KV)
                ? SimCluster.Fate.DROP : SimCluster.Fate.DELIVER);   // its write lands; what comes back to n2 is lost
        cluster.kill("n2");
        assertNull(reply(second), "the second's node died before it could answer");
        long third = refund("n3", 3, "p1", "30", SimCluster.HONEST);
        cluster.release(message -> writeOf(message, "n1"));
        cluster.runUntilQuiet(SimCluster.HONEST);

        // The key takes the first of the three to land (which one depends on where each node's batch went: the
        // second's may ride in the first's node's entry); every other is a reuse, and exactly its money moved.
        JsonNode secondRetry = reply(refund("n1", 3, "p2", "20", SimCluster.HONEST));
        Map<String, JsonNode> answers = Map.of("first (p1, 10)", reply(first), "second's retry (p2, 20)", secondRetry, "third (p1, 30)", reply(third));
        List<String> took = answers.entrySet().stream().filter(e -> e.getValue() != null && e.getValue().path("code").isMissingNode())
                .map(Map.Entry::getKey).toList();
        assertEquals(1, took.size(), "exactly one request takes the key: " + answers);
        answers.forEach((who, answer) -> {
            if (!who.equals(took.get(0))) {
                assertNotNull(answer, who);
                assertEquals(22, answer.path("code").asInt(), who + ": " + answer);
                assertEquals("key_reused", answer.path("reason").asText(), who + ": " + answer);
            }
        });
        int p1 = took.get(0).equals("first (p1, 10)") ? 10 : took.get(0).equals("third (p1, 30)") ? 30 : 0;
        int p2 = p1 == 0 ? 20 : 0;
        assertBody("{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"trip\",\"step\":1,\"status\":\"charged\",\"payment\":{\"payment_id\":\"p1\","
                + "\"charged\":100,\"refunded\":" + p1 + "}}", reply(status("n3", 1)), "p1: exactly the key's one refund, if it is p1's");
        assertBody("{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"trip\",\"step\":2,\"status\":\"charged\",\"payment\":{\"payment_id\":\"p2\","
                + "\"charged\":100,\"refunded\":" + p2 + "}}", reply(status("n2", 2)), "p2: exactly the key's one refund, if it is p2's");
    }

    // ---- c: a key blocked for ever ---------------------------------------------------------------------------

    /**
     * A node dies between sending its one write and hearing its outcome; the write is then lost, or lands
     * late. Either way the next attempt, on any node (the restarted one too), gets a definite answer at once:
     * nothing is left that a retry must wait out, no round limit, no 13 for ever.
     */
    @Test
    void aNodeKilledWithItsWriteInFlightBlocksNothing() {
        for (boolean landsLate : new boolean[] {true, false}) {
            cluster("n1", "n2");
            int step = landsLate ? 1 : 2;
            long cut = charge("n1", step, "100", holdingWritesOf("n1"));
            cluster.kill("n1");
            if (landsLate) {
                cluster.release(message -> true);   // the dead process's write lands now; its reply finds no one
            } else {
                cluster.dropHeld();
            }
            cluster.runUntilQuiet(SimCluster.HONEST);
            assertNull(reply(cut), "the killed process answered nothing");
            String note = landsLate ? ",\"note\":\"cached_result\"" : "";
            for (String node : new String[] {"n2", "n1"}) {
                assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":" + step + ",\"result\":{\"payment_id\":\"p1\",\"charged\":100}"
                        + note + "}", reply(charge(node, step, "100", SimCluster.HONEST)), "a retry on " + node + (landsLate ? " after a late landing" : " after a loss"));
                note = ",\"note\":\"cached_result\"";
            }
            cluster.close();
        }
    }

    // ---- d: a refused refund leaves its step closed -----------------------------------------------------------

    /**
     * A refund naming a payment id whose charge is still in flight on another node: whichever lands first, the
     * pair of answers is one node's. Refund first: p1 is a payment the service does not know, refunded as
     * asked (trusting the saga), its own step closed (a later charge of it is 14), and the charge then makes p1.
     * Charge first: the refund draws on p1's ledger and closes nothing. Never "refused" and "closed" together.
     */
    @Test
    void aRefundRacingTheChargeItNamesGetsOneNodesAnswer() {
        cluster("n1", "n2");
        long charge = charge("n1", 1, "100", holdingWritesOf("n1"));
        long refundFirst = refund("n2", 2, "p1", "100", SimCluster.HONEST);
        cluster.release(message -> writeOf(message, "n1"));
        cluster.runUntilQuiet(SimCluster.HONEST);
        assertBody("{\"type\":\"RefundPayment_ok\",\"saga_id\":\"trip\",\"step\":2,\"result\":{\"refund_id\":\"r1\",\"refunded\":100}}",
                reply(refundFirst), "the refund landed first: trusted, as one node trusts a payment it does not know");
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"charged\":100}}",
                reply(charge), "the charge lands after it and makes p1");
        JsonNode closed = reply(charge("n1", 2, "100", SimCluster.HONEST));
        assertEquals(14, closed.path("code").asInt(), "the refund's own step is closed: " + closed);

        // The other order: the charge lands first, and the refund draws on its ledger.
        long chargeFirst = charge("n2", 4, "100", SimCluster.HONEST);
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":4,\"result\":{\"payment_id\":\"p2\",\"charged\":100}}",
                reply(chargeFirst), "the charge");
        assertBody("{\"type\":\"RefundPayment_ok\",\"saga_id\":\"trip\",\"step\":5,\"result\":{\"refund_id\":\"r2\",\"refunded\":100}}",
                reply(refund("n1", 5, "p2", "100", SimCluster.HONEST)), "a refund of p2 from another step");
        JsonNode refused = reply(refund("n2", 6, "p2", "1", SimCluster.HONEST));
        assertEquals(22, refused.path("code").asInt(), "p2 is refunded in full: " + refused);
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":6,\"result\":{\"payment_id\":\"p3\",\"charged\":5}}",
                reply(charge("n1", 6, "5", SimCluster.HONEST)), "the refused refund closed nothing: its step charges");
        assertTrue(stderr.toString().contains("trusting the saga"), "the trust is logged");
    }

    // ---- the test doubles, on a cluster ---------------------------------------------------------------------

    /**
     * --balance works on a cluster as on one node: a decline is the step's result at its position in the log,
     * the same on every node, and BalanceRead (a read: it appends nothing) answers alike from any node.
     */
    @Test
    void balancesAndBalanceReadWorkOnAClusterAsOnOneNode() {
        clusterWith(List.of("--balance", "150"), "n1", "n2");
        charge("n1", 1, "100", SimCluster.HONEST);
        JsonNode declined = reply(charge("n2", 2, "100", SimCluster.HONEST));
        assertEquals("insufficient_funds", declined.path("reason").asText(), declined.toString());
        for (String node : new String[] {"n1", "n2"}) {
            assertBody("{\"type\":\"BalanceRead_ok\",\"user_id\":\"u1\",\"balance\":50,\"charged\":100,\"refunded\":0,\"held\":0}",
                    reply(send(node, "{\"type\":\"BalanceRead\",\"msg_id\":" + ++msgId + ",\"user_id\":\"u1\"}", SimCluster.HONEST)),
                    "BalanceRead on " + node);
        }
    }

    /**
     * --faults on a cluster: {@code fail} is decided by the node that got the attempt, before it appends (nothing
     * reaches the log: the step is still "none"); {@code drop} lets the work happen (every node sees the charge)
     * and loses only that node's reply.
     */
    @Test
    void injectedFaultsFailBeforeTheLogAndDropAfterIt() {
        clusterWith(List.of("--fault", "trip:step1=fail,drop"), "n1", "n2");
        JsonNode failed = reply(charge("n1", 1, "100", SimCluster.HONEST));
        assertEquals("injected_fail", failed.path("reason").asText(), failed.toString());
        assertBody("{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"trip\",\"step\":1,\"status\":\"none\"}", reply(status("n2", 1)),
                "nothing of a failed attempt reached the log");
        assertNull(reply(charge("n1", 1, "100", SimCluster.HONEST)), "a dropped reply");
        assertBody("{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"trip\",\"step\":1,\"status\":\"charged\",\"payment\":{\"payment_id\":\"p1\","
                + "\"charged\":100,\"refunded\":0}}", reply(status("n2", 1)), "the dropped attempt's work is done, for every node");
        assertBody("{\"type\":\"ChargePayment_ok\",\"saga_id\":\"trip\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"charged\":100},"
                + "\"note\":\"cached_result\"}", reply(charge("n1", 1, "100", SimCluster.HONEST)), "the retry");
    }
}
