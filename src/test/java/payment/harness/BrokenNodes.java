package payment.harness;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import payment.Node;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Payment nodes that are wrong on purpose, one way each, to show that the cluster checker catches every kind of
 * anomaly it names. {@code correct} is a small in-memory node by docs/PROTOCOL.md (run as one node it must pass);
 * each other mode breaks one thing:
 * <ul>
 * <li>{@code silent}: answers init and nothing else;</li>
 * <li>{@code forgetful}: loses every write: each charge is a new payment, each refund a new one, status says none;</li>
 * <li>{@code overrefund}: never checks a refund against what is left of its payment;</li>
 * <li>{@code one-id}: gives every payment the id p1;</li>
 * <li>{@code garbage}: every 9th line it writes is preceded by a line that is not JSON, and every 7th charge is
 * answered with the type RefundPayment_ok;</li>
 * <li>{@code sticky-refusal}: a refused refund leaves its key blocked: a corrected request under it is refused too;</li>
 * <li>{@code dies}: correct, and exits for good {@value #DIES_AFTER_MILLIS} ms after its first init;</li>
 * <li>{@code overcapture}: never checks a capture against what its reservation holds;</li>
 * <li>{@code capture-and-void}: a void ignores a capture: it releases a captured reservation;</li>
 * <li>{@code capture-after-void}: a capture ignores a void: it takes a voided reservation;</li>
 * <li>{@code hanging-reserve}: a void that comes before its reservation does not close the step;</li>
 * <li>{@code double-release}: a capture releases all that was held, the part it took as well.</li>
 * </ul>
 * Two-phase payments (SPEC section 12) are kept as simply: a reservation per step key (expiring on this process's
 * clock), a capture key and a void key beside it.
 */
final class BrokenNodes {
    private static final ObjectMapper JSON = new ObjectMapper().enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .enable(DeserializationFeature.USE_LONG_FOR_INTS);

    static final List<String> MODES = List.of("correct", "silent", "forgetful", "overrefund", "one-id", "garbage", "sticky-refusal", "dies",
            "overcapture", "capture-and-void", "capture-after-void", "hanging-reserve", "double-release");
    static final long DIES_AFTER_MILLIS = 3000;

    /** The command that starts one broken node of {@code mode}, for the harness's {@code -- COMMAND}. */
    static List<String> command(String mode) {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        String classpath = String.join(File.pathSeparator, Node.location(BrokenNodes.class), Node.location(ObjectMapper.class),
                Node.location(com.fasterxml.jackson.core.JsonFactory.class), Node.location(com.fasterxml.jackson.annotation.JsonInclude.class));
        return List.of(java, "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", classpath, BrokenNodes.class.getName(), mode);
    }

    private record Charge(JsonNode params, ObjectNode result) {
    }

    private record Payment(String key, BigDecimal charged, BigDecimal[] refunded) {
    }

    /** A step's reservation: {@code state} reserved, captured, voided or expired; {@code expiresAt} in ms (MAX: never). */
    private static final class Hold {
        final JsonNode params;
        final ObjectNode result;
        final String paymentId;
        final BigDecimal amount;
        final long expiresAt;
        String state = "reserved";
        BigDecimal captured = BigDecimal.ZERO;

        Hold(JsonNode params, ObjectNode result, String paymentId, BigDecimal amount, long expiresAt) {
            this.params = params;
            this.result = result;
            this.paymentId = paymentId;
            this.amount = amount;
            this.expiresAt = expiresAt;
        }

        /** The state now: a live hold past its deadline has expired. */
        String now() {
            if (state.equals("reserved") && System.nanoTime() / 1_000_000 >= expiresAt) {
                state = "expired";
            }
            return state;
        }
    }

    private final String mode;
    private final PrintStream out;
    private final Map<String, Charge> charges = new HashMap<>();
    private final Map<String, Charge> refunds = new HashMap<>();
    private final Map<String, Hold> holds = new HashMap<>();
    private final Map<String, Charge> captures = new HashMap<>();
    private final Map<String, Charge> voids = new HashMap<>();
    private final Map<String, Payment> payments = new HashMap<>();
    private final Set<String> closed = new HashSet<>();
    private final Set<String> refused = new HashSet<>();
    private String nodeId = "n?";
    private long msgId;
    private int lines;
    private int chargesSeen;
    private int paymentIds;
    private int refundIds;

    private BrokenNodes(String mode, PrintStream out) {
        this.mode = mode;
        this.out = out;
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 1 || !MODES.contains(args[0])) {
            System.err.println("usage: BrokenNodes " + String.join("|", MODES));
            System.exit(2);
        }
        BrokenNodes node = new BrokenNodes(args[0], new PrintStream(System.out, true, StandardCharsets.UTF_8));
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            node.handle(JSON.readTree(line));
        }
    }

    private void handle(JsonNode message) {
        JsonNode body = message.path("body");
        String type = body.path("type").asText();
        if (type.equals("init")) {
            if (mode.equals("dies") && nodeId.equals("n?")) {
                Thread death = new Thread(() -> {
                    try {
                        Thread.sleep(DIES_AFTER_MILLIS);
                    } catch (InterruptedException ignored) {
                        // dies now
                    }
                    System.err.println("dies: exiting for good, " + DIES_AFTER_MILLIS + " ms after init");
                    synchronized (out) {   // never in the middle of a reply: a line cut short would be another anomaly
                        Runtime.getRuntime().halt(1);
                    }
                }, "death");
                death.setDaemon(true);
                death.start();
            }
            nodeId = body.path("node_id").asText();
            reply(message, JSON.createObjectNode().put("type", "init_ok"));
            return;
        }
        if (mode.equals("silent") || body.has("in_reply_to")) {
            return;
        }
        String key = body.path("saga_id").asText() + ":step" + body.path("step").asText();
        ObjectNode answer = switch (type) {
            case "ChargePayment" -> charge(key, body);
            case "RefundPayment" -> refund(key, body);
            case "PaymentStatus" -> status(key, body);
            case "ReservePayment" -> reserve(key, body);
            case "CapturePayment" -> capture(key, body);
            case "VoidPayment" -> voidHold(key, body);
            default -> error(10, "not supported: " + type);
        };
        reply(message, answer);
    }

    private ObjectNode ok(String type, JsonNode request) {
        return JSON.createObjectNode().put("type", type).put("saga_id", request.path("saga_id").asText()).set("step", request.path("step"));
    }

    private ObjectNode charge(String key, JsonNode request) {
        chargesSeen++;
        JsonNode params = request.path("params");
        if (!mode.equals("forgetful")) {
            if (closed.contains(key)) {
                return error(14, "step " + key + " was compensated");
            }
            if (holds.containsKey(key)) {
                return error(22, "key " + key + " was reserved");
            }
            Charge earlier = charges.get(key);
            if (earlier != null) {
                return earlier.params().equals(params) ? answer(ok("ChargePayment_ok", request), earlier.result(), "cached_result")
                        : error(22, "key reused with other params");
            }
        }
        String paymentId = mode.equals("one-id") ? "p1" : "p" + ++paymentIds;
        BigDecimal amount = params.path("amount").decimalValue();
        ObjectNode result = JSON.createObjectNode().put("payment_id", paymentId).put("charged", amount);
        charges.put(key, new Charge(params, result));
        payments.put(paymentId, new Payment(key, amount, new BigDecimal[] {BigDecimal.ZERO}));
        String type = mode.equals("garbage") && chargesSeen % 7 == 0 ? "RefundPayment_ok" : "ChargePayment_ok";
        return answer(ok(type, request), result, null);
    }

    private ObjectNode refund(String key, JsonNode request) {
        String refundKey = key + ":refund";
        JsonNode params = request.path("params");
        boolean remembers = !mode.equals("forgetful");
        if (refused.contains(refundKey)) {
            return error(22, "refund key " + refundKey + " was refused before");
        }
        Charge earlier = remembers ? refunds.get(refundKey) : null;
        if (earlier != null) {
            return earlier.params().equals(params) ? answer(ok("RefundPayment_ok", request), earlier.result(), "already_refunded")
                    : error(22, "refund key reused with other params");
        }
        Charge own = remembers ? charges.get(key) : null;
        Hold held = remembers ? holds.get(key) : null;
        if (held != null && !held.state.equals("captured")) {
            return error(22, "payment_not_captured", "the reservation of " + key + " is not captured: void it instead");
        }
        String paymentId = own != null ? own.result().path("payment_id").asText()
                : held != null ? held.paymentId : params.path("payment_id").asText(null);
        Payment payment = paymentId == null || !remembers ? null : payments.get(paymentId);
        ObjectNode result = JSON.createObjectNode();
        if (payment == null && (paymentId == null || !params.has("amount"))) {
            closed.add(key);   // the compensation came first
            result.put("refunded", 0);
        } else {
            BigDecimal left = payment == null ? params.path("amount").decimalValue() : payment.charged().subtract(payment.refunded()[0]);
            BigDecimal amount = params.has("amount") ? params.path("amount").decimalValue() : left;
            if (amount.compareTo(left) > 0 && !mode.equals("overrefund")) {
                if (mode.equals("sticky-refusal")) {
                    refused.add(refundKey);
                }
                return error(22, "refund of " + amount + " above the " + left + " left");
            }
            if (payment != null) {
                payment.refunded()[0] = payment.refunded()[0].add(amount);
            }
            result.put("refund_id", "r" + ++refundIds).put("refunded", amount);
        }
        refunds.put(refundKey, new Charge(params, result));
        return answer(ok("RefundPayment_ok", request), result, null);
    }

    private ObjectNode reserve(String key, JsonNode request) {
        JsonNode params = request.path("params");
        if (!mode.equals("forgetful")) {
            if (closed.contains(key)) {
                return error(14, "step_compensated", "step " + key + " was compensated");
            }
            if (charges.containsKey(key)) {
                return error(22, "key_reused", "key " + key + " was charged");
            }
            Hold earlier = holds.get(key);
            if (earlier != null) {
                return earlier.params.equals(params) ? answer(ok("ReservePayment_ok", request), earlier.result, "cached_result")
                        : error(22, "key_reused", "key reused with other params");
            }
        }
        String paymentId = mode.equals("one-id") ? "p1" : "p" + ++paymentIds;
        BigDecimal amount = params.path("amount").decimalValue();
        ObjectNode result = JSON.createObjectNode().put("payment_id", paymentId).put("reserved", amount);
        long expiresAt = params.has("expires_in_ms") ? System.nanoTime() / 1_000_000 + params.path("expires_in_ms").asLong() : Long.MAX_VALUE;
        if (!mode.equals("forgetful")) {
            holds.put(key, new Hold(params, result, paymentId, amount, expiresAt));
        }
        return answer(ok("ReservePayment_ok", request), result, null);
    }

    private ObjectNode capture(String key, JsonNode request) {
        String captureKey = key + ":capture";
        JsonNode params = request.path("params");
        Charge earlier = captures.get(captureKey);
        if (earlier != null) {
            return earlier.params().equals(params) ? answer(ok("CapturePayment_ok", request), earlier.result(), "already_captured")
                    : error(22, "key_reused", "capture key reused with other params");
        }
        if (closed.contains(key)) {
            return error(14, "step_compensated", "step " + key + " was compensated");
        }
        Hold hold = holds.get(key);
        if (hold == null) {
            return error(14, "no_reservation", "step " + key + " has no reservation");
        }
        String state = hold.now();
        if (state.equals("voided") && !mode.equals("capture-after-void")) {
            return error(14, "reservation_voided", "the reservation of " + key + " was voided");
        }
        if (state.equals("expired")) {
            return error(14, "reservation_expired", "the reservation of " + key + " expired");
        }
        BigDecimal amount = params.has("amount") ? params.path("amount").decimalValue() : hold.amount;
        if (amount.compareTo(hold.amount) > 0 && !mode.equals("overcapture")) {
            return error(22, "capture_exceeds_reservation", "a capture of " + amount + " above the " + hold.amount + " reserved");
        }
        BigDecimal released = mode.equals("double-release") ? hold.amount : hold.amount.subtract(amount);
        hold.state = "captured";
        hold.captured = amount;
        payments.put(hold.paymentId, new Payment(key, amount, new BigDecimal[] {BigDecimal.ZERO}));
        ObjectNode result = JSON.createObjectNode().put("payment_id", hold.paymentId).put("captured", amount).put("released", released);
        captures.put(captureKey, new Charge(params, result));
        return answer(ok("CapturePayment_ok", request), result, null);
    }

    private ObjectNode voidHold(String key, JsonNode request) {
        String voidKey = key + ":void";
        JsonNode params = request.path("params");
        Charge earlier = voids.get(voidKey);
        if (earlier != null) {
            return earlier.params().equals(params) ? answer(ok("VoidPayment_ok", request), earlier.result(), "already_voided")
                    : error(22, "key_reused", "void key reused with other params");
        }
        Hold hold = holds.get(key);
        ObjectNode result = JSON.createObjectNode();
        if (hold != null) {
            String state = hold.now();
            if (state.equals("captured") && !mode.equals("capture-and-void")) {
                return error(14, "already_captured", "the reservation of " + key + " is captured: refund it instead");
            }
            boolean live = state.equals("reserved") || state.equals("captured");
            if (live) {
                hold.state = "voided";
            }
            result.put("payment_id", hold.paymentId).put("released", live ? hold.amount : BigDecimal.ZERO);
        } else if (charges.containsKey(key)) {
            return error(14, "no_reservation", "step " + key + " was charged: refund it instead");
        } else {
            if (!mode.equals("hanging-reserve")) {
                closed.add(key);   // the void came first: no reservation ever after
            }
            result.put("released", 0);
        }
        voids.put(voidKey, new Charge(params, result));
        return answer(ok("VoidPayment_ok", request), result, null);
    }

    private ObjectNode status(String key, JsonNode request) {
        ObjectNode answer = ok("PaymentStatus_ok", request);
        if (mode.equals("forgetful")) {
            return answer.put("status", "none");
        }
        Hold hold = holds.get(key);
        if (hold != null) {
            answer.put("status", hold.now());
            Payment captured = payments.get(hold.paymentId);
            answer.putObject("payment").put("payment_id", hold.paymentId).put("reserved", hold.amount).put("captured", hold.captured)
                    .put("refunded", captured != null && hold.state.equals("captured") ? captured.refunded()[0] : BigDecimal.ZERO);
            for (String[] other : new String[][] {{":refund", "refund"}, {":capture", "capture"}, {":void", "void"}}) {
                Charge seen = (other[0].equals(":refund") ? refunds : other[0].equals(":capture") ? captures : voids).get(key + other[0]);
                if (seen != null) {
                    answer.set(other[1], seen.result());
                }
            }
            return answer;
        }
        Charge charge = charges.get(key);
        answer.put("status", charge != null ? "charged" : closed.contains(key) ? "compensated" : "none");
        if (charge != null) {
            Payment payment = payments.get(charge.result().path("payment_id").asText());
            answer.putObject("payment").put("payment_id", charge.result().path("payment_id").asText()).put("charged", payment.charged())
                    .put("refunded", payment.refunded()[0]);
        }
        Charge refund = refunds.get(key + ":refund");
        if (refund != null) {
            answer.set("refund", refund.result());
        }
        return answer;
    }

    private static ObjectNode answer(ObjectNode reply, ObjectNode result, String note) {
        reply.set("result", result);
        if (note != null) {
            reply.put("note", note);
        }
        return reply;
    }

    private static ObjectNode error(int code, String text) {
        return JSON.createObjectNode().put("type", "error").put("code", code).put("text", text);
    }

    private static ObjectNode error(int code, String reason, String text) {
        return error(code, text).put("reason", reason);
    }

    private void reply(JsonNode request, ObjectNode body) {
        if (request.path("body").has("msg_id")) {
            body.set("in_reply_to", request.path("body").path("msg_id"));
        }
        body.put("msg_id", msgId++);
        ObjectNode envelope = JSON.createObjectNode().put("src", nodeId).set("dest", request.path("src"));
        envelope.set("body", body);
        if (mode.equals("garbage") && ++lines % 9 == 0) {
            out.println("garbage: this line is not JSON");
        }
        out.println(envelope);
    }
}
