package payment.harness;

import payment.HoldInvariants;
import payment.MoneyInvariants;

import com.fasterxml.jackson.databind.JsonNode;
import payment.harness.ClusterHistory.Event;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

/**
 * Reads a run's history and lists what no correct payment service could have answered, by kind. It knows the
 * protocol (docs/PROTOCOL.md), not the node: every rule is checked on the replies alone.
 *
 * <p>Definite answers are *_ok replies and errors other than 0 (timeout) and 13 (crash), which leave the outcome
 * unknown. Error 11 is definite (nothing was done) but says nothing about the key, and an operation answered only
 * 11 is still open.
 */
final class ClusterChecker {
    enum Kind {
        DOUBLE_CHARGE("double charge", "one step key with two payment ids"),
        ID_FOR_TWO_KEYS("one id for two keys", "one payment or refund id given to two idempotency keys"),
        REFUNDS_ABOVE_CHARGE("refunds above a charge", "the refunds of one payment add up to more than it charged"),
        DIFFERENT_ANSWERS("different answers for one key", "one key and the same params answered in two ways"),
        OTHER_PARAMS_ACCEPTED("other params accepted", "a key reused with other params answered ok (expected error 22)"),
        REFUSED_WITH_MONEY_LEFT("refund refused with money left", "a refund answered 22 although its payment had enough left, as a later status read shows"),
        COMPENSATION_DID_NOT_CLOSE("compensation did not close its step", "a step closed by a compensation that came first was charged"),
        CAPTURE_ABOVE_RESERVATION("capture above its reservation", "a capture took more than its reservation held"),
        CAPTURED_AND_VOIDED("captured and voided", "a void of a reservation answered ok after a capture of it was (one of them must have been refused)"),
        CAPTURE_AFTER_VOID("capture after void or expiry", "a capture answered ok after a void of its reservation was, or after a capture was answered reservation_expired"),
        HANGING_RESERVATION("hanging reservation", "a step closed by a void that came first (released 0, no payment) was reserved or charged after all"),
        HOLD_NOT_RELEASED_ONCE("hold not released exactly once", "a capture's captured and released do not add up to the reservation, or a void released other than all of a live hold (nothing of an expired one)"),
        STALE_STATUS("stale status", "a PaymentStatus read missed what was acknowledged before it was sent"),
        UNRESOLVED("unresolved", "an operation without a definite answer after the healing phase"),
        UNAVAILABLE("unavailable", "no request answered for --stall-timeout: the run was stopped early, with these operations open"),
        WRONG_REPLY("wrong reply type", "a reply of a type or key that does not fit its request, or a reply to no request"),
        NOT_JSON("stdout line not JSON", "a node wrote a line on stdout that is not a JSON message");

        final String label;
        final String meaning;

        Kind(String label, String meaning) {
            this.label = label;
            this.meaning = meaning;
        }
    }

    record Anomaly(Kind kind, String text) {
    }

    /** Every anomaly found, by kind, in the order the checker met them. */
    record Verdict(Map<Kind, List<Anomaly>> anomalies) {
        boolean valid() {
            return anomalies.isEmpty();
        }

        int count(Kind kind) {
            return anomalies.getOrDefault(kind, List.of()).size();
        }

        Set<Kind> kinds() {
            return anomalies.keySet();
        }

        int total() {
            return anomalies.values().stream().mapToInt(List::size).sum();
        }
    }

    /** A request and one reply to it (its completion, or a late or second reply). */
    private record Observation(Event invoke, Event reply) {
        JsonNode request() {
            return invoke.body();
        }

        JsonNode answer() {
            return reply.body();
        }

        String type() {
            return request().path("type").asText();
        }

        String stepKey() {
            return request().path("saga_id").asText() + ":step" + request().path("step").asText();
        }

        /** The error's reason (empty for an ok, or an error without one). */
        String reason() {
            return answer().path("reason").asText();
        }

        boolean ok() {
            return answer().path("type").asText().endsWith("_ok");
        }

        /** An answer that settles the outcome: ok, or an error other than 0, 11 and 13. */
        boolean definite() {
            return ok() || (answer().path("type").asText().equals("error") && !indefiniteOrNothingDone(answer().path("code").asInt(-1)));
        }

        /** The answer as the checker compares it: the result without its note, or the error code. */
        String outcome() {
            return ok() ? "ok " + answer().path("result") : "error " + answer().path("code").asInt();
        }

        String where() {
            return invoke.process() + " op " + invoke.op() + " (" + invoke.node() + ", msg_id " + invoke.msgId() + ", answered at "
                    + seconds(reply.nanos()) + ")";
        }
    }

    static boolean indefiniteOrNothingDone(int code) {
        return code == 0 || code == 11 || code == 13;
    }

    private final Map<Kind, List<Anomaly>> anomalies = new EnumMap<>(Kind.class);

    private void add(Kind kind, String text) {
        anomalies.computeIfAbsent(kind, k -> new ArrayList<>()).add(new Anomaly(kind, text));
    }

    static Verdict check(List<Event> history) {
        ClusterChecker checker = new ClusterChecker();
        checker.run(history);
        return new Verdict(checker.anomalies);
    }

    private void run(List<Event> history) {
        Map<String, Event> invokes = new HashMap<>();
        Map<String, List<Event>> requestsOfOp = new LinkedHashMap<>();
        List<Observation> observations = new ArrayList<>();
        Map<String, Long> initsWithoutReply = new TreeMap<>();   // node and msg_id, when the init was sent
        Event stall = null;
        for (Event event : history) {
            switch (event.type()) {
                case INVOKE -> {
                    invokes.put(event.process() + "#" + event.msgId(), event);
                    requestsOfOp.computeIfAbsent(event.process() + " op " + event.op(), k -> new ArrayList<>()).add(event);
                }
                case OK, FAIL, INFO, LATE -> {
                    if (event.body() == null) {
                        continue;   // a timeout: no reply to read
                    }
                    Event invoke = invokes.get(event.process() + "#" + event.msgId());
                    if (invoke == null) {
                        add(Kind.WRONG_REPLY, event.process() + " got a reply to no request it sent (in_reply_to " + event.msgId()
                                + ", from " + event.node() + "): " + event.body());
                        continue;
                    }
                    Observation seen = new Observation(invoke, event);
                    if (fits(seen)) {
                        observations.add(seen);
                    }
                }
                case INIT -> initsWithoutReply.put(event.node() + " (msg_id " + event.msgId() + ")", event.nanos());
                case INIT_OK -> initsWithoutReply.remove(event.node() + " (msg_id " + event.msgId() + ")");
                case FAULT_START -> {
                    if ("kill".equals(event.fault())) {
                        // A process killed before its init's time was up owes nothing (its restart gets an init of its
                        // own); one that let that time pass first is still an init with no answer.
                        initsWithoutReply.entrySet().removeIf(init -> init.getKey().startsWith(event.node() + " (msg_id ")
                                && event.nanos() - init.getValue() <= ClusterHarness.INIT_WAIT_MILLIS * 1_000_000);
                    }
                }
                case GARBAGE -> add(Kind.NOT_JSON, event.node() + " wrote at " + seconds(event.nanos()) + ": " + event.text());
                case STALL -> stall = event;
                default -> {
                    // faults are context, not answers
                }
            }
        }
        List<String> open = new ArrayList<>();
        initsWithoutReply.keySet().forEach(init -> open.add("the init of " + init + " got no init_ok"));
        open.addAll(unresolved(requestsOfOp, observations));
        if (stall == null) {
            open.forEach(what -> add(Kind.UNRESOLVED, what));
        } else {
            // a stopped run has no healing phase: what was open is the unavailability itself, listed once
            add(Kind.UNAVAILABLE, stall.text() + "; " + open.size() + " operations open"
                    + (open.isEmpty() ? "" : ", the first " + Math.min(STALL_EXAMPLES, open.size()) + ": "
                    + String.join(" | ", open.subList(0, Math.min(STALL_EXAMPLES, open.size())))));
        }
        keys(observations, history);
    }

    /** How many of the operations open at a stall its anomaly names. */
    static final int STALL_EXAMPLES = 10;

    /** A reply whose type, or key, does not fit its request is an anomaly and is not read as an answer. */
    private boolean fits(Observation seen) {
        String replyType = seen.answer().path("type").asText();
        if (!replyType.equals(seen.type() + "_ok") && !replyType.equals("error")) {
            add(Kind.WRONG_REPLY, seen.type() + " " + seen.stepKey() + " answered " + replyType + " by " + seen.where() + ": " + seen.answer());
            return false;
        }
        if (seen.ok() && !(seen.answer().path("saga_id").equals(seen.request().path("saga_id"))
                && seen.answer().path("step").equals(seen.request().path("step")))) {
            add(Kind.WRONG_REPLY, seen.type() + " " + seen.stepKey() + " answered for another key by " + seen.where() + ": " + seen.answer());
            return false;
        }
        return true;
    }

    /** Every operation without a definite answer, described. */
    private static List<String> unresolved(Map<String, List<Event>> requestsOfOp, List<Observation> observations) {
        Set<String> answered = new java.util.HashSet<>();
        Map<String, List<String>> gotten = new HashMap<>();
        for (Observation seen : observations) {
            String op = seen.invoke().process() + " op " + seen.invoke().op();
            if (seen.definite()) {
                answered.add(op);
            }
            gotten.computeIfAbsent(op, k -> new ArrayList<>()).add(seen.answer().path("type").asText()
                    + (seen.answer().has("code") ? " " + seen.answer().path("code").asInt() : ""));
        }
        List<String> open = new ArrayList<>();
        requestsOfOp.forEach((op, requests) -> {
            if (!answered.contains(op)) {
                Event first = requests.get(0);
                open.add(op + " " + first.body().path("type").asText() + " " + first.body().path("saga_id").asText()
                        + ":step" + first.body().path("step").asText() + ": " + requests.size() + " requests, first at "
                        + seconds(first.nanos()) + ", answers " + gotten.getOrDefault(op, List.of()) + ": " + first.body());
            }
        });
        return open;
    }

    /** What the definite answers say of each key, payment and refund. */
    private void keys(List<Observation> observations, List<Event> history) {
        Map<String, Map<String, Map<String, Observation>>> outcomesOfKey = new TreeMap<>();   // key -> params -> outcome -> first seen
        Map<String, Map<String, Observation>> paymentsOfStep = new TreeMap<>();              // step key -> payment id -> first seen
        MoneyInvariants money = new MoneyInvariants();   // the rules every checker shares
        HoldInvariants holds = new HoldInvariants();     // and those of two-phase payments
        Map<String, String> reservationOfStep = new TreeMap<>();                            // step key -> its reservation's payment id
        Map<String, BigDecimal> capturedOfPayment = new HashMap<>();                        // a reservation's payment id -> the most seen captured
        Map<String, String> refundIds = new HashMap<>();                                    // refund key -> its refund id
        Map<String, BigDecimal> chargedOfPayment = new HashMap<>();
        Map<String, Observation> compensatedFirst = new TreeMap<>();                          // step key -> the refund that closed it
        Map<String, Observation> refundOfKey = new TreeMap<>();                               // refund key -> its first ok
        List<Observation> statuses = new ArrayList<>();
        for (Observation seen : observations) {
            if (!seen.definite()) {
                continue;
            }
            JsonNode result = seen.answer().path("result");
            switch (seen.type()) {
                case "ChargePayment" -> {
                    outcomes(outcomesOfKey, seen.stepKey(), seen);
                    if (seen.ok()) {
                        String payment = result.path("payment_id").asText();
                        paymentsOfStep.computeIfAbsent(seen.stepKey(), k -> new LinkedHashMap<>()).putIfAbsent(payment, seen);
                        money.payment(seen.stepKey(), payment, result.path("charged").decimalValue(), whereOf(seen));
                        chargedOfPayment.putIfAbsent(payment, result.path("charged").decimalValue());
                        holds.payment(seen.stepKey(), payment, whereOf(seen));
                    }
                }
                case "ReservePayment" -> {
                    outcomes(outcomesOfKey, seen.stepKey(), seen);
                    if (seen.ok()) {
                        String payment = result.path("payment_id").asText();
                        paymentsOfStep.computeIfAbsent(seen.stepKey(), k -> new LinkedHashMap<>()).putIfAbsent(payment, seen);
                        reservationOfStep.putIfAbsent(seen.stepKey(), payment);
                        holds.reserved(seen.stepKey(), payment, result.path("reserved").decimalValue(), seen.invoke().nanos(), seen.reply().nanos(), whereOf(seen));
                    }
                }
                case "CapturePayment" -> {
                    if (!seen.reason().equals("no_reservation")) {   // a capture that found no reservation left no record: it may be served later
                        outcomes(outcomesOfKey, seen.stepKey() + ":capture", seen);
                    }
                    if (seen.ok()) {
                        capturedOfPayment.merge(result.path("payment_id").asText(), result.path("captured").decimalValue(), BigDecimal::max);
                        holds.captured(seen.stepKey(), result.path("payment_id").asText(), result.path("captured").decimalValue(),
                                result.path("released").decimalValue(), seen.invoke().nanos(), seen.reply().nanos(), whereOf(seen));
                    } else if (seen.reason().equals("reservation_expired")) {
                        holds.expired(seen.stepKey(), seen.invoke().nanos(), seen.reply().nanos(), whereOf(seen));
                    }
                }
                case "VoidPayment" -> {
                    outcomes(outcomesOfKey, seen.stepKey() + ":void", seen);
                    if (seen.ok()) {
                        holds.voided(seen.stepKey(), result.hasNonNull("payment_id") ? result.path("payment_id").asText() : null,
                                result.path("released").decimalValue(), seen.invoke().nanos(), seen.reply().nanos(), whereOf(seen));
                    }
                }
                case "RefundPayment" -> {
                    String refundKey = seen.stepKey() + ":refund";
                    outcomes(outcomesOfKey, refundKey, seen);
                    if (seen.ok() && result.hasNonNull("refund_id")) {
                        refundIds.putIfAbsent(refundKey, result.path("refund_id").asText());
                        refundOfKey.putIfAbsent(refundKey, seen);
                    } else if (seen.ok() && result.path("refunded").decimalValue().signum() == 0) {
                        compensatedFirst.putIfAbsent(seen.stepKey(), seen);
                    }
                }
                case "PaymentStatus" -> {
                    if (seen.ok()) {
                        statuses.add(seen);
                        JsonNode payment = seen.answer().path("payment");
                        if (payment.hasNonNull("payment_id")) {
                            String id = payment.path("payment_id").asText();
                            paymentsOfStep.computeIfAbsent(seen.stepKey(), k -> new LinkedHashMap<>()).putIfAbsent(id, seen);
                            holds.payment(seen.stepKey(), id, whereOf(seen));
                            if (payment.has("reserved")) {   // a reservation: its ledger is what was captured, fed below
                                reservationOfStep.putIfAbsent(seen.stepKey(), id);
                                capturedOfPayment.merge(id, payment.path("captured").decimalValue(), BigDecimal::max);
                            } else {
                                money.payment(seen.stepKey(), id, payment.path("charged").decimalValue(), whereOf(seen));
                                chargedOfPayment.putIfAbsent(id, payment.path("charged").decimalValue());
                            }
                        }
                    }
                }
                default -> {
                    // no other operation in the workload
                }
            }
        }
        // A reservation is a payment whose ledger is what was captured of it (0 if nothing was: a refund of it must be refused).
        reservationOfStep.forEach((step, id) -> money.payment(step, id, capturedOfPayment.getOrDefault(id, BigDecimal.ZERO),
                "the reservation of " + step));
        // Refunds after every payment: a refund draws on the payment its step shows anywhere in the history.
        refundOfKey.forEach((refundKey, refund) -> money.refund(refundKey, refundIds.get(refundKey), paymentOf(refund, paymentsOfStep),
                refund.answer().path("result").path("refunded").decimalValue(), whereOf(refund)));
        for (MoneyInvariants.Broken broken : money.broken()) {
            switch (broken.rule()) {
                case ONE_PAYMENT_PER_STEP -> add(Kind.DOUBLE_CHARGE, broken.text());
                case ONE_STEP_PER_PAYMENT, ONE_KEY_PER_REFUND_ID -> add(Kind.ID_FOR_TWO_KEYS, broken.text());
                case REFUNDS_WITHIN_CHARGE -> add(Kind.REFUNDS_ABOVE_CHARGE, broken.text());
                case ONE_RESULT_PER_REFUND_KEY -> {
                    // counted below as DIFFERENT_ANSWERS, which holds every key to one answer per params
                }
            }
        }
        for (HoldInvariants.Broken broken : holds.broken()) {
            switch (broken.rule()) {
                case CAPTURE_WITHIN_RESERVATION -> add(Kind.CAPTURE_ABOVE_RESERVATION, broken.text());
                case CAPTURE_OR_VOID -> add(Kind.CAPTURED_AND_VOIDED, broken.text());
                case NO_CAPTURE_AFTER_VOID_OR_EXPIRY -> add(Kind.CAPTURE_AFTER_VOID, broken.text());
                case VOID_FIRST_CLOSES_STEP -> add(Kind.HANGING_RESERVATION, broken.text());
                case RELEASED_ONCE -> add(Kind.HOLD_NOT_RELEASED_ONCE, broken.text());
                case ONE_RESULT_PER_KEY -> {
                    // counted below as DIFFERENT_ANSWERS, which holds every key to one answer per params
                }
            }
        }
        outcomesOfKey.forEach((key, byParams) -> {
            boolean doubleCharged = !key.endsWith(":refund") && paymentsOfStep.getOrDefault(key, Map.of()).size() > 1;
            List<String> acceptedParams = new ArrayList<>();
            byParams.forEach((params, outcomes) -> {
                if (outcomes.size() > 1 && !doubleCharged) {
                    add(Kind.DIFFERENT_ANSWERS, key + " with params " + params + " was answered " + outcomes.size() + " ways: "
                            + describe(outcomes));
                }
                if (outcomes.keySet().stream().anyMatch(outcome -> outcome.startsWith("ok "))) {
                    acceptedParams.add(params);
                }
            });
            if (acceptedParams.size() > 1) {
                add(Kind.OTHER_PARAMS_ACCEPTED, key + " was answered ok for " + acceptedParams.size() + " different params: " + acceptedParams);
            }
        });
        compensatedFirst.forEach((step, refund) -> {
            Map<String, Observation> payments = paymentsOfStep.getOrDefault(step, Map.of());
            if (!payments.isEmpty()) {
                add(Kind.COMPENSATION_DID_NOT_CLOSE, step + " was closed by a compensation that came first (refunded 0, "
                        + refund.where() + ") and was charged: " + describe(payments));
            }
        });
        refundsAboveCharges(statuses);
        refusalsWithMoneyLeft(observations, paymentsOfStep, outcomesOfKey, statuses, history);
        staleStatuses(statuses, paymentsOfStep, compensatedFirst, refundOfKey, chargedOfPayment);
    }

    /**
     * One answer under a key, by params. A reservation shares its step's key with a charge: its params are told apart by
     * their type (a charge and a reservation of one step are two params, one of which must be refused).
     */
    private static void outcomes(Map<String, Map<String, Map<String, Observation>>> outcomesOfKey, String key, Observation seen) {
        String params = seen.request().has("params") ? seen.request().path("params").toString() : "(none)";
        outcomesOfKey.computeIfAbsent(key, k -> new TreeMap<>())
                .computeIfAbsent(seen.type().equals("ReservePayment") ? "ReservePayment " + params : params, p -> new LinkedHashMap<>())
                .putIfAbsent(seen.outcome(), seen);
    }

    /** The payment a refund key took: its step's own charge, else the payment its params name. */
    private static String paymentOf(Observation refund, Map<String, Map<String, Observation>> paymentsOfStep) {
        Map<String, Observation> own = paymentsOfStep.getOrDefault(refund.stepKey(), Map.of());
        if (own.size() == 1) {
            return own.keySet().iterator().next();
        }
        JsonNode named = refund.request().path("params").path("payment_id");
        return own.isEmpty() && named.isTextual() ? named.asText() : null;   // two payments: a double charge, already counted
    }

    /** A status read that shows more refunded than charged (the acknowledged refunds are MoneyInvariants'). */
    private void refundsAboveCharges(List<Observation> statuses) {
        for (Observation status : statuses) {
            JsonNode payment = status.answer().path("payment");
            if (payment.has("refunded") && payment.path("refunded").decimalValue().compareTo(ledgerOf(payment)) > 0) {
                add(Kind.REFUNDS_ABOVE_CHARGE, "PaymentStatus " + status.stepKey() + " by " + status.where() + " says " + payment.path("payment_id").asText()
                        + " has refunded " + payment.path("refunded") + " of " + ledgerOf(payment).toPlainString()
                        + (payment.has("charged") ? "" : " captured"));
            }
        }
    }

    /**
     * A refund refused with 22 must have asked for more than was left, or named a payment that is not its step's, or
     * reused a refund key already served with other params. Refunds only add up: what a status read sent after the
     * refusal shows as left was left at the refusal too, so a read that shows enough left proves the refusal wrong.
     */
    private void refusalsWithMoneyLeft(List<Observation> observations, Map<String, Map<String, Observation>> paymentsOfStep,
                                       Map<String, Map<String, Map<String, Observation>>> outcomesOfKey, List<Observation> statuses,
                                       List<Event> history) {
        for (Observation refusal : observations) {
            if (!refusal.type().equals("RefundPayment") || refusal.ok() || refusal.answer().path("code").asInt() != 22) {
                continue;
            }
            if (refusal.reason().equals("payment_not_captured")) {
                // A capture may land after the refusal (one still at work): only a capture acknowledged before the
                // refund was sent proves the refusal wrong.
                String payment = paymentOf(refusal, paymentsOfStep);
                observations.stream().filter(capture -> capture.type().equals("CapturePayment") && capture.ok()
                                && capture.answer().path("result").path("payment_id").asText().equals(payment)
                                && capture.reply().nanos() < refusal.invoke().nanos()).findFirst()
                        .ifPresent(capture -> add(Kind.REFUSED_WITH_MONEY_LEFT, refusal.stepKey() + ":refund was refused as not captured ("
                                + refusal.where() + "), after the capture " + capture.answer().path("result") + " was acknowledged to " + capture.where()));
                continue;
            }
            JsonNode params = refusal.request().path("params");
            Map<String, Observation> own = paymentsOfStep.getOrDefault(refusal.stepKey(), Map.of());
            if (params.hasNonNull("payment_id") && !own.isEmpty() && !own.containsKey(params.path("payment_id").asText())) {
                continue;   // it named another payment than its step's: 22 is right
            }
            String asked = refusal.request().has("params") ? params.toString() : "(none)";
            boolean servedWithOtherParams = outcomesOfKey.getOrDefault(refusal.stepKey() + ":refund", Map.of()).entrySet().stream()
                    .anyMatch(group -> !group.getKey().equals(asked) && group.getValue().keySet().stream().anyMatch(o -> o.startsWith("ok ")));
            String payment = paymentOf(refusal, paymentsOfStep);
            if (servedWithOtherParams || payment == null || otherParamsInFlight(refusal, asked, history)) {
                continue;
            }
            BigDecimal wanted = params.has("amount") ? params.path("amount").decimalValue() : null;
            for (Observation status : statuses) {
                JsonNode seen = status.answer().path("payment");
                if (status.invoke().nanos() <= refusal.reply().nanos() || !payment.equals(seen.path("payment_id").asText())) {
                    continue;
                }
                BigDecimal left = ledgerOf(seen).subtract(seen.path("refunded").decimalValue());
                if (wanted == null ? left.signum() > 0 : left.compareTo(wanted) >= 0) {
                    add(Kind.REFUSED_WITH_MONEY_LEFT, refusal.stepKey() + ":refund " + asked + " was refused (" + refusal.answer().path("text").asText()
                            + ", " + refusal.where() + "), yet PaymentStatus " + status.stepKey() + " sent later (" + status.where() + ") shows "
                            + left.toPlainString() + " of " + payment + " left");
                    break;
                }
            }
        }
    }

    /**
     * Whether a request on the same refund key with other params may have been at work while {@code refusal} was: sent
     * before the refusal's answer, and answered after the refusal was sent, or never answered (it may still be at a
     * node). Its pending intent then holds the key, and the 22 is the answer to a reuse with other params.
     */
    private static boolean otherParamsInFlight(Observation refusal, String asked, List<Event> history) {
        Map<String, Event> sent = new HashMap<>();
        Map<String, Long> answered = new HashMap<>();
        for (Event event : history) {
            String request = event.process() + "#" + event.msgId();
            if (event.is(ClusterHistory.Type.INVOKE)) {
                JsonNode body = event.body();
                String params = body.has("params") ? body.path("params").toString() : "(none)";
                if (body.path("type").asText().equals("RefundPayment") && !params.equals(asked)
                        && (body.path("saga_id").asText() + ":step" + body.path("step").asText()).equals(refusal.stepKey())) {
                    sent.put(request, event);
                }
            } else if (event.body() != null && sent.containsKey(request)) {
                answered.putIfAbsent(request, event.nanos());
            }
        }
        for (Map.Entry<String, Event> other : sent.entrySet()) {
            Long end = answered.get(other.getKey());
            if (other.getValue().nanos() < refusal.reply().nanos() && (end == null || end > refusal.invoke().nanos())) {
                return true;
            }
        }
        return false;
    }

    /** Whatever was acknowledged before a status read was sent, the read must show. */
    private void staleStatuses(List<Observation> statuses, Map<String, Map<String, Observation>> paymentsOfStep,
                               Map<String, Observation> compensatedFirst, Map<String, Observation> refundOfKey,
                               Map<String, BigDecimal> chargedOfPayment) {
        Map<String, List<Observation>> refundsByPayment = new HashMap<>();
        refundOfKey.forEach((key, refund) -> {
            String payment = paymentOf(refund, paymentsOfStep);
            if (payment != null) {
                refundsByPayment.computeIfAbsent(payment, k -> new ArrayList<>()).add(refund);
            }
        });
        for (Observation status : statuses) {
            long sent = status.invoke().nanos();
            String step = status.stepKey();
            String said = status.answer().path("status").asText();
            JsonNode payment = status.answer().path("payment");
            for (Observation charge : paymentsOfStep.getOrDefault(step, Map.of()).values()) {
                if (charge.type().equals("ChargePayment") && charge.reply().nanos() < sent && !said.equals("charged")) {
                    add(Kind.STALE_STATUS, "PaymentStatus " + step + " by " + status.where() + " says '" + said + "', after the charge "
                            + charge.answer().path("result") + " was acknowledged to " + charge.where());
                }
            }
            Observation closed = compensatedFirst.get(step);
            // 'charged' after a closing compensation is already counted: the status read's payment is the step's
            if (closed != null && closed.reply().nanos() < sent && !said.equals("compensated") && !said.equals("charged")) {
                add(Kind.STALE_STATUS, "PaymentStatus " + step + " by " + status.where() + " says '" + said + "', after a compensation "
                        + "that came first closed the step (" + closed.where() + ")");
            }
            Observation refund = refundOfKey.get(step + ":refund");
            if (refund != null && refund.reply().nanos() < sent && !status.answer().path("refund").equals(refund.answer().path("result"))) {
                add(Kind.STALE_STATUS, "PaymentStatus " + step + " by " + status.where() + " shows refund " + status.answer().path("refund")
                        + ", after " + refund.answer().path("result") + " was acknowledged to " + refund.where());
            }
            if (payment.hasNonNull("payment_id")) {
                String id = payment.path("payment_id").asText();
                BigDecimal acknowledged = refundsByPayment.getOrDefault(id, List.of()).stream().filter(r -> r.reply().nanos() < sent)
                        .map(r -> r.answer().path("result").path("refunded").decimalValue()).reduce(BigDecimal.ZERO, BigDecimal::add);
                if (payment.path("refunded").decimalValue().compareTo(acknowledged) < 0) {
                    add(Kind.STALE_STATUS, "PaymentStatus " + step + " by " + status.where() + " says " + id + " has refunded "
                            + payment.path("refunded") + ", less than the " + acknowledged.toPlainString() + " acknowledged before it was sent");
                }
                BigDecimal charged = chargedOfPayment.get(id);
                if (charged != null && payment.path("charged").decimalValue().compareTo(charged) != 0) {
                    add(Kind.DIFFERENT_ANSWERS, "PaymentStatus " + step + " by " + status.where() + " says " + id + " charged "
                            + payment.path("charged") + ", not the " + charged.toPlainString() + " acknowledged");
                }
            }
        }
    }

    /** What a status read's payment can be refunded from: what it charged, or for a reservation what was captured of it. */
    private static BigDecimal ledgerOf(JsonNode payment) {
        return payment.has("charged") ? payment.path("charged").decimalValue() : payment.path("captured").decimalValue();
    }

    /** Where an observation was made, as a report names it. */
    private static String whereOf(Observation observation) {
        return observation.type() + " " + observation.stepKey() + ", " + observation.where();
    }

    private static String describe(Map<String, Observation> seen) {
        List<String> parts = new ArrayList<>();
        seen.forEach((what, observation) -> parts.add(what + " (" + observation.type() + " " + observation.stepKey() + ", " + observation.where() + ")"));
        return String.join("; ", parts);
    }

    static String seconds(long nanos) {
        return String.format(java.util.Locale.ROOT, "%.3f s", nanos / 1e9);
    }

    private ClusterChecker() {
    }

}
