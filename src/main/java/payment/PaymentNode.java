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

    private static final JsonFactory JSON = JsonFactory.builder()
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

    public static void main(String[] args) {
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("payment-node: " + e.getMessage() + " (see --help)");
            System.exit(2);
            return;
        }
        if (options.help()) {
            System.out.print(USAGE);
            System.out.flush();
            return;
        }
        OutputStream stdout;
        try {
            stdout = replyStream();
        } catch (IOException e) {
            System.err.println("payment-node: cannot open the reply stream: " + e.getMessage());
            System.exit(2);
            return;
        }
        // From here on a stray System.out.println, ours or a library's, lands on stderr: stdout
        // carries replies and nothing else.
        System.setOut(System.err);
        Log log = new Log(System.err, options.verbose());
        PaymentNode node;
        try {
            node = fromOptions(options, stdout, log);
        } catch (IOException | RuntimeException e) {
            System.err.println("payment-node: cannot use the journal " + options.journal() + ": " + journalProblem(e));
            System.exit(2);
            return;
        }
        Thread warmUp = new Thread(PaymentNode::warmUp, "warm-up");
        warmUp.setDaemon(true);
        warmUp.start();
        System.exit(node.serve(new FileInputStream(FileDescriptor.in)));
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

    private static String abbreviate(String text) {
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

    // =============================================================================================
    // Beyond the card: optional modes
    //
    // Everything above is the card's node; what follows is used only when an option asks for it.
    // =============================================================================================

    // ---------------------------------------------------------------------------------------------
    // 6. Durability: the journal (--journal FILE)
    // ---------------------------------------------------------------------------------------------

    /** In a --journal path, stands for the node's id: each node of a harness keeps its own file. */
    static final String NODE_ID = "{node_id}";

    /** A table with {@code balances} (null: none) and a limit of {@code maxKeys} keys (0: as many as the heap holds). */
    static PaymentHandler table(Log log, Journal journal, Balances balances, long maxKeys) {
        long limit = maxKeys == 0 ? PaymentHandler.keysForHeap() : maxKeys;
        return balances == null ? new PaymentHandler(log, journal, limit) : new FundedPaymentHandler(log, journal, balances, limit);
    }

    /**
     * The table that comes back from the journal at {@code path} and goes on into it; {@code balances} (null:
     * none) are replayed with it, and must be the ones the journal was started with. A journal that cannot
     * be opened or read, or that was started with another --balance, is an IOException.
     */
    static PaymentHandler tableFromJournal(Path path, Log log, Balances balances, long maxKeys) throws IOException {
        FileJournal journal = FileJournal.open(path);
        PaymentHandler table = table(log, journal, balances, maxKeys);
        long records = journal.replay(table, log);
        String startedWith = balances == null ? null : balances.start().toPlainString();
        if (records == 0 && startedWith != null) {
            journal.balanceStarted(startedWith);   // so that a restart with another --balance is refused, not served
            journal.commit();
        } else if (!sameBalance(journal.balanceRecorded(), startedWith)) {
            journal.close();
            throw new IOException("it was started " + withBalance(journal.balanceRecorded()) + ", and this node " + withBalance(startedWith)
                    + ": start it with the same --balance (or move the journal aside)");
        }
        log.verbose("journal " + path + ": replayed " + records + " records");
        return table;
    }

    private static boolean sameBalance(String recorded, String given) {
        return recorded == null ? given == null : given != null && new BigDecimal(recorded).compareTo(new BigDecimal(given)) == 0;
    }

    private static String withBalance(String balance) {
        return balance == null ? "without --balance" : "with --balance " + balance;
    }

    /**
     * A node whose journal is its own file, named by its id (docs/PROTOCOL.md, section 7): the journal opens
     * at the first init, before init_ok; until then requests get error 11. A journal that cannot be opened
     * then stops the node (status 2) rather than let it serve from memory.
     */
    static final class JournalAtInit extends LocalService {
        private final String pathWithNodeId;
        private final Log log;
        private final Balances balances;

        private final long maxKeys;

        JournalAtInit(String pathWithNodeId, Balances balances, long maxKeys, ReplyWriter replies, Log log) {
            super(null, replies, log);
            this.pathWithNodeId = pathWithNodeId;
            this.log = log;
            this.balances = balances;
            this.maxKeys = maxKeys;
        }

        @Override
        PaymentHandler table() {
            PaymentHandler table = super.table();
            if (table == null) {
                throw new RpcError(Reason.NOT_INITIALISED, "not initialized: this node's journal ("
                        + pathWithNodeId + ") opens at its first init; nothing was done");
            }
            return table;
        }

        @Override
        public void init(String nodeId, int nodeIds) throws IOException {
            if (super.table() == null) {
                if (nodeId == null || nodeId.contains("/") || nodeId.contains("\\") || nodeId.equals("..") || nodeId.contains("\0")) {
                    throw new RpcError(Reason.BAD_NODE_ID, "node_id " + nodeId + " cannot name a journal file");
                }
                String path = pathWithNodeId.replace(NODE_ID, nodeId);
                try {
                    use(tableFromJournal(Path.of(path), log, balances, maxKeys));
                } catch (IOException | RuntimeException e) {
                    throw new Stop("cannot use the journal " + path + ": " + journalProblem(e), 2);
                }
            }
            super.init(nodeId, nodeIds);
        }
    }

    private static String journalProblem(Exception e) {
        if (e instanceof NoSuchFileException) {
            return "its folder does not exist";
        }
        if (e instanceof AccessDeniedException) {
            return "permission denied";
        }
        return e instanceof FileSystemException f && f.getReason() != null ? f.getReason() : e.getMessage();
    }

    /**
     * An append-only file of state changes, one record a line: the CRC-32 of the record in eight hex
     * digits, a space, and the record as a JSON array ({@code ["charge", key, user_id, amount, number]},
     * {@code ["refund", key, payment_id, amount, refunded, number, payment_number]}, {@code ["close", key]},
     * {@code ["decline", key, user_id, amount, reason]}).
     * Records gather in memory and {@link #commit} writes and forces them to disk once per batch of
     * replies (group commit). On start the records are replayed; a torn tail, the trace of a crash in
     * mid-write, is cut off with a warning, while a bad record followed by good ones stops the node:
     * that is damage, not a crash, and dropping good records would forget answered charges.
     */
    static final class FileJournal implements Journal {
        private static final int MAX_RECORD_BYTES = 16 * MAX_LINE_BYTES;

        /** The record kinds, as docs/JOURNAL.md lists them. */
        static final List<String> RECORD_KINDS = List.of("balance", "charge", "decline", "refund", "close");

        private final Path path;
        private final FileChannel file;
        private final JsonBytes pending = new JsonBytes();
        private final CRC32 crc = new CRC32();
        /** The --balance the journal was started with (its first record), null for none. */
        private String balanceRecorded;

        private FileJournal(Path path, FileChannel file) {
            this.path = path;
            this.file = file;
        }

        /** Opens (or creates) the journal and takes its lock: two nodes on one journal would corrupt it. */
        static FileJournal open(Path path) throws IOException {
            FileChannel file = openOwnerOnly(path);
            try {
                if (file.tryLock() == null) {
                    throw new IOException("another node is using it");
                }
            } catch (IOException | OverlappingFileLockException e) {
                file.close();
                throw e instanceof IOException io ? io : new IOException("another node is using it");
            }
            return new FileJournal(path, file);
        }

        /** A journal holds payment records: a new one is readable and writable by its owner only. */
        private static FileChannel openOwnerOnly(Path path) throws IOException {
            Set<StandardOpenOption> options = EnumSet.of(StandardOpenOption.CREATE, StandardOpenOption.READ, StandardOpenOption.WRITE);
            try {
                return FileChannel.open(path, options, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
            } catch (UnsupportedOperationException notPosix) {
                return FileChannel.open(path, options);
            }
        }

        /** Replays every complete record into {@code handler}, then cuts a torn tail; returns the records replayed. */
        long replay(PaymentHandler handler, Log log) throws IOException {
            LineReader lines = new LineReader(Channels.newInputStream(file.position(0)), MAX_RECORD_BYTES, () -> { });
            long size = file.size();
            long offset = 0;
            long goodEnd = 0;
            long records = 0;
            long firstBadLine = 0;
            for (long lineNumber = 1; lines.next(); lineNumber++) {
                boolean complete = lines.tooLongPrefix() == null && offset + lines.length() < size
                        && replayRecord(lines.buffer(), lines.start(), lines.length(), handler);
                offset += lines.tooLongPrefix() != null ? lines.tooLongLength() + 1 : lines.length() + 1;
                if (complete && firstBadLine != 0) {
                    throw new IOException("record " + firstBadLine + " is damaged and good records follow it:"
                            + " refusing to start rather than forget them (repair the file, or move it aside)");
                }
                if (complete) {
                    records++;
                    goodEnd = offset;
                } else if (firstBadLine == 0) {
                    firstBadLine = lineNumber;
                }
            }
            if (goodEnd < size) {
                log.warn("journal " + path + ": cut off a torn last record (" + (size - goodEnd)
                        + " bytes after record " + records + "), the trace of a crash in mid-write");
                file.truncate(goodEnd);
                file.force(true);
            }
            file.position(goodEnd);
            return records;
        }

        private boolean replayRecord(byte[] line, int start, int length, PaymentHandler handler) {
            if (length < 10 || line[start + 8] != ' ') {
                return false;
            }
            CRC32 crc = new CRC32();
            crc.update(line, start + 9, length - 9);
            byte[] expected = hex(crc.getValue());
            if (!Arrays.equals(line, start, start + 8, expected, 0, 8)) {
                return false;
            }
            try (JsonParser record = JSON.createParser(line, start + 9, length - 9)) {
                if (record.nextToken() != JsonToken.START_ARRAY) {
                    return false;
                }
                switch (nextText(record)) {
                    case "charge" -> handler.restoreCharge(nextText(record), nextText(record), nextText(record),
                            nextLong(record));
                    case "refund" -> handler.restoreRefund(nextText(record), nextText(record), nextText(record),
                            nextText(record), nextLong(record), nextLong(record));
                    case "close" -> handler.restoreClose(nextText(record));
                    case "balance" -> balanceRecorded = nextText(record);
                    case "decline" -> handler.restoreDecline(nextText(record), nextText(record), nextText(record), nextText(record));
                    default -> {
                        return false;
                    }
                }
                return record.nextToken() == JsonToken.END_ARRAY;
            } catch (IOException | RuntimeException unreadable) {
                return false;
            }
        }

        private static String nextText(JsonParser record) throws IOException {
            JsonToken token = record.nextToken();
            return token == JsonToken.VALUE_NULL ? null : record.getText();
        }

        private static long nextLong(JsonParser record) throws IOException {
            record.nextToken();
            return record.getLongValue();
        }

        @Override
        public synchronized void charged(ChargeRequest request, long paymentNumber) {
            int start = beginCharge("charge", request);
            pending.number(paymentNumber);
            end(start);
        }

        @Override
        public synchronized void declined(ChargeRequest request, String reason) {
            int start = beginCharge("decline", request);
            pending.string(reason);
            end(start);
        }

        /** A charge's or a decline's record up to its last field: kind, key, user_id, amount. */
        private int beginCharge(String kind, ChargeRequest request) {
            int start = begin(kind, request.key());
            pending.ascii(", ");
            pending.string(request.userId());
            pending.ascii(", ");
            pending.ascii(request.amount().text());
            pending.ascii(", ");
            return start;
        }

        @Override
        public synchronized void closed(String chargeKey) {
            end(begin("close", chargeKey));
        }

        /** The first record of a journal started with --balance: {@code ["balance", "<amount>"]}. */
        synchronized void balanceStarted(String balance) {
            int start = pending.size();
            pending.ascii("00000000 [");
            pending.string("balance");
            pending.ascii(", ");
            pending.string(balance);
            end(start);
        }

        String balanceRecorded() {
            return balanceRecorded;
        }

        @Override
        public synchronized void refunded(RefundRequest request, String refunded, long refundNumber, long paymentNumber) {
            int start = begin("refund", request.key());
            pending.ascii(", ");
            pending.string(request.paymentId());
            pending.ascii(", ");
            pending.ascii(request.amount() == null ? "null" : request.amount().text());
            pending.ascii(", ");
            pending.ascii(refunded);
            pending.ascii(", ");
            pending.number(refundNumber);
            pending.ascii(", ");
            pending.number(paymentNumber);
            end(start);
        }

        /** Writes the records gathered so far and forces them to disk. */
        @Override
        public synchronized void commit() throws IOException {
            if (pending.size() == 0) {
                return;
            }
            ByteBuffer bytes = ByteBuffer.wrap(pending.array(), 0, pending.size());
            while (bytes.hasRemaining()) {
                file.write(bytes);
            }
            file.force(false);
            pending.clear();
        }

        /** Releases the file and its lock (a process that ends releases them anyway). */
        @Override
        public void close() throws IOException {
            file.close();
        }

        private int begin(String kind, String key) {
            int start = pending.size();
            pending.ascii("00000000 [");
            pending.string(kind);
            pending.ascii(", ");
            pending.string(key);
            return start;
        }

        /** Closes the record that starts at {@code start} and writes its checksum in front of it. */
        private void end(int start) {
            pending.ascii("]");
            crc.reset();
            crc.update(pending.array(), start + 9, pending.size() - start - 9);
            System.arraycopy(hex(crc.getValue()), 0, pending.array(), start, 8);
            pending.put('\n');
        }

        /** A CRC-32 as eight lower-case hex digits. */
        private static byte[] hex(long crc) {
            return HexFormat.of().toHexDigits((int) crc).getBytes(StandardCharsets.US_ASCII);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 7. Test doubles: balances (--balance) and injected faults (--faults)
    // ---------------------------------------------------------------------------------------------

    /**
     * The table with balances (--balance): every user starts with the same amount, a charge above what is
     * left is declined, and the decline is that step's result; a refund pays back.
     */
    static final class FundedPaymentHandler extends PaymentHandler {
        private final Balances balances;

        FundedPaymentHandler(Log log, Journal journal, Balances balances) {
            this(log, journal, balances, keysForHeap());
        }

        FundedPaymentHandler(Log log, Journal journal, Balances balances, long maxKeys) {
            super(log, journal, maxKeys);
            this.balances = balances;
        }

        @Override
        Entry firstCharge(ChargeRequest request) {
            String shortfall = balances.withdraw(request.userId(), request.amount().value());
            if (shortfall == null) {
                return super.firstCharge(request);
            }
            Declined declined = new Declined(request.userId(), request.amount().text(),
                    "declined: insufficient funds: " + shortfall + " (" + request.key() + ")");
            journal().declined(request, declined.reason());
            return declined;
        }

        @Override
        Account account(String userId) {
            return balances.account(userId);
        }

        @Override
        Refunded refundPayment(Charged payment, RefundRequest request) {
            Refunded refunded = super.refundPayment(payment, request);
            balances.repay(payment, refunded.refunded());
            return refunded;
        }

        @Override
        void restoreCharge(String key, String userId, String amount, long paymentNumber) {
            super.restoreCharge(key, userId, amount, paymentNumber);
            balances.restoreWithdrawal(userId, amount);
        }

        @Override
        void restoreRefund(String key, String paymentId, String amount, String refunded, long refundNumber, long paymentNumber) {
            super.restoreRefund(key, paymentId, amount, refunded, refundNumber, paymentNumber);
            if (paymentNumber != 0) {
                balances.repay(payment(paymentNumber), refunded);
            }
        }
    }

    /** Per-user balances (--balance), exact decimals; each user's updates are atomic. */
    static final class Balances {
        private final BigDecimal start;
        private final ConcurrentHashMap<String, Account> accounts = new ConcurrentHashMap<>();

        Balances(BigDecimal start) {
            this.start = start;
        }

        BigDecimal start() {
            return start;
        }

        BigDecimal balance(String userId) {
            return account(userId).balance();
        }

        /** A user's account: a user never seen has the start balance and nothing charged or refunded. */
        Account account(String userId) {
            return accounts.getOrDefault(userId, new Account(start, BigDecimal.ZERO, BigDecimal.ZERO));
        }

        /** Takes {@code amount} from the user's balance; null when done, else why not (nothing is taken). */
        String withdraw(String userId, BigDecimal amount) {
            String[] shortfall = new String[1];
            update(userId, current -> {
                if (current.balance().compareTo(amount) < 0) {
                    shortfall[0] = userId + " has " + current.balance().toPlainString() + " left, the charge is " + amount.toPlainString();
                    return current;
                }
                return current.afterCharge(amount);
            });
            return shortfall[0];
        }

        /** Gives a refunded amount back to the user who paid it. */
        void repay(Charged payment, String amount) {
            BigDecimal repaid = new BigDecimal(amount);
            update(payment.userId(), account -> account.afterRefund(repaid));
        }

        /** Replaying a journal: a charge that happened, taken without a check. */
        void restoreWithdrawal(String userId, String amount) {
            BigDecimal charged = new BigDecimal(amount);
            update(userId, account -> account.afterCharge(charged));
        }

        /** Changes a user's account atomically (a user never seen starts from the start balance). */
        private void update(String userId, UnaryOperator<Account> change) {
            accounts.compute(userId, (user, account) -> change.apply(account == null ? account(user) : account));
        }
    }

    /** What BalanceRead answers: a user's balance, and the totals charged and refunded that made it. */
    record Account(BigDecimal balance, BigDecimal charged, BigDecimal refunded) {
        Account afterCharge(BigDecimal amount) {
            return new Account(balance.subtract(amount), charged.add(amount), refunded);
        }

        Account afterRefund(BigDecimal amount) {
            return new Account(balance.add(amount), charged, refunded.add(amount));
        }
    }

    /** The exit status of an injected crash (--faults crash=P): the work was done and journaled, no reply sent. */
    static final int EXIT_INJECTED_CRASH = 3;

    /**
     * A service under injected faults (--faults): ChargePayment and RefundPayment draw at most one fault an
     * attempt. {@code fail} does nothing and answers 11; every other fault lets the work happen, then changes
     * what becomes of its reply, which the reply writer keeps back while the work runs, so that it can be
     * dropped, replaced, doubled or delayed. init and PaymentStatus are never faulted.
     */
    static final class FaultyService implements Service {
        private final Service service;
        private final Faults faults;
        private final ReplyWriter replies;
        private final Log log;
        private DelayedReplies delayed;   // made at the first delayed reply

        FaultyService(Service service, Faults faults, ReplyWriter replies, Log log) {
            this.service = service;
            this.faults = faults;
            this.replies = replies;
            this.log = log;
        }

        @Override
        public void charge(Envelope reply, ChargeRequest request) throws IOException {
            withFault(reply, request.key(), () -> service.charge(reply, request));
        }

        @Override
        public void refund(Envelope reply, RefundRequest request) throws IOException {
            withFault(reply, request.key(), () -> service.refund(reply, request));
        }

        @Override
        public void status(Envelope reply, StatusRequest request) throws IOException {
            service.status(reply, request);
        }

        @Override
        public void balance(Envelope reply, BalanceRequest request) throws IOException {
            service.balance(reply, request);
        }

        @Override
        public void init(String nodeId, int nodeIds) throws IOException {
            service.init(nodeId, nodeIds);
        }

        /** Delayed replies still leave before the node exits. */
        @Override
        public void close() throws IOException {
            if (delayed != null) {
                delayed.drain();
            }
            service.close();
        }

        private void withFault(Envelope reply, String key, ReplyWriter.Writing handling) throws IOException {
            Drawn drawn = faults.draw(key);
            if (drawn == null) {
                handling.run();
                return;
            }
            Fault fault = drawn.fault();
            log.event("fault: " + fault.option + (fault == Fault.DELAY ? " " + drawn.delayMillis() + "ms" : "")
                    + " " + key + " msg_id " + (reply.inReplyTo() == null ? "none" : reply.inReplyTo()));
            if (fault == Fault.FAIL) {
                throw new RpcError(Reason.INJECTED_FAIL, "injected fault: fail: nothing was done; safe to retry");
            }
            ReplyWriter.Kept kept = replies.keepBack(() -> {
                try {
                    handling.run();
                } catch (RpcError refused) {
                    replies.error(reply, refused);
                }
            });
            switch (fault) {
                case DROP -> replies.forget(kept);
                case UNKNOWN -> {
                    replies.forget(kept);
                    replies.error(reply, new RpcError(Reason.INJECTED_UNKNOWN,
                            "injected fault: unknown outcome: the request may or may not have been done; a retry will tell"));
                }
                case DELAY -> {
                    if (delayed == null) {
                        delayed = new DelayedReplies();
                    }
                    delayed.schedule(() -> replies.writeAtOnce(kept.line()), drawn.delayMillis());   // later replies may overtake it
                }
                case DUPLICATE -> {
                    replies.writeLine(kept.line());
                    replies.writeLine(kept.line());
                }
                case CRASH -> {
                    replies.forget(kept);
                    throw new Stop(null, EXIT_INJECTED_CRASH);   // the fault's line said it all
                }
                default -> throw new IllegalStateException("fault " + fault);
            }
        }
    }

    /** The faults a payment service shows in real life (docs/PROTOCOL.md section 9 has what each does to a reply). */
    enum Fault {
        FAIL("fail"), DROP("drop"), UNKNOWN("unknown"), DELAY("delay"), DUPLICATE("duplicate"), CRASH("crash");

        final String option;

        Fault(String option) {
            this.option = option;
        }

        /** The fault an option names ({@code drop}), or null. */
        static Fault named(String option) {
            for (Fault fault : values()) {
                if (fault.option.equals(option)) {
                    return fault;
                }
            }
            return null;
        }
    }

    /** --faults: the probability of each fault per attempt (they add up to at most 1), and the delay. */
    record FaultPlan(EnumMap<Fault, Double> probabilities, long delayMillis, Map<String, List<Drawn>> scripted) {
        static final FaultPlan NONE = new FaultPlan(new EnumMap<>(Fault.class), 0, Map.of());

        /** The same plan, and {@code KEY=KIND[,KIND...]} (--fault): that key's first attempts get those faults, in order. */
        FaultPlan withScript(String option) {
            int equals = option.lastIndexOf('=');
            if (equals <= 0 || equals == option.length() - 1) {
                throw new IllegalArgumentException("--fault needs KEY=KIND[,KIND...], e.g. --fault saga42:step2=drop,fail, got '" + option + "'");
            }
            String key = option.substring(0, equals);
            List<Drawn> faults = new ArrayList<>();
            for (String kind : option.substring(equals + 1).split(",", -1)) {
                faults.add(scriptedFault(kind));
            }
            Map<String, List<Drawn>> more = new HashMap<>(scripted);
            if (more.put(key, List.copyOf(faults)) != null) {
                throw new IllegalArgumentException("--fault: " + key + " is given twice");
            }
            return new FaultPlan(probabilities, delayMillis, Map.copyOf(more));
        }

        /** One attempt's fault in a --fault list: a kind, delay:MS, or none (the attempt goes through). */
        private static Drawn scriptedFault(String kind) {
            if (kind.equals("none")) {
                return new Drawn(null, 0);
            }
            if (kind.startsWith("delay:")) {
                return new Drawn(Fault.DELAY, milliseconds(kind.substring("delay:".length())));
            }
            Fault fault = Fault.named(kind);
            if (fault == null || fault == Fault.DELAY) {
                throw new IllegalArgumentException("--fault: unknown fault '" + kind + "' (known: fail, drop, unknown, delay:MS,"
                        + " duplicate, crash, none)");
            }
            return new Drawn(fault, 0);
        }

        static FaultPlan parse(String list) {
            EnumMap<Fault, Double> probabilities = new EnumMap<>(Fault.class);
            long delayMillis = 0;
            double total = 0;
            for (String item : list.split(",", -1)) {
                int equals = item.indexOf('=');
                String name = equals < 0 ? item : item.substring(0, equals);
                Fault fault = Fault.named(name);
                if (fault == null) {
                    throw new IllegalArgumentException("--faults: unknown fault '" + name + "' (known: fail, drop, unknown,"
                            + " delay, duplicate, crash; e.g. --faults fail=0.05,delay=0.1:200)");
                }
                if (probabilities.containsKey(fault)) {
                    throw new IllegalArgumentException("--faults: " + name + " is given twice");
                }
                String value = equals < 0 ? "" : item.substring(equals + 1);
                if (fault == Fault.DELAY) {
                    int colon = value.indexOf(':');
                    if (colon < 0) {
                        throw new IllegalArgumentException("--faults: delay needs a probability and milliseconds, e.g. delay=0.1:200");
                    }
                    delayMillis = milliseconds(value.substring(colon + 1));
                    value = value.substring(0, colon);
                }
                double probability = probability(name, value);
                probabilities.put(fault, probability);
                total += probability;
            }
            if (total > 1 + 1e-9) {
                throw new IllegalArgumentException("--faults: the probabilities add up to " + total + ", more than 1"
                        + " (each attempt draws at most one fault)");
            }
            return new FaultPlan(probabilities, delayMillis, Map.of());
        }

        private static double probability(String name, String text) {
            try {
                double p = Double.parseDouble(text);
                if (p >= 0 && p <= 1) {
                    return p;
                }
            } catch (NumberFormatException notANumber) {
                // said below
            }
            throw new IllegalArgumentException("--faults: " + name + " needs a probability from 0 to 1, e.g. " + name + "=0.05,"
                    + " got '" + text + "'");
        }

        private static long milliseconds(String text) {
            Long millis = Options.wholeNumber(text, 0, 3_600_000);
            if (millis != null) {
                return millis;
            }
            throw new IllegalArgumentException("--faults: delay needs whole milliseconds from 0 to 3600000, got '" + text + "'");
        }
    }

    /** A fault drawn for one attempt, and how long its reply waits when it is a delay. */
    record Drawn(Fault fault, long delayMillis) {
    }

    /**
     * Draws at most one fault per ChargePayment or RefundPayment attempt. The fault of attempt k of key K
     * comes from (--seed, K, k) alone, so the same sagas get the same faults however their requests
     * interleave; a key named by --fault gets its listed faults on its first attempts, in order. Among
     * the --faults probabilities the faults are tried in a fixed order (fail, drop, unknown, delay,
     * duplicate, crash), whatever order the option lists them in.
     */
    static final class Faults {
        private final FaultPlan plan;
        private final long seed;
        /** Attempts so far of each key that came here: one small counter per key, like the table's entry. */
        private final ConcurrentHashMap<String, Integer> attempts = new ConcurrentHashMap<>();

        Faults(FaultPlan plan, long seed) {
            this.plan = plan;
            this.seed = seed;
        }

        /** The fault of this attempt of {@code key}, or null. */
        Drawn draw(String key) {
            int attempt = attempts.merge(key, 1, Integer::sum);
            List<Drawn> scripted = plan.scripted().get(key);
            if (scripted != null && attempt <= scripted.size()) {
                Drawn drawn = scripted.get(attempt - 1);
                return drawn.fault() == null ? null : drawn;
            }
            if (plan.probabilities().isEmpty()) {
                return null;
            }
            double roll = new SplittableRandom(seed ^ fnv64(key) ^ attempt * 0x9E3779B97F4A7C15L).nextDouble();
            for (var fault : plan.probabilities().entrySet()) {
                roll -= fault.getValue();
                if (roll < 0) {
                    return new Drawn(fault.getKey(), plan.delayMillis());
                }
            }
            return null;
        }

        /** A 64-bit hash of a key (FNV-1a over its chars): nearby keys get unrelated seeds. */
        private static long fnv64(String key) {
            long hash = 0xcbf29ce484222325L;
            for (int i = 0; i < key.length(); i++) {
                hash = (hash ^ key.charAt(i)) * 0x100000001b3L;
            }
            return hash;
        }
    }

    /** A timer thread that writes delayed replies when they are due; it sleeps in between, never spins. */
    static final class DelayedReplies {
        private final ScheduledThreadPoolExecutor timer = new ScheduledThreadPoolExecutor(1, task -> {
            Thread thread = new Thread(task, "delayed-replies");
            thread.setDaemon(true);
            return thread;
        });

        void schedule(Runnable write, long millis) {
            timer.schedule(write, millis, TimeUnit.MILLISECONDS);
        }

        /** Lets every scheduled reply go out, then stops the thread. */
        void drain() throws IOException {
            timer.shutdown();   // scheduled tasks still run after shutdown: that is the default policy
            try {
                timer.awaitTermination(Long.MAX_VALUE, TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted while delayed replies were pending");
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 8. Cluster: several nodes, one payment service, on lin-kv (--store lin-kv)
    // ---------------------------------------------------------------------------------------------

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
    record KvReply(String type, Long code, String text, Object value) {
        static KvReply parse(RawMessage message) throws IOException {
            String type = stringOrNull(message.body.type);
            Long code = null;
            String text = null;
            Object value = null;
            try (JsonParser parser = JSON.createParser(message.line, message.start, message.length)) {
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
                            case "code" -> code = longOrNull(Value.read(parser, token));
                            case "text" -> text = stringOrNull(Value.read(parser, token));
                            case "value" -> value = KvValue.read(parser, token);
                            default -> parser.skipChildren();
                        }
                    }
                }
            }
            return new KvReply(type, code, text, value);
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
        if (Rules.paymentNumber(text) < 0) {
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
        if (!text.isEmpty() && (text.length() < 2 || text.charAt(0) != 'r' || Rules.paymentNumber("p" + text.substring(1)) < 0)) {
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
    static final class ClusterService implements Service {
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

        /** One line read by the cluster's reader thread (a copy: the reader goes on meanwhile). */
        private record Line(byte[] bytes, byte[] tooLongPrefix, long tooLongLength) {
        }

        private static final Line END_OF_INPUT = new Line(null, null, 0);

        /** How long a cluster node may hold its output in a buffer while input keeps coming. */
        private static final long MAX_HOLD_NANOS = 2_000_000;

        /**
         * The main loop of a cluster node. A reader thread reads stdin, and this thread handles each line and
         * each lin-kv reply as it comes, and answers the calls that lin-kv left unanswered past their time:
         * the input never waits for lin-kv. At the end of input, calls still waiting can only time out.
         */
        @Override
        public int serve(PaymentNode node, InputStream in) {
            BlockingQueue<Line> queue = new ArrayBlockingQueue<>(4096);
            IOException[] readFailure = new IOException[1];
            Thread reader = new Thread(() -> {
                LineReader lines = new LineReader(in, MAX_LINE_BYTES, () -> { });
                try {
                    while (lines.next()) {
                        queue.put(new Line(Arrays.copyOfRange(lines.buffer(), lines.start(), lines.start() + lines.length()),
                                lines.tooLongPrefix(), lines.tooLongLength()));
                    }
                } catch (IOException e) {
                    readFailure[0] = e;
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                try {
                    queue.put(END_OF_INPUT);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }, "stdin");
            reader.setDaemon(true);
            reader.start();
            try {
                boolean inputOpen = true;
                long flushedAt = System.nanoTime();
                while (inputOpen || waiting()) {
                    Line line = queue.poll();
                    if (line == null || System.nanoTime() - flushedAt > MAX_HOLD_NANOS) {
                        // Before waiting, and at least every MAX_HOLD_NANOS under a flood of input: lin-kv
                        // requests and replies never sit in a buffer while their time runs.
                        replies.flush();
                        flushedAt = System.nanoTime();
                    }
                    if (line == null) {
                        long wait = millisToNextDeadline();
                        line = wait < 0 ? (inputOpen ? queue.take() : null) : queue.poll(wait, TimeUnit.MILLISECONDS);
                    }
                    expire();
                    if (line == END_OF_INPUT) {
                        inputOpen = false;
                    } else if (line != null) {
                        node.handleLine(line.bytes(), 0, line.bytes().length, line.tooLongPrefix(), line.tooLongLength());
                    }
                }
                replies.flush();
                if (readFailure[0] != null) {
                    throw readFailure[0];
                }
                return 0;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return 1;
            } catch (IOException e) {
                log.error("stopping: reading stdin or writing stdout failed: " + e, null);
                return 1;
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
            void answer(ReplyWriter.Writing writing) throws IOException {
                if (!answered) {
                    answered = true;
                    writing.run();
                }
            }

            void fail(RpcError error) throws IOException {
                answer(() -> replies.error(reply, error));
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

        @Override
        public void balance(Envelope reply, BalanceRequest request) {
            throw new RpcError(Reason.BALANCES_NOT_KEPT, "BalanceRead is not supported with --store lin-kv: the cluster keeps no balances");
        }

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
        public void charge(Envelope reply, ChargeRequest request) throws IOException {
            Flight flight = start(reply);
            StepRecord known = steps.get(request.key());
            if (known != null) {
                answerCharge(flight, request, known, true);   // a step record never changes: no lin-kv call
                return;
            }
            chargeWithNewId(flight, request);
        }

        /**
         * The payment's record first, then the step's (the commit point): by the time a payment id can be
         * seen anywhere, its ledger exists, so every refund of it is held to its charge.
         */
        private void chargeWithNewId(Flight flight, ChargeRequest request) throws IOException {
            paymentIds.take(flight, number -> {
                String paymentId = Rules.paymentId(number);
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
            flight.answer(() -> replies.chargeOk(flight.reply, request,
                    new Served<>(new ChargeResult(step.paymentId(), step.amount()), replayed)));
        }

        @Override
        public void refund(Envelope reply, RefundRequest request) throws IOException {
            Flight flight = start(reply);
            RefundRecord done = refunds.get(request.key());
            if (done != null) {
                answerRefund(flight, request, done, true);   // a final record never changes: no lin-kv call
                return;
            }
            resume(flight, request);
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
                LedgerEntry mine = new LedgerEntry(Rules.refundId(number), amount, pending.paymentIdGiven(), pending.amountGiven(), "");
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
            flight.answer(() -> replies.refundOk(flight.reply, request, new Served<>(done.result(), replayed)));
        }

        /** What is recorded for a step, read fresh (its ledger may have moved on): no key is created or changed. */
        @Override
        public void status(Envelope reply, StatusRequest request) throws IOException {
            Flight flight = start(reply);
            String refundKey = refundRecordKey(request.refundKey());
            readStep(flight, request.chargeKey(), step -> read(flight, refundKey, (o, v) -> {
                RefundRecord refund = o == Outcome.OK ? RefundRecord.decode(refundKey, v) : null;
                RefundResult refunded = refund != null && refund.isRefunded() ? refund.result() : null;
                if (step == null || !step.charged()) {
                    flight.answer(() -> replies.paymentStatusOk(reply, request, new StepStatus(step == null ? null : Compensated.STEP, refunded)));
                    return;
                }
                String paymentKey = paymentRecordKey(step.paymentId());
                read(flight, paymentKey, (o2, v2) -> {
                    if (o2 != Outcome.OK) {
                        throw notOurs(paymentKey, "missing, though step " + request.chargeKey() + " names it");
                    }
                    PaymentRecord ledger = PaymentRecord.decode(paymentKey, v2);
                    ledgers.put(step.paymentId(), ledger);
                    Charged payment = new Charged(step.userId(), step.amount(), Rules.paymentNumber(step.paymentId()));
                    if (new BigDecimal(ledger.refunded()).signum() > 0) {
                        payment.restoreDeducted(new BigDecimal(ledger.refunded()));
                    }
                    flight.answer(() -> replies.paymentStatusOk(reply, request, new StepStatus(payment, refunded)));
                });
            }));
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
            long msgId = replies.request(new Envelope(nodeId, KV, null), type, json -> {
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
        public boolean completes(RawMessage message) throws IOException {
            Long inReplyTo = longOrNull(message.body.inReplyTo);
            Call call = inReplyTo == null ? null : calls.get(inReplyTo);
            if (call == null || !KV.equals(message.src.text())) {
                return false;   // late (timed out), from an earlier process of this node, or not lin-kv's
            }
            KvReply body = KvReply.parse(message);
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
                    answer(() -> { });
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
                        reservation.answer(() -> { });
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
    }

    // ---------------------------------------------------------------------------------------------
    // 9. Start-up details: the reply stream, options, usage, warm-up
    // ---------------------------------------------------------------------------------------------

    /**
     * Where replies go: stdout, or the file that {@code -Dpayment.replies} names. run.sh names a copy of
     * its stdout there and gives the JVM stderr as stdout, so that nothing a JVM option prints can mix
     * with the replies. Appending, so that a reopened {@code >>} file is never overwritten.
     */
    private static OutputStream replyStream() throws IOException {
        String path = System.getProperty("payment.replies");
        return path == null ? new FileOutputStream(FileDescriptor.out) : new FileOutputStream(path, true);
    }

    /**
     * The node the options describe. The defaults keep every path as plain as it can be: one table in
     * memory, no balances, no faults; each option adds its mode around it. A journal that cannot be opened
     * now is an IOException.
     */
    static PaymentNode fromOptions(Options options, OutputStream stdout, Log log) throws IOException {
        if (options.linKv()) {
            return new PaymentNode(stdout, log, replies -> new ClusterService(replies, log, options.kvTimeoutMillis()));
        }
        Balances balances = options.balance() == null ? null : new Balances(options.balance());
        Function<ReplyWriter, Service> local;
        if (options.journal() != null && options.journal().contains(NODE_ID)) {
            local = replies -> new JournalAtInit(options.journal(), balances, options.maxKeys(), replies, log);
        } else {
            PaymentHandler table = options.journal() != null ? tableFromJournal(Path.of(options.journal()), log, balances, options.maxKeys())
                    : table(log, Journal.NONE, balances, options.maxKeys());
            local = replies -> new LocalService(table, replies, log);
        }
        if (options.faults() == null) {
            return new PaymentNode(stdout, log, local);
        }
        Faults faults = new Faults(options.faults(), options.seed());
        return new PaymentNode(stdout, log, replies -> new FaultyService(local.apply(replies), faults, replies, log));
    }

    /** The command line. {@code journal}, {@code balance} and {@code faults} are null when not given. */
    record Options(boolean verbose, boolean help, String journal, BigDecimal balance, FaultPlan faults, long seed,
                   boolean linKv, long kvTimeoutMillis, long maxKeys) {
        /** How long a cluster node waits for a lin-kv reply before it answers its client "outcome unknown". */
        static final long DEFAULT_KV_TIMEOUT_MILLIS = 1000;

        static Options parse(String[] args) {
            boolean verbose = false;
            boolean help = false;
            String journal = null;
            BigDecimal balance = null;
            FaultPlan faults = null;
            long seed = 0;
            boolean linKv = false;
            long kvTimeout = DEFAULT_KV_TIMEOUT_MILLIS;
            long maxKeys = 0;
            List<String> scripts = new ArrayList<>();
            Set<String> given = new HashSet<>();
            for (int i = 0; i < args.length; i++) {
                String arg = args[i];
                int equals = arg.startsWith("--") ? arg.indexOf('=') : -1;
                String name = equals < 0 ? arg : arg.substring(0, equals);
                switch (name) {
                    case "--verbose", "-v", "--help", "-h" -> {
                        if (equals >= 0) {
                            throw new IllegalArgumentException(name + " takes no value");
                        }
                        verbose |= name.equals("--verbose") || name.equals("-v");
                        help |= name.equals("--help") || name.equals("-h");
                    }
                    case "--journal", "--balance", "--faults", "--fault", "--seed", "--store", "--kv-timeout", "--max-keys" -> {
                        given.add(name);
                        String value = equals >= 0 ? arg.substring(equals + 1) : ++i < args.length ? args[i] : null;
                        if (value == null || value.isEmpty()) {
                            throw new IllegalArgumentException(name + " needs a value" + EXAMPLES.get(name));
                        }
                        switch (name) {
                            case "--journal" -> journal = journalPath(value);
                            case "--balance" -> balance = balance(value);
                            case "--faults" -> faults = FaultPlan.parse(value);
                            case "--store" -> linKv = store(value);
                            case "--kv-timeout" -> kvTimeout = kvTimeout(value);
                            case "--fault" -> scripts.add(value);
                            case "--max-keys" -> maxKeys = maxKeys(value);
                            default -> seed = seed(value);
                        }
                    }
                    default -> throw new IllegalArgumentException("unknown option: " + arg);
                }
            }
            if (linKv && journal != null) {
                throw new IllegalArgumentException("--store lin-kv keeps the state in lin-kv: it goes with no --journal");
            }
            if (given.contains("--seed") && faults == null) {
                throw new IllegalArgumentException("--seed is the seed of --faults: it goes with --faults");
            }
            if (given.contains("--kv-timeout") && !linKv) {
                throw new IllegalArgumentException("--kv-timeout is how long a cluster node waits for lin-kv: it goes with --store lin-kv");
            }
            for (String script : scripts) {
                faults = (faults == null ? FaultPlan.NONE : faults).withScript(script);
            }
            if (linKv && (balance != null || faults != null || maxKeys != 0)) {
                throw new IllegalArgumentException("--balance, --faults, --fault and --max-keys are not available with --store lin-kv");
            }
            return new Options(verbose, help, journal, balance, faults, seed, linKv, kvTimeout, maxKeys);
        }

        private static boolean store(String text) {
            return switch (text) {
                case "lin-kv" -> true;
                case "memory" -> false;
                default -> throw new IllegalArgumentException("--store is lin-kv or memory, got " + text);
            };
        }

        private static long maxKeys(String text) {
            Long keys = wholeNumber(text, 1, Long.MAX_VALUE);
            if (keys == null) {
                throw new IllegalArgumentException("--max-keys needs a whole number of keys from 1, got " + text);
            }
            return keys;
        }

        private static long kvTimeout(String text) {
            Long millis = wholeNumber(text, 1, 3_600_000);
            if (millis == null) {
                throw new IllegalArgumentException("--kv-timeout needs milliseconds from 1 to 3600000, got " + text);
            }
            return millis;
        }

        /** A whole number from {@code min} to {@code max} given on the command line, else null. */
        static Long wholeNumber(String text, long min, long max) {
            try {
                long number = Long.parseLong(text);
                return number >= min && number <= max ? number : null;
            } catch (NumberFormatException notANumber) {
                return null;
            }
        }

        private static final Map<String, String> EXAMPLES = Map.of(
                "--journal", ", a file name (e.g. --journal 'payments-{node_id}.journal')",
                "--balance", ", an amount (e.g. --balance 100.00)",
                "--faults", " (e.g. --faults fail=0.05,drop=0.1,delay=0.1:200)",
                "--fault", " (e.g. --fault saga42:step2=drop,fail)",
                "--max-keys", ", a number of keys (e.g. --max-keys 1000000)",
                "--seed", ", an integer (e.g. --seed 7)",
                "--store", " (--store lin-kv)",
                "--kv-timeout", ", milliseconds (e.g. --kv-timeout 1000)");

        private static String journalPath(String name) {
            Path.of(name.replace(NODE_ID, "n1"));   // a path this system cannot have is a usage error now, not at init
            return name;
        }

        private static BigDecimal balance(String text) {
            try {
                BigDecimal amount = new BigDecimal(text);
                if (amount.signum() >= 0 && amount.precision() - amount.scale() <= Amount.MAX_DIGITS && amount.scale() <= Amount.MAX_DIGITS) {
                    return amount;
                }
            } catch (NumberFormatException notANumber) {
                // said below
            }
            throw new IllegalArgumentException("--balance needs an amount of 0 or more, got " + text);
        }

        private static long seed(String text) {
            try {
                return Long.parseLong(text);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("--seed needs an integer, got " + text);
            }
        }
    }

    static final String USAGE = """
            Usage: ./run.sh [--journal FILE] [--balance AMOUNT] [--faults LIST --seed N]
                            [--fault KEY=KINDS]... [--max-keys N] [--verbose] < messages.jsonl
                   ./run.sh --store lin-kv [--kv-timeout MS] [--verbose]
                   ./run.sh --build
                   java -jar target/payment-node.jar [OPTIONS]

            The payment participant of a saga, as a Maelstrom node. It reads one JSON
            message per line on stdin and writes one JSON reply per line on stdout:
              init           -> init_ok
              ChargePayment  -> ChargePayment_ok  (once per saga_id and step: a retry gets
                                                   the cached result, never a second charge)
              RefundPayment  -> RefundPayment_ok  (the compensation, just as idempotent)
              PaymentStatus  -> PaymentStatus_ok  (what is recorded for a step, read only)
              BalanceRead    -> BalanceRead_ok    (a user's balance, charged and refunded;
                                                   with --balance)
            Bad input gets a Maelstrom error reply (codes 10-14, 22, with a reason such as
            key_reused or insufficient_funds), or a line on stderr
            when it cannot be answered; a message with in_reply_to is a reply and is never
            answered. The node never stops on bad input; it exits 0 at the end of its input.

            Options:
              --journal FILE  keep every charge, refund and closed step in FILE (created
                              if missing, readable by its owner only) and replay it on
                              start, so that a restart forgets nothing; a reply is written
                              only once its record is on disk. {node_id} in FILE stands
                              for the node's id: each node of a harness keeps its own
                              file, opened at its first init (requests before it get
                              error 11). Without --journal, state lives in memory only
                              and a restart forgets every idempotency key.
              --balance AMOUNT
                              every user starts with AMOUNT; a charge above what is
                              left is declined (error 14, stored as the step's
                              result); a refund pays back
              --faults LIST   inject the faults of a real payment service into
                              ChargePayment and RefundPayment, at most one per
                              attempt, e.g. fail=0.05,drop=0.1,unknown=0.02,
                              delay=0.1:200,duplicate=0.05,crash=0.01:
                                fail       nothing is done; error 11 (definite)
                                drop       done; no reply
                                unknown    done; error 13 (indefinite)
                                delay=P:MS done; the reply leaves MS ms later
                                duplicate  done; the reply comes twice
                                crash      done and journaled; exit 3, no reply
                              each one logged on stderr with its key and msg_id
              --seed N        the seed of --faults (default 0; with --faults only): the
                              same seed gives each key's attempts the same faults,
                              whatever order the requests come in
              --fault KEY=KINDS
                              the first attempts of KEY (saga42:step2, or
                              saga42:step2:refund) get these faults in order, e.g.
                              --fault saga42:step2=drop,fail (kinds: fail, drop,
                              unknown, delay:MS, duplicate, crash, none); repeatable
              --max-keys N    refuse new keys past N (error 11, table_full; retries
                              are still served); default: what 60% of the heap holds
              --store lin-kv  one payment service across every node started so: the
                              table and ledgers live in the harness's lin-kv service,
                              and a retry to any node (or a restarted one) gets the
                              same result (docs/CLUSTER.md)
              --store memory  the default: the table lives in this node (with --journal,
                              also in its file)
              --kv-timeout MS how long to wait for lin-kv before answering error 0,
                              outcome unknown (default 1000; with --store lin-kv only)
              -v, --verbose   also log every request and every cached answer on stderr
              -h, --help      print this help and exit
              --build         (run.sh only) build the jar ahead, then exit: a fresh
                              clone's first build takes ~10 s, as long as Maelstrom
                              waits for init_ok

            stdout carries replies and nothing else; logs go to stderr. JAVA_OPTS adds
            JVM options (run.sh keeps whatever they print off stdout).

            Example:
              printf '%s\\n' '{"src":"c1","dest":"n1","body":{"type":"init","msg_id":1}}' | ./run.sh
            """;

    /**
     * Runs every kind of request once through a throwaway node, on the second core while the real one
     * starts: the first real charge then finds its classes loaded and linked instead of paying for that
     * itself (a few milliseconds). It shares nothing with the real node: its own handler, no journal,
     * no output.
     */
    private static void warmUp() {
        String lines = """
                {"src":"c0","dest":"w","body":{"type":"init","msg_id":1}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":2,"saga_id":"w","step":1,"params":{"user_id":"u","amount":9.99}}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":3,"saga_id":"w","step":1,"params":{"user_id":"u","amount":9.99}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":4,"saga_id":"w","step":1,"params":{"payment_id":"p1","amount":1}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":5,"saga_id":"w","step":1,"params":{"payment_id":"p1","amount":1}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":6,"saga_id":"w","step":2}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":7,"saga_id":"w","step":2,"params":{"user_id":"u","amount":1}}}
                """;
        Log silent = new Log(new PrintStream(OutputStream.nullOutputStream()), false);
        serving(new PaymentHandler(silent, Journal.NONE), OutputStream.nullOutputStream(), silent)
                .serve(new ByteArrayInputStream(lines.getBytes(StandardCharsets.UTF_8)));
    }

}
