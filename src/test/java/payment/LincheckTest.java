package payment;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.cfg.JsonNodeFeature;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.jetbrains.lincheck.datastructures.IntGen;
import org.jetbrains.lincheck.datastructures.ModelCheckingOptions;
import org.jetbrains.lincheck.datastructures.Operation;
import org.jetbrains.lincheck.datastructures.Options;
import org.jetbrains.lincheck.datastructures.Param;
import org.jetbrains.lincheck.datastructures.StressOptions;
import org.jetbrains.kotlinx.lincheck.Actor;
import org.jetbrains.kotlinx.lincheck.execution.ExecutionScenario;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.io.UncheckedIOException;
import java.lang.reflect.Method;
import java.math.BigDecimal;
import java.util.Arrays;
import java.util.List;

import payment.PaymentNode.Amount;
import payment.PaymentNode.CaptureRequest;
import payment.PaymentNode.CaptureResult;
import payment.PaymentNode.ReserveRequest;
import payment.PaymentNode.ReserveResult;
import payment.PaymentNode.VoidRequest;
import payment.PaymentNode.VoidResult;
import payment.PaymentNode.ChargeRequest;
import payment.PaymentNode.ChargeResult;
import payment.PaymentNode.PaymentHandler;
import payment.PaymentNode.PaymentView;
import payment.PaymentNode.RefundRequest;
import payment.PaymentNode.RefundResult;
import payment.PaymentNode.RpcError;
import payment.PaymentNode.Served;
import payment.PaymentNode.StatusRequest;
import payment.PaymentNode.StepStatus;

/**
 * The card's idempotency table ({@link PaymentHandler}) checked for linearizability by JetBrains' Lincheck, a
 * tool no one here wrote, against the same {@link ReferenceModel} ModelTest holds the node to: Lincheck runs
 * small scenarios of charges, refunds and status reads from several threads, and every outcome must be
 * explained by some order of the operations played one at a time on the model. Model checking tries the
 * interleavings of each scenario (and prints a failing one step by step); stress runs them on real threads.
 *
 * <p>Outcomes are compared as canonical text ({@code "ok p1 10 cached"}, {@code "error 22 key_reused"}), built by
 * the same functions on both sides: from the handler's results here, from the model's reply lines in
 * {@link Spec}. Payment ids depend on the order the charges take effect, which is what linearizability asks:
 * one order explains them all. Two things are left out, each a finding of this test that the node does not
 * meet yet (docs/TESTING.md): a refund's id, and a status read's refund part.
 *
 * <p>One JVM and the table only: not the journal (Journal.NONE), not the stdin loop, not a cluster.
 */
@Param(name = "saga", gen = IntGen.class, conf = "1:2")
@Param(name = "step", gen = IntGen.class, conf = "1:2")
@Param(name = "charged", gen = IntGen.class, conf = "0:2")
@Param(name = "payment", gen = IntGen.class, conf = "0:3")
@Param(name = "refunded", gen = IntGen.class, conf = "0:2")
@Tag("slow")
public class LincheckTest {
    // ---- the parameter domains: small, so that model checking covers them; each value is there for a rule ---

    /** A first charge, its retry by value (10.0 equals 10), and a reuse of the key with another amount (22). */
    private static final String[] CHARGED = {"10", "10.0", "7"};
    /** No payment_id (the step's own payment, or a compensation that comes first), two this node makes, one it never makes (case 3). */
    private static final String[] PAYMENT = {null, "p1", "p2", "p7"};
    /** All that is left, a part, and all of a charge (then more than is left after a part: 22). */
    private static final String[] REFUNDED = {null, "4", "10"};

    private static String saga(int saga) {
        return "s" + saga;
    }

    // ---- the table under test -------------------------------------------------------------------------------

    private final PaymentHandler table = new PaymentHandler(Node.silentLog(), PaymentNode.Journal.NONE);

    @Operation
    public String charge(@Param(name = "saga") int saga, @Param(name = "step") int step, @Param(name = "charged") int charged) {
        String amount = CHARGED[charged];
        try {
            Served<ChargeResult> served = table.charge(new ChargeRequest(saga(saga), step, "u1", new Amount(amount, new BigDecimal(amount))));
            return Outcome.charged(served.result().paymentId(), served.result().charged(), served.replayed());
        } catch (RpcError e) {
            return Outcome.error(e.code.code, e.reason.wire());
        }
    }

    @Operation
    public String refund(@Param(name = "saga") int saga, @Param(name = "step") int step, @Param(name = "payment") int payment,
                         @Param(name = "refunded") int refunded) {
        String amount = REFUNDED[refunded];
        try {
            Served<RefundResult> served = table.refund(new RefundRequest(saga(saga), step, PAYMENT[payment],
                    amount == null ? null : new Amount(amount, new BigDecimal(amount))));
            return Outcome.refunded(served.result().refundId(), served.result().refunded(), served.replayed());
        } catch (RpcError e) {
            return Outcome.error(e.code.code, e.reason.wire());
        }
    }

    /** ReservePayment (SPEC section 12): the step's hold, sharing its key with charges; never expires here (no TTL). */
    @Operation
    public String reserve(@Param(name = "saga") int saga, @Param(name = "step") int step, @Param(name = "charged") int charged) {
        String amount = CHARGED[charged];
        try {
            Served<ReserveResult> served = table.reserve(new ReserveRequest(saga(saga), step, "u1", new Amount(amount, new BigDecimal(amount)), null));
            return Outcome.reserved(served.result().paymentId(), served.result().reserved(), served.replayed());
        } catch (RpcError e) {
            return Outcome.error(e.code.code, e.reason.wire());
        }
    }

    /** CapturePayment: all that is held, a part (4), or all of it given (10; more than a 7 holds: 22), naming the payment or not. */
    @Operation
    public String capture(@Param(name = "saga") int saga, @Param(name = "step") int step, @Param(name = "payment") int payment,
                          @Param(name = "refunded") int captured) {
        String amount = REFUNDED[captured];
        try {
            Served<CaptureResult> served = table.capture(new CaptureRequest(saga(saga), step, PAYMENT[payment],
                    amount == null ? null : new Amount(amount, new BigDecimal(amount))));
            return Outcome.captured(served.result().paymentId(), served.result().captured(), served.result().released(), served.replayed());
        } catch (RpcError e) {
            return Outcome.error(e.code.code, e.reason.wire());
        }
    }

    /** VoidPayment: releases the step's hold (a capture and a void of one hold: one wins), or closes a step not reserved yet. */
    @Operation
    public String voidHold(@Param(name = "saga") int saga, @Param(name = "step") int step, @Param(name = "payment") int payment) {
        try {
            Served<VoidResult> served = table.voidHold(new VoidRequest(saga(saga), step, PAYMENT[payment]));
            return Outcome.voided(served.result().paymentId(), served.result().released(), served.replayed());
        } catch (RpcError e) {
            return Outcome.error(e.code.code, e.reason.wire());
        }
    }

    /**
     * A status read, whole: the step's status, its payment and its refunded total, and the step's refund. (The node
     * once read the refund from its key apart from the step's: a read racing a compensation that came first could
     * see the step {@code none} and that compensation's refund together, which no order explains; docs/TESTING.md.)
     */
    @Operation
    public String status(@Param(name = "saga") int saga, @Param(name = "step") int step) {
        StepStatus status = table.status(new StatusRequest(saga(saga), step));
        PaymentView payment = status.payment();
        return Outcome.status(status.status(), payment == null ? "" : payment.charged() != null ? Outcome.payment(payment.paymentId(), payment.charged(), payment.refunded())
                : Outcome.reservation(payment.paymentId(), payment.reserved(), payment.captured(), payment.refunded()))
                + (status.refund() == null ? "" : Outcome.refund(status.refund().refundId(), status.refund().refunded()))
                + (status.capture() == null ? "" : " capture " + Outcome.captured(status.capture().paymentId(), status.capture().captured(),
                        status.capture().released(), false))
                + (status.voided() == null ? "" : " void " + Outcome.voided(status.voided().paymentId(), status.voided().released(), false));
    }

    // ---- the two modes --------------------------------------------------------------------------------------

    /*
     * Each mode runs the card's two promises as fixed scenarios first (so that breaking either fails every run,
     * not only when the random scenarios happen to meet it), then random scenarios of 3 threads. The counts
     * are what the mutants of docs/TESTING.md need; -Dlincheck.iterations=N and -Dlincheck.invocations=N
     * run more.
     */

    @Test
    void modelChecking() {
        scenarios(new ModelCheckingOptions()).check(getClass());
    }

    @Test
    void stress() {
        scenarios(new StressOptions()).check(getClass());
    }

    /** One set of scenarios for both modes: the two fixed ones, then random ones of this size. */
    private static <O extends Options<O, ?>> O scenarios(O options) {
        return options
                .sequentialSpecification(Spec.class)
                .addCustomScenario(retriesOfOneStepFromSeveralThreads())
                .addCustomScenario(aRefusedAttemptLeavesNoRecord())
                .addCustomScenario(aCaptureAndAVoidOfOneHoldRace())
                .iterations(Integer.getInteger("lincheck.iterations", 4))
                .invocationsPerIteration(Integer.getInteger("lincheck.invocations", 300))
                .threads(3)
                .actorsPerThread(2)
                .actorsBefore(2)
                .actorsAfter(1);
    }

    /**
     * A step retried from three threads at once (10 and 10.0 are one amount), its compensation, and a status
     * read: one payment, every attempt the same answer (docs/PROTOCOL.md section 6).
     */
    private static ExecutionScenario retriesOfOneStepFromSeveralThreads() {
        return new ExecutionScenario(List.of(),
                List.of(List.of(actor("charge", 1, 1, 0), actor("refund", 1, 1, 0, 0)),
                        List.of(actor("charge", 1, 1, 1), actor("status", 1, 1)),
                        List.of(actor("charge", 1, 1, 0), actor("charge", 1, 2, 0))),
                List.of(actor("status", 1, 1)), null);
    }

    /**
     * A refund refused (12: an unknown payment needs an amount) and then retried, corrected, from two threads: an
     * error leaves no record, so the retry is a first attempt, done once (docs/PROTOCOL.md section 5).
     */
    private static ExecutionScenario aRefusedAttemptLeavesNoRecord() {
        return new ExecutionScenario(List.of(actor("refund", 2, 1, 3, 0)),
                List.of(List.of(actor("refund", 2, 1, 3, 2)), List.of(actor("refund", 2, 1, 3, 2)), List.of(actor("charge", 2, 1, 0))),
                List.of(actor("status", 2, 1)), null);
    }

    /**
     * A reservation, then its capture (part of it) and its void from two threads at once, a third thread reading the step
     * and refunding what was captured: exactly one of the capture and the void wins (SPEC section 12), and the status and
     * the refund agree with that one.
     */
    private static ExecutionScenario aCaptureAndAVoidOfOneHoldRace() {
        return new ExecutionScenario(List.of(actor("reserve", 1, 1, 0)),
                List.of(List.of(actor("capture", 1, 1, 0, 1), actor("capture", 1, 1, 1, 1)),
                        List.of(actor("voidHold", 1, 1, 0), actor("reserve", 1, 1, 1)),
                        List.of(actor("status", 1, 1), actor("refund", 1, 1, 0, 0))),
                List.of(actor("status", 1, 1)), null);
    }

    /** One operation of a fixed scenario: the method of this class by name, with its parameters' indexes. */
    private static Actor actor(String operation, Object... parameters) {
        Method method = Arrays.stream(LincheckTest.class.getMethods()).filter(m -> m.getName().equals(operation)).findFirst().orElseThrow();
        return new Actor(method, List.of(parameters));
    }

    // ---- the sequential specification: the shared reference model -------------------------------------------

    /**
     * The same operations, played on {@link ReferenceModel} as request lines; its reply line turned into the
     * same canonical outcome. Two specs whose models have equal fingerprints answer every later operation
     * alike, which lets Lincheck merge their states.
     */
    public static class Spec {
        private final ReferenceModel model = new ReferenceModel(null);

        public String charge(int saga, int step, int charged) {
            return outcome(model.handle(line("ChargePayment", saga, step,
                    ", \"params\": {\"user_id\": \"u1\", \"amount\": " + CHARGED[charged] + "}")));
        }

        public String refund(int saga, int step, int payment, int refunded) {
            String paymentId = PAYMENT[payment] == null ? "" : "\"payment_id\": \"" + PAYMENT[payment] + "\"";
            String amount = REFUNDED[refunded] == null ? "" : "\"amount\": " + REFUNDED[refunded];
            String params = paymentId.isEmpty() || amount.isEmpty() ? paymentId + amount : paymentId + ", " + amount;
            return outcome(model.handle(line("RefundPayment", saga, step, params.isEmpty() ? "" : ", \"params\": {" + params + "}")));
        }

        public String status(int saga, int step) {
            return outcome(model.handle(line("PaymentStatus", saga, step, "")));
        }

        public String reserve(int saga, int step, int charged) {
            return outcome(model.handle(line("ReservePayment", saga, step,
                    ", \"params\": {\"user_id\": \"u1\", \"amount\": " + CHARGED[charged] + "}")));
        }

        public String capture(int saga, int step, int payment, int captured) {
            String paymentId = PAYMENT[payment] == null ? "" : "\"payment_id\": \"" + PAYMENT[payment] + "\"";
            String amount = REFUNDED[captured] == null ? "" : "\"amount\": " + REFUNDED[captured];
            String params = paymentId.isEmpty() || amount.isEmpty() ? paymentId + amount : paymentId + ", " + amount;
            return outcome(model.handle(line("CapturePayment", saga, step, params.isEmpty() ? "" : ", \"params\": {" + params + "}")));
        }

        public String voidHold(int saga, int step, int payment) {
            String paymentId = PAYMENT[payment] == null ? "" : ", \"params\": {\"payment_id\": \"" + PAYMENT[payment] + "\"}";
            return outcome(model.handle(line("VoidPayment", saga, step, paymentId)));
        }

        private static String line(String type, int saga, int step, String rest) {
            return "{\"src\": \"c1\", \"dest\": \"payment\", \"body\": {\"type\": \"" + type + "\", \"saga_id\": \"" + saga(saga)
                    + "\", \"step\": " + step + rest + "}}";
        }

        /** A reply line of the model as the canonical outcome the handler's results give. */
        private static String outcome(String reply) {
            JsonNode body = read(reply).get("body");
            JsonNode result = body.path("result");
            return switch (body.get("type").textValue()) {
                case "ChargePayment_ok" -> Outcome.charged(result.get("payment_id").textValue(), number(result.get("charged")), body.has("note"));
                case "RefundPayment_ok" -> Outcome.refunded(result.has("refund_id") ? result.get("refund_id").textValue() : null,
                        number(result.get("refunded")), body.has("note"));
                case "ReservePayment_ok" -> Outcome.reserved(result.get("payment_id").textValue(), number(result.get("reserved")), body.has("note"));
                case "CapturePayment_ok" -> Outcome.captured(result.get("payment_id").textValue(), number(result.get("captured")),
                        number(result.get("released")), body.has("note"));
                case "VoidPayment_ok" -> Outcome.voided(result.has("payment_id") ? result.get("payment_id").textValue() : null,
                        number(result.get("released")), body.has("note"));
                case "PaymentStatus_ok" -> {
                    JsonNode payment = body.get("payment");
                    JsonNode refund = body.get("refund");
                    JsonNode capture = body.get("capture");
                    JsonNode voided = body.get("void");
                    yield Outcome.status(body.get("status").textValue(), payment == null ? ""
                            : payment.has("charged") ? Outcome.payment(payment.get("payment_id").textValue(), number(payment.get("charged")), number(payment.get("refunded")))
                            : Outcome.reservation(payment.get("payment_id").textValue(), number(payment.get("reserved")), number(payment.get("captured")),
                                    number(payment.get("refunded"))))
                            + (refund == null ? "" : Outcome.refund(refund.has("refund_id") ? refund.get("refund_id").textValue() : null,
                                    number(refund.get("refunded"))))
                            + (capture == null ? "" : " capture " + Outcome.captured(capture.get("payment_id").textValue(), number(capture.get("captured")),
                                    number(capture.get("released")), false))
                            + (voided == null ? "" : " void " + Outcome.voided(voided.has("payment_id") ? voided.get("payment_id").textValue() : null,
                                    number(voided.get("released")), false));
                }
                case "error" -> Outcome.error(body.get("code").intValue(), body.get("reason").textValue());
                default -> throw new IllegalStateException("the model answered " + reply);
            };
        }

        @Override
        public boolean equals(Object other) {
            return other instanceof Spec spec && spec.model.fingerprint().equals(model.fingerprint());
        }

        @Override
        public int hashCode() {
            return model.fingerprint().hashCode();
        }
    }

    /** Reply lines with their amounts as written: never a double, never stripped of zeros (the domains have no exponents). */
    private static final ObjectMapper JSON = JsonMapper.builder()
            .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .configure(JsonNodeFeature.STRIP_TRAILING_BIGDECIMAL_ZEROES, false)
            .build();

    private static ObjectNode read(String line) {
        try {
            return (ObjectNode) JSON.readTree(line);
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static String number(JsonNode number) {
        return number.isBigDecimal() ? number.decimalValue().toPlainString() : number.asText();
    }

    /** The canonical outcomes, one function per kind, used by both sides so that equals() compares like with like. */
    static final class Outcome {
        static String charged(String paymentId, String amount, boolean replayed) {
            return "ok " + paymentId + " " + amount + (replayed ? " cached" : "");
        }

        /**
         * A refund by its id and amount. (The node once numbered a refund after it had drawn on the payment, outside
         * the payment's lock: two refunds of one payment could take their ids in the other order than their draws,
         * "r1 6, r2 4" of a 10 charge when r1 took all that was left; docs/TESTING.md has Lincheck's interleaving.)
         */
        static String refunded(String refundId, String amount, boolean replayed) {
            return "ok " + (refundId == null ? "no-refund" : refundId) + " " + amount + (replayed ? " already" : "");
        }

        static String refund(String refundId, String amount) {
            return " refund " + (refundId == null ? "none" : refundId) + " " + amount;
        }

        static String error(int code, String reason) {
            return "error " + code + " " + reason;
        }

        static String payment(String paymentId, String charged, String refunded) {
            return " payment " + paymentId + " " + charged + " refunded " + refunded;
        }

        static String reserved(String paymentId, String amount, boolean replayed) {
            return "ok reserved " + paymentId + " " + amount + (replayed ? " cached" : "");
        }

        static String captured(String paymentId, String captured, String released, boolean replayed) {
            return "ok captured " + paymentId + " " + captured + " released " + released + (replayed ? " already" : "");
        }

        static String voided(String paymentId, String released, boolean replayed) {
            return "ok voided " + (paymentId == null ? "no-hold" : paymentId) + " released " + released + (replayed ? " already" : "");
        }

        static String reservation(String paymentId, String reserved, String captured, String refunded) {
            return " payment " + paymentId + " reserved " + reserved + " captured " + captured + " refunded " + refunded;
        }

        static String status(String status, String payment) {
            return status + payment;
        }

        private Outcome() {
        }
    }
}
