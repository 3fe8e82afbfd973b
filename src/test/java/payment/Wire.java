package payment;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.cfg.JsonNodeFeature;
import com.fasterxml.jackson.databind.json.JsonMapper;

import java.io.UncheckedIOException;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The wire format as the tests write and read it: request lines as a client sends them (compact JSON,
 * from {@code c1} to {@code payment} unless told otherwise), the node's replies as it must print them
 * (json.dumps layout), and a reader that takes a reply line apart. In-process and process tests share it.
 */
public final class Wire {
    static final String NODE = "payment";
    static final String CLIENT = "c1";

    // ---- requests -----------------------------------------------------------------------------------

    /** One request line: {@code body} (a JSON object's text) from {@code src} to the node. */
    public static String envelope(String src, String body) {
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
    public static String charge(long msgId, String sagaId, long step, String amount) {
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

    /** An error reply: its Maelstrom code, its text, and its reason (docs/PROTOCOL.md section 5). */
    static ReplyBody error(int code, String reason, String text) {
        return new ReplyBody("\"type\": \"error\", \"code\": " + code + ", \"text\": \"" + text + "\", \"reason\": \"" + reason + "\"");
    }

    /** A key reused with other params: error 22, naming the params that differ. */
    static ReplyBody keyReused(String key, String... differs) {
        return new ReplyBody("\"type\": \"error\", \"code\": 22, \"text\": \"idempotency key " + key
                + " was first used with other params\", \"reason\": \"key_reused\", \"differs\": [\""
                + String.join("\", \"", differs) + "\"]");
    }

    private static String quoted(String name) {
        return name == null ? "null" : "\"" + name + "\"";
    }

    // ---- reading a reply ---------------------------------------------------------------------------------

    /**
     * A reply line taken apart. {@code result} keeps each result field's JSON text ({@code "p1"} as
     * {@code p1}, numbers in plain decimal: {@code 100.50} stays {@code 100.50}); fields a reply does not
     * have are null.
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

    private static final ObjectMapper JSON = JsonMapper.builder()
            // An amount is compared as the node wrote it: never a double (100.5), never stripped of its zeros (100.5 for 100.50).
            .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .configure(JsonNodeFeature.STRIP_TRAILING_BIGDECIMAL_ZEROES, false)
            // A stdout line is one reply: a second value after it, or a key given twice, is a broken line.
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .build();

    /** Reads one reply line; fails (an unchecked exception) on anything that is not a reply object. */
    static Reply read(String line) {
        JsonNode envelope;
        try {
            envelope = JSON.readTree(line);
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException("not JSON: " + line, e);
        }
        JsonNode body = envelope.get("body");
        if (!envelope.isObject() || body == null || !body.isObject()) {
            throw new IllegalArgumentException("not a reply: " + line);
        }
        Long code = integer(body, "code", line);
        return new Reply(string(envelope, "src", line), string(envelope, "dest", line), string(body, "type", line),
                string(body, "saga_id", line), integer(body, "step", line), result(body.get("result"), line),
                string(body, "note", line), code == null ? null : Math.toIntExact(code), string(body, "text", line),
                integer(body, "in_reply_to", line), integer(body, "msg_id", line));
    }

    private static String string(JsonNode object, String name, String line) {
        JsonNode field = object.get(name);
        if (field == null || field.isNull()) {
            return null;
        }
        if (!field.isTextual()) {
            throw new IllegalArgumentException(name + " is not a string: " + line);
        }
        return field.textValue();
    }

    private static Long integer(JsonNode object, String name, String line) {
        JsonNode field = object.get(name);
        if (field == null || field.isNull()) {
            return null;
        }
        if (!field.isIntegralNumber() || !field.canConvertToLong()) {
            throw new IllegalArgumentException(name + " is not a 64-bit integer: " + line);
        }
        return field.longValue();
    }

    /** A result's fields as their JSON text: strings without their quotes, numbers in plain decimal. */
    private static Map<String, String> result(JsonNode result, String line) {
        if (result == null || result.isNull()) {
            return null;
        }
        if (!result.isObject()) {
            throw new IllegalArgumentException("result is not an object: " + line);
        }
        Map<String, String> fields = new LinkedHashMap<>();
        for (Map.Entry<String, JsonNode> field : result.properties()) {
            fields.put(field.getKey(), text(field.getValue()));
        }
        return fields;
    }

    private static String text(JsonNode value) {
        if (value.isNull()) {
            return null;
        }
        if (value.isTextual()) {
            return value.textValue();
        }
        return value.isBigDecimal() ? value.decimalValue().toPlainString() : value.toString();
    }

    private Wire() {
    }
}
