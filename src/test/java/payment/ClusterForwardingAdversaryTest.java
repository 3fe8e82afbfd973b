package payment;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

/**
 * Adversarial schedules against forwarding (docs/CLUSTER.md, "Forwarding: one node appends for all"), played by
 * {@link SimCluster}: schedules that broke it when they were found, each kept as a test of the fix.
 */
class ClusterForwardingAdversaryTest {
    private static final long KV_TIMEOUT_MILLIS = 400;

    private final ByteArrayOutputStream stderr = new ByteArrayOutputStream();
    private SimCluster cluster;
    private long msgId;

    @AfterEach
    void stopNodes() throws InterruptedException {
        SimCluster.shutDown(cluster);
    }

    private long send(String node, String body, SimCluster.Rule rule) {
        cluster.request(node, "c1", body);
        cluster.runUntilQuiet(rule);
        return msgId;
    }

    private long charge(String node, String saga, int step, String amount) {
        return send(node, "{\"type\":\"ChargePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + saga + "\",\"step\":" + step
                + ",\"params\":{\"user_id\":\"u1\",\"amount\":" + amount + "}}", SimCluster.HONEST);
    }

    private JsonNode status(String node, String saga, int step) {
        return replyTo(send(node, "{\"type\":\"PaymentStatus\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + saga + "\",\"step\":" + step + "}",
                SimCluster.HONEST));
    }

    private JsonNode replyTo(long request) {
        for (JsonNode message : cluster.clientReplies) {
            if ("c1".equals(message.path("dest").asText()) && message.path("body").path("in_reply_to").asLong(-1) == request) {
                return message.path("body");
            }
        }
        return null;
    }

    /** The entries of the log as lin-kv holds them, slot 1 first (an undecodable slot ends the list). */
    private List<ClusterService.LogEntry> log() {
        return cluster.logEntries();
    }

    /** As ClusterForwardingTest: n1 and n2 have each applied an entry of the other, so n2 forwards to n1. */
    private void twoNodesWithAnAppender() {
        cluster = new SimCluster(List.of("n1", "n2"), KV_TIMEOUT_MILLIS, stderr, null);
        cluster.runUntilQuiet(SimCluster.HONEST);
        charge("n1", "s", 1, "10");
        charge("n2", "s", 2, "10");
        charge("n1", "s", 3, "10");
        status("n2", "s", 3);
    }

    /** A batch's text, as a node encodes it: one ChargePayment. */
    private static String batchText(String id, String saga, long step, String user, String amount) {
        PaymentNode.ChargeRequest request = new PaymentNode.ChargeRequest(saga, step, user, new PaymentNode.Amount(amount, new BigDecimal(amount)));
        return ClusterService.Batch.encode(id, List.of(new ClusterService.LoggedRequest(request, System.currentTimeMillis(), "c9", 1L).encode()));
    }

    /** A log_forward sent by a client (a stranger: not a node of the cluster), straight into a node's input. */
    private void strangerForwards(String node, String stranger, String text) {
        ObjectNode body = SimCluster.MAELSTROM_JSON.createObjectNode();
        body.put("type", "log_forward");
        body.put("value", text);
        cluster.request(node, stranger, body.toString());
    }

    /**
     * (d)+(a) A stranger (client c9) forwards to n1 a batch under the id n2 will give its next batch (the nonce is in
     * the log), holding another request. Found when a log_forward was taken from anyone under any id: n1 appended
     * it, n2's real batch was then "a copy" everywhere, and n2 answered its client from the stranger's request
     * (ChargePayment_ok for a charge in no table). Now the nodes' own messages are taken only from init's other
     * node_ids, and a batch only from the node its id names: n2's charge is charged, on both nodes.
     */
    @Test
    void aStrangersForwardUnderAnotherNodesBatchIdIsDroppedAndThatNodesClientGetsItsOwnCharge() throws InterruptedException {
        twoNodesWithAnAppender();
        String n2Batch = log().stream().flatMap(entry -> entry.batches().stream()).map(ClusterService.Batch::id)
                .filter(id -> id.startsWith("n2/")).reduce((a, b) -> b).orElseThrow();
        String nextId = ClusterService.Batch.processOf(n2Batch) + "/" + (ClusterService.Batch.countOf(n2Batch) + 1);
        strangerForwards("n1", "c9", batchText(nextId, "evil", 1, "mallory", "5"));
        cluster.runUntilQuiet(SimCluster.HONEST);

        long charge = charge("n2", "s", 4, "10");   // forwarded to n1, which takes it for a copy of what it applied
        Thread.sleep(KV_TIMEOUT_MILLIS / 4 + 20);
        cluster.expireAll();   // n2's patience: it appends its batch itself, and reads the slot n1 landed
        cluster.runUntilQuiet(SimCluster.HONEST);

        JsonNode reply = replyTo(charge);
        assertNotNull(reply, "no reply to the charge");
        JsonNode onN1 = status("n1", "s", 4);
        JsonNode onN2 = status("n2", "s", 4);
        assertEquals("ChargePayment_ok", reply.path("type").asText(), reply.toString());
        assertEquals("charged", onN1.path("status").asText(),
                "n2 answered " + reply + " for charge s/4, and n1 holds " + onN1 + ", n2 holds " + onN2);
    }

    /**
     * The two checks behind the previous test, each alone: a stranger's batch under its own name is not carried (only
     * init's other node_ids send the nodes' own messages), and another node of the cluster (n3) cannot forward a
     * batch under n2's id (a batch comes only from the node its id names). Neither charge is in any table.
     */
    @Test
    void aBatchIsCarriedOnlyFromAnotherNodeOfTheClusterAndOnlyUnderItsOwnName() {
        cluster = new SimCluster(List.of("n1", "n2", "n3"), KV_TIMEOUT_MILLIS, stderr, null);
        cluster.runUntilQuiet(SimCluster.HONEST);
        charge("n1", "s", 1, "10");
        charge("n2", "s", 2, "10");
        String n2Batch = log().get(1).batches().get(0).id();
        strangerForwards("n1", "c9", batchText("c9/" + String.format("%017x", 1) + "/1", "evil", 1, "mallory", "5"));
        strangerForwards("n1", "n3", batchText(ClusterService.Batch.processOf(n2Batch) + "/" + (ClusterService.Batch.countOf(n2Batch) + 1),
                "evil", 2, "mallory", "5"));
        cluster.runUntilQuiet(SimCluster.HONEST);
        charge("n1", "s", 3, "10");
        for (int step = 1; step <= 2; step++) {
            assertEquals("none", status("n1", "evil", step).path("status").asText(), "evil/" + step + ": " + status("n1", "evil", step));
        }
        assertEquals(3, log().size(), "nothing but the three charges was appended");
    }

    /**
     * (c)+(d) More batches wait for one node's entry than an entry may hold: 64 forwarded batches (here n3's, as
     * if from 64 processes; in a large cluster, eight followers' lanes), seven of n2's own batches taken over while
     * its entry is in flight, one of them (b1) also landed by n1 so that its lane is free again, and two new batches
     * from 300 queued requests. Found when an entry could be made of more batches than decoding accepts: every
     * node skipped it, n2 never found its entry and cast it again at every next slot. Now an entry takes at most
     * MAX_ENTRY_BATCHES, the bound decoding uses, the rest waits for the next one, and every slot decodes.
     */
    @Test
    void moreBatchesThanAnEntryHoldsGoInSeveralEntriesThatEveryNodeDecodes() throws InterruptedException {
        cluster = new SimCluster(List.of("n1", "n2", "n3"), 2000, stderr, null);
        cluster.runUntilQuiet(SimCluster.HONEST);
        charge("n1", "s", 1, "10");
        charge("n2", "s", 2, "10");
        charge("n1", "s", 3, "10");
        status("n2", "s", 3);
        String n2Lane0 = ClusterService.Batch.processOf(log().get(1).batches().get(0).id());
        String n2Process = n2Lane0.substring(0, n2Lane0.length() - 1);   // the lane's digit is the last

        boolean[] holdN2Casts = {true};
        String[] letThrough = {"none"};
        int[] n2Casts = {0};
        SimCluster.Rule rule = message -> {
            if (message.src.equals("n2") && message.dest.equals("n1")) {
                return message.body().path("value").asText().startsWith(letThrough[0]) ? SimCluster.Fate.DELIVER : SimCluster.Fate.HOLD;   // n2's forwards
            }
            if (message.src.equals("n2") && "cas".equals(message.type())) {
                return holdN2Casts[0] || ++n2Casts[0] > 12 ? SimCluster.Fate.HOLD : SimCluster.Fate.DELIVER;
            }
            return SimCluster.Fate.DELIVER;
        };
        long t0 = System.nanoTime();
        sendCharge("n2", "a", 0, rule);                     // lane 0, forwarded (held)
        sleepUntil(t0, 300);
        for (int lane = 1; lane < 8; lane++) {
            sendCharge("n2", "a", lane, rule);              // lanes 1..7, forwarded (held)
        }
        sleepUntil(t0, 520);
        poke("n2", rule);                                   // lane 0 taken over: n2's entry [b0], its cas held
        for (int i = 0; i < 64; i++) {
            strangerForwards("n2", "n3", batchText("n3/" + String.format("%017x", i + 1) + "/1", "x" + i, 1, "mallory", "1"));
            cluster.runUntilQuiet(rule);
        }
        sleepUntil(t0, 850);
        poke("n2", rule);                                   // lanes 1..7 taken over: carried, the entry in flight
        letThrough[0] = new ClusterService.Tokens().add(n2Process + "1/1").toString();
        cluster.release(message -> message.dest.equals("n1"));
        cluster.runUntilQuiet(rule);                        // n1 lands b1 and pushes it: n2's lane 1 is free
        for (int i = 0; i < 300; i++) {
            sendCharge("n2", "q", i, rule);                 // queued: n2's entry is in flight
        }
        assertEquals(true, System.nanoTime() - t0 < 2_000_000_000L, "the schedule took longer than --kv-timeout: no verdict");
        holdN2Casts[0] = false;
        cluster.release(message -> message.src.equals("n2") && "cas".equals(message.type()));
        cluster.runUntilQuiet(rule);

        List<String> slots = new ArrayList<>();
        for (JsonNode value; (value = cluster.kv.get(ClusterService.slotKey(slots.size() + 1))) != null; ) {
            slots.add(value.asText());
        }
        List<String> undecodable = new ArrayList<>();
        for (int slot = 1; slot <= slots.size(); slot++) {
            if (ClusterService.Slot.read(slots.get(slot - 1)).entry() == null) {
                undecodable.add(slot + ": " + ClusterService.Slot.read(slots.get(slot - 1)).why());
            }
        }
        assertEquals(List.of(), undecodable, "the log holds " + slots.size() + " slots (n2's casts were stopped after 12: it casts its entry again at every next slot),"
                + " of which these decode to no entry");
    }

    private void sendCharge(String node, String saga, int step, SimCluster.Rule rule) {
        cluster.request(node, "c1", "{\"type\":\"ChargePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"" + saga + "\",\"step\":" + step
                + ",\"params\":{\"user_id\":\"u1\",\"amount\":1}}");
        cluster.runUntilQuiet(rule);
    }

    /** Any line makes a node see what time brought (a forward not brought in time); this one is answered with error 10. */
    private void poke(String node, SimCluster.Rule rule) {
        cluster.request(node, "c1", "{\"type\":\"poke\",\"msg_id\":" + ++msgId + "}");
        cluster.runUntilQuiet(rule);
    }

    private static void sleepUntil(long startNanos, long millis) throws InterruptedException {
        long left = startNanos + millis * 1_000_000 - System.nanoTime();
        if (left > 0) {
            Thread.sleep(left / 1_000_000, (int) (left % 1_000_000));
        }
    }

    /**
     * (a)+(d) A log_slot for slot 5 that comes damaged as slot 6 (one digit, as the reads' values are damaged in
     * ClusterModelTest). Found when the slot's number was outside any checksum: n2 applied slot 5's entry again as
     * slot 6 and never what slot 6 holds (n1's charge, which n2 then said did not exist). Now the push carries a
     * checksum of number and value: n2 ignores it, reads slot 5, and both nodes agree on slot 6.
     */
    @Test
    void aPushedSlotWhoseNumberCameDamagedIsIgnoredAndTheFollowerAppliesTheRealSlot() throws InterruptedException {
        twoNodesWithAnAppender();
        charge("n2", "s", 4, "10");   // forwarded, landed by n1 at slot 4, pushed to n2
        int[] damaged = {0};
        SimCluster.Rule damageTheKey = message -> {
            String key = message.body().path("key").asText("");
            if ("log_slot".equals(message.type()) && key.startsWith("log/5")) {
                ObjectNode wrong = message.body().deepCopy();
                wrong.put("key", "log/6" + key.substring("log/5".length()));   // the slot's number only, the rest as sent
                message.replaceBody(wrong);
                damaged[0]++;
            }
            return SimCluster.Fate.DELIVER;
        };
        long second = send("n2", "{\"type\":\"ChargePayment\",\"msg_id\":" + ++msgId + ",\"saga_id\":\"s\",\"step\":5,"
                + "\"params\":{\"user_id\":\"u1\",\"amount\":10}}", damageTheKey);
        assertEquals(1, damaged[0], "the push of slot 5 came with the number 6");
        sleepUntil(System.nanoTime(), KV_TIMEOUT_MILLIS / 4 + 20);
        cluster.expireAll();   // the push ignored, n2 appends its batch itself after its patience, and finds slot 5
        cluster.runUntilQuiet(SimCluster.HONEST);
        assertEquals("{\"payment_id\":\"p5\",\"charged\":10}", replyTo(second).path("result").toString(), replyTo(second).toString());
        charge("n1", "s", 6, "10");   // n1's own, after n2's copy of its batch (slot 6, skipped by every node)
        assertEquals(7, log().size());
        JsonNode onN1 = status("n1", "s", 6);
        JsonNode onN2 = status("n2", "s", 6);
        assertEquals(onN1.path("status").asText(), onN2.path("status").asText(), "n1: " + onN1 + ", n2: " + onN2);
    }

    /**
     * The checksum every entry and push carries is the CRC-32 of the text's UTF-16BE bytes as the JDK encodes them (a
     * lone surrogate as U+FFFD), whatever the text: the fast path (no encoder) and the JDK's own encoding agree on
     * 20,000 random texts over every UTF-16 unit, surrogates alone and in pairs included.
     */
    @Test
    void theChecksumIsTheCrc32OfTheJdksUtf16BeBytesOfAnyText() {
        java.util.Random random = new java.util.Random(7);
        List<String> texts = new ArrayList<>(List.of("", "a", "payment-log/2", "é日本", "\ud83d\ude00", "\ud800", "a\udc00b", "\udc00\ud800"));
        for (int i = 0; i < 20_000; i++) {
            char[] units = new char[random.nextInt(12)];
            for (int j = 0; j < units.length; j++) {
                units[j] = (char) (random.nextInt(4) == 0 ? 0xd800 + random.nextInt(0x800) : random.nextInt(0x10000));
            }
            texts.add(new String(units));
        }
        for (String text : texts) {
            java.util.zip.CRC32 reference = new java.util.zip.CRC32();
            reference.update(text.getBytes(java.nio.charset.StandardCharsets.UTF_16BE));
            assertEquals(String.format("%08x", reference.getValue()), ClusterService.LogEntry.crc(text), () -> "for " + text.chars().boxed().toList());
        }
    }
}
