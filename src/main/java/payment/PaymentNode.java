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
import payment.Balances.Account;

/**
 * The payment participant of a saga, as a Maelstrom node.
 *
 * <p>One message per line comes in on stdin and one reply per line goes out on stdout. The story of a
 * line, in the order this file tells it (its numbered sections): {@link LineReader read a line} →
 * {@link #parse parse} → {@link ChargeRequest check} → {@link #dispatch dispatch} →
 * {@link PaymentHandler handle} → {@link ReplyWriter reply} → flush (when the input runs dry, so that
 * nobody waits for a reply sitting in a buffer).
 *
 * <p>The heart of it is {@link PaymentHandler}: a table from idempotency key ({@code saga42:step2}) to
 * the result of that step, claimed atomically, so that a step retried any number of times, from any
 * number of threads, charges or refunds at most once and every attempt gets the same answer.
 */
public final class PaymentNode {
    // ---------------------------------------------------------------------------------------------
    // 1. The main loop: a line's trip, from stdin to dispatch
    // ---------------------------------------------------------------------------------------------

    /** A longer line is refused (error 12) without ever being held in memory whole. */
    static final int MAX_LINE_BYTES = 1 << 20;

    static final JsonFactory JSON = JsonFactory.builder()
            // Numbers are kept as text and judged by Amount.parse, so that a 100,000-digit amount gets
            // a clear error 12 instead of making the whole line unreadable.
            .streamReadConstraints(StreamReadConstraints.builder().maxNumberLength(MAX_LINE_BYTES).build())
            .build();

    private final ReplyWriter replies;
    private final Log log;
    /** Where checked requests go: this node's own table ({@link LocalService}) unless an option chose another. */
    private final Service service;
    /** Set by init; until then a reply is sent from the request's {@code dest}. */
    private String nodeId;
    private long lineNumber;

    /** {@code service} makes the service that requests go to, writing its replies to this node's reply writer. */
    PaymentNode(OutputStream stdout, Log log, Function<ReplyWriter, Service> service) {
        this.replies = new ReplyWriter(stdout, log);
        this.log = log;
        this.service = service.apply(replies);
    }

    /** The card's node: one table (in memory, or replayed from a journal), every request handled at once, in input order. */
    static PaymentNode serving(PaymentHandler table, OutputStream stdout, Log log) {
        return new PaymentNode(stdout, log, replies -> new LocalService(table, replies, log));
    }

    /** Serves every line of {@code in}; returns the exit status: 0 at end of input, 1 if stdin, stdout or the journal failed. */
    int serve(InputStream in) {
        return service.serve(this, in);
    }

    /** The main loop of a service that answers every request at once: one line after the other, in input order. */
    int serveInOrder(InputStream in) {
        LineReader lines = new LineReader(in, MAX_LINE_BYTES, replies);
        try {
            while (lines.next()) {
                handleLine(lines.buffer(), lines.start(), lines.length(), lines.tooLongPrefix(), lines.tooLongLength());
            }
            replies.flush();
            service.close();   // the end of input is the end of this node's run
            return 0;
        } catch (Stop stop) {
            replies.flushQuietly();   // what was answered before, and the journal records behind it
            if (stop.getMessage() != null) {
                log.error("stopping: " + stop.getMessage(), null);
            }
            return stop.status;
        } catch (IOException e) {
            log.error("stopping: reading stdin, writing stdout or writing the journal failed: " + e, null);
            return 1;
        }
    }

    /** An option's mode that must stop the node at once, with this exit status (a journal that cannot open, an injected crash). */
    static class Stop extends IOException {
        private static final long serialVersionUID = 1L;
        final int status;

        Stop(String message, int status) {
            super(message);
            this.status = status;
        }
    }

    /** One line's whole trip; {@code tooLongPrefix} is the first megabyte of a line over the limit, else null. */
    void handleLine(byte[] line, int start, int length, byte[] tooLongPrefix, long tooLongLength) throws IOException {
        lineNumber++;
        if (tooLongPrefix != null) {
            refuseTooLongLine(tooLongPrefix, tooLongLength);
            return;
        }
        if (LineReader.isBlank(line, start, start + length)) {
            return;
        }
        RawMessage message = new RawMessage();
        try {
            parse(line, start, length, message);
        } catch (IOException | RuntimeException e) {
            refuseUnreadable(message, Reason.UNREADABLE_LINE, plainReason(e), line, start, length);
            return;
        }
        if (message.body == null || !isString(message.src)) {
            String why = !isString(message.src) ? (message.src == null ? "missing src" : "src must be a string")
                    : message.bodyToken == null ? "missing body" : "body must be an object";
            refuseUnreadable(message, Reason.UNREADABLE_LINE, why, line, start, length);
            return;
        }
        dispatch(message);
    }

    /**
     * A line that cannot be processed (not JSON, too long, no src or body) is answered with error 12 when
     * a string {@code src} can still be read from it, up to where it breaks: the sender learns why instead
     * of waiting for its timeout. Otherwise it can only be logged. A broken reply is never answered.
     */
    private void refuseUnreadable(RawMessage message, Reason reason, String why, byte[] text, int start, int length) throws IOException {
        boolean isReply = message.body != null && !isMissing(message.body.inReplyTo);
        if (!isString(message.src) || isReply) {
            String hint = message.typeOutside && message.src == null
                    ? " (it looks like a message body without its envelope: send {\"src\": ..., \"dest\": ..., \"body\": {...}})" : "";
            log.warn("line " + lineNumber + " ignored: " + why + hint + ": " + excerpt(text, start, length));
            return;
        }
        log.warn("line " + lineNumber + " refused: " + why);
        RawBody body = message.body != null ? message.body : new RawBody();
        replies.error(replyEnvelope(message, body), new RpcError(reason, why));
    }

    /**
     * A line over the limit is answered from what its first megabyte says: if {@code src} (and
     * {@code msg_id}) came before the cut, the sender learns why; otherwise it can only be logged.
     */
    private void refuseTooLongLine(byte[] prefix, long length) throws IOException {
        RawMessage message = new RawMessage();
        try {
            parse(prefix, 0, prefix.length, message);
        } catch (IOException | RuntimeException expected) {
            // The cut left the JSON unfinished: keep whatever was read before it.
        }
        refuseUnreadable(message, Reason.LINE_TOO_LONG, "line too long: " + length + " bytes, the limit is " + MAX_LINE_BYTES, prefix, 0, 200);
    }

    /** Who a reply goes to: from this node, to the request's src, in reply to its msg_id (null: none). */
    record Envelope(String from, String to, Long inReplyTo) {
        Envelope withFrom(String node) {
            return new Envelope(node, to, inReplyTo);
        }
    }

    private void dispatch(RawMessage message) throws IOException {
        RawBody body = message.body;
        if (!isMissing(body.inReplyTo)) {
            // A reply to something this node sent. Answering it (even with an error) would let two nodes
            // bounce errors at each other for ever.
            if (service.completes(message)) {
                return;
            }
            log.warn("line " + lineNumber + ": a reply from " + message.src.text() + " (in_reply_to "
                    + body.inReplyTo.text() + "), and this node waits for none: dropped");
            return;
        }
        Envelope reply = replyEnvelope(message, body);
        try {
            if (reply.inReplyTo() == null && !isMissing(body.msgId)) {
                throw malformed(body.msgId.token() == JsonToken.VALUE_NUMBER_INT
                        ? "msg_id " + abbreviate(body.msgId.text()) + " does not fit in 64 bits" : "msg_id must be an integer");
            }
            String type = requiredString(body.type, "type");
            if (log.isVerbose()) {
                log.verbose("line " + lineNumber + " from " + reply.to() + ": " + type + stepForLog(body));
            }
            switch (type) {
                case "init" -> handleInit(reply, message, body);
                case "ChargePayment" -> service.charge(reply, ChargeRequest.from(body));
                case "RefundPayment" -> service.refund(reply, RefundRequest.from(body));
                case "PaymentStatus" -> service.status(reply, StatusRequest.from(body));
                case "BalanceRead" -> service.balance(reply, BalanceRequest.from(body));
                default -> throw new RpcError(Reason.UNSUPPORTED_TYPE, "unsupported message type: " + type);
            }
        } catch (RpcError refused) {
            replies.error(reply, refused);
        } catch (RuntimeException bug) {
            log.error("line " + lineNumber + ": internal error, answered with code 13", bug);
            replies.error(reply, new RpcError(Reason.INTERNAL_ERROR, "internal error: " + bug));
        }
    }

    private Envelope replyEnvelope(RawMessage message, RawBody body) {
        String from = nodeId != null ? nodeId : stringOrNull(message.dest);
        return new Envelope(from, message.src.text(), longOrNull(body.msgId));
    }

    private static String stepForLog(RawBody body) {
        return isString(body.sagaId) && body.step != null ? " " + body.sagaId.text() + ":step" + body.step.text() : "";
    }

    private void handleInit(Envelope reply, RawMessage message, RawBody body) throws IOException {
        String id = isMissing(body.nodeId) ? stringOrNull(message.dest) : requiredString(body.nodeId, "node_id");
        service.init(id, body.nodeIds);   // before the node takes the id: an id the service refuses changes nothing
        if (id != null) {
            // A repeated init only renames the node: the idempotency table is untouched.
            nodeId = id;
        }
        log.verbose("initialized as " + nodeId);
        replies.initOk(reply.withFrom(nodeId));   // init_ok already comes from the new name
    }

    /**
     * Where ChargePayment, RefundPayment and PaymentStatus go once checked: this node's own idempotency
     * table (the default), or the cluster's, kept in lin-kv (--store lin-kv). Both follow the same rules.
     * A mode asks for what it needs here, so that the card's path never passes through a mode's code.
     */
    interface Service {
        void charge(Envelope reply, ChargeRequest request) throws IOException;

        void refund(Envelope reply, RefundRequest request) throws IOException;

        void status(Envelope reply, StatusRequest request) throws IOException;

        /** BalanceRead: a user's balance, with what was charged and refunded (with --balance). */
        default void balance(Envelope reply, BalanceRequest request) throws IOException {
            throw new RpcError(Reason.BALANCES_NOT_KEPT, "BalanceRead is not supported by this service");
        }

        /** init names the node ({@code nodeIds}: how many nodes it names, -1 when none); refusing it, a service changes nothing. */
        void init(String nodeId, int nodeIds) throws IOException;

        /** The main loop this service needs. */
        default int serve(PaymentNode node, InputStream in) {
            return node.serveInOrder(in);
        }

        /** Takes a reply to a request this node sent (a service's); false when it is not one. */
        default boolean completes(RawMessage reply) throws IOException {
            return false;
        }

        /** The end of input: what the service still owes goes out, and what it holds is released. */
        default void close() throws IOException {
        }
    }

    /** This node's own table: every request is handled at once, in input order. */
    static class LocalService implements Service {
        private final ReplyWriter replies;
        private final Log log;
        private PaymentHandler table;

        /** {@code table} is null only for a journal opened at init ({@link JournalAtInit}). */
        LocalService(PaymentHandler table, ReplyWriter replies, Log log) {
            this.replies = replies;
            this.log = log;
            if (table != null) {
                use(table);
            }
        }

        final void use(PaymentHandler table) {
            this.table = table;
            replies.commitFirst(table.journal());   // no reply leaves before the records behind it are durable
        }

        /** The table; a mode that opens it later says why there is none yet. */
        PaymentHandler table() {
            return table;
        }

        @Override
        public void charge(Envelope reply, ChargeRequest request) throws IOException {
            Served<ChargeResult> served = table().charge(request);
            if (served.replayed()) {
                log.verboseCacheHit(request.key());
            }
            replies.chargeOk(reply, request, served);
        }

        @Override
        public void refund(Envelope reply, RefundRequest request) throws IOException {
            Served<RefundResult> served = table().refund(request);
            if (served.replayed()) {
                log.verboseCacheHit(request.key());
            }
            replies.refundOk(reply, request, served);
        }

        @Override
        public void status(Envelope reply, StatusRequest request) throws IOException {
            replies.paymentStatusOk(reply, request, table().status(request));
        }

        @Override
        public void balance(Envelope reply, BalanceRequest request) throws IOException {
            Account account = table().account(request.userId());
            if (account == null) {
                throw new RpcError(Reason.BALANCES_NOT_KEPT, "BalanceRead needs --balance: this node keeps no balances");
            }
            replies.balanceOk(reply, request.userId(), account);
        }

        @Override
        public void init(String nodeId, int nodeIds) throws IOException {
            if (nodeIds > 1) {
                log.warn("init names " + nodeIds + " nodes, and this node shares no state with the others:"
                        + " a retry sent to another node may charge again");
            }
        }

        @Override
        public void close() throws IOException {
            if (table != null) {
                table.journal().close();
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 2. The idempotency table: each key served once
    // ---------------------------------------------------------------------------------------------

    /** A payment as a reply shows it; {@code charged} is the amount's text as the first request wrote it. */
    record ChargeResult(String paymentId, String charged) {
    }

    /** {@code refundId} is null for a compensation that found nothing to refund. */
    record RefundResult(String refundId, String refunded) {
    }

    /** A result, and whether it was replayed from the idempotency table rather than made just now. */
    record Served<R>(R result, boolean replayed) {
    }

    /**
     * Charges and refunds, each at most once per idempotency key, and safe to call from many threads.
     *
     * <p>Every key moves through the states of {@link Entry}: an attempt claims a free key with an
     * {@link InProgress} marker in one atomic {@code putIfAbsent}; the one attempt that wins does the
     * work and replaces the marker with its final entry; every other attempt waits for that entry and
     * answers from it. (Checking for the key and then putting it, in two steps, is the classic
     * double-charge bug: two retries both see "absent" and both charge.) An attempt that fails leaves
     * no record, so the next attempt under that key starts afresh.
     */
    static class PaymentHandler {
        private final ConcurrentHashMap<String, Entry> entries = new ConcurrentHashMap<>(1 << 16);
        private final PaymentsByNumber payments = new PaymentsByNumber();
        private final AtomicLong paymentCount = new AtomicLong();
        private final AtomicLong refundCount = new AtomicLong();
        private final Log log;
        private final Journal journal;
        /** Keys the table takes at most: a full table refuses new keys (error 11) and goes on serving those it has. */
        private final long maxKeys;
        private final AtomicBoolean saidFull = new AtomicBoolean();

        /** Runs {@code firstTime} for a key at most once; every other attempt gets the entry it left. */
        private Served<Entry> once(String key, Supplier<Entry> firstTime) {
            while (true) {
                Entry existing = entries.get(key);   // a retry needs no claim: read first, lock-free
                if (existing == null) {
                    refuseIfFull(key);
                    InProgress claim = new InProgress();
                    existing = entries.putIfAbsent(key, claim);
                    if (existing == null) {
                        return new Served<>(runClaimed(key, claim, firstTime), false);
                    }
                }
                Entry entry = existing.await();
                if (entry != null) {
                    return new Served<>(entry, true);
                }
                // The attempt we waited for failed and left no record: try to claim the key ourselves.
            }
        }

        private Entry runClaimed(String key, InProgress claim, Supplier<Entry> firstTime) {
            Entry done = null;
            try {
                done = firstTime.get();
                boolean replaced = entries.replace(key, claim, done);
                assert replaced : "only the attempt that claimed " + key + " settles it";
                return done;
            } finally {
                if (done == null) {
                    entries.remove(key, claim);   // failed: leave no record
                }
                claim.settled().complete(done);
            }
        }

        /** {@code journal}: where each change goes ({@link Journal#NONE}: memory only); as many keys as the heap holds. */
        PaymentHandler(Log log, Journal journal) {
            this(log, journal, keysForHeap());
        }

        PaymentHandler(Log log, Journal journal, long maxKeys) {
            this.log = log;
            this.journal = journal;
            this.maxKeys = maxKeys;
        }

        /**
         * What a full table does rather than run out of memory: a new key is refused with nothing done, and
         * the node says so once on stderr. (Retries and status reads of its keys never get here.)
         */
        private void refuseIfFull(String key) {
            if (entries.size() < maxKeys) {
                return;
            }
            if (!saidFull.getAndSet(true)) {
                log.warn("the table is full (" + maxKeys + " keys, --max-keys): new keys are refused with error 11 from " + key
                        + " on; retries and status reads of the keys it has are still served");
            }
            throw new RpcError(Reason.TABLE_FULL, "table full: this node holds its limit of " + maxKeys
                    + " keys; nothing was done for " + key + " (retries of the keys it has are still served)");
        }

        /** A key with its entry takes about this much heap (measured: docs/PERFORMANCE.md, "Memory"). */
        static final long BYTES_PER_KEY = 256;

        /** The default limit: the keys that fit in 60% of the heap, the rest left for everything else. */
        static long keysForHeap() {
            return Runtime.getRuntime().maxMemory() / 10 * 6 / BYTES_PER_KEY;
        }

        Journal journal() {
            return journal;
        }

        Served<ChargeResult> charge(ChargeRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstCharge(request));
            if (served.result() instanceof Charged charged) {
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.chargeDiffers(charged.userId(), charged.amount(), request));
                }
                return new Served<>(charged.result(), served.replayed());
            }
            if (served.result() instanceof Declined declined) {
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.chargeDiffers(declined.userId(), declined.amount(), request));
                }
                throw new RpcError(Reason.INSUFFICIENT_FUNDS, declined.reason());   // the step's result: every retry gets it again
            }
            throw Rules.compensatedFirst(key);
        }

        Served<RefundResult> refund(RefundRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstRefund(request));
            Refunded refunded = (Refunded) served.result();
            if (served.replayed()) {
                Rules.requireSameParams(key, Rules.refundDiffers(refunded.paymentId(), refunded.amount(), request));
            }
            return new Served<>(refunded.result(), served.replayed());
        }

        /** The charge itself, once per key (with --balance, {@link FundedPaymentHandler} may decline it first). */
        Entry firstCharge(ChargeRequest request) {
            Charged charged = new Charged(request.userId(), request.amount().text(), paymentCount.incrementAndGet());
            journal.charged(request, charged.paymentNumber());   // before anyone can refund it, so the journal keeps that order
            payments.add(charged);
            return charged;
        }

        /** Which payment a compensation refunds: the four cases of docs/PROTOCOL.md section 4, in order. */
        private Refunded firstRefund(RefundRequest request) {
            Entry step = settledEntry(request.chargeKey());
            Charged ofThisStep = step instanceof Charged charged ? charged : null;
            switch (Rules.refundCase(ofThisStep == null ? null : ofThisStep.paymentId(), step instanceof Declined, request)) {
                case NOTHING_CHARGED -> {
                    return refunded(request, Refunded.NOTHING, Amount.ZERO.text(), null);
                }
                case OWN_PAYMENT -> {
                    return refundPayment(ofThisStep, request);
                }
                case NAMED_PAYMENT -> {
                    Charged ofAnotherStep = payments.get(request.paymentId());
                    if (ofAnotherStep != null) {
                        return refundPayment(ofAnotherStep, request);
                    }
                    Rules.requireAmountOfUnknownPayment(request, "this node");
                }
                case CLOSE_STEP -> {
                }
            }
            // The compensation came before its charge (or names a payment made elsewhere): close the
            // step so that a charge arriving later is refused, and compensation and action commute.
            if (!closeStep(request.chargeKey())) {
                return firstRefund(request);   // the charge won the race after all: refund it
            }
            if (request.paymentId() == null) {
                return refunded(request, Refunded.NOTHING, Amount.ZERO.text(), null);
            }
            log.warn(Rules.trustingTheSaga(request, "this node", " (made before a restart or by another node)"));
            return refunded(request, refundCount.incrementAndGet(), request.amount().text(), null);
        }

        Refunded refundPayment(Charged payment, RefundRequest request) {
            String amount = payment.deductRefund(request.amount());   // may refuse: then no refund id is used up
            return refunded(request, refundCount.incrementAndGet(), amount, payment);
        }

        /** {@code payment}: the payment of this node whose ledger the refund drew on, else null. */
        private Refunded refunded(RefundRequest request, long refundNumber, String amount, Charged payment) {
            journal.refunded(request, amount, refundNumber, payment == null ? 0 : payment.paymentNumber());
            return new Refunded(request, refundNumber, amount);
        }

        /** Closes a step that has no charge; false if a charge got there first. */
        private boolean closeStep(String chargeKey) {
            Entry existing = entries.putIfAbsent(chargeKey, Compensated.STEP);
            if (existing == null) {
                journal.closed(chargeKey);
            }
            return existing == null || existing == Compensated.STEP;
        }

        /**
         * What is recorded for a step, read without touching it: no key is created, claimed or closed, so
         * a status read before a compensation never makes that compensation "come first".
         */
        StepStatus status(StatusRequest request) {
            Entry step = settledEntry(request.chargeKey());
            Entry refund = settledEntry(request.refundKey());
            return new StepStatus(step, refund instanceof Refunded refunded ? refunded.result() : null);
        }

        /** The final entry under a key, waiting for an attempt in progress; null if there is none. */
        private Entry settledEntry(String key) {
            Entry entry = entries.get(key);
            return entry == null ? null : entry.await();
        }

        // Replaying a journal: each record puts back the entry it wrote, and the counters move past it.

        void restoreCharge(String key, String userId, String amount, long paymentNumber) {
            Charged charged = new Charged(userId, amount, paymentNumber);
            entries.put(key, charged);
            payments.add(charged);
            paymentCount.accumulateAndGet(paymentNumber, Math::max);
        }

        void restoreDecline(String key, String userId, String amount, String reason) {
            entries.put(key, new Declined(userId, amount, reason));
        }

        void restoreRefund(String key, String paymentId, String amount, String refunded, long refundNumber, long paymentNumber) {
            entries.put(key, new Refunded(paymentId, amount, refunded, refundNumber));
            if (paymentNumber != 0) {
                payments.get(paymentNumber).restoreDeducted(new BigDecimal(refunded));
            }
            refundCount.accumulateAndGet(refundNumber, Math::max);
        }

        void restoreClose(String chargeKey) {
            entries.put(chargeKey, Compensated.STEP);
        }

        /** A user's account for BalanceRead; null: this table keeps no balances (no --balance). */
        Account account(String userId) {
            return null;
        }

        /** The payment with this number, made by this node (replaying a journal: the payment a refund drew on). */
        Charged payment(long number) {
            return payments.get(number);
        }
    }

    /**
     * The contract's rules (docs/PROTOCOL.md sections 3 to 5), written once: this node's table and the
     * cluster's service (section 8) decide with them and answer in their words.
     */
    static final class Rules {
        /** Which payment a compensation refunds: the four cases of docs/PROTOCOL.md section 4, in order. */
        enum RefundCase {
            /** Case 1: the charge made under the same step. */
            OWN_PAYMENT,
            /** Cases 2 and 3: the payment it names; one the service does not know is refunded trusting the saga, and the step is closed. */
            NAMED_PAYMENT,
            /** Case 4: nothing charged and nothing named: the step is closed, nothing is refunded. */
            CLOSE_STEP,
            /** The step's charge was declined (--balance): nothing was charged, nothing is refunded. */
            NOTHING_CHARGED
        }

        /** {@code stepPaymentId}: the payment of the refund's own step, null when it has none. */
        static RefundCase refundCase(String stepPaymentId, boolean stepDeclined, RefundRequest request) {
            if (stepDeclined) {
                return RefundCase.NOTHING_CHARGED;
            }
            if (stepPaymentId != null) {
                if (request.paymentId() != null && !request.paymentId().equals(stepPaymentId)) {
                    throw new RpcError(Reason.PAYMENT_NOT_OF_STEP, "payment_id " + request.paymentId()
                            + " is not the payment of step " + request.chargeKey() + " (" + stepPaymentId + ")");
                }
                return RefundCase.OWN_PAYMENT;
            }
            return request.paymentId() != null ? RefundCase.NAMED_PAYMENT : RefundCase.CLOSE_STEP;
        }

        /** A payment the service does not know is refunded as asked, so the amount must be given. {@code who}: "this node" or "this service". */
        static void requireAmountOfUnknownPayment(RefundRequest request, String who) {
            if (request.amount() == null) {
                throw new RpcError(Reason.AMOUNT_REQUIRED, "params.amount is required to refund " + request.paymentId() + ", a payment " + who + " does not know");
            }
        }

        static String trustingTheSaga(RefundRequest request, String who, String why) {
            return "refunding " + request.paymentId() + " for " + request.key() + ", a payment " + who + " does not know" + why
                    + ": trusting the saga";
        }

        /**
         * What a refund takes from a payment of {@code charged} that has {@code refunded} refunded so far (null:
         * nothing yet): {@code requested}, or all that is left when null, computed exactly; never more than
         * was charged (error 22). Returns the amount's text.
         */
        static String refundAmount(String paymentId, String charged, BigDecimal refunded, Amount requested) {
            BigDecimal alreadyRefunded = refunded == null ? BigDecimal.ZERO : refunded;
            BigDecimal left = new BigDecimal(charged).subtract(alreadyRefunded);
            if (requested != null) {
                if (requested.value().compareTo(left) > 0) {
                    throw new RpcError(Reason.REFUND_EXCEEDS_PAYMENT, "refund of " + requested.text() + " is more than is left of payment "
                            + paymentId + " (" + left.toPlainString() + " of " + charged + ")");
                }
                return requested.text();
            }
            if (left.signum() == 0) {
                throw new RpcError(Reason.PAYMENT_FULLY_REFUNDED, "payment " + paymentId + " is already fully refunded");
            }
            return alreadyRefunded.signum() == 0 ? charged : left.toPlainString();   // untouched, it keeps its digits
        }

        /** A retry must repeat the params: those that differ from the first request's; amounts compare by value (99.99 equals 99.990). */
        static List<String> chargeDiffers(String userId, String amount, ChargeRequest request) {
            return differs("user_id", !userId.equals(request.userId()), "amount", !request.amount().sameValue(amount));
        }

        /** A refund's retry must repeat the params as first sent, given or not ({@code paymentId}, {@code amount}: null when not). */
        static List<String> refundDiffers(String paymentId, String amount, RefundRequest request) {
            return differs("payment_id", !Objects.equals(paymentId, request.paymentId()),
                    "amount", amount == null ? request.amount() != null : request.amount() == null || !request.amount().sameValue(amount));
        }

        private static List<String> differs(String first, boolean firstDiffers, String second, boolean secondDiffers) {
            return firstDiffers && secondDiffers ? List.of(first, second) : firstDiffers ? List.of(first)
                    : secondDiffers ? List.of(second) : List.of();
        }

        /** A retry whose params differ from the first request's is refused, naming them; none differing, nothing happens. */
        static void requireSameParams(String key, List<String> differs) {
            if (!differs.isEmpty()) {
                throw new RpcError(Reason.KEY_REUSED, "idempotency key " + key + " was first used with other params", differs);
            }
        }

        static RpcError compensatedFirst(String key) {
            return new RpcError(Reason.STEP_COMPENSATED, "step " + key + " was already compensated: its refund came first, so it is never charged");
        }

        static String paymentId(long number) {
            return "p" + number;
        }

        static String refundId(long number) {
            return "r" + number;
        }

        /** The number of a payment id this service gives ("p" and a number, no leading zero), else -1. */
        static long paymentNumber(String paymentId) {
            if (paymentId.length() < 2 || paymentId.length() > 19 || paymentId.charAt(0) != 'p' || paymentId.charAt(1) == '0') {
                return -1;
            }
            long number = 0;
            for (int i = 1; i < paymentId.length(); i++) {
                char c = paymentId.charAt(i);
                if (c < '0' || c > '9') {
                    return -1;
                }
                number = number * 10 + (c - '0');
            }
            return number;
        }
    }

    /** What a step's status read found: its charge key's entry (null: none) and its refund key's result. */
    record StepStatus(Entry step, RefundResult refund) {
        String status() {
            if (step instanceof Charged) {
                return "charged";
            }
            if (step instanceof Declined) {
                return "declined";
            }
            return step == Compensated.STEP ? "compensated" : "none";
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 3. The entries it stores, and the journal they go to
    // ---------------------------------------------------------------------------------------------

    /** What the idempotency table holds for a key. */
    sealed interface Entry permits InProgress, Charged, Declined, Refunded, Compensated {
        /** The final entry, waiting if an attempt is in progress; null if that attempt failed. */
        default Entry await() {
            return this;
        }
    }

    /** An attempt owns the key and is running now. */
    record InProgress(CompletableFuture<Entry> settled) implements Entry {
        InProgress() {
            this(new CompletableFuture<>());
        }

        @Override
        public Entry await() {
            return settled.join();
        }
    }

    /*
     * The final entries are what a node keeps for every key it ever served, a million or more, so each
     * is one small object: the params it was first asked with (to tell a retry from a reuse) and its
     * result's text share one CompactText array, cut by lengths, instead of a String apiece.
     */

    /** A charge key's final entry: the payment it made, and that payment's refunds so far. */
    static final class Charged implements Entry {
        private final byte[] params;          // CompactText: user_id, then the amount's text as the request wrote it
        private final int userIdLength;
        private final long paymentNumber;     // the payment id is "p" + paymentNumber
        private BigDecimal refunded;          // guarded by this; null until the first refund

        Charged(String userId, String amount, long paymentNumber) {
            this.params = CompactText.of(userId + amount);
            this.userIdLength = userId.length();
            this.paymentNumber = paymentNumber;
        }

        String paymentId() {
            return Rules.paymentId(paymentNumber);
        }

        long paymentNumber() {
            return paymentNumber;
        }

        ChargeResult result() {
            return new ChargeResult(paymentId(), amount());
        }

        String userId() {
            return CompactText.substring(params, 0, userIdLength);
        }

        String amount() {
            return CompactText.substring(params, userIdLength, CompactText.length(params));
        }

        /** The exact total refunded from this payment so far, by every refund key. */
        synchronized String refundedSoFar() {
            return refunded == null ? "0" : refunded.toPlainString();
        }

        synchronized void restoreDeducted(BigDecimal amount) {
            refunded = refunded == null ? amount : refunded.add(amount);
        }

        /** Refunds {@code requested}, or all that is left when null; never more than was charged. Returns the amount's text. */
        synchronized String deductRefund(Amount requested) {
            String amount = Rules.refundAmount(paymentId(), amount(), refunded, requested);
            refunded = refunded == null ? new BigDecimal(amount) : refunded.add(new BigDecimal(amount));
            assert refunded.compareTo(new BigDecimal(amount())) <= 0 : "the refunds of " + paymentId() + " exceed its charge";
            return amount;
        }
    }

    /** A refund key's final entry: the refund it made. */
    static final class Refunded implements Entry {
        static final long NOTHING = 0;         // refund number of a compensation that found nothing to refund
        private final byte[] params;           // CompactText: payment_id and amount as given (each may be absent), then the amount refunded
        private final int paymentIdLength;     // -1: not given
        private final int amountLength;        // -1: not given
        private final long refundNumber;

        Refunded(RefundRequest request, long refundNumber, String refunded) {
            this(request.paymentId(), request.amount() == null ? null : request.amount().text(), refunded, refundNumber);
        }

        Refunded(String paymentId, String amount, String refunded, long refundNumber) {
            this.params = CompactText.of((paymentId == null ? "" : paymentId) + (amount == null ? "" : amount) + refunded);
            this.paymentIdLength = paymentId == null ? -1 : paymentId.length();
            this.amountLength = amount == null ? -1 : amount.length();
            this.refundNumber = refundNumber;
        }

        RefundResult result() {
            return new RefundResult(refundNumber == NOTHING ? null : Rules.refundId(refundNumber), refunded());
        }

        /** The text of the amount refunded. */
        String refunded() {
            return CompactText.substring(params, amountEnd(), CompactText.length(params));
        }

        /** The payment_id as the first request gave it, or null. */
        String paymentId() {
            return paymentIdLength < 0 ? null : CompactText.substring(params, 0, paymentIdLength);
        }

        /** The amount as the first request gave it, or null. */
        String amount() {
            return amountLength < 0 ? null : CompactText.substring(params, amountEnd() - amountLength, amountEnd());
        }

        private int amountEnd() {
            return Math.max(paymentIdLength, 0) + Math.max(amountLength, 0);
        }
    }

    /** A charge key whose charge was declined (--balance): the decline is the step's result, as a charge would be. */
    record Declined(String userId, String amount, String reason) implements Entry {
    }

    /** A charge key closed by a compensation that came first: that step is never charged. */
    enum Compensated implements Entry {
        STEP
    }

    /**
     * A string kept without String's 24-byte header, for the texts held in a million entries: one byte a
     * character when every character is below 256 (ids and amounts nearly always are), else two, behind
     * a tag byte. Unlike UTF-8 it is exact for every Java string, lone surrogates included, so two
     * different user ids can never be stored alike.
     */
    static final class CompactText {
        private static final byte ONE_BYTE = 0;
        private static final byte TWO_BYTES = 1;

        static byte[] of(String text) {
            boolean narrow = true;
            for (int i = 0; i < text.length() && narrow; i++) {
                narrow = text.charAt(i) < 256;
            }
            byte[] bytes = new byte[1 + (narrow ? text.length() : 2 * text.length())];
            bytes[0] = narrow ? ONE_BYTE : TWO_BYTES;
            for (int i = 0; i < text.length(); i++) {
                char c = text.charAt(i);
                if (narrow) {
                    bytes[1 + i] = (byte) c;
                } else {
                    bytes[1 + 2 * i] = (byte) (c >> 8);
                    bytes[2 + 2 * i] = (byte) c;
                }
            }
            return bytes;
        }

        static int length(byte[] text) {
            return text[0] == ONE_BYTE ? text.length - 1 : (text.length - 1) / 2;
        }

        static char charAt(byte[] text, int index) {
            return text[0] == ONE_BYTE
                    ? (char) (text[1 + index] & 0xff)
                    : (char) ((text[1 + 2 * index] & 0xff) << 8 | text[2 + 2 * index] & 0xff);
        }

        static String substring(byte[] text, int from, int to) {
            if (text[0] == ONE_BYTE) {
                return new String(text, 1 + from, to - from, StandardCharsets.ISO_8859_1);
            }
            char[] chars = new char[to - from];
            for (int i = from; i < to; i++) {
                chars[i - from] = charAt(text, i);
            }
            return new String(chars);
        }
    }

    /** The node's payments by number (p1 is slot 1). Numbers are dense, so an array beats a hash map. */
    static final class PaymentsByNumber {
        private volatile Charged[] slots = new Charged[1 << 10];

        synchronized void add(Charged payment) {
            int number = Math.toIntExact(payment.paymentNumber());
            Charged[] current = slots;
            if (number >= current.length) {
                current = Arrays.copyOf(current, Math.max(2 * current.length, number + 1));
            }
            current[number] = payment;
            slots = current;   // the volatile write publishes the new slot to readers
        }

        /** The payment with this id if this node made it, else null. */
        Charged get(String paymentId) {
            long number = Rules.paymentNumber(paymentId);
            return number < 0 ? null : get(number);
        }

        Charged get(long number) {
            Charged[] current = slots;
            return number < current.length ? current[(int) number] : null;
        }
    }

    /** Where the handler records each change of state; {@link #commit} makes them durable. */
    interface Journal {
        /** No journal: the node keeps its state in memory only. */
        Journal NONE = new Journal() {
            @Override
            public void charged(ChargeRequest request, long paymentNumber) {
            }

            @Override
            public void declined(ChargeRequest request, String reason) {
            }

            @Override
            public void closed(String key) {
            }

            @Override
            public void refunded(RefundRequest request, String refunded, long refundNumber, long paymentNumber) {
            }

            @Override
            public void commit() {
            }
        };

        void charged(ChargeRequest request, long paymentNumber);

        void declined(ChargeRequest request, String reason);

        void closed(String chargeKey);

        /** {@code paymentNumber}: the payment of this node whose ledger the refund drew on, else 0. */
        void refunded(RefundRequest request, String refunded, long refundNumber, long paymentNumber);

        void commit() throws IOException;

        /** Releases the journal (a process that ends releases it anyway). */
        default void close() throws IOException {
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 4. Requests in: read a line, parse it, check it
    // ---------------------------------------------------------------------------------------------

    /**
     * Splits a byte stream into lines. It holds at most {@code maxLine} bytes of any one line (the
     * rest of a longer line is read and dropped), and it flushes the replies before every read that
     * could block: replies go out in big batches under a burst, and none is left waiting in a buffer
     * while the node waits for input.
     */
    static final class LineReader {
        private static final int CHUNK = 64 * 1024;

        private final InputStream in;
        private final int maxLine;
        private final Flushable beforeBlocking;
        private byte[] buf = new byte[CHUNK];
        private int pos;        // start of the unread bytes
        private int limit;      // end of the unread bytes
        private int scanned;    // bytes from pos on already known to hold no newline
        private boolean eof;
        private int lineStart;
        private int lineEnd;
        private byte[] tooLongPrefix;
        private long tooLongLength;

        LineReader(InputStream in, int maxLine, Flushable beforeBlocking) {
            this.in = in;
            this.maxLine = maxLine;
            this.beforeBlocking = beforeBlocking;
        }

        /** Moves to the next line (the last one may lack its newline); false at end of input. */
        boolean next() throws IOException {
            tooLongPrefix = null;
            while (true) {
                int newline = indexOfNewline(pos + scanned, limit);
                if (newline >= 0 && newline - pos <= maxLine) {
                    return takeLine(newline, newline + 1);
                }
                if (newline >= 0) {
                    keepPrefixOfLongLine(newline - pos);
                    pos = newline + 1;
                    return true;
                }
                scanned = limit - pos;
                if (scanned > maxLine) {
                    keepPrefixOfLongLine(scanned);
                    dropRestOfLongLine();
                    return true;
                }
                if (eof) {
                    return pos < limit && takeLine(limit, limit);
                }
                fill();
            }
        }

        byte[] buffer() {
            return buf;
        }

        int start() {
            return lineStart;
        }

        int length() {
            return lineEnd - lineStart;
        }

        /** The first {@code maxLine} bytes of the current line if it was longer, else null. */
        byte[] tooLongPrefix() {
            return tooLongPrefix;
        }

        long tooLongLength() {
            return tooLongLength;
        }

        static boolean isBlank(byte[] buf, int from, int to) {
            for (int i = from; i < to; i++) {
                byte b = buf[i];
                if (b != ' ' && b != '\t' && b != '\r') {
                    return false;
                }
            }
            return true;
        }

        private boolean takeLine(int end, int next) {
            lineStart = pos;
            lineEnd = end;
            pos = next;
            scanned = 0;
            return true;
        }

        private int indexOfNewline(int from, int to) {
            for (int i = from; i < to; i++) {
                if (buf[i] == '\n') {
                    return i;
                }
            }
            return -1;
        }

        private void fill() throws IOException {
            if (pos > 0) {
                System.arraycopy(buf, pos, buf, 0, limit - pos);
                limit -= pos;
                pos = 0;
            }
            if (limit == buf.length) {
                buf = Arrays.copyOf(buf, Math.min(buf.length * 2, maxLine + CHUNK));
            }
            if (in.available() == 0) {
                beforeBlocking.flush();
            }
            int n = in.read(buf, limit, buf.length - limit);
            if (n < 0) {
                eof = true;
            } else {
                limit += n;
            }
        }

        private void keepPrefixOfLongLine(long lengthSoFar) {
            tooLongPrefix = Arrays.copyOfRange(buf, pos, pos + maxLine);
            tooLongLength = lengthSoFar;
            scanned = 0;
        }

        /** Reads on to the end of a too-long line, keeping none of it. */
        private void dropRestOfLongLine() throws IOException {
            pos = limit = 0;
            while (!eof) {
                fill();
                int newline = indexOfNewline(0, limit);
                if (newline >= 0) {
                    tooLongLength += newline;
                    pos = newline + 1;
                    return;
                }
                tooLongLength += limit;
                limit = 0;
            }
        }
    }

    /** A JSON scalar as written (numbers keep their exact text), or the bare token of an object or array. */
    record Value(JsonToken token, String text) {
        static Value read(JsonParser parser, JsonToken token) throws IOException {
            parser.skipChildren();
            return new Value(token, token.isScalarValue() ? parser.getText() : null);
        }
    }

    static final class RawMessage {
        Value src;
        Value dest;
        JsonToken bodyToken;   // null when there is no body
        RawBody body;          // null when missing or not an object
        boolean typeOutside;   // a "type" next to src: a body pasted without its envelope
        byte[] line;           // the line it was read from (valid while the line is handled)
        int start;
        int length;
    }

    static final class RawBody {
        Value type;
        Value msgId;
        Value inReplyTo;   // set: this is a reply to something this node sent, never a request
        Value nodeId;
        Value userId;      // of a BalanceRead
        int nodeIds = -1;  // how many node_ids init named (-1: none)
        Value sagaId;
        Value step;
        Value compensating;
        RawParams params;   // null when missing
    }

    static final class RawParams {
        final JsonToken token;   // what params was: an object (its fields below), or null, a string, ...
        Value userId;
        Value amount;
        Value paymentId;

        RawParams(JsonToken token) {
            this.token = token;
        }
    }

    /**
     * Reads one line into {@code message}. Fields fill in as they are read, so a line cut short still
     * leaves what came before the cut. A repeated key keeps its last value, as in JSON.parse.
     */
    static void parse(byte[] line, int start, int length, RawMessage message) throws IOException {
        message.line = line;
        message.start = start;
        message.length = length;
        try (JsonParser parser = JSON.createParser(line, start, length)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                throw new JsonParseException(parser, "a JSON value, but not an object");
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken token = parser.nextToken();
                switch (name) {
                    case "src" -> message.src = Value.read(parser, token);
                    case "dest" -> message.dest = Value.read(parser, token);
                    case "type" -> {
                        message.typeOutside = true;
                        parser.skipChildren();
                    }
                    case "body" -> {
                        // Attached before it is filled in, so that a line cut short keeps what its body began with.
                        message.bodyToken = token;
                        message.body = token == JsonToken.START_OBJECT ? new RawBody() : null;
                        if (message.body != null) {
                            parseBody(parser, message.body);
                        } else {
                            parser.skipChildren();
                        }
                    }
                    default -> parser.skipChildren();
                }
            }
            if (parser.nextToken() != null) {
                throw new JsonParseException(parser, "more data after the JSON object");
            }
        }
    }

    private static void parseBody(JsonParser parser, RawBody body) throws IOException {
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String name = parser.currentName();
            JsonToken token = parser.nextToken();
            switch (name) {
                case "type" -> body.type = Value.read(parser, token);
                case "msg_id" -> body.msgId = Value.read(parser, token);
                case "in_reply_to" -> body.inReplyTo = Value.read(parser, token);
                case "node_id" -> body.nodeId = Value.read(parser, token);
                case "user_id" -> body.userId = Value.read(parser, token);
                case "node_ids" -> body.nodeIds = countItems(parser, token);
                case "saga_id" -> body.sagaId = Value.read(parser, token);
                case "step" -> body.step = Value.read(parser, token);
                case "compensating" -> body.compensating = Value.read(parser, token);
                case "params" -> {
                    body.params = new RawParams(token);
                    if (token == JsonToken.START_OBJECT) {
                        parseParams(parser, body.params);
                    } else {
                        parser.skipChildren();
                    }
                }
                default -> parser.skipChildren();
            }
        }
    }

    /** How many items an array holds; -1 when it is not an array. */
    private static int countItems(JsonParser parser, JsonToken token) throws IOException {
        if (token != JsonToken.START_ARRAY) {
            parser.skipChildren();
            return -1;
        }
        int items = 0;
        for (JsonToken item = parser.nextToken(); item != JsonToken.END_ARRAY && item != null; item = parser.nextToken()) {
            parser.skipChildren();
            items++;
        }
        return items;
    }

    private static void parseParams(JsonParser parser, RawParams params) throws IOException {
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String name = parser.currentName();
            JsonToken token = parser.nextToken();
            switch (name) {
                case "user_id" -> params.userId = Value.read(parser, token);
                case "amount" -> params.amount = Value.read(parser, token);
                case "payment_id" -> params.paymentId = Value.read(parser, token);
                default -> parser.skipChildren();
            }
        }
    }

    enum ErrorCode {
        TIMEOUT(0), NOT_SUPPORTED(10), TEMPORARILY_UNAVAILABLE(11), MALFORMED_REQUEST(12), CRASH(13), ABORT(14), PRECONDITION_FAILED(22);

        final int code;

        ErrorCode(int code) {
            this.code = code;
        }
    }

    /**
     * Why a request was refused, for a program to read: every error reply carries one beside its code and
     * text (docs/PROTOCOL.md, section 5, has the table). The names are stable; the texts may change.
     */
    enum Reason {
        KV_TIMEOUT(ErrorCode.TIMEOUT),
        UNSUPPORTED_TYPE(ErrorCode.NOT_SUPPORTED),
        BALANCES_NOT_KEPT(ErrorCode.NOT_SUPPORTED),
        NOT_INITIALISED(ErrorCode.TEMPORARILY_UNAVAILABLE),
        INJECTED_FAIL(ErrorCode.TEMPORARILY_UNAVAILABLE),
        BUSY(ErrorCode.TEMPORARILY_UNAVAILABLE),
        TABLE_FULL(ErrorCode.TEMPORARILY_UNAVAILABLE),
        MALFORMED_REQUEST(ErrorCode.MALFORMED_REQUEST),
        UNREADABLE_LINE(ErrorCode.MALFORMED_REQUEST),
        LINE_TOO_LONG(ErrorCode.MALFORMED_REQUEST),
        AMOUNT_REQUIRED(ErrorCode.MALFORMED_REQUEST),
        BAD_NODE_ID(ErrorCode.MALFORMED_REQUEST),
        INTERNAL_ERROR(ErrorCode.CRASH),
        INJECTED_UNKNOWN(ErrorCode.CRASH),
        KV_UNKNOWN_OUTCOME(ErrorCode.CRASH),
        KV_VALUE_NOT_OURS(ErrorCode.CRASH),
        STEP_COMPENSATED(ErrorCode.ABORT),
        INSUFFICIENT_FUNDS(ErrorCode.ABORT),
        KEY_REUSED(ErrorCode.PRECONDITION_FAILED),
        REFUND_EXCEEDS_PAYMENT(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_FULLY_REFUNDED(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_NOT_OF_STEP(ErrorCode.PRECONDITION_FAILED);

        final ErrorCode code;

        Reason(ErrorCode code) {
            this.code = code;
        }

        /** As the reply writes it: {@code key_reused}. */
        String wire() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /** A request the node refuses, answered with a Maelstrom error reply: its code, text and reason. */
    static final class RpcError extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final ErrorCode code;
        final Reason reason;
        /** For a reused key: the params that differ from the first request's (docs/PROTOCOL.md section 5). */
        final List<String> differs;

        RpcError(Reason reason, String text) {
            this(reason, text, List.of());
        }

        RpcError(Reason reason, String text, List<String> differs) {
            super(text, null, false, false);   // no stack trace: this is an answer, not a bug
            this.code = reason.code;
            this.reason = reason;
            this.differs = differs;
        }
    }

    static RpcError malformed(String text) {
        return new RpcError(Reason.MALFORMED_REQUEST, text);
    }

    /** JSON null counts as missing, like a key that is not there. */
    static boolean isMissing(Value value) {
        return value == null || value.token() == JsonToken.VALUE_NULL;
    }

    static boolean isString(Value value) {
        return value != null && value.token() == JsonToken.VALUE_STRING;
    }

    static boolean isBoolean(Value value) {
        return value.token() == JsonToken.VALUE_TRUE || value.token() == JsonToken.VALUE_FALSE;
    }

    static String stringOrNull(Value value) {
        return isString(value) ? value.text() : null;
    }

    static String requiredString(Value value, String name) {
        if (isMissing(value)) {
            throw malformed("missing " + name);
        }
        if (!isString(value) || value.text().isEmpty()) {
            throw malformed(name + " must be a non-empty string");
        }
        return value.text();
    }

    static long requiredStep(Value value) {
        if (isMissing(value)) {
            throw malformed("missing step");
        }
        Long step = longOrNull(value);
        if (step == null || step < 0) {
            throw malformed("step must be an integer from 0 to " + Long.MAX_VALUE);
        }
        return step;
    }

    /** The params object; when params is missing (or null) and may be, an empty one. */
    static RawParams paramsObject(RawBody body, boolean required) {
        RawParams params = body.params;
        if (params == null || params.token == JsonToken.VALUE_NULL) {
            if (required) {
                throw malformed("missing params");
            }
            return new RawParams(JsonToken.START_OBJECT);
        }
        if (params.token != JsonToken.START_OBJECT) {
            throw malformed("params must be an object");
        }
        return params;
    }

    /** A JSON integer that fits in a long, else null. */
    static Long longOrNull(Value value) {
        if (value == null || value.token() != JsonToken.VALUE_NUMBER_INT || value.text().length() > 20) {
            return null;
        }
        try {
            return Long.parseLong(value.text());
        } catch (NumberFormatException tooBig) {
            return null;
        }
    }

    /** A ChargePayment, checked: docs/PROTOCOL.md, section 3. */
    record ChargeRequest(String sagaId, long step, String userId, Amount amount) {
        static ChargeRequest from(RawBody body) {
            String sagaId = requiredString(body.sagaId, "saga_id");
            long step = requiredStep(body.step);
            RawParams params = paramsObject(body, true);
            return new ChargeRequest(sagaId, step,
                    requiredString(params.userId, "params.user_id"),
                    Amount.parse(params.amount, "params.amount"));
        }

        String key() {
            return chargeKey(sagaId, step);
        }
    }

    /** A RefundPayment, checked: docs/PROTOCOL.md, section 4. Both params are optional (null: not given). */
    record RefundRequest(String sagaId, long step, String paymentId, Amount amount) {
        static RefundRequest from(RawBody body) {
            String sagaId = requiredString(body.sagaId, "saga_id");
            long step = requiredStep(body.step);
            if (!isMissing(body.compensating) && !isBoolean(body.compensating)) {
                throw malformed("compensating must be true or false");
            }
            RawParams params = paramsObject(body, false);
            String paymentId = isMissing(params.paymentId) ? null : requiredString(params.paymentId, "params.payment_id");
            Amount amount = isMissing(params.amount) ? null : Amount.parse(params.amount, "params.amount");
            return new RefundRequest(sagaId, step, paymentId, amount);
        }

        String chargeKey() {
            return PaymentNode.chargeKey(sagaId, step);
        }

        /** Its own key space: a refund is never answered with a charge's result, nor the other way round. */
        String key() {
            return chargeKey() + REFUND_SUFFIX;
        }
    }

    /** A BalanceRead, checked: it names a user (--balance, docs/PROTOCOL.md section 9). */
    record BalanceRequest(String userId) {
        static BalanceRequest from(RawBody body) {
            return new BalanceRequest(requiredString(body.userId, "user_id"));
        }
    }

    /** A PaymentStatus, checked: it names a step and reads it. */
    record StatusRequest(String sagaId, long step) {
        static StatusRequest from(RawBody body) {
            return new StatusRequest(requiredString(body.sagaId, "saga_id"), requiredStep(body.step));
        }

        String chargeKey() {
            return PaymentNode.chargeKey(sagaId, step);
        }

        String refundKey() {
            return chargeKey() + REFUND_SUFFIX;
        }
    }

    /**
     * The idempotency key of a step. It is unambiguous: the step is all digits, so the last
     * {@code ":step"} of a key always separates saga_id from step, whatever the saga_id holds.
     */
    static String chargeKey(String sagaId, long step) {
        return sagaId + ":step" + step;
    }

    static final String REFUND_SUFFIX = ":refund";

    /**
     * A decimal amount of money, kept as the request wrote it ({@code 100.50} stays {@code 100.50}) and
     * never passed through a binary float. Absurd sizes are refused before any arithmetic, so that
     * {@code 1e999999999} is an error, not a billion digits of memory.
     */
    record Amount(String text, BigDecimal value) {
        static final int MAX_DIGITS = 40;
        static final Amount ZERO = new Amount("0", BigDecimal.ZERO);

        static Amount parse(Value value, String name) {
            if (isMissing(value)) {
                throw malformed("missing " + name);
            }
            if (value.token() != JsonToken.VALUE_NUMBER_INT && value.token() != JsonToken.VALUE_NUMBER_FLOAT) {
                throw malformed(name + " must be a number");
            }
            String text = value.text();
            String outOfRange = name + " " + abbreviate(text) + " is out of range: at most " + MAX_DIGITS
                    + " digits before the decimal point and " + MAX_DIGITS + " after it";
            if (text.length() > 3 * MAX_DIGITS) {
                throw malformed(outOfRange);
            }
            BigDecimal decimal;
            try {
                decimal = new BigDecimal(text);
            } catch (NumberFormatException exponentOverflow) {
                throw malformed(outOfRange);
            }
            if (decimal.signum() <= 0) {
                throw malformed(name + " must be greater than 0, got " + text);
            }
            if (decimal.scale() > MAX_DIGITS || decimal.precision() - decimal.scale() > MAX_DIGITS) {
                throw malformed(outOfRange);
            }
            return new Amount(text, decimal);
        }

        /** Whether a stored amount's text has this value (99.99 equals 99.990). */
        boolean sameValue(String text) {
            return value.compareTo(new BigDecimal(text)) == 0;
        }
    }

    static String abbreviate(String text) {
        return text.length() > 50 ? text.substring(0, 20) + "...(" + text.length() + " characters)" : text;
    }

    /** Up to 200 characters of a line for a log, escaped: a control character never reaches a terminal raw. */
    static String excerpt(byte[] bytes, int start, int length) {
        String text = new String(bytes, start, Math.min(length, 200), StandardCharsets.UTF_8);
        StringBuilder escaped = new StringBuilder(text.length());
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c < ' ' || c == 0x7f || (c >= 0x80 && c < 0xa0) || c == '\\') {
                escaped.append(switch (c) {
                    case '\n' -> "\\n";
                    case '\r' -> "\\r";
                    case '\t' -> "\\t";
                    case '\\' -> "\\\\";
                    default -> String.format("\\u%04x", (int) c);
                });
            } else {
                escaped.append(c);
            }
        }
        return length > 200 ? escaped + "..." : escaped.toString();
    }

    /** Why a line is not JSON, in plain words rather than the parser's (no feature names, no locations). */
    static String plainReason(Exception e) {
        String text = e instanceof JsonProcessingException json ? json.getOriginalMessage() : e.getMessage();
        if (text == null) {
            return e.getClass().getSimpleName();
        }
        text = text.lines().findFirst().orElse(text);
        if (text.contains("JSON value, but not an object") || text.contains("after the JSON object")) {
            return text;   // our own words
        }
        return "not valid JSON: " + plainJacksonReason(text);
    }

    private static String plainJacksonReason(String text) {
        Matcher m;
        if (text.startsWith("Unexpected end-of-input")) {
            return "the line ends before the JSON does";
        }
        if ((m = Pattern.compile("^Unexpected character \\('(.*)' \\(code (\\d+)\\)\\)").matcher(text)).find()) {
            return "unexpected character " + quoted(m.group(1), Integer.parseInt(m.group(2)))
                    + (text.contains("double-quote to start field name") ? " where a field name in double quotes should be" : "");
        }
        if ((m = Pattern.compile("^Unrecognized token '([^']*)'").matcher(text)).find()
                || (m = Pattern.compile("^Non-standard token '([^']*)'").matcher(text)).find()) {
            return "'" + abbreviate(m.group(1)) + "' is not a JSON value";
        }
        if ((m = Pattern.compile("^Illegal (unquoted )?character \\(\\(CTRL-CHAR, code (\\d+)\\)\\)").matcher(text)).find()) {
            return "control character " + quoted("", Integer.parseInt(m.group(2)))
                    + (m.group(1) != null ? " inside a string (it must be escaped)" : " between tokens");
        }
        if (text.contains("Invalid UTF-8") || text.contains("UTF-32") || text.contains("UTF-16")) {   // (NULs look like UTF-32 to the parser)
            return "the line is not valid UTF-8";
        }
        if (text.contains("Leading zeroes not allowed")) {
            return "a number with a leading zero";
        }
        if (text.contains("nesting depth")) {
            return "nested too deeply";
        }
        // Anything else: the parser's first sentence, without its hints about parser features.
        return text.replaceAll("\\s*\\(?(: )?enable `[^`]*`[^)]*\\)?", "").replaceAll("`", "");
    }

    private static String quoted(String character, int code) {
        return code >= ' ' && code < 0x7f ? "'" + character + "'" : String.format("U+%04X", code);
    }

    // ---------------------------------------------------------------------------------------------
    // 5. Replies out, and flush; the log
    // ---------------------------------------------------------------------------------------------

    /**
     * A growable byte buffer that writes JSON in the layout of Python's {@code json.dumps}: ASCII only,
     * {@code ", "} and {@code ": "} between items. Replies and journal records are both written with it.
     */
    static final class JsonBytes {
        private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);

        private byte[] buf = new byte[64 * 1024];
        private int count;

        int size() {
            return count;
        }

        byte[] array() {
            return buf;
        }

        void clear() {
            count = 0;
        }

        void truncate(int size) {
            count = size;
        }

        void bytes(byte[] bytes) {
            if (count + bytes.length > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, count + bytes.length));
            }
            System.arraycopy(bytes, 0, buf, count, bytes.length);
            count += bytes.length;
        }

        void ascii(String text) {
            for (int i = 0; i < text.length(); i++) {
                put(text.charAt(i));
            }
        }

        void number(long value) {
            ascii(Long.toString(value));
        }

        /** The separator and name of an object's next field (never its first). */
        void field(String name) {
            ascii(", \"");
            ascii(name);
            ascii("\": ");
        }

        /**
         * A JSON string as json.dumps writes it: printable ASCII as is; a backslash before {@code "} and
         * before a backslash; the short escapes for backspace, form feed, newline, return and tab; and for
         * every other character a backslash-u escape with four lower-case hex digits, one UTF-16 unit at a
         * time, so that non-ASCII text comes out as surrogate pairs, exactly like Python's. Null is null.
         */
        void string(String text) {
            if (text == null) {
                ascii("null");
                return;
            }
            put('"');
            for (int i = 0; i < text.length(); i++) {
                char c = text.charAt(i);
                if (c >= ' ' && c <= '~' && c != '"' && c != '\\') {
                    put(c);
                    continue;
                }
                put('\\');
                switch (c) {
                    case '"' -> put('"');
                    case '\\' -> put('\\');
                    case '\b' -> put('b');
                    case '\f' -> put('f');
                    case '\n' -> put('n');
                    case '\r' -> put('r');
                    case '\t' -> put('t');
                    default -> {
                        put('u');
                        put(HEX[c >> 12 & 0xf]);
                        put(HEX[c >> 8 & 0xf]);
                        put(HEX[c >> 4 & 0xf]);
                        put(HEX[c & 0xf]);
                    }
                }
            }
            put('"');
        }

        void put(int b) {
            if (count == buf.length) {
                buf = Arrays.copyOf(buf, buf.length * 2);
            }
            buf[count++] = (byte) b;
        }

        /**
         * Writes what the buffer holds, whole lines only, each write at most {@link #ATOMIC_WRITE} bytes: a
         * write of up to PIPE_BUF bytes to a pipe happens whole or not at all, so a node killed at any instant
         * never leaves half a line on stdout. (A single line longer than that is written alone, in one call.)
         */
        void writeLinesTo(OutputStream out) throws IOException {
            int from = 0;
            while (from < count) {
                int end = Math.min(count, from + ATOMIC_WRITE);
                if (end < count) {
                    int newline = lastNewline(from, end);
                    end = newline >= from ? newline + 1 : nextLineEnd(end);
                }
                out.write(buf, from, end - from);
                from = end;
            }
            count = 0;
        }

        /** PIPE_BUF on Linux (and the POSIX minimum is 512): the largest write a pipe never splits. */
        static final int ATOMIC_WRITE = 4096;

        private int lastNewline(int from, int end) {
            for (int i = end - 1; i >= from; i--) {
                if (buf[i] == '\n') {
                    return i;
                }
            }
            return -1;
        }

        private int nextLineEnd(int from) {
            for (int i = from; i < count; i++) {
                if (buf[i] == '\n') {
                    return i + 1;
                }
            }
            return count;
        }
    }

    /**
     * Writes replies: keys in the order of docs/PROTOCOL.md, one reply per line. The layout is fixed, so the bytes
     * are written directly. Replies gather in a buffer and reach stdout in batches: when the input runs
     * dry ({@link #flush}) or the batch is full. Before any batch goes out, the journal makes the records
     * behind it durable, so that no reply ever tells of a charge that a crash could forget.
     */
    static final class ReplyWriter implements Flushable {
        /** Writes a reply, or throws the RpcError that is its reply. */
        interface Writing {
            void run() throws IOException;
        }

        private static final int BATCH_BYTES = 128 * 1024;

        private final OutputStream out;   // also the lock of every write to it: delayed replies (--faults) come from a timer thread
        private final Log log;
        private Journal journal = Journal.NONE;
        private final JsonBytes json = new JsonBytes();
        private long nextMsgId;
        private boolean keepingBack;      // a reply is kept back (keepBack): no batch may take it out yet

        ReplyWriter(OutputStream out, Log log) {
            this.out = out;
            this.log = log;
        }

        /** From now on every batch waits for this journal's commit. */
        void commitFirst(Journal journal) {
            this.journal = journal;
        }

        /** Writes what is pending while the node stops for another reason; a failure here adds nothing. */
        void flushQuietly() {
            try {
                flush();
            } catch (IOException ignored) {
                // the node is stopping with the reason that matters
            }
        }

        void initOk(Envelope to) throws IOException {
            begin(to, "init_ok");
            end(to);
        }

        void chargeOk(Envelope to, ChargeRequest request, Served<ChargeResult> served) throws IOException {
            beginStepReply(to, "ChargePayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": {\"payment_id\": ");
            json.string(served.result().paymentId());
            json.ascii(", \"charged\": ");
            json.ascii(served.result().charged());   // the request's own digits: a JSON number's text is ASCII
            json.ascii("}");
            if (served.replayed()) {
                json.ascii(", \"note\": \"cached_result\"");
            }
            end(to);
        }

        void refundOk(Envelope to, RefundRequest request, Served<RefundResult> served) throws IOException {
            beginStepReply(to, "RefundPayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": ");
            refundResult(served.result());
            if (served.replayed()) {
                json.ascii(", \"note\": \"already_refunded\"");
            }
            end(to);
        }

        /** PaymentStatus_ok: the step's status, its payment (when charged) and its refund (when there is one). */
        void paymentStatusOk(Envelope to, StatusRequest request, StepStatus status) throws IOException {
            beginStepReply(to, "PaymentStatus_ok", request.sagaId(), request.step());
            json.field("status");
            json.string(status.status());
            if (status.step() instanceof Charged payment) {
                json.ascii(", \"payment\": {\"payment_id\": ");
                json.string(payment.paymentId());
                json.ascii(", \"charged\": ");
                json.ascii(payment.amount());
                json.ascii(", \"refunded\": ");
                json.ascii(payment.refundedSoFar());
                json.ascii("}");
            }
            if (status.refund() != null) {
                json.ascii(", \"refund\": ");
                refundResult(status.refund());
            }
            end(to);
        }

        /** BalanceRead_ok: the user's balance, and the totals charged and refunded (exact decimals). */
        void balanceOk(Envelope to, String userId, Account account) throws IOException {
            begin(to, "BalanceRead_ok");
            json.field("user_id");
            json.string(userId);
            json.field("balance");
            json.ascii(account.balance().toPlainString());
            json.field("charged");
            json.ascii(account.charged().toPlainString());
            json.field("refunded");
            json.ascii(account.refunded().toPlainString());
            end(to);
        }

        private void refundResult(RefundResult result) {
            json.ascii("{");
            if (result.refundId() != null) {
                json.ascii("\"refund_id\": ");
                json.string(result.refundId());
                json.ascii(", ");
            }
            json.ascii("\"refunded\": ");
            json.ascii(result.refunded());
            json.ascii("}");
        }

        void error(Envelope to, RpcError error) throws IOException {
            begin(to, "error");
            json.field("code");
            json.number(error.code.code);
            json.field("text");
            json.string(error.getMessage());
            json.field("reason");
            json.string(error.reason.wire());
            if (!error.differs.isEmpty()) {
                json.field("differs");
                json.ascii("[");
                for (int i = 0; i < error.differs.size(); i++) {
                    json.ascii(i == 0 ? "" : ", ");
                    json.string(error.differs.get(i));
                }
                json.ascii("]");
            }
            end(to);
        }

        @Override
        public void flush() throws IOException {
            synchronized (out) {
                writeBatch();
                out.flush();
            }
        }

        private void begin(Envelope to, String type) {
            json.ascii("{\"src\": ");
            json.string(to.from());
            json.ascii(", \"dest\": ");
            json.string(to.to());
            json.ascii(", \"body\": {\"type\": ");
            json.string(type);
        }

        private void beginStepReply(Envelope to, String type, String sagaId, long step) {
            begin(to, type);
            json.field("saga_id");
            json.string(sagaId);
            json.field("step");
            json.number(step);
        }

        /** Ends a message with its in_reply_to and msg_id; returns that msg_id. */
        private long end(Envelope to) throws IOException {
            if (to.inReplyTo() != null) {
                json.field("in_reply_to");
                json.number(to.inReplyTo());
            }
            long msgId = nextMsgId++;
            json.field("msg_id");
            json.number(msgId);
            json.ascii("}}\n");
            writeBatchIfFull();
            return msgId;
        }

        /** A full batch goes out, unless a reply is kept back. */
        private void writeBatchIfFull() throws IOException {
            if (json.size() >= BATCH_BYTES && !keepingBack) {
                writeBatch();
            }
        }

        // What the modes need beyond replies: a request of the node's own (the cluster's lin-kv calls), its own
        // msg_id range, and a reply kept back before it leaves (injected faults).

        /** A message of this node's own: {@code fields} writes its fields after its type. Returns its msg_id. */
        long request(Envelope to, String type, Consumer<JsonBytes> fields) throws IOException {
            begin(to, type);
            fields.accept(json);
            return end(to);
        }

        /** msg_ids from here on start at {@code base}. */
        void startMsgIdsAt(long base) {
            nextMsgId = base;
        }

        /** A reply kept back: its line, and the msg_id the writer stood at before it. */
        record Kept(byte[] line, long msgIdBefore) {
        }

        /** Runs {@code writing} with what it writes kept out of every batch, then takes it out of the buffer. */
        Kept keepBack(Writing writing) throws IOException {
            int size = json.size();
            long msgIdBefore = nextMsgId;
            keepingBack = true;
            try {
                writing.run();
            } catch (IOException | RuntimeException e) {
                json.truncate(size);
                nextMsgId = msgIdBefore;
                throw e;
            } finally {
                keepingBack = false;
            }
            byte[] line = Arrays.copyOfRange(json.array(), size, json.size());
            json.truncate(size);
            return new Kept(line, msgIdBefore);
        }

        /** Makes a kept reply as if it had never been written: it uses up no msg_id. Nothing may have been written since. */
        void forget(Kept kept) {
            assert nextMsgId == kept.msgIdBefore() + 1 : "a reply is forgotten right after it was kept back";
            nextMsgId = kept.msgIdBefore();
        }

        /** Writes a line made before (a kept reply). */
        void writeLine(byte[] line) throws IOException {
            json.bytes(line);
            writeBatchIfFull();
        }

        /** Writes a line made before straight to stdout, from any thread, once the journal has committed. */
        void writeAtOnce(byte[] line) {
            try {
                synchronized (out) {
                    journal.commit();
                    out.write(line);
                    out.flush();
                }
            } catch (IOException e) {
                log.error("a delayed reply could not be written: " + e, null);
            }
        }

        private void writeBatch() throws IOException {
            synchronized (out) {
                journal.commit();
                json.writeLinesTo(out);
            }
        }
    }

    static final class Log {
        private final PrintStream err;
        private final boolean verbose;

        Log(PrintStream err, boolean verbose) {
            this.err = err;
            this.verbose = verbose;
        }

        boolean isVerbose() {
            return verbose;
        }

        void verbose(String message) {
            if (verbose) {
                err.println("payment-node: " + message);
            }
        }

        void verboseCacheHit(String key) {
            verbose("Already processed " + key + ", returning cached result");
        }

        /** A line whatever the verbosity, for a checker to read (an injected fault: what really happened). */
        void event(String message) {
            err.println("payment-node: " + message);
        }

        void warn(String message) {
            err.println("payment-node: warning: " + message);
        }

        void error(String message, Throwable cause) {
            err.println("payment-node: error: " + message);
            if (cause != null) {
                cause.printStackTrace(err);
            }
        }
    }

}
