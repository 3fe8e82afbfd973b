package payment;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.DelayQueue;
import java.util.concurrent.Delayed;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A Maelstrom-style cluster on one machine, to test the payment nodes as Maelstrom would: it starts N node
 * processes with one command line in one working directory, sends each its init (node_id, node_ids), routes
 * every message between nodes, clients and services, plays Maelstrom's lin-kv service (read, write, cas with
 * create_if_not_exists, errors 20 and 22, linearizable, with random latency that reorders its replies), and
 * kills nodes with SIGKILL and restarts them with the same command and a new init, as Maelstrom's kill nemesis
 * does. Clients run sagas against random nodes (charges, compensations, some before their charge, retries
 * after timeouts to another node, duplicate retries, PaymentStatus reads), and a checker reads every answer.
 * The choices are seeded; the timing is the machine's.
 *
 * <p>Run it: {@code tests/cluster.sh [--nodes 3] [--seed 1] [--kills 4] [--sagas 100] [--no-store] [--measure]}.
 */
final class ClusterHarness {
    static final String KV = "lin-kv";
    private static final JsonFactory JSON = new JsonFactory();

    /** What to run. {@code nodeCommand} starts one node (the harness adds nothing to it). */
    record Settings(List<String> nodeCommand, int nodes, int clients, int sagasPerClient, long seed, int kills,
                    int maxKvLatencyMillis, long clientTimeoutMillis, Path workDir) {
    }

    /** What happened, and what the checker found wrong (nothing, for a correct cluster). */
    record Report(int requests, int answered, Map<String, Integer> replies, int kills, int nonJsonLines,
                  List<String> anomalies, long charges, double seconds, long p50Micros, long p99Micros, Map<String, Long> kvCalls) {
        boolean valid() {
            return anomalies.isEmpty() && nonJsonLines == 0;
        }

        String summary() {
            StringBuilder text = new StringBuilder();
            text.append(String.format("requests: %d sent, %d answered; replies by type: %s%n", requests, answered, new TreeMap<>(replies)));
            text.append(String.format("kills: %d; stdout lines that were not JSON: %d%n", kills, nonJsonLines));
            text.append(String.format("first charges: %d in %.1f s (%.0f/s); charge latency p50 %.1f ms, p99 %.1f ms%n",
                    charges, seconds, charges / seconds, p50Micros / 1000.0, p99Micros / 1000.0));
            text.append(String.format("lin-kv calls: %s%n", new TreeMap<>(kvCalls)));
            text.append(String.format("anomalies: %d%n", anomalies.size()));
            anomalies.stream().limit(20).forEach(anomaly -> text.append("  ").append(anomaly).append('\n'));
            text.append(valid() ? "verdict: VALID\n" : "verdict: INVALID\n");
            return text.toString();
        }
    }

    // ---- JSON, as plain Java values (maps, lists, strings, longs, doubles: numbers as Maelstrom reads them) ----

    static Object parse(String text) throws IOException {
        try (JsonParser parser = JSON.createParser(text)) {
            Object value = read(parser, parser.nextToken());
            if (parser.nextToken() != null) {
                throw new IOException("more data after the JSON value");
            }
            return value;
        }
    }

    private static Object read(JsonParser parser, JsonToken token) throws IOException {
        if (token == null) {
            throw new IOException("no JSON value");
        }
        switch (token) {
            case START_OBJECT -> {
                Map<String, Object> object = new LinkedHashMap<>();
                while (parser.nextToken() == JsonToken.FIELD_NAME) {
                    String name = parser.currentName();
                    object.put(name, read(parser, parser.nextToken()));
                }
                return object;
            }
            case START_ARRAY -> {
                List<Object> array = new ArrayList<>();
                for (JsonToken item = parser.nextToken(); item != JsonToken.END_ARRAY; item = parser.nextToken()) {
                    array.add(read(parser, item));
                }
                return array;
            }
            case VALUE_STRING -> {
                return parser.getText();
            }
            case VALUE_NUMBER_INT -> {
                return parser.getLongValue();
            }
            case VALUE_NUMBER_FLOAT -> {
                return parser.getDoubleValue();
            }
            case VALUE_TRUE, VALUE_FALSE -> {
                return token == JsonToken.VALUE_TRUE;
            }
            default -> {
                return null;
            }
        }
    }

    static String write(Object value) {
        StringWriter out = new StringWriter();
        try (JsonGenerator generator = JSON.createGenerator(out)) {
            write(generator, value);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        return out.toString();
    }

    private static void write(JsonGenerator generator, Object value) throws IOException {
        if (value instanceof Map<?, ?> map) {
            generator.writeStartObject();
            for (Map.Entry<?, ?> field : map.entrySet()) {
                generator.writeFieldName((String) field.getKey());
                write(generator, field.getValue());
            }
            generator.writeEndObject();
        } else if (value instanceof List<?> list) {
            generator.writeStartArray();
            for (Object item : list) {
                write(generator, item);
            }
            generator.writeEndArray();
        } else if (value instanceof String text) {
            generator.writeString(text);
        } else if (value instanceof Long number) {
            generator.writeNumber(number);
        } else if (value instanceof Double number) {
            generator.writeNumber(number);
        } else if (value instanceof RawNumber raw) {
            generator.writeNumber(raw.digits());
        } else if (value instanceof Boolean bool) {
            generator.writeBoolean(bool);
        } else {
            generator.writeNull();
        }
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> body(Map<String, Object> message) {
        return (Map<String, Object>) message.get("body");
    }

    // ---- the network ---------------------------------------------------------------------------------

    private final Settings settings;
    private final List<String> nodeIds = new ArrayList<>();
    private final Map<String, NodeProcess> nodes = new ConcurrentHashMap<>();
    private final Map<String, BlockingQueue<Map<String, Object>>> inboxes = new ConcurrentHashMap<>();
    private final LinKv linKv;
    private final AtomicInteger nonJsonLines = new AtomicInteger();
    private final AtomicInteger kills = new AtomicInteger();
    private final AtomicLong harnessMsgIds = new AtomicLong(1);

    /** The harness's own inbox: init_ok replies. */
    private final BlockingQueue<Map<String, Object>> initReplies = new LinkedBlockingQueue<>();
    private final AtomicInteger inits = new AtomicInteger();

    ClusterHarness(Settings settings) {
        this.settings = settings;
        inboxes.put("c0", initReplies);
        this.linKv = new LinKv(settings.seed(), settings.maxKvLatencyMillis());
        for (int i = 1; i <= settings.nodes(); i++) {
            nodeIds.add("n" + i);
        }
    }

    /** Where a message goes: lin-kv, a client, or a node (dropped while that node is down). */
    void route(Map<String, Object> message) {
        String dest = String.valueOf(message.get("dest"));
        if (KV.equals(dest)) {
            linKv.receive(message);
        } else if (inboxes.containsKey(dest)) {
            inboxes.get(dest).add(message);
        } else if (nodes.containsKey(dest)) {
            nodes.get(dest).send(write(message));
        }
    }

    /** One node: its process, restarted under the same id after a kill. */
    final class NodeProcess {
        final String id;
        private Process process;
        private OutputStream stdin;

        NodeProcess(String id) {
            this.id = id;
        }

        synchronized void start() throws IOException {
            ProcessBuilder builder = new ProcessBuilder(settings.nodeCommand()).directory(settings.workDir().toFile());
            builder.redirectError(ProcessBuilder.Redirect.appendTo(settings.workDir().resolve(id + ".stderr").toFile()));
            process = builder.start();
            stdin = process.getOutputStream();
            Process mine = process;
            Thread reader = new Thread(() -> readStdout(mine), id + "-stdout");
            reader.setDaemon(true);
            reader.start();
            Map<String, Object> init = new LinkedHashMap<>();
            init.put("type", "init");
            init.put("msg_id", harnessMsgIds.getAndIncrement());
            init.put("node_id", id);
            init.put("node_ids", new ArrayList<>(nodeIds));
            inits.incrementAndGet();
            send(write(Map.of("src", "c0", "dest", id, "body", init)));
        }

        private void readStdout(Process mine) {
            try (BufferedReader stdout = new BufferedReader(new InputStreamReader(mine.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = stdout.readLine()) != null; ) {
                    Object message;
                    try {
                        message = parse(line);
                    } catch (IOException notJson) {
                        if (mine.isAlive()) {   // a line cut by a kill is not the node's fault
                            nonJsonLines.incrementAndGet();
                            System.err.println("cluster: " + id + " wrote a line that is not JSON: " + line);
                        }
                        continue;
                    }
                    if (message instanceof Map<?, ?> map && map.get("body") instanceof Map<?, ?>) {
                        @SuppressWarnings("unchecked")
                        Map<String, Object> m = (Map<String, Object>) map;
                        route(m);
                    } else {
                        nonJsonLines.incrementAndGet();
                    }
                }
            } catch (IOException killed) {
                // the pipe closes when the node is killed
            }
        }

        synchronized void send(String line) {
            if (process == null || !process.isAlive()) {
                return;   // a node that is down loses its messages, as on a real network
            }
            try {
                stdin.write((line + "\n").getBytes(StandardCharsets.UTF_8));
                stdin.flush();
            } catch (IOException down) {
                // killed meanwhile
            }
        }

        void kill() throws InterruptedException {
            Process victim;
            synchronized (this) {
                victim = process;
            }
            victim.destroyForcibly();   // SIGKILL
            victim.waitFor(10, TimeUnit.SECONDS);
        }

        synchronized void stop() throws InterruptedException {
            if (process != null) {
                try {
                    stdin.close();
                } catch (IOException ignored) {
                    // already gone
                }
                if (!process.waitFor(10, TimeUnit.SECONDS)) {
                    process.destroyForcibly();
                }
            }
        }
    }

    // ---- lin-kv, as Maelstrom's service.clj has it -------------------------------------------------------

    /**
     * Maelstrom's lin-kv: a map behind one lock, so every operation takes effect at one instant between its
     * request and its reply (linearizable). Replies leave after a random latency, so they can overtake each
     * other. They carry in_reply_to and no msg_id, as Maelstrom's services' replies do.
     */
    final class LinKv {
        private final Map<Object, Object> store = new HashMap<>();
        private final DelayQueue<DelayedReply> outbox = new DelayQueue<>();
        private final Random random;
        private final int maxLatencyMillis;
        final Map<String, AtomicLong> calls = new ConcurrentHashMap<>();
        private final Thread postman;

        LinKv(long seed, int maxLatencyMillis) {
            this.random = new Random(seed);
            this.maxLatencyMillis = maxLatencyMillis;
            postman = new Thread(() -> {
                try {
                    while (true) {
                        route(outbox.take().message());
                    }
                } catch (InterruptedException stopped) {
                    // the harness is done
                }
            }, "lin-kv");
            postman.setDaemon(true);
            postman.start();
        }

        void receive(Map<String, Object> request) {
            Map<String, Object> body = body(request);
            Map<String, Object> reply = new LinkedHashMap<>();
            int latency;
            synchronized (this) {
                String type = String.valueOf(body.get("type"));
                calls.computeIfAbsent(type, t -> new AtomicLong()).incrementAndGet();
                Object key = body.get("key");
                switch (type) {
                    case "read" -> {
                        if (store.containsKey(key)) {
                            reply.put("type", "read_ok");
                            reply.put("value", store.get(key));
                        } else {
                            error(reply, 20, "key does not exist");
                        }
                    }
                    case "write" -> {
                        store.put(key, body.get("value"));
                        reply.put("type", "write_ok");
                    }
                    case "cas" -> {
                        if (store.containsKey(key)) {
                            if (Objects.equals(body.get("from"), store.get(key))) {
                                store.put(key, body.get("to"));
                                reply.put("type", "cas_ok");
                            } else {
                                error(reply, 22, "current value " + write(store.get(key)) + " is not " + write(body.get("from")));
                            }
                        } else if (Boolean.TRUE.equals(body.get("create_if_not_exists"))) {
                            store.put(key, body.get("to"));
                            reply.put("type", "cas_ok");
                        } else {
                            error(reply, 20, "key does not exist");
                        }
                    }
                    default -> error(reply, 10, "unsupported message type: " + type);
                }
                latency = random.nextInt(maxLatencyMillis + 1);
            }
            reply.put("in_reply_to", body.get("msg_id"));
            Map<String, Object> message = new LinkedHashMap<>();
            message.put("src", KV);
            message.put("dest", request.get("src"));
            message.put("body", reply);
            outbox.add(new DelayedReply(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(latency), message));
        }

        private void error(Map<String, Object> reply, long code, String text) {
            reply.put("type", "error");
            reply.put("code", code);
            reply.put("text", text);
        }

        synchronized Map<Object, Object> snapshot() {
            return new HashMap<>(store);
        }

        long total() {
            return calls.values().stream().mapToLong(AtomicLong::get).sum();
        }
    }

    record DelayedReply(long due, Map<String, Object> message) implements Delayed {
        @Override
        public long getDelay(TimeUnit unit) {
            return unit.convert(due - System.nanoTime(), TimeUnit.NANOSECONDS);
        }

        @Override
        public int compareTo(Delayed other) {
            return Long.compare(due, ((DelayedReply) other).due);
        }
    }

    // ---- clients ----------------------------------------------------------------------------------------

    /** One request and every reply it got, on any attempt. */
    record Exchange(Map<String, Object> request, List<Map<String, Object>> replies, long firstSentNanos, long answeredNanos) {
    }

    private final List<Exchange> history = Collections.synchronizedList(new ArrayList<>());

    /** A client: sends one request at a time and retries it, after a timeout or an indefinite error, on another node. */
    final class Client {
        final String id;
        final Random random;
        final BlockingQueue<Map<String, Object>> inbox = new LinkedBlockingQueue<>();
        private long nextMsgId = 1;

        Client(String id, long seed) {
            this.id = id;
            this.random = new Random(seed);
            inboxes.put(id, inbox);
        }

        String anyNode() {
            return nodeIds.get(random.nextInt(nodeIds.size()));
        }

        /** A node other than {@code previous} (when there is one). */
        String otherNode(String previous) {
            if (nodeIds.size() == 1) {
                return previous;
            }
            String other = nodeIds.get(random.nextInt(nodeIds.size() - 1));
            return other.equals(previous) ? nodeIds.get(nodeIds.size() - 1) : other;
        }

        /** Sends {@code body} until a definite answer comes (at most 6 attempts); returns that answer, or null. */
        Map<String, Object> call(Map<String, Object> body, String node, boolean duplicate) throws InterruptedException {
            List<Map<String, Object>> replies = new ArrayList<>();
            long first = System.nanoTime();
            Map<String, Object> answer = null;
            String target = node;
            for (int attempt = 0; attempt < 6 && answer == null; attempt++) {
                Map<String, Object> request = new LinkedHashMap<>(body);
                long msgId = nextMsgId++;
                request.put("msg_id", msgId);
                target = attempt == 0 ? node : otherNode(target);   // a retry after a timeout goes to another node
                nodes.get(target).send(write(Map.of("src", id, "dest", target, "body", request)));
                if (duplicate && attempt == 0) {   // the same request twice at once, to two nodes
                    Map<String, Object> twin = new LinkedHashMap<>(body);
                    twin.put("msg_id", nextMsgId++);
                    String other = anyNode();
                    nodes.get(other).send(write(Map.of("src", id, "dest", other, "body", twin)));
                }
                long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(settings.clientTimeoutMillis());
                while (true) {
                    long left = deadline - System.nanoTime();
                    Map<String, Object> reply = left <= 0 ? null : inbox.poll(left, TimeUnit.NANOSECONDS);
                    if (reply == null) {
                        break;   // timed out: try another node
                    }
                    replies.add(reply);
                    Object inReplyTo = body(reply).get("in_reply_to");
                    if (inReplyTo instanceof Long id && id == msgId) {
                        Object code = body(reply).get("code");
                        boolean indefinite = code instanceof Long c && (c == 0 || c == 11 || c == 13);
                        if (!indefinite) {
                            answer = reply;
                        }
                        break;
                    }
                }
            }
            history.add(new Exchange(body, replies, first, answer == null ? 0 : System.nanoTime()));
            return answer;
        }

        /** Sagas: charges, their retries, compensations (some before their charge), status reads, partial refunds. */
        void run(int sagas) throws InterruptedException {
            for (int n = 1; n <= sagas; n++) {
                String saga = id + "-saga" + n;
                String amount = (1 + random.nextInt(500)) + "." + (10 + random.nextInt(90));
                int kind = random.nextInt(100);
                if (kind < 15) {   // the compensation comes first; the late charge must never charge
                    call(refund(saga, 1, null, null), anyNode(), random.nextBoolean());
                    call(charge(saga, 1, amount), anyNode(), false);
                    continue;
                }
                Map<String, Object> charged = call(charge(saga, 1, amount), anyNode(), random.nextInt(4) == 0);
                if (random.nextInt(3) == 0) {
                    call(charge(saga, 1, amount), anyNode(), false);   // a retry elsewhere: the same payment
                }
                if (random.nextInt(4) == 0) {
                    call(status(saga, 1), anyNode(), false);
                }
                String paymentId = charged == null ? null : paymentIdOf(charged);
                if (paymentId != null && kind < 30) {   // partial refunds of one payment under other steps' keys
                    String half = new BigDecimal(amount).divide(BigDecimal.valueOf(2)).toPlainString();
                    for (int step = 7; step <= 9; step++) {
                        call(refund(saga, step, paymentId, half), anyNode(), random.nextBoolean());
                    }
                } else if (kind < 70) {
                    call(refund(saga, 1, null, null), anyNode(), random.nextInt(4) == 0);
                    if (random.nextBoolean()) {
                        call(refund(saga, 1, null, null), anyNode(), false);
                    }
                }
                if (random.nextInt(4) == 0) {
                    call(status(saga, 1), anyNode(), false);
                }
            }
        }
    }

    static Map<String, Object> charge(String saga, long step, String amount) {
        Map<String, Object> params = new LinkedHashMap<>();
        params.put("user_id", "u" + Math.abs(saga.hashCode() % 10));
        params.put("amount", new RawNumber(amount));
        return body("ChargePayment", saga, step, params);
    }

    static Map<String, Object> refund(String saga, long step, String paymentId, String amount) {
        Map<String, Object> params = new LinkedHashMap<>();
        if (paymentId != null) {
            params.put("payment_id", paymentId);
        }
        if (amount != null) {
            params.put("amount", new RawNumber(amount));
        }
        Map<String, Object> body = body("RefundPayment", saga, step, params);
        body.put("compensating", true);
        return body;
    }

    static Map<String, Object> status(String saga, long step) {
        return body("PaymentStatus", saga, step, null);
    }

    private static Map<String, Object> body(String type, String saga, long step, Map<String, Object> params) {
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("type", type);
        body.put("saga_id", saga);
        body.put("step", step);
        if (params != null) {
            body.put("params", params);
        }
        return body;
    }

    /** An amount written with its own digits (a double would print 100.5 for 100.50). */
    record RawNumber(String digits) {
    }

    private static String paymentIdOf(Map<String, Object> reply) {
        Object result = body(reply).get("result");
        return result instanceof Map<?, ?> map ? (String) map.get("payment_id") : null;
    }

    // ---- a run -----------------------------------------------------------------------------------------

    /** Starts every node (each gets its init), and gives them a moment to answer it. */
    private void startNodes() throws IOException, InterruptedException {
        Files.createDirectories(settings.workDir());
        for (String id : nodeIds) {
            NodeProcess node = new NodeProcess(id);
            nodes.put(id, node);
            node.start();
        }
        Thread.sleep(300);
    }

    Report run() throws Exception {
        startNodes();
        Random nemesisRandom = new Random(settings.seed() * 31 + 7);
        List<Client> clients = new ArrayList<>();
        for (int i = 1; i <= settings.clients(); i++) {
            clients.add(new Client("c" + i, settings.seed() * 1000 + i));
        }
        List<Thread> threads = new ArrayList<>();
        List<Throwable> failures = Collections.synchronizedList(new ArrayList<>());
        long start = System.nanoTime();
        for (Client client : clients) {
            Thread thread = new Thread(() -> {
                try {
                    client.run(settings.sagasPerClient());
                } catch (Throwable e) {
                    failures.add(e);
                }
            }, client.id);
            threads.add(thread);
            thread.start();
        }
        Thread nemesis = new Thread(() -> {
            try {
                for (int k = 0; k < settings.kills(); k++) {
                    Thread.sleep(300 + nemesisRandom.nextInt(1200));
                    if (threads.stream().noneMatch(Thread::isAlive)) {
                        return;
                    }
                    NodeProcess victim = nodes.get(nodeIds.get(nemesisRandom.nextInt(nodeIds.size())));
                    victim.kill();
                    kills.incrementAndGet();
                    Thread.sleep(100 + nemesisRandom.nextInt(300));
                    victim.start();   // the same command, then init again
                }
            } catch (Exception e) {
                failures.add(e);
            }
        }, "nemesis");
        nemesis.start();
        for (Thread thread : threads) {
            thread.join();
        }
        double seconds = (System.nanoTime() - start) / 1e9;
        nemesis.join();
        Thread.sleep(2 * settings.clientTimeoutMillis());   // late replies and duplicates come in
        for (NodeProcess node : nodes.values()) {
            node.stop();
        }
        if (!failures.isEmpty()) {
            throw new IllegalStateException("a client or the nemesis failed", failures.get(0));
        }
        return check(seconds);
    }

    // ---- the checker -------------------------------------------------------------------------------------

    Report check(double seconds) {
        List<String> anomalies = new ArrayList<>();
        Map<String, Set<String>> chargeResults = new TreeMap<>();   // step key -> distinct ok results
        Map<String, Set<String>> refundResults = new TreeMap<>();
        Map<String, String> keyOfPayment = new HashMap<>();
        Map<String, String> keyOfRefund = new HashMap<>();
        Map<String, String> paymentOfStep = new HashMap<>();
        Map<String, BigDecimal> chargedOfPayment = new HashMap<>();
        Set<String> compensatedFirst = new HashSet<>();
        Map<String, Integer> replyTypes = new HashMap<>();
        Map<String, Map<String, Object>> refundRequestOfKey = new HashMap<>();
        List<Long> latencies = new ArrayList<>();
        int requests = 0;
        int answered = 0;
        synchronized (history) {
            for (Exchange exchange : history) {
                requests++;
                if (exchange.answeredNanos() != 0) {
                    answered++;
                }
                Map<String, Object> request = exchange.request();
                String type = (String) request.get("type");
                if ("RefundPayment".equals(type)) {
                    refundRequestOfKey.putIfAbsent(request.get("saga_id") + ":step" + request.get("step") + ":refund", request);
                }
                boolean firstCharge = false;
                for (Map<String, Object> reply : exchange.replies()) {
                    Map<String, Object> body = body(reply);
                    // A late or duplicate reply can come in while the client waits for another request: the
                    // key is the one the reply names.
                    String key = body.get("saga_id") + ":step" + body.get("step");
                    String replyType = String.valueOf(body.get("type")) + (body.get("code") == null ? "" : " " + body.get("code"));
                    replyTypes.merge(replyType, 1, Integer::sum);
                    Object result = body.get("result");
                    if ("ChargePayment_ok".equals(body.get("type")) && result instanceof Map<?, ?> r) {
                        String paymentId = (String) r.get("payment_id");
                        chargeResults.computeIfAbsent(key, k -> new HashSet<>()).add(write(result));
                        String other = keyOfPayment.putIfAbsent(paymentId, key);
                        if (other != null && !other.equals(key)) {
                            anomalies.add(paymentId + " was given to two keys: " + other + " and " + key);
                        }
                        paymentOfStep.putIfAbsent(key, paymentId);
                        chargedOfPayment.putIfAbsent(paymentId, new BigDecimal(String.valueOf(r.get("charged"))));
                        firstCharge |= body.get("note") == null;
                    }
                    if ("RefundPayment_ok".equals(body.get("type")) && result instanceof Map<?, ?> r) {
                        String refundKey = key + ":refund";
                        refundResults.computeIfAbsent(refundKey, k -> new HashSet<>()).add(write(result));
                        String refundId = (String) r.get("refund_id");
                        if (refundId == null) {
                            compensatedFirst.add(key);   // refunded 0 without a payment: the step was closed (or never charged)
                        } else {
                            String other = keyOfRefund.putIfAbsent(refundId, refundKey);
                            if (other != null && !other.equals(refundKey)) {
                                anomalies.add(refundId + " was given to two keys: " + other + " and " + refundKey);
                            }
                        }
                    }
                }
                if ("ChargePayment".equals(type) && firstCharge && exchange.answeredNanos() != 0) {
                    latencies.add((exchange.answeredNanos() - exchange.firstSentNanos()) / 1000);
                }
            }
        }
        chargeResults.forEach((key, results) -> {
            if (results.size() > 1) {
                anomalies.add(key + " has " + results.size() + " different charge results: " + results);
            }
            if (compensatedFirst.contains(key)) {
                anomalies.add(key + " was closed by a compensation that came first, and was charged: " + results);
            }
        });
        refundResults.forEach((key, results) -> {
            if (results.size() > 1) {
                anomalies.add(key + " has " + results.size() + " different refund results: " + results);
            }
        });
        Map<String, BigDecimal> refundedOfPayment = new TreeMap<>();
        refundResults.forEach((refundKey, results) -> {
            Map<String, Object> request = refundRequestOfKey.get(refundKey);
            String stepKey = refundKey.substring(0, refundKey.length() - ":refund".length());
            String payment = request.get("params") instanceof Map<?, ?> p && p.get("payment_id") instanceof String named
                    ? named : paymentOfStep.get(stepKey);
            try {
                Object parsed = parse(results.iterator().next());
                Map<?, ?> result = (Map<?, ?>) parsed;
                if (payment != null && result.get("refund_id") != null && chargedOfPayment.containsKey(payment)) {
                    refundedOfPayment.merge(payment, new BigDecimal(String.valueOf(result.get("refunded"))), BigDecimal::add);
                }
            } catch (IOException e) {
                throw new IllegalStateException(e);
            }
        });
        refundedOfPayment.forEach((payment, refunded) -> {
            if (refunded.compareTo(chargedOfPayment.get(payment)) > 0) {
                anomalies.add("refunds of " + payment + " add up to " + refunded + ", more than the " + chargedOfPayment.get(payment) + " charged");
            }
        });
        long initOks = initReplies.stream().filter(reply -> "init_ok".equals(body(reply).get("type"))).count();
        if (initOks != inits.get()) {
            anomalies.add(inits.get() + " inits got " + initOks + " init_ok replies: " + initReplies);
        }
        Collections.sort(latencies);
        long p50 = latencies.isEmpty() ? 0 : latencies.get(latencies.size() / 2);
        long p99 = latencies.isEmpty() ? 0 : latencies.get(Math.min(latencies.size() - 1, (int) (latencies.size() * 0.99)));
        Map<String, Long> kvCalls = new TreeMap<>();
        linKv.calls.forEach((t, n) -> kvCalls.put(t, n.get()));
        return new Report(requests, answered, replyTypes, kills.get(), nonJsonLines.get(), anomalies, latencies.size(), seconds,
                p50, p99, kvCalls);
    }

    // ---- measuring calls per request ---------------------------------------------------------------------

    /** lin-kv calls per first charge, per retry (same node and another), per first refund and per status read. */
    Map<String, Double> measureCalls(int count) throws Exception {
        startNodes();
        Client client = new Client("c1", settings.seed());
        String first = nodeIds.get(0);
        String second = nodeIds.get(1 % nodeIds.size());
        Map<String, Double> perRequest = new LinkedHashMap<>();
        long before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(charge("m" + i, 1, "10.50"), first, false);
        }
        perRequest.put("first charge", (linKv.total() - before) / (double) count);
        before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(charge("m" + i, 1, "10.50"), first, false);
        }
        perRequest.put("retry, same node", (linKv.total() - before) / (double) count);
        before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(charge("m" + i, 1, "10.50"), second, false);
        }
        perRequest.put("retry, another node", (linKv.total() - before) / (double) count);
        before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(refund("m" + i, 1, null, null), first, false);
        }
        perRequest.put("first refund (compensation)", (linKv.total() - before) / (double) count);
        before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(refund("m" + i, 1, null, null), second, false);
        }
        perRequest.put("refund retry, another node", (linKv.total() - before) / (double) count);
        before = linKv.total();
        for (int i = 0; i < count; i++) {
            client.call(status("m" + i, 1), first, false);
        }
        perRequest.put("PaymentStatus", (linKv.total() - before) / (double) count);
        for (NodeProcess node : nodes.values()) {
            node.stop();
        }
        return perRequest;
    }

    // ---- the command line --------------------------------------------------------------------------------

    static final String USAGE = """
            Usage: tests/cluster.sh [--nodes N] [--clients N] [--sagas N] [--seed N] [--kills N]
                                    [--latency MS] [--timeout MS] [--no-store] [--measure] [-- NODE COMMAND...]

            Runs N payment nodes (default: ./run.sh --store lin-kv) as a Maelstrom-style cluster with a lin-kv
            service, a kill nemesis and saga clients, then checks every answer: one payment per key, one
            result per key, no id given to two keys, refunds never above their charge, a compensation that
            came first closes the step everywhere, every stdout line JSON. Prints a summary and a verdict;
            exits 0 when valid, 1 when the checker found anomalies, 2 on a usage error.
              --no-store  run the nodes without --store lin-kv (each keeps its own table): the checker must
                          then find double charges
              --measure   count lin-kv calls per request kind instead (one client, no kills)
            """;

    public static void main(String[] args) throws Exception {
        int nodes = 3;
        int clients = 4;
        int sagas = 60;
        long seed = 1;
        int kills = 4;
        int latency = 5;
        long timeout = 2000;
        boolean store = true;
        boolean measure = false;
        List<String> command = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--nodes" -> nodes = Integer.parseInt(args[++i]);
                case "--clients" -> clients = Integer.parseInt(args[++i]);
                case "--sagas" -> sagas = Integer.parseInt(args[++i]);
                case "--seed" -> seed = Long.parseLong(args[++i]);
                case "--kills" -> kills = Integer.parseInt(args[++i]);
                case "--latency" -> latency = Integer.parseInt(args[++i]);
                case "--timeout" -> timeout = Long.parseLong(args[++i]);
                case "--no-store" -> store = false;
                case "--measure" -> measure = true;
                case "--" -> {
                    command = List.of(args).subList(i + 1, args.length);
                    i = args.length;
                }
                case "--help", "-h" -> {
                    System.out.print(USAGE);
                    return;
                }
                default -> {
                    System.err.print("cluster: unknown option " + args[i] + "\n" + USAGE);
                    System.exit(2);
                }
            }
        }
        if (command == null) {
            command = store ? List.of(Path.of("run.sh").toAbsolutePath().toString(), "--store", "lin-kv")
                    : List.of(Path.of("run.sh").toAbsolutePath().toString());
        }
        Path work = Files.createTempDirectory("cluster");
        Settings settings = new Settings(command, nodes, clients, sagas, seed, measure ? 0 : kills, latency, timeout, work);
        System.out.println("cluster: " + nodes + " nodes (" + String.join(" ", command) + "), " + clients + " clients x "
                + sagas + " sagas, seed " + seed + ", " + settings.kills() + " kills, lin-kv latency 0-" + latency
                + " ms; node logs in " + work);
        if (measure) {
            new ClusterHarness(settings).measureCalls(200).forEach((kind, calls) ->
                    System.out.printf("lin-kv calls per %s: %.2f%n", kind, calls));
            return;
        }
        Report report = new ClusterHarness(settings).run();
        System.out.print(report.summary());
        System.exit(report.valid() ? 0 : 1);
    }
}
