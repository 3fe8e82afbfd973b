package payment;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

/** Runs the node's real main loop in-process, on byte streams instead of stdin/stdout. */
final class Node {
    record Run(int status, String stdout, String stderr) {
    }

    static Run run(String input) {
        return run(input.getBytes(StandardCharsets.UTF_8));
    }

    static Run run(byte[] input) {
        return run(new ByteArrayInputStream(input), false);
    }

    static Run run(InputStream input, boolean verbose) {
        ByteArrayOutputStream stderr = new ByteArrayOutputStream();
        PaymentNode.Log log = new PaymentNode.Log(new PrintStream(stderr, true, StandardCharsets.UTF_8), verbose);
        return run(input, new PaymentNode.PaymentHandler(log), log, stderr);
    }

    static Run run(InputStream input, PaymentNode.PaymentHandler handler, PaymentNode.Log log, ByteArrayOutputStream stderr) {
        ByteArrayOutputStream stdout = new ByteArrayOutputStream();
        int status = new PaymentNode(new PaymentNode.State(handler, PaymentNode.Journal.NONE), stdout, log).serve(input);
        return new Run(status, stdout.toString(StandardCharsets.UTF_8), stderr.toString(StandardCharsets.UTF_8));
    }

    /** One request line in the wire format, from client c1 to node "payment". */
    static String request(String body) {
        return "{\"src\":\"c1\",\"dest\":\"payment\",\"body\":" + body + "}\n";
    }

    static String charge(int msgId, String sagaId, int step, String amount) {
        return request("{\"type\":\"ChargePayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + sagaId + "\",\"step\":" + step
                + ",\"params\":{\"user_id\":\"u1\",\"amount\":" + amount + "}}");
    }

    /** The node's reply to {@link #charge} when it charged (or replayed) {@code paymentId}. */
    static String chargeOk(int inReplyTo, int msgId, String sagaId, int step, String paymentId, String amount, boolean cached) {
        return "{\"src\": \"payment\", \"dest\": \"c1\", \"body\": {\"type\": \"ChargePayment_ok\", \"saga_id\": \"" + sagaId
                + "\", \"step\": " + step + ", \"result\": {\"payment_id\": \"" + paymentId + "\", \"charged\": " + amount + "}"
                + (cached ? ", \"note\": \"cached_result\"" : "")
                + ", \"in_reply_to\": " + inReplyTo + ", \"msg_id\": " + msgId + "}}\n";
    }

    static String error(Integer inReplyTo, int msgId, int code, String text) {
        return "{\"src\": \"payment\", \"dest\": \"c1\", \"body\": {\"type\": \"error\", \"code\": " + code + ", \"text\": \"" + text + "\""
                + (inReplyTo == null ? "" : ", \"in_reply_to\": " + inReplyTo) + ", \"msg_id\": " + msgId + "}}\n";
    }

    private Node() {
    }
}
