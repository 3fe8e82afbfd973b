package payment;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The journal: nothing that was answered is ever forgotten, whatever the crash. */
class JournalTest {
    @TempDir
    Path dir;

    private final Node.CapturedLog captured = Node.CapturedLog.of(false);
    private final PaymentNode.Log log = captured.log();

    /** Runs {@code input} through a node whose handler comes from (and goes on into) the journal. */
    private String runWithJournal(Path journal, String input) throws IOException {
        PaymentNode.PaymentHandler table = FileJournal.tableFromJournal(journal, log, null, 0);
        try {
            Node.Run run = Node.run(input.getBytes(StandardCharsets.UTF_8), table, captured);
            assertEquals(0, run.status());
            return run.stdout();
        } finally {
            table.journal().close();
        }
    }

    private static final String SESSION = String.join("",
            Wire.charge(1, "trip", 1, "120.50"),
            Wire.charge(2, "trip", 2, "80"),
            Wire.refund(3, "trip", 2, null, "30"),
            Wire.refund(4, "trip", 3, null, null),                 // compensation first
            Wire.refund(5, "other", 1, "p7", "3"),
            Wire.refund(6, "trip", 9, "p2", null),
            Wire.charge(7, "trip", 3, "5"));                       // 14: closed

    @Test
    void aRestartedNodeAnswersEveryRequestAsBeforeWithItsCachedNote() throws IOException {
        Path journal = dir.resolve("journal");
        String first = runWithJournal(journal, SESSION);
        String second = runWithJournal(journal, SESSION);
        Wire.ReplyBody closed = Wire.error(14, "step_compensated", "step trip:step3 was already compensated: its refund came first, so it is never charged");
        assertEquals(Wire.chargeOk("trip", 1, "p1", "120.50").to(1, 0)
                + Wire.chargeOk("trip", 2, "p2", "80").to(2, 1)
                + Wire.refundOk("trip", 2, "r1", "30").to(3, 2)
                + Wire.refundOk("trip", 3, null, "0").to(4, 3)
                + Wire.refundOk("other", 1, "r2", "3").to(5, 4)
                + Wire.refundOk("trip", 9, "r3", "50").to(6, 5)   // the ledger took 30 of p2's 80 first
                + closed.to(7, 6), first);
        assertEquals(Wire.chargeOk("trip", 1, "p1", "120.50").cached().to(1, 0)
                + Wire.chargeOk("trip", 2, "p2", "80").cached().to(2, 1)
                + Wire.refundOk("trip", 2, "r1", "30").cached().to(3, 2)
                + Wire.refundOk("trip", 3, null, "0").cached().to(4, 3)
                + Wire.refundOk("other", 1, "r2", "3").cached().to(5, 4)
                + Wire.refundOk("trip", 9, "r3", "50").cached().to(6, 5)
                + closed.to(7, 6), second, "every answer as before, with its note; an error is an error again");

        // The counters and the ledger came back too: the next payment is p3, and p2 has nothing left.
        String third = runWithJournal(journal, Wire.charge(8, "trip", 4, "1") + Wire.refund(9, "trip", 10, "p2", null));
        assertEquals(Wire.chargeOk("trip", 4, "p3", "1").to(8, 0)
                + Wire.error(22, "payment_fully_refunded", "payment p2 is already fully refunded").to(9, 1), third);
    }

    @Test
    void aTornLastRecordIsCutWithAWarningAndEveryCompleteRecordIsKept() throws IOException {
        Path journal = dir.resolve("journal");
        runWithJournal(journal, SESSION);
        byte[] complete = Files.readAllBytes(journal);
        Files.write(journal, "0badc0de [\"charge\", \"trip:st".getBytes(StandardCharsets.US_ASCII), StandardOpenOption.APPEND);

        String again = runWithJournal(journal, Wire.charge(1, "trip", 1, "120.50"));
        assertEquals(Wire.chargeOk("trip", 1, "p1", "120.50").cached().to(1, 0), again);
        assertTrue(captured.text().contains("cut off a torn last record (28 bytes after record 8)"), captured.text());
        assertEquals(new String(complete, StandardCharsets.US_ASCII), Files.readString(journal), "the good records are untouched");
    }

    @Test
    void aDamagedRecordFollowedByGoodOnesStopsTheNodeAtStartUp() throws IOException {
        Path journal = dir.resolve("journal");
        runWithJournal(journal, SESSION);
        String text = Files.readString(journal);
        Files.writeString(journal, text.replaceFirst("120\\.50", "920.50"));   // its checksum no longer matches
        IOException refused = assertThrows(IOException.class, () -> FileJournal.tableFromJournal(journal, log, null, 0));
        assertTrue(refused.getMessage().startsWith("record 1 is damaged and good records follow it"), refused.getMessage());
    }

    /** A replayed refund is held to its payment's charge like a new one (issue 19, item 3): a journal that breaks the rule stops the node. */
    @Test
    void aReplayedRefundAboveItsChargeStopsTheNodeAtStartUp() throws IOException {
        Path journal = dir.resolve("journal");
        runWithJournal(journal, Wire.charge(1, "trip", 1, "10") + Wire.refund(2, "trip", 1, "p1", "6"));
        String forged = "[\"refund\", \"trip:step2:refund\", \"p1\", 6, 6, 2, 1]";
        java.util.zip.CRC32 crc = new java.util.zip.CRC32();
        crc.update(forged.getBytes(StandardCharsets.UTF_8));
        Files.writeString(journal, String.format("%08x %s%n", crc.getValue(), forged), StandardOpenOption.APPEND);
        IOException refused = assertThrows(IOException.class, () -> FileJournal.tableFromJournal(journal, log, null, 0));
        assertEquals("record 3: invariant refunds_within_charge broken: the refunds of p1 would add up to 12, more than its charge of 10:"
                + " refusing to start (repair the file, or move it aside)", refused.getMessage());
    }

    @Test
    void twoNodesCannotShareAJournal() throws IOException {
        Path journal = dir.resolve("journal");
        PaymentNode.PaymentHandler first = FileJournal.tableFromJournal(journal, log, null, 0);
        try {
            IOException refused = assertThrows(IOException.class, () -> FileJournal.tableFromJournal(journal, log, null, 0));
            assertEquals("another node is using it", refused.getMessage());
        } finally {
            first.journal().close();
        }
    }

    /** A reply reaches stdout only once every record made so far is committed. */
    @Test
    void noReplyIsWrittenWhileARecordIsStillPending() {
        AtomicInteger appended = new AtomicInteger();
        AtomicInteger committed = new AtomicInteger();
        PaymentNode.Journal counting = new PaymentNode.Journal() {
            @Override
            public void charged(PaymentNode.ChargeRequest request, long paymentNumber) {
                appended.incrementAndGet();
            }

            @Override
            public void refused(PaymentNode.ChargeRequest request, PaymentNode.Refusal refusal) {
                appended.incrementAndGet();
            }

            @Override
            public void closed(String key) {
                appended.incrementAndGet();
            }

            @Override
            public void refunded(PaymentNode.RefundRequest request, String refunded, long refundNumber, long paymentNumber) {
                appended.incrementAndGet();
            }

            @Override
            public void reserved(PaymentNode.ReserveRequest request, long paymentNumber, long expiresAt) {
                appended.incrementAndGet();
            }

            @Override
            public void captured(PaymentNode.CaptureRequest request, String captured, String released, long paymentNumber) {
                appended.incrementAndGet();
            }

            @Override
            public void voided(PaymentNode.VoidRequest request, String released, long paymentNumber) {
                appended.incrementAndGet();
            }

            @Override
            public void expired(String chargeKey) {
                appended.incrementAndGet();
            }

            @Override
            public void commit() {
                committed.set(appended.get());
            }
        };
        List<Integer> pendingAtWrite = new ArrayList<>();
        OutputStream stdout = new OutputStream() {
            @Override
            public void write(int b) {
                pendingAtWrite.add(appended.get() - committed.get());
            }

            @Override
            public void write(byte[] b, int off, int len) {
                pendingAtWrite.add(appended.get() - committed.get());
            }
        };
        StringBuilder input = new StringBuilder();
        for (int i = 0; i < 5_000; i++) {   // enough replies to fill several batches on the way
            input.append(Wire.charge(i, "s" + i, 1, "1.25")).append(Wire.charge(i, "s" + i, 1, "1.25"));
        }
        PaymentNode.serving(new PaymentNode.PaymentHandler(log, counting), stdout, log)
                .serve(new ByteArrayInputStream(input.toString().getBytes(StandardCharsets.UTF_8)));
        assertEquals(5_000, appended.get());
        assertTrue(pendingAtWrite.size() > 2, "several batches were written: " + pendingAtWrite.size());
        assertTrue(pendingAtWrite.stream().allMatch(pending -> pending == 0), "records pending at a write: " + pendingAtWrite);
    }

    // ---- kill -9 -----------------------------------------------------------------------------------

    /** A saga workload: first charges, their retries, compensations (some before their charge) and their retries. */
    private static List<String> workload(int size, Random random) {
        List<String> requests = new ArrayList<>();
        List<String> issued = new ArrayList<>();   // bodies that may be retried, without msg_id
        int sagas = 0;
        while (requests.size() < size) {
            double r = random.nextDouble();
            String body;
            if (r < 0.3 && !issued.isEmpty()) {
                body = issued.get(issued.size() - 1 - random.nextInt(Math.min(issued.size(), 500)));
            } else if (r < 0.45 && sagas > 0) {
                int saga = sagas - random.nextInt(Math.min(sagas, 300));
                body = "\"type\":\"RefundPayment\",\"saga_id\":\"saga" + saga + "\",\"step\":1,\"compensating\":true";
                issued.add(body);
            } else if (r < 0.5) {
                sagas++;   // a compensation that comes before its charge: the charge, later, must get 14
                body = "\"type\":\"RefundPayment\",\"saga_id\":\"saga" + sagas + "\",\"step\":1";
                issued.add(body);
                issued.add("\"type\":\"ChargePayment\",\"saga_id\":\"saga" + sagas + "\",\"step\":1,\"params\":{\"user_id\":\"u1\",\"amount\":2.5}");
            } else {
                sagas++;
                body = "\"type\":\"ChargePayment\",\"saga_id\":\"saga" + sagas + "\",\"step\":1,\"params\":{\"user_id\":\"u"
                        + random.nextInt(100) + "\",\"amount\":" + (1 + random.nextInt(999)) + "." + (10 + random.nextInt(90)) + "}";
                issued.add(body);
            }
            requests.add(Wire.request("{\"msg_id\":" + requests.size() + "," + body + "}"));
        }
        return requests;
    }

    /** SIGKILL (the node gets no chance to flush or close anything) once enough replies have arrived. */
    private static boolean killIfAnswered(Process node, List<String> lines, int replies) {
        synchronized (lines) {
            if (lines.size() < replies) {
                return false;
            }
        }
        node.destroyForcibly();
        return true;
    }

    @Tag("slow")
    @Test
    void aNodeKilledAtRandomMomentsForgetsNothingItAnswered() throws Exception {
        Path journal = dir.resolve("journal");
        Random random = new Random(20261127);
        List<String> requests = workload(60_000, random);
        Map<Integer, Wire.Reply> answeredBeforeAKill = new HashMap<>();
        Map<String, String> resultByKey = new HashMap<>();   // every ok result ever seen for a key
        Map<String, String> keyByPaymentId = new HashMap<>();
        Map<String, String> keyByRefundId = new HashMap<>();
        int rounds = 6;
        int sent = 0;
        for (int round = 0; round <= rounds; round++) {
            boolean last = round == rounds;
            int upTo = last ? requests.size() : Math.min(requests.size(), sent + 10_000);
            Path stderrFile = dir.resolve("stderr-" + round);
            Process node = Node.start(List.of(), stderrFile, "--journal", journal.toString());
            List<String> lines = new ArrayList<>();
            Thread reader = new Thread(() -> {
                try (BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8))) {
                    for (String line; (line = stdout.readLine()) != null; ) {
                        synchronized (lines) {
                            lines.add(line);
                        }
                    }
                } catch (IOException killed) {
                    // the pipe breaks when the node is killed
                }
            });
            reader.start();
            // Every request sent in earlier rounds again (the orchestrator retries), then new ones, in bursts;
            // the kill comes while requests are still streaming in and replies streaming out.
            int killAfterReplies = last ? Integer.MAX_VALUE : sent + random.nextInt(upTo - sent);
            boolean killed = false;
            OutputStream stdin = node.getOutputStream();
            try {
                for (int i = 0; i < upTo && !killed; i++) {
                    stdin.write(requests.get(i).getBytes(StandardCharsets.UTF_8));
                    if (i % 200 == 199) {
                        stdin.flush();
                        killed = killIfAnswered(node, lines, killAfterReplies);
                    }
                }
                stdin.flush();
            } catch (IOException brokenPipe) {
                // the node died under the writer
            }
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (!last && !killed && System.nanoTime() < deadline) {
                killed = killIfAnswered(node, lines, killAfterReplies);
                Thread.sleep(1);
            }
            if (last) {
                stdin.close();
            } else {
                assertTrue(killed, "round " + round + " was never killed");
            }
            assertTrue(node.waitFor(60, TimeUnit.SECONDS));
            reader.join(10_000);
            String errors = Files.readString(stderrFile);
            assertFalse(errors.contains("cannot use the journal"), errors);
            if (last) {
                assertEquals(0, node.exitValue(), errors);
                assertEquals(requests.size(), lines.size(), "every request answered in the last round");
            }

            List<Wire.Reply> replies;
            synchronized (lines) {
                if (killed && !lines.isEmpty() && !lines.get(lines.size() - 1).endsWith("}}")) {
                    lines.remove(lines.size() - 1);   // cut by the kill in mid-write: never answered
                }
                replies = lines.stream().map(Wire::read).toList();
            }
            for (Wire.Reply reply : replies) {
                int request = reply.inReplyTo().intValue();
                Wire.Reply before = answeredBeforeAKill.get(request);
                if (before != null && before.key() != null) {
                    assertEquals(before.outcome(), reply.outcome(), "request " + request + " answered differently after a kill");
                    assertTrue(reply.note() != null, "request " + request + " came back without its cached note: " + reply);
                }
                if (reply.key() != null) {
                    String earlier = resultByKey.putIfAbsent(reply.key(), reply.outcome());
                    assertTrue(earlier == null || earlier.equals(reply.outcome()),
                            reply.key() + " has two results: " + earlier + " and " + reply.outcome());
                    String paymentId = reply.result().get("payment_id");
                    if (paymentId != null) {
                        String otherKey = keyByPaymentId.putIfAbsent(paymentId, reply.key());
                        assertTrue(otherKey == null || otherKey.equals(reply.key()),
                                paymentId + " was given to " + otherKey + " and to " + reply.key());
                    }
                    String refundId = reply.result().get("refund_id");
                    if (refundId != null) {
                        String otherKey = keyByRefundId.putIfAbsent(refundId, reply.key());
                        assertTrue(otherKey == null || otherKey.equals(reply.key()),
                                refundId + " was given to " + otherKey + " and to " + reply.key());
                    }
                }
                answeredBeforeAKill.putIfAbsent(request, reply);
            }
            sent = Math.max(sent, upTo);
        }
        assertTrue(keyByPaymentId.size() > 10_000, "payments made: " + keyByPaymentId.size());
    }
}
