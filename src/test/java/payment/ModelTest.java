package payment;

import org.junit.jupiter.api.Test;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Random;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * Random message sequences through the node's real main loop, each reply compared byte for byte with a
 * reference model of the protocol (docs/PROTOCOL.md: charges, refunds, errors, PaymentStatus, and with
 * --balance every other sequence, declines) written here from the contract, sharing no code with the node.
 */
class ModelTest {
    private static final int SEQUENCES = 10_000;
    private static final int MAX_MESSAGES = 200;
    /** The start balance of the sequences run with --balance: a few charges fit, then some are declined. */
    private static final BigDecimal BALANCE = new BigDecimal("150.00");

    // ---- the generator ------------------------------------------------------------------------------

    private static final String[] SAGAS = {"s0", "s1", "s2", "saga:step1"};
    private static final String[] USERS = {"u1", "u2"};
    private static final String[] AMOUNTS = {"10", "10.0", "1e1", "99.99", "99.990", "0.1", "0.30", "100.50", "5", "2.5", "12345678901234567890.5"};
    private static final String[] CLIENTS = {"c1", "c2", "orchestrator"};

    private static String pick(Random random, String[] from) {
        return from[random.nextInt(from.length)];
    }

    /** With balances every request has a msg_id, so that the balance invariants can tie each reply to its user. */
    static List<String> generate(Random random, boolean withBalances) {
        List<String> lines = new ArrayList<>();
        int count = 1 + random.nextInt(MAX_MESSAGES);
        int msgId = 1;
        for (int i = 0; i < count; i++) {
            String src = pick(random, CLIENTS);
            String id = !withBalances && random.nextInt(20) == 0 ? "" : "\"msg_id\":" + msgId++ + ",";
            String saga = "\"saga_id\":\"" + pick(random, SAGAS) + "\",\"step\":" + random.nextInt(3);
            int kind = random.nextInt(100);
            String body;
            if (kind < 3) {
                body = "{" + id + "\"type\":\"init\"" + (random.nextBoolean() ? ",\"node_id\":\"n" + random.nextInt(3) + "\",\"node_ids\":[\"n1\"]" : "") + "}";
            } else if (kind < 45) {
                body = "{" + id + "\"type\":\"ChargePayment\"," + saga + ",\"params\":{\"user_id\":\"" + pick(random, USERS)
                        + "\",\"amount\":" + pick(random, AMOUNTS) + "}}";
            } else if (kind < 80) {
                List<String> params = new ArrayList<>();
                int payment = random.nextInt(10);
                if (payment < 6) {
                    params.add("\"payment_id\":\"p" + (payment == 5 ? 99 : 1 + payment) + "\"");
                }
                if (random.nextBoolean()) {
                    params.add("\"amount\":" + pick(random, AMOUNTS));
                }
                String paramsField = params.isEmpty() && random.nextBoolean() ? "" : ",\"params\":{" + String.join(",", params) + "}";
                body = "{" + id + "\"type\":\"RefundPayment\"," + saga + (random.nextBoolean() ? ",\"compensating\":true" : "") + paramsField + "}";
            } else if (kind < 85) {
                body = "{" + id + "\"type\":\"PaymentStatus\"," + saga + "}";
            } else if (kind < 95) {
                body = switch (random.nextInt(10)) {
                    case 0 -> "{" + id + "\"type\":\"ChargePayment\",\"step\":1,\"params\":{\"user_id\":\"u1\",\"amount\":5}}";
                    case 1 -> "{" + id + "\"type\":\"ChargePayment\",\"saga_id\":\"s1\",\"step\":-1,\"params\":{\"user_id\":\"u1\",\"amount\":5}}";
                    case 2 -> "{" + id + "\"type\":\"ChargePayment\"," + saga + ",\"params\":{\"user_id\":\"u1\",\"amount\":0}}";
                    case 3 -> "{" + id + "\"type\":\"ChargePayment\"," + saga + ",\"params\":{\"user_id\":\"u1\",\"amount\":\"5\"}}";
                    case 4 -> "{" + id + "\"type\":\"ChargePayment\"," + saga + ",\"params\":{\"user_id\":\"u1\",\"amount\":1e999999999}}";
                    case 5 -> "{" + id + "\"type\":\"Transfer\"}";
                    case 6 -> "{\"msg_id\":\"x\",\"type\":\"init\"}";
                    case 7 -> "{" + id + "\"type\":\"RefundPayment\"," + saga + ",\"compensating\":\"yes\"}";
                    case 8 -> "{" + id + "\"type\":\"RefundPayment\"," + saga + ",\"params\":{\"payment_id\":7}}";
                    default -> "{" + id + "\"type\":\"ChargePayment\"," + saga + ",\"params\":[]}";
                };
            } else {
                lines.add(switch (random.nextInt(6)) {
                    case 0 -> "not json";
                    case 1 -> "[1,2]";
                    case 2 -> "{\"dest\":\"payment\",\"body\":{\"type\":\"init\",\"msg_id\":1}}";
                    case 3 -> "{\"src\":\"" + src + "\",\"dest\":\"payment\",\"body\":{\"type\":\"ChargePayment\",\"msg_id\":" + msgId++
                            + ",\"saga_id\":\"s1\"";                                            // cut short: answered 12
                    case 4 -> "{\"src\":\"n2\",\"dest\":\"payment\",\"body\":{\"type\":\"error\",\"code\":10,\"in_reply_to\":"
                            + random.nextInt(5) + "}}";                                                // a reply: never answered
                    default -> "";
                });
                continue;
            }
            String dest = random.nextInt(10) == 0 ? "" : "\"dest\":\"payment\",";
            lines.add("{\"src\":\"" + src + "\"," + dest + "\"body\":" + body + "}");
        }
        return lines;
    }

    // ---- the model ----------------------------------------------------------------------------------

    /** The protocol (docs/PROTOCOL.md) as plain maps: what the node must print for a sequence of lines. */
    static final class Model {
        record Charge(String userId, String amount, String paymentId) {
        }

        record Declined(String userId, String amount, String text) {
        }

        Model(BigDecimal start) {
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
                            "\"type\": \"error\", \"code\": 12, \"text\": \"not valid JSON: the line ends before the JSON does\"",
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
            Long inReplyTo = rawMsgId != null && rawMsgId.matches("-?\\d+") ? Long.valueOf(rawMsgId) : null;
            String from = nodeId != null ? nodeId : dest;
            try {
                if (rawMsgId != null && inReplyTo == null) {
                    throw new Refusal(12, "msg_id must be an integer");
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
                    default -> throw new Refusal(10, "unsupported message type: " + type);
                }
            } catch (Refusal e) {
                reply(from, src, "\"type\": \"error\", \"code\": " + e.code + ", \"text\": \"" + e.getMessage() + "\"", inReplyTo);
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

        static final class Refusal extends RuntimeException {
            final int code;

            Refusal(int code, String text) {
                super(text);
                this.code = code;
            }
        }

        private static String sagaId(String body) {
            String saga = field(body, "saga_id");
            if (saga == null) {
                throw new Refusal(12, "missing saga_id");
            }
            return text(saga);
        }

        private static long step(String body) {
            String step = field(body, "step");
            if (!step.matches("\\d+")) {
                throw new Refusal(12, "step must be an integer from 0 to 9223372036854775807");
            }
            return Long.parseLong(step);
        }

        private static BigDecimal amount(String amount) {
            if (isString(amount)) {
                throw new Refusal(12, "params.amount must be a number");
            }
            if (amount.contains("999999999")) {
                throw new Refusal(12, "params.amount " + amount + " is out of range: at most 40 digits before the decimal point and 40 after it");
            }
            BigDecimal value = new BigDecimal(amount);
            if (value.signum() <= 0) {
                throw new Refusal(12, "params.amount must be greater than 0, got " + amount);
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
                throw new Refusal(12, "params must be an object");
            }
            String userId = text(field(params, "user_id"));
            String amount = field(params, "amount");
            amount(amount);
            String key = saga + ":step" + step;
            Charge charge = charges.get(key);
            String note = "";
            if (charge != null) {
                if (!charge.userId().equals(userId) || !sameAmount(charge.amount(), amount)) {
                    throw new Refusal(22, "idempotency key " + key + " was first used with other params");
                }
                note = ", \"note\": \"cached_result\"";
            } else if (declines.containsKey(key)) {
                Declined declined = declines.get(key);
                if (!declined.userId().equals(userId) || !sameAmount(declined.amount(), amount)) {
                    throw new Refusal(22, "idempotency key " + key + " was first used with other params");
                }
                throw new Refusal(14, declined.text());
            } else if (closedSteps.contains(key)) {
                throw new Refusal(14, "step " + key + " was already compensated: its refund came first, so it is never charged");
            } else {
                if (start != null) {
                    BigDecimal left = balances.getOrDefault(userId, start);
                    BigDecimal value = new BigDecimal(amount);
                    if (left.compareTo(value) < 0) {
                        Declined declined = new Declined(userId, amount, "declined: insufficient funds: " + userId + " has "
                                + left.toPlainString() + " left, the charge is " + value.toPlainString() + " (" + key + ")");
                        declines.put(key, declined);
                        throw new Refusal(14, declined.text());
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

        private String refund(String body) {
            String saga = sagaId(body);
            long step = step(body);
            String compensating = field(body, "compensating");
            if (compensating != null && !compensating.equals("true") && !compensating.equals("false")) {
                throw new Refusal(12, "compensating must be true or false");
            }
            String params = Objects.requireNonNullElse(field(body, "params"), "{}");
            String paymentId = field(params, "payment_id");
            if (paymentId != null && !isString(paymentId)) {
                throw new Refusal(12, "params.payment_id must be a non-empty string");
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
                if (!Objects.equals(refund.paymentId(), paymentId) || !sameAmount(refund.amount(), amount)) {
                    throw new Refusal(22, "idempotency key " + key + " was first used with other params");
                }
                note = ", \"note\": \"already_refunded\"";
            } else {
                Charge charge = charges.get(chargeKey);
                if (declines.containsKey(chargeKey)) {
                    refund = new Refund(paymentId, amount, null, "0");   // a declined step: nothing was charged
                } else if (charge != null) {
                    if (paymentId != null && !paymentId.equals(charge.paymentId())) {
                        throw new Refusal(22, "payment_id " + paymentId + " is not the payment of step " + chargeKey + " (" + charge.paymentId() + ")");
                    }
                    refund = refundOf(charge.paymentId(), paymentId, amount);
                } else if (paymentId != null && chargedByPayment.containsKey(paymentId)) {
                    refund = refundOf(paymentId, paymentId, amount);
                } else if (paymentId != null) {
                    if (amount == null) {
                        throw new Refusal(12, "params.amount is required to refund " + paymentId + ", a payment this node does not know");
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
                    throw new Refusal(22, "refund of " + amount + " is more than is left of payment " + payment
                            + " (" + left.toPlainString() + " of " + charged + ")");
                }
                text = amount;
            } else if (left.signum() == 0) {
                throw new Refusal(22, "payment " + payment + " is already fully refunded");
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

    // ---- invariants, checked on the node's own replies ------------------------------------------------

    /** Null when the invariants hold, else what broke. One pass, in output order, as the node saw it. */
    static String brokenInvariant(List<String> input, String output, BigDecimal start, PaymentNode.Balances balances) {
        Map<String, String> requestByMsgId = new HashMap<>();
        for (String line : input) {
            Matcher id = Pattern.compile("\"src\":\"([^\"]+)\".*\"msg_id\":(\\d+),").matcher(line);
            if (id.find()) {
                requestByMsgId.put(id.group(1) + "/" + id.group(2), line);
            }
        }
        Map<String, String> paymentByKey = new HashMap<>();
        Map<String, BigDecimal> chargedByPayment = new HashMap<>();
        Map<String, String> refundByKey = new HashMap<>();
        Map<String, BigDecimal> refundedByPayment = new HashMap<>();
        Map<String, String> userByPayment = new HashMap<>();
        Map<String, BigDecimal> balanceByUser = new HashMap<>();   // start - charged + refunded, from the replies
        for (String line : output.lines().toList()) {
            Wire.Reply reply = Wire.read(line);
            String request = reply.inReplyTo() == null ? null : requestByMsgId.get(reply.dest() + "/" + reply.inReplyTo());
            if ("ChargePayment_ok".equals(reply.type())) {
                String key = reply.key();
                String paymentNumber = reply.result().get("payment_id").substring(1);
                String earlier = paymentByKey.putIfAbsent(key, paymentNumber);
                if (earlier != null && !earlier.equals(paymentNumber)) {
                    return key + " maps to two payments: p" + earlier + " and p" + paymentNumber;
                }
                BigDecimal charged = new BigDecimal(reply.result().get("charged"));
                chargedByPayment.put(paymentNumber, charged);
                if (start != null && earlier == null) {
                    Matcher user = Pattern.compile("\"user_id\":\"([^\"]+)\"").matcher(request);
                    user.find();
                    userByPayment.put(paymentNumber, user.group(1));
                    BigDecimal left = balanceByUser.getOrDefault(user.group(1), start).subtract(charged);
                    if (left.signum() < 0) {
                        return user.group(1) + "'s balance fell below 0 (" + left + ") with p" + paymentNumber;
                    }
                    balanceByUser.put(user.group(1), left);
                }
                continue;
            }
            if (!"RefundPayment_ok".equals(reply.type()) || reply.result().get("refund_id") == null) {
                continue;
            }
            String key = reply.key();
            String refunded = reply.result().get("refunded");
            String result = reply.result().get("refund_id").substring(1) + "/" + refunded;
            String earlier = refundByKey.putIfAbsent(key, result);
            if (earlier != null && !earlier.equals(result)) {
                return key + " has two results: " + earlier + " and " + result;
            }
            if (earlier != null) {
                continue;
            }
            // The payment it drew on: the step's own, else the one the request named.
            String payment = paymentByKey.get(reply.sagaId() + ":step" + reply.step());
            Matcher named = request == null ? null : Pattern.compile("\"payment_id\":\"p(\\d+)\"").matcher(request);
            if (payment == null && named != null && named.find()) {
                payment = named.group(1);
            }
            if (payment != null && chargedByPayment.containsKey(payment)) {
                BigDecimal total = refundedByPayment.merge(payment, new BigDecimal(refunded), BigDecimal::add);
                if (total.compareTo(chargedByPayment.get(payment)) > 0) {
                    return "refunds of p" + payment + " add up to " + total + ", more than the " + chargedByPayment.get(payment) + " charged";
                }
                if (start != null) {
                    balanceByUser.merge(userByPayment.get(payment), new BigDecimal(refunded), BigDecimal::add);
                }
            }
        }
        if (balances != null) {
            for (Map.Entry<String, BigDecimal> user : balanceByUser.entrySet()) {
                if (balances.balance(user.getKey()).compareTo(user.getValue()) != 0) {
                    return user.getKey() + "'s balance is " + balances.balance(user.getKey()) + ", but start - charged + refunded is "
                            + user.getValue();
                }
            }
        }
        Set<String> ids = new HashSet<>(paymentByKey.values());
        for (int i = 1; i <= paymentByKey.size(); i++) {
            if (!ids.contains(String.valueOf(i))) {
                return "payment ids have a gap at p" + i + " for " + paymentByKey.size() + " charged keys";
            }
        }
        return null;
    }

    // ---- the run ------------------------------------------------------------------------------------

    /** Null when the node's output equals the model's and the invariants hold, else a description. */
    static String failure(List<String> lines, BigDecimal start) {
        String input = lines.isEmpty() ? "" : String.join("\n", lines) + "\n";
        Node.CapturedLog log = Node.CapturedLog.of(false);
        PaymentNode.Balances balances = start == null ? null : new PaymentNode.Balances(start);
        PaymentNode.PaymentHandler table = balances == null ? new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE)
                : new PaymentNode.FundedPaymentHandler(log.log(), PaymentNode.Journal.NONE, balances);
        String actual = Node.run(input.getBytes(java.nio.charset.StandardCharsets.UTF_8), table, log).stdout();
        String expected = new Model(start).run(lines);
        if (!actual.equals(expected)) {
            String[] a = actual.split("\n", -1);
            String[] e = expected.split("\n", -1);
            for (int i = 0; i < Math.max(a.length, e.length); i++) {
                String got = i < a.length ? a[i] : "(nothing)";
                String want = i < e.length ? e[i] : "(nothing)";
                if (!got.equals(want)) {
                    return "reply " + (i + 1) + " differs:\n  node:  " + got + "\n  model: " + want;
                }
            }
        }
        return brokenInvariant(lines, actual, start, balances);
    }

    /** The smallest sub-sequence that still fails: drop chunks, then single lines, while it does. */
    static List<String> shrink(List<String> lines, BigDecimal balance) {
        List<String> smallest = new ArrayList<>(lines);
        for (int chunk = Math.max(1, smallest.size() / 2); chunk >= 1; chunk /= 2) {
            for (int start = 0; start < smallest.size(); ) {
                List<String> candidate = new ArrayList<>(smallest);
                candidate.subList(start, Math.min(candidate.size(), start + chunk)).clear();
                if (failure(candidate, balance) != null) {
                    smallest = candidate;
                } else {
                    start += chunk;
                }
            }
        }
        return smallest;
    }

    @Test
    void theNodeAnswersEveryRandomSequenceExactlyAsTheModelDoes() {
        long base = Long.getLong("model.seed", 20261127L);
        int messages = 0;
        for (int i = 0; i < SEQUENCES; i++) {
            long seed = base + i;
            BigDecimal start = seed % 2 == 1 ? BALANCE : null;   // every other sequence with --balance
            List<String> lines = generate(new Random(seed), start != null);
            messages += lines.size();
            String failure = failure(lines, start);
            if (failure != null) {
                List<String> small = shrink(lines, start);
                fail("sequence with seed " + seed + " (rerun: -Dmodel.seed=" + seed + ")" + (start == null ? "" : " and --balance " + start)
                        + " fails: " + failure
                        + "\nshrunk to " + small.size() + " of " + lines.size() + " lines:\n" + String.join("\n", small)
                        + "\nwhich fails with: " + failure(small, start));
            }
        }
        if (messages < SEQUENCES) {
            fail("too few messages generated: " + messages);
        }
    }
}
