package payment;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;

import static payment.PaymentNode.*;

/**
 * A small client of Maelstrom's lin-kv service, in the spirit of Maelstrom's Go {@code kv.go}: a request
 * goes out with this node's next msg_id, and its reply (which carries {@code in_reply_to}, no msg_id) comes
 * back on stdin and is matched to it. The cluster needs two calls only: {@code read}, and a create-only
 * {@code cas} (a slot of the log is written once). Every call ends exactly once: with its reply, or with
 * {@link Outcome#TIMEOUT} at its deadline, after which a late reply is ignored.
 */
final class LinKv {
    static final String SERVICE = "lin-kv";
    /** The {@code from} of a create-only cas: the log never holds this string, so an existing slot refuses it. */
    private static final String NEVER_STORED = "(absent)";

    /** How a call ended. An error other than 20 and 22 (or a reply of the wrong type) counts as no answer: it ends at the deadline. */
    enum Outcome { OK, MISSING, EXISTS, TIMEOUT }

    /**
     * A call's end. {@code value}: a read's value when it is a JSON string, else null; {@code raw}: the
     * value's JSON text as it came (so that two readings can be compared even when neither is a string).
     */
    record Reply(Outcome outcome, String value, String raw) {
    }

    interface Callback {
        void on(Reply reply) throws IOException;
    }

    private record Call(String type, String key, long deadlineNanos, Callback callback) {
    }

    private final ReplyWriter out;
    private final Log log;
    private final long timeoutMillis;
    /** Calls waiting for their reply, in the order sent: all have the same timeout, so the first is due first. */
    private final LinkedHashMap<Long, Call> calls = new LinkedHashMap<>();
    private String from;

    LinKv(ReplyWriter out, Log log, long timeoutMillis) {
        this.out = out;
        this.log = log;
        this.timeoutMillis = timeoutMillis;
        // A reply meant for an earlier process of this node must never match a call of this one: msg_ids
        // start past any number an earlier process used (the clock in ms x 1000, unless it steps back).
        out.startMsgIdsAt(System.currentTimeMillis() * 1000);
    }

    /** The node id calls come from (init). */
    void from(String nodeId) {
        this.from = nodeId;
    }

    void read(String key, Callback callback) throws IOException {
        send("read", key, null, callback);
    }

    /** Writes {@code value} under {@code key} if the key does not exist: EXISTS when it does. */
    void createOnly(String key, String value, Callback callback) throws IOException {
        send("cas", key, value, callback);
    }

    private void send(String type, String key, String value, Callback callback) throws IOException {
        long msgId = out.send(new Envelope(from, SERVICE, null), type, json -> {
            json.field("key");
            json.string(key);
            if (value != null) {
                json.field("from");
                json.string(NEVER_STORED);
                json.field("to");
                json.string(value);
                json.ascii(", \"create_if_not_exists\": true");
            }
        });
        calls.put(msgId, new Call(type, key, System.nanoTime() + timeoutMillis * 1_000_000, callback));
    }

    /**
     * The fields of a message's body this client and the cluster's own messages use: {@code value} when it is a JSON
     * string, else null, and {@code raw}, the value's JSON text as it came (so that two readings can be compared
     * even when neither is a string). The one place a lin-kv reply, or another node's message, is read.
     */
    record Body(Long inReplyTo, String type, Long code, String key, String value, String raw) {
        static Body read(byte[] line, int lineStart, int length) throws IOException {
            Long inReplyTo = null;
            String type = null;
            Long code = null;
            String key = null;
            String value = null;
            String raw = null;
            try (JsonParser parser = JSON.createParser(line, lineStart, length)) {
                parser.nextToken();
                while (parser.nextToken() == JsonToken.FIELD_NAME) {
                    boolean body = parser.currentName().equals("body");
                    if (parser.nextToken() != JsonToken.START_OBJECT || !body) {
                        parser.skipChildren();
                        continue;
                    }
                    while (parser.nextToken() == JsonToken.FIELD_NAME) {
                        String field = parser.currentName();
                        JsonToken token = parser.nextToken();
                        switch (field) {
                            case "in_reply_to" -> inReplyTo = longOrNull(PaymentNode.Value.read(parser, token));
                            case "type" -> type = stringOrNull(PaymentNode.Value.read(parser, token));
                            case "code" -> code = longOrNull(PaymentNode.Value.read(parser, token));
                            case "key" -> key = stringOrNull(PaymentNode.Value.read(parser, token));
                            case "value" -> {
                                int start = (int) parser.currentTokenLocation().getByteOffset();
                                value = token == JsonToken.VALUE_STRING ? parser.getText() : null;
                                parser.skipChildren();
                                int end = (int) parser.currentLocation().getByteOffset();
                                raw = new String(line, lineStart + start, end - start, StandardCharsets.UTF_8);
                            }
                            default -> parser.skipChildren();
                        }
                    }
                }
            }
            return new Body(inReplyTo, type, code, key, value, raw);
        }
    }

    /** Takes a reply to one of this node's calls; false when it is none. */
    boolean completes(String from, byte[] line, int lineStart, int length) throws IOException {
        if (!SERVICE.equals(from)) {
            return false;   // not lin-kv's
        }
        Body reply = Body.read(line, lineStart, length);
        Long inReplyTo = reply.inReplyTo();
        String type = reply.type();
        Long code = reply.code();
        Call call = inReplyTo == null ? null : calls.get(inReplyTo);
        if (call == null) {
            return false;   // late (timed out), or meant for an earlier process of this node
        }
        Outcome outcome = (call.type() + "_ok").equals(type) ? Outcome.OK
                : "error".equals(type) && code != null && code == 20 ? Outcome.MISSING
                : "error".equals(type) && code != null && code == 22 ? Outcome.EXISTS : null;
        if (outcome == null || outcome == Outcome.MISSING && call.type().equals("cas")) {
            // Not an answer this client can act on: the call ends at its deadline, as if lost (whoever
            // waits then reads the slot again, which decides).
            log.warn("lin-kv answered " + call.type() + " of " + call.key() + " with " + type + (code == null ? "" : " " + code)
                    + " (msg_id " + inReplyTo + "): taken for no answer");
            return true;
        }
        calls.remove(inReplyTo);
        call.callback().on(new Reply(outcome, reply.value(), reply.raw()));
        return true;
    }

    /** Nanoseconds from {@code now} until the oldest call is due; Long.MAX_VALUE when none is waiting. */
    long nanosToNextDeadline(long now) {
        return calls.isEmpty() ? Long.MAX_VALUE : calls.values().iterator().next().deadlineNanos() - now;
    }

    /** Ends every call past its deadline with TIMEOUT; a reply that comes later is ignored. */
    void expire() throws IOException {
        long now = System.nanoTime();
        for (int bound = calls.size(); bound > 0 && !calls.isEmpty(); bound--) {
            var oldest = calls.entrySet().iterator().next();
            if (oldest.getValue().deadlineNanos() - now > 0) {
                return;
            }
            calls.remove(oldest.getKey());
            oldest.getValue().callback().on(new Reply(Outcome.TIMEOUT, null, null));
        }
    }
}
