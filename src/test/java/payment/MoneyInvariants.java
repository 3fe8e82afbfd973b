package payment;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The money invariants every checker holds the node to, written once: the single node's model test (ModelTest),
 * the cluster's (ClusterModelTest) and the harness's checker (ClusterChecker) each feed it what the node's replies
 * said, and each reports what it finds in its own words and with its own other checks.
 *
 * <ul>
 *   <li>a step key has at most one payment;</li>
 *   <li>a payment id belongs to one step key;</li>
 *   <li>a refund key has one result, and a refund id belongs to one refund key;</li>
 *   <li>the acknowledged refunds of a payment, under every key that drew on it, never add up to more than it charged.</li>
 * </ul>
 *
 * Amounts are compared by value (10.00 is 10). {@code where} says where a fact was seen, for the report.
 */
public final class MoneyInvariants {
    public enum Rule { ONE_PAYMENT_PER_STEP, ONE_STEP_PER_PAYMENT, ONE_RESULT_PER_REFUND_KEY, ONE_KEY_PER_REFUND_ID, REFUNDS_WITHIN_CHARGE }

    /** A rule found broken, and what shows it. */
    public record Broken(Rule rule, String text) {
    }

    private final Map<String, Map<String, String>> paymentsOfStep = new TreeMap<>();   // step key -> payment id -> where first seen
    private final Map<String, Map<String, String>> stepsOfPayment = new TreeMap<>();   // payment id -> step key -> where
    private final Map<String, BigDecimal> charged = new HashMap<>();
    private final Map<String, Map<String, String>> resultsOfRefundKey = new TreeMap<>();   // refund key -> result -> where
    private final Map<String, Map<String, String>> keysOfRefundId = new TreeMap<>();      // refund id -> refund key -> where
    private final Map<String, Map<String, String>> refundsOfPayment = new TreeMap<>();    // payment id -> refund key -> where
    private final Map<String, BigDecimal> refundedUnderKey = new HashMap<>();             // refund key -> amount, its first result

    /** A payment the node showed for a step: a charge's result, or a status read's payment. */
    public void payment(String stepKey, String paymentId, BigDecimal amount, String where) {
        paymentsOfStep.computeIfAbsent(stepKey, k -> new LinkedHashMap<>()).putIfAbsent(paymentId, where);
        stepsOfPayment.computeIfAbsent(paymentId, k -> new LinkedHashMap<>()).putIfAbsent(stepKey, where);
        charged.putIfAbsent(paymentId, amount);
    }

    /**
     * A refund the node acknowledged under {@code refundKey}: its id (null: it refunded nothing), its amount, and the
     * payment it drew on ({@code paymentId}, null when the checker cannot tell: it then counts toward no payment). Feed
     * the facts in the order the node answered them.
     */
    public void refund(String refundKey, String refundId, String paymentId, BigDecimal amount, String where) {
        String result = (refundId == null ? "nothing" : refundId) + " " + amount.stripTrailingZeros().toPlainString();
        boolean first = !resultsOfRefundKey.containsKey(refundKey);
        resultsOfRefundKey.computeIfAbsent(refundKey, k -> new LinkedHashMap<>()).putIfAbsent(result, where);
        if (refundId == null || !first) {
            return;   // a retry's result is the same refund, counted once
        }
        keysOfRefundId.computeIfAbsent(refundId, k -> new LinkedHashMap<>()).putIfAbsent(refundKey, where);
        refundedUnderKey.put(refundKey, amount);
        if (paymentId != null && charged.containsKey(paymentId)) {
            // (A payment the node had not shown yet is one it did not know: a refund naming it trusted the saga, case 3
            // of docs/PROTOCOL.md section 4, and drew on no ledger, not even on a payment that takes that id later.)
            refundsOfPayment.computeIfAbsent(paymentId, k -> new LinkedHashMap<>()).put(refundKey, where);
        }
    }

    /** The step's payment when the node showed exactly one, else null. */
    public String paymentOf(String stepKey) {
        Map<String, String> payments = paymentsOfStep.getOrDefault(stepKey, Map.of());
        return payments.size() == 1 ? payments.keySet().iterator().next() : null;
    }

    /** The acknowledged refunds of a payment, added up (0 when none). */
    public BigDecimal refundedOf(String paymentId) {
        return refundsOfPayment.getOrDefault(paymentId, Map.of()).keySet().stream().map(refundedUnderKey::get)
                .reduce(BigDecimal.ZERO, BigDecimal::add);
    }

    /** Every rule broken so far, in the order of the rules. */
    public List<Broken> broken() {
        List<Broken> broken = new ArrayList<>();
        paymentsOfStep.forEach((step, payments) -> {
            if (payments.size() > 1) {
                broken.add(new Broken(Rule.ONE_PAYMENT_PER_STEP, step + " has " + payments.size() + " payments: " + describe(payments)));
            }
        });
        stepsOfPayment.forEach((payment, steps) -> {
            if (steps.size() > 1) {
                broken.add(new Broken(Rule.ONE_STEP_PER_PAYMENT, "payment " + payment + " was given to " + steps.size() + " keys: " + describe(steps)));
            }
        });
        resultsOfRefundKey.forEach((key, results) -> {
            if (results.size() > 1) {
                broken.add(new Broken(Rule.ONE_RESULT_PER_REFUND_KEY, key + " has " + results.size() + " results: " + describe(results)));
            }
        });
        keysOfRefundId.forEach((refund, keys) -> {
            if (keys.size() > 1) {
                broken.add(new Broken(Rule.ONE_KEY_PER_REFUND_ID, "refund " + refund + " was given to " + keys.size() + " keys: " + describe(keys)));
            }
        });
        refundsOfPayment.forEach((payment, refunds) -> {
            BigDecimal limit = charged.get(payment);
            BigDecimal refunded = refundedOf(payment);
            if (limit != null && refunded.compareTo(limit) > 0) {
                broken.add(new Broken(Rule.REFUNDS_WITHIN_CHARGE, "the acknowledged refunds of " + payment + " add up to "
                        + refunded.toPlainString() + ", above the " + limit.toPlainString()
                        + " it charged: " + describe(refunds)));
            }
        });
        return broken;
    }

    /** The first rule broken, as text, or null when none is. */
    public String firstBroken() {
        List<Broken> broken = broken();
        return broken.isEmpty() ? null : broken.get(0).text();
    }

    private static String describe(Map<String, String> seen) {
        List<String> parts = new ArrayList<>();
        seen.forEach((what, where) -> parts.add(what + " (" + where + ")"));
        return String.join("; ", parts);
    }
}
