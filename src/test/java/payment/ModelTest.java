package payment;

import org.junit.jupiter.api.Tag;
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
    /** Sequences of the fast tier (mvn test); the slow tier runs the rest. */
    private static final int FAST_SEQUENCES = 2_000;
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

    // ---- invariants, checked on the node's own replies ------------------------------------------------

    /** Null when the invariants hold, else what broke. One pass, in output order, as the node saw it. */
    static String brokenInvariant(List<String> input, String output, BigDecimal start, Balances balances) {
        Map<String, String> requestByMsgId = new HashMap<>();
        for (String line : input) {
            Matcher id = Pattern.compile("\"src\":\"([^\"]+)\".*\"msg_id\":(\\d+),").matcher(line);
            if (id.find()) {
                requestByMsgId.put(id.group(1) + "/" + id.group(2), line);
            }
        }
        MoneyInvariants money = new MoneyInvariants();   // the rules every checker shares
        Set<String> paymentIds = new HashSet<>();
        Map<String, String> userByPayment = new HashMap<>();
        Map<String, BigDecimal> balanceByUser = new HashMap<>();   // start - charged + refunded, from the replies
        int lineNumber = 0;
        for (String line : output.lines().toList()) {
            lineNumber++;
            Wire.Reply reply = Wire.read(line);
            String request = reply.inReplyTo() == null ? null : requestByMsgId.get(reply.dest() + "/" + reply.inReplyTo());
            if ("ChargePayment_ok".equals(reply.type())) {
                String paymentId = reply.result().get("payment_id");
                BigDecimal charged = new BigDecimal(reply.result().get("charged"));
                boolean first = money.paymentOf(reply.key()) == null;
                money.payment(reply.key(), paymentId, charged, "reply " + lineNumber);
                paymentIds.add(paymentId);
                if (start != null && first) {
                    Matcher user = Pattern.compile("\"user_id\":\"([^\"]+)\"").matcher(request);
                    user.find();
                    userByPayment.put(paymentId, user.group(1));
                    BigDecimal left = balanceByUser.getOrDefault(user.group(1), start).subtract(charged);
                    if (left.signum() < 0) {
                        return user.group(1) + "'s balance fell below 0 (" + left + ") with " + paymentId;
                    }
                    balanceByUser.put(user.group(1), left);
                }
                continue;
            }
            if (!"RefundPayment_ok".equals(reply.type())) {
                continue;
            }
            String refundKey = reply.key();
            String refundId = reply.result().get("refund_id");
            BigDecimal refunded = new BigDecimal(reply.result().get("refunded"));
            // The payment it drew on: the step's own, else the one the request named.
            String payment = money.paymentOf(reply.sagaId() + ":step" + reply.step());
            Matcher named = request == null ? null : Pattern.compile("\"payment_id\":\"(p\\d+)\"").matcher(request);
            if (payment == null && named != null && named.find()) {
                payment = named.group(1);
            }
            BigDecimal before = payment == null ? BigDecimal.ZERO : money.refundedOf(payment);
            money.refund(refundKey, refundId, payment, refunded, "reply " + lineNumber);
            String broken = money.firstBroken();
            if (broken != null) {
                return broken;
            }
            if (start != null && payment != null && userByPayment.containsKey(payment) && money.refundedOf(payment).compareTo(before) > 0) {
                balanceByUser.merge(userByPayment.get(payment), refunded, BigDecimal::add);
            }
        }
        String broken = money.firstBroken();
        if (broken != null) {
            return broken;
        }
        if (balances != null) {
            for (Map.Entry<String, BigDecimal> user : balanceByUser.entrySet()) {
                if (balances.balance(user.getKey()).compareTo(user.getValue()) != 0) {
                    return user.getKey() + "'s balance is " + balances.balance(user.getKey()) + ", but start - charged + refunded is "
                            + user.getValue();
                }
            }
        }
        for (int i = 1; i <= paymentIds.size(); i++) {
            if (!paymentIds.contains("p" + i)) {
                return "payment ids have a gap at p" + i + " for " + paymentIds.size() + " payments";
            }
        }
        return null;
    }

    // ---- the run ------------------------------------------------------------------------------------

    /** Null when the node's output equals the model's and the invariants hold, else a description. */
    static String failure(List<String> lines, BigDecimal start) {
        String input = lines.isEmpty() ? "" : String.join("\n", lines) + "\n";
        Node.CapturedLog log = Node.CapturedLog.of(false);
        Balances balances = start == null ? null : new Balances(start);
        PaymentNode.PaymentHandler table = balances == null ? new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE)
                : new FundedPaymentHandler(log.log(), PaymentNode.Journal.NONE, balances);
        String actual = Node.run(input.getBytes(java.nio.charset.StandardCharsets.UTF_8), table, log).stdout();
        String expected = new ReferenceModel(start).run(lines);
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

    /** The fast tier's share: the first sequences. */
    @Test
    void theNodeAnswersEveryRandomSequenceExactlyAsTheModelDoes() {
        check(0, FAST_SEQUENCES);
    }

    /** The slow tier (mvn verify) runs the rest, so that both tiers together run all of them. */
    @Test
    @Tag("slow")
    void theNodeAnswersEveryFurtherRandomSequenceExactlyAsTheModelDoes() {
        check(FAST_SEQUENCES, SEQUENCES - FAST_SEQUENCES);
    }

    private void check(int from, int count) {
        long base = Long.getLong("model.seed", 20261127L) + from;
        int messages = 0;
        for (int i = 0; i < count; i++) {
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
        if (messages < count) {
            fail("too few messages generated: " + messages);
        }
    }
}
