package payment.harness;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import payment.harness.ClusterHistory.Event;
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
 * message between nodes, clients and lin-kv ({@link LinKvService}); a nemesis (kill, pause, partition, kv) with its
 * faults over most of the run; clients running sagas, their operations offered open loop at a rate ({@link Schedule})
 * for a time limit; a watcher that stops a run no request is answered in ({@link Liveness}); then a healing phase,
 * final status reads, and the checker ({@link ClusterChecker}) on the history. Every choice is seeded; the timing is
 * the machine's.
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
    /** The folder of the nodes' logs in a run's folder, as Maelstrom names it. */
    static final String NODE_LOGS = "node-logs";

    /** A fault as it happened: for the plots, the timeline and results.json. */
    record Fault(String kind, String target, long startNanos, long endNanos) {
    }

    /**
     * What a run left: its settings, history, verdict and the service's counters; the operations started on schedule
     * and the slots missed because every client was busy; why it was stopped early (null: it ran to its end).
     */
    record Run(Settings settings, Path folder, List<ClusterHistory.Event> history, ClusterChecker.Verdict verdict,
               List<Fault> faults, Map<String, Long> kvCalls, Map<String, Long> kvFates, Map<String, Long> dropped,
               double seconds, long onSchedule, long slotsMissed, String stopped, Map<String, Double> cpuSeconds) {
    }

    /**
     * The open-loop clock of the workload, as Maelstrom's rate: operation slot i is due at start + i / rate, whoever
     * is free to take it. A client that asks gets the next slot not yet taken and waits for its time, so operations
     * start on schedule whether or not earlier ones were answered; a slot whose time passes while every client is busy
     * is missed (counted), never made up later by a burst. A time limit of T seconds has exactly T x rate slots, each
     * taken or missed by the end (a group that no longer fits leaves the last one or two missed).
     */
    static final class Schedule {
        private final long startNanos;
        private final double periodNanos;
        /** How many slots the workload has (unbounded with --sagas). */
        private final long slots;
        private long next;
        private long taken;
        private long missed;

        /** {@code seconds}: the time limit, or 0 for none. */
        Schedule(long startNanos, double rate, long seconds) {
            this.startNanos = startNanos;
            this.periodNanos = 1e9 / rate;
            this.slots = seconds == 0 ? Long.MAX_VALUE : (long) Math.ceil(seconds * rate - 1e-6);   // 3 s at 60: 180, not 181
        }

        /** Takes {@code count} slots in a row: the time the first is due, or -1 when the workload's time is over. */
        synchronized long take(int count) {
            // the slot due now may be taken a little late; those before it are missed
            long due = Math.min(slots, (long) Math.floor((System.nanoTime() - startNanos) / periodNanos));
            if (next < due) {
                missed += due - next;
                next = due;
            }
            if (next + count > slots) {
                missed += slots - next;
                next = slots;
                return -1;
            }
            long at = startNanos + Math.round(next * periodNanos);
            next += count;
            taken += count;
            return at;
        }

        synchronized long taken() {
            return taken;
        }

        synchronized long missed() {
            return missed;
        }
    }

    /**
     * Whether the cluster answers: when the first request sent since the last reply to a client went out. A run with
     * no request waiting is idle, not stalled.
     */
    static final class Liveness {
        private long waitingSince = -1;
        private long sent;
        private long answered;

        synchronized void sent(long now) {
            if (waitingSince < 0) {
                waitingSince = now;
            }
            sent++;
        }

        synchronized void answered() {
            waitingSince = -1;
            answered++;
        }

        /** Since when requests have waited without any reply (history time), or -1. */
        synchronized long waitingSince() {
            return waitingSince;
        }

        synchronized String progress() {
            return sent + " requests sent, " + answered + " replies";
        }
    }

    /** Thrown to a client when its next operation has no slot: the time limit is reached, or the run was stopped. */
    static final class WorkloadOver extends Exception {
        private static final long serialVersionUID = 1L;

        WorkloadOver() {
            super("the workload is over", null, false, false);
        }
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
    private final AtomicLong faultsStarted = new AtomicLong();
    /** The node the partition nemesis cuts off (null: none). */
    private volatile String isolated;
    /** The workload's clock (null while measuring: no schedule). */
    private volatile Schedule schedule;
    /** Sagas are numbered across all clients; saga n's choices come from the seed and n alone. */
    private final AtomicLong sagaNumbers = new AtomicLong();
    private final Liveness liveness = new Liveness();
    /** Why the run was stopped early (null: it was not). */
    private volatile String stopped;
    private volatile Thread nemesisThread;

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

    /**
     * One node: its process, restarted under the same id after a kill; stdin fed by one writer from a bounded queue;
     * its stderr copied line by line into node-logs/ID.log, each line stamped with the run's time (seconds, as
     * history.jsonl's), with the harness's own lines (started, killed, paused) between the node's.
     */
    final class NodeProcess {
        final String id;
        private final Path logFile;
        private final BlockingQueue<String> toStdin = new LinkedBlockingQueue<>(QUEUE_BOUND);
        private final Object writing = new Object();
        private final java.io.Writer logWriter;
        private volatile Process process;
        private volatile OutputStream stdin;
        private volatile boolean killedByNemesis;
        private volatile Thread stderrReader;

        NodeProcess(String id) throws IOException {
            this.id = id;
            this.logFile = folder.resolve(NODE_LOGS).resolve(id + ".log");
            this.logWriter = Files.newBufferedWriter(logFile, StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            Thread writer = new Thread(this::writeStdin, id + "-stdin");
            writer.setDaemon(true);
            writer.start();
        }

        /** One line of the node's log, stamped now; flushed at once, so that a log read during the run is whole. */
        void logLine(String text) {
            synchronized (logWriter) {
                try {
                    logWriter.write(String.format(java.util.Locale.ROOT, "%8.3f  %s%n", history.now() / 1e9, text));
                    logWriter.flush();
                } catch (IOException e) {
                    log.println("cluster: cannot write " + logFile + ": " + e.getMessage());
                }
            }
        }

        /** A line in this node's log from the harness, so that its log shows when it was started, killed, paused. */
        void mark(String what) {
            logLine("cluster: " + id + " " + what);
        }

        /** Copies what one process of this node writes on stderr into its log, until the process is gone. */
        private void readStderr(Process mine) {
            try (BufferedReader err = new BufferedReader(new InputStreamReader(mine.getErrorStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = err.readLine()) != null; ) {
                    logLine(line);
                }
            } catch (IOException closed) {
                // the pipe closes when the node is killed
            }
        }

        /** Waits (a little) for the last words of a process that has exited to reach the log. */
        private void awaitStderr() throws InterruptedException {
            Thread reader = stderrReader;
            if (reader != null) {
                reader.join(2000);
            }
        }

        /** Starts the process with the node command, then sends its init before anything else reaches it. */
        CountDownLatch start() throws IOException, CouldNotRun {
            ProcessBuilder builder = new ProcessBuilder(settings.nodeCommand()).directory(folder.toFile());
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
                Thread errors = new Thread(() -> readStderr(started), id + "-stderr");
                errors.setDaemon(true);
                errors.start();
                stderrReader = errors;
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

        /** The end of this node's log, for a message that says why a run could not go on. */
        String stderrTail() throws InterruptedException {
            awaitStderr();
            try {
                List<String> lines = Files.readAllLines(logFile, StandardCharsets.UTF_8);
                return "the end of " + logFile + ": " + String.join(" | ", lines.subList(Math.max(0, lines.size() - 3), lines.size())
                        .stream().map(String::strip).toList());
            } catch (IOException e) {
                return "its log " + logFile + " cannot be read: " + e.getMessage();
            }
        }

        void kill() throws InterruptedException {
            killedByNemesis = true;
            Process victim = process;
            countCpu(victim);
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

        /**
         * The CPU time of the processes this node ran (a restart is a new process), each read just before the harness
         * ends it: a process that exits by itself is gone before it can be read, and is not counted.
         */
        private java.time.Duration cpu = java.time.Duration.ZERO;

        private void countCpu(Process ending) {
            ending.info().totalCpuDuration().ifPresent(used -> cpu = cpu.plus(used));
        }

        /** End of input: the node exits by itself; one that does not within 10 s is killed. Its log is then closed. */
        void stop() throws InterruptedException {
            Process current = process;
            if (current != null) {
                countCpu(current);   // at the end of the workload, before the node drains and exits
                synchronized (writing) {
                    try {
                        stdin.close();
                    } catch (IOException ignored) {
                        // already gone
                    }
                }
                if (!current.waitFor(10, TimeUnit.SECONDS)) {
                    current.destroyForcibly();
                    awaitStderr();
                    mark("did not exit within 10 s of the end of its input: killed");
                } else {
                    awaitStderr();
                    mark("exited with status " + current.exitValue() + " at the end of its input");
                }
            }
            synchronized (logWriter) {
                try {
                    logWriter.close();
                } catch (IOException ignored) {
                    // nothing more to write
                }
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
     * A client: one saga at a time, one operation at a time (a duplicate is sent to two nodes at once, three refunds
     * may go together), each operation started on the workload's schedule; a request not answered within the
     * timeout, or answered 0, 11 or 13, is retried on another node. Its state is touched by its own thread only.
     */
    final class Client {
        final String id;
        /** The nodes of retries, which depend on timing: kept apart from the workload's choices. */
        private final Random retries;
        private final BlockingQueue<JsonNode> inbox = new LinkedBlockingQueue<>(QUEUE_BOUND);
        private final Map<Long, Pending> pending = new HashMap<>();
        private final Map<Long, Op> opOfMsgId = new HashMap<>();
        private final List<Op> ops = new ArrayList<>();
        private long nextMsgId = 1;

        Client(String id, long seed) {
            this.id = id;
            this.retries = new Random(~seed);
            clients.put(id, this);
        }

        void deliver(JsonNode message) {
            liveness.answered();   // the cluster answered, whenever this client gets to read it
            if (!inbox.offer(message)) {
                drop("client inbox full");
            }
        }

        /** The node after {@code node} in the cluster's order: where a duplicate goes, a choice the seed pins. */
        String nextNode(String node) {
            return nodeIds.get((nodeIds.indexOf(node) + 1) % nodeIds.size());
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
            Event invoke = history.add(id, Type.INVOKE, op.number, attempt, node, msgId, op.phase, null, body, null);
            liveness.sent(invoke.nanos());
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

        /**
         * Handles replies until {@code done} says so, every pending request has expired, or the run is stopped; bounded
         * by the client timeout.
         */
        private void await(java.util.function.BooleanSupplier done) throws InterruptedException {
            while (!done.getAsBoolean() && !pending.isEmpty() && stopped == null) {
                long earliest = pending.values().stream().mapToLong(Pending::deadlineNanos).min().orElseThrow();
                long wait = Math.min(Math.max(0, earliest - System.nanoTime()), TimeUnit.MILLISECONDS.toNanos(100));   // a stop is seen soon
                JsonNode message = inbox.poll(wait, TimeUnit.NANOSECONDS);
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
            while (op.answer == null && op.attempts < attempts && (deadlineNanos == 0 || System.nanoTime() < deadlineNanos) && stopped == null) {
                op.attempts++;
                if (op.attempts > 1) {
                    target = otherNode(target);
                }
                long started = System.nanoTime();
                long main = send(op, op.attempts, target);
                if (duplicate && op.attempts == 1) {
                    send(op, op.attempts, nextNode(target));   // the same request at once to another node
                }
                await(() -> op.answer != null || !pending.containsKey(main));
                if (op.answer == null && System.nanoTime() - started < TimeUnit.MILLISECONDS.toNanos(50)) {
                    Thread.sleep(50);   // an indefinite error came back at once: give the fault a moment before the retry
                }
            }
            return op.answer;
        }

        JsonNode call(JsonNode body, String node, boolean duplicate, Phase phase) throws InterruptedException, WorkloadOver {
            return callOp(body, node, duplicate, phase).answer;
        }

        Op callOp(JsonNode body, String node, boolean duplicate) throws InterruptedException, WorkloadOver {
            return callOp(body, node, duplicate, Phase.RUN);
        }

        /**
         * Waits for the workload's next {@code operations} slots (none while measuring). Throws WorkloadOver when there
         * are none left: the saga under way ends there.
         */
        private void onSchedule(int operations) throws InterruptedException, WorkloadOver {
            Schedule clock = schedule;
            if (clock == null) {
                return;
            }
            long at = stopped == null ? clock.take(operations) : -1;
            if (at < 0) {
                throw new WorkloadOver();
            }
            // meanwhile, replies to requests still out (a duplicate's) are read as they come, and timeouts kept
            for (long wait; (wait = at - System.nanoTime()) > 0; ) {
                if (stopped != null) {
                    throw new WorkloadOver();
                }
                JsonNode message = inbox.poll(Math.min(wait, TimeUnit.MILLISECONDS.toNanos(100)), TimeUnit.NANOSECONDS);
                if (message != null) {
                    receive(message);
                }
                expire();
            }
        }

        private Op callOp(JsonNode body, String node, boolean duplicate, Phase phase) throws InterruptedException, WorkloadOver {
            if (phase == Phase.RUN) {
                onSchedule(1);
            }
            Op op = new Op(ops.size() + 1, body, phase);
            ops.add(op);
            call(op, node, duplicate, settings.attempts(), 0);
            return op;
        }

        /**
         * Several operations at once, each to a node of its own choosing (an orchestrator compensating several steps
         * in parallel), then each one's retries, one operation after the other.
         */
        List<Op> callTogether(List<JsonNode> bodies, List<String> nodesToUse) throws InterruptedException, WorkloadOver {
            onSchedule(bodies.size());
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
         * charge and its retry; and 15% of sagas compensate first, then charge (error 14). {@value SagaPlan#TWO_PHASE_PERCENT}% of
         * sagas are two-phase instead ({@link #holdSaga}): reserve, then capture or void. Every choice of a saga is
         * drawn before it starts ({@link SagaPlan}) from the seed and the saga's number, so that the seed pins them
         * whatever the answers and whichever client runs it.
         */
        void runSagas() throws InterruptedException {
            while (stopped == null) {
                long n = sagaNumbers.incrementAndGet();
                if (!settings.timeBound() && n > settings.sagas()) {
                    return;
                }
                try {
                    saga(n);
                } catch (WorkloadOver over) {
                    return;   // the time limit (or a stop) ends the saga under way: its open operations are healed
                }
            }
        }

        private void saga(long n) throws InterruptedException, WorkloadOver {
            SagaPlan plan = SagaPlan.draw(new Random(settings.seed() * 0x9E3779B97F4A7C15L + n * 0xBF58476D1CE4E5B9L), nodeIds);
            String saga = "saga" + n;
            if (plan.twoPhase()) {
                holdSaga(saga, plan);
                return;
            }
            if (plan.kind() < 15) {
                call(refund(saga, 1, null, null), plan.node(0), plan.duplicate(0), Phase.RUN);
                call(charge(saga, 1, plan.amount()), plan.node(1), false, Phase.RUN);
                return;
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

        /**
         * A two-phase saga (SPEC section 12) on step 1: its reservation (sometimes expiring in under 300 ms), then one of
         * <ul>
         * <li>a void that comes first (a null compensation: the step is closed), then the late reservation (error 14) and
         * sometimes its capture (14);</li>
         * <li>a capture, of part (60%) or of all, sometimes first asked for more than is held (22, no record), its retry
         * elsewhere (already_captured), then a refund of 40% of what was captured, or a void (14 already_captured);</li>
         * <li>a void as compensation, its retry elsewhere (already_voided), and sometimes a late capture (14) or a refund of
         * what was never captured (22);</li>
         * <li>a capture and a void of the reservation at once on two nodes (exactly one wins), then each one's retry
         * elsewhere.</li>
         * </ul>
         * The reservation is sometimes overtaken by a capture (14 no_reservation, nothing recorded), retried elsewhere
         * (cached_result), and retried with another amount (22). A hold that may expire is always voided at the end (the
         * compensation of an expired hold releases nothing). Duplicates go to two nodes at once, as for charges.
         */
        private void holdSaga(String saga, SagaPlan plan) throws InterruptedException, WorkloadOver {
            String amount = plan.amount();
            Long ttl = plan.expiresInMs() == 0 ? null : plan.expiresInMs();
            String part = new BigDecimal(amount).multiply(new BigDecimal("0.6")).toPlainString();
            if (plan.holdKind() < 20) {
                call(voidHold(saga, 1), plan.node(0), plan.duplicate(0), Phase.RUN);
                call(reserve(saga, 1, amount, ttl), plan.node(1), plan.duplicate(1), Phase.RUN);
                if (plan.holdFlag(0)) {
                    call(capture(saga, 1, null), plan.node(2), false, Phase.RUN);
                }
            } else {
                if (plan.holdFlag(0)) {
                    call(capture(saga, 1, null), plan.node(7), false, Phase.RUN);   // it overtook its reservation: 14, no record
                }
                JsonNode reserved = call(reserve(saga, 1, amount, ttl), plan.node(0), plan.duplicate(0), Phase.RUN);
                if (plan.holdFlag(1)) {
                    call(reserve(saga, 1, amount, ttl), plan.node(1), false, Phase.RUN);
                }
                if (reserved != null && reserved.path("type").asText().endsWith("_ok") && plan.holdFlag(2)) {
                    call(reserve(saga, 1, new BigDecimal(amount).add(BigDecimal.ONE).toPlainString(), ttl), plan.node(2), false, Phase.RUN);
                }
                String captureAmount = plan.holdFlag(3) ? part : null;
                if (plan.holdKind() < 50) {
                    if (plan.holdFlag(4)) {   // more than is held: 22, and no record, so the capture below is served
                        call(capture(saga, 1, new BigDecimal(amount).add(BigDecimal.ONE).toPlainString()), plan.node(3), false, Phase.RUN);
                    }
                    JsonNode captured = call(capture(saga, 1, captureAmount), plan.node(4), plan.duplicate(1), Phase.RUN);
                    call(capture(saga, 1, captureAmount), plan.node(5), false, Phase.RUN);
                    if (ttl == null && captured != null && captured.path("type").asText().endsWith("_ok") && plan.holdFlag(5)) {
                        String refundPart = captured.path("result").path("captured").decimalValue().multiply(new BigDecimal("0.4")).toPlainString();
                        call(refund(saga, 1, null, refundPart), plan.node(6), plan.duplicate(2), Phase.RUN);
                    } else if (ttl == null && plan.holdFlag(6)) {
                        call(voidHold(saga, 1), plan.node(6), false, Phase.RUN);   // of a captured hold: 14 already_captured
                    }
                } else if (plan.holdKind() < 75) {
                    call(voidHold(saga, 1), plan.node(3), plan.duplicate(1), Phase.RUN);
                    if (plan.holdFlag(4)) {
                        call(voidHold(saga, 1), plan.node(4), false, Phase.RUN);
                    }
                    if (plan.holdFlag(5)) {
                        call(capture(saga, 1, captureAmount), plan.node(5), plan.duplicate(2), Phase.RUN);
                    }
                    if (plan.holdFlag(6)) {
                        call(refund(saga, 1, null, null), plan.node(6), false, Phase.RUN);   // never captured: 22 payment_not_captured
                    }
                } else {
                    List<Op> raced = callTogether(List.of(capture(saga, 1, captureAmount), voidHold(saga, 1)),
                            List.of(plan.node(3), nextNode(plan.node(3))));
                    await(() -> pending.values().stream().noneMatch(request -> raced.contains(request.op())));
                    call(capture(saga, 1, captureAmount), plan.node(4), false, Phase.RUN);
                    call(voidHold(saga, 1), plan.node(5), plan.duplicate(2), Phase.RUN);
                }
                if (ttl != null && plan.holdKind() < 50) {
                    call(voidHold(saga, 1), plan.node(6), false, Phase.RUN);   // the compensation: of an expired hold, it releases 0
                }
            }
            if (plan.flag(4)) {
                call(status(saga, 1), plan.node(7), false, Phase.RUN);
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
                while (op.answer == null && retry.answer == null && System.nanoTime() < deadlineNanos && stopped == null) {
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
                if (stopped != null) {
                    return;
                }
                String[] parts = step.split("\n");
                Op op = new Op(ops.size() + 1, status(parts[0], Long.parseLong(parts[1])), Phase.FINAL);
                ops.add(op);
                call(op, nodeIds.get(retries.nextInt(nodeIds.size())), false, 100, deadlineNanos);
            }
        }

        /**
         * Waits out every request still pending, so that each invocation in the history has its completion; in a run
         * stopped early, what is still pending completes at once as unknown.
         */
        void drain() throws InterruptedException {
            await(() -> false);
            for (Map.Entry<Long, Pending> open : pending.entrySet()) {
                Pending request = open.getValue();
                history.add(id, Type.INFO, request.op().number, request.attempt(), request.node(), open.getKey(), request.op().phase,
                        null, null, "no reply before the run was stopped");
            }
            pending.clear();
        }
    }

    /**
     * Every choice of one saga, drawn before it starts: its kind (0-99), amount, the node of each of its (at most 8)
     * operations, which are duplicated (1 in 4) and its yes/no choices (retry elsewhere 1 in 3, reuse with other params
     * 1 in 6, refunds together 1 in 2, compensation retried 1 in 2, a last status read 1 in 4).
     */
    record SagaPlan(int kind, String amount, List<String> nodes, boolean[] duplicates, boolean[] flags, boolean twoPhase, int holdKind,
                    long expiresInMs, boolean[] holdFlags) {
        /** The share of sagas that are two-phase (in percent). */
        static final int TWO_PHASE_PERCENT = 40;

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
            // drawn after the charge saga's choices, which they leave as they were
            boolean twoPhase = choice.nextInt(100) < TWO_PHASE_PERCENT;
            int holdKind = choice.nextInt(100);
            long expiresInMs = choice.nextInt(4) == 0 ? 1 + choice.nextInt(300) : 0;
            boolean[] holdFlags = {choice.nextInt(4) == 0, choice.nextInt(3) == 0, choice.nextInt(6) == 0, choice.nextBoolean(),
                choice.nextInt(3) == 0, choice.nextBoolean(), choice.nextBoolean()};
            return new SagaPlan(kind, amount, nodes, duplicates, flags, twoPhase, holdKind, expiresInMs, holdFlags);
        }

        boolean holdFlag(int which) {
            return holdFlags[which];
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

    static ObjectNode reserve(String saga, long step, String amount, Long expiresInMs) {
        ObjectNode params = JSON.createObjectNode().put("user_id", "u" + Math.floorMod(saga.hashCode(), 10));
        params.put("amount", new BigDecimal(amount));
        if (expiresInMs != null) {
            params.put("expires_in_ms", expiresInMs);
        }
        return body("ReservePayment", saga, step).set("params", params);
    }

    /** A capture of the step's reservation: of {@code amount}, or (null) of all that is held. */
    static ObjectNode capture(String saga, long step, String amount) {
        ObjectNode body = body("CapturePayment", saga, step);
        ObjectNode params = body.putObject("params");
        if (amount != null) {
            params.put("amount", new BigDecimal(amount));
        }
        return body;
    }

    static ObjectNode voidHold(String saga, long step) {
        return body("VoidPayment", saga, step).put("compensating", true);
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
     * The nemesis: exactly {@code faults} faults, the k-th in the k-th interval of the run (from 1/8 of it to 7/8, so
     * that three quarters of the workload's time has a fault running and each is followed by time to recover). The
     * kinds named are used in rounds, each round every kind once in a seeded order; the targets are seeded too. A run
     * stopped early ends the fault under way at once (a killed node stays down: the run is over).
     */
    private void nemesis(long startNanos) throws Exception {
        List<Nemesis> round = new ArrayList<>();
        long interval = TimeUnit.MILLISECONDS.toNanos(settings.faultIntervalMillis());
        long length = TimeUnit.MILLISECONDS.toNanos(settings.faultLengthMillis());
        for (int k = 0; k < settings.faults(); k++) {
            if (round.isEmpty()) {
                round.addAll(settings.nemeses());
                Collections.shuffle(round, nemesisRandom);
            }
            Nemesis kind = round.remove(0);
            NodeProcess target = nodes.get(nodeIds.get(nemesisRandom.nextInt(nodeIds.size())));
            sleepUntil(startNanos + interval * k + (interval - length) / 2);
            long faultEnd = System.nanoTime() + length;   // from its real start: a slow restart only delays it
            String targetName = kind == Nemesis.KV ? LinKvService.ID : target.id;
            long began = history.now();
            history.add("nemesis", Type.FAULT_START, null, null, targetName, null, null, kind.label(), null, describe(kind, targetName));
            faultsStarted.incrementAndGet();
            CountDownLatch restarted = null;
            boolean runStopped = false;
            try {
                switch (kind) {
                    case KILL -> target.kill();
                    case PAUSE -> target.signal("STOP");
                    case PARTITION -> isolated = target.id;
                    case KV -> linKv.setFaulty(true);
                }
                sleepUntil(faultEnd);
                if (kind == Nemesis.KILL) {
                    restarted = target.start();   // the same command, then init again
                }
            } catch (InterruptedException stop) {
                runStopped = true;
            } finally {
                switch (kind) {
                    case KILL -> {
                        // restarted above, or left down: the run is over
                    }
                    case PAUSE -> target.signal("CONT");
                    case PARTITION -> isolated = null;
                    case KV -> linKv.setFaulty(false);
                }
                faults.add(new Fault(kind.label(), targetName, began, history.now()));
                history.add("nemesis", Type.FAULT_END, null, null, targetName, null, null, kind.label(), null,
                        runStopped ? "the run was stopped" : "healed");
            }
            if (runStopped) {
                return;
            }
            if (restarted != null && !restarted.await(INIT_WAIT_MILLIS, TimeUnit.MILLISECONDS)) {
                log.println("cluster: " + target.id + " did not answer its init within 10 s of its restart");
            }
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

    /** How often the progress line goes to stderr. */
    static final long PROGRESS_EVERY_MILLIS = 3000;

    /**
     * Watches the run until {@code done}: stops it when requests have waited --stall-timeout without any reply (a
     * stall event in the history, the nemesis interrupted, the clients told), and writes a progress line to stderr
     * every few seconds.
     */
    private void watch(CountDownLatch done) throws InterruptedException {
        long stall = TimeUnit.SECONDS.toNanos(settings.stallTimeoutSeconds());
        long nextProgress = history.now() + TimeUnit.MILLISECONDS.toNanos(PROGRESS_EVERY_MILLIS);
        while (!done.await(50, TimeUnit.MILLISECONDS)) {
            long now = history.now();
            long waitingSince = liveness.waitingSince();
            if (waitingSince >= 0 && now - waitingSince >= stall) {
                String why = "no request answered from " + ClusterChecker.seconds(waitingSince) + " to " + ClusterChecker.seconds(now)
                        + " (--stall-timeout " + settings.stallTimeoutSeconds() + " s): the run was stopped there";
                history.add(HARNESS, Type.STALL, null, null, null, null, null, null, null, why);
                stopped = why;
                log.println("cluster: " + why);
                Thread nemesis = nemesisThread;
                if (nemesis != null) {
                    nemesis.interrupt();
                }
                return;
            }
            if (now >= nextProgress) {
                nextProgress += TimeUnit.MILLISECONDS.toNanos(PROGRESS_EVERY_MILLIS);
                log.println(String.format(java.util.Locale.ROOT, "cluster: %.1f s: %s; faults %d of %d; %s", now / 1e9, liveness.progress(),
                        faultsStarted.get(), settings.faultFree() ? 0 : settings.faults(), healing ? "healing and final reads" : "workload"));
            }
        }
    }

    /** Whether the workload and the nemesis are done: for the progress line. */
    private volatile boolean healing;

    Run run() throws Exception {
        long start = System.nanoTime();
        CountDownLatch finished = new CountDownLatch(1);
        Thread watcher = null;
        List<Throwable> failures = Collections.synchronizedList(new ArrayList<>());
        try {
            startNodes();
            watcher = new Thread(() -> {
                try {
                    watch(finished);
                } catch (Throwable e) {
                    failures.add(e);
                }
            }, "watcher");
            watcher.start();
            CountDownLatch workloadMayStart = new CountDownLatch(1);
            CountDownLatch nemesisDone = new CountDownLatch(1);
            CountDownLatch sagasDone = new CountDownLatch(settings.concurrency());
            CountDownLatch healingMayStart = new CountDownLatch(1);
            AtomicLong healDeadline = new AtomicLong();
            List<Thread> threads = new ArrayList<>();
            for (int i = 1; i <= settings.concurrency(); i++) {
                Client client = new Client("c" + i, settings.seed() * 1000 + i);
                Thread thread = new Thread(() -> {
                    try {
                        try {
                            workloadMayStart.await();
                            client.runSagas();
                        } finally {
                            sagasDone.countDown();
                        }
                        healingMayStart.await();
                        if (stopped == null && client.heal(healDeadline.get())) {
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
            // the time limit and the nemesis count from here: every node has answered its init, every client is ready
            long workloadStart = System.nanoTime();
            schedule = new Schedule(workloadStart, settings.rate(), settings.timeBound() ? settings.timeLimitSeconds() : 0);
            workloadMayStart.countDown();
            Thread nemesis = new Thread(() -> {
                try {
                    if (!settings.faultFree()) {
                        nemesis(workloadStart);
                    }
                } catch (InterruptedException stop) {
                    if (stopped == null) {
                        failures.add(stop);
                    }
                } catch (Throwable e) {
                    failures.add(e);
                } finally {
                    nemesisDone.countDown();
                }
            }, "nemesis");
            nemesisThread = nemesis;
            nemesis.start();
            nemesisDone.await();   // healing starts when the last fault has ended and every client's workload is done
            sagasDone.await();
            healing = true;
            healDeadline.set(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(settings.healTimeoutMillis()));
            healingMayStart.countDown();
            for (Thread thread : threads) {
                thread.join();
            }
        } finally {
            finished.countDown();
            if (watcher != null) {
                watcher.join();
            }
            for (NodeProcess node : nodes.values()) {
                node.stop();
            }
            linKv.stop();
        }
        if (!failures.isEmpty()) {
            throw new IllegalStateException("a client, the nemesis or the watcher failed: " + failures.get(0), failures.get(0));
        }
        double seconds = (System.nanoTime() - start) / 1e9;
        List<ClusterHistory.Event> events = history.events();
        Map<String, Long> drops = new java.util.TreeMap<>();
        dropped.forEach((why, count) -> drops.put(why, count.get()));
        Map<String, Double> cpuSeconds = new LinkedHashMap<>();   // the harness's: its whole JVM (tests/cluster.sh starts one per run)
        cpuSeconds.put("harness", ((com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory.getOperatingSystemMXBean())
                .getProcessCpuTime() / 1e9);
        nodes.forEach((id, node) -> cpuSeconds.put(id, node.cpu.toNanos() / 1e9));
        return new Run(settings, folder, events, ClusterChecker.check(events), List.copyOf(faults), linKv.calls(), linKv.fates(),
                drops, seconds, schedule.taken(), schedule.missed(), stopped, cpuSeconds);
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
        void send(int i) throws Exception;
    }

    private void measure(Map<String, Double> perRequest, String kind, int count, Request request) throws Exception {
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

    /**
     * The whole command: parse, run, check, write the results folder, print the summary (and keep what was printed as
     * summary.txt). Returns the exit status.
     */
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
        Path folder;
        try {
            folder = resultsFolder(settings.out());
        } catch (CouldNotRun e) {
            err.println("cluster: " + e.getMessage());
            return EXIT_COULD_NOT_RUN;
        }
        StringBuilder printed = new StringBuilder();
        try {
            print(out, printed, ClusterReport.heading(settings, folder) + "\n");
            if (settings.measure()) {
                new ClusterHarness(settings, folder, err).measureCalls(200).forEach((kind, calls) ->
                        print(out, printed, String.format(java.util.Locale.ROOT, "lin-kv calls per %s: %.2f%n", kind, calls)));
                print(out, printed, "results: " + folder + "\n");
                return EXIT_VALID;
            }
            Run run = new ClusterHarness(settings, folder, err).run();
            ClusterReport.write(run);
            print(out, printed, ClusterReport.summary(run));
            print(out, printed, "results: " + folder + "\n");
            return run.verdict().valid() ? EXIT_VALID : EXIT_INVALID;
        } catch (CouldNotRun e) {
            err.println("cluster: could not run: " + e.getMessage());
            return EXIT_COULD_NOT_RUN;
        } catch (Exception e) {
            err.println("cluster: could not run: " + e);
            e.printStackTrace(err);
            return EXIT_COULD_NOT_RUN;
        } finally {
            try {
                Files.writeString(folder.resolve("summary.txt"), printed, StandardCharsets.UTF_8);
            } catch (IOException e) {
                err.println("cluster: cannot write " + folder.resolve("summary.txt") + ": " + e.getMessage());
            }
        }
    }

    /** Why a file operation failed, in words: the system's reason, or the kind of failure when it gives none. */
    private static String why(Exception e) {
        if (e instanceof java.nio.file.NoSuchFileException missing) {
            return missing.getFile() + ": no such file or folder";
        }
        if (e instanceof java.nio.file.AccessDeniedException denied) {
            return denied.getFile() + ": permission denied";
        }
        if (e instanceof java.nio.file.FileSystemException fs && fs.getReason() != null) {
            return fs.getFile() + ": " + fs.getReason();
        }
        return e.getMessage();
    }

    /** Prints to stdout at once (a long run shows its heading while it runs) and keeps it for summary.txt. */
    private static void print(PrintStream out, StringBuilder printed, String text) {
        out.print(text);
        out.flush();
        printed.append(text);
    }

    /**
     * Creates the run's folder with its node-logs/, and a latest link beside it (never replacing anything but a
     * link). A folder that cannot be made or written is a usage error: one line.
     */
    static Path resultsFolder(Path folder) throws CouldNotRun {
        if (Files.exists(folder) && !Files.isDirectory(folder)) {
            throw new CouldNotRun("--out " + folder + ": it is a file, not a folder");
        }
        try {
            Files.createDirectories(folder.resolve(NODE_LOGS));
        } catch (IOException | UnsupportedOperationException | SecurityException e) {
            throw new CouldNotRun("--out " + folder + ": cannot create the results folder (" + why(e) + ")");
        }
        folder = folder.toAbsolutePath().normalize();
        if (!Files.isWritable(folder)) {
            throw new CouldNotRun("--out " + folder + ": the results folder is not writable");
        }
        Path latest = folder.resolveSibling("latest");
        try {
            if (!Files.exists(latest, java.nio.file.LinkOption.NOFOLLOW_LINKS) || Files.isSymbolicLink(latest)) {
                Path link = folder.resolveSibling(".latest-" + ProcessHandle.current().pid());
                Files.deleteIfExists(link);
                Files.createSymbolicLink(link, folder.getFileName());
                Files.move(link, latest, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
            }
        } catch (IOException | UnsupportedOperationException e) {
            throw new CouldNotRun("--out " + folder + ": cannot link " + latest + " to it (" + e.getMessage() + ")");
        }
        return folder;
    }
}
