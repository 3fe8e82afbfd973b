package payment;

import org.junit.jupiter.api.Test;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.SequenceInputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Behaviours of the main loop that a golden file would make clumsy: huge lines, raw bytes, logs, failures. */
class PaymentNodeTest {
    private static final int LIMIT = PaymentNode.MAX_LINE_BYTES;

    /** A ChargePayment line padded (in an ignored field) to exactly {@code length} bytes, newline excluded. */
    private static String chargePaddedTo(int length, int msgId, String sagaId) {
        String body = Wire.chargeBody(msgId, sagaId, 1, "10");
        String unpadded = Wire.request(body.substring(0, body.length() - 1) + ",\"pad\":\"\"}").trim();
        int at = unpadded.length() - "\"}}".length();
        return unpadded.substring(0, at) + "x".repeat(length - unpadded.length()) + unpadded.substring(at);
    }

    @Test
    void aLineOfExactlyTheLimitIsServed() {
        String line = chargePaddedTo(LIMIT, 1, "big");
        assertEquals(LIMIT, line.length());
        Node.Run run = Node.run(line + "\n");
        assertEquals(Wire.chargeOk("big", 1, "p1", "10").to(1, 0), run.stdout());
    }

    @Test
    void aLineOverTheLimitIsRefusedWith12WhenItsSrcCameBeforeTheCut() {
        String tooLong = chargePaddedTo(LIMIT + 1, 1, "big");
        String input = tooLong + "\n" + Wire.charge(2, "big", 1, "10");
        Node.Run run = Node.run(input);
        assertEquals(Wire.error(12, "line_too_long", "line too long: 1048577 bytes, the limit is 1048576").to(1, 0)
                + Wire.chargeOk("big", 1, "p1", "10").to(2, 1), run.stdout(),
                "the refused line must leave no record: the next charge is the first");
        assertTrue(run.stderr().contains("line 1 refused: line too long"), run.stderr());
    }

    @Test
    void aLineCutInsideALongStringStillAnswersItsMsgId() {
        String tooLong = "{\"src\":\"c1\",\"dest\":\"payment\",\"body\":{\"type\":\"ChargePayment\",\"msg_id\":7,\"saga_id\":\""
                + "x".repeat(2 * LIMIT) + "\",\"step\":1,\"params\":{\"user_id\":\"u1\",\"amount\":1}}}";
        Node.Run run = Node.run(tooLong + "\n");
        assertEquals(Wire.error(12, "line_too_long", "line too long: " + tooLong.length() + " bytes, the limit is 1048576").to(7, 0), run.stdout());
    }

    @Test
    void aLineOverTheLimitWithoutSrcBeforeTheCutIsOnlyLogged() {
        String tooLong = "{\"pad\":\"" + "y".repeat(3 * LIMIT) + "\",\"src\":\"c1\",\"body\":{\"type\":\"init\",\"msg_id\":1}}";
        Node.Run run = Node.run(tooLong + "\n" + Wire.charge(2, "s", 1, "5"));
        assertEquals(Wire.chargeOk("s", 1, "p1", "5").to(2, 0), run.stdout());
        assertTrue(run.stderr().contains("line 1 ignored: line too long: " + (tooLong.length()) + " bytes"), run.stderr());
    }

    @Test
    void aHugeLineIsNeverHeldWhole() throws IOException {
        // 50 MB of one line, produced on the fly: the reader keeps at most the limit plus one chunk.
        long size = 50L << 20;
        InputStream huge = new InputStream() {
            long sent;

            @Override
            public int read() {
                return sent++ < size ? 'z' : -1;
            }

            @Override
            public int read(byte[] b, int off, int len) {
                if (sent >= size) {
                    return -1;
                }
                int n = (int) Math.min(len, size - sent);
                java.util.Arrays.fill(b, off, off + n, (byte) 'z');
                sent += n;
                return n;
            }
        };
        InputStream input = new SequenceInputStream(huge,
                new ByteArrayInputStream(("\n" + Wire.charge(1, "after", 1, "1")).getBytes(StandardCharsets.UTF_8)));
        PaymentNode.LineReader reader = new PaymentNode.LineReader(input, LIMIT, () -> { });
        assertTrue(reader.next());
        assertEquals(size, reader.tooLongLength);
        assertEquals(LIMIT, reader.tooLongPrefix.length);
        assertTrue(reader.next());
        assertEquals(Wire.charge(1, "after", 1, "1").trim(),
                new String(reader.buf, reader.lineStart, (reader.lineEnd - reader.lineStart), StandardCharsets.UTF_8));
        assertFalse(reader.next());
        assertTrue(reader.buf.length <= LIMIT + 64 * 1024, "buffer grew to " + reader.buf.length);
    }

    /** Each bad line is answered 12 when its src can still be read, else logged; the next request is served. */
    @Test
    void badBytesAreAnsweredOrLoggedAndTheNextRequestIsServed() {
        record Bad(byte[] line, String reply, String log) {
        }
        List<Bad> badLines = List.of(
                new Bad(new byte[] {'{', '"', 's', 'r', 'c', '"', ':', '"', (byte) 0xC3, (byte) 0x28, '"', '}'},   // invalid UTF-8
                        "", "line 1 ignored: not valid JSON: the line is not valid UTF-8: {\"src\":\"\uFFFD(\"}"),
                new Bad(new byte[] {0, 0, 0, '{', '}'},                                                           // NUL bytes
                        "", "line 1 ignored: not valid JSON: the line is not valid UTF-8: \\u0000\\u0000\\u0000{}"),
                new Bad("{\"src\":\"c1\",\"body\":{\"type\":\"init\"".getBytes(StandardCharsets.UTF_8),            // truncated, no dest
                        Wire.error(12, "unreadable_line", "not valid JSON: the line ends before the JSON does").from(null).to(null, 0),
                        "line 1 refused: not valid JSON: the line ends before the JSON does"),
                new Bad(("{\"src\":\"c1\",\"dest\":\"payment\",\"body\":{\"type\":\"init\",\"deep\":" + "[".repeat(100_000)
                        + "]".repeat(100_000) + "}}").getBytes(StandardCharsets.UTF_8),                             // nested 100,000 deep
                        Wire.error(12, "unreadable_line", "not valid JSON: nested too deeply").to(null, 0), "line 1 refused: not valid JSON: nested too deeply"));
        for (Bad bad : badLines) {
            ByteArrayOutputStream input = new ByteArrayOutputStream();
            input.writeBytes(bad.line());
            input.writeBytes(("\n" + Wire.charge(1, "s", 1, "2")).getBytes(StandardCharsets.UTF_8));
            Node.Run run = Node.run(input.toByteArray());
            assertEquals(0, run.status());
            assertEquals(bad.reply() + Wire.chargeOk("s", 1, "p1", "2").to(1, bad.reply().isEmpty() ? 0 : 1), run.stdout());
            assertEquals("payment-node: warning: " + bad.log() + "\n", run.stderr());
        }
    }

    @Test
    void anAmountOfAHundredThousandDigitsGetsAClearError() {
        String digits = "9".repeat(100_000);
        Node.Run run = Node.run(Wire.charge(1, "s", 1, digits) + Wire.charge(2, "s", 1, "3"));
        assertEquals(Wire.error(12, "malformed_request", "params.amount 99999999999999999999...(100000 characters) is out of range:"
                + " at most 40 digits before the decimal point and 40 after it").to(1, 0)
                + Wire.chargeOk("s", 1, "p1", "3").to(2, 1), run.stdout());
    }

    @Test
    void aRefundOfAPaymentThisNodeDoesNotKnowIsTrustedWithAWarning() {
        Node.Run run = Node.run(Wire.refund(1, "s", 1, "p9", "4"));
        assertTrue(run.stdout().contains("\"result\": {\"refund_id\": \"r1\", \"refunded\": 4}"), run.stdout());
        assertEquals("payment-node: warning: refunding p9 for s:step1:refund, a payment this node does not know"
                + " (made before a restart or by another node): trusting the saga\n", run.stderr());
    }

    @Test
    void verboseLogsEachRequestAndEachCachedAnswerOnStderrOnly() {
        String input = Wire.charge(1, "saga42", 2, "99.99") + Wire.charge(2, "saga42", 2, "99.99");
        Node.Run quiet = Node.run(input.getBytes(StandardCharsets.UTF_8), false);
        Node.Run verbose = Node.run(input.getBytes(StandardCharsets.UTF_8), true);
        assertEquals(quiet.stdout(), verbose.stdout());
        assertEquals("", quiet.stderr());
        assertEquals("""
                payment-node: line 1 from c1: ChargePayment saga42:step2
                payment-node: line 2 from c1: ChargePayment saga42:step2
                payment-node: Already processed saga42:step2, returning cached result
                """, verbose.stderr());
    }

    @Test
    void anInternalFailureIsAnswered13AndTheNodeKeepsServing() {
        Node.CapturedLog log = Node.CapturedLog.of(false);
        PaymentNode.PaymentHandler failingOnce = new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE) {
            boolean failed;

            @Override
            PaymentNode.Served<PaymentNode.ChargeResult> charge(PaymentNode.ChargeRequest request) {
                if (!failed) {
                    failed = true;
                    throw new IllegalStateException("simulated bug");
                }
                return super.charge(request);
            }
        };
        String input = Wire.charge(1, "s", 1, "7") + Wire.charge(2, "s", 1, "7");
        Node.Run run = Node.run(input.getBytes(StandardCharsets.UTF_8), failingOnce, log);
        assertEquals(Wire.error(13, "internal_error", "internal error: java.lang.IllegalStateException: simulated bug").to(1, 0)
                + Wire.chargeOk("s", 1, "p1", "7").to(2, 1), run.stdout());
        assertTrue(run.stderr().contains("line 1: internal error, answered with code 13"), run.stderr());
        assertTrue(run.stderr().contains("IllegalStateException: simulated bug"), "stack trace logged");
    }

    /**
     * A node without a journal hands out p1 again after a restart: a compensation naming its forgotten p1 must
     * not refund the stranger who now has that id (issue 19, item 4; docs/PROTOCOL.md section 4, case 2).
     */
    @Test
    void aStaleIdAfterARestartRefundsNoStranger() {
        Node.Run first = Node.run(Wire.charge(1, "A", 1, "100"));
        assertEquals(Wire.chargeOk("A", 1, "p1", "100").to(1, 0), first.stdout());
        Node.Run restarted = Node.run(Wire.charge(1, "B", 1, "100") + Wire.refund(2, "A", 2, "p1", "100") + Wire.paymentStatus(3, "B", 1));
        assertEquals(Wire.chargeOk("B", 1, "p1", "100").to(1, 0)
                + Wire.error(22, "payment_of_another_saga",
                        "payment_id p1 is a payment of another saga: a compensation refunds its own saga's payments").to(2, 1)
                + Wire.paymentStatusOk("B", 1, "charged", new Wire.Payment("p1", "100", "0"), null).to(3, 2), restarted.stdout());
    }

    /** A money invariant broken in production is a bug: the request is answered 13, naming it, and the node goes on (issue 19, item 3). */
    @Test
    void aBrokenMoneyInvariantIsAnswered13AndNamed() {
        Node.CapturedLog log = Node.CapturedLog.of(false);
        PaymentNode.PaymentHandler overRefunding = new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE) {
            @Override
            PaymentNode.Refunded refundPayment(PaymentNode.Charged payment, PaymentNode.RefundRequest request) {
                payment.restoreDeducted(new java.math.BigDecimal("1000"));   // a bug that skips the refund rules
                return super.refundPayment(payment, request);
            }
        };
        String input = Wire.charge(1, "s", 1, "7") + Wire.refund(2, "s", 1, null, "1") + Wire.paymentStatus(3, "s", 1);
        Node.Run run = Node.run(input.getBytes(StandardCharsets.UTF_8), overRefunding, log);
        assertEquals(Wire.chargeOk("s", 1, "p1", "7").to(1, 0)
                + Wire.error(13, "internal_error", "internal error: invariant refunds_within_charge broken: the refunds of p1 would add up"
                        + " to 1000, more than its charge of 7").to(2, 1)
                + Wire.paymentStatusOk("s", 1, "charged", new Wire.Payment("p1", "7", "0"), null).to(3, 2), run.stdout());
        assertTrue(run.stderr().contains("line 2: invariant refunds_within_charge broken"), run.stderr());
    }

    /** A hold resolved twice is a bug: the table refuses it in production, answered 13 naming hold_resolved_once (issue 21). */
    @Test
    void aHoldResolvedTwiceIsAnswered13AndNamed() {
        Node.CapturedLog log = Node.CapturedLog.of(false);
        PaymentNode.PaymentHandler resolvingTwice = new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE) {
            @Override
            void holdResolved(PaymentNode.Reserved reservation) {
                reservation.resolve(PaymentNode.Hold.VOIDED, null);   // a bug that voids what was just captured
            }
        };
        String input = Wire.request("{\"type\":\"ReservePayment\",\"msg_id\":1,\"saga_id\":\"s\",\"step\":1,\"params\":{\"user_id\":\"u1\",\"amount\":50}}")
                + Wire.request("{\"type\":\"CapturePayment\",\"msg_id\":2,\"saga_id\":\"s\",\"step\":1}");
        Node.Run run = Node.run(input.getBytes(StandardCharsets.UTF_8), resolvingTwice, log);
        assertEquals(new Wire.ReplyBody("\"type\": \"ReservePayment_ok\", \"saga_id\": \"s\", \"step\": 1, \"result\": {\"payment_id\": \"p1\", \"reserved\": 50}").to(1, 0)
                + Wire.error(13, "internal_error", "internal error: invariant hold_resolved_once broken: p1 is captured, and would be voided").to(2, 1),
                run.stdout());
        assertTrue(run.stderr().contains("line 2: invariant hold_resolved_once broken"), run.stderr());
    }

    /** A capture above its hold is a bug the reservation itself refuses, whatever code asks it (issue 21). */
    @Test
    void aCaptureAboveItsHoldIsRefusedByTheReservation() {
        PaymentNode.Reserved reservation = new PaymentNode.Reserved("s:step1", "u1", "50.00", -1, PaymentNode.Reserved.NEVER, 1);
        PaymentNode.BrokenInvariant broken = org.junit.jupiter.api.Assertions.assertThrows(PaymentNode.BrokenInvariant.class,
                () -> reservation.resolve(PaymentNode.Hold.CAPTURED, "50.01"));
        assertEquals(PaymentNode.Invariant.CAPTURE_WITHIN_HOLD, broken.invariant);
        assertEquals("invariant capture_within_hold broken: a capture of 50.01 of p1, which holds 50.00", broken.getMessage());
        assertEquals(PaymentNode.Hold.RESERVED, reservation.hold(), "nothing changed");
    }

    /** A bug outside any request (a mode's timed work inside a read) stops the node with status 1, its earlier replies out. */
    @Test
    void aBugOutsideAnyRequestStopsTheNodeWithItsRepliesOut() {
        Node.CapturedLog log = Node.CapturedLog.of(false);
        java.io.ByteArrayOutputStream stdout = new java.io.ByteArrayOutputStream();
        InputStream failing = new InputStream() {
            @Override
            public int read() {
                throw new IllegalStateException("simulated bug in timed work");
            }
        };
        PaymentNode node = new PaymentNode(stdout, log.log(), replies -> new ServiceAround(
                new PaymentNode.LocalService(new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE), replies, log.log())) {
            @Override
            public InputStream input(InputStream stdin) {
                return new java.io.SequenceInputStream(stdin, failing);
            }
        });
        int status = node.serve(new ByteArrayInputStream(Wire.charge(1, "s", 1, "7").getBytes(StandardCharsets.UTF_8)));
        assertEquals(1, status);
        assertEquals(Wire.chargeOk("s", 1, "p1", "7").to(1, 0), stdout.toString(StandardCharsets.UTF_8));
        assertTrue(log.bytes().toString(StandardCharsets.UTF_8).contains("stopping: internal error"), log.bytes().toString(StandardCharsets.UTF_8));
    }

    @Test
    void aBrokenStdoutEndsTheNodeWithStatus1() {
        OutputStream broken = new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                throw new IOException("Broken pipe");
            }
        };
        Node.CapturedLog log = Node.CapturedLog.of(false);
        Node.Run run = Node.run(new ByteArrayInputStream(Wire.charge(1, "s", 1, "1").getBytes(StandardCharsets.UTF_8)),
                new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE), broken, log);
        assertEquals(1, run.status());
        assertTrue(run.stderr().contains("Broken pipe"), run.stderr());
    }

    @Test
    void optionsAreParsedStrictly() {
        assertEquals(new CommandLine.Options(true, false, null, null, null, 0, false, 1000, 0, 0), CommandLine.Options.parse(new String[] {"--verbose"}));
        assertEquals(new CommandLine.Options(false, true, null, null, null, 0, false, 1000, 0, 0), CommandLine.Options.parse(new String[] {"-h"}));
        IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> CommandLine.Options.parse(new String[] {"--journa"}));
        assertEquals("unknown option: --journa", e.getMessage());
    }

    /** An option that only means something with another is a usage error without it (issue 16, item 5). */
    @Test
    void anOptionThatNeedsAnotherIsAUsageErrorWithoutIt() {
        assertEquals("--seed is the seed of --faults: it goes with --faults",
                org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                        () -> CommandLine.Options.parse(new String[] {"--seed", "7"})).getMessage());
        assertEquals("--kv-timeout is how long a cluster node waits for lin-kv: it goes with --store lin-kv",
                org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                        () -> CommandLine.Options.parse(new String[] {"--kv-timeout", "500"})).getMessage());
        assertEquals("--max-keys needs a whole number of keys from 1, got 0",
                org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                        () -> CommandLine.Options.parse(new String[] {"--max-keys", "0"})).getMessage());
        assertEquals(false, CommandLine.Options.parse(new String[] {"--store", "memory"}).linKv());
    }

    /** --help goes to stdout with status 0; a usage error is one stderr line with status 2. */
    @Test
    void helpIsOnStdoutAndAUsageErrorOnStderr() throws Exception {
        Node.Run help = Node.runProcess("--help");
        assertEquals(0, help.status());
        assertEquals(CommandLine.USAGE, help.stdout());
        assertEquals("", help.stderr());
        assertEquals(new Node.Run(2, "", "payment-node: --seed is the seed of --faults: it goes with --faults (see --help)\n"),
                Node.runProcess("--seed", "1"));
    }

    /** A msg_id of 20 digits is an integer that does not fit: said so, not "must be an integer" (issue 16, item 5). */
    /**
     * A key given twice (issue 22, item 3): the node does not guess which value the sender meant. It refuses
     * the line with error 12 naming the key, to the sender when src came before the duplicate, and charges nothing.
     */
    @Test
    void aDuplicateKeyIsRefusedNamingItAndChargesNothing() {
        String input = Wire.request("{\"type\":\"ChargePayment\",\"msg_id\":1,\"saga_id\":\"dup\",\"saga_id\":\"dup2\",\"step\":1,"
                        + "\"params\":{\"user_id\":\"u1\",\"amount\":10}}")
                + "{\"dest\":\"payment\",\"dest\":\"payment\",\"src\":\"c1\",\"body\":{\"type\":\"init\",\"msg_id\":2}}\n"
                + Wire.request("{\"type\":\"error\",\"in_reply_to\":3,\"code\":1,\"code\":2}")
                + Wire.paymentStatus(4, "dup2", 1) + Wire.paymentStatus(5, "dup", 1);
        Node.Run run = Node.run(input);
        assertEquals(Wire.error(12, "malformed_request", "duplicate key saga_id").to(1, 0)
                + Wire.paymentStatusOk("dup2", 1, "none").to(4, 1)
                + Wire.paymentStatusOk("dup", 1, "none").to(5, 2), run.stdout());
        assertEquals("""
                payment-node: warning: line 1 refused: duplicate key saga_id
                payment-node: warning: line 2 ignored: duplicate key dest: {"dest":"payment","dest":"payment","src":"c1","body":{"type":"init","msg_id":2}}
                payment-node: warning: line 3 ignored: duplicate key code: {"src":"c1","dest":"payment","body":{"type":"error","in_reply_to":3,"code":1,"code":2}}
                """, run.stderr(), "a duplicate before src, or in a reply, is only logged");
    }

    /** An object of many names (past the few compared in a row) is checked too, and served when no name repeats. */
    @Test
    void aDuplicateAmongManyNamesIsFoundAndManyDistinctNamesAreServed() {
        StringBuilder names = new StringBuilder();
        for (int i = 0; i < 20; i++) {
            names.append("\"f").append(i).append("\":").append(i).append(',');
        }
        String distinct = Wire.request("{\"type\":\"ChargePayment\",\"msg_id\":1,\"saga_id\":\"s\",\"step\":1,\"extra\":{" + names
                + "\"last\":0},\"params\":{\"user_id\":\"u1\",\"amount\":10}}");
        String repeated = Wire.request("{\"type\":\"ChargePayment\",\"msg_id\":2,\"saga_id\":\"s\",\"step\":2,\"extra\":{" + names
                + "\"f3\":0},\"params\":{\"user_id\":\"u1\",\"amount\":10}}");
        assertEquals(Wire.chargeOk("s", 1, "p1", "10").to(1, 0)
                + Wire.error(12, "malformed_request", "duplicate key f3").to(2, 1), Node.run(distinct + repeated).stdout());
    }

    @Test
    void aMsgIdTooBigForSixtyFourBitsIsSaidSo() {
        Node.Run run = Node.run(Wire.request("{\"type\":\"init\",\"msg_id\":12345678901234567890}")
                + Wire.request("{\"type\":\"init\",\"msg_id\":\"7\"}"));
        assertEquals(Wire.error(12, "malformed_request", "msg_id 12345678901234567890 does not fit in 64 bits").to(null, 0)
                + Wire.error(12, "malformed_request", "msg_id must be an integer").to(null, 1), run.stdout());
    }
}
