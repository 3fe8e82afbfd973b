package payment.harness;

import com.fasterxml.jackson.annotation.JsonIgnore;
import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * What happened in a run, in the order the harness saw it: one line of history.jsonl per event. A client's request
 * is an {@code invoke} (one per request sent, retries and duplicates included) and its completion: {@code ok} (an
 * *_ok reply), {@code fail} (a definite error: nothing was done, or the request was refused), or {@code info} (the
 * outcome is unknown: error 0 or 13, or no reply within the client's timeout). A reply that comes after its request
 * was completed is {@code late}. The nemesis's faults are {@code fault-start} and {@code fault-end}; a node's
 * {@code init} and {@code init_ok}, and a stdout line that is not JSON ({@code garbage}), are the harness's own. A
 * {@code stall} is the harness stopping the run because no request had been answered for --stall-timeout: what was
 * still open then was never answered.
 */
final class ClusterHistory {
    enum Type {
        INVOKE("invoke"), OK("ok"), FAIL("fail"), INFO("info"), LATE("late"), FAULT_START("fault-start"),
        FAULT_END("fault-end"), INIT("init"), INIT_OK("init_ok"), GARBAGE("garbage"), STALL("stall");

        final String label;

        Type(String label) {
            this.label = label;
        }

        static Type of(String label) {
            for (Type type : values()) {
                if (type.label.equals(label)) {
                    return type;
                }
            }
            throw new IllegalArgumentException("no history event type " + label);
        }
    }

    /** The phase of the run an operation belongs to: while faults run, healing after them, the final reads. */
    enum Phase {
        RUN, HEAL, FINAL;

        String label() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    /**
     * One event. {@code op} numbers a client's operations (a logical request and its retries share it);
     * {@code attempt} counts the requests of one operation from 1. {@code body} is the request's body on an invoke,
     * the reply's body on a completion (none after a timeout). {@code text} says in words what the body cannot
     * (a timeout, a fault, a line that is not JSON).
     */
    @JsonInclude(JsonInclude.Include.NON_NULL)
    record Event(long index, @JsonIgnore long nanos, String process, @JsonIgnore Type type, Integer op, Integer attempt,
                 String node, @JsonProperty("msg_id") Long msgId, String phase, String fault, JsonNode body, String text) {
        @JsonProperty("time_ms")
        double timeMillis() {
            return nanos / 1e6;
        }

        @JsonProperty("type")
        String typeLabel() {
            return type.label;
        }

        boolean is(Type wanted) {
            return type == wanted;
        }
    }

    private final long startNanos = System.nanoTime();
    private final List<Event> events = new ArrayList<>();

    long now() {
        return System.nanoTime() - startNanos;
    }

    /** Appends one event stamped now; the index is its place in the history. */
    synchronized Event add(String process, Type type, Integer op, Integer attempt, String node, Long msgId, ClusterHistory.Phase phase,
                           String fault, JsonNode body, String text) {
        Event event = new Event(events.size(), now(), process, type, op, attempt, node, msgId,
                phase == null ? null : phase.label(), fault, body, text);
        events.add(event);
        return event;
    }

    synchronized List<Event> events() {
        return List.copyOf(events);
    }

    static void write(List<Event> events, Path file, ObjectMapper json) throws IOException {
        try (BufferedWriter out = Files.newBufferedWriter(file, StandardCharsets.UTF_8)) {
            for (Event event : events) {
                out.write(json.writeValueAsString(event));
                out.write('\n');
            }
        }
    }

    /** Reads a history.jsonl back (a test's view of what a user finds in the folder). */
    static List<Event> read(Path file, ObjectMapper json) throws IOException {
        List<Event> events = new ArrayList<>();
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
            JsonNode node = json.readTree(line);
            events.add(new Event(node.path("index").asLong(), Math.round(node.path("time_ms").asDouble() * 1e6),
                    node.path("process").asText(), Type.of(node.path("type").asText()), intOrNull(node, "op"),
                    intOrNull(node, "attempt"), textOrNull(node, "node"), node.hasNonNull("msg_id") ? node.get("msg_id").asLong() : null,
                    textOrNull(node, "phase"), textOrNull(node, "fault"), node.get("body"), textOrNull(node, "text")));
        }
        return events;
    }

    private static Integer intOrNull(JsonNode node, String field) {
        return node.hasNonNull(field) ? node.get(field).asInt() : null;
    }

    private static String textOrNull(JsonNode node, String field) {
        return node.hasNonNull(field) ? node.get(field).asText() : null;
    }
}
