package payment.harness;

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.Test;
import payment.harness.ClusterChecker.Kind;
import payment.harness.ClusterHistory.Event;
import payment.harness.ClusterHistory.Type;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The checker on histories written by hand: each rule that the broken nodes of ClusterTest do not isolate. */
class ClusterCheckerTest {
    /** A history in the making: events one millisecond apart, in the order added. */
    private final List<Event> history = new ArrayList<>();

    private void event(Type type, int op, long msgId, String body) throws Exception {
        JsonNode json = body == null ? null : ClusterHarness.JSON.readTree(body);
        history.add(new Event(history.size(), history.size() * 1_000_000L, "c1", type, op, 1, "n1", msgId, "run", null, json, null));
    }

    private Map<Kind, Integer> counts() {
        ClusterChecker.Verdict verdict = ClusterChecker.check(history);
        Map<Kind, Integer> counts = new java.util.EnumMap<>(Kind.class);
        verdict.anomalies().forEach((kind, list) -> counts.put(kind, list.size()));
        return counts;
    }

    private static final String CHARGE = "{\"type\":\"ChargePayment\",\"saga_id\":\"s\",\"step\":1,\"params\":{\"user_id\":\"u\",\"amount\":10.00}}";
    private static final String CHARGED = "{\"type\":\"ChargePayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"charged\":10.00}}";

    private static String refund(int step, String amount) {
        return "{\"type\":\"RefundPayment\",\"saga_id\":\"s\",\"step\":" + step + ",\"params\":{\"payment_id\":\"p1\",\"amount\":" + amount + "}}";
    }

    private static String refunded(int step, String id, String amount) {
        return "{\"type\":\"RefundPayment_ok\",\"saga_id\":\"s\",\"step\":" + step + ",\"result\":{\"refund_id\":\"" + id + "\",\"refunded\":" + amount + "}}";
    }

    @Test
    void aLateDefiniteReplyResolvesItsOperationAndATimeoutAloneDoesNot() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.INFO, 1, 1, null);
        event(Type.LATE, 1, 1, CHARGED);
        event(Type.INVOKE, 2, 2, CHARGE.replace("\"step\":1", "\"step\":2"));
        event(Type.INFO, 2, 2, null);
        assertEquals(Map.of(Kind.UNRESOLVED, 1), counts());
    }

    private void init(Type type, String node, long msgId) {
        history.add(new Event(history.size(), history.size() * 1_000_000L, "c0", type, null, null, node, msgId, null, null, null, null));
    }

    /**
     * An init is owed its init_ok, unless its process was killed before its time to answer was up (a kill in the first
     * moments after a restart); a restarted node that let that time pass is caught, whatever comes to it later.
     */
    @Test
    void anInitWithoutInitOkIsOpenUnlessItsProcessWasKilledBeforeItsTimeWasUp() throws Exception {
        init(Type.INIT, "n1", 1);
        init(Type.INIT, "n2", 2);
        init(Type.INIT_OK, "n2", 2);
        init(Type.INIT, "n2", 4);
        kill("n2");   // 1 ms after init 4: excused
        init(Type.INIT, "n2", 5);
        init(Type.INIT_OK, "n2", 5);
        init(Type.INIT, "n3", 6);
        history.add(new Event(history.size(), history.size() * 1_000_000L + ClusterHarness.INIT_WAIT_MILLIS * 1_000_000, "nemesis", Type.FAULT_START,
                null, null, "n3", null, null, "kill", null, "SIGKILL n3"));   // past init 6's time: still open
        assertEquals(List.of("the init of n1 (msg_id 1) got no init_ok", "the init of n3 (msg_id 6) got no init_ok"),
                ClusterChecker.check(history).anomalies().get(Kind.UNRESOLVED).stream().map(ClusterChecker.Anomaly::text).toList());
    }

    private void kill(String node) {
        history.add(new Event(history.size(), history.size() * 1_000_000L, "nemesis", Type.FAULT_START, null, null, node, null, null, "kill",
                null, "SIGKILL " + node));
    }

    @Test
    void anOperationAnsweredOnlyElevenIsStillOpen() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.FAIL, 1, 1, "{\"type\":\"error\",\"code\":11,\"text\":\"not initialized\"}");
        assertEquals(Map.of(Kind.UNRESOLVED, 1), counts());
    }

    @Test
    void refundsOfOnePaymentUnderSeveralKeysAboveItsChargeAreCaught() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED);
        for (int step = 7; step <= 9; step++) {
            event(Type.INVOKE, step, step, refund(step, "4"));
            event(Type.OK, step, step, refunded(step, "r" + step, "4"));
        }
        assertEquals(Map.of(Kind.REFUNDS_ABOVE_CHARGE, 1), counts());
        // amounts compared by value: 10.00 is 10
        assertEquals("the acknowledged refunds of p1 add up to 12, above the 10 it charged", ClusterChecker.check(history)
                .anomalies().get(Kind.REFUNDS_ABOVE_CHARGE).get(0).text().substring(0, 68));
    }

    @Test
    void aStatusReadThatMissesAnAcknowledgedRefundIsStale() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED);
        event(Type.INVOKE, 2, 2, refund(7, "4"));
        event(Type.OK, 2, 2, refunded(7, "r1", "4"));
        event(Type.INVOKE, 3, 3, "{\"type\":\"PaymentStatus\",\"saga_id\":\"s\",\"step\":1}");
        event(Type.OK, 3, 3, "{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"s\",\"step\":1,\"status\":\"charged\","
                + "\"payment\":{\"payment_id\":\"p1\",\"charged\":10.00,\"refunded\":0}}");
        assertEquals(Map.of(Kind.STALE_STATUS, 1), counts());
    }

    private static final String WHAT_IS_LEFT = "{\"type\":\"RefundPayment\",\"saga_id\":\"s\",\"step\":9,\"params\":{\"payment_id\":\"p1\"}}";
    private static final String REFUSED = "{\"type\":\"error\",\"code\":22,\"text\":\"first used with other params\"}";
    private static final String SIX_LEFT = "{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"s\",\"step\":1,\"status\":\"charged\","
            + "\"payment\":{\"payment_id\":\"p1\",\"charged\":10.00,\"refunded\":4}}";

    /** A refused refund, then the corrected request refused too, though a later read shows 6 of 10 left. */
    @Test
    void aCorrectedRefundRefusedWhileMoneyIsLeftIsCaughtUnlessTheKeyWasStillInUse() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED);
        event(Type.INVOKE, 2, 2, refund(7, "4"));
        event(Type.OK, 2, 2, refunded(7, "r1", "4"));
        event(Type.INVOKE, 3, 3, refund(9, "7"));
        event(Type.FAIL, 3, 3, "{\"type\":\"error\",\"code\":22,\"text\":\"more than is left\"}");
        event(Type.INVOKE, 4, 4, WHAT_IS_LEFT);
        event(Type.FAIL, 4, 4, REFUSED);
        event(Type.INVOKE, 5, 5, "{\"type\":\"PaymentStatus\",\"saga_id\":\"s\",\"step\":1}");
        event(Type.OK, 5, 5, SIX_LEFT);
        assertEquals(Map.of(Kind.REFUSED_WITH_MONEY_LEFT, 1), counts());

        // The same, but a duplicate of the first refund was still at a node when the corrected one came: no anomaly.
        history.clear();
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED);
        event(Type.INVOKE, 2, 2, refund(7, "4"));
        event(Type.OK, 2, 2, refunded(7, "r1", "4"));
        event(Type.INVOKE, 3, 3, refund(9, "7"));
        event(Type.INVOKE, 3, 4, refund(9, "7"));
        event(Type.FAIL, 3, 3, "{\"type\":\"error\",\"code\":22,\"text\":\"more than is left\"}");
        event(Type.INVOKE, 4, 5, WHAT_IS_LEFT);
        event(Type.FAIL, 4, 5, REFUSED);
        event(Type.FAIL, 3, 4, "{\"type\":\"error\",\"code\":22,\"text\":\"more than is left\"}");
        event(Type.INVOKE, 5, 6, "{\"type\":\"PaymentStatus\",\"saga_id\":\"s\",\"step\":1}");
        event(Type.OK, 5, 6, SIX_LEFT);
        assertEquals(Map.of(), counts());
    }

    @Test
    void aReplyToNoRequestAndAnAnswerForAnotherKeyAreWrongReplies() throws Exception {
        event(Type.LATE, 0, 99, CHARGED);
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED.replace("\"saga_id\":\"s\"", "\"saga_id\":\"other\""));
        event(Type.INVOKE, 2, 2, CHARGE);
        event(Type.OK, 2, 2, CHARGED);
        // op 1 got no answer that fits it: it is open, too
        assertEquals(Map.of(Kind.WRONG_REPLY, 2, Kind.UNRESOLVED, 1), counts());
    }

    @Test
    void theSameKeyAndParamsAnsweredOkAndThenRefusedAreDifferentAnswers() throws Exception {
        event(Type.INVOKE, 1, 1, CHARGE);
        event(Type.OK, 1, 1, CHARGED);
        event(Type.INVOKE, 2, 2, CHARGE);
        event(Type.FAIL, 2, 2, "{\"type\":\"error\",\"code\":14,\"text\":\"compensated\"}");
        assertEquals(Map.of(Kind.DIFFERENT_ANSWERS, 1), counts());
        assertEquals(Set.of(Kind.DIFFERENT_ANSWERS), ClusterChecker.check(history).kinds());
    }

    // ---- two-phase payments (SPEC section 12): the rules of HoldInvariants --------------------------------------

    private static final String RESERVE = "{\"type\":\"ReservePayment\",\"saga_id\":\"s\",\"step\":1,\"params\":{\"user_id\":\"u\",\"amount\":10.00}}";
    private static final String RESERVED = "{\"type\":\"ReservePayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"reserved\":10.00}}";
    private static final String VOID = "{\"type\":\"VoidPayment\",\"saga_id\":\"s\",\"step\":1,\"compensating\":true}";
    private static final String EXPIRED = "{\"type\":\"error\",\"code\":14,\"reason\":\"reservation_expired\",\"text\":\"expired\"}";

    private static String capture(String amount) {
        return "{\"type\":\"CapturePayment\",\"saga_id\":\"s\",\"step\":1,\"params\":{" + (amount == null ? "" : "\"amount\":" + amount) + "}}";
    }

    private static String captured(String captured, String released) {
        return "{\"type\":\"CapturePayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{\"payment_id\":\"p1\",\"captured\":" + captured
                + ",\"released\":" + released + "}}";
    }

    private static String voided(String paymentId, String released) {
        return "{\"type\":\"VoidPayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{" + (paymentId == null ? "" : "\"payment_id\":\"" + paymentId + "\",")
                + "\"released\":" + released + "}}";
    }

    /** Requests and their answers, one after the other: pairs of (request, answer). */
    private void served(String... pairs) throws Exception {
        for (int i = 0; i < pairs.length; i += 2) {
            int op = history.size() + 1;
            event(Type.INVOKE, op, op, pairs[i]);
            event(pairs[i + 1].contains("\"error\"") ? Type.FAIL : Type.OK, op, op, pairs[i + 1]);
        }
    }

    /** The happy paths leave nothing to report: a capture that came first (no record), a partial capture, its refund, a void of an expired hold. */
    @Test
    void twoPhaseSagasServedByTheRulesAreValid() throws Exception {
        served(capture(null), "{\"type\":\"error\",\"code\":14,\"reason\":\"no_reservation\",\"text\":\"none yet\"}",
                RESERVE, RESERVED, RESERVE, RESERVED.replace("}}", "},\"note\":\"cached_result\"}"),
                CHARGE, "{\"type\":\"error\",\"code\":22,\"reason\":\"key_reused\",\"text\":\"reserved\"}",
                capture(null), captured("10.00", "0"),
                capture("6"), "{\"type\":\"error\",\"code\":22,\"reason\":\"key_reused\",\"text\":\"other params\"}",
                VOID, "{\"type\":\"error\",\"code\":14,\"reason\":\"already_captured\",\"text\":\"captured\"}",
                "{\"type\":\"RefundPayment\",\"saga_id\":\"s\",\"step\":1,\"params\":{\"amount\":4}}",
                "{\"type\":\"RefundPayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{\"refund_id\":\"r1\",\"refunded\":4}}",
                "{\"type\":\"PaymentStatus\",\"saga_id\":\"s\",\"step\":1}",
                "{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"s\",\"step\":1,\"status\":\"captured\",\"payment\":{\"payment_id\":\"p1\","
                        + "\"reserved\":10.00,\"captured\":10.00,\"refunded\":4},\"refund\":{\"refund_id\":\"r1\",\"refunded\":4}}");
        // step 2: reserved, expired (a capture says so), then voided: it releases nothing
        served(RESERVE.replace("\"step\":1", "\"step\":2"), RESERVED.replace("\"step\":1", "\"step\":2").replace("p1", "p2"),
                capture(null).replace("\"step\":1", "\"step\":2"), EXPIRED,
                VOID.replace("\"step\":1", "\"step\":2"), voided("p2", "0").replace("\"step\":1", "\"step\":2"));
        assertEquals(Map.of(), counts());
    }

    @Test
    void aCaptureAboveItsReservationIsCaught() throws Exception {
        served(RESERVE, RESERVED, capture("12"), captured("12", "-2"));
        assertEquals(Map.of(Kind.CAPTURE_ABOVE_RESERVATION, 1), counts());
    }

    /** Both won: the kind says which answered second (a void after a capture; a capture after a void). */
    @Test
    void aCaptureAndAVoidOfOneReservationBothOkAreCaughtByWhichCameSecond() throws Exception {
        served(RESERVE, RESERVED, capture(null), captured("10.00", "0"), VOID, voided("p1", "10.00"));
        assertEquals(Map.of(Kind.CAPTURED_AND_VOIDED, 1), counts());
        history.clear();
        served(RESERVE, RESERVED, VOID, voided("p1", "10.00"), capture(null), captured("10.00", "0"));
        assertEquals(Map.of(Kind.CAPTURE_AFTER_VOID, 1), counts());
    }

    /** After a reservation_expired answer no capture may be ok, even one asked with other params (an error leaves no record). */
    @Test
    void aCaptureOkAfterAReservationExpiredAnswerIsCaught() throws Exception {
        served(RESERVE, RESERVED, capture("5"), EXPIRED, capture(null), captured("10.00", "0"));
        assertEquals(Map.of(Kind.CAPTURE_AFTER_VOID, 1), counts());
    }

    @Test
    void aReservationOfAStepClosedByAVoidThatCameFirstIsCaught() throws Exception {
        served(VOID, voided(null, "0"), RESERVE, RESERVED);
        assertEquals(Map.of(Kind.HANGING_RESERVATION, 1), counts());
    }

    /** Released exactly once: by the capture (what it did not take), by the void (all of a live hold), by the expiry (then the void releases 0). */
    @Test
    void aHoldReleasedTwiceOrNotAllIsCaught() throws Exception {
        served(RESERVE, RESERVED, capture("6"), captured("6", "10.00"));
        assertEquals(Map.of(Kind.HOLD_NOT_RELEASED_ONCE, 1), counts());
        history.clear();
        served(RESERVE, RESERVED, VOID, voided("p1", "4"));
        assertEquals(Map.of(Kind.HOLD_NOT_RELEASED_ONCE, 1), counts());
        history.clear();
        served(RESERVE, RESERVED, capture(null), EXPIRED, VOID, voided("p1", "10.00"));
        assertEquals(Map.of(Kind.HOLD_NOT_RELEASED_ONCE, 1), counts());
    }

    /** A captured reservation is refunded from what was captured, not from what was held. */
    @Test
    void refundsOfACapturedReservationAboveItsCaptureAreCaught() throws Exception {
        served(RESERVE, RESERVED, capture("6"), captured("6", "4.00"),
                "{\"type\":\"RefundPayment\",\"saga_id\":\"s\",\"step\":1,\"params\":{\"amount\":8}}",
                "{\"type\":\"RefundPayment_ok\",\"saga_id\":\"s\",\"step\":1,\"result\":{\"refund_id\":\"r1\",\"refunded\":8}}");
        assertEquals(Map.of(Kind.REFUNDS_ABOVE_CHARGE, 1), counts());
    }

    /**
     * A refund refused as not captured is wrong only if a capture was acknowledged before it was sent: a capture still
     * at work when it was refused may land after it, and a later status read then shows money to refund.
     */
    @Test
    void aRefundRefusedAsNotCapturedIsWrongOnlyAfterAnAcknowledgedCapture() throws Exception {
        String refundAll = "{\"type\":\"RefundPayment\",\"saga_id\":\"s\",\"step\":1}";
        String notCaptured = "{\"type\":\"error\",\"code\":22,\"reason\":\"payment_not_captured\",\"text\":\"void it instead\"}";
        String status = "{\"type\":\"PaymentStatus\",\"saga_id\":\"s\",\"step\":1}";
        String capturedStatus = "{\"type\":\"PaymentStatus_ok\",\"saga_id\":\"s\",\"step\":1,\"status\":\"captured\",\"payment\":{\"payment_id\":\"p1\","
                + "\"reserved\":10.00,\"captured\":10.00,\"refunded\":0},\"capture\":{\"payment_id\":\"p1\",\"captured\":10.00,\"released\":0}}";
        served(RESERVE, RESERVED);
        event(Type.INVOKE, 10, 10, capture(null));   // sent, its answer lost for now
        served(refundAll, notCaptured);
        event(Type.LATE, 10, 10, captured("10.00", "0"));
        served(status, capturedStatus);
        assertEquals(Map.of(), counts());
        history.clear();
        served(RESERVE, RESERVED, capture(null), captured("10.00", "0"), refundAll, notCaptured, status, capturedStatus);
        assertEquals(Map.of(Kind.REFUSED_WITH_MONEY_LEFT, 1), counts());
    }

    /** Every retry of a capture or void key gets the same result. */
    @Test
    void aCaptureKeyAnsweredTwoWaysIsDifferentAnswers() throws Exception {
        served(RESERVE, RESERVED, capture("6"), captured("6", "4.00"), capture("6"), captured("6", "4.00").replace("p1", "p9"));
        assertEquals(Map.of(Kind.DIFFERENT_ANSWERS, 1), counts());
    }
}
