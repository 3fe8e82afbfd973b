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
}
