package payment;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.util.HashMap;
import java.util.Map;

/**
 * Maelstrom's lin-kv as a store ({@code src/maelstrom/service.clj}: persistent-kv behind a linearizable
 * wrapper), without a network: {@code read}, {@code write}, {@code cas} with {@code create_if_not_exists};
 * errors 20 (key does not exist) and 22 (the value is not {@code from}); values compared whole (objects by
 * their fields, in any order). Each request is applied whole when it is handed over, which is what makes it
 * linearizable. The network around it (delays, losses, duplicates) is the caller's: {@link SimCluster} uses
 * it today, and the harness's lin-kv service can (it has the same semantics, written out again), so that
 * there is one lin-kv fake.
 */
public final class LinKvStore {
    private final ObjectMapper json;
    private final Map<JsonNode, JsonNode> values = new HashMap<>();

    /** {@code json}: the mapper whose nodes the replies are made of (as lin-kv reads JSON: numbers as doubles). */
    public LinKvStore(ObjectMapper json) {
        this.json = json;
    }

    /** The reply body to a request body (with its {@code in_reply_to}), or null: a type lin-kv does not serve gets no reply. */
    public synchronized ObjectNode handle(JsonNode request) {
        ObjectNode reply = json.createObjectNode();
        JsonNode key = request.path("key");
        JsonNode current = values.get(key);
        switch (request.path("type").asText()) {
            case "read" -> {
                if (current == null) {
                    error(reply, 20, "key does not exist");
                } else {
                    reply.put("type", "read_ok");
                    reply.set("value", current.deepCopy());
                }
            }
            case "write" -> {
                values.put(key.deepCopy(), request.get("value").deepCopy());
                reply.put("type", "write_ok");
            }
            case "cas" -> {
                if (current == null && request.path("create_if_not_exists").asBoolean(false) || current != null && current.equals(request.get("from"))) {
                    values.put(key.deepCopy(), request.get("to").deepCopy());
                    reply.put("type", "cas_ok");
                } else if (current == null) {
                    error(reply, 20, "key does not exist");
                } else {
                    error(reply, 22, "current value " + current + " is not " + request.get("from"));
                }
            }
            default -> {
                return null;
            }
        }
        reply.set("in_reply_to", request.path("msg_id"));
        return reply;
    }

    /** The value under a string key, or null. */
    public synchronized JsonNode get(String key) {
        JsonNode value = values.get(json.getNodeFactory().textNode(key));
        return value == null ? null : value.deepCopy();
    }

    private static void error(ObjectNode reply, int code, String text) {
        reply.put("type", "error");
        reply.put("code", code);
        reply.put("text", text);
    }
}
