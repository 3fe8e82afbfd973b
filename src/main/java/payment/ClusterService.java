package payment;

import com.fasterxml.jackson.core.JsonToken;

import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.TreeMap;
import java.util.concurrent.ThreadLocalRandom;
import java.util.regex.Pattern;
import java.util.zip.CRC32;

import payment.FundedPaymentHandler.BalanceReads;

import static payment.PaymentNode.*;

/**
 * The cluster (--store lin-kv): the card's own table, the same code as one node, on every node, fed by one
 * log that lin-kv orders (docs/CLUSTER.md).
 *
 * <p>The log is the slots {@code log/1}, {@code log/2}, ... in lin-kv, each written once by a create-only
 * cas. A slot holds an entry: batches of requests, each as the node that received them made it. Every node
 * applies the slots in order to its own table, so after slot n every node holds the same table, and each
 * request in slot n has the same result everywhere. A node answers a client only from the first application
 * of the batch it made for it, so every answer is the single-node table's answer at one position of one
 * total order. Nothing a node believes comes from anything but the log.
 *
 * <p>The story of a request, in the order this file tells it: it arrives ({@link #charge}) and waits in a
 * queue; {@link #advance} takes the queue into a batch, and forwards it to the node that appends for all (the
 * least node id among those that appended lately), or carries it in this node's own entry when that is this
 * node (or the other did not bring it in time); an entry goes to the first slot this node has not applied; if
 * that slot is someone else's, the node reads it, applies it and tries the next; the node that appended an
 * entry pushes it to the nodes whose batches it carried; when the slot holding a
 * batch is applied, the table's answers go back. PaymentStatus and BalanceRead append nothing: they wait
 * until a read sent after they arrived finds the first slot that does not exist yet.
 */
final class ClusterService implements Service {
    // ---- bounds: every queue and loop has one ---------------------------------------------------------

    /** Requests in one batch at most. */
    static final int MAX_BATCH_REQUESTS = 256;
    /** Characters of one batch, and of one entry's batches, at most (a single request larger than this still goes, alone). */
    static final int MAX_ENTRY_CHARS = 64 * 1024;
    /** Reads of slots in flight at most, when this node is behind (catching up, replaying after a restart). */
    static final int MAX_READS_IN_FLIGHT = 64;
    /** The reads in flight a starting node replays the log with, doubled at each slot found, up to the bound above. */
    static final int FIRST_REPLAY_READS = 8;
    /** Batches one node has in flight at most (its lanes). */
    static final int MAX_LANES = 8;
    /** Batches in one entry at most. */
    static final int MAX_ENTRY_BATCHES = 64;
    /** Batches waiting for this node's next entry at most; one more forwarded is dropped (its node appends it itself, in time). */
    static final int MAX_CARRIED = 64;
    /** Nodes this node pushes its landed entries to, at most. */
    static final int MAX_FOLLOWERS = 32;
    /** How many slots back a node's last entry makes it an appender still: batches go to the least such node id. */
    static final int RECENT_SLOTS = 256;
    /** Client requests this node holds unanswered at most; one more is refused with error 11, nothing done. */
    static final int MAX_WAITING = 10_000;
    /**
     * How many lin-kv timeouts a request waits at most, whatever happens: a request is answered "outcome
     * unknown" as soon as a call it waits on times out, and this is only the backstop of a request that
     * waits on calls that keep being answered (an append that keeps losing its slot to others).
     */
    static final int PATIENCE_IN_TIMEOUTS = 10;
    /**
     * --max-keys of a cluster node when none is given: a limit fixed in advance, not one derived from the
     * heap, which differs from node to node (a full table must refuse the same key on every node).
     */
    static final long DEFAULT_MAX_KEYS = 1_000_000;

    private final PaymentHandler table;
    /** The card's own service over the table: a logged request is applied exactly as one node serves it. */
    private final LocalService local;
    /** The reply envelope of a request another node appended: its answer is that node's to give, and goes nowhere here. */
    private static final Envelope NOBODY = new Envelope(null, null, null);
    private static final long NOT_APPLYING = Long.MIN_VALUE;
    /** The arrival time of the logged request being applied, else {@link #NOT_APPLYING} (a read: this node's clock). */
    private long applyingMillis = NOT_APPLYING;
    private final boolean keepsBalances;
    /** What every node must apply the log under (--balance, --max-keys, --reserve-ttl): written into every entry, checked at every apply. */
    private final String settings;
    private final ReplyWriter replies;
    private final Log log;
    private final LinKv kv;
    private final long timeoutMillis;
    /** --faults on a cluster: {@code fail} decided here before appending, the reply-only faults on this node's answer (null: none). */
    private final Faults faults;
    private final FaultyService.DelayedReplies delayed = new FaultyService.DelayedReplies();
    /** Differs in every process, so that a restarted node never takes its old process's late-landing entry for its own. */
    private final String processNonce = String.format("%016x", ThreadLocalRandom.current().nextLong() ^ System.nanoTime());
    private String nodeId;

    // The log as this node has it: slots 1..applied applied to the table, some beyond them read.
    private long applied;
    /** The highest slot known to hold an entry (slots are filled in order: every slot before it holds one too). */
    private long knownFilled;
    /** From init until the replay reaches the end of the log it found: the node answers nothing before. */
    private boolean replaying = true;
    private boolean replayLogged;
    private long replayStartedNanos;
    /** While replaying, the lowest slot a read found missing: the end of the log as of some moment of the replay. */
    private long replayEnd = Long.MAX_VALUE;
    private int readWindow = FIRST_REPLAY_READS;
    private final TreeMap<Long, Slot> fetched = new TreeMap<>();
    private final HashMap<Long, ReadsOfSlot> readsOut = new HashMap<>();
    private int readsInFlight;
    private long readsSent;
    /** The count of the last batch applied of each process and lane: a lane makes its batches one at a time, in order. */
    private final HashMap<String, Long> appliedCounts = new HashMap<>();
    /** The last undecodable reading of a slot: a slot is skipped only when two readings agree. */
    private final HashMap<Long, String> badReadings = new HashMap<>();

    // The requests this node holds, each in one of the stages below.
    private final LinkedHashMap<Long, Waiting> unanswered = new LinkedHashMap<>();
    private final ArrayDeque<Waiting> queued = new ArrayDeque<>();
    private final ArrayDeque<Waiting> readers = new ArrayDeque<>();
    /** This node's batches in flight, one per lane at most, so that a forwarding node need not wait for its last batch to land. */
    private final OwnBatch[] lanes = new OwnBatch[MAX_LANES];
    private final long[] batchesMade = new long[MAX_LANES];
    private final ArrayDeque<Carried> carrying = new ArrayDeque<>();
    private Append append;
    private long arrivals;

    // Forwarding (section 3): one node appends for all, so that the nodes do not race for the log's end.
    /** The slot of the last entry applied of each node that appended one: the least node id of those lately seen is where batches go. */
    private final HashMap<String, Long> appenders = new HashMap<>();
    /** Nodes that did not bring a batch forwarded to them in time, with until when this node appends its own rather. */
    private final HashMap<String, Long> suspects = new HashMap<>();
    /** The other nodes init named: the nodes' own messages are taken from them only, and batches go only to them. */
    private final HashSet<String> peers = new HashSet<>();
    /** Nodes that forwarded batches to this node, the latest last: each entry it lands is pushed to them. */
    private final LinkedHashSet<String> followers = new LinkedHashSet<>();

    /** {@code table}: the card's table, with --balance, --max-keys and --reserve-ttl as given (the same on every node). */
    ClusterService(PaymentHandler table, BigDecimal balance, long maxKeys, long reserveTtlMillis, Faults faults, ReplyWriter replies, Log log,
            long timeoutMillis) {
        this.faults = faults;
        this.table = table;
        this.local = new LocalService(table, replies, log);
        table.reserveTtl(reserveTtlMillis);
        table.decideBy(() -> applyingMillis != NOT_APPLYING ? applyingMillis : System.currentTimeMillis());
        this.keepsBalances = balance != null;
        this.settings = "balance " + (balance == null ? "none" : balance.stripTrailingZeros().toPlainString()) + ", max-keys " + maxKeys
                + (reserveTtlMillis == 0 ? "" : ", reserve-ttl " + reserveTtlMillis);
        this.replies = replies;
        this.log = log;
        this.timeoutMillis = timeoutMillis;
        this.kv = new LinKv(replies, log, timeoutMillis);
    }

    // ---- 1. A request arrives, and waits ---------------------------------------------------------------

    /** Where a client request is: queued for the next entry, in the entry being appended, or waiting for a read of the log's end. */
    enum Stage { QUEUED, APPENDING, READING }

    /** What a read (PaymentStatus, BalanceRead) answers from the table, once the table holds the log up to its end. */
    interface TableRead {
        Reply answer();
    }

    /** A client request not answered yet: a request to log, or a read ({@code read}), exactly one of them. */
    final class Waiting {
        final long number = ++arrivals;
        final Envelope reply;
        final long deadlineNanos = System.nanoTime() + PATIENCE_IN_TIMEOUTS * timeoutMillis * 1_000_000;
        final LoggedRequest request;
        final TableRead read;
        /** The injected fault of its answer (--faults), or null. */
        Faults.Drawn fault;
        /** Reads sent before it came: only a read sent after it can tell where the log ends for it. */
        final long readsSentBefore = readsSent;
        Stage stage;

        Waiting(Envelope reply, LoggedRequest request, TableRead read) {
            this.reply = reply;
            this.request = request;
            this.read = read;
            this.stage = request != null ? Stage.QUEUED : Stage.READING;
        }

        /** Its one reply; nothing if it was answered already (a timeout, an indefinite error). */
        void answer(Reply answer) throws IOException {
            if (unanswered.remove(number) != null) {
                answer.writeTo(replies);
            }
        }

        void fail(RpcError error) throws IOException {
            answer(writer -> writer.error(reply, error));
        }

        /** The table's answer, through the fault drawn for it when it came (--faults): the work is done, the reply may not be. */
        void answerApplied(Reply answer) throws IOException {
            answer(fault == null ? answer : FaultyService.afterWork(fault, reply, answer, delayed));
        }
    }

    @Override
    public Reply charge(Envelope reply, ChargeRequest request) throws IOException {
        return append(reply, request);
    }

    @Override
    public Reply refund(Envelope reply, RefundRequest request) throws IOException {
        return append(reply, request);
    }

    @Override
    public Reply reserve(Envelope reply, ReserveRequest request) throws IOException {
        return append(reply, request);
    }

    @Override
    public Reply capture(Envelope reply, CaptureRequest request) throws IOException {
        return append(reply, request);
    }

    @Override
    public Reply voidHold(Envelope reply, VoidRequest request) throws IOException {
        return append(reply, request);
    }

    /**
     * Every request that changes a key goes into the log, with the time it arrived here: the time the table decides it
     * by. Its fault (--faults) is drawn here, before anything is appended: {@code fail} is refused, so nothing of it
     * reaches the log; any other fault touches only this node's reply.
     */
    private Reply append(Envelope reply, Request request) throws IOException {
        Waiting waiting = new Waiting(reply, new LoggedRequest(request, System.currentTimeMillis(), reply), null);
        waiting.fault = faults == null || nodeId == null ? null : FaultyService.draw(faults, request.key(), reply, log);
        admit(waiting);
        return Reply.LATER;
    }

    @Override
    public Reply status(Envelope reply, StatusRequest request) throws IOException {
        admit(new Waiting(reply, null, () -> local.status(reply, request)));
        return Reply.LATER;
    }

    /**
     * The nodes' own messages (log_forward, log_slot: section 3); BalanceRead (with --balance): a read of the log's
     * end first, as PaymentStatus; other types are not this service's.
     */
    @Override
    public Reply other(Envelope reply, String type, byte[] line, int start, int length) throws IOException {
        if (type.equals("log_forward") || type.equals("log_slot")) {
            peerMessage(reply.to(), type, line, start, length);
            return Reply.LATER;   // a node's message is answered by what it brings about, never by a reply
        }
        if (!type.equals("BalanceRead")) {
            throw new RpcError(Reason.UNSUPPORTED_TYPE, "unsupported message type: " + type);
        }
        if (!keepsBalances) {
            throw new RpcError(Reason.BALANCES_NOT_KEPT, "BalanceRead needs --balance: this cluster keeps no balances");
        }
        String userId = BalanceReads.userIdOf(line, start, length);
        Balances balances = ((FundedPaymentHandler) table).balances();   // keepsBalances: the table is funded (one Balances for its life)
        admit(new Waiting(reply, null, () -> BalanceReads.reply(reply, userId, balances.account(userId), table.now())));
        return Reply.LATER;
    }

    /** Another node's message (section 3): a batch forwarded to this node ({@code value}), or a slot it appended ({@code key}, {@code value}). */
    private void peerMessage(String from, String type, byte[] line, int start, int length) throws IOException {
        if (nodeId == null || !peers.contains(from)) {
            log.warn(type + " from " + from + ", which is not another node of this cluster (init's node_ids): dropped");
            return;
        }
        LinKv.Body body = LinKv.Body.read(line, start, length);
        if (type.equals("log_forward")) {
            forwarded(from, body.value());
        } else {
            slotPushed(body.key(), body.value());
        }
        advance();
    }

    private void admit(Waiting waiting) throws IOException {
        if (nodeId == null) {
            throw new RpcError(Reason.NOT_INITIALISED, "not initialised: a cluster node reaches lin-kv only once init names it;"
                    + " nothing was done");
        }
        if (unanswered.size() >= MAX_WAITING) {
            throw new RpcError(Reason.BUSY, "busy: " + unanswered.size() + " requests are waiting; nothing was done, retry later");
        }
        unanswered.put(waiting.number, waiting);
        (waiting.request != null ? queued : readers).add(waiting);
        advance();
    }

    /** init names the node, and the other nodes (the only senders of the nodes' own messages); the first one starts the replay of the log from slot 1. */
    @Override
    public void init(String id, List<String> nodeIds) throws IOException {
        if (id != null) {
            peers.clear();
            peers.addAll(nodeIds == null ? List.of() : nodeIds);
            peers.remove(id);
            replayStartedNanos = nodeId == null ? System.nanoTime() : replayStartedNanos;
            nodeId = id;
            kv.from(id);
            advance();
        }
    }

    // ---- 2. The append loop: one state-driven step after every event -----------------------------------

    /**
     * Requests this node received, under one id (node, a nonce of its process and a lane, a count): the unit that
     * lands at most once. It is forwarded to the node that appends for all ({@code forwardedTo}, until
     * {@code takeOverNanos}), or carried in this node's own entry. A lane makes its next batch only once its last
     * one is applied, so a copy of a batch (a forwarded batch its node appended too, a forward duplicated on the
     * wire) comes after it, and every node skips it alike.
     */
    static final class OwnBatch {
        final int lane;
        final String id;
        final String text;
        final List<Waiting> requests;
        String forwardedTo;
        long takeOverNanos;

        OwnBatch(int lane, String id, String text, List<Waiting> requests) {
            this.lane = lane;
            this.id = id;
            this.text = text;
            this.requests = requests;
        }
    }

    /** A batch waiting for this node's next entry: one of its own ({@code own} set), or one another node forwarded. */
    record Carried(String id, String text, OwnBatch own) {
    }

    /** Where this node's entry is: to be placed at the first slot not applied, sent there, or its slot's outcome unknown. */
    enum AppendState { PLACE, CAS_SENT, SLOT_UNKNOWN }

    /** The one entry this node is appending: fixed once made (a delayed cas of it may still land), until its slot is known. */
    static final class Append {
        final String value;
        /** This node's own batches in it: their requests are answered when it is applied, or failed with its cas. */
        final List<OwnBatch> own;
        AppendState state = AppendState.PLACE;
        long slot;

        Append(String value, List<OwnBatch> own) {
            this.value = value;
            this.own = own;
        }

        void failAll(RpcError error) throws IOException {
            for (OwnBatch batch : own) {
                for (Waiting waiting : batch.requests) {
                    waiting.fail(error);
                }
            }
        }
    }

    /**
     * Moves this node's log forward as far as what it knows allows, from wherever the last event left it (its
     * recovery points are the states of {@link OwnBatch} and {@link Append}): applies the slots read, in order;
     * puts the queued requests into batches, forwarded to the node that appends for all or carried here; makes
     * this node's next entry of the batches it carries; appends it at the first slot not applied when nothing
     * says that slot is taken; and reads what must be read (the slot whose cas had no clear answer, the slots of
     * a node behind, the log's end for the reads waiting). Called after every event: a message, a deadline.
     */
    private void advance() throws IOException {
        if (nodeId == null) {
            return;
        }
        applyFetchedSlots();
        if (!replaying) {
            takeOverLateForwards();
            String to = appender();
            for (int lane = 0; lane < MAX_LANES && !queued.isEmpty() && (to != null || append == null); lane++) {
                // Forwarded at once, every free lane a batch; carried here, batches made when the entry is.
                if (lanes[lane] == null) {
                    lanes[lane] = nextBatch(lane);
                    if (to != null) {
                        forward(lanes[lane], to);
                    } else {
                        carrying.add(new Carried(lanes[lane].id, lanes[lane].text, lanes[lane]));
                    }
                }
            }
            if (append == null && !carrying.isEmpty()) {
                append = nextEntry();
            }
            if (append != null && append.state == AppendState.PLACE && knownFilled <= applied) {
                // The only slot it may take: every slot before it is applied, so it lands at most once.
                cas(append, applied + 1);
            }
        }
        sendReads();
    }

    private void cas(Append sent, long slot) throws IOException {
        sent.slot = slot;
        sent.state = AppendState.CAS_SENT;
        kv.createOnly(slotKey(slot), sent.value, reply -> casEnded(sent, slot, reply));
    }

    static String slotKey(long slot) {
        return "log/" + slot;
    }

    /** The queued requests, oldest first, as this lane's next batch: bounded in requests and characters (one request at least). */
    private OwnBatch nextBatch(int lane) {
        String id = nodeId + "/" + processNonce + Integer.toHexString(lane) + "/" + ++batchesMade[lane];
        List<Waiting> batch = new ArrayList<>();
        List<String> encoded = new ArrayList<>();
        int chars = 0;
        while (!queued.isEmpty() && batch.size() < MAX_BATCH_REQUESTS) {
            String one = queued.peekFirst().request.encode();
            if (!batch.isEmpty() && chars + one.length() > MAX_ENTRY_CHARS) {
                break;
            }
            Waiting waiting = queued.pollFirst();
            waiting.stage = Stage.APPENDING;
            batch.add(waiting);
            encoded.add(one);
            chars += one.length();
        }
        return new OwnBatch(lane, id, Batch.encode(id, encoded), batch);
    }

    /** The carried batches, oldest first, as one entry: bounded in characters (one batch at least); copies already applied left out. */
    private Append nextEntry() {
        List<String> batches = new ArrayList<>();
        List<OwnBatch> own = new ArrayList<>();
        int chars = 0;
        while (!carrying.isEmpty() && batches.size() < MAX_ENTRY_BATCHES
                && (batches.isEmpty() || chars + carrying.peekFirst().text().length() <= MAX_ENTRY_CHARS)) {
            Carried next = carrying.pollFirst();
            if (isApplied(next.id())) {
                continue;   // a copy already applied (forwarded, or brought by the appender after all)
            }
            batches.add(next.text());
            chars += next.text().length();
            if (next.own() != null) {
                own.add(next.own());
            }
        }
        return batches.isEmpty() ? null : new Append(LogEntry.encode(nodeId, settings, batches), own);
    }

    /** The cas of {@code sent} at {@code slot} ended; anything but a success means: read the slot, which decides. */
    private void casEnded(Append sent, long slot, LinKv.Reply reply) throws IOException {
        if (sent != append || slot != sent.slot || sent.state != AppendState.CAS_SENT) {
            return;   // that slot was settled by a read meanwhile
        }
        if (reply.outcome() == LinKv.Outcome.OK) {
            knownFilled = Math.max(knownFilled, slot);
            fetched.put(slot, Slot.read(sent.value));
        } else {
            if (reply.outcome() == LinKv.Outcome.EXISTS) {
                knownFilled = Math.max(knownFilled, slot);   // another's, or ours (a duplicated cas of it landed first)
            } else {
                timedOut("the append of its entry to the log", -1);   // reads do not wait on a cas
            }
            sent.state = AppendState.SLOT_UNKNOWN;   // the slot decides: read it (a lost cas may yet land, but only there)
        }
        advance();
    }

    // ---- 3. Forwarding: one node appends for all --------------------------------------------------------

    /** The share of --kv-timeout a forwarded batch may take to land before its node appends it itself. */
    static final int FORWARD_PATIENCE_DIVISOR = 4;
    /** How many --kv-timeouts a node appends its own batches after one it forwarded was not brought in time. */
    static final int MEMORY_IN_TIMEOUTS = 5;

    /**
     * Where this node's batches go: the least node id (in string order) among the nodes init named that appended
     * an entry lately (this node included), not suspected; null when that is this node, or none is known: this node appends them itself.
     * Every node comes to the same choice from the same log, so one node appends for all, and a node that
     * carries forwarded batches appends whatever it believes: no batch waits on a cycle of forwards.
     */
    private String appender() {
        long now = System.nanoTime();
        suspects.values().removeIf(until -> until - now <= 0);
        String least = nodeId;
        for (var seen : appenders.entrySet()) {
            if (seen.getValue() > applied - RECENT_SLOTS && seen.getKey().compareTo(least) < 0 && peers.contains(seen.getKey())
                    && !suspects.containsKey(seen.getKey())) {
                least = seen.getKey();
            }
        }
        return least.equals(nodeId) ? null : least;
    }

    /** Sends a batch to the node that appends for all, to carry in its next entry; it lands in an entry of this node's if not brought in time. */
    private void forward(OwnBatch batch, String to) throws IOException {
        batch.forwardedTo = to;
        batch.takeOverNanos = System.nanoTime() + timeoutMillis * 1_000_000 / FORWARD_PATIENCE_DIVISOR;
        replies.send(new Envelope(nodeId, to, null), "log_forward", json -> {
            json.field("value");
            json.string(batch.text);
        });
    }

    /**
     * The forwarded batches not brought in time go into this node's own entry, and their appender is passed over
     * for a while. Should both copies land, the second is skipped by every node.
     */
    private void takeOverLateForwards() {
        long now = System.nanoTime();
        for (OwnBatch batch : lanes) {
            if (batch != null && batch.forwardedTo != null && batch.takeOverNanos - now <= 0) {
                log.warn("batch " + batch.id + " forwarded to " + batch.forwardedTo + " did not land within "
                        + timeoutMillis / FORWARD_PATIENCE_DIVISOR + " ms: appending it here");
                suspects.put(batch.forwardedTo, now + MEMORY_IN_TIMEOUTS * timeoutMillis * 1_000_000);
                batch.forwardedTo = null;
                carrying.add(new Carried(batch.id, batch.text, batch));
            }
        }
    }

    /** A batch another node forwarded: carried in this node's next entry, unless a copy is applied or this node carries all it may. */
    private void forwarded(String from, String text) {
        Batch batch;
        try {
            Tokens.Reader in = new Tokens.Reader(text == null ? "" : text, 0);
            batch = Batch.decode(in);
            in.end();
        } catch (RuntimeException undecodable) {
            log.warn("a batch forwarded by " + from + " does not decode (" + undecodable.getMessage() + "): dropped");
            return;
        }
        if (!Batch.nodeOf(batch.id()).equals(from)) {
            log.warn("a batch forwarded by " + from + " under the id of another node's (" + batch.id() + "): dropped");
            return;
        }
        if (carrying.size() >= MAX_CARRIED || replaying) {
            log.warn("batch " + batch.id() + " forwarded by " + from + ": dropped (" + (replaying ? "replaying" : "carrying " + MAX_CARRIED)
                    + "); its node appends it itself");
            return;
        }
        if (!isApplied(batch.id()) && carrying.stream().noneMatch(held -> held.id().equals(batch.id()))) {
            carrying.add(new Carried(batch.id(), text, null));
        }
        followers.remove(from);
        followers.add(from);
        if (followers.size() > MAX_FOLLOWERS) {
            followers.remove(followers.iterator().next());
        }
    }

    /**
     * This node's entry landed at {@code slot}: the nodes that forwarded to it get its value, so that they apply it
     * without reading it. It is what lin-kv holds there: this node's cas of it succeeded, or a read found it.
     */
    private void pushToFollowers(long slot, String value) throws IOException {
        for (String follower : followers) {
            replies.send(new Envelope(nodeId, follower, null), "log_slot", json -> {
                json.field("key");
                json.string(slotKey(slot) + " " + pushCheck(slotKey(slot), value));
                json.field("value");
                json.string(value);
            });
        }
    }

    /**
     * A slot's value from the node that appended it (its key carries a checksum of the slot's number and the value's
     * own checksum, so that a number damaged on the way cannot put the value in another slot): taken as a reading of the slot when
     * both check out (a slot is written once, so a true report of it holds for ever); else ignored, and the slot is
     * read from lin-kv when needed. A node never skips a slot on a pushed value.
     */
    private void slotPushed(String key, String value) {
        String[] slotAndCrc = key == null || value == null ? new String[0] : key.split(" ");
        if (slotAndCrc.length != 2 || !SLOT_KEY.matcher(slotAndCrc[0]).matches() || !slotAndCrc[1].equals(pushCheck(slotAndCrc[0], value))) {
            log.warn("a pushed slot that does not check out (" + key + "): ignored, the slot is read from lin-kv");
            return;
        }
        long slot = Long.parseLong(slotAndCrc[0].substring(4));
        if (slot <= applied || fetched.containsKey(slot)) {
            return;   // held already: nothing to decode
        }
        Slot read = Slot.read(value);
        if (read.entry() != null) {
            fetched.put(slot, read);
            knownFilled = Math.max(knownFilled, slot);
        }
    }

    private static final Pattern SLOT_KEY = Pattern.compile("log/[1-9][0-9]{0,17}");

    /** What binds a pushed value to its slot: a CRC-32 of the slot's key and the value's own checksum (which covers the rest). */
    private static String pushCheck(String slotKey, String value) {
        return LogEntry.crc(slotKey + " " + value.substring(0, Math.min(8, value.length())));
    }

    // ---- 4. Reading the log: catching up, resolving a slot, finding the end ---------------------------

    /** The reads of one slot in flight: how many, and the newest one's sequence number. */
    static final class ReadsOfSlot {
        int inFlight;
        long newest;
    }

    /**
     * Reads what must be read: while replaying, a window ahead (the end is unknown: it doubles with every slot
     * found); else every slot known to hold an entry and not applied yet (a refused cas says so), or the one
     * slot a cas had no clear answer for; and the end of the log for the reads waiting. Never a guess beyond.
     */
    private void sendReads() throws IOException {
        long last = replaying ? Math.min(applied + readWindow, replayEnd - 1)
                : knownFilled > applied ? knownFilled
                : append != null && append.state == AppendState.SLOT_UNKNOWN ? applied + 1 : applied;
        for (long slot = applied + 1; slot <= last && readsInFlight < MAX_READS_IN_FLIGHT; slot++) {
            if (!fetched.containsKey(slot) && !readsOut.containsKey(slot)) {
                read(slot);
            }
        }
        Waiting newestReader = readers.peekLast();
        ReadsOfSlot head = readsOut.get(applied + 1);
        if (newestReader != null && (head == null || head.newest <= newestReader.readsSentBefore) && readsInFlight < MAX_READS_IN_FLIGHT) {
            read(applied + 1);   // a read of the end of the log sent after the newest reader came
        }
    }

    private void read(long slot) throws IOException {
        long sequence = ++readsSent;
        ReadsOfSlot reads = readsOut.computeIfAbsent(slot, s -> new ReadsOfSlot());
        reads.inFlight++;
        reads.newest = sequence;
        readsInFlight++;
        kv.read(slotKey(slot), reply -> readEnded(slot, sequence, reply));
    }

    private void readEnded(long slot, long sequence, LinKv.Reply reply) throws IOException {
        readsInFlight--;
        ReadsOfSlot reads = readsOut.get(slot);
        if (--reads.inFlight == 0) {
            readsOut.remove(slot);
        }
        switch (reply.outcome()) {
            case OK -> slotRead(slot, reply);
            case MISSING -> slotMissing(slot, sequence);
            default -> timedOut("a read of the log", sequence - 1);   // if the slot is still needed, advance reads it again
        }
        advance();
    }

    /**
     * A call timed out: the requests that wait on it are answered at once, their outcome unknown: those in the
     * entry being appended (it may yet land), and the reads that came before the call was sent.
     */
    private void timedOut(String what, long readsBeforeCall) throws IOException {
        RpcError unknown = new RpcError(Reason.KV_TIMEOUT, "lin-kv did not answer " + what + " within " + timeoutMillis
                + " ms: the outcome is unknown; a retry will tell");
        if (append != null) {
            append.failAll(unknown);
        }
        while (!readers.isEmpty() && readers.peekFirst().readsSentBefore <= readsBeforeCall) {
            readers.pollFirst().fail(unknown);
        }
    }

    private void slotRead(long slot, LinKv.Reply reply) throws IOException {
        knownFilled = Math.max(knownFilled, slot);
        readWindow = replaying ? Math.min(2 * readWindow, MAX_READS_IN_FLIGHT) : readWindow;
        if (slot <= applied || fetched.containsKey(slot)) {
            return;
        }
        Slot read = Slot.read(reply.value());
        if (read.entry() == null && !reply.raw().equals(badReadings.get(slot))) {
            // Undecodable: damaged on its way to this node, or stored so. A node never skips a slot on one
            // reading (another node may read it whole): its waiting requests get an indefinite answer, and
            // the slot is read again. Only a value that reads the same twice is taken as stored, and skipped.
            badReadings.put(slot, reply.raw());
            log.warn("slot " + slot + " read undecodable (" + read.why() + "): reading it again");
            if (append != null) {
                append.failAll(new RpcError(Reason.KV_UNKNOWN_OUTCOME, "a reading of the log came damaged: the outcome is unknown;"
                        + " a retry will tell"));
            }
            return;
        }
        badReadings.remove(slot);
        fetched.put(slot, read);
    }

    private void slotMissing(long slot, long sequence) throws IOException {
        if (replaying && knownFilled < slot) {
            replayEnd = Math.min(replayEnd, slot);
        }
        if (slot != applied + 1 || knownFilled >= slot) {
            return;   // beyond the end: it says nothing of the slots before it
        }
        if (append != null && append.state == AppendState.SLOT_UNKNOWN && append.slot == slot) {
            append.state = AppendState.PLACE;   // not landed (yet): cas it again, at the same slot, the only one it can land in
        }
        // Every slot before this one is applied, and this read was sent after these readers came: the
        // table now holds every change completed before they came (a linearizable read).
        while (!readers.isEmpty() && readers.peekFirst().readsSentBefore < sequence) {
            Waiting reader = readers.pollFirst();
            reader.answer(reader.read.answer());
        }
    }

    // ---- 5. Applying a slot: the table's answer, the same on every node --------------------------------

    private void applyFetchedSlots() throws IOException {
        for (Slot slot; (slot = fetched.remove(applied + 1)) != null; ) {
            applied++;
            badReadings.remove(applied);
            apply(applied, slot);
        }
        if (replaying && applied + 1 >= replayEnd) {
            // Every slot before the end the replay found is applied: the node is as current as it was at that
            // read, and answers from now on (its reads still wait for a read of the end sent after them).
            replaying = false;
            if (!replayLogged) {
                replayLogged = true;
                long micros = Math.max(1, (System.nanoTime() - replayStartedNanos) / 1000);
                log.event("replayed the log: " + applied + " slots in " + micros / 1000 + " ms (" + applied * 1_000_000 / micros + " slots/s)");
            }
        }
        if (append != null && append.state != AppendState.PLACE && append.slot <= applied) {
            append.state = AppendState.PLACE;   // its slot holds another entry: the next one
        }
    }

    private void apply(long number, Slot slot) throws IOException {
        if (slot.entry() == null) {
            log.warn("slot " + number + " is not an entry this service writes (" + slot.why() + "): skipped, as on every node");
            return;
        }
        LogEntry entry = slot.entry();
        String value = slot.value();
        if (!entry.settings().equals(settings)) {
            // Applied under other settings, this node's table would part from the others': it stops rather.
            throw new Stop("slot " + number + " of the log was appended by a node with " + entry.settings()
                    + ", and this node runs with " + settings + ": every node of a cluster needs the same --balance, --max-keys and --reserve-ttl", 2);
        }
        for (Batch batch : entry.batches()) {
            if (isApplied(batch.id())) {
                // A batch stored twice (forwarded and appended by its node too, or a forward duplicated on the
                // wire): every node applies its first copy only.
                log.warn("slot " + number + " repeats batch " + batch.id() + ": skipped, as on every node");
                continue;
            }
            appliedCounts.put(Batch.processOf(batch.id()), Batch.countOf(batch.id()));
            OwnBatch mine = ownBatch(batch.id());
            if (mine != null && batch.requests().size() != mine.requests.size()) {
                throw new IllegalStateException("batch " + batch.id() + " holds " + batch.requests().size() + " requests, and this node made it of "
                        + mine.requests.size());
            }
            for (int i = 0; i < batch.requests().size(); i++) {
                applyRequest(batch.requests().get(i), mine != null ? mine.requests.get(i) : null);
            }
            if (mine != null) {
                lanes[mine.lane] = null;
            }
        }
        appenders.put(entry.appender(), number);
        if (append != null && value.equals(append.value)) {
            append = null;
            pushToFollowers(number, value);
        }
    }

    /** This node's batch in flight of that id, or null. */
    private OwnBatch ownBatch(String id) {
        for (OwnBatch batch : lanes) {
            if (batch != null && batch.id.equals(id)) {
                return batch;
            }
        }
        return null;
    }

    /** Whether a batch of that id (or a later one of its lane) was applied: a copy of it is skipped. */
    private boolean isApplied(String batchId) {
        Long before = appliedCounts.get(Batch.processOf(batchId));
        return before != null && Batch.countOf(batchId) <= before;
    }

    /** One request at its position in the log; {@code waiting}: its client, when this node appended it (else null). */
    private void applyRequest(LoggedRequest logged, Waiting waiting) throws IOException {
        applyingMillis = logged.arrivedMillis();   // the table decides by the log's time (expiry), the same on every node
        try {
            Reply answer = logged.request().sendTo(local, waiting == null ? NOBODY : waiting.reply);
            if (waiting != null) {
                waiting.answerApplied(answer);
            }
        } catch (RpcError refused) {
            if (waiting != null) {
                waiting.answerApplied(writer -> writer.error(waiting.reply, refused));
            }
        } catch (RuntimeException bug) {
            log.error("internal error applying a request of the log, answered with code 13", bug);
            if (waiting != null) {
                waiting.fail(new RpcError(Reason.INTERNAL_ERROR, "internal error: " + bug));
            }
        } finally {
            applyingMillis = NOT_APPLYING;
        }
    }


    // ---- 6. Time: deadlines of calls and of requests ---------------------------------------------------

    /** Answers the requests past their deadline: the queued ones were not appended (nothing done), the others' outcome is unknown. */
    private void expireRequests() throws IOException {
        long now = System.nanoTime();
        for (int bound = unanswered.size(); bound > 0 && !unanswered.isEmpty(); bound--) {
            Waiting oldest = unanswered.values().iterator().next();
            if (oldest.deadlineNanos - now > 0) {
                return;
            }
            switch (oldest.stage) {
                case QUEUED -> {
                    queued.remove(oldest);
                    oldest.fail(new RpcError(Reason.BUSY, "busy: not appended to the log within " + PATIENCE_IN_TIMEOUTS * timeoutMillis
                            + " ms; nothing was done, retry"));
                }
                case APPENDING -> oldest.fail(new RpcError(Reason.KV_TIMEOUT, "the log's slot for this request was not settled within "
                        + PATIENCE_IN_TIMEOUTS * timeoutMillis + " ms: the outcome is unknown; a retry will tell"));
                case READING -> {
                    readers.remove(oldest);
                    oldest.fail(new RpcError(Reason.KV_TIMEOUT, "lin-kv did not show the end of the log within "
                            + PATIENCE_IN_TIMEOUTS * timeoutMillis + " ms: nothing was read or changed; retry"));
                }
            }
        }
    }

    /** Nanoseconds until the next deadline (a call's, a forwarded batch's, the oldest request's), at least 1; -1 for none. */
    private long nanosToNextDeadline() {
        long now = System.nanoTime();
        long next = kv.nanosToNextDeadline(now);
        for (OwnBatch batch : lanes) {
            if (batch != null && batch.forwardedTo != null) {
                next = Math.min(next, batch.takeOverNanos - now);
            }
        }
        if (!unanswered.isEmpty()) {
            next = Math.min(next, unanswered.values().iterator().next().deadlineNanos - now);
        }
        return next == Long.MAX_VALUE ? -1 : Math.max(1, next);
    }

    @Override
    public boolean completes(String from, byte[] line, int start, int length) throws IOException {
        return kv.completes(from, line, start, length);
    }

    // ---- 7. Time, while stdin is quiet -----------------------------------------------------------------

    /**
     * The node reads stdin through a {@link TimedInput} that wakes up for this service's timed work: calls and
     * requests past their deadline, delayed replies (--faults), and output never held long under a flood of
     * input. The input never waits for lin-kv.
     */
    @Override
    public InputStream input(InputStream stdin) {
        return new TimedInput(stdin, this::runDue);
    }

    /**
     * What time brings, each time the loop reads (and each time a wait for input ends): returns the nanoseconds
     * until the next deadline, -1 for none. What it wrote leaves at once, before the loop waits again: a lin-kv
     * request sent on a timeout must not sit in the buffer through its own time.
     */
    private long runDue() throws IOException {
        kv.expire();
        expireRequests();
        advance();
        replies.flush();
        long delay = delayed.writeDue(replies);
        long wait = nanosToNextDeadline();
        return delay < 0 ? wait : wait < 0 ? delay : Math.min(delay, wait);
    }

    /** At the end of input, what is still owed can only time out (its lin-kv replies would have come on stdin). */
    @Override
    public void close() throws IOException {
        replies.flush();
        for (long wait = runDue(); !unanswered.isEmpty(); wait = runDue()) {
            try {
                Thread.sleep(Math.max(1, wait / 1_000_000));   // until the next deadline, or the next delayed reply (--faults)
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted while requests were owed");
            }
        }
        delayed.drain(replies);
    }

    // ---- 8. The entries in lin-kv ----------------------------------------------------------------------

    /**
     * A request as the log holds it: the request, when it arrived on the node that appended it (the table decides
     * expiry by these times, never by a node's clock), and who asked (for a person reading the log; the table never
     * looks at it).
     */
    record LoggedRequest(Request request, long arrivedMillis, String src, Long msgId) {
        LoggedRequest(Request request, long arrivedMillis, Envelope from) {
            this(request, arrivedMillis, from.to(), from.inReplyTo());
        }

        String encode() {
            Tokens tokens = new Tokens();
            tokens.add(kind(request)).add(request.sagaId()).add(Long.toString(request.step()));
            tokens.add(Long.toString(arrivedMillis)).add(src).add(msgId == null ? null : Long.toString(msgId));
            if (request instanceof ChargeRequest charge) {
                tokens.add(charge.userId()).add(charge.amount().text());
            } else if (request instanceof RefundRequest refund) {
                tokens.add(refund.paymentId()).add(text(refund.amount()));
            } else if (request instanceof ReserveRequest reserve) {
                tokens.add(reserve.userId()).add(reserve.amount().text()).add(reserve.expiresInMs() == null ? null : reserve.expiresInMs().toString());
            } else if (request instanceof CaptureRequest capture) {
                tokens.add(capture.paymentId()).add(text(capture.amount()));
            } else {
                tokens.add(((VoidRequest) request).paymentId());
            }
            return tokens.toString();
        }

        private static String kind(Request request) {
            return request instanceof ChargeRequest ? "charge" : request instanceof RefundRequest ? "refund"
                    : request instanceof ReserveRequest ? "reserve" : request instanceof CaptureRequest ? "capture" : "void";
        }

        private static String text(Amount amount) {
            return amount == null ? null : amount.text();
        }

        /**
         * The request as its node encoded it. Its fields are not checked against the card's rules again: every node
         * of the cluster (init's node_ids) logs or forwards only requests its card checked, and the entry's checksum
         * matched; what does not parse (a token, a number, an amount) makes the entry undecodable, on every node alike.
         */
        static LoggedRequest decode(Tokens.Reader in) {
            String kind = in.next();
            String sagaId = in.next();
            long step = in.number(0, Long.MAX_VALUE);
            long arrived = in.number(0, Long.MAX_VALUE);
            String src = in.next();
            String msgId = in.nextOrNull();
            Request request = switch (kind) {
                case "charge" -> new ChargeRequest(sagaId, step, in.next(), amount(in.next()));
                case "refund" -> new RefundRequest(sagaId, step, in.nextOrNull(), amountOrNull(in.nextOrNull()));
                case "reserve" -> new ReserveRequest(sagaId, step, in.next(), amount(in.next()), numberOrNull(in.nextOrNull()));
                case "capture" -> new CaptureRequest(sagaId, step, in.nextOrNull(), amountOrNull(in.nextOrNull()));
                case "void" -> new VoidRequest(sagaId, step, in.nextOrNull());
                default -> throw new IllegalArgumentException("a request of kind '" + kind + "'");
            };
            return new LoggedRequest(request, arrived, src, numberOrNull(msgId));
        }

        private static Long numberOrNull(String text) {
            return text == null ? null : Long.parseLong(text);
        }

        private static Amount amountOrNull(String text) {
            return text == null ? null : amount(text);
        }

        /** An amount as the request wrote it, checked as a request's is. */
        private static Amount amount(String text) {
            return Amount.parse(new Value(JsonToken.VALUE_NUMBER_FLOAT, text), "amount");
        }
    }

    /**
     * An entry of the log: the node that appended it, the settings it was appended under, and its batches of
     * requests (see {@link OwnBatch}). Stored as one string (lin-kv reads JSON numbers as doubles; a string is kept
     * whole): a CRC-32 of the rest, then length-prefixed texts, so that any damage is detected, not decoded.
     */
    record LogEntry(String appender, String settings, List<Batch> batches) {
        static final String FORMAT = "payment-log/2";

        static String encode(String appender, String settings, List<String> encodedBatches) {
            StringBuilder body = new StringBuilder(new Tokens().add(FORMAT).add(appender).add(settings)
                    .add(Integer.toString(encodedBatches.size())).toString());
            encodedBatches.forEach(body::append);
            return crc(body) + " " + body;
        }

        /** The entry a stored value holds; IllegalArgumentException saying why when it holds none. */
        static LogEntry decode(String value) {
            if (value == null) {
                throw new IllegalArgumentException("not a string");
            }
            int space = value.indexOf(' ');
            if (space != 8 || !value.substring(0, 8).equals(crc(value.substring(9)))) {
                throw new IllegalArgumentException("its checksum does not match");
            }
            Tokens.Reader in = new Tokens.Reader(value, 9);
            if (!FORMAT.equals(in.next())) {
                throw new IllegalArgumentException("not of format " + FORMAT);
            }
            String appender = in.next();
            String settings = in.next();
            long count = in.number(1, MAX_ENTRY_BATCHES);
            List<Batch> batches = new ArrayList<>();
            for (long i = 0; i < count; i++) {
                batches.add(Batch.decode(in));
            }
            in.end();
            return new LogEntry(appender, settings, List.copyOf(batches));
        }

        /**
         * CRC-32 of the text as UTF-16BE bytes, as 8 hex digits. Every entry and every push is checked with it on every
         * node, so it takes no encoder and no Formatter (they were a tenth of a node's CPU); a text with a surrogate
         * takes the JDK's encoder, which writes a lone one as U+FFFD, as this checksum always has.
         */
        static String crc(CharSequence text) {
            String chars = text.toString();
            byte[] units = new byte[2 * chars.length()];
            for (int i = 0; i < chars.length(); i++) {
                char unit = chars.charAt(i);
                if (Character.isSurrogate(unit)) {
                    units = chars.getBytes(StandardCharsets.UTF_16BE);
                    break;
                }
                units[2 * i] = (byte) (unit >> 8);
                units[2 * i + 1] = (byte) unit;
            }
            CRC32 crc = new CRC32();
            crc.update(units, 0, units.length);
            String hex = Long.toHexString(crc.getValue());
            return "0".repeat(8 - hex.length()) + hex;
        }
    }

    /** Requests one node received, under the id of its {@link OwnBatch}: node/nonce and lane/count. */
    record Batch(String id, List<LoggedRequest> requests) {
        static String nodeOf(String id) {
            String process = processOf(id);
            return process.substring(0, process.lastIndexOf('/'));
        }

        static String processOf(String id) {
            return id.substring(0, id.lastIndexOf('/'));
        }

        static long countOf(String id) {
            return Long.parseLong(id.substring(id.lastIndexOf('/') + 1));
        }

        static String encode(String id, List<String> encodedRequests) {
            StringBuilder text = new StringBuilder(new Tokens().add(id).add(Integer.toString(encodedRequests.size())).toString());
            encodedRequests.forEach(text::append);
            return text.toString();
        }

        private static final Pattern BATCH_ID = Pattern.compile(".+/[0-9a-f]{17}/[1-9][0-9]{0,17}");

        static Batch decode(Tokens.Reader in) {
            String id = in.next();
            if (!BATCH_ID.matcher(id).matches()) {
                throw new IllegalArgumentException("a batch id that is not node/nonce and lane/count: " + id);
            }
            long count = in.number(1, MAX_BATCH_REQUESTS);
            List<LoggedRequest> requests = new ArrayList<>();
            for (long i = 0; i < count; i++) {
                requests.add(LoggedRequest.decode(in));
            }
            return new Batch(id, List.copyOf(requests));
        }
    }

    /** A slot as read: its value, and its entry or why it holds none (then every node skips it alike). */
    record Slot(String value, LogEntry entry, String why) {
        static Slot read(String value) {
            try {
                return new Slot(value, LogEntry.decode(value), null);
            } catch (RuntimeException undecodable) {
                return new Slot(value, null, undecodable.getMessage());
            }
        }
    }

    /** Texts written one after the other, each as its length, a colon and itself; {@code -} for none. */
    static final class Tokens {
        private final StringBuilder text = new StringBuilder();

        Tokens add(String token) {
            if (token == null) {
                text.append('-');
            } else {
                text.append(token.length()).append(':').append(token);
            }
            return this;
        }

        @Override
        public String toString() {
            return text.toString();
        }

        /**
         * Reads what {@link Tokens} writes; what it cannot read (no length, a token past the end, a number that does not
         * parse) is an IllegalArgumentException. It does not insist on the written form ({@code +1:a} and {@code 01:a}
         * read as {@code 1:a}): only this service's nodes write entries, under a checksum, and every node reads alike.
         */
        static final class Reader {
            private final String text;
            private int position;

            Reader(String text, int position) {
                this.text = text;
                this.position = position;
            }

            String nextOrNull() {
                if (position < text.length() && text.charAt(position) == '-') {
                    position++;
                    return null;
                }
                int colon = text.indexOf(':', position);
                int length = colon < 0 ? -1 : Integer.parseInt(text, position, colon, 10);   // NumberFormatException: not a length
                if (length < 0 || length > text.length() - colon - 1) {
                    throw new IllegalArgumentException("no token at " + position);
                }
                position = colon + 1 + length;
                return text.substring(colon + 1, position);
            }

            String next() {
                String token = nextOrNull();
                if (token == null) {
                    throw new IllegalArgumentException("a missing token at " + position);
                }
                return token;
            }

            long number(long min, long max) {
                long number = Long.parseLong(next());   // NumberFormatException: not a number
                if (number < min || number > max) {
                    throw new IllegalArgumentException("out of range: " + number);
                }
                return number;
            }

            void end() {
                if (position != text.length()) {
                    throw new IllegalArgumentException("more after the last request");
                }
            }
        }
    }
}
