package payment;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import java.io.ByteArrayInputStream;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.Flushable;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.EnumSet;
import java.util.HashMap;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.function.Supplier;
import java.util.function.UnaryOperator;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.CRC32;

import static payment.PaymentNode.*;

/**
 * The cluster's payment service: every node started with --store lin-kv keeps the idempotency table
 * and the ledgers in Maelstrom's lin-kv, so a retry answered by any node, or by a node killed and
 * restarted, gets the same result. The state machine (docs/CLUSTER.md) needs no lease: every record is
 * created by one create-only cas, every later change is a cas from the value read, and a refund that a
 * node left half done is finished (or voided) by whoever comes next.
 *
 * <p>It runs on the main loop only: a request sends its lin-kv requests and is resumed by their
 * replies, which come in on stdin; meanwhile later requests go on.
 */
final class ClusterService implements Service {
    static final String KV = "lin-kv";
    /** The {@code from} of a create-only cas: no value this node writes is ever this string. */
    private static final String ABSENT = "(absent)";
    /** Ids reserved by one cas on {@code ids/payments} or {@code ids/refunds}. */
    private static final long ID_BLOCK = 100;
    /** lin-kv calls in flight at most; a request beyond gets error 11 (nothing done). Requests waiting for ids, likewise. */
    static final int MAX_CALLS = 10_000;
    /** Rounds of going back (a write that lost a race, an intent voided) one request goes through at most before it gives up (error 13: the outcome is unknown). */
    static final int MAX_ROUNDS = 16;
    /** Entries each cache below keeps at most, the least recently used leaving first. */
    static final int CACHE_ENTRIES = 1 << 16;

    private final ReplyWriter replies;
    private final Log log;
    /** This node's id, from init: lin-kv requests come from it. */
    private String nodeId;
    /** Numbers refund intents, from a base no earlier process of this node used (like its msg_ids). */
    private long nextIntent = numberingBase();
    private final long timeoutMillis;
    /** lin-kv requests waiting for their reply, oldest (soonest deadline) first; at most {@link #MAX_CALLS}. */
    private final LinkedHashMap<Long, Call> calls = new LinkedHashMap<>();
    /** Step records seen: immutable once written, so a retry to this node costs no lin-kv call. */
    private final Map<String, StepRecord> steps = lru();
    /** Payment records (ledgers) as this node last saw them: a guess for the next cas, never a ground for a refusal. */
    private final Map<String, PaymentRecord> ledgers = lru();
    /** Final refund records seen: immutable too. */
    private final Map<String, RefundRecord> refunds = lru();
    private final IdBlock paymentIds = new IdBlock("ids/payments");
    private final IdBlock refundIds = new IdBlock("ids/refunds");

    private static <V> Map<String, V> lru() {
        return new LinkedHashMap<>(16, 0.75f, true) {
            private static final long serialVersionUID = 1L;

            @Override
            protected boolean removeEldestEntry(Map.Entry<String, V> eldest) {
                return size() > CACHE_ENTRIES;
            }
        };
    }

    ClusterService(ReplyWriter replies, Log log, long timeoutMillis) {
        this.replies = replies;
        this.log = log;
        this.timeoutMillis = timeoutMillis;
        // A reply meant for an earlier process of this node must never match a request of this one.
        replies.startMsgIdsAt(numberingBase());
    }

    /** A number past any an earlier process of this node counted from (the clock in ms x 1000: unless it steps back). */
    private static long numberingBase() {
        return System.currentTimeMillis() * 1000;
    }

    /** How long a cluster node may hold its output in a buffer while input keeps coming. */
    private static final long MAX_HOLD_NANOS = 2_000_000;
    private long flushedAt = System.nanoTime();

    /**
     * The node reads stdin through a {@link TimedInput} that wakes up for this service's timed work: it answers
     * the calls that lin-kv left unanswered past their time, and it never holds lin-kv requests in the reply
     * buffer for long under a flood of input. The input never waits for lin-kv.
     */
    @Override
    public InputStream input(InputStream stdin) {
        return new TimedInput(stdin, this::runDue);
    }

    private long runDue() throws IOException {
        expire();
        if (System.nanoTime() - flushedAt > MAX_HOLD_NANOS) {
            replies.flush();
            flushedAt = System.nanoTime();
        }
        long millis = millisToNextDeadline();
        return millis < 0 ? -1 : Math.max(1, millis * 1_000_000);
    }

    /** At the end of input, calls still waiting can only time out (their replies would have come on stdin). */
    @Override
    public void close() throws IOException {
        replies.flush();
        while (waiting()) {
            long millis = millisToNextDeadline();
            try {
                Thread.sleep(Math.max(1, millis));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
            expire();
            replies.flush();
        }
    }

    /** What a lin-kv request came back with. */
    enum Outcome { OK, MISSING, CONFLICT }

    interface Then {
        void on(Outcome outcome, Object value) throws IOException;
    }

    interface With<T> {
        void on(T value) throws IOException;
    }

    interface Next {
        void run() throws IOException;
    }

    /**
     * One client request in flight: where its reply goes (null for the node's own work, an id reservation),
     * the records it wrote itself (so that a record found after a lost or doubled reply is known for its
     * own, not taken for a retry's), and how many rounds of conflicting writes it has been through.
     */
    class Flight {
        final Envelope reply;
        private boolean answered;
        private int rounds;
        private final List<Object> written = new ArrayList<>(2);

        Flight(Envelope reply) {
            this.reply = reply;
        }

        /** Writes the request's one reply; anything after it (a late call's reply) is ignored. */
        void answer(Reply reply) throws IOException {
            if (!answered) {
                answered = true;
                reply.writeTo(replies);
            }
        }

        void fail(RpcError error) throws IOException {
            answer(writer -> writer.error(reply, error));
        }

        boolean answered() {
            return answered;
        }

        /** After a conflict: one more round, up to {@link #MAX_ROUNDS}; then the request gives up, its outcome unknown. */
        void nextRound() {
            if (++rounds > MAX_ROUNDS) {
                throw new RpcError(Reason.KV_UNKNOWN_OUTCOME, "lin-kv changed under this request " + MAX_ROUNDS
                        + " times in a row: the outcome is unknown; a retry will tell");
            }
        }

        void wrote(Object record) {
            written.add(record);
        }

        boolean wroteItself(Object record) {
            return written.contains(record);
        }
    }

    record Call(String type, String key, long deadline, Flight flight, Then then) {
    }

    // ---- the requests ------------------------------------------------------------------------

    /** init: the node's id (lin-kv requests come from it), and the first id blocks, so that no first charge waits for one. */
    @Override
    public void init(String id, int nodeIds) throws IOException {
        if (id != null) {
            nodeId = id;
            paymentIds.refillAhead();
            refundIds.refillAhead();
        }
    }

    @Override
    public Reply charge(Envelope reply, ChargeRequest request) throws IOException {
        Flight flight = start(reply);
        StepRecord known = steps.get(request.key());
        if (known != null) {
            answerCharge(flight, request, known, true);   // a step record never changes: no lin-kv call
            return Reply.LATER;
        }
        chargeWithNewId(flight, request);
        return Reply.LATER;
    }

    /**
     * The payment's record first, then the step's (the commit point): by the time a payment id can be
     * seen anywhere, its ledger exists, so every refund of it is held to its charge.
     */
    private void chargeWithNewId(Flight flight, ChargeRequest request) throws IOException {
        paymentIds.take(flight, number -> {
            String paymentId = Charged.paymentId(number);
            PaymentRecord payment = PaymentRecord.of(request.key(), request.amount().text());
            cas(flight, paymentRecordKey(paymentId), ABSENT, payment.encode(), (o, v) -> {
                if (o != Outcome.OK) {
                    flight.nextRound();   // a saga's refund took this id first as a payment not known: take another
                    chargeWithNewId(flight, request);
                    return;
                }
                ledgers.put(paymentId, payment);
                StepRecord charged = StepRecord.chargedWith(request.userId(), request.amount().text(), paymentId);
                flight.wrote(charged);
                cas(flight, stepRecordKey(request.key()), ABSENT, charged.encode(), (o2, v2) -> {
                    if (o2 == Outcome.OK) {
                        steps.put(request.key(), charged);
                        answerCharge(flight, request, charged, false);
                        return;
                    }
                    // The step was there before: a retry, a reuse, or a compensation first (the payment
                    // record just written is an orphan: its step names another payment, or none).
                    readStep(flight, request.key(), step -> {
                        if (step == null) {
                            throw new RpcError(Reason.KV_UNKNOWN_OUTCOME, "lin-kv refused to create " + stepRecordKey(request.key())
                                    + " and then did not have it: the outcome is unknown; a retry will tell");
                        }
                        answerCharge(flight, request, step, !flight.wroteItself(step));
                    });
                });
            });
        });
    }

    private void answerCharge(Flight flight, ChargeRequest request, StepRecord step, boolean replayed) throws IOException {
        if (!step.charged()) {
            throw Rules.compensatedFirst(request.key());
        }
        if (replayed) {
            Rules.requireSameParams(request.key(), Rules.chargeDiffers(step.userId(), step.amount(), request));
            log.verboseCacheHit(request.key());
        }
        flight.answer(writer -> writer.chargeOk(flight.reply, request,
                new Served<>(new ChargeResult(step.paymentId(), step.amount()), replayed)));
    }

    @Override
    public Reply refund(Envelope reply, RefundRequest request) throws IOException {
        Flight flight = start(reply);
        RefundRecord done = refunds.get(request.key());
        if (done != null) {
            answerRefund(flight, request, done, true);   // a final record never changes: no lin-kv call
            return Reply.LATER;
        }
        resume(flight, request);
        return Reply.LATER;
    }

    /** From the refund key's record: answer what is final, finish or void what is pending, or start. */
    private void resume(Flight flight, RefundRequest request) throws IOException {
        String key = refundRecordKey(request.key());
        read(flight, key, (o, v) -> {
            RefundRecord record = o == Outcome.OK ? RefundRecord.decode(key, v) : null;
            if (record != null && record.isRefunded()) {
                refunds.put(request.key(), record);
                answerRefund(flight, request, record, !flight.wroteItself(record));
            } else if (record != null && record.isPending() && record.differs(request).isEmpty()) {
                proceed(flight, request, record);
            } else if (record != null && record.isPending()) {
                settleOthers(flight, request, record);
            } else {
                choosePayment(flight, request, record);
            }
        });
    }

    /**
     * A pending intent with other params than this request's. One that closes its step may have closed it
     * already, which cannot be undone, and it can always be finished (it refunds nothing, or trusts the
     * saga): so it is finished, on its own params, and this request (a reuse) gets 22. Any other: if its
     * refund is in the ledger it happened, so it is finished likewise; if not, it never will be from this
     * intent, which is voided, and this request is served on its own params. An error leaves no record.
     */
    private void settleOthers(Flight flight, RefundRequest request, RefundRecord pending) throws IOException {
        if (pending.closesStep()) {
            proceed(flight, request, pending);
            return;
        }
        voidFenced(flight, request, pending);
    }

    /**
     * Voids an intent that another attempt may be applying at this very moment: first a void marker for it
     * goes into its payment's ledger (by a cas from a ledger without its entry), so that its apply can
     * never land after; if its entry is there instead, it happened, and it is finished. Then the intent
     * is voided, and this request chooses again on its own params.
     */
    private void voidFenced(Flight flight, RefundRequest request, RefundRecord pending) throws IOException {
        String paymentId = pending.payment();
        readLedger(flight, paymentId, ledger -> {
            LedgerEntry entry = ledger == null ? null : ledger.entry(request.key());
            if (entry != null && !entry.isVoidMarker()) {
                writeFinalRefund(flight, request, pending, RefundRecord.finalOf(entry, paymentId), true);
                return;
            }
            if (entry != null && entry.voids().equals(pending.intent())) {
                voidAndChooseAgain(flight, request, pending);
                return;
            }
            if (ledger == null) {
                throw noLedger(paymentId, request);
            }
            PaymentRecord fenced = ledger.with(request.key(), LedgerEntry.voiding(pending.intent()));
            cas(flight, paymentRecordKey(paymentId), ledger.encode(), fenced.encode(), (o, v) -> {
                flight.nextRound();
                if (o == Outcome.OK) {
                    ledgers.put(paymentId, fenced);
                    voidAndChooseAgain(flight, request, pending);
                } else {
                    voidFenced(flight, request, pending);   // the ledger moved on: look again
                }
            });
        });
    }

    private void voidAndChooseAgain(Flight flight, RefundRequest request, RefundRecord pending) throws IOException {
        voidIntent(flight, request, pending, () -> {
            flight.nextRound();
            choosePayment(flight, request, RefundRecord.VOID);
        });
    }

    /** Cas a pending intent to void, then {@code then}; if the record moved on, goes on from what is there. */
    private void voidIntent(Flight flight, RefundRequest request, RefundRecord pending, Next then) throws IOException {
        cas(flight, refundRecordKey(request.key()), pending.encode(), RefundRecord.VOID.encode(), (o, v) -> {
            if (o == Outcome.OK) {
                then.run();
            } else {
                flight.nextRound();
                resume(flight, request);
            }
        });
    }

    /** Which payment a compensation refunds: the four cases of one node ({@link Rules#refundCase}), cluster-wide. */
    private void choosePayment(Flight flight, RefundRequest request, RefundRecord from) throws IOException {
        readStep(flight, request.chargeKey(), step -> {
            String ownPayment = step != null && step.charged() ? step.paymentId() : null;
            switch (Rules.refundCase(ownPayment, false, request)) {
                case OWN_PAYMENT -> intend(flight, request, from, ownPayment, false);
                case NAMED_PAYMENT -> readLedger(flight, request.paymentId(), named -> {
                    if (named != null && named.known()) {
                        intend(flight, request, from, request.paymentId(), false);
                        return;
                    }
                    Rules.requireAmountOfUnknownPayment(request, "this service");
                    intend(flight, request, from, request.paymentId(), true);   // trusting the saga: the step is closed
                });
                case CLOSE_STEP -> intend(flight, request, from, "", true);   // nothing to refund: the step is closed
                case NOTHING_CHARGED -> throw new IllegalStateException("a cluster declines no charge");
            }
        });
    }

    /**
     * The intent: this refund key draws on this payment (none: "" for a compensation that refunds nothing),
     * with these params, and closes its step or not. Taking the refund key comes first, as on one node, so
     * that only the compensation that has the key closes the step. From here anyone can finish it.
     */
    private void intend(Flight flight, RefundRequest request, RefundRecord from, String paymentId, boolean closesStep) throws IOException {
        RefundRecord pending = RefundRecord.pending(request, paymentId, closesStep, nodeId + "#" + nextIntent++);
        cas(flight, refundRecordKey(request.key()), from == null ? ABSENT : from.encode(), pending.encode(), (o, v) -> {
            if (o == Outcome.OK) {
                proceed(flight, request, pending);
            } else {
                flight.nextRound();
                resume(flight, request);   // another attempt got there first: go on from what it wrote
            }
        });
    }

    /** Goes on from a pending intent: closes its step if it must, then applies it (or, refunding nothing, finishes it). */
    private void proceed(Flight flight, RefundRequest request, RefundRecord pending) throws IOException {
        if (!pending.closesStep()) {
            // Case 2 was decided on a step with no charge; if the step has been charged since, the intent no
            // longer holds (the step's own payment comes first): void it and choose again. A charged step
            // never changes, so the step's own payment is never checked twice.
            readStep(flight, request.chargeKey(), step -> {
                if (step != null && step.charged() && !step.paymentId().equals(pending.payment())) {
                    voidFenced(flight, request, pending);
                } else {
                    apply(flight, request, pending, ledgers.get(pending.payment()), false);
                }
            });
            return;
        }
        Next then = () -> {
            if (pending.payment().isEmpty()) {
                writeFinalRefund(flight, request, pending, RefundRecord.nothing(pending), false);
            } else {
                apply(flight, request, pending, ledgers.get(pending.payment()), false);
            }
        };
        cas(flight, stepRecordKey(request.chargeKey()), ABSENT, StepRecord.COMPENSATED.encode(), (o, v) -> {
            if (o == Outcome.OK) {
                steps.put(request.chargeKey(), StepRecord.COMPENSATED);
                then.run();
                return;
            }
            readStep(flight, request.chargeKey(), step -> {
                if (step != null && step.charged()) {
                    // The charge won the race: nothing of this intent happened (it applies only once the step
                    // is closed), so it is voided, and the refund takes that payment.
                    voidAndChooseAgain(flight, request, pending);
                } else {
                    then.run();
                }
            });
        });
    }

    /**
     * Adds this refund key to the payment's ledger, once, never above the charge: one cas from the ledger
     * checked. It starts from the ledger as this node last saw it, a guess that a failed cas corrects; a
     * refusal is only ever decided on a ledger just read. A payment not known is refunded as asked (the
     * saga is trusted), still inside its ledger.
     */
    private void apply(Flight flight, RefundRequest request, RefundRecord pending, PaymentRecord ledger, boolean fresh) throws IOException {
        String paymentId = pending.payment();
        if (ledger == null && !fresh) {
            readLedger(flight, paymentId, read -> apply(flight, request, pending, read, true));
            return;
        }
        LedgerEntry entry = ledger == null ? null : ledger.entry(request.key());
        if (entry != null && entry.isVoidMarker()) {
            if (entry.voids().equals(pending.intent())) {
                flight.nextRound();
                resume(flight, request);   // this intent was voided by another request: go on from what it wrote
                return;
            }
            entry = null;   // the marker of an earlier intent on this key: this one may still be applied
        }
        if (entry != null) {
            // Applied before (by an attempt that did not finish, or by this one through a doubled reply).
            writeFinalRefund(flight, request, pending, RefundRecord.finalOf(entry, paymentId), !flight.wroteItself(entry));
            return;
        }
        Amount requested = pending.amountGiven().isEmpty() ? null : new Amount(pending.amountGiven(), new BigDecimal(pending.amountGiven()));
        boolean trusted = ledger == null || !ledger.known();
        if (trusted && (requested == null || !pending.closesStep())) {
            throw noLedger(paymentId, request);
        }
        String amount;
        try {
            amount = ledger != null && ledger.known()
                    ? Rules.refundAmount(paymentId, ledger.charged(), new BigDecimal(ledger.refunded()), requested)
                    : requested.text();
        } catch (RpcError refused) {
            if (fresh) {
                abandon(flight, request, pending, refused);
            } else {
                readLedger(flight, paymentId, read -> apply(flight, request, pending, read, true));
            }
            return;
        }
        refundIds.take(flight, number -> {
            LedgerEntry mine = new LedgerEntry(Refunded.refundId(number), amount, pending.paymentIdGiven(), pending.amountGiven(), "");
            flight.wrote(mine);
            PaymentRecord next = (ledger == null ? PaymentRecord.notKnown() : ledger).with(request.key(), mine);
            cas(flight, paymentRecordKey(paymentId), ledger == null ? ABSENT : ledger.encode(), next.encode(), (o, v) -> {
                if (o == Outcome.OK) {
                    ledgers.put(paymentId, next);
                    if (trusted) {
                        log.warn(Rules.trustingTheSaga(request, "this service", ""));   // once: when the refund is made
                    }
                    writeFinalRefund(flight, request, pending, RefundRecord.finalOf(mine, paymentId), false);
                } else {
                    flight.nextRound();   // the ledger moved on: read it and decide again
                    readLedger(flight, paymentId, read -> apply(flight, request, pending, read, true));
                }
            });
        });
    }

    /** An intent that draws on a payment this service charged, whose record is not there: not a state it writes. */
    private static RpcError noLedger(String paymentId, RefundRequest request) {
        return notOurs(paymentRecordKey(paymentId), "no ledger of a payment charged, though " + refundRecordKey(request.key()) + " draws on it");
    }

    /** An error leaves no record: the intent is voided, so that a corrected request starts afresh. */
    private void abandon(Flight flight, RefundRequest request, RefundRecord pending, RpcError error) throws IOException {
        voidIntent(flight, request, pending, () -> flight.fail(error));
    }

    /**
     * Writes a refund key's final record over what was there ({@code from}: the pending record, a void one,
     * or none), then answers. If someone else wrote first, goes on from what they wrote.
     */
    private void writeFinalRefund(Flight flight, RefundRequest request, RefundRecord from, RefundRecord done, boolean replayed) throws IOException {
        flight.wrote(done);
        cas(flight, refundRecordKey(request.key()), from == null ? ABSENT : from.encode(), done.encode(), (o, v) -> {
            if (o == Outcome.OK) {
                refunds.put(request.key(), done);
                answerRefund(flight, request, done, replayed);
            } else {
                flight.nextRound();
                resume(flight, request);
            }
        });
    }

    private void answerRefund(Flight flight, RefundRequest request, RefundRecord done, boolean replayed) throws IOException {
        Rules.requireSameParams(request.key(), done.differs(request));
        if (replayed) {
            log.verboseCacheHit(request.key());
        }
        flight.answer(writer -> writer.refundOk(flight.reply, request, new Served<>(done.result(), replayed)));
    }

    /** What is recorded for a step, read fresh (its ledger may have moved on): no key is created or changed. */
    @Override
    public Reply status(Envelope reply, StatusRequest request) throws IOException {
        Flight flight = start(reply);
        String refundKey = refundRecordKey(request.refundKey());
        readStep(flight, request.chargeKey(), step -> read(flight, refundKey, (o, v) -> {
            RefundRecord refund = o == Outcome.OK ? RefundRecord.decode(refundKey, v) : null;
            RefundResult refunded = refund != null && refund.isRefunded() ? refund.result() : null;
            if (step == null || !step.charged()) {
                flight.answer(writer -> writer.paymentStatusOk(reply, request, new StepStatus(step == null ? "none" : "compensated", null, refunded)));
                return;
            }
            String paymentKey = paymentRecordKey(step.paymentId());
            read(flight, paymentKey, (o2, v2) -> {
                if (o2 != Outcome.OK) {
                    throw notOurs(paymentKey, "missing, though step " + request.chargeKey() + " names it");
                }
                PaymentRecord ledger = PaymentRecord.decode(paymentKey, v2);
                ledgers.put(step.paymentId(), ledger);
                PaymentView payment = new PaymentView(step.paymentId(), step.amount(),
                        new BigDecimal(ledger.refunded()).signum() > 0 ? new BigDecimal(ledger.refunded()).toPlainString() : "0");
                flight.answer(writer -> writer.paymentStatusOk(reply, request, new StepStatus("charged", payment, refunded)));
            });
        }));
        return Reply.LATER;
    }

    // ---- lin-kv ------------------------------------------------------------------------------

    /** A step's record (null: none), from what this node has seen or from lin-kv. */
    private void readStep(Flight flight, String chargeKey, With<StepRecord> then) throws IOException {
        StepRecord known = steps.get(chargeKey);
        if (known != null) {
            then.on(known);
            return;
        }
        String key = stepRecordKey(chargeKey);
        read(flight, key, (o, v) -> {
            StepRecord step = o == Outcome.OK ? StepRecord.decode(key, v) : null;
            if (step != null) {
                steps.put(chargeKey, step);
            }
            then.on(step);
        });
    }

    /** A payment's record (null: none), read from lin-kv. */
    private void readLedger(Flight flight, String paymentId, With<PaymentRecord> then) throws IOException {
        String key = paymentRecordKey(paymentId);
        read(flight, key, (o, v) -> {
            PaymentRecord ledger = o == Outcome.OK ? PaymentRecord.decode(key, v) : null;
            if (ledger != null) {
                ledgers.put(paymentId, ledger);
            }
            then.on(ledger);
        });
    }

    private Flight start(Envelope reply) {
        if (nodeId == null) {
            throw new RpcError(Reason.NOT_INITIALISED,
                    "not initialized: a node of the cluster needs its id (init) to reach lin-kv; nothing was done");
        }
        if (calls.size() >= MAX_CALLS) {
            throw new RpcError(Reason.BUSY, "busy: " + calls.size()
                    + " lin-kv calls are waiting for their replies; nothing was done, retry later");
        }
        return new Flight(reply);
    }

    private void read(Flight flight, String key, Then then) throws IOException {
        send(flight, "read", key, null, null, null, false, then);
    }

    /** A cas from {@code from} to {@code to}; from {@link #ABSENT}, it creates the key or fails if there is one. */
    private void cas(Flight flight, String key, Object from, Object to, Then then) throws IOException {
        send(flight, "cas", key, null, from, to, ABSENT.equals(from), then);
    }

    private void send(Flight flight, String type, String key, Object value, Object from, Object to, boolean create, Then then) throws IOException {
        long msgId = replies.send(new Envelope(nodeId, KV, null), type, json -> {
            json.field("key");
            json.string(key);
            if (value != null) {
                json.field("value");
                KvValue.write(json, value);
            }
            if (from != null) {
                json.field("from");
                KvValue.write(json, from);
                json.field("to");
                KvValue.write(json, to);
            }
            if (create) {
                json.ascii(", \"create_if_not_exists\": true");
            }
        });
        calls.put(msgId, new Call(type, key, System.nanoTime() + timeoutMillis * 1_000_000, flight, then));
    }

    private static String stepRecordKey(String chargeKey) {
        return "charge/" + chargeKey;
    }

    private static String paymentRecordKey(String paymentId) {
        return "payment/" + paymentId;
    }

    private static String refundRecordKey(String refundKey) {
        return "refund/" + refundKey;
    }

    @Override
    public boolean completes(String from, byte[] line, int start, int length) throws IOException {
        KvReply body = KvReply.parse(line, start, length);
        Long inReplyTo = body.inReplyTo();
        Call call = inReplyTo == null ? null : calls.get(inReplyTo);
        if (call == null || !KV.equals(from)) {
            return false;   // late (timed out), from an earlier process of this node, or not lin-kv's
        }
        String type = body.type();
        if (!(call.type() + "_ok").equals(type) && !"error".equals(type)) {
            log.warn("a reply of type " + type + " to a " + call.type() + " (msg_id " + inReplyTo + "): dropped");
            return true;   // not the answer to this call: keep waiting for it
        }
        calls.remove(inReplyTo);
        Outcome outcome;
        if ("error".equals(type)) {
            Long code = body.code();
            if (code != null && code == 20) {
                outcome = Outcome.MISSING;
            } else if (code != null && code == 22) {
                outcome = Outcome.CONFLICT;
            } else {
                call.flight().fail(new RpcError(Reason.KV_UNKNOWN_OUTCOME, "lin-kv answered " + call.type() + " of " + call.key() + " with error "
                        + code + " (" + body.text() + "): the outcome is unknown; a retry will tell"));
                return true;
            }
        } else if ("read".equals(call.type()) && (body.value() == null || body.value() == KvValue.OTHER)) {
            call.flight().fail(notOurs(call.key(), body.value() == null ? "a read_ok without a value" : "not a string or a flat record of strings"));
            return true;
        } else {
            outcome = Outcome.OK;
        }
        resumeCall(call, outcome, body.value());
        return true;
    }

    private void resumeCall(Call call, Outcome outcome, Object value) throws IOException {
        if (call.flight().answered()) {
            return;
        }
        try {
            call.then().on(outcome, value);
        } catch (RpcError refused) {
            call.flight().fail(refused);
        } catch (RuntimeException bug) {
            log.error("internal error in a cluster request, answered with code 13", bug);
            call.flight().fail(new RpcError(Reason.INTERNAL_ERROR, "internal error: " + bug));
        }
    }

    /** Milliseconds until the oldest call times out; -1 when none is waiting. */
    long millisToNextDeadline() {
        if (calls.isEmpty()) {
            return -1;
        }
        long nanos = calls.values().iterator().next().deadline() - System.nanoTime();
        return Math.max(0, (nanos + 999_999) / 1_000_000);
    }

    /** Answers the clients of calls past their deadline: the outcome is unknown, and a late reply is ignored. */
    void expire() throws IOException {
        long now = System.nanoTime();
        var oldest = calls.values().iterator();
        while (oldest.hasNext()) {
            Call call = oldest.next();
            if (call.deadline() - now > 0) {
                return;
            }
            oldest.remove();
            call.flight().fail(new RpcError(Reason.KV_TIMEOUT, "lin-kv did not answer a " + call.type() + " within "
                    + timeoutMillis + " ms: the outcome is unknown; a retry will tell"));
        }
    }

    boolean waiting() {
        return !calls.isEmpty();
    }

    /**
     * Ids handed out from blocks reserved in lin-kv: unique cluster-wide, with gaps. The next block is
     * reserved while half of the current one is left (and at init), so that no request waits for one
     * in steady state; requests that find both used up wait in a queue, bounded like the calls.
     */
    final class IdBlock {
        private final String key;
        private long next = 1;
        private long end = 0;          // the block in use: next to end
        private long spareNext = 1;
        private long spareEnd = 0;     // the block reserved ahead (empty: spareNext > spareEnd)
        private boolean reserving;
        private final ArrayDeque<Waiter> waiters = new ArrayDeque<>();

        record Waiter(Flight flight, With<Long> then) {
        }

        IdBlock(String key) {
            this.key = key;
        }

        void take(Flight flight, With<Long> then) throws IOException {
            if (next > end && spareNext <= spareEnd) {
                next = spareNext;
                end = spareEnd;
                spareNext = 1;
                spareEnd = 0;
            }
            if (next <= end) {
                long id = next++;
                refillAhead();
                then.on(id);
                return;
            }
            if (waiters.size() >= MAX_CALLS) {
                throw new RpcError(Reason.BUSY, "busy: " + waiters.size()
                        + " requests are waiting for ids; nothing was done, retry later");
            }
            waiters.add(new Waiter(flight, then));
            refillAhead();
        }

        /** Reserves the next block if none is reserved yet and half of this one is used. */
        void refillAhead() throws IOException {
            if (!reserving && spareNext > spareEnd && end - next + 1 <= ID_BLOCK / 2) {
                reserving = true;
                reserve(new Reservation());
            }
        }

        /** The lin-kv calls of one reservation; if they fail, every request waiting for an id fails alike. */
        final class Reservation extends Flight {
            Reservation() {
                super(null);
            }

            @Override
            void fail(RpcError error) throws IOException {
                if (answered()) {
                    return;
                }
                answer(Reply.LATER);
                reserving = false;
                while (!waiters.isEmpty()) {
                    waiters.poll().flight().fail(error);
                }
            }
        }

        private void reserve(Reservation reservation) throws IOException {
            read(reservation, key, (o, v) -> {
                Long last = o == Outcome.OK ? lastIdIn(key, v) : null;
                long from = last == null ? 0 : last;
                cas(reservation, key, last == null ? ABSENT : Long.toString(last), Long.toString(from + ID_BLOCK), (o2, v2) -> {
                    if (o2 != Outcome.OK) {
                        reservation.nextRound();
                        reserve(reservation);   // another node took a block meanwhile
                        return;
                    }
                    reservation.answer(Reply.LATER);
                    reserving = false;
                    if (next > end) {
                        next = from + 1;
                        end = from + ID_BLOCK;
                    } else {
                        spareNext = from + 1;
                        spareEnd = from + ID_BLOCK;
                    }
                    serveWaiters();
                });
            });
        }

        private void serveWaiters() throws IOException {
            while (!waiters.isEmpty() && next <= end) {
                Waiter waiter = waiters.poll();
                if (!waiter.flight().answered()) {
                    try {
                        waiter.then().on(next++);
                    } catch (RpcError refused) {
                        waiter.flight().fail(refused);
                    }
                }
            }
            refillAhead();
        }
    }

    /**
     * The values this node keeps in lin-kv: strings, or flat objects whose fields are all strings (amounts
     * included: lin-kv reads JSON numbers as doubles, and 100.50 must stay 100.50). A cas compares whole
     * values, so a value is always sent back exactly as it was read.
     */
    static final class KvValue {
        /** A value of another shape than this node writes: not ours, never taken for one of ours. */
        static final Object OTHER = new Object();

        static Object read(JsonParser parser, JsonToken token) throws IOException {
            if (token == JsonToken.VALUE_STRING) {
                return parser.getText();
            }
            if (token != JsonToken.START_OBJECT) {
                parser.skipChildren();
                return OTHER;
            }
            LinkedHashMap<String, String> fields = new LinkedHashMap<>();
            boolean flat = true;
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                if (parser.nextToken() == JsonToken.VALUE_STRING) {
                    fields.put(name, parser.getText());
                } else {
                    parser.skipChildren();
                    flat = false;
                }
            }
            return flat ? fields : OTHER;
        }

        static void write(JsonBytes json, Object value) {
            if (value instanceof String text) {
                json.string(text);
                return;
            }
            json.ascii("{");
            boolean first = true;
            for (var field : ((Map<?, ?>) value).entrySet()) {
                json.ascii(first ? "" : ", ");
                json.string((String) field.getKey());
                json.ascii(": ");
                json.string((String) field.getValue());
                first = false;
            }
            json.ascii("}");
        }

        /** A record: its fields in the order given, as name, value, name, value, ... */
        static LinkedHashMap<String, String> record(String... namesAndValues) {
            LinkedHashMap<String, String> record = new LinkedHashMap<>();
            for (int i = 0; i < namesAndValues.length; i += 2) {
                record.put(namesAndValues[i], namesAndValues[i + 1]);
            }
            return record;
        }

        private KvValue() {
        }
    }

    /**
     * The fields of a lin-kv reply, read from its line again: only the cluster reads them, so the parse of
     * every other line skips them. {@code value} is as {@link KvValue#read} gives it (null: none).
     */
    record KvReply(String type, Long inReplyTo, Long code, String text, Object value) {
        static KvReply parse(byte[] line, int start, int length) throws IOException {
            String type = null;
            Long inReplyTo = null;
            Long code = null;
            String text = null;
            Object value = null;
            try (JsonParser parser = JSON.createParser(line, start, length)) {
                parser.nextToken();
                while (parser.nextToken() == JsonToken.FIELD_NAME) {
                    String name = parser.currentName();
                    if (parser.nextToken() != JsonToken.START_OBJECT || !name.equals("body")) {
                        parser.skipChildren();
                        continue;
                    }
                    while (parser.nextToken() == JsonToken.FIELD_NAME) {
                        String field = parser.currentName();
                        JsonToken token = parser.nextToken();
                        switch (field) {
                            case "type" -> type = stringOrNull(Value.read(parser, token));
                            case "in_reply_to" -> inReplyTo = longOrNull(Value.read(parser, token));
                            case "code" -> code = longOrNull(Value.read(parser, token));
                            case "text" -> text = stringOrNull(Value.read(parser, token));
                            case "value" -> value = KvValue.read(parser, token);
                            default -> parser.skipChildren();
                        }
                    }
                }
            }
            return new KvReply(type, inReplyTo, code, text, value);
        }
    }

    /*
     * The records this service keeps in lin-kv (docs/CLUSTER.md, "The keys"), each a flat object of strings.
     * Only what a node of this service wrote is believed: a value is decoded strictly (every field there,
     * no other, a known state, well-formed amounts and ids), and anything else is an indefinite error
     * naming the key, never a decision and never cached.
     */

    /** A lin-kv value that no node of this service wrote: the outcome of the request is unknown. */
    static RpcError notOurs(String key, String why) {
        return new RpcError(Reason.KV_VALUE_NOT_OURS, "lin-kv holds a value under " + key + " that this service did not write (" + why
                + "): the outcome is unknown; a retry will tell");
    }

    /** The fields of a record as read, checked against the names its kind has (in any order). */
    static Map<String, String> fields(String key, Object value, String... names) {
        if (!(value instanceof Map<?, ?> map)) {
            throw notOurs(key, value instanceof String ? "a string, not a record" : "not a flat record of strings");
        }
        @SuppressWarnings("unchecked")
        Map<String, String> record = (Map<String, String>) map;
        for (String name : names) {
            if (!record.containsKey(name)) {
                throw notOurs(key, "no " + name);
            }
        }
        return record;
    }

    static String decimal(String key, String text, boolean positive) {
        try {
            BigDecimal value = new BigDecimal(text);
            if (positive ? value.signum() > 0 : value.signum() >= 0) {
                return text;
            }
        } catch (NumberFormatException notANumber) {
            // said below
        }
        throw notOurs(key, "'" + abbreviate(text) + "' is not an amount");
    }

    static String paymentIdIn(String key, String text) {
        if (Charged.paymentNumber(text) < 0) {
            throw notOurs(key, "'" + abbreviate(text) + "' is not a payment id");
        }
        return text;
    }

    /** The payment a refund draws on: one of this service's ids, or any id a saga named (a payment not known). */
    static String paymentNamedIn(String key, String text) {
        if (text.isEmpty()) {
            throw notOurs(key, "a refund that draws on no payment");
        }
        return text;
    }

    /** A refund id, or "" for a refund that refunded nothing. */
    static String refundIdIn(String key, String text) {
        if (!text.isEmpty() && (text.length() < 2 || text.charAt(0) != 'r' || Charged.paymentNumber("p" + text.substring(1)) < 0)) {
            throw notOurs(key, "'" + abbreviate(text) + "' is not a refund id");
        }
        return text;
    }

    /** A param as a record keeps it: its text, or "" when it was not given. */
    static String given(Object param) {
        return param == null ? "" : param instanceof Amount amount ? amount.text() : param.toString();
    }

    static String givenOrNull(String text) {
        return text.isEmpty() ? null : text;
    }

    /**
     * {@code charge/<step key>}: the step's record, the commit point of its charge, never changed once written.
     * Charged (with the payment it made) or compensated (its refund came first: it is never charged).
     */
    record StepRecord(boolean charged, String userId, String amount, String paymentId) {
        static final StepRecord COMPENSATED = new StepRecord(false, null, null, null);

        static StepRecord chargedWith(String userId, String amount, String paymentId) {
            return new StepRecord(true, userId, amount, paymentId);
        }

        Map<String, String> encode() {
            return charged ? KvValue.record("state", "charged", "user_id", userId, "amount", amount, "payment_id", paymentId)
                    : KvValue.record("state", "compensated");
        }

        static StepRecord decode(String key, Object value) {
            Map<String, String> record = fields(key, value, "state");
            switch (record.get("state")) {
                case "charged" -> {
                    fields(key, value, "state", "user_id", "amount", "payment_id");
                    if (record.size() != 4 || record.get("user_id").isEmpty()) {
                        throw notOurs(key, "not a charged step's fields");
                    }
                    return chargedWith(record.get("user_id"), decimal(key, record.get("amount"), true), paymentIdIn(key, record.get("payment_id")));
                }
                case "compensated" -> {
                    if (record.size() != 1) {
                        throw notOurs(key, "not a compensated step's fields");
                    }
                    return COMPENSATED;
                }
                default -> throw notOurs(key, "unknown state '" + abbreviate(record.get("state")) + "'");
            }
        }
    }

    /**
     * One refund in a payment's ledger: its id, the amount it took, and the params it was first asked with
     * (so that whoever finds it there answers it alike). Or, under a refund key whose intent on this payment
     * was voided, a marker naming that intent ({@code voids}): once it is there, that intent can never be
     * applied to this ledger, because an apply is a cas from a ledger without it.
     */
    record LedgerEntry(String refundId, String refunded, String paymentIdGiven, String amountGiven, String voids) {
        static LedgerEntry voiding(String intent) {
            return new LedgerEntry("", "0", "", "", intent);
        }

        boolean isVoidMarker() {
            return !voids.isEmpty();
        }

        /** As a ledger field's value: {@code "r7 30.00 30.00 =p1"} (the last two "-" when not given), or {@code "void n1#17"}. */
        String encode() {
            if (isVoidMarker()) {
                return "void " + voids;
            }
            return refundId + " " + refunded + " " + (amountGiven.isEmpty() ? "-" : amountGiven) + " "
                    + (paymentIdGiven.isEmpty() ? "-" : "=" + paymentIdGiven);
        }

        static LedgerEntry decode(String key, String text) {
            if (text.startsWith("void ") && text.length() > 5) {
                return voiding(text.substring(5));
            }
            String[] parts = text.split(" ", 4);
            if (parts.length != 4 || !(parts[3].equals("-") || parts[3].startsWith("="))) {
                throw notOurs(key, "'" + abbreviate(text) + "' is not a ledger entry");
            }
            return new LedgerEntry(refundIdIn(key, parts[0]), decimal(key, parts[1], true),
                    parts[3].equals("-") ? "" : parts[3].substring(1), parts[2].equals("-") ? "" : decimal(key, parts[2], true), "");
        }
    }

    /**
     * {@code payment/<payment id>}: a payment and its ledger, created before its payment id can be seen
     * anywhere (the step's record comes after it), so that every refund of the payment, under any key,
     * draws on this one record. A payment id this service never charged but a saga named gets a ledger
     * too, of a payment not known ({@code charged} ""): its id is then taken for good, and no charge
     * can ever make it a payment with refunds already outside its ledger.
     */
    record PaymentRecord(String step, String charged, String refunded, LinkedHashMap<String, LedgerEntry> entries) {
        private static final String ENTRY = "refund ";

        static PaymentRecord of(String step, String charged) {
            return new PaymentRecord(step, charged, "0", new LinkedHashMap<>());
        }

        static PaymentRecord notKnown() {
            return new PaymentRecord("", "", "0", new LinkedHashMap<>());
        }

        /** A payment this service charged (its refunds are held to its charge). */
        boolean known() {
            return !charged.isEmpty();
        }

        LedgerEntry entry(String refundKey) {
            return entries.get(refundKey);
        }

        PaymentRecord with(String refundKey, LedgerEntry entry) {
            LinkedHashMap<String, LedgerEntry> more = new LinkedHashMap<>(entries);
            LedgerEntry before = more.put(refundKey, entry);
            assert before == null || before.isVoidMarker() : "a refund key is applied to a ledger once";
            return new PaymentRecord(step, charged, new BigDecimal(refunded).add(new BigDecimal(entry.refunded())).toPlainString(), more);
        }

        Map<String, String> encode() {
            LinkedHashMap<String, String> record = KvValue.record("step", step, "charged", charged, "refunded", refunded);
            entries.forEach((refundKey, entry) -> record.put(ENTRY + refundKey, entry.encode()));
            return record;
        }

        static PaymentRecord decode(String key, Object value) {
            Map<String, String> record = fields(key, value, "step", "charged", "refunded");
            String charged = record.get("charged");
            if (!charged.isEmpty()) {
                decimal(key, charged, true);
            }
            if (charged.isEmpty() != record.get("step").isEmpty()) {
                throw notOurs(key, "a step without a charge, or a charge without a step");
            }
            LinkedHashMap<String, LedgerEntry> entries = new LinkedHashMap<>();
            BigDecimal sum = BigDecimal.ZERO;
            for (var field : record.entrySet()) {
                if (field.getKey().startsWith(ENTRY)) {
                    LedgerEntry entry = LedgerEntry.decode(key, field.getValue());
                    entries.put(field.getKey().substring(ENTRY.length()), entry);
                    sum = sum.add(new BigDecimal(entry.refunded()));
                } else if (!List.of("step", "charged", "refunded").contains(field.getKey())) {
                    throw notOurs(key, "a field named '" + abbreviate(field.getKey()) + "'");
                }
            }
            String refunded = decimal(key, record.get("refunded"), false);
            if (sum.compareTo(new BigDecimal(refunded)) != 0 || !charged.isEmpty() && sum.compareTo(new BigDecimal(charged)) > 0) {
                throw notOurs(key, "its refunds do not add up");
            }
            return new PaymentRecord(record.get("step"), charged, refunded, entries);
        }
    }

    /**
     * {@code refund/<refund key>}: none → pending (the intent: the payment it draws on, and the params) →
     * refunded (the result), or pending → void (refused, no longer holding, or voided by another request
     * behind the fence); a void record counts as none.
     */
    record RefundRecord(String state, String paymentIdGiven, String amountGiven, String payment, boolean closesStep, String intent,
                        String refundId, String refunded) {
        static final RefundRecord VOID = new RefundRecord("void", "", "", "", false, "", "", "");

        /**
         * {@code payment} "": nothing to refund; {@code closesStep}: the step is closed before anything else
         * (cases 3 and 4); {@code intent}: this intent's id, unique cluster-wide, which a void marker names.
         */
        static RefundRecord pending(RefundRequest request, String payment, boolean closesStep, String intent) {
            return new RefundRecord("pending", given(request.paymentId()), given(request.amount()), payment, closesStep, intent, "", "");
        }

        /** The final record of a refund drawn from a ledger: the params it was first asked with, and what it took. */
        static RefundRecord finalOf(LedgerEntry entry, String payment) {
            return new RefundRecord("refunded", entry.paymentIdGiven(), entry.amountGiven(), payment, false, "", entry.refundId(), entry.refunded());
        }

        /** The final record of a compensation that refunded nothing, on the params of its intent. */
        static RefundRecord nothing(RefundRecord pending) {
            return new RefundRecord("refunded", pending.paymentIdGiven(), pending.amountGiven(), "", false, "", "", Amount.ZERO.text());
        }

        boolean isPending() {
            return state.equals("pending");
        }

        boolean isRefunded() {
            return state.equals("refunded");
        }

        List<String> differs(RefundRequest request) {
            return Rules.refundDiffers(givenOrNull(paymentIdGiven), givenOrNull(amountGiven), request);
        }

        RefundResult result() {
            return new RefundResult(givenOrNull(refundId), refunded);
        }

        Map<String, String> encode() {
            return switch (state) {
                case "pending" -> KvValue.record("state", state, "payment_id_given", paymentIdGiven, "amount_given", amountGiven, "payment", payment,
                        "closes_step", closesStep ? "yes" : "no", "intent", intent);
                case "refunded" -> KvValue.record("state", state, "payment_id_given", paymentIdGiven, "amount_given", amountGiven,
                        "payment", payment, "refund_id", refundId, "refunded", refunded);
                default -> KvValue.record("state", state);
            };
        }

        static RefundRecord decode(String key, Object value) {
            Map<String, String> record = fields(key, value, "state");
            RefundRecord decoded = switch (record.get("state")) {
                case "pending" -> {
                    fields(key, value, "state", "payment_id_given", "amount_given", "payment", "closes_step", "intent");
                    String closes = record.get("closes_step");
                    if (!closes.equals("yes") && !closes.equals("no") || record.get("payment").isEmpty() && closes.equals("no")
                            || record.get("intent").isEmpty()) {
                        throw notOurs(key, "not a pending refund's fields");
                    }
                    String payment = record.get("payment");
                    yield new RefundRecord("pending", record.get("payment_id_given"), amountGivenIn(key, record.get("amount_given")),
                            payment.isEmpty() ? "" : paymentNamedIn(key, payment), closes.equals("yes"), record.get("intent"), "", "");
                }
                case "refunded" -> {
                    fields(key, value, "state", "payment_id_given", "amount_given", "payment", "refund_id", "refunded");
                    String payment = record.get("payment");
                    String refundId = refundIdIn(key, record.get("refund_id"));
                    if (payment.isEmpty() != refundId.isEmpty()) {
                        throw notOurs(key, "a refund without a payment, or a payment without a refund");
                    }
                    yield new RefundRecord("refunded", record.get("payment_id_given"), amountGivenIn(key, record.get("amount_given")),
                            payment.isEmpty() ? "" : paymentNamedIn(key, payment), false, "", refundId,
                            decimal(key, record.get("refunded"), !refundId.isEmpty()));
                }
                case "void" -> VOID;
                default -> throw notOurs(key, "unknown state '" + abbreviate(record.get("state")) + "'");
            };
            if (record.size() != decoded.encode().size()) {
                throw notOurs(key, "not a " + decoded.state() + " refund's fields");
            }
            return decoded;
        }

        private static String amountGivenIn(String key, String text) {
            return text.isEmpty() ? text : decimal(key, text, true);
        }
    }

    /** {@code ids/payments} and {@code ids/refunds}: the last id handed out, as a string. */
    static long lastIdIn(String key, Object value) {
        if (value instanceof String text && text.matches("\\d{1,15}")) {
            return Long.parseLong(text);
        }
        throw notOurs(key, "not an id count");
    }
}
