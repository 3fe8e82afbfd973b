package payment;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The protocol (docs/PROTOCOL.md) as plain maps: what the node must print for a sequence of lines. Written
 * from the contract, sharing no code with the node. ModelTest holds one node to it byte for byte;
 * ClusterModelTest holds the cluster to it, searching for an order of the concurrent requests that the
 * model explains (hence {@link #copy} and {@link #fingerprint}).
 */
final class ReferenceModel {
    record Charge(String userId, String amount, String paymentId) {
    }

    record Declined(String userId, String amount, String text) {
    }

    ReferenceModel(BigDecimal start) {
        this.start = start;
    }

    record Refund(String paymentId, String amount, String refundId, String refunded) {
    }

    /** Every user's balance at the start (--balance), or null: no limit. */
    private final BigDecimal start;
    private final Map<String, BigDecimal> balances = new HashMap<>();
    private final Map<String, Declined> declines = new HashMap<>();
    private final Map<String, String> userByPayment = new HashMap<>();
    private final Map<String, Charge> charges = new HashMap<>();
    private final Set<String> closedSteps = new HashSet<>();
    private final Map<String, Refund> refunds = new HashMap<>();
    private final Map<String, BigDecimal> refundedByPayment = new HashMap<>();
    private final Map<String, String> chargedByPayment = new HashMap<>();
    private int payments;
    private int refundIds;
    private int msgId;
    private String nodeId;
    private final StringBuilder out = new StringBuilder();

    /** An independent model in the same state: the cluster's checker tries several orders from one state. */
    ReferenceModel copy() {
        ReferenceModel copy = new ReferenceModel(start);
        copy.balances.putAll(balances);
        copy.declines.putAll(declines);
        copy.userByPayment.putAll(userByPayment);
        copy.charges.putAll(charges);
        copy.closedSteps.addAll(closedSteps);
        copy.refunds.putAll(refunds);
        copy.refundedByPayment.putAll(refundedByPayment);
        copy.chargedByPayment.putAll(chargedByPayment);
        copy.payments = payments;
        copy.refundIds = refundIds;
        copy.msgId = msgId;
        copy.nodeId = nodeId;
        return copy;
    }

    /** What the model prints for one more line (empty when it prints nothing). */
    String handle(String line) {
        int before = out.length();
        run(List.of(line));
        String printed = out.substring(before);
        out.setLength(before);
        return printed;
    }

    /**
     * The state that decides every later answer, as text: two models with equal fingerprints answer every
     * sequence alike (up to msg_ids, which the cluster's checker ignores).
     */
    String fingerprint() {
        return new java.util.TreeMap<>(charges) + "|" + new java.util.TreeSet<>(closedSteps) + "|" + new java.util.TreeMap<>(refunds)
                + "|" + new java.util.TreeMap<>(refundedByPayment) + "|" + new java.util.TreeMap<>(declines) + "|"
                + new java.util.TreeMap<>(balances) + "|" + payments + "|" + refundIds + "|" + nodeId;
    }

    private static final Pattern ENVELOPE = Pattern.compile("^\\{\"src\":\"([^\"]+)\",(?:\"dest\":\"([^\"]+)\",)?\"body\":\\{(.*)\\}\\}$");
    private static final Pattern CUT_SHORT = Pattern.compile("^\\{\"src\":\"([^\"]+)\",\"dest\":\"([^\"]+)\",\"body\":\\{\"type\":\"ChargePayment\",\"msg_id\":(\\d+),\"saga_id\":\"s1\"$");

    String run(List<String> lines) {
        for (String line : lines) {
            Matcher envelope = ENVELOPE.matcher(line);
            Matcher cut = CUT_SHORT.matcher(line);
            if (envelope.matches()) {
                handle(envelope.group(1), envelope.group(2), envelope.group(3));
            } else if (cut.matches()) {
                reply(nodeId != null ? nodeId : cut.group(2), cut.group(1),
                        "\"type\": \"error\", \"code\": 12, \"text\": \"not valid JSON: the line ends before the JSON does\", \"reason\": \"unreadable_line\"",
                        Long.valueOf(cut.group(3)));
            }
        }
        return out.toString();
    }

    private static String field(String body, String name) {
        Matcher m = Pattern.compile("\"" + name + "\":(\\{[^}]*\\}|\\[[^\\]]*\\]|\"[^\"]*\"|[^,}\\]]+)").matcher(body);
        return m.find() ? m.group(1) : null;
    }

    private static boolean isString(String value) {
        return value != null && value.startsWith("\"");
    }

    private static String text(String value) {
        return value.substring(1, value.length() - 1);
    }

    private void handle(String src, String dest, String body) {
        if (field(body, "in_reply_to") != null) {
            return;   // a reply to something the node sent: never answered
        }
        String rawMsgId = field(body, "msg_id");
        boolean integer = rawMsgId != null && rawMsgId.matches("-?\\d+");
        boolean fits = integer && new BigDecimal(rawMsgId).abs().compareTo(BigDecimal.valueOf(Long.MAX_VALUE)) <= 0;
        Long inReplyTo = fits ? Long.valueOf(rawMsgId) : null;
        String from = nodeId != null ? nodeId : dest;
        try {
            if (rawMsgId != null && inReplyTo == null) {
                throw new Refusal(12, "malformed_request", integer ? "msg_id " + rawMsgId + " does not fit in 64 bits" : "msg_id must be an integer");
            }
            String type = text(field(body, "type"));
            switch (type) {
                case "init" -> {
                    String node = field(body, "node_id");
                    nodeId = node != null ? text(node) : dest != null ? dest : nodeId;
                    reply(nodeId != null ? nodeId : dest, src, "\"type\": \"init_ok\"", inReplyTo);
                }
                case "ChargePayment" -> reply(from, src, charge(body), inReplyTo);
                case "RefundPayment" -> reply(from, src, refund(body), inReplyTo);
                case "PaymentStatus" -> reply(from, src, status(body), inReplyTo);
                default -> throw new Refusal(10, "unsupported_type", "unsupported message type: " + type);
            }
        } catch (Refusal e) {
            reply(from, src, "\"type\": \"error\", \"code\": " + e.code + ", \"text\": \"" + e.getMessage() + "\", \"reason\": \"" + e.reason + "\""
                    + (e.differs.isEmpty() ? "" : ", \"differs\": [\"" + String.join("\", \"", e.differs) + "\"]"), inReplyTo);
        }
    }

    private void reply(String from, String to, String fields, Long inReplyTo) {
        out.append("{\"src\": ").append(from == null ? "null" : "\"" + from + "\"").append(", \"dest\": \"").append(to)
                .append("\", \"body\": {").append(fields);
        if (inReplyTo != null) {
            out.append(", \"in_reply_to\": ").append(inReplyTo);
        }
        out.append(", \"msg_id\": ").append(msgId++).append("}}\n");
    }

    /** An error reply as docs/PROTOCOL.md section 5 has it: code, text, reason and (a reused key) the params that differ. */
    static final class Refusal extends RuntimeException {
        final int code;
        final String reason;
        final List<String> differs;

        Refusal(int code, String reason, String text) {
            this(code, reason, text, List.of());
        }

        Refusal(int code, String reason, String text, List<String> differs) {
            super(text);
            this.code = code;
            this.reason = reason;
            this.differs = differs;
        }
    }

    private static String sagaId(String body) {
        String saga = field(body, "saga_id");
        if (saga == null) {
            throw new Refusal(12, "malformed_request", "missing saga_id");
        }
        return text(saga);
    }

    private static long step(String body) {
        String step = field(body, "step");
        if (!step.matches("\\d+")) {
            throw new Refusal(12, "malformed_request", "step must be an integer from 0 to 9223372036854775807");
        }
        return Long.parseLong(step);
    }

    private static BigDecimal amount(String amount) {
        if (isString(amount)) {
            throw new Refusal(12, "malformed_request", "params.amount must be a number");
        }
        if (amount.contains("999999999")) {
            throw new Refusal(12, "malformed_request", "params.amount " + amount + " is out of range: at most 40 digits before the decimal point and 40 after it");
        }
        BigDecimal value = new BigDecimal(amount);
        if (value.signum() <= 0) {
            throw new Refusal(12, "malformed_request", "params.amount must be greater than 0, got " + amount);
        }
        return value;
    }

    private static boolean sameAmount(String a, String b) {
        return a == null ? b == null : b != null && new BigDecimal(a).compareTo(new BigDecimal(b)) == 0;
    }

    private String charge(String body) {
        String saga = sagaId(body);
        long step = step(body);
        String params = field(body, "params");
        if (!params.startsWith("{")) {
            throw new Refusal(12, "malformed_request", "params must be an object");
        }
        String userId = text(field(params, "user_id"));
        String amount = field(params, "amount");
        amount(amount);
        String key = saga + ":step" + step;
        Charge charge = charges.get(key);
        String note = "";
        if (charge != null) {
            reuse(key, !charge.userId().equals(userId), "user_id", !sameAmount(charge.amount(), amount));
            note = ", \"note\": \"cached_result\"";
        } else if (declines.containsKey(key)) {
            Declined declined = declines.get(key);
            reuse(key, !declined.userId().equals(userId), "user_id", !sameAmount(declined.amount(), amount));
            throw new Refusal(14, "insufficient_funds", declined.text());
        } else if (closedSteps.contains(key)) {
            throw new Refusal(14, "step_compensated", "step " + key + " was already compensated: its refund came first, so it is never charged");
        } else {
            if (start != null) {
                BigDecimal left = balances.getOrDefault(userId, start);
                BigDecimal value = new BigDecimal(amount);
                if (left.compareTo(value) < 0) {
                    Declined declined = new Declined(userId, amount, "declined: insufficient funds: " + userId + " has "
                            + left.toPlainString() + " left, the charge is " + value.toPlainString() + " (" + key + ")");
                    declines.put(key, declined);
                    throw new Refusal(14, "insufficient_funds", declined.text());
                }
                balances.put(userId, left.subtract(value));
            }
            charge = new Charge(userId, amount, "p" + ++payments);
            charges.put(key, charge);
            chargedByPayment.put(charge.paymentId(), amount);
            userByPayment.put(charge.paymentId(), userId);
        }
        return "\"type\": \"ChargePayment_ok\", \"saga_id\": \"" + saga + "\", \"step\": " + step
                + ", \"result\": {\"payment_id\": \"" + charge.paymentId() + "\", \"charged\": " + charge.amount() + "}" + note;
    }

    /** A retry whose params differ is refused with error 22, naming them in the order of the contract. */
    private static void reuse(String key, boolean firstDiffers, String first, boolean amountDiffers) {
        List<String> differs = new ArrayList<>();
        if (firstDiffers) {
            differs.add(first);
        }
        if (amountDiffers) {
            differs.add("amount");
        }
        if (!differs.isEmpty()) {
            throw new Refusal(22, "key_reused", "idempotency key " + key + " was first used with other params", differs);
        }
    }

    private String refund(String body) {
        String saga = sagaId(body);
        long step = step(body);
        String compensating = field(body, "compensating");
        if (compensating != null && !compensating.equals("true") && !compensating.equals("false")) {
            throw new Refusal(12, "malformed_request", "compensating must be true or false");
        }
        String params = Objects.requireNonNullElse(field(body, "params"), "{}");
        String paymentId = field(params, "payment_id");
        if (paymentId != null && !isString(paymentId)) {
            throw new Refusal(12, "malformed_request", "params.payment_id must be a non-empty string");
        }
        paymentId = paymentId == null ? null : text(paymentId);
        String amount = field(params, "amount");
        if (amount != null) {
            amount(amount);
        }
        String chargeKey = saga + ":step" + step;
        String key = chargeKey + ":refund";
        Refund refund = refunds.get(key);
        String note = "";
        if (refund != null) {
            reuse(key, !Objects.equals(refund.paymentId(), paymentId), "payment_id", !sameAmount(refund.amount(), amount));
            note = ", \"note\": \"already_refunded\"";
        } else {
            Charge charge = charges.get(chargeKey);
            if (declines.containsKey(chargeKey)) {
                refund = new Refund(paymentId, amount, null, "0");   // a declined step: nothing was charged
            } else if (charge != null) {
                if (paymentId != null && !paymentId.equals(charge.paymentId())) {
                    throw new Refusal(22, "payment_not_of_step", "payment_id " + paymentId + " is not the payment of step " + chargeKey + " (" + charge.paymentId() + ")");
                }
                refund = refundOf(charge.paymentId(), paymentId, amount);
            } else if (paymentId != null && chargedByPayment.containsKey(paymentId)) {
                refund = refundOf(paymentId, paymentId, amount);
            } else if (paymentId != null) {
                if (amount == null) {
                    throw new Refusal(12, "amount_required", "params.amount is required to refund " + paymentId + ", a payment this node does not know");
                }
                closedSteps.add(chargeKey);
                refund = new Refund(paymentId, amount, "r" + ++refundIds, amount);
            } else {
                closedSteps.add(chargeKey);
                refund = new Refund(null, amount, null, "0");
            }
            refunds.put(key, refund);
        }
        return "\"type\": \"RefundPayment_ok\", \"saga_id\": \"" + saga + "\", \"step\": " + step + ", \"result\": {"
                + (refund.refundId() == null ? "" : "\"refund_id\": \"" + refund.refundId() + "\", ")
                + "\"refunded\": " + refund.refunded() + "}" + note;
    }

    private Refund refundOf(String payment, String paymentIdGiven, String amount) {
        String charged = chargedByPayment.get(payment);
        BigDecimal refunded = refundedByPayment.getOrDefault(payment, BigDecimal.ZERO);
        BigDecimal left = new BigDecimal(charged).subtract(refunded);
        String text;
        if (amount != null) {
            if (new BigDecimal(amount).compareTo(left) > 0) {
                throw new Refusal(22, "refund_exceeds_payment", "refund of " + amount + " is more than is left of payment " + payment
                        + " (" + left.toPlainString() + " of " + charged + ")");
            }
            text = amount;
        } else if (left.signum() == 0) {
            throw new Refusal(22, "payment_fully_refunded", "payment " + payment + " is already fully refunded");
        } else {
            text = refunded.signum() == 0 ? charged : left.toPlainString();
        }
        refundedByPayment.put(payment, refunded.add(new BigDecimal(text)));
        if (start != null) {
            balances.merge(userByPayment.get(payment), new BigDecimal(text), BigDecimal::add);
        }
        return new Refund(paymentIdGiven, amount, "r" + ++refundIds, text);
    }

    private String status(String body) {
        String saga = sagaId(body);
        long step = step(body);
        String key = saga + ":step" + step;
        Charge charge = charges.get(key);
        String status = charge != null ? "charged" : declines.containsKey(key) ? "declined" : closedSteps.contains(key) ? "compensated" : "none";
        StringBuilder reply = new StringBuilder("\"type\": \"PaymentStatus_ok\", \"saga_id\": \"" + saga + "\", \"step\": " + step
                + ", \"status\": \"" + status + "\"");
        if (charge != null) {
            reply.append(", \"payment\": {\"payment_id\": \"").append(charge.paymentId()).append("\", \"charged\": ").append(charge.amount())
                    .append(", \"refunded\": ").append(refundedByPayment.getOrDefault(charge.paymentId(), BigDecimal.ZERO).toPlainString()).append("}");
        }
        Refund refund = refunds.get(key + ":refund");
        if (refund != null) {
            reply.append(", \"refund\": {").append(refund.refundId() == null ? "" : "\"refund_id\": \"" + refund.refundId() + "\", ")
                    .append("\"refunded\": ").append(refund.refunded()).append("}");
        }
        return reply.toString();
    }
}
