package payment;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The rules of two-phase payments (SPEC section 12) that a checker can hold a node to from its replies alone, written
 * once beside {@link MoneyInvariants}: a checker feeds it what the node acknowledged (reservations, captures, voids,
 * expiries, other payments of a step), each with when it was sent and answered on one clock, and reports what it finds
 * in its own words. A reservation is named by its step key (a step has one payment: MoneyInvariants holds that).
 *
 * <ul>
 *   <li>{@link Rule#CAPTURE_WITHIN_RESERVATION}: what a capture took is at most what was reserved;</li>
 *   <li>{@link Rule#CAPTURE_OR_VOID}: a reservation is never both captured and voided: no void ok of a reservation
 *   (whatever it released) answered after a capture ok of it (the other order is the next rule's);</li>
 *   <li>{@link Rule#NO_CAPTURE_AFTER_VOID_OR_EXPIRY}: no capture ok answered after a void ok of its reservation (one
 *   that released the hold, or found it expired) or after a {@code reservation_expired} answer;</li>
 *   <li>{@link Rule#VOID_FIRST_CLOSES_STEP}: a void that came before its reservation (ok, released 0, no payment) closes
 *   the step: the step never has a payment (reserved or charged), whenever it was made;</li>
 *   <li>{@link Rule#RELEASED_ONCE}: a hold is released exactly once: a capture's released and captured add up to what
 *   was reserved; a void releases all of a live hold or, of one that had expired (a {@code reservation_expired}
 *   answer given before the void was sent), nothing;</li>
 *   <li>{@link Rule#ONE_RESULT_PER_KEY}: a capture key and a void key each have one ok result, and a step one
 *   reservation result (the same payment id and amounts for every retry).</li>
 * </ul>
 *
 * Amounts are compared by value (10.00 is 10). {@code sent} and {@code answered} are instants on the checker's clock
 * (nanoseconds); {@code where} says where a fact was seen, for the report. Feed each key's first ok first (a key's
 * later results are compared with its first).
 */
public final class HoldInvariants {
    public enum Rule { CAPTURE_WITHIN_RESERVATION, CAPTURE_OR_VOID, NO_CAPTURE_AFTER_VOID_OR_EXPIRY, VOID_FIRST_CLOSES_STEP, RELEASED_ONCE,
        ONE_RESULT_PER_KEY }

    /** A rule found broken, and what shows it. */
    public record Broken(Rule rule, String text) {
    }

    private record Fact(String result, BigDecimal first, BigDecimal second, long sent, long answered, String where) {
    }

    private final Map<String, Map<String, Fact>> reservations = new TreeMap<>();    // step key -> result -> first seen
    private final Map<String, Map<String, Fact>> captures = new TreeMap<>();        // step key -> result -> first seen
    private final Map<String, Map<String, Fact>> voids = new TreeMap<>();           // step key -> result -> first seen
    private final Map<String, Fact> firstExpiry = new TreeMap<>();                  // step key -> the first reservation_expired answer
    private final Map<String, Map<String, String>> paymentsOfStep = new TreeMap<>();   // step key -> payment id -> where

    /** A ReservePayment_ok: the step's payment and what it holds. */
    public void reserved(String stepKey, String paymentId, BigDecimal reserved, long sent, long answered, String where) {
        payment(stepKey, paymentId, where);
        reservations.computeIfAbsent(stepKey, k -> new LinkedHashMap<>())
                .putIfAbsent(paymentId + " " + plain(reserved), new Fact(paymentId, reserved, null, sent, answered, where));
    }

    /** Any other sight of a payment of the step: a charge, a status read's payment. */
    public void payment(String stepKey, String paymentId, String where) {
        paymentsOfStep.computeIfAbsent(stepKey, k -> new LinkedHashMap<>()).putIfAbsent(paymentId, where);
    }

    /** A CapturePayment_ok of the step's reservation. */
    public void captured(String stepKey, String paymentId, BigDecimal captured, BigDecimal released, long sent, long answered, String where) {
        captures.computeIfAbsent(stepKey, k -> new LinkedHashMap<>()).putIfAbsent(paymentId + " " + plain(captured) + " " + plain(released),
                new Fact(paymentId, captured, released, sent, answered, where));
    }

    /** A VoidPayment_ok of the step: the payment it released ({@code paymentId} null: it found none) and how much. */
    public void voided(String stepKey, String paymentId, BigDecimal released, long sent, long answered, String where) {
        voids.computeIfAbsent(stepKey, k -> new LinkedHashMap<>()).putIfAbsent((paymentId == null ? "none" : paymentId) + " " + plain(released),
                new Fact(paymentId, released, null, sent, answered, where));
    }

    /** A CapturePayment answered {@code reservation_expired}: the step's hold had expired when it was served. */
    public void expired(String stepKey, long sent, long answered, String where) {
        Fact seen = new Fact(null, null, null, sent, answered, where);
        firstExpiry.merge(stepKey, seen, (a, b) -> a.answered() <= b.answered() ? a : b);
    }

    /** Every rule broken so far, in the order of the rules. */
    public List<Broken> broken() {
        List<Broken> broken = new ArrayList<>();
        captures.forEach((step, results) -> {
            Fact capture = first(results);
            BigDecimal reserved = reservedOf(step);
            if (reserved != null && capture.first().compareTo(reserved) > 0) {
                broken.add(new Broken(Rule.CAPTURE_WITHIN_RESERVATION, step + ": the capture took " + plain(capture.first()) + " of a reservation of "
                        + plain(reserved) + " (" + capture.where() + "; reserved: " + first(reservations.get(step)).where() + ")"));
            }
        });
        captures.forEach((step, results) -> {
            Fact capture = first(results);
            Fact voidOk = first(voids.get(step));
            if (voidOk != null && voidOk.result() != null && voidOk.answered() > capture.answered()) {
                broken.add(new Broken(Rule.CAPTURE_OR_VOID, step + " was captured (" + plain(capture.first()) + ", " + capture.where()
                        + ") and then voided, releasing " + plain(voidOk.first()) + " (" + voidOk.where() + ")"));
            }
        });
        captures.forEach((step, results) -> {
            Fact capture = first(results);
            Fact voidOk = first(voids.get(step));
            Fact expiry = firstExpiry.get(step);
            if (voidOk != null && voidOk.result() != null && voidOk.answered() < capture.answered()) {
                broken.add(new Broken(Rule.NO_CAPTURE_AFTER_VOID_OR_EXPIRY, step + " was captured (" + plain(capture.first()) + ", " + capture.where()
                        + ") after its void was answered (released " + plain(voidOk.first()) + ", " + voidOk.where() + ")"));
            } else if (expiry != null && expiry.answered() < capture.answered()) {
                broken.add(new Broken(Rule.NO_CAPTURE_AFTER_VOID_OR_EXPIRY, step + " was captured (" + plain(capture.first()) + ", " + capture.where()
                        + ") after a capture was answered reservation_expired (" + expiry.where() + ")"));
            }
        });
        voids.forEach((step, results) -> {
            Fact voidOk = first(results);
            Map<String, String> payments = paymentsOfStep.getOrDefault(step, Map.of());
            if (voidOk.result() == null && voidOk.first().signum() == 0 && !payments.isEmpty()) {
                broken.add(new Broken(Rule.VOID_FIRST_CLOSES_STEP, step + " was closed by a void that came first (released 0, no payment, "
                        + voidOk.where() + ") and has a payment after all: " + describe(payments)));
            }
        });
        captures.forEach((step, results) -> {
            Fact capture = first(results);
            BigDecimal reserved = reservedOf(step);
            if (reserved != null && capture.first().compareTo(reserved) <= 0 && capture.first().add(capture.second()).compareTo(reserved) != 0) {
                broken.add(new Broken(Rule.RELEASED_ONCE, step + ": the capture took " + plain(capture.first()) + " and released " + plain(capture.second())
                        + " of a reservation of " + plain(reserved) + " (" + capture.where() + ")"));
            }
        });
        voids.forEach((step, results) -> {
            Fact voidOk = first(results);
            BigDecimal reserved = reservedOf(step);
            Fact expiry = firstExpiry.get(step);
            if (voidOk.result() == null || reserved == null || voidOk.first().signum() == 0) {
                return;
            }
            if (expiry != null && expiry.answered() < voidOk.sent()) {
                broken.add(new Broken(Rule.RELEASED_ONCE, step + ": the void released " + plain(voidOk.first()) + " (" + voidOk.where()
                        + ") of a hold that had expired, released by its expiry (reservation_expired, " + expiry.where() + ")"));
            } else if (voidOk.first().compareTo(reserved) != 0) {
                broken.add(new Broken(Rule.RELEASED_ONCE, step + ": the void released " + plain(voidOk.first()) + " of a reservation of "
                        + plain(reserved) + " (" + voidOk.where() + ")"));
            }
        });
        for (Map<String, Map<String, Fact>> byKey : List.of(reservations, captures, voids)) {
            String what = byKey == reservations ? "reservation" : byKey == captures ? "capture" : "void";
            byKey.forEach((step, results) -> {
                if (results.size() > 1) {
                    List<String> parts = new ArrayList<>();
                    results.forEach((result, fact) -> parts.add(result + " (" + fact.where() + ")"));
                    broken.add(new Broken(Rule.ONE_RESULT_PER_KEY, "the " + what + " of " + step + " has " + results.size() + " results: "
                            + String.join("; ", parts)));
                }
            });
        }
        return broken;
    }

    /** What the step's reservation held, as first acknowledged (null: none seen). */
    public BigDecimal reservedOf(String stepKey) {
        Fact reservation = first(reservations.get(stepKey));
        return reservation == null ? null : reservation.first();
    }

    /** What the step's capture took, as first acknowledged (null: none seen). */
    public BigDecimal capturedOf(String stepKey) {
        Fact capture = first(captures.get(stepKey));
        return capture == null ? null : capture.first();
    }

    private static Fact first(Map<String, Fact> results) {
        return results == null || results.isEmpty() ? null : results.values().iterator().next();
    }

    private static String plain(BigDecimal amount) {
        return amount.signum() == 0 ? "0" : amount.stripTrailingZeros().toPlainString();
    }

    private static String describe(Map<String, String> seen) {
        List<String> parts = new ArrayList<>();
        seen.forEach((what, where) -> parts.add(what + " (" + where + ")"));
        return String.join("; ", parts);
    }
}
