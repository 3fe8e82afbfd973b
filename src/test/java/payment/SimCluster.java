package payment;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import java.util.function.Predicate;

/**
 * Cluster nodes ({@code --store lin-kv}) run in this JVM on an in-test lin-kv, with the test as the network
 * between them: every message a node sends (to lin-kv or to a client) comes out here, and nothing reaches a
 * node unless the test delivers it. One message is delivered at a time, and the test then waits until the
 * node has handled it completely: each delivery is followed by a probe (a request of an unknown type, which
 * every node answers at once with error 10), and since a node handles its input in order, the probe's answer
 * means that everything the message caused has been printed. The nodes' only other source of events is their
 * lin-kv timeout; {@link #expireAll} makes that happen at a chosen moment (it waits until every call sent so
 * far is past it, then probes). So a schedule decided by the test gives the same run every time, as long as
 * the deliveries between two expiries take less wall time than {@code --kv-timeout} (a slower machine only
 * adds timeouts, which a client sees as "outcome unknown" and retries: it never makes a correct node fail).
 *
 * <p>The lin-kv is Maelstrom's ({@code src/maelstrom/service.clj}, persistent-kv behind a linearizable
 * wrapper): {@code read}, {@code write}, {@code cas} with {@code create_if_not_exists}; errors 20 (key does
 * not exist) and 22 (the value is not {@code from}); replies carry {@code in_reply_to} and no {@code msg_id};
 * values are compared whole (objects by their fields, in any order) and JSON numbers are read as doubles.
 * It is linearizable because it applies each request at the moment the test delivers it.
 */
final class SimCluster implements AutoCloseable {
    static final String KV = "lin-kv";
    private static final boolean TRACE = Boolean.getBoolean("sim.trace");
    /** For lin-kv's side of the wire: floats become doubles, as Maelstrom reads them. */
    static final ObjectMapper MAELSTROM_JSON = new ObjectMapper();
    /** For replies to clients: amounts exactly as written (100.50 is not 100.5). */
    static final ObjectMapper EXACT_JSON = new ObjectMapper().enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .setNodeFactory(JsonNodeFactory.withExactBigDecimals(true));

    /** A bound on messages in flight and on deliveries per run: a node that floods the network fails the test. */
    static final int MAX_IN_FLIGHT = 5_000;
    static final int MAX_DELIVERIES = 100_000;
    /** How long the test waits for a node to answer its probe before it calls the node stuck (not a timing assertion). */
    private static final long PROBE_PATIENCE_NANOS = 30_000_000_000L;

    /** One message on the wire, as its sender wrote it. */
    static final class Message {
        final long seq;
        final String src;
        final String dest;
        private JsonNode body;
        /** The virtual step from which the scheduler may deliver it. */
        long readyAt;
        /** The lin-kv key a request, or the request a reply answers, is about; null for other messages. */
        final String about;

        Message(long seq, String src, String dest, JsonNode body, long readyAt, String about) {
            this.seq = seq;
            this.src = src;
            this.dest = dest;
            this.body = body;
            this.readyAt = readyAt;
            this.about = about;
        }

        JsonNode body() {
            return body;
        }

        String type() {
            return body.path("type").asText();
        }

        String key() {
            return body.path("key").asText(null);
        }

        /** What lin-kv is asked to store ({@code value} of a write, {@code to} of a cas), or answers ({@code value} of a read_ok). */
        JsonNode storedValue() {
            return body.has("to") ? body.get("to") : body.get("value");
        }

        /** A network that corrupts: the message arrives with another body. */
        void replaceBody(JsonNode newBody) {
            this.body = newBody;
        }

        Message copy(long newSeq, long newReadyAt) {
            return new Message(newSeq, src, dest, body.deepCopy(), newReadyAt, about);
        }

        String line() {
            ObjectNode envelope = MAELSTROM_JSON.createObjectNode();
            envelope.put("src", src);
            envelope.put("dest", dest);
            envelope.set("body", body);
            try {
                return MAELSTROM_JSON.writeValueAsString(envelope);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        @Override
        public String toString() {
            return src + "->" + dest + " " + body;
        }
    }

    // ---- lin-kv ------------------------------------------------------------------------------------------

    // ---- one node, in this JVM -----------------------------------------------------------------------------

    /** A node's stdin: blocks its reader thread until the test writes, ends when the test closes it. */
    static final class Pipe extends InputStream {
        private static final int MAX_QUEUED_BYTES = 1 << 24;
        private final ArrayDeque<byte[]> chunks = new ArrayDeque<>();
        private int offset;
        private int queued;
        private boolean closed;

        synchronized void write(String text) {
            if (closed) {
                throw new IllegalStateException("the node's input is closed");
            }
            byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
            if (queued + bytes.length > MAX_QUEUED_BYTES) {
                throw new IllegalStateException("the node reads no input: " + queued + " bytes waiting");
            }
            chunks.add(bytes);
            queued += bytes.length;
            notifyAll();
        }

        @Override
        public synchronized void close() {
            closed = true;
            notifyAll();
        }

        @Override
        public synchronized int read() throws IOException {
            byte[] one = new byte[1];
            return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
        }

        @Override
        public synchronized int read(byte[] into, int off, int len) throws IOException {
            if (len == 0) {
                return 0;
            }
            while (chunks.isEmpty() && !closed) {
                try {
                    wait();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new InterruptedIOException();
                }
            }
            if (chunks.isEmpty()) {
                return -1;
            }
            byte[] head = chunks.peek();
            int n = Math.min(len, head.length - offset);
            System.arraycopy(head, offset, into, off, n);
            offset += n;
            queued -= n;
            if (offset == head.length) {
                chunks.poll();
                offset = 0;
            }
            return n;
        }
    }

    /** A node's stdout, cut into lines for the test. */
    static final class Lines extends OutputStream {
        private static final int MAX_LINES = 100_000;
        private final ByteArrayOutputStream partial = new ByteArrayOutputStream();
        private final ArrayDeque<String> lines = new ArrayDeque<>();

        @Override
        public synchronized void write(int b) throws IOException {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public synchronized void write(byte[] bytes, int off, int len) throws IOException {
            for (int i = off; i < off + len; i++) {
                if (bytes[i] == '\n') {
                    if (lines.size() >= MAX_LINES) {
                        throw new IOException("the test reads no output: " + lines.size() + " lines waiting");
                    }
                    lines.add(partial.toString(StandardCharsets.UTF_8));
                    partial.reset();
                } else {
                    partial.write(bytes[i]);
                }
            }
            notifyAll();
        }

        /** The next line, or null if none came within {@code nanos}. */
        synchronized String take(long nanos) throws InterruptedException {
            long deadline = System.nanoTime() + nanos;
            while (lines.isEmpty()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    return null;
                }
                wait(Math.max(1, left / 1_000_000));
            }
            return lines.poll();
        }
    }

    /** One process of a node: killed by closing its stdin and never reading its output again. */
    static final class NodeProcess {
        final String id;
        private final Pipe stdin = new Pipe();
        private final Lines stdout = new Lines();
        private final Thread serving;
        private long probes;
        /** The highest msg_id it has used: its successor must start past it. */
        long maxMsgId;

        NodeProcess(String id, List<String> nodeIds, long kvTimeoutMillis, OutputStream stderr, List<String> options) {
            this.id = id;
            PaymentNode node;
            List<String> args = new ArrayList<>(List.of("--store", "lin-kv", "--kv-timeout", Long.toString(kvTimeoutMillis)));
            args.addAll(options);
            try {
                node = CommandLine.fromOptions(CommandLine.Options.parse(args.toArray(new String[0])), stdout,
                        new PaymentNode.Log(new PrintStream(stderr, true, StandardCharsets.UTF_8), false));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            serving = new Thread(() -> node.serve(stdin), "node " + id);
            serving.setDaemon(true);
            serving.start();
        }

        /** Everything the node printed after handling {@code line} (none: only the probe). */
        List<JsonNode> deliver(String line) {
            long probe = ++probes;
            stdin.write((line == null ? "" : line + "\n") + "{\"src\":\"probe\",\"dest\":\"" + id
                    + "\",\"body\":{\"type\":\"probe\",\"msg_id\":" + probe + "}}\n");
            List<JsonNode> printed = new ArrayList<>();
            long deadline = System.nanoTime() + PROBE_PATIENCE_NANOS;
            for (int bound = 0; bound < Lines.MAX_LINES; bound++) {
                String text;
                try {
                    text = stdout.take(deadline - System.nanoTime());
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException(e);
                }
                if (text == null) {
                    throw new AssertionError("node " + id + " did not answer a probe: it is stuck (after " + line + ")");
                }
                JsonNode message;
                try {
                    message = EXACT_JSON.readTree(text);
                } catch (IOException e) {
                    throw new AssertionError("node " + id + " printed a line that is not JSON: " + text, e);
                }
                maxMsgId = Math.max(maxMsgId, message.path("body").path("msg_id").asLong(0));
                if ("probe".equals(message.path("dest").asText())) {
                    if (message.path("body").path("in_reply_to").asLong() == probe) {
                        return printed;
                    }
                    continue;
                }
                printed.add(message);
            }
            throw new AssertionError("node " + id + " printed more than " + Lines.MAX_LINES + " lines for one message");
        }

        void kill() {
            stdin.close();
        }

        /** After its input ended, a node returns once its lin-kv calls are answered or timed out. */
        void awaitExit(long millis) throws InterruptedException {
            serving.join(millis);
        }
    }

    // ---- the network -----------------------------------------------------------------------------------

    /** What the scripted network does with one message. */
    enum Fate { DELIVER, HOLD, DROP }

    interface Rule {
        /** May also corrupt the message ({@link Message#replaceBody}) before it is delivered. */
        Fate fate(Message message);
    }

    static final Rule HONEST = message -> Fate.DELIVER;

    /** Maelstrom's lin-kv, each request applied whole when it is delivered (the one store the lin-kv fakes share). */
    final LinKvStore kv = new LinKvStore(MAELSTROM_JSON);
    final List<String> nodeIds;
    final long kvTimeoutMillis;
    private final Map<String, NodeProcess> nodes = new LinkedHashMap<>();
    private final List<NodeProcess> killed = new ArrayList<>();
    final List<Message> inFlight = new ArrayList<>();
    final List<Message> held = new ArrayList<>();
    /** Every reply a node sent to a client, in the order they came out. */
    final List<JsonNode> clientReplies = new ArrayList<>();
    private final Consumer<JsonNode> onClientReply;
    private final OutputStream stderr;
    private long seq;
    long deliveries;
    long timeJumps;
    /** True while {@link #expireAll} lets time pass: a timeout then is one the scheduler caused. */
    boolean expiring;
    private long lastKvRequestNanos;
    /** The virtual clock of the random scheduler: one tick per delivery. */
    long now;
    /** How many ticks a new message waits before it may be delivered: none, unless a scheduler says so. */
    java.util.function.ToLongFunction<Message> delays = message -> 0;

    /** The command-line options every node gets beyond --store lin-kv and --kv-timeout (--balance, --fault, ...). */
    private final List<String> options;

    SimCluster(List<String> nodeIds, long kvTimeoutMillis, OutputStream stderr, Consumer<JsonNode> onClientReply, String... options) {
        this.options = List.of(options);
        this.nodeIds = List.copyOf(nodeIds);
        this.kvTimeoutMillis = kvTimeoutMillis;
        this.stderr = stderr;
        this.onClientReply = onClientReply;
        for (String id : nodeIds) {
            start(id);
        }
    }

    private void start(String id) {
        NodeProcess node = new NodeProcess(id, nodeIds, kvTimeoutMillis, stderr, options);
        nodes.put(id, node);
        StringBuilder ids = new StringBuilder();
        for (String other : nodeIds) {
            ids.append(ids.length() == 0 ? "" : ",").append('"').append(other).append('"');
        }
        handleOutput(node.deliver("{\"src\":\"c0\",\"dest\":\"" + id + "\",\"body\":{\"type\":\"init\",\"msg_id\":1,\"node_id\":\""
                + id + "\",\"node_ids\":[" + ids + "]}}"));
    }

    /**
     * SIGKILL and restart: the process is discarded with its memory (what it sent is still on the wire), and a
     * new one starts under the same id with a new init. The new one numbers its lin-kv requests from the clock
     * in ms x 1000 (docs/CLUSTER.md); the test waits until that is past every number the old one used, as it
     * would be after any real restart, so that a late reply to the old process is never the new one's answer.
     */
    void kill(String id) {
        NodeProcess old = nodes.remove(id);
        old.kill();
        killed.add(old);
        for (int bound = 0; bound < 10_000 && System.currentTimeMillis() * 1000 <= old.maxMsgId; bound++) {
            sleepMillis(1);
        }
        start(id);
    }

    /** A client's request, straight into the node's input (clients are not behind the lossy network). */
    void request(String node, String client, String body) {
        deliverToNode(node, "{\"src\":\"" + client + "\",\"dest\":\"" + node + "\",\"body\":" + body + "}");
    }

    private void deliverToNode(String node, String line) {
        if (++deliveries > MAX_DELIVERIES) {
            throw new AssertionError("more than " + MAX_DELIVERIES + " deliveries: the nodes never settle");
        }
        handleOutput(nodes.get(node).deliver(line));
    }

    private void handleOutput(List<JsonNode> printed) {
        for (JsonNode message : printed) {
            String dest = message.path("dest").asText();
            if (KV.equals(dest)) {
                lastKvRequestNanos = System.nanoTime();
                try {
                    // Re-read as lin-kv reads it: its numbers are doubles.
                    JsonNode asRead = MAELSTROM_JSON.readTree(message.get("body").toString());
                    enqueue(message.path("src").asText(), KV, asRead, now, asRead.path("key").asText());
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            } else if (nodes.containsKey(dest)) {
                // One node to another (a forwarded batch, a landed slot): on the wire like any message, and it
                // counts as a call for expireAll (a forward not brought in time is what lets its node go on).
                lastKvRequestNanos = System.nanoTime();
                enqueue(message.path("src").asText(), dest, message.get("body"), now, null);
            } else if (!"c0".equals(dest)) {
                clientReplies.add(message);
                if (onClientReply != null) {
                    onClientReply.accept(message);
                }
            }
        }
    }

    /** {@code key}: the lin-kv key a request or its reply is about (null: none). */
    Message enqueue(String src, String dest, JsonNode body, long readyAt, String key) {
        if (inFlight.size() >= MAX_IN_FLIGHT) {
            throw new AssertionError("more than " + MAX_IN_FLIGHT + " messages in flight");
        }
        Message message = new Message(++seq, src, dest, body, readyAt, key);
        message.readyAt += delays.applyAsLong(message);
        inFlight.add(message);
        return message;
    }

    /** Duplicates a message in flight: the copy may arrive at another time. */
    void duplicate(Message message, long readyAt) {
        if (inFlight.size() < MAX_IN_FLIGHT) {
            inFlight.add(message.copy(++seq, readyAt));
        }
    }

    /** Delivers one message (taken off the wire): lin-kv applies a request at once and sends its reply. */
    void deliver(Message message) {
        if (TRACE) {
            System.out.println("TRACE " + now + " " + message);
        }
        inFlight.remove(message);
        if (KV.equals(message.dest)) {
            if (++deliveries > MAX_DELIVERIES) {
                throw new AssertionError("more than " + MAX_DELIVERIES + " deliveries: the nodes never settle");
            }
            ObjectNode reply = kv.handle(message.body());
            if (reply != null) {
                enqueue(KV, message.src, reply, now, message.about);
            }
        } else if (nodes.containsKey(message.dest)) {
            deliverToNode(message.dest, message.line());
        }
    }

    /** The entries of the log as lin-kv holds them, slot 1 first, up to the first slot that does not exist. */
    List<ClusterService.LogEntry> logEntries() {
        List<ClusterService.LogEntry> entries = new ArrayList<>();
        for (JsonNode value; (value = kv.get(ClusterService.slotKey(entries.size() + 1))) != null; ) {
            entries.add(ClusterService.LogEntry.decode(value.asText()));
        }
        return entries;
    }

    void drop(Message message) {
        inFlight.remove(message);
    }

    /**
     * Lets time pass: waits until every lin-kv call sent so far is past its timeout, then probes every node,
     * which answers each call still open (error 0). Late replies stay on the wire and are ignored when they come.
     */
    void expireAll() {
        timeJumps++;
        expiring = true;
        long due = lastKvRequestNanos + (kvTimeoutMillis + 2) * 1_000_000;
        for (long left; (left = due - System.nanoTime()) > 0; ) {
            sleepMillis(Math.max(1, left / 1_000_000));
        }
        for (String id : List.copyOf(nodes.keySet())) {
            deliverToNode(id, null);
        }
        expiring = false;
    }

    /** The scripted network: delivers, in the order sent, every message the rule lets through, until none is left. */
    void runUntilQuiet(Rule rule) {
        for (int bound = 0; bound < MAX_DELIVERIES && !inFlight.isEmpty(); bound++) {
            Message next = inFlight.get(0);
            switch (rule.fate(next)) {
                case DELIVER -> deliver(next);
                case HOLD -> {
                    inFlight.remove(next);
                    held.add(next);
                }
                case DROP -> drop(next);
            }
        }
    }

    /** Puts the held messages that match back on the wire (they are judged again). */
    void release(Predicate<Message> which) {
        for (Message message : List.copyOf(held)) {
            if (which.test(message)) {
                held.remove(message);
                inFlight.add(message);
            }
        }
    }

    /** The held messages are lost for good. */
    void dropHeld() {
        held.clear();
    }

    NodeProcess node(String id) {
        return nodes.get(id);
    }

    private static void sleepMillis(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        }
    }

    /** Ends every process; each returns once its lin-kv calls have timed out. */
    @Override
    public void close() {
        for (NodeProcess node : nodes.values()) {
            node.kill();
        }
        killed.addAll(nodes.values());
        nodes.clear();
    }

    /** A test's teardown: the cluster's nodes killed, and waited for (nothing to do when the test made none). */
    static void shutDown(SimCluster cluster) throws InterruptedException {
        if (cluster != null) {
            cluster.close();
            cluster.awaitExits();
        }
    }

    /** Waits for every process ever started here to return (at most one kv timeout and a margin each). */
    void awaitExits() throws InterruptedException {
        for (NodeProcess node : killed) {
            node.awaitExit(kvTimeoutMillis + 5_000);
        }
        killed.clear();
    }
}
