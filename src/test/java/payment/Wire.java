package payment;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The wire format as the tests write and read it: request lines as a client sends them (compact JSON,
 * from {@code c1} to {@code payment} unless told otherwise), the node's replies as it must print them
 * (json.dumps layout), and a reader that takes a reply line apart. In-process and process tests share it.
 */
final class Wire {
    static final String NODE = "payment";
    static final String CLIENT = "c1";

    // ---- requests -----------------------------------------------------------------------------------

    /** One request line: {@code body} (a JSON object's text) from {@code src} to the node. */
    static String envelope(String src, String body) {
        return "{\"src\":\"" + src + "\",\"dest\":\"" + NODE + "\",\"body\":" + body + "}\n";
    }

    /** One request line from client c1. */
    static String request(String body) {
        return envelope(CLIENT, body);
    }

    static String init(int msgId) {
        return envelope("c0", "{\"type\":\"init\",\"msg_id\":" + msgId + "}");
    }

    /** A ChargePayment by user u1. */
    static String charge(long msgId, String sagaId, long step, String amount) {
        return request(chargeBody(msgId, sagaId, step, amount));
    }

    static String chargeBody(long msgId, String sagaId, long step, String amount) {
        return "{\"type\":\"ChargePayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + sagaId + "\",\"step\":" + step
                + ",\"params\":{\"user_id\":\"u1\",\"amount\":" + amount + "}}";
    }

    /** A RefundPayment; {@code paymentId} and {@code amount} are left out when null. */
    static String refund(long msgId, String sagaId, long step, String paymentId, String amount) {
        StringBuilder params = new StringBuilder();
        if (paymentId != null) {
            params.append("\"payment_id\":\"").append(paymentId).append('"');
        }
        if (amount != null) {
            params.append(params.length() > 0 ? "," : "").append("\"amount\":").append(amount);
        }
        return request("{\"type\":\"RefundPayment\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + sagaId + "\",\"step\":" + step
                + (params.length() > 0 ? ",\"params\":{" + params + "}" : "") + "}");
    }

    /** A PaymentStatus (docs/PROTOCOL.md section 8). */
    static String paymentStatus(long msgId, String sagaId, long step) {
        return request("{\"type\":\"PaymentStatus\",\"msg_id\":" + msgId + ",\"saga_id\":\"" + sagaId + "\",\"step\":" + step + "}");
    }

    // ---- replies, as the node must print them ------------------------------------------------------------

    /** The node's init_ok to c0 (the sample cases' first line), with its newline. */
    static String initOk(long inReplyTo, long msgId) {
        return initOk().to(inReplyTo, msgId);
    }

    /** The node's init_ok to c0, to be addressed: {@code initOk().from("n1")} for a node that init named n1. */
    static ReplyBody initOk() {
        return new ReplyBody("\"type\": \"init_ok\"").toClient("c0");
    }

    /**
     * A reply body's own fields and who it goes between: from the node ({@code payment}) to c1 unless told
     * otherwise; {@link #to} makes the whole line.
     */
    record ReplyBody(String fields, String src, String dest) {
        ReplyBody(String fields) {
            this(fields, NODE, CLIENT);
        }

        /** The same reply from a node of another name; null: a node that knows none (no init, no dest). */
        ReplyBody from(String node) {
            return new ReplyBody(fields, node, dest);
        }

        /** The same reply to another client. */
        ReplyBody toClient(String client) {
            return new ReplyBody(fields, src, client);
        }

        /** The whole reply line, with its newline; {@code inReplyTo} null: none. */
        String to(Long inReplyTo, long msgId) {
            return "{\"src\": " + quoted(src) + ", \"dest\": " + quoted(dest) + ", \"body\": {" + fields
                    + (inReplyTo == null ? "" : ", \"in_reply_to\": " + inReplyTo) + ", \"msg_id\": " + msgId + "}}\n";
        }

        String to(long inReplyTo, long msgId) {
            return to(Long.valueOf(inReplyTo), msgId);
        }

        /** The same reply as a retry gets it: with its note. */
        ReplyBody cached() {
            return new ReplyBody(fields + (fields.contains("\"RefundPayment_ok\"")
                    ? ", \"note\": \"already_refunded\"" : ", \"note\": \"cached_result\""), src, dest);
        }
    }

    static ReplyBody chargeOk(String sagaId, long step, String paymentId, String charged) {
        return new ReplyBody("\"type\": \"ChargePayment_ok\", \"saga_id\": \"" + sagaId + "\", \"step\": " + step
                + ", \"result\": {\"payment_id\": \"" + paymentId + "\", \"charged\": " + charged + "}");
    }

    /** {@code refundId} null: a compensation that found nothing to refund. */
    static ReplyBody refundOk(String sagaId, long step, String refundId, String refunded) {
        return new ReplyBody("\"type\": \"RefundPayment_ok\", \"saga_id\": \"" + sagaId + "\", \"step\": " + step
                + ", \"result\": " + new Refund(refundId, refunded).json());
    }

    /** PaymentStatus_ok of a step with no payment and no refund result: {@code none}, {@code declined} or {@code compensated}. */
    static ReplyBody paymentStatusOk(String sagaId, long step, String status) {
        return paymentStatusOk(sagaId, step, status, null, null);
    }

    /**
     * PaymentStatus_ok (docs/PROTOCOL.md section 8): {@code payment} only for a charged step, {@code refund}
     * only when the step's refund key has a result (null: not in the reply).
     */
    static ReplyBody paymentStatusOk(String sagaId, long step, String status, Payment payment, Refund refund) {
        return new ReplyBody("\"type\": \"PaymentStatus_ok\", \"saga_id\": \"" + sagaId + "\", \"step\": " + step
                + ", \"status\": \"" + status + "\""
                + (payment == null ? "" : ", \"payment\": {\"payment_id\": \"" + payment.paymentId() + "\", \"charged\": "
                        + payment.charged() + ", \"refunded\": " + payment.refunded() + "}")
                + (refund == null ? "" : ", \"refund\": " + refund.json()));
    }

    /** A charged step's payment as PaymentStatus_ok shows it: {@code refunded} is the total by every refund key. */
    record Payment(String paymentId, String charged, String refunded) {
    }

    /** A refund key's result; {@code refundId} null: a compensation that found nothing to refund. */
    record Refund(String refundId, String refunded) {
        String json() {
            return "{" + (refundId == null ? "" : "\"refund_id\": \"" + refundId + "\", ") + "\"refunded\": " + refunded + "}";
        }
    }

    static ReplyBody error(int code, String text) {
        return new ReplyBody("\"type\": \"error\", \"code\": " + code + ", \"text\": \"" + text + "\"");
    }

    private static String quoted(String name) {
        return name == null ? "null" : "\"" + name + "\"";
    }

    // ---- reading a reply ---------------------------------------------------------------------------------

    /**
     * A reply line taken apart. {@code result} keeps each result field's JSON text ({@code "p1"} as
     * {@code p1}, numbers as written); fields a reply does not have are null.
     */
    record Reply(String src, String dest, String type, String sagaId, Long step, Map<String, String> result,
                 String note, Integer code, String text, Long inReplyTo, Long msgId) {

        /** The idempotency key the reply speaks of ({@code saga:stepN}, plus {@code :refund}), or null. */
        String key() {
            if (sagaId == null) {
                return null;
            }
            return sagaId + ":step" + step + ("RefundPayment_ok".equals(type) ? ":refund" : "");
        }

        /** The result as one comparable text, or the error code. */
        String outcome() {
            return result != null ? result.toString() : "code " + code;
        }
    }

    private static final JsonFactory JSON = new JsonFactory();

    /** Reads one reply line; fails (an unchecked exception) on anything that is not a reply object. */
    static Reply read(String line) {
        try (JsonParser parser = JSON.createParser(line)) {
            Map<String, Object> envelope = readObject(parser, parser.nextToken());
            @SuppressWarnings("unchecked")
            Map<String, Object> body = (Map<String, Object>) envelope.get("body");
            if (body == null) {
                throw new IllegalArgumentException("not a reply: " + line);
            }
            @SuppressWarnings("unchecked")
            Map<String, String> result = (Map<String, String>) (Map<String, ?>) body.get("result");
            return new Reply((String) envelope.get("src"), (String) envelope.get("dest"), (String) body.get("type"),
                    (String) body.get("saga_id"), longOrNull(body.get("step")), result, (String) body.get("note"),
                    body.get("code") == null ? null : Integer.valueOf((String) body.get("code")), (String) body.get("text"),
                    longOrNull(body.get("in_reply_to")), longOrNull(body.get("msg_id")));
        } catch (IOException e) {
            throw new UncheckedIOException("not JSON: " + line, e);
        }
    }

    private static Long longOrNull(Object text) {
        return text == null ? null : Long.valueOf((String) text);
    }

    /** An object's fields: strings and numbers as their text, objects as maps. */
    private static Map<String, Object> readObject(JsonParser parser, JsonToken start) throws IOException {
        if (start != JsonToken.START_OBJECT) {
            throw new IllegalArgumentException("not an object");
        }
        Map<String, Object> fields = new LinkedHashMap<>();
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String name = parser.currentName();
            JsonToken token = parser.nextToken();
            fields.put(name, token == JsonToken.START_OBJECT ? readObject(parser, token) : scalar(parser, token));
        }
        return fields;
    }

    private static String scalar(JsonParser parser, JsonToken token) throws IOException {
        if (token == JsonToken.START_ARRAY) {
            parser.skipChildren();
            return "[...]";
        }
        return token == JsonToken.VALUE_NULL ? null : parser.getText();
    }

    private Wire() {
    }
}
