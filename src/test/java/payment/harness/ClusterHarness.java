package payment.harness;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import payment.harness.ClusterHistory.Phase;
import payment.harness.ClusterHistory.Type;
import payment.harness.ClusterOptions.Nemesis;
import payment.harness.ClusterOptions.Settings;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A Maelstrom-style cluster on one machine, to test payment nodes as Maelstrom would: N node processes started with
 * one command line in one working directory, each sent its init (node_id, node_ids); a network that routes every
 * message between nodes, clients and lin-kv ({@link LinKvService}); a nemesis (kill, pause, partition, kv); clients
 * running sagas; then a healing phase, final status reads, and the checker ({@link ClusterChecker}) on the history.
 * Every choice is seeded; the timing is the machine's.
 *
 * <p>Run it: {@code tests/cluster.sh --help}. The entry for tests is {@link #run(String[], PrintStream, PrintStream)},
 * which returns the exit status.
 */
final class ClusterHarness {
    /** Amounts exactly as written (a double would make 10.55 / 2 inexact): the harness's own view of JSON. */
    static final ObjectMapper JSON = new ObjectMapper()
            .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .enable(DeserializationFeature.USE_LONG_FOR_INTS);
    /** Numbers as Maelstrom's JSON reader has them (doubles, longs): what lin-kv stores. */
    static final ObjectMapper MAELSTROM_JSON = new ObjectMapper().enable(DeserializationFeature.USE_LONG_FOR_INTS);

    static final int EXIT_VALID = 0;
    static final int EXIT_INVALID = 1;
    static final int EXIT_COULD_NOT_RUN = 2;

    /** A bound on every queue of messages: a node's stdin, a client's inbox. Beyond it a message is lost, and counted. */
    static final int QUEUE_BOUND = 10_000;
    /** How long a node may take to answer its init (Maelstrom waits 10 s too). */
    static final long INIT_WAIT_MILLIS = 10_000;
    private static final String HARNESS = "c0";

    /** A fault as it happened: for the plots, the timeline and results.json. */
    record Fault(String kind, String target, long startNanos, long endNanos) {
    }

    /** What a run left: its settings, history, verdict and the service's counters. */
    record Run(Settings settings, Path folder, List<ClusterHistory.Event> history, ClusterChecker.Verdict verdict,
               List<Fault> faults, Map<String, Long> kvCalls, Map<String, Long> kvFates, Map<String, Long> dropped,
               double seconds) {
    }

    private final Settings settings;
    private final Path folder;
    private final PrintStream log;
    private final ClusterHistory history = new ClusterHistory();
    private final List<String> nodeIds = new ArrayList<>();
    private final Map<String, NodeProcess> nodes = new LinkedHashMap<>();
    private final Map<String, Client> clients = new ConcurrentHashMap<>();
    private final LinKvService linKv;
    private final Random nemesisRandom;
    private final AtomicLong harnessMsgIds = new AtomicLong(1);
    private final Map<String, AtomicLong> dropped = new ConcurrentHashMap<>();
    private final Map<String, CountDownLatch> initAnswered = new ConcurrentHashMap<>();
    private final List<Fault> faults = Collections.synchronizedList(new ArrayList<>());
    /** The node the partition nemesis cuts off (null: none). */
    private volatile String isolated;

    ClusterHarness(Settings settings, Path folder, PrintStream log) {
        this.settings = settings;
        this.folder = folder;
        this.log = log;
        for (int i = 1; i <= settings.nodes(); i++) {
            nodeIds.add("n" + i);
        }
        this.linKv = new LinKvService(MAELSTROM_JSON, settings.seed() * 31 + 1, settings.kvLatency(), settings.kvLateMillis(),
                this::route, log::println);
        this.nemesisRandom = new Random(settings.seed() * 31 + 7);
    }

    private void drop(String why) {
        dropped.computeIfAbsent(why, w -> new AtomicLong()).incrementAndGet();
    }

    // ---- the network -------------------------------------------------------------------------------------

    /** Where a message goes: lin-kv, a client, the harness (init_ok), or a node; nothing crosses the partition. */
    void route(JsonNode message) {
        String src = message.path("src").asText();
        String dest = message.path("dest").asText();
        if (isolated != null && (isolated.equals(src) || isolated.equals(dest))) {
            drop("partition");
            return;
        }
        if (LinKvService.ID.equals(dest)) {
            try {   // lin-kv reads the numbers as Maelstrom does: doubles
                linKv.receive(MAELSTROM_JSON.readTree(message.toString()));
            } catch (JsonProcessingException e) {
                throw new IllegalStateException(e);
            }
        } else if (HARNESS.equals(dest)) {
            JsonNode body = message.path("body");
            if (body.path("type").asText().equals("init_ok")) {
                history.add(HARNESS, Type.INIT_OK, null, null, src, body.path("in_reply_to").asLong(), null, null, body, null);
                CountDownLatch answered = initAnswered.get(src + "#" + body.path("in_reply_to").asLong());
                if (answered != null) {
                    answered.countDown();
                }
            } else {
                log.println("cluster: " + src + " answered its init with " + body);
                history.add(HARNESS, Type.LATE, null, null, src, body.path("in_reply_to").asLong(), null, null, body, null);
            }
        } else if (clients.containsKey(dest)) {
            clients.get(dest).deliver(message);
        } else if (nodes.containsKey(dest)) {
            nodes.get(dest).send(message.toString());
        } else {
            drop("no such destination");
            log.println("cluster: a message to " + dest + ", which is nobody: " + message);
        }
    }

    /** One node: its process, restarted under the same id after a kill; stdin fed by one writer from a bounded queue. */
    final class NodeProcess {
        final String id;
        private final Path stderr;
        private final BlockingQueue<String> toStdin = new LinkedBlockingQueue<>(QUEUE_BOUND);
        private final Object writing = new Object();
        private volatile Process process;
        private volatile OutputStream stdin;
        private volatile boolean killedByNemesis;

        NodeProcess(String id) {
            this.id = id;
            this.stderr = folder.resolve(id + ".stderr");
            Thread writer = new Thread(this::writeStdin, id + "-stdin");
            writer.setDaemon(true);
            writer.start();
        }

        /** A line in this node's stderr file from the harness, so that its log shows when it was started, killed, paused. */
        void mark(String what) {
            try {
                Files.writeString(stderr, "cluster: " + ClusterChecker.seconds(history.now()) + ": " + id + " " + what + "\n",
                        StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            } catch (IOException e) {
                log.println("cluster: cannot write " + stderr + ": " + e.getMessage());
            }
        }

        /** Starts the process with the node command, then sends its init before anything else reaches it. */
        CountDownLatch start() throws IOException, CouldNotRun {
            ProcessBuilder builder = new ProcessBuilder(settings.nodeCommand()).directory(folder.toFile());
            builder.redirectError(ProcessBuilder.Redirect.appendTo(stderr.toFile()));
            synchronized (writing) {
                mark("starting: " + String.join(" ", settings.nodeCommand()));   // before the node can write a line of its own
                Process started;
                try {
                    started = builder.start();
                } catch (IOException cannot) {
                    throw new CouldNotRun("cannot start the node command " + settings.nodeCommand().get(0) + ": " + cannot.getMessage());
                }
                killedByNemesis = false;
                process = started;
                stdin = started.getOutputStream();
                mark("started, pid " + started.pid());
                Thread reader = new Thread(() -> readStdout(started), id + "-stdout");
                reader.setDaemon(true);
                reader.start();
                long msgId = harnessMsgIds.getAndIncrement();
                ObjectNode init = JSON.createObjectNode();
                init.put("type", "init").put("msg_id", msgId).put("node_id", id);
                init.set("node_ids", JSON.valueToTree(nodeIds));
                ObjectNode envelope = JSON.createObjectNode().put("src", HARNESS).put("dest", id);
                envelope.set("body", init);
                CountDownLatch answered = new CountDownLatch(1);
                initAnswered.put(id + "#" + msgId, answered);
                history.add(HARNESS, Type.INIT, null, null, id, msgId, null, null, init, null);
                write(envelope.toString());
                return answered;
            }
        }

        /** Lines the node wrote: routed; a line that is not JSON is garbage, unless it is the last one, cut by our SIGKILL. */
        private void readStdout(Process mine) {
            try (BufferedReader out = new BufferedReader(new InputStreamReader(mine.getInputStream(), StandardCharsets.UTF_8))) {
                String suspect = null;
                for (String line; (line = out.readLine()) != null; ) {
                    if (suspect != null) {
                        garbage(suspect);
                        suspect = null;
                    }
                    JsonNode message = null;
                    try {
                        message = JSON.readTree(line);
                    } catch (JsonProcessingException notJson) {
                        suspect = line;
                        continue;
                    }
                    if (message == null || !message.path("body").isObject() || !message.path("dest").isTextual()) {
                        garbage(line);
                        continue;
                    }
                    route(message);
                }
                if (suspect != null && !(killedByNemesis && process != mine) && !(killedByNemesis && !mine.isAlive())) {
                    garbage(suspect);
                }
            } catch (IOException closed) {
                // the pipe closes when the node is killed
            }
        }

        private void garbage(String line) {
            history.add(HARNESS, Type.GARBAGE, null, null, id, null, null, null, null, line.length() > 300 ? line.substring(0, 300) + "..." : line);
        }

        /** Queued for the node's stdin; lost when the queue is full (a flooded network). */
        void send(String line) {
            if (!toStdin.offer(line)) {
                drop("queue to a node full");
            }
        }

        private void writeStdin() {
            try {
                while (true) {
                    write(toStdin.take());
                }
            } catch (InterruptedException stopped) {
                // the run is over
            }
        }

        private void write(String line) {
            synchronized (writing) {
                Process current = process;
                if (current == null || !current.isAlive()) {
                    drop("node down");
                    return;   // a node that is down loses its messages, as on a real network
                }
                try {
                    stdin.write((line + "\n").getBytes(StandardCharsets.UTF_8));
                    stdin.flush();
                } catch (IOException down) {
                    drop("node down");
                }
            }
        }

        /** The end of this node's stderr, for a message that says why a run could not go on. */
        String stderrTail() {
            try {
                List<String> lines = Files.readAllLines(stderr, StandardCharsets.UTF_8);
                return "the end of " + stderr + ": " + String.join(" | ", lines.subList(Math.max(0, lines.size() - 3), lines.size()));
            } catch (IOException e) {
                return "its stderr " + stderr + " cannot be read: " + e.getMessage();
            }
        }

        void kill() throws InterruptedException {
            killedByNemesis = true;
            Process victim = process;
            mark("killed (SIGKILL)");
            victim.destroyForcibly();
            victim.waitFor(10, TimeUnit.SECONDS);
        }

        void signal(String signal) throws IOException, InterruptedException {
            mark(signal.equals("STOP") ? "paused (SIGSTOP)" : "continued (SIGCONT)");
            Process kill = new ProcessBuilder("kill", "-" + signal, Long.toString(process.pid())).redirectErrorStream(true).start();
            String said = new String(kill.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
            if (!kill.waitFor(10, TimeUnit.SECONDS) || kill.exitValue() != 0) {
                throw new IOException("kill -" + signal + " " + process.pid() + " failed: " + said);
            }
        }

        /** End of input: the node exits by itself; one that does not within 10 s is killed. */
        void stop() throws InterruptedException {
            Process current = process;
            if (current == null) {
                return;
            }
            synchronized (writing) {
                try {
                    stdin.close();
                } catch (IOException ignored) {
                    // already gone
                }
            }
            if (!current.waitFor(10, TimeUnit.SECONDS)) {
                current.destroyForcibly();
                mark("did not exit within 10 s of the end of its input: killed");
            } else {
                mark("exited with status " + current.exitValue() + " at the end of its input");
            }
        }
    }

    // ---- clients -------------------------------------------------------------------------------------------

    /** A logical request and its retries; {@code answer} is its first definite reply, from any of its requests. */
    static final class Op {
        final int number;
        final JsonNode body;
        final Phase phase;
        JsonNode answer;
        int attempts;

        Op(int number, JsonNode body, Phase phase) {
            this.number = number;
            this.body = body;
            this.phase = phase;
        }
    }

    private record Pending(Op op, int attempt, String node, long deadlineNanos) {
    }

    /**
     * A client: one operation at a time (a duplicate is sent to two nodes at once); a request not answered within
     * the timeout, or answered 0, 11 or 13, is retried on another node. Its state is touched by its own thread only.
     */
    final class Client {
        final String id;
        /** One draw per saga (its pace and its own generator): a saga's answers never shift the next saga's choices. */
        final Random random;
        /** The nodes of retries, which depend on timing: kept apart from the workload's choices. */
        private final Random retries;
        private final BlockingQueue<JsonNode> inbox = new LinkedBlockingQueue<>(QUEUE_BOUND);
        private final Map<Long, Pending> pending = new HashMap<>();
        private final Map<Long, Op> opOfMsgId = new HashMap<>();
        private final List<Op> ops = new ArrayList<>();
        private long nextMsgId = 1;

        Client(String id, long seed) {
            this.id = id;
            this.random = new Random(seed);
            this.retries = new Random(~seed);
            clients.put(id, this);
        }

        void deliver(JsonNode message) {
            if (!inbox.offer(message)) {
                drop("client inbox full");
            }
        }

        /** A node other than {@code previous}, when there is one. */
        String otherNode(String previous) {
            if (nodeIds.size() == 1) {
                return previous;
            }
            String other = nodeIds.get(retries.nextInt(nodeIds.size() - 1));
            return other.equals(previous) ? nodeIds.get(nodeIds.size() - 1) : other;
        }

        private long send(Op op, int attempt, String node) {
            long msgId = nextMsgId++;
            ObjectNode body = op.body.deepCopy();
            body.put("msg_id", msgId);
            ObjectNode message = JSON.createObjectNode().put("src", id).put("dest", node);
            message.set("body", body);
            pending.put(msgId, new Pending(op, attempt, node, System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(settings.clientTimeoutMillis())));
            opOfMsgId.put(msgId, op);
            history.add(id, Type.INVOKE, op.number, attempt, node, msgId, op.phase, null, body, null);
            route(message);
            return msgId;
        }

        /** A reply that fits its request and settles it: ok, or an error other than 0, 11, 13. */
        private boolean definite(Op op, JsonNode reply) {
            String type = reply.path("type").asText();
            String asked = op.body.path("type").asText();
            if (type.equals(asked + "_ok")) {
                return reply.path("saga_id").equals(op.body.path("saga_id")) && reply.path("step").equals(op.body.path("step"));
            }
            return type.equals("error") && !ClusterChecker.indefiniteOrNothingDone(reply.path("code").asInt(-1));
        }

        private Type completion(Op op, JsonNode reply) {
            String type = reply.path("type").asText();
            if (type.equals(op.body.path("type").asText() + "_ok") && definite(op, reply)) {
                return Type.OK;
            }
            int code = reply.path("code").asInt(-1);
            return type.equals("error") && code != 0 && code != 13 ? Type.FAIL : Type.INFO;
        }

        private void receive(JsonNode message) {
            JsonNode reply = message.path("body");
            String from = message.path("src").asText();
            Long inReplyTo = reply.path("in_reply_to").canConvertToLong() ? reply.path("in_reply_to").asLong() : null;
            Pending request = inReplyTo == null ? null : pending.remove(inReplyTo);
            if (request != null) {
                history.add(id, completion(request.op(), reply), request.op().number, request.attempt(), from, inReplyTo,
                        request.op().phase, null, reply, null);
            } else {
                Op op = inReplyTo == null ? null : opOfMsgId.get(inReplyTo);
                history.add(id, Type.LATE, op == null ? null : op.number, null, from, inReplyTo, op == null ? null : op.phase, null,
                        reply, op == null ? "a reply to no request of this client" : "came after its request was completed");
                request = op == null ? null : new Pending(op, 0, from, 0);
            }
            if (request != null && request.op().answer == null && definite(request.op(), reply)) {
                request.op().answer = reply;
            }
        }

        /** Requests past their deadline complete as info: the outcome is unknown. */
        private void expire() {
            long now = System.nanoTime();
            for (Iterator<Map.Entry<Long, Pending>> it = pending.entrySet().iterator(); it.hasNext(); ) {
                Map.Entry<Long, Pending> entry = it.next();
                Pending request = entry.getValue();
                if (request.deadlineNanos() <= now) {
                    it.remove();
                    history.add(id, Type.INFO, request.op().number, request.attempt(), request.node(), entry.getKey(), request.op().phase,
                            null, null, "no reply within " + settings.clientTimeoutMillis() + " ms");
                }
            }
        }

        /** Handles replies until {@code done} says so or every pending request has expired; bounded by the client timeout. */
        private void await(java.util.function.BooleanSupplier done) throws InterruptedException {
            while (!done.getAsBoolean() && !pending.isEmpty()) {
                long earliest = pending.values().stream().mapToLong(Pending::deadlineNanos).min().orElseThrow();
                JsonNode message = inbox.poll(Math.max(0, earliest - System.nanoTime()), TimeUnit.NANOSECONDS);
                if (message != null) {
                    receive(message);
                }
                expire();
            }
        }

        /**
         * Runs one operation: up to {@code attempts} requests, each retry on another node, until a definite answer;
         * stops early once {@code deadlineNanos} has passed (0: no deadline). Returns the answer, or null.
         */
        JsonNode call(Op op, String node, boolean duplicate, int attempts, long deadlineNanos) throws InterruptedException {
            String target = node;
            while (op.answer == null && op.attempts < attempts && (deadlineNanos == 0 || System.nanoTime() < deadlineNanos)) {
                op.attempts++;
                if (op.attempts > 1) {
                    target = otherNode(target);
                }
                long started = System.nanoTime();
                long main = send(op, op.attempts, target);
                if (duplicate && op.attempts == 1) {
                    send(op, op.attempts, otherNode(target));   // the same request at once to another node
                }
                await(() -> op.answer != null || !pending.containsKey(main));
                if (op.answer == null && System.nanoTime() - started < TimeUnit.MILLISECONDS.toNanos(50)) {
                    Thread.sleep(50);   // an indefinite error came back at once: give the fault a moment before the retry
                }
            }
            return op.answer;
        }

        JsonNode call(JsonNode body, String node, boolean duplicate, Phase phase) throws InterruptedException {
            return callOp(body, node, duplicate, phase).answer;
        }

        Op callOp(JsonNode body, String node, boolean duplicate) throws InterruptedException {
            return callOp(body, node, duplicate, Phase.RUN);
        }

        private Op callOp(JsonNode body, String node, boolean duplicate, Phase phase) throws InterruptedException {
            Op op = new Op(ops.size() + 1, body, phase);
            ops.add(op);
            call(op, node, duplicate, settings.attempts(), 0);
            return op;
        }

        /**
         * Several operations at once, each to a node of its own choosing (an orchestrator compensating several steps
         * in parallel), then each one's retries, one operation after the other.
         */
        List<Op> callTogether(List<JsonNode> bodies, List<String> nodesToUse) throws InterruptedException {
            Map<Op, String> firstNode = new LinkedHashMap<>();
            for (int i = 0; i < bodies.size(); i++) {
                Op op = new Op(ops.size() + 1, bodies.get(i), Phase.RUN);
                ops.add(op);
                op.attempts = 1;
                String node = nodesToUse.get(i);
                firstNode.put(op, node);
                send(op, 1, node);
            }
            await(() -> firstNode.keySet().stream().allMatch(op -> op.answer != null));
            for (Map.Entry<Op, String> op : firstNode.entrySet()) {
                call(op.getKey(), op.getValue(), false, settings.attempts(), 0);
            }
            return List.copyOf(firstNode.keySet());
        }

        /**
         * The workload. Each saga: a charge (sometimes to two nodes at once), its retry elsewhere (the same result,
         * cached_result), a retry with another amount (error 22), a PaymentStatus read whose payment id and amount are
         * then refunded 40% at a time under three other steps of the saga (half the time all three at once, to three
         * nodes; one is refused, 22: only 20% left) and the refused one asked again for what is left (served: an
         * error leaves no record), or a compensation of the
         * charge and its retry; and 15% of sagas compensate first, then charge (error 14). Every choice of a saga is
         * drawn before it starts ({@link SagaPlan}), so that the seed pins them whatever the answers.
         */
        void runSagas(int sagas, long paceNanos) throws InterruptedException {
            long next = System.nanoTime();
            for (int n = 1; n <= sagas; n++) {
                // one saga per pace on average; a client held up by a fault starts its next saga at once, and keeps
                // no debt: it never bursts to catch up
                next = Math.max(next, System.nanoTime()) + Math.round(paceNanos * (0.5 + random.nextDouble()));
                long wait = next - System.nanoTime();
                if (wait > 0) {
                    TimeUnit.NANOSECONDS.sleep(wait);
                }
                SagaPlan plan = SagaPlan.draw(new Random(random.nextLong()), nodeIds);
                String saga = id + "-saga" + n;
                if (plan.kind() < 15) {
                    call(refund(saga, 1, null, null), plan.node(0), plan.duplicate(0), Phase.RUN);
                    call(charge(saga, 1, plan.amount()), plan.node(1), false, Phase.RUN);
                    continue;
                }
                JsonNode charged = call(charge(saga, 1, plan.amount()), plan.node(0), plan.duplicate(0), Phase.RUN);
                if (plan.flag(0)) {
                    call(charge(saga, 1, plan.amount()), plan.node(1), false, Phase.RUN);
                }
                if (charged != null && charged.path("type").asText().endsWith("_ok") && plan.flag(1)) {
                    call(charge(saga, 1, new BigDecimal(plan.amount()).add(BigDecimal.ONE).toPlainString()), plan.node(2), false, Phase.RUN);
                }
                if (plan.kind() < 45) {
                    JsonNode status = call(status(saga, 1), plan.node(3), false, Phase.RUN);
                    JsonNode payment = status == null ? null : status.path("payment");
                    if (payment != null && payment.hasNonNull("payment_id")) {
                        String paymentId = payment.path("payment_id").asText();
                        String part = payment.path("charged").decimalValue().multiply(new BigDecimal("0.4")).toPlainString();
                        List<JsonNode> refunds = new ArrayList<>();
                        for (int step = 7; step <= 9; step++) {
                            refunds.add(refund(saga, step, paymentId, part));
                        }
                        List<Op> sent = plan.flag(2) ? callTogether(refunds, List.of(plan.node(4), plan.node(5), plan.node(6)))
                                : List.of(callOp(refunds.get(0), plan.node(4), plan.duplicate(1)), callOp(refunds.get(1), plan.node(5), plan.duplicate(2)),
                                callOp(refunds.get(2), plan.node(6), plan.duplicate(3)));
                        // The refused one, corrected: what is left (20%). An error leaves no record, so it must be served.
                        for (Op refused : sent) {
                            if (refused.answer != null && refused.answer.path("code").asInt() == 22) {
                                // after every request of the refused operation is done (a duplicate may still be at work):
                                // a request on the key still at work would hold it, and 22 would then be right
                                await(() -> pending.values().stream().noneMatch(request -> request.op() == refused));
                                call(refund(saga, refused.body.path("step").asLong(), paymentId, null), plan.node(7), false, Phase.RUN);
                                break;
                            }
                        }
                    }
                } else if (plan.kind() < 75) {
                    call(refund(saga, 1, null, null), plan.node(4), plan.duplicate(1), Phase.RUN);
                    if (plan.flag(3)) {
                        call(refund(saga, 1, null, null), plan.node(5), false, Phase.RUN);
                    }
                }
                if (plan.flag(4)) {
                    call(status(saga, 1), plan.node(7), false, Phase.RUN);
                }
            }
        }

        /** Retries every operation still open, round the nodes, until each has a definite answer or the deadline passes. */
        boolean heal(long deadlineNanos) throws InterruptedException {
            for (JsonNode message; (message = inbox.poll()) != null; ) {
                receive(message);   // what came in while this client waited for the faults to end
            }
            expire();
            boolean allAnswered = true;
            for (Op op : List.copyOf(ops)) {
                if (op.answer != null) {
                    continue;
                }
                await(() -> op.answer != null);   // its own late replies first
                Op retry = new Op(op.number, op.body, Phase.HEAL);
                retry.attempts = op.attempts;
                int index = op.number;
                while (op.answer == null && retry.answer == null && System.nanoTime() < deadlineNanos) {
                    call(retry, nodeIds.get(index++ % nodeIds.size()), false, retry.attempts + 1, deadlineNanos);
                }
                if (op.answer == null) {
                    op.answer = retry.answer;
                }
                allAnswered &= op.answer != null;
            }
            return allAnswered;
        }

        /** One PaymentStatus read of every step this client touched, once nothing is open: the state as it settled. */
        void finalReads(long deadlineNanos) throws InterruptedException {
            Set<String> steps = new LinkedHashSet<>();
            for (Op op : List.copyOf(ops)) {
                if (!op.body.path("type").asText().equals("PaymentStatus")) {
                    steps.add(op.body.path("saga_id").asText() + "\n" + op.body.path("step").asLong());
                }
            }
            for (String step : steps) {
                String[] parts = step.split("\n");
                Op op = new Op(ops.size() + 1, status(parts[0], Long.parseLong(parts[1])), Phase.FINAL);
                ops.add(op);
                call(op, nodeIds.get(retries.nextInt(nodeIds.size())), false, 100, deadlineNanos);
            }
        }

        /** Waits out every request still pending, so that each invocation in the history has its completion. */
        void drain() throws InterruptedException {
            await(() -> false);
        }
    }

    /**
     * Every choice of one saga, drawn before it starts: its kind (0-99), amount, the node of each of its (at most 8)
     * operations, which are duplicated (1 in 4) and its yes/no choices (retry elsewhere 1 in 3, reuse with other params
     * 1 in 6, refunds together 1 in 2, compensation retried 1 in 2, a last status read 1 in 4).
     */
    record SagaPlan(int kind, String amount, List<String> nodes, boolean[] duplicates, boolean[] flags) {
        static SagaPlan draw(Random choice, List<String> nodeIds) {
            int kind = choice.nextInt(100);
            String amount = (1 + choice.nextInt(500)) + "." + (10 + choice.nextInt(90));
            List<String> nodes = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                nodes.add(nodeIds.get(choice.nextInt(nodeIds.size())));
            }
            boolean[] duplicates = new boolean[4];
            for (int i = 0; i < duplicates.length; i++) {
                duplicates[i] = choice.nextInt(4) == 0;
            }
            boolean[] flags = {choice.nextInt(3) == 0, choice.nextInt(6) == 0, choice.nextBoolean(), choice.nextBoolean(), choice.nextInt(4) == 0};
            return new SagaPlan(kind, amount, nodes, duplicates, flags);
        }

        String node(int operation) {
            return nodes.get(operation);
        }

        boolean duplicate(int operation) {
            return duplicates[operation];
        }

        boolean flag(int which) {
            return flags[which];
        }
    }

    static ObjectNode charge(String saga, long step, String amount) {
        ObjectNode params = JSON.createObjectNode().put("user_id", "u" + Math.floorMod(saga.hashCode(), 10));
        params.put("amount", new BigDecimal(amount));
        return body("ChargePayment", saga, step).set("params", params);
    }

    static ObjectNode refund(String saga, long step, String paymentId, String amount) {
        ObjectNode body = body("RefundPayment", saga, step).put("compensating", true);
        if (paymentId != null || amount != null) {
            ObjectNode params = body.putObject("params");
            if (paymentId != null) {
                params.put("payment_id", paymentId);
            }
            if (amount != null) {
                params.put("amount", new BigDecimal(amount));
            }
        }
        return body;
    }

    static ObjectNode status(String saga, long step) {
        return body("PaymentStatus", saga, step);
    }

    private static ObjectNode body(String type, String saga, long step) {
        return JSON.createObjectNode().put("type", type).put("saga_id", saga).put("step", step);
    }

    // ---- a run -------------------------------------------------------------------------------------------

    /** Starts every node and waits for each init_ok; a node that does not answer means the run cannot go on. */
    private void startNodes() throws IOException, InterruptedException, CouldNotRun {
        Map<String, CountDownLatch> answered = new LinkedHashMap<>();
        for (String id : nodeIds) {
            NodeProcess node = new NodeProcess(id);
            nodes.put(id, node);
            answered.put(id, node.start());
        }
        for (Map.Entry<String, CountDownLatch> init : answered.entrySet()) {
            NodeProcess node = nodes.get(init.getKey());
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(INIT_WAIT_MILLIS);
            while (!init.getValue().await(100, TimeUnit.MILLISECONDS)) {
                if (!node.process.isAlive()) {   // no use waiting for a node that is gone
                    throw new CouldNotRun(node.id + " exited with status " + node.process.exitValue() + " before it answered its init; "
                            + node.stderrTail());
                }
                if (System.nanoTime() > deadline) {
                    throw new CouldNotRun(node.id + " did not answer its init within " + INIT_WAIT_MILLIS / 1000 + " s; " + node.stderrTail());
                }
            }
        }
    }

    static final class CouldNotRun extends Exception {
        private static final long serialVersionUID = 1L;

        CouldNotRun(String message) {
            super(message);
        }
    }

    /**
     * The nemesis: exactly {@code faults} faults, the k-th from (k + 1/2) intervals after the start (or as soon as the
     * one before it has ended), each half an interval long.
     */
    private void nemesis(long startNanos) throws Exception {
        List<Nemesis> kinds = new ArrayList<>(settings.nemeses());
        long interval = TimeUnit.MILLISECONDS.toNanos(settings.nemesisIntervalMillis());
        for (int k = 0; k < settings.faults(); k++) {
            Nemesis kind = kinds.get(nemesisRandom.nextInt(kinds.size()));
            NodeProcess target = nodes.get(nodeIds.get(nemesisRandom.nextInt(nodeIds.size())));
            sleepUntil(startNanos + interval * k + interval / 2);
            long faultEnd = System.nanoTime() + interval / 2;   // half an interval from its real start: a slow restart only delays it
            String targetName = kind == Nemesis.KV ? LinKvService.ID : target.id;
            long began = history.now();
            history.add("nemesis", Type.FAULT_START, null, null, targetName, null, null, kind.label(), null, describe(kind, targetName));
            switch (kind) {
                case KILL -> target.kill();
                case PAUSE -> target.signal("STOP");
                case PARTITION -> isolated = target.id;
                case KV -> linKv.setFaulty(true);
            }
            sleepUntil(faultEnd);
            CountDownLatch restarted = null;
            switch (kind) {
                case KILL -> restarted = target.start();   // the same command, then init again
                case PAUSE -> target.signal("CONT");
                case PARTITION -> isolated = null;
                case KV -> linKv.setFaulty(false);
            }
            if (restarted != null && !restarted.await(INIT_WAIT_MILLIS, TimeUnit.MILLISECONDS)) {
                log.println("cluster: " + target.id + " did not answer its init within 10 s of its restart");
            }
            faults.add(new Fault(kind.label(), targetName, began, history.now()));
            history.add("nemesis", Type.FAULT_END, null, null, targetName, null, null, kind.label(), null, "healed");
        }
    }

    private static String describe(Nemesis kind, String target) {
        return switch (kind) {
            case KILL -> "SIGKILL " + target + "; restarted with the same command and a new init when the fault ends";
            case PAUSE -> "SIGSTOP " + target + "; SIGCONT when the fault ends";
            case PARTITION -> "every message to and from " + target + " dropped";
            case KV -> "lin-kv replies lost (1 in 5), duplicated (1 in 10) or late (1 in 10)";
        };
    }

    private static void sleepUntil(long deadlineNanos) throws InterruptedException {
        long wait = deadlineNanos - System.nanoTime();
        if (wait > 0) {
            TimeUnit.NANOSECONDS.sleep(wait);
        }
    }

    Run run() throws Exception {
        long start = System.nanoTime();
        try {
            startNodes();
            long workloadStart = System.nanoTime();   // the nemesis's schedule counts from here, not from the JVMs' start-up
            List<Client> running = new ArrayList<>();
            for (int i = 1; i <= settings.clients(); i++) {
                running.add(new Client("c" + i, settings.seed() * 1000 + i));
            }
            // Sagas spread over the faults' time (at least), so that faults meet traffic; with no fault they run flat out.
            long paceNanos = settings.faultFree() ? 0
                    : TimeUnit.MILLISECONDS.toNanos(settings.faults() * settings.nemesisIntervalMillis()) / settings.sagasPerClient();
            CountDownLatch nemesisDone = new CountDownLatch(1);
            CountDownLatch sagasDone = new CountDownLatch(running.size());
            CountDownLatch healingMayStart = new CountDownLatch(1);
            AtomicLong healDeadline = new AtomicLong();
            List<Throwable> failures = Collections.synchronizedList(new ArrayList<>());
            List<Thread> threads = new ArrayList<>();
            for (Client client : running) {
                Thread thread = new Thread(() -> {
                    try {
                        try {
                            client.runSagas(settings.sagasPerClient(), paceNanos);
                        } finally {
                            sagasDone.countDown();
                        }
                        healingMayStart.await();
                        if (client.heal(healDeadline.get())) {
                            client.finalReads(healDeadline.get());
                        }
                        client.drain();
                    } catch (Throwable e) {
                        failures.add(e);
                    }
                }, client.id);
                threads.add(thread);
                thread.start();
            }
            Thread nemesis = new Thread(() -> {
                try {
                    if (!settings.faultFree()) {
                        nemesis(workloadStart);
                    }
                } catch (Throwable e) {
                    failures.add(e);
                } finally {
                    nemesisDone.countDown();
                }
            }, "nemesis");
            nemesis.start();
            nemesisDone.await();   // healing starts when the last fault has ended and every client's sagas are done
            sagasDone.await();
            healDeadline.set(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(settings.healTimeoutMillis()));
            healingMayStart.countDown();
            for (Thread thread : threads) {
                thread.join();
            }
            if (!failures.isEmpty()) {
                throw new IllegalStateException("a client or the nemesis failed: " + failures.get(0), failures.get(0));
            }
        } finally {
            for (NodeProcess node : nodes.values()) {
                node.stop();
            }
            linKv.stop();
        }
        double seconds = (System.nanoTime() - start) / 1e9;
        List<ClusterHistory.Event> events = history.events();
        Map<String, Long> drops = new java.util.TreeMap<>();
        dropped.forEach((why, count) -> drops.put(why, count.get()));
        return new Run(settings, folder, events, ClusterChecker.check(events), List.copyOf(faults), linKv.calls(), linKv.fates(),
                drops, seconds);
    }

    // ---- measuring calls per request -----------------------------------------------------------------------

    /** lin-kv calls per first charge, per retry (same node and another), per first refund and per status read. */
    Map<String, Double> measureCalls(int count) throws Exception {
        Map<String, Double> perRequest = new LinkedHashMap<>();
        try {
            startNodes();
            Client client = new Client("c1", settings.seed());
            String first = nodeIds.get(0);
            String second = nodeIds.get(1 % nodeIds.size());
            measure(perRequest, "first charge", count, i -> client.call(charge("m" + i, 1, "10.50"), first, false, Phase.RUN));
            measure(perRequest, "retry, same node", count, i -> client.call(charge("m" + i, 1, "10.50"), first, false, Phase.RUN));
            measure(perRequest, "retry, another node", count, i -> client.call(charge("m" + i, 1, "10.50"), second, false, Phase.RUN));
            measure(perRequest, "first refund (compensation)", count, i -> client.call(refund("m" + i, 1, null, null), first, false, Phase.RUN));
            measure(perRequest, "refund retry, another node", count, i -> client.call(refund("m" + i, 1, null, null), second, false, Phase.RUN));
            measure(perRequest, "PaymentStatus", count, i -> client.call(status("m" + i, 1), first, false, Phase.RUN));
        } finally {
            for (NodeProcess node : nodes.values()) {
                node.stop();
            }
            linKv.stop();
        }
        return perRequest;
    }

    private interface Request {
        void send(int i) throws InterruptedException;
    }

    private void measure(Map<String, Double> perRequest, String kind, int count, Request request) throws InterruptedException {
        long before = linKv.totalCalls();
        for (int i = 0; i < count; i++) {
            request.send(i);
        }
        perRequest.put(kind, (linKv.totalCalls() - before) / (double) count);
    }

    // ---- the command line ----------------------------------------------------------------------------------

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    /** The whole command: parse, run, check, write the results folder, print the summary. Returns the exit status. */
    static int run(String[] args, PrintStream out, PrintStream err) {
        Settings settings;
        try {
            settings = ClusterOptions.parse(args, Path.of(System.getProperty("cluster.project", "")));
        } catch (ClusterOptions.HelpRequested help) {
            out.print(ClusterOptions.USAGE);
            return EXIT_VALID;
        } catch (ClusterOptions.UsageError usage) {
            err.println("cluster: " + usage.getMessage());
            return EXIT_COULD_NOT_RUN;
        }
        try {
            Path folder = resultsFolder(settings.out());
            out.println(ClusterReport.heading(settings, folder));
            out.flush();
            if (settings.measure()) {
                new ClusterHarness(settings, folder, err).measureCalls(200).forEach((kind, calls) ->
                        out.printf(java.util.Locale.ROOT, "lin-kv calls per %s: %.2f%n", kind, calls));
                out.println("results: " + folder);
                return EXIT_VALID;
            }
            Run run = new ClusterHarness(settings, folder, err).run();
            ClusterReport.write(run);
            out.print(ClusterReport.summary(run));
            out.println("results: " + folder);
            return run.verdict().valid() ? EXIT_VALID : EXIT_INVALID;
        } catch (CouldNotRun e) {
            err.println("cluster: could not run: " + e.getMessage());
            return EXIT_COULD_NOT_RUN;
        } catch (Exception e) {
            err.println("cluster: could not run: " + e);
            e.printStackTrace(err);
            return EXIT_COULD_NOT_RUN;
        }
    }

    /** Creates the run's folder, and a latest link beside it (never replacing anything but a link). */
    static Path resultsFolder(Path folder) throws IOException {
        Files.createDirectories(folder);
        folder = folder.toAbsolutePath().normalize();
        Path latest = folder.resolveSibling("latest");
        if (!Files.exists(latest, java.nio.file.LinkOption.NOFOLLOW_LINKS) || Files.isSymbolicLink(latest)) {
            Path link = folder.resolveSibling(".latest-" + ProcessHandle.current().pid());
            Files.deleteIfExists(link);
            Files.createSymbolicLink(link, folder.getFileName());
            Files.move(link, latest, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
        }
        return folder;
    }
}
