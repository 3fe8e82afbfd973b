package payment;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * The cluster held to the same reference model as one node ({@link ReferenceModel}, the one ModelTest uses):
 * random sequences of requests from two or three concurrent clients, sent at random to two or three
 * {@code --store lin-kv} nodes running in this JVM ({@link SimCluster}), on an in-test lin-kv behind a
 * network that delays, reorders, duplicates, drops and (in some runs) corrupts messages and sometimes kills
 * a node.
 *
 * <p><b>The scheduler.</b> One seeded Random decides everything: when each client sends its next request and
 * to which node; which message on the wire is delivered next (any whose delay has passed: reordering); how
 * late each message is (mostly 0-1 ticks, some 2-10, a few 20-100, and in each run one "slow shard", a
 * quarter of the lin-kv keys by hash, whose messages are very late half the time: a charge's second write
 * can then stay in flight while other clients read and refund); which are duplicated (every kind but cas
 * requests, see {@link #DUPLICATE_CAS}) or dropped; which read replies are damaged on the wire (10% of the
 * runs); when a node is killed (SIGKILL: its process and memory are gone, what it sent stays on the wire, a
 * new process starts under the same id with a new init); and when time passes ({@link SimCluster#expireAll}:
 * every lin-kv call open at that moment times out, so a dropped call ends in an error 0 at a chosen step and
 * late replies come afterwards). A tick is one delivery; while a client is about to send, time does not
 * jump ahead to the next late message. Only one message moves at a time, and the scheduler waits until its
 * node has handled it, so a seed gives the same run every time (after a warm-up, see {@link #warmUp}), and
 * shrinking means something. A timeout the scheduler did not cause (a slow machine) is counted and reported.
 *
 * <p><b>Clients.</b> Each client sends its requests one after the other. A definite reply ends a request; an
 * indefinite one (error 0 or 13, or 11: nothing done), or no reply because the node was killed, leaves its
 * outcome unknown, and the client sends the same request again (same params, new msg_id, any node) until it
 * gets a definite reply (at most 40 attempts: a request that never gets one fails the test). Refunds may
 * name payment ids learned from earlier replies (PaymentStatus reads and charges), usually of another step.
 * A third of the runs also carry a saga's usual traffic: one client charges a step and then compensates it,
 * another reads that step's status until it shows the charge and at once refunds that payment under a step
 * of its own (a PaymentStatus read can reveal a payment before its charge is answered). At the end one more
 * client reads every step's PaymentStatus.
 *
 * <p><b>The check.</b> The cluster is the card's table applied in the order of the log it keeps in lin-kv, so
 * the check is exact and needs no search: at the end of the run the log is read from lin-kv and replayed into
 * the reference model, request by request ({@link #notAsTheLog}); every definite reply to a charge or a refund
 * must be exactly the model's answer at its request's position, ids, notes, texts and amounts' digits
 * included; no attempt may be in the log twice (nothing is applied twice), none answered 11 ("nothing was
 * done") may be in it at all, and each PaymentStatus read must be the model's answer at a position between
 * every request answered before it was sent and the first one sent after it was answered (a linearizable
 * read). Beyond the replies, invariants are checked on the replies alone: one payment per step key, the
 * refunds of a payment (summed over every refund key that names it) never above its charge and equal to what
 * the final status reads say was refunded, and a step that the final reads show compensated never charged.
 *
 * <p>A failing sequence is shrunk (requests taken out while it still fails the same way, with the same seed
 * for the scheduler) and printed with its seed: {@code -Dcluster.model.seed=N} runs that sequence first,
 * {@code -Dcluster.model.sequences=N} runs more (30 by default, a few seconds; 2,000 is the long run). {@code -Dcluster.model.survey=true} goes
 * on past failures and reports how many sequences fail each way, with the first of each kind shrunk.
 */
class ClusterModelTest {
    /** A few seconds by default (the fast tier); {@code -Dcluster.model.sequences=2000} is the long run. */
    private static final int SEQUENCES = Integer.getInteger("cluster.model.sequences", 30);
    private static final long BASE_SEED = Long.getLong("cluster.model.seed", 20261201L);
    /** Short, so that a time jump costs little; a run between two jumps keeps every call far below it. */
    private static final long KV_TIMEOUT_MILLIS = Long.getLong("cluster.model.kv-timeout", 50L);
    /**
     * A cas delivered twice, whose second (refused) answer overtakes the first, looks to any lin-kv client like
     * someone else's write of the same value: the node then answers a first attempt with a retry's note. That
     * is harmless for money and cannot be told apart without a writer's token in every record, so by default
     * the network duplicates every message but cas requests.
     */
    private static final boolean DUPLICATE_CAS = Boolean.getBoolean("cluster.model.duplicate-cas");
    /**
     * Attempts a client makes before it calls its request stuck. Every write and every read of the end goes through the
     * log's next slot, and a slot whose key falls in the run's slow shard answers 20-100 ticks late half the time: a few
     * such slots in a row leave every client answered "unknown" for a hundred ticks and more (two-phase sagas made the
     * sequences longer, and twice in mvn verify a client ran out of 40 attempts while the cluster was waiting on them).
     */
    private static final int MAX_ATTEMPTS_PER_REQUEST = 120;
    private static final int MAX_STATUS_POLLS = 8;
    /** In lossy runs, the share of forwarded batches (percent) held until the next time jump, past their node's patience. */
    private static final int LATE_FORWARD_PERCENT = 5;
    private static final String CORRUPTED_MARK = "a node must answer such a read with an indefinite error, and decide nothing on it";
    /** For the survey's report: how much work the runs were. */
    private static final java.util.concurrent.atomic.AtomicLong DELIVERIES = new java.util.concurrent.atomic.AtomicLong();
    private static final java.util.concurrent.atomic.AtomicLong TIME_JUMPS = new java.util.concurrent.atomic.AtomicLong();
    /** Timeouts that came while the scheduler let no time pass: the machine was slow, and the run may not repeat. */
    private static final java.util.concurrent.atomic.AtomicLong UNCAUSED_TIMEOUTS = new java.util.concurrent.atomic.AtomicLong();
    private static final int WARM_UP_SEQUENCES = Integer.getInteger("cluster.model.warm-up", 10);
    private static final int LOSSY_PERCENT = Integer.getInteger("cluster.model.lossy-percent", 7);
    private static final double DROP_RATE = Double.parseDouble(System.getProperty("cluster.model.drop-rate", "0.01"));
    private static final int LATE_PERCENT = Integer.getInteger("cluster.model.late-percent", 10);
    private static final int VERY_LATE_PERCENT = Integer.getInteger("cluster.model.very-late-percent", 3);
    private static final int SHARDS = 4;
    private static final int SLOW_SHARD_PERCENT = Integer.getInteger("cluster.model.slow-shard-percent", 50);
    private static final int VERY_LATE_TICKS = Integer.getInteger("cluster.model.very-late-ticks", 80);
    private static final int VERY_LATE_MIN = Integer.getInteger("cluster.model.very-late-min", 20);
    private static final int MAX_STEPS = 50_000;
    private static final int MAX_SEARCH_STATES = 400_000;

    // ---- the sequences -------------------------------------------------------------------------------------

    private static final String[] SAGAS = {"A", "B", "C"};
    /** Steps 1 and 2 are mostly charged, step 3 mostly reserved (SPEC section 12); each kind sometimes meets the other. */
    private static final int STEPS = 2;
    private static final int TWO_PHASE_PERCENT = Integer.getInteger("cluster.model.two-phase-percent", 30);
    private static final String[] USERS = {"u1", "u2"};
    private static final String[] CHARGES = {"100", "100.00", "50", "30.5"};
    private static final String[] REFUNDS = {"100", "50", "30", "20.25", "0.5", "100.00"};

    enum Kind { CHARGE, REFUND, STATUS, RESERVE, CAPTURE, VOID }

    /** A reservation's expires_in_ms: none, one that passes at once (decided by the log's times), one that never does in a run. */
    private static final Long[] EXPIRES_IN_MS = {null, null, null, 1L, 100_000_000L};
    /** What a capture asks for: all that is held (none given), a part, all of it given, or more than is held (22). */
    private static final String[] CAPTURES = {null, null, "30", "20.25", "100", "1000"};

    /** Which payment a refund names: none, one that no node ever made, or the one learned for a step. */
    enum Naming { NONE, UNKNOWN, LEARNED }

    /** One request of a client's list; a refund's {@code learnedFrom} is resolved when it is sent. */
    record Request(Kind kind, String saga, int step, String user, String amount, Naming naming, String learnedFrom, boolean compensating,
                   boolean untilCharged, Long expiresInMs) {
        Request(Kind kind, String saga, int step, String user, String amount, Naming naming, String learnedFrom, boolean compensating) {
            this(kind, saga, step, user, amount, naming, learnedFrom, compensating, false, null);
        }

        Request(Kind kind, String saga, int step, String user, String amount, Naming naming, String learnedFrom, boolean compensating,
                boolean untilCharged) {
            this(kind, saga, step, user, amount, naming, learnedFrom, compensating, untilCharged, null);
        }

        String key() {
            return saga + ":step" + step;
        }

        @Override
        public String toString() {
            return switch (kind) {
                case CHARGE -> "charge " + key() + " " + user + " " + amount;
                case STATUS -> "status " + key() + (untilCharged ? " (again until it shows a charge or a reservation, at most " + MAX_STATUS_POLLS + " times)" : "");
                case RESERVE -> "reserve " + key() + " " + user + " " + amount + (expiresInMs == null ? "" : " expires_in_ms=" + expiresInMs);
                case CAPTURE, VOID -> kind.name().toLowerCase(java.util.Locale.ROOT) + " " + key()
                        + (naming == Naming.NONE ? "" : naming == Naming.UNKNOWN ? " payment_id=p0" : " payment_id=(learned for " + learnedFrom + ")")
                        + (amount == null ? "" : " amount=" + amount) + (compensating ? " compensating" : "");
                case REFUND -> "refund " + key() + (naming == Naming.NONE ? "" : naming == Naming.UNKNOWN ? " payment_id=p0"
                        : " payment_id=(learned for " + learnedFrom + ")") + (amount == null ? "" : " amount=" + amount)
                        + (compensating ? " compensating" : "");
            };
        }
    }

    /** A sequence: each client's requests, and how rough the network is. */
    record Sequence(long seed, int nodes, List<List<Request>> clients, double dropRate, double killRate, double duplicateRate,
                    double timeJumpRate, double corruptRate) {
        Sequence without(int client, int index) {
            List<List<Request>> fewer = new ArrayList<>();
            for (int c = 0; c < clients.size(); c++) {
                List<Request> requests = new ArrayList<>(clients.get(c));
                if (c == client) {
                    requests.remove(index);
                }
                fewer.add(requests);
            }
            return new Sequence(seed, nodes, fewer, dropRate, killRate, duplicateRate, timeJumpRate, corruptRate);
        }

        int size() {
            return clients.stream().mapToInt(List::size).sum();
        }

        @Override
        public String toString() {
            StringBuilder text = new StringBuilder(nodes + " nodes, drops " + dropRate + ", kills " + killRate + ", duplicates "
                    + duplicateRate + ", time jumps " + timeJumpRate + ", corrupt reads " + corruptRate);
            for (int c = 0; c < clients.size(); c++) {
                text.append("\n  c").append(c + 1).append(": ").append(String.join(" | ", clients.get(c).stream().map(Request::toString).toList()));
            }
            return text.toString();
        }
    }

    private static String pick(Random random, String[] from) {
        return from[random.nextInt(from.length)];
    }

    static Sequence generate(long seed) {
        Random random = new Random(seed);
        int nodes = 2 + random.nextInt(2);
        int clientCount = 2 + random.nextInt(2);
        List<List<Request>> clients = new ArrayList<>();
        for (int c = 0; c < clientCount; c++) {
            List<Request> requests = new ArrayList<>();
            int count = 3 + random.nextInt(10);
            for (int i = 0; i < count; i++) {
                if (!requests.isEmpty() && random.nextInt(10) == 0) {
                    requests.add(requests.get(random.nextInt(requests.size())));   // the same request again, later
                    continue;
                }
                String saga = pick(random, SAGAS);
                int step = 1 + random.nextInt(STEPS);
                int kind = random.nextInt(100);
                if (random.nextInt(100) < TWO_PHASE_PERCENT) {
                    // A two-phase message, mostly on the two-phase step (3), else on a step that charges use too.
                    int twoPhaseStep = random.nextInt(4) == 0 ? step : STEPS + 1;
                    int which = random.nextInt(10);
                    Naming how = random.nextInt(5) == 0 ? Naming.LEARNED : Naming.NONE;
                    String learnedFrom = how == Naming.LEARNED ? saga + ":step" + (1 + random.nextInt(STEPS + 1)) : null;
                    if (which < 4) {
                        requests.add(new Request(Kind.RESERVE, saga, twoPhaseStep, pick(random, USERS), pick(random, CHARGES), Naming.NONE, null,
                                false, false, EXPIRES_IN_MS[random.nextInt(EXPIRES_IN_MS.length)]));
                    } else if (which < 7) {
                        requests.add(new Request(Kind.CAPTURE, saga, twoPhaseStep, null, pick(random, CAPTURES), how, learnedFrom, false));
                    } else if (which < 9) {
                        requests.add(new Request(Kind.VOID, saga, twoPhaseStep, null, null, how, learnedFrom, random.nextBoolean()));
                    } else {
                        requests.add(new Request(Kind.REFUND, saga, twoPhaseStep, null, random.nextBoolean() ? null : pick(random, REFUNDS),
                                Naming.NONE, null, true));
                    }
                    continue;
                }
                if (kind < 35) {
                    requests.add(new Request(Kind.CHARGE, saga, step, pick(random, USERS), pick(random, CHARGES), Naming.NONE, null, false));
                } else if (kind < 75) {
                    int naming = random.nextInt(20);
                    Naming how = naming < 7 ? Naming.NONE : naming < 17 ? Naming.LEARNED : Naming.UNKNOWN;
                    String learnedFrom = how == Naming.LEARNED ? pick(random, SAGAS) + ":step" + (1 + random.nextInt(STEPS)) : null;
                    String amount = random.nextInt(5) < 2 ? null : pick(random, REFUNDS);
                    if (how == Naming.LEARNED && random.nextBoolean()) {
                        // An orchestrator that asks first, then refunds what the answer showed.
                        String[] learnedStep = learnedFrom.split(":step");
                        requests.add(new Request(Kind.STATUS, learnedStep[0], Integer.parseInt(learnedStep[1]), null, null, Naming.NONE, null, false));
                    }
                    requests.add(new Request(Kind.REFUND, saga, step, null, amount, how, learnedFrom, random.nextBoolean()));
                } else {
                    requests.add(new Request(Kind.STATUS, saga, step, null, null, Naming.NONE, null, false));
                }
            }
            clients.add(requests);
        }
        if (random.nextInt(3) == 0) {
            // A saga's usual traffic, at the same time: one client charges a step and later compensates it; another
            // asks for that step's status and refunds the payment it shows under a step of its own.
            String charged = pick(random, SAGAS) + ":step" + (1 + random.nextInt(STEPS));
            String[] k1 = charged.split(":step");
            String other;
            do {
                other = pick(random, SAGAS) + ":step" + (1 + random.nextInt(STEPS));
            } while (other.equals(charged));
            String[] k2 = other.split(":step");
            clients.get(0).addAll(0, List.of(
                    new Request(Kind.CHARGE, k1[0], Integer.parseInt(k1[1]), pick(random, USERS), pick(random, CHARGES), Naming.NONE, null, false),
                    new Request(Kind.REFUND, k1[0], Integer.parseInt(k1[1]), null, null, Naming.NONE, null, true)));
            // It asks until it sees the charge (its first read often comes before the charge lands), then at once
            // refunds what it saw.
            Request status = new Request(Kind.STATUS, k1[0], Integer.parseInt(k1[1]), null, null, Naming.NONE, null, false, true);
            clients.get(1).addAll(0, List.of(status,
                    new Request(Kind.REFUND, k2[0], Integer.parseInt(k2[1]), null, pick(random, REFUNDS), Naming.LEARNED, charged, true)));
        }
        if (random.nextInt(2) == 0) {
            // A two-phase saga, raced: one client reserves a step, captures it (all or part) and refunds some of the
            // capture; another reads the step until it shows the reservation and voids it at once, on any node. One of
            // the capture and the void wins, never both.
            String saga = pick(random, SAGAS);
            int step = STEPS + 1;
            List<Request> first = clients.get(random.nextInt(clients.size()));
            List<Request> second = clients.get((clients.indexOf(first) + 1) % clients.size());
            first.addAll(random.nextInt(first.size() + 1), List.of(
                    new Request(Kind.RESERVE, saga, step, pick(random, USERS), pick(random, CHARGES), Naming.NONE, null, false, false,
                            random.nextInt(4) == 0 ? EXPIRES_IN_MS[random.nextInt(EXPIRES_IN_MS.length)] : null),
                    new Request(Kind.CAPTURE, saga, step, null, pick(random, CAPTURES), Naming.NONE, null, false),
                    new Request(Kind.REFUND, saga, step, null, random.nextBoolean() ? null : "0.5", Naming.NONE, null, true)));
            second.addAll(random.nextInt(second.size() + 1), List.of(
                    new Request(Kind.STATUS, saga, step, null, null, Naming.NONE, null, false, true),
                    new Request(Kind.VOID, saga, step, null, null, Naming.NONE, null, true)));
        }
        // Each time jump (a dropped call, a late reply) costs a kv timeout of wall time: few sequences are lossy.
        boolean lossy = random.nextInt(100) < LOSSY_PERCENT;
        boolean kills = random.nextInt(5) == 0;
        boolean corrupting = random.nextInt(10) == 0;
        return new Sequence(seed, nodes, clients, lossy ? DROP_RATE : 0, kills ? 0.01 : 0, 0.03, lossy ? 0.001 : 0, corrupting ? 0.02 : 0);
    }

    // ---- a run -----------------------------------------------------------------------------------------------

    /** One attempt of one request: what was sent, when, and its definite reply (null: the outcome is unknown). */
    static final class Attempt {
        final int index;
        final String client;
        /** Which of the client's requests (the final status reads count as requests of their own client). */
        final int request;
        final Kind kind;
        final String key;
        final JsonNode body;
        final String node;
        final long sentAt;
        final long msgId;
        /** The wall clock when it was sent and when its reply came: a status read is decided by its node's clock in between. */
        final long sentWall = System.currentTimeMillis();
        long answeredWall = Long.MAX_VALUE;
        long answeredAt = Long.MAX_VALUE;
        JsonNode reply;
        /** The error code of an indefinite reply (0, 11, 13); -1 when none came or the reply was definite. */
        int code = -1;

        Attempt(int index, String client, int request, Kind kind, String key, JsonNode body, String node, long sentAt, long msgId) {
            this.msgId = msgId;
            this.index = index;
            this.client = client;
            this.request = request;
            this.kind = kind;
            this.key = key;
            this.body = body;
            this.node = node;
            this.sentAt = sentAt;
        }

        boolean definite() {
            return reply != null;
        }

        @Override
        public String toString() {
            return "#" + index + " " + client + "->" + node + " " + body + " => " + (reply == null ? "(unknown" + (code >= 0 ? ": error " + code : ": no reply") + ")" : reply)
                    + " [sent " + sentAt + ", answered " + (answeredAt == Long.MAX_VALUE ? "never" : answeredAt) + "]";
        }
    }

    /** A client: its list, where it is in it, and the attempt it waits for. */
    private static final class Client {
        final String id;
        final List<Request> requests;
        int next;
        Attempt waiting;
        JsonNode body;   // the request being sent, fixed at its first attempt
        int attempts;
        int polls;
        /** Sends its next request at once (an orchestrator acting on what it just read). */
        boolean hurry;
        long readyAt;

        Client(String id, List<Request> requests) {
            this.id = id;
            this.requests = requests;
        }
    }

    /** The history of one run, or why the run itself could not finish. */
    record History(List<Attempt> attempts, String stuck, long uncausedTimeouts, long corruptedReads, List<String> log) {
        History(List<Attempt> attempts, String stuck, long uncausedTimeouts, long corruptedReads) {
            this(attempts, stuck, uncausedTimeouts, corruptedReads, List.of());
        }
    }

    /** The log as lin-kv holds it at the end of a run: the values of log/1, log/2, ... up to the first missing. */
    private static List<String> logOf(SimCluster cluster) {
        List<String> log = new ArrayList<>();
        for (JsonNode value; (value = cluster.kv.get(ClusterService.slotKey(log.size() + 1))) != null; ) {
            log.add(value.isTextual() ? value.asText() : value.toString());
        }
        return log;
    }

    static History run(Sequence sequence) {
        return run(sequence, KV_TIMEOUT_MILLIS);
    }

    static History run(Sequence sequence, long kvTimeoutMillis) {
        Random random = new Random(sequence.seed() * 31 + 7);
        List<String> nodeIds = new ArrayList<>();
        for (int i = 1; i <= sequence.nodes(); i++) {
            nodeIds.add("n" + i);
        }
        List<Attempt> attempts = new ArrayList<>();
        Map<String, Client> clients = new LinkedHashMap<>();
        for (int c = 0; c < sequence.clients().size(); c++) {
            clients.put("c" + (c + 1), new Client("c" + (c + 1), sequence.clients().get(c)));
        }
        List<Request> finalReads = new ArrayList<>();
        for (String saga : SAGAS) {
            for (int step = 1; step <= STEPS + 1; step++) {
                finalReads.add(new Request(Kind.STATUS, saga, step, null, null, Naming.NONE, null, false));
            }
        }
        Client checker = new Client("checker", finalReads);
        Map<String, String> learned = new HashMap<>();   // step key -> the payment id a reply showed for it
        Map<Long, Attempt> byMsgId = new HashMap<>();
        long[] clock = {0};
        long[] msgIds = {0};
        long[] uncaused = {0};
        long[] corruptions = {0};
        SimCluster[] holder = new SimCluster[1];
        java.util.function.Consumer<JsonNode> onReply = message -> {
            Attempt attempt = byMsgId.remove(message.path("body").path("in_reply_to").asLong(-1));
            if (attempt == null) {
                return;   // a reply to an attempt already given up (its node was killed), or a duplicate
            }
            Client client = attempt.client.equals("checker") ? checker : clients.get(attempt.client);
            if (client.waiting != attempt) {
                return;
            }
            ObjectNode body = message.get("body").deepCopy();
            body.remove("in_reply_to");
            body.remove("msg_id");
            attempt.answeredAt = ++clock[0];
            attempt.answeredWall = System.currentTimeMillis();
            client.waiting = null;
            int code = "error".equals(body.path("type").asText()) ? body.path("code").asInt() : -1;
            if (code == 0 && !holder[0].expiring) {
                uncaused[0]++;
            }
            if (code == 0 || code == 11 || code == 13) {
                attempt.code = code;
                if (Boolean.getBoolean("cluster.model.debug")) System.out.println("DEBUG " + body);
                return;   // the outcome is unknown: the client sends it again
            }
            attempt.reply = body;
            learn(learned, attempt.key, body);
            Request request = client.requests.get(client.next);
            if (request.untilCharged() && !"charged".equals(body.path("status").asText()) && !"reserved".equals(body.path("status").asText())
                    && ++client.polls < MAX_STATUS_POLLS) {
                client.attempts = 0;
                return;   // the same read again, as a new request of its own
            }
            client.polls = 0;
            client.next++;
            client.hurry = request.untilCharged();
            client.body = null;
            client.attempts = 0;
        };
        SimCluster cluster = new SimCluster(nodeIds, kvTimeoutMillis, Boolean.getBoolean("cluster.model.debug") ? System.err : OutputStream.nullOutputStream(), onReply);
        holder[0] = cluster;
        // One shard of lin-kv (a quarter of the keys, by hash) is slow in this run: half of the messages about
        // its keys arrive very late. Long enough for other clients to read what a half-done request wrote and
        // act on it before its next write lands.
        int slowShard = random.nextInt(SHARDS);
        cluster.delays = message -> {
            int roll = random.nextInt(100);
            if (message.about != null && Math.floorMod(message.about.hashCode(), SHARDS) == slowShard && random.nextInt(100) < SLOW_SHARD_PERCENT) {
                return VERY_LATE_MIN + random.nextInt(VERY_LATE_TICKS);
            }
            return roll < 100 - LATE_PERCENT - VERY_LATE_PERCENT ? random.nextInt(2) : roll < 100 - VERY_LATE_PERCENT ? 2 + random.nextInt(8)
                    : VERY_LATE_MIN + random.nextInt(VERY_LATE_TICKS);
        };
        String stuck = null;
        try {
            int idleRounds = 0;
            for (int step = 0; step < MAX_STEPS; step++) {
                boolean clientsDone = clients.values().stream().allMatch(c -> c.next >= c.requests.size() && c.waiting == null);
                List<Client> active = new ArrayList<>();
                if (clientsDone) {
                    if (checker.next < checker.requests.size() || checker.waiting != null) {
                        active.add(checker);
                    } else if (cluster.inFlight.isEmpty()) {
                        break;
                    }
                } else {
                    active.addAll(clients.values());
                }
                // Clients send when they are ready: each request at a random moment.
                for (Client client : active) {
                    if (client.waiting == null && client.next < client.requests.size() && client.readyAt <= cluster.now && (client.hurry || random.nextInt(3) == 0)) {
                        client.hurry = false;
                        if (++client.attempts > MAX_ATTEMPTS_PER_REQUEST) {
                            stuck = client.id + " got no definite answer to " + client.requests.get(client.next) + " in "
                                    + MAX_ATTEMPTS_PER_REQUEST + " attempts";
                            return new History(attempts, stuck, uncaused[0], corruptions[0]);
                        }
                        Request request = client.requests.get(client.next);
                        if (client.body == null) {
                            client.body = body(request, learned);
                        }
                        ObjectNode body = client.body.deepCopy();
                        body.put("msg_id", ++msgIds[0]);
                        String node = nodeIds.get(random.nextInt(nodeIds.size()));
                        Attempt attempt = new Attempt(attempts.size(), client.id, client.next, request.kind(), request.key(),
                                client.body, node, ++clock[0], msgIds[0]);
                        attempts.add(attempt);
                        client.waiting = attempt;
                        byMsgId.put(msgIds[0], attempt);
                        cluster.request(node, client.id, body.toString());
                    }
                }
                if (sequence.killRate() > 0 && random.nextDouble() < sequence.killRate()) {
                    String victim = nodeIds.get(random.nextInt(nodeIds.size()));
                    for (Client client : allOf(clients, checker)) {
                        if (client.waiting != null && client.waiting.node.equals(victim)) {
                            byMsgId.values().remove(client.waiting);
                            client.waiting.answeredAt = ++clock[0];
                            client.waiting = null;   // no reply will come: the outcome is unknown
                        }
                    }
                    cluster.kill(victim);
                }
                if (sequence.timeJumpRate() > 0 && random.nextDouble() < sequence.timeJumpRate()) {
                    cluster.expireAll();
                    cluster.release(held -> true);
                }
                List<SimCluster.Message> ready = new ArrayList<>();
                long soonest = Long.MAX_VALUE;
                for (SimCluster.Message message : cluster.inFlight) {
                    if (message.readyAt <= cluster.now) {
                        ready.add(message);
                    }
                    soonest = Math.min(soonest, message.readyAt);
                }
                cluster.now++;
                if (!ready.isEmpty()) {
                    idleRounds = 0;
                    SimCluster.Message message = ready.get(random.nextInt(ready.size()));
                    double roll = random.nextDouble();
                    if (sequence.corruptRate() > 0 && "read_ok".equals(message.type()) && message.body().has("value")
                            && random.nextDouble() < sequence.corruptRate()) {
                        message.replaceBody(corrupted(message.body(), random));
                        corruptions[0]++;
                    }
                    if (roll < sequence.dropRate()) {
                        cluster.drop(message);
                    } else if (sequence.dropRate() > 0 && "log_forward".equals(message.type()) && random.nextInt(100) < LATE_FORWARD_PERCENT) {
                        // Held until time has passed: its node appends the batch itself meanwhile, then the appender
                        // carries it too, and every node must skip the second copy.
                        cluster.inFlight.remove(message);
                        cluster.held.add(message);
                    } else {
                        if (roll < sequence.dropRate() + sequence.duplicateRate() && (DUPLICATE_CAS || !"cas".equals(message.type()))) {
                            cluster.duplicate(message, cluster.now + random.nextInt(20));
                        }
                        cluster.deliver(message);
                    }
                    continue;
                }
                boolean thinking = active.stream().anyMatch(c -> c.waiting == null && c.next < c.requests.size());
                if (soonest != Long.MAX_VALUE) {
                    // Nothing to deliver yet: time passes, a tick at a time while a client is about to send (so a
                    // late message stays late while others act), else at once to the next message.
                    cluster.now = thinking ? cluster.now : Math.max(cluster.now, soonest);
                    continue;
                }
                boolean waiting = allOf(clients, checker).stream().anyMatch(c -> c.waiting != null);
                if (waiting && ++idleRounds > 3) {
                    // Nothing on the wire and a client still waits: its call was dropped. Let time pass.
                    if (idleRounds > 6) {
                        stuck = "a node never answered: " + allOf(clients, checker).stream().filter(c -> c.waiting != null)
                                .map(c -> c.waiting.toString()).toList();
                        return new History(attempts, stuck, uncaused[0], corruptions[0]);
                    }
                    cluster.expireAll();
                    cluster.release(held -> true);   // forwards held past the time jump come now: their batches may land twice
                }
            }
            if (!clients.values().stream().allMatch(c -> c.next >= c.requests.size()) || checker.next < checker.requests.size()) {
                stuck = "the run did not end in " + MAX_STEPS + " steps";
            }
            return new History(attempts, stuck, uncaused[0], corruptions[0], logOf(cluster));
        } catch (AssertionError broken) {
            // A node that prints a broken line, floods the wire or stops answering: the run cannot go on.
            return new History(attempts, "the cluster broke the protocol: " + broken.getMessage(), uncaused[0], corruptions[0]);
        } finally {
            DELIVERIES.addAndGet(cluster.deliveries);
            UNCAUSED_TIMEOUTS.addAndGet(uncaused[0]);
            TIME_JUMPS.addAndGet(cluster.timeJumps);
            cluster.close();
        }
    }

    /**
     * A read reply damaged on the wire (the value in lin-kv is intact): a record of a state no node writes, one
     * with a field missing, or one with a number where a string belongs. A node must not decide anything on it:
     * an indefinite error (which its client retries) is the only right answer.
     */
    private static JsonNode corrupted(JsonNode body, Random random) {
        ObjectNode copy = body.deepCopy();
        if (copy.get("value").isTextual()) {
            // An entry of the log: one character changed, the text cut short, or a number instead.
            String text = copy.get("value").asText();
            int at = random.nextInt(Math.max(1, text.length()));
            switch (random.nextInt(3)) {
                case 0 -> copy.put("value", text.substring(0, at) + (char) (text.isEmpty() || text.charAt(at) == '7' ? '8' : '7')
                        + text.substring(Math.min(text.length(), at + 1)));
                case 1 -> copy.put("value", text.substring(0, at));
                default -> copy.put("value", 30);
            }
            return copy;
        }
        ObjectNode value = (ObjectNode) copy.get("value");
        List<String> fields = new ArrayList<>();
        value.fieldNames().forEachRemaining(fields::add);
        switch (random.nextInt(3)) {
            case 0 -> value.put(value.has("state") ? "state" : fields.get(0), "refunding");
            case 1 -> value.remove(fields.get(random.nextInt(fields.size())));
            default -> value.put(fields.get(random.nextInt(fields.size())), 30);
        }
        return copy;
    }

    private static List<Client> allOf(Map<String, Client> clients, Client checker) {
        List<Client> all = new ArrayList<>(clients.values());
        all.add(checker);
        return all;
    }

    private static void learn(Map<String, String> learned, String key, JsonNode reply) {
        String fromCharge = reply.path("result").path("payment_id").asText(null);
        String fromStatus = reply.path("payment").path("payment_id").asText(null);
        if (("ChargePayment_ok".equals(reply.path("type").asText()) || "ReservePayment_ok".equals(reply.path("type").asText())) && fromCharge != null) {
            learned.put(key, fromCharge);
        } else if ("PaymentStatus_ok".equals(reply.path("type").asText()) && fromStatus != null) {
            learned.put(key, fromStatus);
        }
    }

    private static ObjectNode body(Request request, Map<String, String> learned) {
        ObjectNode body = SimCluster.EXACT_JSON.createObjectNode();
        body.put("type", switch (request.kind()) {
            case CHARGE -> "ChargePayment";
            case REFUND -> "RefundPayment";
            case STATUS -> "PaymentStatus";
            case RESERVE -> "ReservePayment";
            case CAPTURE -> "CapturePayment";
            case VOID -> "VoidPayment";
        });
        body.put("saga_id", request.saga());
        body.put("step", request.step());
        if (request.kind() == Kind.CHARGE || request.kind() == Kind.RESERVE) {
            ObjectNode params = body.putObject("params");
            params.put("user_id", request.user());
            params.set("amount", number(request.amount()));
            if (request.expiresInMs() != null) {
                params.put("expires_in_ms", request.expiresInMs());
            }
        } else if (request.kind() != Kind.STATUS) {
            if (request.compensating()) {
                body.put("compensating", true);
            }
            String paymentId = request.naming() == Naming.UNKNOWN ? "p0"
                    : request.naming() == Naming.LEARNED ? learned.get(request.learnedFrom()) : null;
            if (paymentId != null || request.amount() != null) {
                ObjectNode params = body.putObject("params");
                if (paymentId != null) {
                    params.put("payment_id", paymentId);
                }
                if (request.amount() != null) {
                    params.set("amount", number(request.amount()));
                }
            }
        }
        return body;
    }

    private static JsonNode number(String text) {
        return SimCluster.EXACT_JSON.getNodeFactory().numberNode(new BigDecimal(text));
    }

    // ---- the check: every answer is the model's at its request's position in the log -------------------------

    /**
     * The cluster is the card's table applied in the log's order, so the check needs no search: the log (read
     * from lin-kv at the end of the run) is replayed into the reference model, request by request, and every
     * definite reply to a charge or a refund must be exactly the model's answer at its request's position (ids,
     * notes, texts, amounts' digits: all of it). Each attempt is in the log at most once, an attempt answered
     * "nothing was done" (11) not at all, and each PaymentStatus read must be the model's answer at some position
     * between every request answered before it was sent and the first request sent after it was answered.
     */
    static String notAsTheLog(History history) {
        List<ClusterService.LoggedRequest> order = new ArrayList<>();
        Map<String, Long> lastCount = new HashMap<>();
        for (int slot = 1; slot <= history.log().size(); slot++) {
            ClusterService.Slot read = ClusterService.Slot.read(history.log().get(slot - 1));
            if (read.entry() == null) {
                return "slot " + slot + " of the log holds no entry (" + read.why() + "): " + history.log().get(slot - 1);
            }
            for (ClusterService.Batch batch : read.entry().batches()) {
                String process = ClusterService.Batch.processOf(batch.id());
                long count = ClusterService.Batch.countOf(batch.id());
                Long before = lastCount.put(process, count);
                if (before != null && count <= before) {
                    lastCount.put(process, before);
                    continue;   // a batch stored twice (a duplicated cas, a forwarded batch appended by its node too) is applied once
                }
                order.addAll(batch.requests());
            }
        }
        Map<String, Attempt> bySender = new HashMap<>();
        for (Attempt attempt : history.attempts()) {
            bySender.put(attempt.client + " " + attempt.msgId, attempt);
        }
        Map<Attempt, Integer> position = new HashMap<>();
        List<Attempt> logged = new ArrayList<>();
        for (int p = 0; p < order.size(); p++) {
            ClusterService.LoggedRequest request = order.get(p);
            Attempt attempt = bySender.get(request.src() + " " + request.msgId());
            if (attempt == null || attempt.kind == Kind.STATUS) {
                return "position " + p + " of the log holds a request no client sent as a charge or refund: " + request;
            }
            if (position.put(attempt, p) != null) {
                return "an attempt is in the log twice (applied twice): " + attempt;
            }
            logged.add(attempt);
        }
        for (Attempt attempt : history.attempts()) {
            if (attempt.kind != Kind.STATUS && attempt.definite() && !position.containsKey(attempt)) {
                return "a definite answer to a request that is not in the log: " + attempt;
            }
            if (attempt.code == 11 && position.containsKey(attempt)) {
                return "an attempt answered 11 (nothing was done) is in the log at position " + position.get(attempt) + ": " + attempt;
            }
        }
        List<Attempt> reads = new ArrayList<>();
        Map<Attempt, int[]> window = new HashMap<>();
        for (Attempt read : history.attempts()) {
            if (read.kind != Kind.STATUS || !read.definite()) {
                continue;
            }
            int low = 0;
            int high = order.size();
            for (Attempt other : logged) {
                if (other.definite() && other.answeredAt < read.sentAt) {
                    low = Math.max(low, position.get(other) + 1);
                }
                if (other.sentAt > read.answeredAt) {
                    high = Math.min(high, position.get(other));
                }
            }
            reads.add(read);
            window.put(read, new int[] {low, high});
        }
        ReferenceModel model = new ReferenceModel(null);
        model.handle("{\"src\":\"c0\",\"dest\":\"n1\",\"body\":{\"msg_id\":0,\"type\":\"init\",\"node_id\":\"n1\"}}");
        List<Attempt> readsLeft = new ArrayList<>(reads);
        for (int p = 0; p <= order.size(); p++) {
            int applied = p;
            readsLeft.removeIf(read -> window.get(read)[0] <= applied && applied <= window.get(read)[1]
                    && readAsTheModel(model, read));
            if (p == order.size()) {
                break;
            }
            Attempt attempt = logged.get(p);
            model.clock(order.get(p).arrivedMillis());   // the table decides two-phase payments by the log entry's time
            JsonNode expected = modelReply(model.handle(modelLine(attempt)));
            if (attempt.definite() && !expected.equals(attempt.reply)) {
                return "position " + p + " of the log: " + attempt + "\n  the model answers " + expected;
            }
        }
        if (!readsLeft.isEmpty()) {
            Attempt read = readsLeft.get(0);
            return "a PaymentStatus answer is the model's at no position from " + window.get(read)[0] + " to " + window.get(read)[1]
                    + " of the log: " + read;
        }
        return null;
    }

    /**
     * Whether a status read is the model's answer at this position. Its node decides a reservation's expiry by its own
     * clock when it answers, at an instant between the read's sending and its reply: a step's one reservation changes
     * state at most once in between, so the model's answers at both ends cover every instant.
     */
    private static boolean readAsTheModel(ReferenceModel model, Attempt read) {
        for (long at : new long[] {read.sentWall, read.answeredWall}) {
            model.clock(at);
            if (modelReply(model.handle(modelLine(read))).equals(read.reply)) {
                return true;
            }
        }
        return false;
    }

    /** The attempt as a line for the model, as the node got it. */
    private static String modelLine(Attempt attempt) {
        ObjectNode ordered = SimCluster.EXACT_JSON.createObjectNode();
        ordered.put("msg_id", attempt.msgId);
        ordered.setAll((ObjectNode) attempt.body.deepCopy());
        return "{\"src\":\"" + attempt.client + "\",\"dest\":\"n1\",\"body\":" + ordered + "}";
    }

    private static JsonNode modelReply(String printed) {
        try {
            ObjectNode body = SimCluster.EXACT_JSON.readTree(printed).get("body").deepCopy();
            body.remove("in_reply_to");
            body.remove("msg_id");
            return body;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
    // ---- invariants on the replies alone --------------------------------------------------------------------

    /** The definite answers by kind (type, reason, note, status), for -Dcluster.model.outcomes=true and the check that two-phase sagas ran. */
    static final Map<String, Integer> OUTCOMES = new java.util.concurrent.ConcurrentHashMap<>();

    static String brokenInvariant(List<Attempt> attempts) {
        MoneyInvariants money = new MoneyInvariants();   // the rules every checker shares
        Map<String, String> finalStatus = new HashMap<>();
        Map<String, BigDecimal> finalRefunded = new HashMap<>();
        List<Attempt> refunds = new ArrayList<>();
        List<Attempt> charges = new ArrayList<>();
        for (Attempt attempt : attempts) {
            if (!attempt.definite()) {
                continue;
            }
            JsonNode reply = attempt.reply;
            String type = reply.path("type").asText();
            OUTCOMES.merge(type + (reply.has("reason") ? " " + reply.path("reason").asText() : "") + (reply.has("note") ? " " + reply.path("note").asText() : "")
                    + (reply.has("status") ? " " + reply.path("status").asText() : ""), 1, Integer::sum);
            if ("ChargePayment_ok".equals(type)) {
                money.payment(attempt.key, reply.path("result").path("payment_id").asText(), reply.path("result").path("charged").decimalValue(),
                        attempt.toString());
                charges.add(attempt);
            } else if ("ReservePayment_ok".equals(type)) {
                charges.add(attempt);   // a step reserved is never compensated first either
            } else if ("CapturePayment_ok".equals(type)) {
                // A captured reservation is its step's payment from now on, its ledger what was captured.
                money.payment(attempt.key, reply.path("result").path("payment_id").asText(), reply.path("result").path("captured").decimalValue(),
                        attempt.toString());
            } else if ("PaymentStatus_ok".equals(type)) {
                if (attempt.client.equals("checker")) {
                    finalStatus.put(attempt.key, reply.path("status").asText());
                }
                JsonNode shown = reply.path("payment");
                boolean captured = shown.has("captured") && shown.path("captured").decimalValue().signum() > 0;
                if (shown.has("charged") || captured) {
                    String payment = shown.path("payment_id").asText();
                    money.payment(attempt.key, payment, shown.path(captured ? "captured" : "charged").decimalValue(), attempt.toString());
                    if (attempt.client.equals("checker")) {
                        finalRefunded.put(payment, reply.path("payment").path("refunded").decimalValue());
                    }
                }
            } else if ("RefundPayment_ok".equals(type) && reply.path("result").has("refund_id")) {
                refunds.add(attempt);
            }
        }
        for (Attempt charge : charges) {
            if ("compensated".equals(finalStatus.get(charge.key))) {
                return charge.key + " was charged (" + charge + ") and is compensated at the end";
            }
        }
        // A refund that names a payment and succeeds took that one (naming another than the step's own is refused);
        // one that names none took the step's own. Counted once the payments of the whole run are known; every
        // result under a key goes in, so that a second one breaks its rule.
        for (Attempt attempt : refunds) {
            String payment = attempt.body.path("params").path("payment_id").asText(null);
            money.refund(attempt.key + ":refund", attempt.reply.path("result").path("refund_id").asText(),
                    payment != null ? payment : money.paymentOf(attempt.key), attempt.reply.path("result").path("refunded").decimalValue(),
                    attempt.toString());
        }
        String broken = money.firstBroken();
        if (broken != null) {
            return broken;
        }
        for (Map.Entry<String, BigDecimal> status : finalRefunded.entrySet()) {
            BigDecimal sum = money.refundedOf(status.getKey());
            if (sum.compareTo(status.getValue()) != 0) {
                return "the final status says " + status.getValue().toPlainString() + " was refunded from " + status.getKey()
                        + ", the refunds that named it add up to " + sum.toPlainString();
            }
        }
        return null;
    }

    // ---- the test ----------------------------------------------------------------------------------------------

    /** Null when the run's history is explained by the model and keeps the invariants, else what went wrong. */
    static String failure(Sequence sequence) {
        History history = run(sequence);
        // The nodes' deadlines are wall-clock (--kv-timeout, and a request's patience of 10 of them), so a slow machine
        // adds "outcome unknown" answers and can leave a client without a definite one (it happened in mvn verify on a
        // clean machine, and the seed passed when run again). A stuck run is run again on the same schedule with 4x,
        // then 16x the patience; a node that cannot make progress on that schedule is stuck again, and fails.
        for (long patience = 4 * KV_TIMEOUT_MILLIS; history.stuck() != null && patience <= 16 * KV_TIMEOUT_MILLIS; patience *= 4) {
            history = run(sequence, patience);
        }
        String corrupted = history.corruptedReads() == 0 ? ""
                : "\n(" + history.corruptedReads() + " read replies were corrupted on the wire in this run: " + CORRUPTED_MARK + ")";
        if (history.stuck() != null) {
            return history.stuck() + corrupted + (history.uncausedTimeouts() == 0 ? "" : "\n(" + history.uncausedTimeouts()
                    + " lin-kv timeouts came while the scheduler let no time pass: the machine was slow, and a rerun of this seed may go another way)")
                    + "\nhistory:\n  " + String.join("\n  ", history.attempts().stream().map(Attempt::toString).toList());
        }
        String broken = brokenInvariant(history.attempts());
        String unexplained = notAsTheLog(history);
        if (broken == null && unexplained == null) {
            return null;
        }
        return (broken == null ? "" : "invariant broken: " + broken + "\n") + (unexplained == null ? "" : unexplained)
                + corrupted + (history.uncausedTimeouts() == 0 ? "" : "\n(" + history.uncausedTimeouts() + " lin-kv timeouts came while the scheduler let no time"
                        + " pass: the machine was slow, and a rerun of this seed may go another way)")
                + "\nhistory:\n  " + String.join("\n  ", history.attempts().stream().map(Attempt::toString).toList());
    }

    /** Takes requests out while the sequence still fails the same way (the scheduler keeps its seed). */
    static Sequence shrink(Sequence failing, String kind) {
        Sequence smallest = failing;
        boolean progress = true;
        for (int round = 0; round < 20 && progress; round++) {
            progress = false;
            for (int c = 0; c < smallest.clients().size(); c++) {
                for (int i = smallest.clients().get(c).size() - 1; i >= 0; i--) {
                    Sequence candidate = smallest.without(c, i);
                    String failure = failure(candidate);
                    if (failure != null && kindOf(failure).equals(kind)) {
                        smallest = candidate;
                        progress = true;
                    }
                }
            }
        }
        return smallest;
    }

    /** What kind of bug a failure shows, for the survey (-Dcluster.model.survey=true). */
    static String kindOf(String failure) {
        if (failure.startsWith("invariant broken: the acknowledged refunds of")) {
            return "overdraw (the refunds of one payment add up to more than its charge)";
        }
        if (failure.startsWith("invariant broken: the final status says")) {
            return "a refund missing from its payment's ledger (the first half of an overdraw)";
        }
        if (failure.startsWith("the cluster broke the protocol")) {
            return "the cluster broke the protocol (a broken output line, a flood, a silent node)";
        }
        if (failure.contains(CORRUPTED_MARK)) {
            return "a value the node did not write, believed (a corrupted read reply)";
        }
        if (failure.contains("got no definite answer")) {
            return "a request never got a definite answer";
        }
        for (String kind : List.of("is in the log twice", "answered 11 (nothing was done) is in the log", "a request that is not in the log",
                "holds no entry", "holds a request no client sent", "PaymentStatus answer is the model's at no position")) {
            if (failure.contains(kind)) {
                return kind;
            }
        }
        return failure.contains("of the log: #") ? "an answer that is not the model's at its request's position in the log" : "other";
    }

    /**
     * A cold JVM runs the node's first requests slowly enough to pass the short kv timeout, and a timeout the
     * scheduler did not cause changes the run: warm up first, so that a sequence runs alike whether it comes
     * first (a rerun with its seed) or after hundreds of others.
     */
    private static void warmUp() {
        for (long seed = 1; seed <= WARM_UP_SEQUENCES; seed++) {
            run(generate(seed));
        }
        UNCAUSED_TIMEOUTS.set(0);
    }

    @Test
    void theClusterAnswersEveryRandomScheduleAsTheModelAllows() {
        check(BASE_SEED, SEQUENCES);
    }

    /** The slow tier (mvn verify) runs the next 300 sequences too. */
    @Test
    @Tag("slow")
    void theClusterAnswersManyMoreRandomSchedulesAsTheModelAllows() {
        check(BASE_SEED + SEQUENCES, SLOW_SEQUENCES);
    }

    private static final int SLOW_SEQUENCES = Integer.getInteger("cluster.model.slow-sequences", 300);

    private void check(long baseSeed, int sequences) {
        warmUp();
        long started = System.nanoTime();
        boolean survey = Boolean.getBoolean("cluster.model.survey");
        Map<String, String> firstOfKind = new LinkedHashMap<>();
        Map<String, Integer> countOfKind = new LinkedHashMap<>();
        int requests = 0;
        for (int i = 0; i < sequences; i++) {
            long seed = baseSeed + i;
            Sequence sequence = generate(seed);
            requests += sequence.size();
            String failure = failure(sequence);
            if (failure == null) {
                continue;
            }
            long foundAfterMillis = (System.nanoTime() - started) / 1_000_000;
            String kind = kindOf(failure);
            countOfKind.merge(kind, 1, Integer::sum);
            if (survey && firstOfKind.containsKey(kind)) {
                continue;
            }
            Sequence small = shrink(sequence, kind);
            String report = "sequence " + (i + 1) + " (seed " + seed + ", rerun: -Dcluster.model.seed=" + seed + "), found after " + foundAfterMillis
                    + " ms, fails (" + kind + "):\n" + sequence + "\n" + failure
                    + "\n\nshrunk to " + small.size() + " of " + sequence.size() + " requests:\n" + small + "\nwhich fails with:\n" + failure(small);
            if (!survey) {
                fail(report);
            }
            firstOfKind.put(kind, report);
            System.out.println("---- first failure of kind: " + kind + "\n" + report);
        }
        long tookMillis = (System.nanoTime() - started) / 1_000_000;
        if (!firstOfKind.isEmpty()) {
            fail("survey of " + sequences + " sequences in " + tookMillis + " ms (" + DELIVERIES.get() + " deliveries, " + TIME_JUMPS.get()
                    + " time jumps, " + UNCAUSED_TIMEOUTS.get() + " timeouts the scheduler did not cause): failing sequences by kind " + countOfKind + "\n\n"
                    + String.join("\n\n", firstOfKind.values()));
        }
        if (requests < sequences * 3) {
            fail("too few requests generated: " + requests);
        }
        if (Boolean.getBoolean("cluster.model.outcomes")) {
            System.out.println("answers by kind: " + new java.util.TreeMap<>(OUTCOMES));
        }
        for (String kind : List.of("ReservePayment_ok", "CapturePayment_ok", "VoidPayment_ok", "PaymentStatus_ok reserved", "PaymentStatus_ok captured")) {
            if (sequences >= 20 && !OUTCOMES.containsKey(kind)) {   // (a rerun of one seed need not meet them all)
                fail("no request was answered " + kind + ": the two-phase sagas did not run; answers: " + new java.util.TreeMap<>(OUTCOMES));
            }
        }
    }
}
