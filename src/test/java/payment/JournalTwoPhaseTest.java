package payment;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The journal's two-phase records (SPEC section 12, docs/JOURNAL.md): {@code reserve}, {@code decline-reserve},
 * {@code capture}, {@code void} and {@code expire} come back on a restart, a torn one is cut, a damaged one
 * stops the node, and a journal that would resolve a hold twice (or resolve one no record made) is refused.
 */
class JournalTwoPhaseTest {
    @TempDir
    Path dir;

    private final Node.CapturedLog captured = Node.CapturedLog.of(false);
    private final PaymentNode.Log log = captured.log();

    static String reserve(long msgId, String saga, String user, String amount, Long expiresInMs) {
        return Wire.request("{\"type\":\"ReservePayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + saga + "\",\"step\":1,\"params\":{\"user_id\":\""
                + user + "\",\"amount\":" + amount + (expiresInMs == null ? "" : ",\"expires_in_ms\":" + expiresInMs) + "}}");
    }

    static String capture(long msgId, String saga, String amount) {
        return Wire.request("{\"type\":\"CapturePayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + saga + "\",\"step\":1"
                + (amount == null ? "" : ",\"params\":{\"amount\":" + amount + "}") + "}");
    }

    static String voidHold(long msgId, String saga) {
        return Wire.request("{\"type\":\"VoidPayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + saga + "\",\"step\":1,\"compensating\":true}");
    }

    static String balanceRead(long msgId, String user) {
        return Wire.request("{\"type\":\"BalanceRead\",\"msg_id\":" + msgId + ",\"user_id\":\"" + user + "\"}");
    }

    /** Runs {@code input} through a node started as main starts it, with --journal and --balance 100. */
    private String run(Path journal, String input) {
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--journal", journal.toString(), "--balance", "100");
        assertEquals(0, run.status(), run.stderr());
        return run.stdout();
    }

    /** Session 1: every two-phase record but expire. */
    private static final String FIRST = String.join("",
            reserve(1, "s1", "u1", "50.00", null),
            capture(2, "s1", "30"),                          // partial: 20.00 released
            reserve(3, "s2", "u1", "20", 600_000L),
            capture(4, "s2", null),                          // default: all 20
            Wire.refund(5, "s1", 1, null, "10"),             // a refund of a captured reservation
            voidHold(6, "s3"),                               // a void before its reservation closes the step
            reserve(7, "s3", "u1", "5", null),               // 14 step_compensated
            reserve(8, "s4", "u1", "10", null),
            voidHold(9, "s4"),                               // released 10
            reserve(10, "s5", "u1", "500", null),            // declined: decline-reserve
            reserve(11, "s6", "u1", "7", 30L),               // short: expires before the restart
            reserve(12, "s7", "u1", "8", 600_000L));         // long: held across every restart

    /** The same reply as a retry gets it, with the note of its kind. */
    private static String withNote(String line) {
        String note = line.contains("\"CapturePayment_ok\"") ? "already_captured" : line.contains("\"VoidPayment_ok\"") ? "already_voided"
                : line.contains("\"RefundPayment_ok\"") ? "already_refunded" : line.contains("_ok\"") ? "cached_result" : null;
        return note == null ? line : line.replace(", \"in_reply_to\"", ", \"note\": \"" + note + "\", \"in_reply_to\"");
    }

    private static String withNotes(String replies) {
        StringBuilder out = new StringBuilder();
        for (String line : replies.split("\n")) {
            out.append(withNote(line)).append('\n');
        }
        return out.toString();
    }

    /** Sessions 1 and 2 (a restart, 100 ms later: s6's deadline passed in between); returns the journal. */
    private Path journalWithEveryRecordKind() throws Exception {
        Path journal = dir.resolve("journal");
        String first = run(journal, FIRST);
        Thread.sleep(100);
        String second = run(journal, FIRST + capture(13, "s6", null) + voidHold(14, "s6"));
        String[] lines = second.split("\n");
        assertEquals(withNotes(first), String.join("\n", List.of(lines).subList(0, 12)) + "\n", "every answer as before, with its note");
        assertTrue(lines[12].contains("\"reason\": \"reservation_expired\""), lines[12]);
        assertTrue(lines[13].contains("\"result\": {\"payment_id\": \"p4\", \"released\": 0}"), lines[13]);
        return journal;
    }

    @Test
    void everyTwoPhaseRecordIsReplayedAndItsDeadlineKept() throws Exception {
        Path journal = journalWithEveryRecordKind();
        List<String> kinds = kinds(Files.readAllLines(journal));
        for (String kind : List.of("reserve", "decline-reserve", "capture", "void", "expire")) {
            assertTrue(kinds.contains(kind), kind + " in " + kinds);
        }
        String third = run(journal, String.join("",
                Wire.paymentStatus(1, "s1", 1), Wire.paymentStatus(2, "s2", 1), Wire.paymentStatus(3, "s3", 1),
                Wire.paymentStatus(4, "s4", 1), Wire.paymentStatus(5, "s5", 1), Wire.paymentStatus(6, "s6", 1),
                Wire.paymentStatus(7, "s7", 1), balanceRead(8, "u1"),
                capture(9, "s4", null), voidHold(10, "s1"), capture(11, "s6", null),
                reserve(12, "s8", "u1", "1", null)));   // the counters came back: p6
        String[] lines = third.split("\n");
        assertTrue(lines[0].contains("\"status\": \"captured\", \"payment\": {\"payment_id\": \"p1\", \"reserved\": 50.00, \"captured\": 30, \"refunded\": 10}"), lines[0]);
        assertTrue(lines[0].contains("\"capture\": {\"payment_id\": \"p1\", \"captured\": 30, \"released\": 20.00}"), lines[0]);
        assertTrue(lines[1].contains("\"status\": \"captured\", \"payment\": {\"payment_id\": \"p2\", \"reserved\": 20, \"captured\": 20, \"refunded\": 0}"), lines[1]);
        assertTrue(lines[2].contains("\"status\": \"compensated\""), lines[2]);
        assertTrue(lines[3].contains("\"status\": \"voided\""), lines[3]);
        assertTrue(lines[3].contains("\"void\": {\"payment_id\": \"p3\", \"released\": 10}"), lines[3]);
        assertTrue(lines[4].contains("\"status\": \"declined\""), lines[4]);
        assertTrue(lines[5].contains("\"status\": \"expired\""), "the short deadline is kept: " + lines[5]);
        assertTrue(lines[6].contains("\"status\": \"reserved\""), "the long deadline is kept: " + lines[6]);
        // 100 - (30 + 20 captured) + 10 refunded; held: s7's 8 (s6's 7 expired, s1's and s2's captured, s4's voided).
        assertTrue(lines[7].contains("\"balance\": 60, \"charged\": 50, \"refunded\": 10, \"held\": 8"), lines[7]);
        assertTrue(lines[8].contains("\"reason\": \"reservation_voided\""), lines[8]);
        assertTrue(lines[9].contains("\"reason\": \"already_captured\""), lines[9]);
        assertTrue(lines[10].contains("\"reason\": \"reservation_expired\""), lines[10]);
        assertTrue(lines[11].contains("\"result\": {\"payment_id\": \"p6\", \"reserved\": 1}"), lines[11]);
    }

    @Test
    void aTornLastRecordOfEachKindIsCutAndEveryCompleteRecordKept() throws Exception {
        Path journal = journalWithEveryRecordKind();
        List<String> records = Files.readAllLines(journal);
        for (String kind : List.of("reserve", "decline-reserve", "capture", "void", "expire")) {
            int last = lastOfKind(records, kind);
            String kept = String.join("\n", records.subList(0, last)) + "\n";
            String torn = records.get(last).substring(0, records.get(last).length() / 2);
            Files.writeString(journal, kept + torn);
            PaymentNode.PaymentHandler table = FileJournal.tableFromJournal(journal, log, new Balances(new BigDecimal("100")), 0);
            table.journal().close();
            assertTrue(captured.text().contains("cut off a torn last record (" + torn.length() + " bytes after record " + last + ")"),
                    kind + ": " + captured.text());
            assertEquals(kept, Files.readString(journal), kind + ": the good records are untouched");
        }
        // A torn capture is a capture never made: the hold is still there to capture, once.
        List<String> upToCapture = records.subList(0, lastOfKind(records, "capture") + 1);
        String capture = upToCapture.get(upToCapture.size() - 1);
        Files.writeString(journal, String.join("\n", upToCapture.subList(0, upToCapture.size() - 1)) + "\n" + capture.substring(0, capture.length() - 3));
        String again = run(journal, capture(1, "s2", null) + capture(2, "s2", null));
        assertEquals(withNote(again.split("\n")[0]).replace("\"in_reply_to\": 1, \"msg_id\": 0", "\"in_reply_to\": 2, \"msg_id\": 1"), again.split("\n")[1]);
        assertTrue(again.startsWith("{\"src\": \"payment\", \"dest\": \"c1\", \"body\": {\"type\": \"CapturePayment_ok\", \"saga_id\": \"s2\", \"step\": 1,"
                + " \"result\": {\"payment_id\": \"p2\", \"captured\": 20, \"released\": 0}, \"in_reply_to\": 1"), again);
    }

    @Test
    void aDamagedRecordOfEachKindFollowedByGoodOnesStopsTheNode() throws Exception {
        Path journal = journalWithEveryRecordKind();
        List<String> records = Files.readAllLines(journal);
        for (String kind : List.of("reserve", "decline-reserve", "capture", "void", "expire")) {
            int first = firstOfKind(records, kind);
            assertTrue(first < records.size() - 1, kind + " is followed by good records");
            List<String> damaged = new ArrayList<>(records);
            damaged.set(first, damaged.get(first).replace("step1", "step7"));   // its checksum no longer matches
            Files.writeString(journal, String.join("\n", damaged) + "\n");
            IOException refused = assertThrows(IOException.class,
                    () -> FileJournal.tableFromJournal(journal, log, new Balances(new BigDecimal("100")), 0));
            assertTrue(refused.getMessage().startsWith("record " + (first + 1) + " is damaged and good records follow it"), kind + ": " + refused.getMessage());
        }
    }

    @Test
    void aCaptureOfAPaymentNoReserveRecordMadeStopsTheNodeNamingTheRecord() throws Exception {
        Path journal = dir.resolve("journal");
        run(journal, reserve(1, "s1", "u1", "50", null) + Wire.charge(2, "s2", 1, "5"));   // p1 reserved, p2 charged
        byte[] good = Files.readAllBytes(journal);
        append(journal, "[\"capture\", \"s9:step1:capture\", null, null, \"5\", \"0\", 9]");
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: s9:step1:capture resolved p9, which no record reserved");

        Files.write(journal, good);
        append(journal, "[\"capture\", \"s2:step1:capture\", null, null, \"5\", \"0\", 2]");   // p2 is a charge, not a reservation
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: s2:step1:capture resolved p2, which no record reserved");

        // The node itself, as run.sh starts it: exit status 2, the record named on stderr, nothing served.
        Node.Run process = Node.runProcess("--journal", journal.toString(), "--balance", "100");
        assertEquals(2, process.status(), process.stderr());
        assertEquals("", process.stdout());
        assertTrue(process.stderr().contains("record 4: invariant hold_resolved_once broken: s2:step1:capture resolved p2"), process.stderr());
    }

    @Test
    void aVoidRecordThenACaptureRecordOfOneReservationStopsTheNode() throws Exception {
        Path journal = dir.resolve("journal");
        run(journal, reserve(1, "s1", "u1", "50", null) + voidHold(2, "s1"));
        append(journal, "[\"capture\", \"s1:step1:capture\", null, null, \"50\", \"0\", 1]");
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: p1 is voided, and would be captured");
    }

    @Test
    void anExpireRecordThenACaptureRecordOfOneReservationStopsTheNode() throws Exception {
        Path journal = dir.resolve("journal");
        run(journal, reserve(1, "s1", "u1", "50", 1L));
        Thread.sleep(5);
        run(journal, capture(1, "s1", null));   // reservation_expired: an expire record, no capture record
        assertEquals(List.of("balance", "reserve", "expire"), kinds(Files.readAllLines(journal)));
        append(journal, "[\"capture\", \"s1:step1:capture\", null, null, \"50\", \"0\", 1]");
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: p1 is expired, and would be captured");
    }

    /** The other order, and a void of a void: the live node never writes either (a void of a captured hold is 14 already_captured). */
    @Test
    void aCaptureRecordThenAVoidRecordOfOneReservationStopsTheNode() throws Exception {
        Path journal = dir.resolve("journal");
        run(journal, reserve(1, "s1", "u1", "50", null) + capture(2, "s1", "20"));
        append(journal, "[\"void\", \"s1:step1:void\", null, \"50\", 1]");
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: p1 is captured, and would be voided");

        Files.delete(journal);
        run(journal, reserve(1, "s1", "u1", "50", null) + voidHold(2, "s1"));
        append(journal, "[\"void\", \"s1:step1:void\", null, \"50\", 1]");
        assertRefused(journal, "record 4: invariant hold_resolved_once broken: p1 is voided, and would be voided");
    }

    /** A capture or void record names its step's reservation: never another step's, never none. */
    @Test
    void aCaptureOrVoidRecordOfAnotherStepsReservationStopsTheNode() throws Exception {
        Path journal = dir.resolve("journal");
        run(journal, reserve(1, "s1", "u1", "50", null));
        byte[] good = Files.readAllBytes(journal);
        append(journal, "[\"capture\", \"s2:step1:capture\", null, null, \"50\", \"0\", 1]");
        assertRefused(journal, "record 3: invariant hold_resolved_once broken: s2:step1:capture resolved p1, the reservation of s1:step1");

        Files.write(journal, good);
        append(journal, "[\"void\", \"s2:step1:void\", null, \"50\", 1]");
        assertRefused(journal, "record 3: invariant hold_resolved_once broken: s2:step1:void resolved p1, the reservation of s1:step1");

        Files.write(journal, good);
        append(journal, "[\"capture\", \"s1:step1:capture\", null, null, \"50\", \"0\", 0]");
        assertRefused(journal, "record 3: invariant hold_resolved_once broken: s1:step1:capture captured no reservation");
    }

    private void assertRefused(Path journal, String message) {
        IOException refused = assertThrows(IOException.class, () -> FileJournal.tableFromJournal(journal, log, new Balances(new BigDecimal("100")), 0));
        assertEquals(message + ": refusing to start (repair the file, or move it aside)", refused.getMessage());
    }

    /** Appends a well-formed record (its checksum right): damage that no checksum can see. */
    static void append(Path journal, String record) throws IOException {
        CRC32 crc = new CRC32();
        crc.update(record.getBytes(StandardCharsets.UTF_8));
        Files.writeString(journal, String.format("%08x %s%n", crc.getValue(), record), StandardOpenOption.APPEND);
    }

    static List<String> kinds(List<String> records) {
        return records.stream().map(JournalTwoPhaseTest::kind).toList();
    }

    private static String kind(String record) {
        return record.substring(record.indexOf("[\"") + 2, record.indexOf("\","));
    }

    private static int lastOfKind(List<String> records, String kind) {
        for (int i = records.size() - 1; i >= 0; i--) {
            if (kind(records.get(i)).equals(kind)) {
                return i;
            }
        }
        throw new AssertionError("no " + kind + " record in " + records);
    }

    private static int firstOfKind(List<String> records, String kind) {
        for (int i = 0; i < records.size(); i++) {
            if (kind(records.get(i)).equals(kind)) {
                return i;
            }
        }
        throw new AssertionError("no " + kind + " record in " + records);
    }
}
