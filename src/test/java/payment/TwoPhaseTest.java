package payment;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import payment.FundedPaymentHandler.BalanceReads;
import payment.PaymentNode.Amount;
import payment.PaymentNode.CaptureRequest;
import payment.PaymentNode.PaymentHandler;
import payment.PaymentNode.ReserveRequest;
import payment.PaymentNode.RpcError;
import payment.PaymentNode.VoidRequest;
import payment.Wire.ReplyBody;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * SPEC section 12, two-phase payments (ReservePayment, CapturePayment, VoidPayment), one rule a test, each
 * asserting the node's exact reply lines. Expiry is decided on a clock the test moves ({@link Clocked}): the
 * table's {@code decideBy} seam, so that no test waits for a deadline or races one; one test runs the real
 * {@code --reserve-ttl} on the wall clock.
 */
class TwoPhaseTest {
    @TempDir
    Path dir;

    /** Where the test clock starts: the wall clock, so that BalanceRead (which reads the wall clock) agrees until a test moves it. */
    private static final long T0 = System.currentTimeMillis();

    // ---- requests (bodies without msg_id: the node double numbers them) ---------------------------------------

    private static String reserve(String saga, long step, String amount) {
        return reserve(saga, step, "u1", amount, null);
    }

    /** A ReservePayment; {@code expiresInMs}: the param's JSON text, null to leave it out. */
    private static String reserve(String saga, long step, String user, String amount, String expiresInMs) {
        return "{\"type\":\"ReservePayment\",\"saga_id\":\"" + saga + "\",\"step\":" + step + ",\"params\":{\"user_id\":\"" + user
                + "\",\"amount\":" + amount + (expiresInMs == null ? "" : ",\"expires_in_ms\":" + expiresInMs) + "}}";
    }

    private static String charge(String saga, long step, String amount) {
        return "{\"type\":\"ChargePayment\",\"saga_id\":\"" + saga + "\",\"step\":" + step + ",\"params\":{\"user_id\":\"u1\",\"amount\":" + amount + "}}";
    }

    /** A CapturePayment; {@code paymentId} and {@code amount} left out when null. */
    private static String capture(String saga, long step, String paymentId, String amount) {
        return "{\"type\":\"CapturePayment\",\"saga_id\":\"" + saga + "\",\"step\":" + step + params(paymentId, amount) + "}";
    }

    private static String voidHold(String saga, long step, String paymentId) {
        return "{\"type\":\"VoidPayment\",\"saga_id\":\"" + saga + "\",\"step\":" + step + ",\"compensating\":true" + params(paymentId, null) + "}";
    }

    private static String refund(String saga, long step, String paymentId, String amount) {
        return "{\"type\":\"RefundPayment\",\"saga_id\":\"" + saga + "\",\"step\":" + step + params(paymentId, amount) + "}";
    }

    private static String status(String saga, long step) {
        return "{\"type\":\"PaymentStatus\",\"saga_id\":\"" + saga + "\",\"step\":" + step + "}";
    }

    private static String balanceRead(String user) {
        return "{\"type\":\"BalanceRead\",\"user_id\":\"" + user + "\"}";
    }

    private static String params(String paymentId, String amount) {
        List<String> fields = new ArrayList<>();
        if (paymentId != null) {
            fields.add("\"payment_id\":\"" + paymentId + "\"");
        }
        if (amount != null) {
            fields.add("\"amount\":" + amount);
        }
        return fields.isEmpty() ? "" : ",\"params\":{" + String.join(",", fields) + "}";
    }

    // ---- replies, as the node must print them -------------------------------------------------------------

    private static ReplyBody reserveOk(String saga, long step, String paymentId, String reserved) {
        return new ReplyBody(head("ReservePayment_ok", saga, step) + ", \"result\": {\"payment_id\": \"" + paymentId + "\", \"reserved\": " + reserved + "}");
    }

    private static ReplyBody captureOk(String saga, long step, String paymentId, String captured, String released) {
        return new ReplyBody(head("CapturePayment_ok", saga, step) + ", \"result\": " + captureResult(paymentId, captured, released));
    }

    /** {@code paymentId} null: a void that found no hold. */
    private static ReplyBody voidOk(String saga, long step, String paymentId, String released) {
        return new ReplyBody(head("VoidPayment_ok", saga, step) + ", \"result\": " + voidResult(paymentId, released));
    }

    private static ReplyBody chargeOk(String saga, long step, String paymentId, String charged) {
        return Wire.chargeOk(saga, step, paymentId, charged);
    }

    private static ReplyBody refundOk(String saga, long step, String refundId, String refunded) {
        return Wire.refundOk(saga, step, refundId, refunded);
    }

    /** A reply as its retry gets it: the note after the result. */
    private static ReplyBody noted(ReplyBody reply, String note) {
        return new ReplyBody(reply.fields() + ", \"note\": \"" + note + "\"");
    }

    private static String head(String type, String saga, long step) {
        return "\"type\": \"" + type + "\", \"saga_id\": \"" + saga + "\", \"step\": " + step;
    }

    private static String captureResult(String paymentId, String captured, String released) {
        return "{\"payment_id\": \"" + paymentId + "\", \"captured\": " + captured + ", \"released\": " + released + "}";
    }

    private static String voidResult(String paymentId, String released) {
        return "{" + (paymentId == null ? "" : "\"payment_id\": \"" + paymentId + "\", ") + "\"released\": " + released + "}";
    }

    /** PaymentStatus_ok of a reserved step: the payment {payment_id, reserved, captured, refunded}, then the keys' results (null: none). */
    private static ReplyBody reservedStatus(String saga, long step, String status, String paymentId, String reserved, String captured,
                                            String refunded, String refund, String capture, String voided) {
        return new ReplyBody(head("PaymentStatus_ok", saga, step) + ", \"status\": \"" + status + "\""
                + ", \"payment\": {\"payment_id\": \"" + paymentId + "\", \"reserved\": " + reserved + ", \"captured\": " + captured
                + ", \"refunded\": " + refunded + "}"
                + (refund == null ? "" : ", \"refund\": " + refund)
                + (capture == null ? "" : ", \"capture\": " + capture)
                + (voided == null ? "" : ", \"void\": " + voided));
    }

    /** PaymentStatus_ok of a step with no payment (none, declined, compensated), and its void result (null: none). */
    private static ReplyBody paymentlessStatus(String saga, long step, String status, String voided) {
        return new ReplyBody(head("PaymentStatus_ok", saga, step) + ", \"status\": \"" + status + "\""
                + (voided == null ? "" : ", \"void\": " + voided));
    }

    private static ReplyBody balanceOk(String user, String balance, String charged, String refunded, String held) {
        return new ReplyBody("\"type\": \"BalanceRead_ok\", \"user_id\": \"" + user + "\", \"balance\": " + balance + ", \"charged\": "
                + charged + ", \"refunded\": " + refunded + ", \"held\": " + held);
    }

    private static ReplyBody error(int code, String reason, String text) {
        return Wire.error(code, reason, text);
    }

    private static ReplyBody otherType(String key, String firstType) {
        return new ReplyBody("\"type\": \"error\", \"code\": 22, \"text\": \"idempotency key " + key + " was first used by " + firstType
                + "\", \"reason\": \"key_reused\", \"differs\": [\"type\"]");
    }

    private static ReplyBody noReservation(String key, String why) {
        return error(14, "no_reservation", "step " + key + " has no reservation: " + why);
    }

    private static ReplyBody stepCompensated(String key, String never) {
        return error(14, "step_compensated", "step " + key + " was already compensated: its compensation came first, so it is never " + never);
    }

    private static ReplyBody voided(String paymentId, String key) {
        return error(14, "reservation_voided", "the reservation " + paymentId + " of step " + key + " was voided: nothing was captured");
    }

    private static ReplyBody expired(String paymentId, String key) {
        return error(14, "reservation_expired", "the reservation " + paymentId + " of step " + key
                + " expired: nothing was captured, its hold is released");
    }

    private static ReplyBody alreadyCaptured(String paymentId, String key) {
        return error(14, "already_captured", "the reservation " + paymentId + " of step " + key + " is captured: compensate it with RefundPayment");
    }

    private static ReplyBody notCaptured(String paymentId) {
        return error(22, "payment_not_captured", "payment " + paymentId + " is a reservation not captured: void it instead");
    }

    private static ReplyBody declined(String text) {
        return error(14, "insufficient_funds", "declined: insufficient funds: " + text);
    }

    // ---- the node ----------------------------------------------------------------------------------------

    /**
     * The card's node on a table whose clock the test moves; each request is served on its own, at the clock's
     * time, and the test gets its reply lines. Requests are numbered 1, 2, ... and the node's msg_ids count its
     * replies, so each expectation is a whole reply line.
     */
    static final class Clocked {
        final AtomicLong clock = new AtomicLong(T0);
        final PaymentHandler table;
        private final PaymentNode node;
        private final ByteArrayOutputStream stdout = new ByteArrayOutputStream();
        private final Node.CapturedLog log = Node.CapturedLog.of(false);
        private long requestId;
        private long replyId;

        /** A node with no balances. */
        Clocked() {
            this(null, null);
        }

        /** {@code balance}: --balance (null: none); {@code journal}: --journal (null: none). */
        Clocked(String balance, Path journal) {
            Balances balances = balance == null ? null : new Balances(new BigDecimal(balance));
            try {
                table = journal != null ? FileJournal.tableFromJournal(journal, log.log(), balances, 0)
                        : CommandLine.table(log.log(), PaymentNode.Journal.NONE, balances, 0);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            table.decideBy(clock::get);
            // Each request is a serve() of its own, which closes its service at the end of its input: the journal stays
            // open across them here, and the test closes it (a restart) with close().
            node = new PaymentNode(stdout, log.log(), replies -> new ServiceAround(
                    new BalanceReads(new PaymentNode.LocalService(table, replies, log.log()), balances, table::now)) {
                @Override
                public void close() {
                }
            });
        }

        /** A node made from command-line options, as main makes it (the wall clock). */
        Clocked(String... options) {
            table = null;
            try {
                node = CommandLine.fromOptions(CommandLine.Options.parse(options), stdout, log.log());
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        Clocked at(long millisAfterT0) {
            clock.set(T0 + millisAfterT0);
            return this;
        }

        /** Sends one request body (numbered here) and returns the reply lines it got, each with its newline. */
        String send(String body) {
            requestId++;
            String line = Wire.request("{\"msg_id\":" + requestId + "," + body.substring(1));
            int before = stdout.size();
            int status = node.serve(new ByteArrayInputStream(line.getBytes(StandardCharsets.UTF_8)));
            assertEquals(0, status, log.text());
            return stdout.toString(StandardCharsets.UTF_8).substring(before);
        }

        /** Sends one request and asserts its one whole reply line. */
        Clocked expect(String body, ReplyBody reply) {
            String got = send(body);
            assertEquals(reply.to(requestId, replyId++), got, "the reply to " + body);
            return this;
        }

        /** Sends one request that gets no reply (a dropped one), and counts nothing. */
        void expectNoReply(String body) {
            assertEquals("", send(body), "a dropped reply: " + body);
        }

        String stderr() {
            return log.text();
        }

        void close() throws IOException {
            table.journal().close();
        }
    }

    // ---- ReservePayment ------------------------------------------------------------------------------------

    /** A reservation is a payment: its id comes from the charges' sequence; a retry (amounts compared by value) gets it again, noted. */
    @Test
    void aReservationTakesTheNextPaymentIdAndItsRetryGetsTheCachedResult() {
        new Clocked()
                .expect(charge("s", 1, "10"), chargeOk("s", 1, "p1", "10"))
                .expect(reserve("b1", 1, "50.00"), reserveOk("b1", 1, "p2", "50.00"))
                .expect(reserve("b1", 1, "50"), noted(reserveOk("b1", 1, "p2", "50.00"), "cached_result"))
                .expect(charge("s", 2, "10"), chargeOk("s", 2, "p3", "10"))        // one sequence: no id taken twice, none skipped
                .expect(reserve("b1", 2, "5"), reserveOk("b1", 2, "p4", "5"));
    }

    /** A step is charged or reserved: the other kind on its key is 22 key_reused, differs ["type"], both ways, the stored result untouched. */
    @Test
    void theOtherKindOnAStepsKeyIsAKeyReuseOfType() {
        new Clocked()
                .expect(charge("b1", 1, "50"), chargeOk("b1", 1, "p1", "50"))
                .expect(reserve("b1", 1, "50"), otherType("b1:step1", "ChargePayment"))
                .expect(charge("b1", 1, "50"), noted(chargeOk("b1", 1, "p1", "50"), "cached_result"))
                .expect(reserve("b2", 1, "50"), reserveOk("b2", 1, "p2", "50"))
                .expect(charge("b2", 1, "50"), otherType("b2:step1", "ReservePayment"))
                .expect(reserve("b2", 1, "50"), noted(reserveOk("b2", 1, "p2", "50"), "cached_result"))
                .expect(capture("b2", 1, null, null), captureOk("b2", 1, "p2", "50", "0"));   // still a live reservation
    }

    /** A decline is the step's result, of its kind: the other kind on a declined key is a key reuse too; a retry gets the identical decline. */
    @Test
    void aDeclinedStepKeepsItsKind() {
        new Clocked("10", null)
                .expect(charge("b1", 1, "50"), declined("u1 has 10 left, the charge is 50 (b1:step1)"))
                .expect(reserve("b1", 1, "50"), otherType("b1:step1", "ChargePayment"))
                .expect(reserve("b2", 1, "u1", "50", "1000"), declined("u1 has 10 left, the reservation is 50 (b2:step1)"))
                .expect(reserve("b2", 1, "u1", "50", "1000"), declined("u1 has 10 left, the reservation is 50 (b2:step1)"))
                .expect(reserve("b2", 1, "u1", "50", null), keyReused("b2:step1", "expires_in_ms"))   // a decline's params are kept too
                .expect(charge("b2", 1, "50"), otherType("b2:step1", "ReservePayment"))
                .expect(status("b2", 1), paymentlessStatus("b2", 1, "declined", null));
    }

    /** A declined reservation has no payment: a capture of it is 14 no_reservation, a void of it is ok, releasing 0. */
    @Test
    void aDeclinedReservationCannotBeCapturedAndItsVoidReleasesNothing() {
        new Clocked("10", null)
                .expect(reserve("b1", 1, "50"), declined("u1 has 10 left, the reservation is 50 (b1:step1)"))
                .expect(capture("b1", 1, null, null), noReservation("b1:step1", "its reservation was declined"))
                .expect(voidHold("b1", 1, null), voidOk("b1", 1, null, "0"))
                .expect(voidHold("b1", 1, null), noted(voidOk("b1", 1, null, "0"), "already_voided"))
                .expect(status("b1", 1), paymentlessStatus("b1", 1, "declined", voidResult(null, "0")))
                .expect(balanceRead("u1"), balanceOk("u1", "10", "0", "0", "0"));
    }

    /** expires_in_ms is one of the params a retry must repeat: given or not, and its value. */
    @Test
    void expiresInMsIsAParamARetryMustRepeat() {
        new Clocked()
                .expect(reserve("b1", 1, "u1", "50", "1000"), reserveOk("b1", 1, "p1", "50"))
                .expect(reserve("b1", 1, "u1", "50", null), keyReused("b1:step1", "expires_in_ms"))
                .expect(reserve("b1", 1, "u1", "50", "2000"), keyReused("b1:step1", "expires_in_ms"))
                .expect(reserve("b1", 1, "u1", "60", "2000"), keyReused("b1:step1", "amount", "expires_in_ms"))
                .expect(reserve("b1", 1, "u2", "50", "1000"), keyReused("b1:step1", "user_id"))
                .expect(reserve("b1", 1, "u1", "50.0", "1000"), noted(reserveOk("b1", 1, "p1", "50"), "cached_result"))
                .expect(reserve("b2", 1, "u1", "5", null), reserveOk("b2", 1, "p2", "5"))
                .expect(reserve("b2", 1, "u1", "5", "1000"), keyReused("b2:step1", "expires_in_ms"));
    }

    private static ReplyBody keyReused(String key, String... differs) {
        return Wire.keyReused(key, differs);
    }

    /** expires_in_ms must be a positive integer: anything else is 12 and leaves no record (the next attempt is a first). */
    @Test
    void aMalformedExpiresInMsIsError12AndLeavesNoRecord() {
        ReplyBody malformed = error(12, "malformed_request", "params.expires_in_ms must be a positive integer (milliseconds)");
        new Clocked()
                .expect(reserve("b1", 1, "u1", "5", "0"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "-1"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "\"5\""), malformed)
                .expect(reserve("b1", 1, "u1", "5", "1.5"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "1e3"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "99999999999999999999"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "true"), malformed)
                .expect(reserve("b1", 1, "u1", "5", "1000"), reserveOk("b1", 1, "p1", "5"));
    }

    /** A capture's and a void's params are checked as a refund's: a bad one is 12, nothing recorded. */
    @Test
    void aMalformedCaptureOrVoidIsError12AndLeavesNoRecord() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, "0"), error(12, "malformed_request", "params.amount must be greater than 0, got 0"))
                .expect(capture("b1", 1, null, "\"5\""), error(12, "malformed_request", "params.amount must be a number"))
                .expect("{\"type\":\"VoidPayment\",\"saga_id\":\"b1\",\"step\":1,\"params\":{\"payment_id\":7}}",
                        error(12, "malformed_request", "params.payment_id must be a non-empty string"))
                .expect("{\"type\":\"CapturePayment\",\"saga_id\":\"b1\",\"step\":-1}",
                        error(12, "malformed_request", "step must be an integer from 0 to 9223372036854775807"))
                .expect(capture("b1", 1, null, "5"), captureOk("b1", 1, "p1", "5", "45"));
    }

    // ---- CapturePayment ------------------------------------------------------------------------------------

    /** A capture of less than the hold takes that much and releases the rest; its retry is the identical result, already_captured. */
    @Test
    void aPartialCaptureReleasesTheRestAndItsRetryIsAlreadyCaptured() {
        new Clocked()
                .expect(reserve("b1", 1, "50.00"), reserveOk("b1", 1, "p1", "50.00"))
                .expect(capture("b1", 1, "p1", "30.00"), captureOk("b1", 1, "p1", "30.00", "20.00"))
                .expect(capture("b1", 1, "p1", "30"), noted(captureOk("b1", 1, "p1", "30.00", "20.00"), "already_captured"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "captured", "p1", "50.00", "30.00", "0", null,
                        captureResult("p1", "30.00", "20.00"), null));
    }

    /** One capture per reservation: the capture key is the step's, so a second capture with another amount is a key reuse, never a second take. */
    @Test
    void oneCapturePerReservation() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, "10"), captureOk("b1", 1, "p1", "10", "40"))
                .expect(capture("b1", 1, null, "20"), keyReused("b1:step1:capture", "amount"))
                .expect(capture("b1", 1, null, null), keyReused("b1:step1:capture", "amount"))
                .expect(capture("b1", 1, "p1", "10"), keyReused("b1:step1:capture", "payment_id"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "captured", "p1", "50", "10", "0", null, captureResult("p1", "10", "40"), null));
    }

    /** amount defaults to all that is reserved: nothing released. */
    @Test
    void aCaptureWithoutAmountTakesAllThatIsReserved() {
        new Clocked()
                .expect(reserve("b1", 1, "99.990"), reserveOk("b1", 1, "p1", "99.990"))
                .expect(capture("b1", 1, null, null), captureOk("b1", 1, "p1", "99.990", "0"))
                .expect(capture("b1", 1, null, null), noted(captureOk("b1", 1, "p1", "99.990", "0"), "already_captured"));
    }

    /** More than is reserved is 22 capture_exceeds_reservation, and leaves no record: a corrected capture is a first attempt. */
    @Test
    void aCaptureAboveTheReservationIsRefusedAndLeavesNoRecord() {
        new Clocked()
                .expect(reserve("b1", 1, "50.00"), reserveOk("b1", 1, "p1", "50.00"))
                .expect(capture("b1", 1, null, "50.01"), error(22, "capture_exceeds_reservation",
                        "capture of 50.01 is more than reservation p1 holds (50.00)"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "reserved", "p1", "50.00", "0", "0", null, null, null))
                .expect(capture("b1", 1, null, "50"), captureOk("b1", 1, "p1", "50", "0"));
    }

    /** A payment_id given to a capture must name the step's reservation: else 22 payment_not_of_step, nothing recorded. */
    @Test
    void aCaptureNamingAnotherPaymentIsPaymentNotOfStep() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(reserve("b1", 2, "20"), reserveOk("b1", 2, "p2", "20"))
                .expect(capture("b1", 1, "p2", null), error(22, "payment_not_of_step", "payment_id p2 is not the payment of step b1:step1 (p1)"))
                .expect(capture("b1", 1, "p1", null), captureOk("b1", 1, "p1", "50", "0"))
                .expect(voidHold("b1", 2, "p1"), error(22, "payment_not_of_step", "payment_id p1 is not the payment of step b1:step2 (p2)"))
                .expect(voidHold("b1", 2, "p2"), voidOk("b1", 2, "p2", "20"));
    }

    /** A capture that overtook its reservation: 14 no_reservation, nothing recorded, so the same capture sent again after the reservation works. */
    @Test
    void aCaptureBeforeItsReservationIsNoReservationAndMaySendAgain() {
        new Clocked()
                .expect(capture("b1", 1, null, "30"), noReservation("b1:step1", "none yet (a capture that came first may be sent again)"))
                .expect(status("b1", 1), paymentlessStatus("b1", 1, "none", null))
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, "30"), captureOk("b1", 1, "p1", "30", "20"));
    }

    /** A charged step has no reservation: its capture and its void are 14 no_reservation (a charge is compensated by a refund). */
    @Test
    void aChargedStepCannotBeCapturedOrVoided() {
        new Clocked()
                .expect(charge("b1", 1, "50"), chargeOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, null), noReservation("b1:step1", "it was charged"))
                .expect(voidHold("b1", 1, null), noReservation("b1:step1", "it was charged: compensate it with RefundPayment"))
                .expect(refund("b1", 1, null, null), refundOk("b1", 1, "r1", "50"));
    }

    /** A voided reservation cannot be captured: 14 reservation_voided, every time (no record), nothing captured. */
    @Test
    void aCaptureOfAVoidedReservationIsReservationVoided() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(voidHold("b1", 1, null), voidOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, null), voided("p1", "b1:step1"))
                .expect(capture("b1", 1, null, "10"), voided("p1", "b1:step1"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "voided", "p1", "50", "0", "0", null, null, voidResult("p1", "50")));
    }

    // ---- VoidPayment ---------------------------------------------------------------------------------------

    /** A void releases the hold; its retry is the identical result, already_voided; a retry of the reservation gets its original result, not a new hold. */
    @Test
    void aVoidReleasesTheHoldAndItsRetryIsAlreadyVoided() {
        new Clocked("100", null)
                .expect(reserve("b1", 1, "60"), reserveOk("b1", 1, "p1", "60"))
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "60"))
                .expect(voidHold("b1", 1, "p1"), voidOk("b1", 1, "p1", "60"))
                .expect(voidHold("b1", 1, "p1"), noted(voidOk("b1", 1, "p1", "60"), "already_voided"))
                .expect(voidHold("b1", 1, null), keyReused("b1:step1:void", "payment_id"))   // a retry repeats its params, as a refund's
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "0"))
                .expect(reserve("b1", 1, "60"), noted(reserveOk("b1", 1, "p1", "60"), "cached_result"))
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "0"))   // the retry held nothing
                .expect(status("b1", 1), reservedStatus("b1", 1, "voided", "p1", "60", "0", "0", null, null, voidResult("p1", "60")));
    }

    /**
     * A void before its reservation is a null compensation that closes the step: ok, released 0, and a later
     * ReservePayment, ChargePayment or CapturePayment of that step is 14 step_compensated; the status is compensated.
     */
    @Test
    void aVoidBeforeItsReservationClosesTheStep() {
        new Clocked("100", null)
                .expect(voidHold("b1", 1, null), voidOk("b1", 1, null, "0"))
                .expect(voidHold("b1", 1, null), noted(voidOk("b1", 1, null, "0"), "already_voided"))
                .expect(reserve("b1", 1, "50"), stepCompensated("b1:step1", "reserved"))
                .expect(reserve("b1", 1, "50"), stepCompensated("b1:step1", "reserved"))
                .expect(charge("b1", 1, "50"), stepCompensated("b1:step1", "charged"))   // its text speaks of no refund: none came
                .expect(capture("b1", 1, null, null), stepCompensated("b1:step1", "reserved or captured"))
                .expect(status("b1", 1), paymentlessStatus("b1", 1, "compensated", voidResult(null, "0")))
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "0"))
                .expect(reserve("b1", 2, "50"), reserveOk("b1", 2, "p1", "50"));   // no payment id was taken by the refusals
    }

    /** A refund that came first closes the step for a reservation too (compensation and action commute). */
    @Test
    void aRefundBeforeItsReservationClosesTheStepToo() {
        new Clocked()
                .expect(refund("b1", 1, null, null), refundOk("b1", 1, null, "0"))
                .expect(reserve("b1", 1, "50"), stepCompensated("b1:step1", "reserved"))
                .expect(voidHold("b1", 1, null), voidOk("b1", 1, null, "0"));
    }

    /** A captured reservation cannot be voided: 14 already_captured (compensate with RefundPayment), the capture stands. */
    @Test
    void aVoidOfACapturedReservationIsAlreadyCaptured() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(capture("b1", 1, null, "40"), captureOk("b1", 1, "p1", "40", "10"))
                .expect(voidHold("b1", 1, null), alreadyCaptured("p1", "b1:step1"))
                .expect(voidHold("b1", 1, null), alreadyCaptured("p1", "b1:step1"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "captured", "p1", "50", "40", "0", null, captureResult("p1", "40", "10"), null));
    }

    // ---- Expiry --------------------------------------------------------------------------------------------

    /**
     * expires_in_ms from the first attempt's arrival: live until its last millisecond, then expired: a capture is 14
     * reservation_expired (again and again), a void is ok with {payment_id, released: 0}, the status stays expired,
     * and a retry of the reservation gets its original result, never a new hold.
     */
    @Test
    void aReservationExpiresExpiresInMsAfterItsFirstAttempt() {
        Clocked node = new Clocked();
        node.at(0).expect(reserve("b1", 1, "u1", "50", "1000"), reserveOk("b1", 1, "p1", "50"))
                .expect(reserve("b2", 1, "u1", "20", "1000"), reserveOk("b2", 1, "p2", "20"));
        node.at(999).expect(reserve("b1", 1, "u1", "50", "1000"), noted(reserveOk("b1", 1, "p1", "50"), "cached_result"))   // a retry moves no deadline
                .expect(status("b1", 1), reservedStatus("b1", 1, "reserved", "p1", "50", "0", "0", null, null, null))
                .expect(capture("b2", 1, null, null), captureOk("b2", 1, "p2", "20", "0"));                              // the last millisecond
        node.at(1000).expect(status("b1", 1), reservedStatus("b1", 1, "expired", "p1", "50", "0", "0", null, null, null))
                .expect(capture("b1", 1, null, null), expired("p1", "b1:step1"))
                .expect(capture("b1", 1, null, "10"), expired("p1", "b1:step1"))
                .expect(voidHold("b1", 1, null), voidOk("b1", 1, "p1", "0"))
                .expect(voidHold("b1", 1, null), noted(voidOk("b1", 1, "p1", "0"), "already_voided"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "expired", "p1", "50", "0", "0", null, null, voidResult("p1", "0")))
                .expect(capture("b1", 1, null, null), expired("p1", "b1:step1"))
                .expect(reserve("b1", 1, "u1", "50", "1000"), noted(reserveOk("b1", 1, "p1", "50"), "cached_result"))
                .expect(status("b2", 1), reservedStatus("b2", 1, "captured", "p2", "20", "20", "0", null, captureResult("p2", "20", "0"), null));
    }

    /** A void of an expired reservation that nobody touched since its deadline: ok, released 0 (the expiry released it). */
    @Test
    void aVoidOfAnExpiredReservationReleasesNothing() {
        Clocked node = new Clocked();
        node.at(0).expect(reserve("b1", 1, "u1", "50", "10"), reserveOk("b1", 1, "p1", "50"));
        node.at(10).expect(voidHold("b1", 1, "p1"), voidOk("b1", 1, "p1", "0"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "expired", "p1", "50", "0", "0", null, null, voidResult("p1", "0")))
                .expect(capture("b1", 1, null, null), expired("p1", "b1:step1"));
    }

    /** --reserve-ttl is the deadline of a reservation that gives no expires_in_ms; one that gives it keeps its own. Without either: never. */
    @Test
    void reserveTtlIsTheDefaultDeadline() {
        Clocked node = new Clocked();
        node.at(0).expect(reserve("never", 1, "5"), reserveOk("never", 1, "p1", "5"));
        node.table.reserveTtl(500);
        node.expect(reserve("ttl", 1, "5"), reserveOk("ttl", 1, "p2", "5"))
                .expect(reserve("own", 1, "u1", "5", "2000"), reserveOk("own", 1, "p3", "5"));
        node.at(499).expect(status("ttl", 1), reservedStatus("ttl", 1, "reserved", "p2", "5", "0", "0", null, null, null));
        node.at(500).expect(capture("ttl", 1, null, null), expired("p2", "ttl:step1"))
                .expect(capture("own", 1, null, null), captureOk("own", 1, "p3", "5", "0"));
        node.at(365L * 24 * 3600 * 1000).expect(capture("never", 1, null, null), captureOk("never", 1, "p1", "5", "0"));
    }

    /** The real option, on the wall clock: --reserve-ttl 100 expires a reservation 100 ms after it came; its hold no longer counts. */
    @Test
    void theReserveTtlOptionExpiresOnTheWallClock() throws InterruptedException {
        Clocked node = new Clocked("--reserve-ttl", "100", "--balance", "100");
        node.expect(reserve("b1", 1, "80"), reserveOk("b1", 1, "p1", "80"));
        Thread.sleep(200);
        node.expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "0"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "expired", "p1", "80", "0", "0", null, null, null))
                .expect(capture("b1", 1, null, null), expired("p1", "b1:step1"))
                .expect(charge("b2", 1, "100"), chargeOk("b2", 1, "p2", "100"));
    }

    // ---- RefundPayment of a reservation --------------------------------------------------------------------

    /** A captured reservation is refunded like a charge, its ledger being what was captured (not what was reserved). */
    @Test
    void aRefundOfACapturedReservationDrawsOnWhatWasCaptured() {
        new Clocked()
                .expect(reserve("b1", 1, "50.00"), reserveOk("b1", 1, "p1", "50.00"))
                .expect(capture("b1", 1, null, "30.00"), captureOk("b1", 1, "p1", "30.00", "20.00"))
                .expect(refund("b1", 1, null, "30.01"), error(22, "refund_exceeds_payment", "refund of 30.01 is more than is left of payment p1 (30.00 of 30.00)"))
                .expect(refund("b1", 2, "p1", "10"), refundOk("b1", 2, "r1", "10"))          // named, from another step of the saga
                .expect(refund("b1", 1, null, null), refundOk("b1", 1, "r2", "20.00"))       // what is left of the capture
                .expect(refund("b1", 3, "p1", null), error(22, "payment_fully_refunded", "payment p1 is already fully refunded"))
                .expect(status("b1", 1), reservedStatus("b1", 1, "captured", "p1", "50.00", "30.00", "30.00",
                        "{\"refund_id\": \"r2\", \"refunded\": 20.00}", captureResult("p1", "30.00", "20.00"), null));
    }

    /** A reservation not captured (live, voided or expired) is not refunded: 22 payment_not_captured, named or by the step's own key; no record. */
    @Test
    void aRefundOfAReservationNotCapturedIsPaymentNotCaptured() {
        Clocked node = new Clocked();
        node.at(0).expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(refund("b1", 1, null, null), notCaptured("p1"))
                .expect(refund("b1", 1, "p1", "5"), notCaptured("p1"))
                .expect(refund("b1", 2, "p1", null), notCaptured("p1"))
                .expect(reserve("b2", 1, "50"), reserveOk("b2", 1, "p2", "50"))
                .expect(voidHold("b2", 1, null), voidOk("b2", 1, "p2", "50"))
                .expect(refund("b2", 1, null, null), notCaptured("p2"))
                .expect(reserve("b3", 1, "u1", "50", "10"), reserveOk("b3", 1, "p3", "50"));
        node.at(10).expect(refund("b3", 1, null, null), notCaptured("p3"))
                .expect(capture("b1", 1, null, "20"), captureOk("b1", 1, "p1", "20", "30"))
                .expect(refund("b1", 1, null, null), refundOk("b1", 1, "r1", "20"));   // the refused refunds left no record, took no id
    }

    /** payment_of_another_saga is checked before payment_not_captured: a stranger learns nothing of another saga's reservation. */
    @Test
    void paymentOfAnotherSagaIsCheckedBeforePaymentNotCaptured() {
        new Clocked()
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"))
                .expect(refund("zz", 1, "p1", "5"), error(22, "payment_of_another_saga",
                        "payment_id p1 is a payment of another saga: a compensation refunds its own saga's payments"))
                .expect(refund("zz", 1, "p1", null), error(22, "payment_of_another_saga",
                        "payment_id p1 is a payment of another saga: a compensation refunds its own saga's payments"));
    }

    // ---- --balance -----------------------------------------------------------------------------------------

    /**
     * A hold counts against what is available (balance minus holds): a charge or a reservation above it is declined
     * (the step's stored result); a capture takes what it captures and releases the rest; a void releases; BalanceRead shows held.
     */
    @Test
    void withBalancesAHoldCountsAgainstWhatIsAvailable() {
        new Clocked("100", null)
                .expect(reserve("b1", 1, "60"), reserveOk("b1", 1, "p1", "60"))
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "60"))
                .expect(charge("b2", 1, "41"), declined("u1 has 40 left beside 60 held, the charge is 41 (b2:step1)"))
                .expect(charge("b2", 1, "41"), declined("u1 has 40 left beside 60 held, the charge is 41 (b2:step1)"))
                .expect(reserve("b3", 1, "40.01"), declined("u1 has 40 left beside 60 held, the reservation is 40.01 (b3:step1)"))
                .expect(reserve("b4", 1, "30"), reserveOk("b4", 1, "p2", "30"))
                .expect(balanceRead("u1"), balanceOk("u1", "100", "0", "0", "90"))
                .expect(capture("b1", 1, null, "45.50"), captureOk("b1", 1, "p1", "45.50", "14.50"))
                .expect(balanceRead("u1"), balanceOk("u1", "54.50", "45.50", "0", "30"))
                .expect(voidHold("b4", 1, null), voidOk("b4", 1, "p2", "30"))
                .expect(balanceRead("u1"), balanceOk("u1", "54.50", "45.50", "0", "0"))
                .expect(refund("b1", 1, null, "5.50"), refundOk("b1", 1, "r1", "5.50"))
                .expect(balanceRead("u1"), balanceOk("u1", "60.00", "45.50", "5.50", "0"))
                .expect(charge("b5", 1, "60"), chargeOk("b5", 1, "p3", "60"))
                .expect(balanceRead("u1"), balanceOk("u1", "0.00", "105.50", "5.50", "0"));
    }

    /** An expired hold stops counting at its deadline, touched or not; a capture that finds it expired releases it for good. */
    @Test
    void withBalancesAnExpiredHoldIsReleased() {
        Clocked node = new Clocked("100", null);
        node.at(0).expect(reserve("b1", 1, "u1", "70", "60000"), reserveOk("b1", 1, "p1", "70"))
                .expect(charge("b2", 1, "31"), declined("u1 has 30 left beside 70 held, the charge is 31 (b2:step1)"));
        node.at(60_000).expect(charge("b3", 1, "31"), chargeOk("b3", 1, "p2", "31"))                    // untouched: it holds nothing
                .expect(capture("b1", 1, null, null), expired("p1", "b1:step1"))
                .expect(balanceRead("u1"), balanceOk("u1", "69", "31", "0", "0"))
                .expect(reserve("b4", 1, "69"), reserveOk("b4", 1, "p3", "69"));
    }

    /**
     * With balances, a charge that counts a hold past its deadline as free expires it for good: a capture decided at an
     * earlier instant afterwards (a clock set back; on a cluster, another node's clock) cannot take the money the charge
     * already spent. Without that, the user below would end at -40.
     */
    @Test
    void withBalancesAChargeThatSpendsAnExpiredHoldsMoneyExpiresItForGood() {
        Clocked node = new Clocked("100", null);
        node.at(0).expect(reserve("b1", 1, "u1", "70", "60000"), reserveOk("b1", 1, "p1", "70"));
        node.at(60_000).expect(charge("b2", 1, "70"), chargeOk("b2", 1, "p2", "70"));             // the hold's 70 is free again
        node.at(59_999).expect(capture("b1", 1, null, null), expired("p1", "b1:step1"))            // before the deadline, by this clock
                .expect(balanceRead("u1"), balanceOk("u1", "30", "70", "0", "0"));
    }

    // ---- Faults --------------------------------------------------------------------------------------------

    /** The test doubles' faults apply to the three new messages, by their keys; a retry after one is answered as any retry. */
    @Test
    void faultsApplyToReserveCaptureAndVoid() {
        Clocked node = new Clocked("--fault", "b1:step1=fail", "--fault", "b1:step1:capture=drop",
                "--fault", "b2:step1:void=unknown", "--fault", "b3:step1=duplicate");
        node.expect(reserve("b1", 1, "50"), error(11, "injected_fail", "injected fault: fail: nothing was done; safe to retry"))
                .expect(reserve("b1", 1, "50"), reserveOk("b1", 1, "p1", "50"));         // the failed attempt took no id
        node.expectNoReply(capture("b1", 1, null, "30"));
        node.expect(capture("b1", 1, null, "30"), noted(captureOk("b1", 1, "p1", "30", "20"), "already_captured"))
                .expect(reserve("b2", 1, "5"), reserveOk("b2", 1, "p2", "5"))
                .expect(voidHold("b2", 1, null), error(13, "injected_unknown",
                        "injected fault: unknown outcome: the request may or may not have been done; a retry will tell"))
                .expect(voidHold("b2", 1, null), noted(voidOk("b2", 1, "p2", "5"), "already_voided"));
        String twice = node.send(reserve("b3", 1, "7"));
        String once = reserveOk("b3", 1, "p3", "7").to(8, 6);
        assertEquals(once + once, twice);
        assertEquals("payment-node: fault: fail b1:step1 msg_id 1\n"
                + "payment-node: fault: drop b1:step1:capture msg_id 3\n"
                + "payment-node: fault: unknown b2:step1:void msg_id 6\n"
                + "payment-node: fault: duplicate b3:step1 msg_id 8\n", node.stderr());
    }

    // ---- Journal -------------------------------------------------------------------------------------------

    /**
     * A restart with --journal keeps reservations, captures, voids, closed steps, expiries and deadlines: every retry
     * is answered as before, a deadline is the same instant after a restart, and the next payment id follows on.
     */
    @Test
    void aRestartWithAJournalKeepsReservationsCapturesVoidsAndDeadlines() throws IOException {
        Path journal = dir.resolve("journal");
        Clocked first = new Clocked("100", journal);
        first.at(0).expect(reserve("a", 1, "u1", "10", "1000"), reserveOk("a", 1, "p1", "10"))
                .expect(reserve("b", 1, "20"), reserveOk("b", 1, "p2", "20"))
                .expect(capture("b", 1, null, "15"), captureOk("b", 1, "p2", "15", "5"))
                .expect(reserve("c", 1, "30"), reserveOk("c", 1, "p3", "30"))
                .expect(voidHold("c", 1, null), voidOk("c", 1, "p3", "30"))
                .expect(voidHold("d", 1, null), voidOk("d", 1, null, "0"))
                .expect(reserve("e", 1, "u1", "40", "500"), reserveOk("e", 1, "p4", "40"));
        first.at(500).expect(capture("e", 1, null, null), expired("p4", "e:step1"));   // recorded as expired, though the capture left no record
        first.close();

        Clocked second = new Clocked("100", journal);
        second.at(999)
                .expect(reserve("a", 1, "u1", "10", "1000"), noted(reserveOk("a", 1, "p1", "10"), "cached_result"))
                .expect(status("a", 1), reservedStatus("a", 1, "reserved", "p1", "10", "0", "0", null, null, null))
                .expect(capture("b", 1, null, "15"), noted(captureOk("b", 1, "p2", "15", "5"), "already_captured"))
                .expect(voidHold("c", 1, null), noted(voidOk("c", 1, "p3", "30"), "already_voided"))
                .expect(capture("c", 1, null, null), voided("p3", "c:step1"))
                .expect(voidHold("d", 1, null), noted(voidOk("d", 1, null, "0"), "already_voided"))
                .expect(reserve("d", 1, "5"), stepCompensated("d:step1", "reserved"))
                .expect(status("e", 1), reservedStatus("e", 1, "expired", "p4", "40", "0", "0", null, null, null))
                // held: a's 10 only (b captured 15 and released 5, c voided, e expired): 100 - 15 - 10 = 75 available
                .expect(charge("f", 1, "75.01"), declined("u1 has 75 left beside 10 held, the charge is 75.01 (f:step1)"));
        second.close();

        Clocked third = new Clocked("100", journal);
        third.at(1000)
                .expect(status("a", 1), reservedStatus("a", 1, "expired", "p1", "10", "0", "0", null, null, null))
                .expect(capture("a", 1, null, null), expired("p1", "a:step1"))
                .expect(capture("e", 1, null, null), expired("p4", "e:step1"))
                .expect(charge("f", 1, "75.01"), declined("u1 has 75 left beside 10 held, the charge is 75.01 (f:step1)"))   // the stored decline
                .expect(charge("g", 1, "85"), chargeOk("g", 1, "p5", "85"));
        third.close();

        // An expiry is recorded, for good: a node restarted with its clock behind (set back) still finds both holds expired.
        Clocked fourth = new Clocked("100", journal);
        fourth.at(400)
                .expect(status("a", 1), reservedStatus("a", 1, "expired", "p1", "10", "0", "0", null, null, null))
                .expect(capture("a", 1, null, null), expired("p1", "a:step1"))
                .expect(status("e", 1), reservedStatus("e", 1, "expired", "p4", "40", "0", "0", null, null, null));
        fourth.close();
    }

    // ---- A capture and a void racing ------------------------------------------------------------------------

    /**
     * A capture and a void of one reservation, racing: exactly one wins, the other gets the loser's reason
     * (reservation_voided or already_captured), and exactly one resolution is journaled. The journal here is slow
     * (as an fsync is), which widens the window between a decision and its record.
     */
    @Test
    void aCaptureAndAVoidRacingNeverBothWin() throws Exception {
        AtomicInteger resolutions = new AtomicInteger();
        PaymentNode.Journal slow = new PaymentNode.Journal() {
            @Override
            public void charged(PaymentNode.ChargeRequest request, long paymentNumber) {
            }

            @Override
            public void closed(String chargeKey) {
            }

            @Override
            public void refunded(PaymentNode.RefundRequest request, String refunded, long refundNumber, long paymentNumber) {
            }

            @Override
            public void reserved(ReserveRequest request, long paymentNumber, long expiresAt) {
            }

            @Override
            public void captured(CaptureRequest request, String captured, String released, long paymentNumber) {
                resolutions.incrementAndGet();
                pause();
            }

            @Override
            public void voided(VoidRequest request, String released, long paymentNumber) {
                resolutions.incrementAndGet();
                pause();
            }

            @Override
            public void expired(String chargeKey) {
            }

            @Override
            public void commit() {
            }

            private void pause() {
                try {
                    Thread.sleep(1);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        };
        PaymentHandler table = new PaymentHandler(Node.silentLog(), slow);
        Amount fifty = new Amount("50", new BigDecimal("50"));
        int rounds = 200;
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            for (int i = 0; i < rounds; i++) {
                String saga = "race" + i;
                table.reserve(new ReserveRequest(saga, 1, "u1", fifty, null));
                CyclicBarrier start = new CyclicBarrier(2);
                Future<String> capture = pool.submit(() -> {
                    start.await();
                    try {
                        return "captured " + table.capture(new CaptureRequest(saga, 1, null, null)).result().captured();
                    } catch (RpcError refused) {
                        return refused.reason.wire();
                    }
                });
                Future<String> voiding = pool.submit(() -> {
                    start.await();
                    try {
                        return "voided " + table.voidHold(new VoidRequest(saga, 1, null)).result().released();
                    } catch (RpcError refused) {
                        return refused.reason.wire();
                    }
                });
                String outcome = capture.get() + " / " + voiding.get();
                assertTrue(outcome.equals("captured 50 / already_captured") || outcome.equals("reservation_voided / voided 50"),
                        saga + ": " + outcome);
                assertEquals(i + 1, resolutions.get(), saga + ": one resolution journaled");
            }
        } finally {
            pool.shutdownNow();
        }
    }
}
