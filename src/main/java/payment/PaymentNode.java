package payment;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;

import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.Flushable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.function.LongSupplier;
import java.util.function.Supplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The payment participant of a saga, as a Maelstrom node: the design card's node, whole, in one file.
 *
 * <p>Its heart comes first: {@link PaymentHandler}, the idempotency table, a {@link ConcurrentHashMap}
 * from idempotency key ({@code saga42:step2}) to the result of that step, claimed atomically, so that a
 * step retried any number of times, from any number of threads, charges or refunds at most once and every
 * attempt gets the same answer. Two-phase payments (reserve, then one capture or one void) are the same table
 * under keys of their own. Then the loop that feeds it, in the order a line travels: {@link #main}
 * → {@link #serve read a line} → {@link #parse parse} → {@link #dispatch dispatch} → {@link ChargeRequest
 * check} → the table → {@link ReplyWriter reply} → flush (when the input runs dry, so that nobody waits
 * for a reply sitting in a buffer).
 *
 * <p>It needs jackson-core and nothing else, and it names no mode. What lies beyond the card (a journal,
 * balances, injected faults, a cluster, the command line) is a file beside this one, plugged in through
 * the seams this file offers: {@link Service} (where checked requests go), {@link Journal} (where the
 * table records each change), {@link Refusal} (a step's result that is a refusal) and the table's
 * {@code firstCharge} / {@code firstReserve} / {@code refundPayment} / {@code holdResolved} / {@code restore}
 * / {@code decideBy} (the clock two-phase payments are decided by).
 */
public final class PaymentNode {

    // ---------------------------------------------------------------------------------------------
    // 1. The idempotency table: each key served once
    // ---------------------------------------------------------------------------------------------

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
        /** The time two-phase payments are decided by, in milliseconds: this node's clock, or a cluster's logged arrival time. */
        private LongSupplier clock = System::currentTimeMillis;
        /** --reserve-ttl: how long a reservation holds when its request gives no expires_in_ms; 0: for ever. */
        private long reserveTtlMillis;

        /** ChargePayment: the step's payment, made by the first attempt; every retry gets it again. */
        Served<ChargeResult> charge(ChargeRequest request) {
            String key = chargeKey(request.sagaId(), request.step());
            Served<Entry> served = once(key, () -> firstCharge(request));
            if (served.result() instanceof Charged charged) {
                if (charged instanceof Reserved) {   // a step is charged or reserved
                    throw Rules.otherType(key, "ReservePayment");
                }
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.chargeDiffers(charged.userId(), charged.amount(), request));
                }
                return new Served<>(charged.result(), served.replayed());
            }
            if (served.result() instanceof Refusal refusal) {
                if (refusal.ofReservation()) {
                    throw Rules.otherType(key, "ReservePayment");
                }
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.chargeDiffers(refusal.userId(), refusal.amount(), request));
                }
                throw refusal.error();   // the step's result: every retry gets it again
            }
            // Closed by a compensation that came first: a refund's words stay as they were; a void's must not speak of a refund.
            throw entries.containsKey(key + VOID_SUFFIX) ? Rules.compensatedFirst(key, "charged") : Rules.compensatedFirst(key);
        }

        /**
         * The idempotency key of a step. It is unambiguous: the step is all digits, so the last
         * {@code ":step"} of a key always separates saga_id from step, whatever the saga_id holds.
         */
        static String chargeKey(String sagaId, long step) {
            return sagaId + ":step" + step;
        }

        static final String REFUND_SUFFIX = ":refund";
        static final String CAPTURE_SUFFIX = ":capture";
        static final String VOID_SUFFIX = ":void";

        /** The saga_id of a charge key: what comes before its last {@code ":step"}. */
        static String sagaIdOf(String chargeKey) {
            return chargeKey.substring(0, chargeKey.lastIndexOf(":step"));
        }

        /** Runs {@code firstTime} for a key at most once; every other attempt gets the entry it left. */
        private Served<Entry> once(String key, Supplier<Entry> firstTime) {
            while (true) {
                Entry existing = entries.get(key);   // a retry needs no claim: read first, lock-free
                if (existing == null) {
                    if (entries.size() >= maxKeys) {
                        refuseFull(key);
                    }
                    InProgress claim = new InProgress(new CompletableFuture<>());
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
            boolean settled = false;
            try {
                done = firstTime.get();
                settled = entries.replace(key, claim, done);
                if (!settled) {
                    throw new BrokenInvariant(Invariant.CLAIM_SETTLED_BY_OWNER, "the claim on " + key + " was taken by another attempt");
                }
                return done;
            } finally {
                if (!settled) {
                    entries.remove(key, claim);   // failed: leave no record
                }
                claim.settled().complete(settled ? done : null);
            }
        }

        /** The charge itself, once per key; a mode may refuse it first (--balance: a decline). */
        Entry firstCharge(ChargeRequest request) {
            long number = paymentCount.incrementAndGet();
            journal.charged(request, number);   // before anyone can refund it, so the journal keeps that order
            Charged charged = new Charged(request.sagaId(), request.userId(), request.amount().text(), number);
            payments.add(number, charged);
            return charged;
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
        private void refuseFull(String key) {
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

        /** RefundPayment: the compensation, made by the first attempt under its own key; every retry gets it again. */
        Served<RefundResult> refund(RefundRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstRefund(request));
            Refunded refunded = (Refunded) served.result();
            if (served.replayed()) {
                Rules.requireSameParams(key, Rules.refundDiffers(refunded.paymentId(), refunded.amount(), request));
            }
            return new Served<>(refunded.result(), served.replayed());
        }

        /** Which payment a compensation refunds: the four cases of docs/PROTOCOL.md section 4, in order. */
        private Refunded firstRefund(RefundRequest request) {
            Entry step = settledEntry(request.chargeKey());
            Charged ofThisStep = step instanceof Charged charged ? charged : null;
            switch (Rules.refundCase(ofThisStep == null ? null : ofThisStep.paymentId(), step instanceof Refusal, request)) {
                case NOTHING_CHARGED -> {
                    return refunded(request, Refunded.NOTHING, Amount.ZERO.text(), null);
                }
                case OWN_PAYMENT -> {
                    return refundPayment(ofThisStep, request);
                }
                case NAMED_PAYMENT -> {
                    Charged ofAnotherStep = payments.get(request.paymentId());
                    if (ofAnotherStep != null) {
                        Rules.requireOwnSaga(ofAnotherStep.sagaId(), request);
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

        /** Draws a refund on a payment's ledger; a mode may act on it too (--balance: the user is paid back). */
        Refunded refundPayment(Charged payment, RefundRequest request) {
            String amount;
            long number;
            synchronized (payment) {   // the refunds of a payment take their ids in the order they draw on it (found by Lincheck)
                amount = payment.deductRefund(request.amount());   // may refuse: then no refund id is used up
                number = refundCount.incrementAndGet();
            }
            return refunded(request, number, amount, payment);
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

        // ---- Two-phase payments (docs/PROTOCOL.md section 11): a hold, then one capture or one void ----

        /** ReservePayment: the step's hold, made by the first attempt under the step's own key (a step is charged or reserved). */
        Served<ReserveResult> reserve(ReserveRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstReserve(request));
            if (served.result() instanceof Reserved reserved) {
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.reserveDiffers(reserved.userId(), reserved.amount(), reserved.expiresInMs(), request));
                }
                return new Served<>(reserved.reserveResult(), served.replayed());
            }
            if (served.result() instanceof Refusal refusal && refusal.ofReservation()) {
                if (served.replayed()) {
                    Rules.requireSameParams(key, Rules.reserveDiffers(refusal.userId(), refusal.amount(), refusal.expiresInMs(), request));
                }
                throw refusal.error();
            }
            if (served.result() instanceof Charged || served.result() instanceof Refusal) {
                throw Rules.otherType(key, "ChargePayment");
            }
            throw Rules.compensatedFirst(key, "reserved");
        }

        /** The hold itself, once per key; a mode may refuse it first (--balance: a decline when holds and charges leave too little). */
        Entry firstReserve(ReserveRequest request) {
            return reserveUntil(request, expiresAt(request, now()));
        }

        /** Makes the hold, with its deadline decided once by the caller (a mode that checked it against balances uses the same). */
        final Reserved reserveUntil(ReserveRequest request, long expiresAt) {
            long number = paymentCount.incrementAndGet();
            journal.reserved(request, number, expiresAt);   // before anyone can capture or void it, so the journal keeps that order
            Reserved reserved = new Reserved(request.key(), request.userId(), request.amount().text(),
                    request.expiresInMsOrAbsent(), expiresAt, number);
            payments.add(number, reserved);
            return reserved;
        }

        /** When a reservation made at {@code now} expires: its expires_in_ms, else --reserve-ttl, from now; {@link Reserved#NEVER} for neither. */
        long expiresAt(ReserveRequest request, long now) {
            long ttl = request.expiresInMs() != null ? request.expiresInMs() : reserveTtlMillis;
            if (ttl == 0) {
                return Reserved.NEVER;
            }
            long at = now + ttl;
            return at < 0 ? Reserved.NEVER - 1 : at;   // past the end of time: as good as never, and still a deadline
        }

        long now() {
            return clock.getAsLong();
        }

        /** A cluster decides by its log's times, never by a node's own clock: every node then decides alike. */
        void decideBy(LongSupplier clock) {
            this.clock = clock;
        }

        void reserveTtl(long millis) {
            this.reserveTtlMillis = millis;
        }

        /** CapturePayment: takes the step's hold (all of it, or part, releasing the rest), once; every retry gets the capture again. */
        Served<CaptureResult> capture(CaptureRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstCapture(request));
            Captured captured = (Captured) served.result();
            if (served.replayed()) {
                Rules.requireSameParams(key, Rules.refundDiffers(captured.paymentId(), captured.amount(), request.paymentId(), request.amount()));
            }
            return new Served<>(captured.result(), served.replayed());
        }

        /** A capture that cannot happen leaves no record (a capture that overtook its reservation may come again). */
        private Captured firstCapture(CaptureRequest request) {
            Reserved reservation = reservationOf(request.chargeKey(), request.paymentId());
            String captured;
            String released;
            synchronized (reservation) {   // a capture and a void of one hold: exactly one of them resolves it
                Hold hold = holdNow(reservation, request.chargeKey());
                switch (hold) {
                    case VOIDED -> throw new RpcError(Reason.RESERVATION_VOIDED, "the reservation " + reservation.paymentId() + " of step "
                            + request.chargeKey() + " was voided: nothing was captured");
                    case EXPIRED -> throw new RpcError(Reason.RESERVATION_EXPIRED, "the reservation " + reservation.paymentId() + " of step "
                            + request.chargeKey() + " expired: nothing was captured, its hold is released");
                    case CAPTURED -> throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, reservation.paymentId() + " is captured, and "
                            + request.key() + " has no capture");
                    case RESERVED -> {
                    }
                }
                captured = Rules.captureAmount(reservation.paymentId(), reservation.amount(), request.amount());
                released = Rules.difference(reservation.amount(), captured);
                journal.captured(request, captured, released, reservation.paymentNumber());
                reservation.resolve(Hold.CAPTURED, captured);
            }
            holdResolved(reservation);
            return new Captured(request.paymentId(), request.amount() == null ? null : request.amount().text(),
                    new CaptureResult(reservation.paymentId(), captured, released));
        }

        /** VoidPayment: releases the step's hold, or closes a step not reserved yet (a null compensation); every retry gets it again. */
        Served<VoidResult> voidHold(VoidRequest request) {
            String key = request.key();
            Served<Entry> served = once(key, () -> firstVoid(request));
            Voided voided = (Voided) served.result();
            if (served.replayed()) {
                Rules.requireSameParams(key, Rules.refundDiffers(voided.paymentId(), null, request.paymentId(), null));
            }
            return new Served<>(voided.result(), served.replayed());
        }

        private Voided firstVoid(VoidRequest request) {
            Entry step = settledEntry(request.chargeKey());
            if (step instanceof Reserved reservation) {
                Rules.requirePaymentOfStep(reservation.paymentId(), request.paymentId(), request.chargeKey());
                String released;
                boolean releasedNow;
                synchronized (reservation) {
                    Hold hold = holdNow(reservation, request.chargeKey());
                    switch (hold) {
                        case CAPTURED -> throw new RpcError(Reason.ALREADY_CAPTURED, "the reservation " + reservation.paymentId() + " of step "
                                + request.chargeKey() + " is captured: compensate it with RefundPayment");
                        case VOIDED -> throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, reservation.paymentId() + " is voided, and "
                                + request.key() + " has no void");
                        case EXPIRED, RESERVED -> {
                        }
                    }
                    releasedNow = hold == Hold.RESERVED;
                    released = releasedNow ? reservation.amount() : Amount.ZERO.text();   // an expired hold was released when it expired
                    journal.voided(request, released, reservation.paymentNumber());
                    if (releasedNow) {
                        reservation.resolve(Hold.VOIDED, null);
                    }
                }
                if (releasedNow) {
                    holdResolved(reservation);
                }
                return new Voided(request.paymentId(), new VoidResult(reservation.paymentId(), released));
            }
            if (step instanceof Charged) {
                throw Rules.noReservation(request.chargeKey(), "it was charged: compensate it with RefundPayment");
            }
            if (step == null) {
                if (request.paymentId() != null && payments.get(request.paymentId()) != null) {
                    throw Rules.notOfStep(request.paymentId(), request.chargeKey(), "none");
                }
                // The void came before its reservation: close the step, so that a reservation arriving later is
                // refused (no hanging hold), and the compensation and the action commute.
                if (!closeStep(request.chargeKey())) {
                    return firstVoid(request);   // the reservation won the race after all: void it
                }
            }
            // No hold to release: a step declined, closed, or closed just now.
            journal.voided(request, Amount.ZERO.text(), 0);
            return new Voided(request.paymentId(), new VoidResult(null, Amount.ZERO.text()));
        }

        /** The step's reservation, named right if named: else the capture is refused, with nothing recorded. */
        private Reserved reservationOf(String chargeKey, String paymentId) {
            Entry step = settledEntry(chargeKey);
            if (step == Compensated.STEP) {
                throw Rules.compensatedFirst(chargeKey, "reserved or captured");
            }
            if (!(step instanceof Reserved reservation)) {
                throw Rules.noReservation(chargeKey, step == null ? "none yet (a capture that came first may be sent again)"
                        : step instanceof Charged ? "it was charged" : "its reservation was declined");
            }
            Rules.requirePaymentOfStep(reservation.paymentId(), paymentId, chargeKey);
            return reservation;
        }

        /**
         * The hold's state at this instant, called under its lock: a hold past its deadline expires now, for good
         * (recorded, and released), so that no later instant (a clock set back, a node behind) can capture it.
         */
        private Hold holdNow(Reserved reservation, String chargeKey) {
            if (reservation.holdAt(now()) == Hold.EXPIRED && reservation.hold() == Hold.RESERVED) {
                journal.expired(chargeKey);
                reservation.resolve(Hold.EXPIRED, null);
                holdResolved(reservation);
            }
            return reservation.hold();
        }

        /**
         * Expires the step's hold if it is past its deadline now: a mode that has just counted it as gone (--balance: the
         * money it held is available again) makes that so for good, before anything is decided on it.
         */
        void expireIfDue(String chargeKey) {
            if (settledEntry(chargeKey) instanceof Reserved reservation) {
                synchronized (reservation) {
                    holdNow(reservation, chargeKey);
                }
            }
        }

        /** A hold resolved (captured, voided, expired): a mode may act on it (--balance: the capture is taken, the rest released). */
        void holdResolved(Reserved reservation) {
        }

        /**
         * What is recorded for a step, read without touching it: no key is created, claimed or closed, so
         * a status read before a compensation never makes that compensation "come first".
         */
        StepStatus status(StatusRequest request) {
            String chargeKey = request.chargeKey();
            long now = now();
            Entry step;
            PaymentView payment;
            RefundResult refund;
            CaptureResult capture;
            VoidResult voided;
            do {   // one snapshot: the step, its payment and its other keys are read again until none moved in between (found by Lincheck)
                step = settledEntry(chargeKey);
                payment = step instanceof Charged charged ? charged.view(now) : null;
                refund = settledEntry(request.refundKey()) instanceof Refunded refunded ? refunded.result() : null;
                // Only a reservation has a capture, and a void leaves its step reserved, closed or declined: a charged
                // step (or one with nothing yet) has neither, and its read costs no more than before two-phase payments.
                boolean twoPhase = step instanceof Reserved || step == Compensated.STEP || step instanceof Refusal;
                capture = twoPhase && settledEntry(chargeKey + CAPTURE_SUFFIX) instanceof Captured captured ? captured.result() : null;
                voided = twoPhase && settledEntry(chargeKey + VOID_SUFFIX) instanceof Voided v ? v.result() : null;
            } while (step != settledEntry(chargeKey) || step instanceof Charged charged && !charged.view(now).equals(payment));
            String status = payment != null ? payment.status() : step instanceof Refusal refusal ? refusal.status()
                    : step == Compensated.STEP ? "compensated" : "none";
            return new StepStatus(status, payment, refund, capture, voided);
        }

        /** The final entry under a key, waiting for an attempt in progress; null if there is none. */
        private Entry settledEntry(String key) {
            Entry entry = entries.get(key);
            return entry == null ? null : entry.await();
        }

        /**
         * Replaying a journal: puts back the final entry a record wrote, with the checks of a first attempt's
         * (a refund never takes its payment above its charge), and moves the counters past its numbers.
         * {@code drewOn}: the number of the payment a refund drew on, 0 for none.
         */
        void restore(String key, Entry entry, long drewOn) {
            if (entry instanceof Captured || entry instanceof Voided) {
                Reserved reservation = drewOn == 0 ? null : payments.get(drewOn) instanceof Reserved reserved ? reserved : null;
                if (drewOn != 0 && reservation == null) {
                    throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, key + " resolved p" + drewOn + ", which no record reserved");
                }
                if (reservation != null && !key.equals(reservation.key() + (entry instanceof Captured ? CAPTURE_SUFFIX : VOID_SUFFIX))) {
                    throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, key + " resolved " + reservation.paymentId() + ", the reservation of " + reservation.key());
                }
                if (entry instanceof Captured captured) {
                    if (reservation == null) {
                        throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, key + " captured no reservation");
                    }
                    reservation.resolve(Hold.CAPTURED, captured.result().captured());
                    holdResolved(reservation);
                } else if (reservation != null && reservation.hold() != Hold.EXPIRED) {   // an expired hold: its own record came first, released 0
                    reservation.resolve(Hold.VOIDED, null);   // a hold captured or voided already: refused, never resolved twice
                    holdResolved(reservation);
                }
            } else if (entry instanceof Charged charged) {
                payments.add(charged.paymentNumber(), charged);
                paymentCount.accumulateAndGet(charged.paymentNumber(), Math::max);
            } else if (entry instanceof Refunded refunded) {
                if (drewOn != 0) {
                    Charged payment = payments.get(drewOn);
                    if (payment == null) {
                        throw new BrokenInvariant(Invariant.REFUND_OF_A_KNOWN_PAYMENT, key + " drew on p" + drewOn + ", which no record made");
                    }
                    payment.restoreDeducted(new BigDecimal(refunded.refunded()));
                }
                refundCount.accumulateAndGet(refunded.refundNumber(), Math::max);
            }
            entries.put(key, entry);
        }

        /** Replaying a journal: a hold found expired by a capture or a void (a record of its own: the capture left none). */
        void restoreExpired(String chargeKey) {
            if (!(entries.get(chargeKey) instanceof Reserved reservation)) {
                throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, chargeKey + " expired, and no record reserved it");
            }
            reservation.resolve(Hold.EXPIRED, null);
            holdResolved(reservation);
        }

        /** The payment with this number, made by this node (replaying a journal: the payment a refund drew on). */
        Charged payment(long number) {
            return payments.get(number);
        }
    }

    /** A payment as a reply shows it; {@code charged} is the amount's text as the first request wrote it. */
    record ChargeResult(String paymentId, String charged) {
    }

    /** {@code refundId} is null for a compensation that found nothing to refund. */
    record RefundResult(String refundId, String refunded) {
    }

    /** A result, and whether it was replayed from the idempotency table rather than made just now. */
    record Served<R>(R result, boolean replayed) {
    }

    /** A reservation as a reply shows it; {@code reserved} is the amount's text as the first request wrote it. */
    record ReserveResult(String paymentId, String reserved) {
    }

    /** What a capture took of its reservation, and what it released (their sum is what was reserved). */
    record CaptureResult(String paymentId, String captured, String released) {
    }

    /** What a void released; {@code paymentId} is null for a void that found no hold (a null compensation). */
    record VoidResult(String paymentId, String released) {
    }

    /** What a step's status read found: its status, its payment when it has one, and its other keys' results (each null when none). */
    record StepStatus(String status, PaymentView payment, RefundResult refund, CaptureResult capture, VoidResult voided) {
    }

    /**
     * A payment as PaymentStatus shows it, one snapshot: a charge's amount ({@code charged}), or a reservation's
     * ({@code reserved}) and what was captured of it, and the exact total refunded so far. {@code status} is the step's.
     */
    record PaymentView(String status, String paymentId, String charged, String reserved, String captured, String refunded) {
    }

    /**
     * The money rules this node checks on every write, in production (not only under {@code assert}): a broken
     * one is a bug, and the request that met it is answered 13 with nothing written, the invariant named on stderr.
     */
    enum Invariant {
        /** The refunds of a payment never add up to more than it charged. */
        REFUNDS_WITHIN_CHARGE,
        /** A claimed key is settled (or freed) only by the attempt that claimed it. */
        CLAIM_SETTLED_BY_OWNER,
        /** A refund record draws on a payment that a record made before it (journal replay). */
        REFUND_OF_A_KNOWN_PAYMENT,
        /** A capture never takes more than its reservation holds. */
        CAPTURE_WITHIN_HOLD,
        /** A hold resolves once: captured, voided or expired, never two of them, never twice. */
        HOLD_RESOLVED_ONCE;

        String wire() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /** A money invariant found broken: a bug, never an answer to a caller's mistake. */
    static final class BrokenInvariant extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final Invariant invariant;

        BrokenInvariant(Invariant invariant, String detail) {
            super("invariant " + invariant.wire() + " broken: " + detail);
            this.invariant = invariant;
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
            /** The step's result is a refusal (a decline): nothing was charged, nothing is refunded. */
            NOTHING_CHARGED
        }

        /** {@code stepPaymentId}: the payment of the refund's own step, null when it has none. */
        static RefundCase refundCase(String stepPaymentId, boolean stepRefused, RefundRequest request) {
            if (stepRefused) {
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

        /** Case 2: a payment named by a compensation must be one of its own saga's (a restarted node without a journal hands out p1 again). */
        static void requireOwnSaga(String paymentSagaId, RefundRequest request) {
            if (!paymentSagaId.equals(request.sagaId())) {
                throw new RpcError(Reason.PAYMENT_OF_ANOTHER_SAGA, "payment_id " + request.paymentId() + " is a payment of another saga:"
                        + " a compensation refunds its own saga's payments");
            }
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
            return chargeDiffers(userId, amount, request.userId(), request.amount());
        }

        static List<String> chargeDiffers(String userId, String amount, String requestUserId, Amount requestAmount) {
            return differs("user_id", !userId.equals(requestUserId), "amount", !requestAmount.sameValue(amount));
        }

        /** A refund's retry must repeat the params as first sent, given or not ({@code paymentId}, {@code amount}: null when not). */
        static List<String> refundDiffers(String paymentId, String amount, RefundRequest request) {
            return refundDiffers(paymentId, amount, request.paymentId(), request.amount());
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

        /** A refund's, a capture's or a void's retry must repeat its params as first sent, given or not (null: not). */
        static List<String> refundDiffers(String paymentId, String amount, String requestPaymentId, Amount requestAmount) {
            return differs("payment_id", !Objects.equals(paymentId, requestPaymentId),
                    "amount", amount == null ? requestAmount != null : requestAmount == null || !requestAmount.sameValue(amount));
        }

        /** A reservation's retry repeats user_id, amount and expires_in_ms ({@code expiresInMs}: -1 when not given). */
        static List<String> reserveDiffers(String userId, String amount, long expiresInMs, ReserveRequest request) {
            List<String> differs = new ArrayList<>(chargeDiffers(userId, amount, request.userId(), request.amount()));
            if (expiresInMs != request.expiresInMsOrAbsent()) {
                differs.add("expires_in_ms");
            }
            return differs;
        }

        /** A step is charged or reserved: the other kind under its key is a reuse of the key. */
        static RpcError otherType(String key, String firstType) {
            return new RpcError(Reason.KEY_REUSED, "idempotency key " + key + " was first used by " + firstType, List.of("type"));
        }

        /** A payment named by a capture or a void must be the step's own. */
        static void requirePaymentOfStep(String stepPaymentId, String named, String chargeKey) {
            if (named != null && !named.equals(stepPaymentId)) {
                throw notOfStep(named, chargeKey, stepPaymentId);
            }
        }

        static RpcError notOfStep(String named, String chargeKey, String stepPaymentId) {
            return new RpcError(Reason.PAYMENT_NOT_OF_STEP, "payment_id " + named + " is not the payment of step " + chargeKey + " (" + stepPaymentId + ")");
        }

        static RpcError noReservation(String chargeKey, String why) {
            return new RpcError(Reason.NO_RESERVATION, "step " + chargeKey + " has no reservation: " + why);
        }

        /** What a capture takes: {@code requested}, or all that is reserved when null; never more (error 22). */
        static String captureAmount(String paymentId, String reserved, Amount requested) {
            if (requested == null) {
                return reserved;
            }
            if (requested.value().compareTo(new BigDecimal(reserved)) > 0) {
                throw new RpcError(Reason.CAPTURE_EXCEEDS_RESERVATION, "capture of " + requested.text() + " is more than reservation "
                        + paymentId + " holds (" + reserved + ")");
            }
            return requested.text();
        }

        /** {@code whole - part}, exactly; zero is written 0. */
        static String difference(String whole, String part) {
            BigDecimal left = new BigDecimal(whole).subtract(new BigDecimal(part));
            return left.signum() == 0 ? Amount.ZERO.text() : left.toPlainString();
        }

        static RpcError compensatedFirst(String key) {
            return new RpcError(Reason.STEP_COMPENSATED, "step " + key + " was already compensated: its refund came first, so it is never charged");
        }

        /** A two-phase request on a step closed by a compensation (a refund or a void) that came before it. */
        static RpcError compensatedFirst(String key, String never) {
            return new RpcError(Reason.STEP_COMPENSATED, "step " + key + " was already compensated: its compensation came first, so it is never " + never);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // 2. The entries the table stores, and the journal they go to
    // ---------------------------------------------------------------------------------------------

    /** Where the table records each change of state; {@link #commit} makes them durable (a mode's: --journal). */
    interface Journal {
        /** No journal: the node keeps its state in memory only. */
        Journal NONE = new Journal() {
            @Override
            public void charged(ChargeRequest request, long paymentNumber) {
            }

            @Override
            public void closed(String key) {
            }

            @Override
            public void refunded(RefundRequest request, String refunded, long refundNumber, long paymentNumber) {
            }

            @Override
            public void reserved(ReserveRequest request, long paymentNumber, long expiresAt) {
            }

            @Override
            public void captured(CaptureRequest request, String captured, String released, long paymentNumber) {
            }

            @Override
            public void voided(VoidRequest request, String released, long paymentNumber) {
            }

            @Override
            public void expired(String chargeKey) {
            }

            @Override
            public void commit() {
            }
        };

        void charged(ChargeRequest request, long paymentNumber);

        /** A refusal kept as a step's result ({@link Refusal}). */
        default void refused(ChargeRequest request, Refusal refusal) {
        }

        void closed(String chargeKey);

        /** {@code paymentNumber}: the payment of this node whose ledger the refund drew on, else 0. */
        void refunded(RefundRequest request, String refunded, long refundNumber, long paymentNumber);

        /** {@code expiresAt}: the hold's deadline in milliseconds on the clock the table decides by ({@link Reserved#NEVER}: none). */
        void reserved(ReserveRequest request, long paymentNumber, long expiresAt);

        /** A refused reservation kept as the step's result ({@link Refusal}). */
        default void refused(ReserveRequest request, Refusal refusal) {
        }

        void captured(CaptureRequest request, String captured, String released, long paymentNumber);

        /** {@code paymentNumber}: the reservation it resolved, 0 when it found none (a null compensation, or a step declined). */
        void voided(VoidRequest request, String released, long paymentNumber);

        /** A hold found past its deadline by a capture or a void: expired for good. */
        void expired(String chargeKey);

        void commit() throws IOException;

        /** Releases the journal (a process that ends releases it anyway). */
        default void close() throws IOException {
        }
    }

    /** What the idempotency table holds for a key. */
    interface Entry {
        /** The final entry, waiting if an attempt is in progress; null if that attempt failed. */
        default Entry await() {
            return this;
        }
    }

    /** An attempt owns the key and is running now. */
    record InProgress(CompletableFuture<Entry> settled) implements Entry {
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
    static class Charged implements Entry {
        private final byte[] params;          // CompactText: user_id, the amount's text as the request wrote it, then saga_id
        private final int userIdLength;
        private final int amountLength;
        private final long paymentNumber;     // the payment id is "p" + paymentNumber
        private BigDecimal refunded;          // guarded by this; null until the first refund

        Charged(String sagaId, String userId, String amount, long paymentNumber) {
            this.params = CompactText.of(userId + amount + sagaId);
            this.userIdLength = userId.length();
            this.amountLength = amount.length();
            this.paymentNumber = paymentNumber;
        }

        ChargeResult result() {
            return new ChargeResult(paymentId(), amount());
        }

        String paymentId() {
            return paymentId(paymentNumber);
        }

        /** Payment ids are p1, p2, ... in the order charges happen. */
        static String paymentId(long number) {
            return "p" + number;
        }

        long paymentNumber() {
            return paymentNumber;
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

        String userId() {
            return CompactText.substring(params, 0, userIdLength);
        }

        String amount() {
            return CompactText.substring(params, userIdLength, userIdLength + amountLength);
        }

        /** The saga whose step made this payment: only that saga's compensations may refund it. */
        String sagaId() {
            return CompactText.substring(params, userIdLength + amountLength, CompactText.length(params));
        }

        /** The exact total refunded from this payment so far, by every refund key. */
        synchronized String refundedSoFar() {
            return refunded == null ? "0" : refunded.toPlainString();
        }

        /** What its refunds draw on: all it charged (a reservation: what was captured of it, null before). Called under its lock. */
        String ledger() {
            return amount();
        }

        /** How PaymentStatus shows it at {@code now}, one snapshot. */
        synchronized PaymentView view(long now) {
            return new PaymentView("charged", paymentId(), amount(), null, null, refundedSoFar());
        }

        /** Refunds {@code requested}, or all that is left when null; never more than was charged. Returns the amount's text. */
        synchronized String deductRefund(Amount requested) {
            String ledger = ledger();
            if (ledger == null) {
                throw new RpcError(Reason.PAYMENT_NOT_CAPTURED, "payment " + paymentId() + " is a reservation not captured: void it instead");
            }
            String amount = Rules.refundAmount(paymentId(), ledger, refunded, requested);
            refunded = withinCharge(new BigDecimal(amount));
            return amount;
        }

        /** Replaying a journal: a refund that was made, checked like a new one. */
        synchronized void restoreDeducted(BigDecimal amount) {
            refunded = withinCharge(amount);
        }

        /** The total refunded once {@code amount} is added, checked against the charge before anything changes. */
        private BigDecimal withinCharge(BigDecimal amount) {
            BigDecimal total = refunded == null ? amount : refunded.add(amount);
            String ledger = ledger();
            if (total.compareTo(ledger == null ? BigDecimal.ZERO : new BigDecimal(ledger)) > 0) {
                throw new BrokenInvariant(Invariant.REFUNDS_WITHIN_CHARGE, "the refunds of " + paymentId() + " would add up to "
                        + total.toPlainString() + ", more than its charge of " + (ledger == null ? "0 (not captured)" : ledger));
            }
            return total;
        }
    }

    /** Where a reservation's hold is: held, or resolved once and for good. */
    enum Hold {
        RESERVED, CAPTURED, VOIDED, EXPIRED;

        /** As PaymentStatus writes it. */
        String wire() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /**
     * A step's key's final entry for a ReservePayment: a payment (its id from the charges' sequence) that holds its
     * amount until one capture or one void resolves it, or its deadline passes. Refunds draw on what was captured.
     */
    static final class Reserved extends Charged {
        /** The deadline of a hold that never expires. */
        static final long NEVER = Long.MAX_VALUE;
        private final String key;             // the step's key: the hold's name in a mode's books (--balance)
        private final long expiresInMs;       // as the request gave it, -1: not given (a retry must repeat it)
        private final long expiresAt;         // on the clock the table decides by
        private Hold hold = Hold.RESERVED;    // guarded by this
        private String captured;              // guarded by this; null until captured

        Reserved(String key, String userId, String amount, long expiresInMs, long expiresAt, long paymentNumber) {
            super(PaymentHandler.sagaIdOf(key), userId, amount, paymentNumber);
            this.key = key;
            this.expiresInMs = expiresInMs;
            this.expiresAt = expiresAt;
        }

        String key() {
            return key;
        }

        ReserveResult reserveResult() {
            return new ReserveResult(paymentId(), amount());
        }

        long expiresInMs() {
            return expiresInMs;
        }

        long expiresAt() {
            return expiresAt;
        }

        synchronized Hold hold() {
            return hold;
        }

        /** The hold as of {@code now}, without resolving it: one past its deadline shows as expired. */
        synchronized Hold holdAt(long now) {
            return hold == Hold.RESERVED && now >= expiresAt ? Hold.EXPIRED : hold;
        }

        /** Resolves the hold, once; a capture takes {@code captured}, never more than is held. */
        synchronized void resolve(Hold to, String captured) {
            if (hold != Hold.RESERVED || to == Hold.RESERVED) {
                throw new BrokenInvariant(Invariant.HOLD_RESOLVED_ONCE, paymentId() + " is " + hold.wire() + ", and would be " + to.wire());
            }
            if (captured != null && new BigDecimal(captured).compareTo(new BigDecimal(amount())) > 0) {
                throw new BrokenInvariant(Invariant.CAPTURE_WITHIN_HOLD, "a capture of " + captured + " of " + paymentId() + ", which holds " + amount());
            }
            this.hold = to;
            this.captured = captured;
        }

        synchronized String captured() {
            return captured;
        }

        @Override
        String ledger() {
            return captured;
        }

        @Override
        synchronized PaymentView view(long now) {
            return new PaymentView(holdAt(now).wire(), paymentId(), null, amount(), captured == null ? Amount.ZERO.text() : captured, refundedSoFar());
        }
    }

    /** A capture key's final entry: its params as first sent (each may be absent) and what it captured. */
    record Captured(String paymentId, String amount, CaptureResult result) implements Entry {
    }

    /** A void key's final entry: its payment_id as first sent (may be absent) and what it released. */
    record Voided(String paymentId, VoidResult result) implements Entry {
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

        static String substring(byte[] text, int from, int to) {
            if (text[0] == ONE_BYTE) {
                return new String(text, 1 + from, to - from, StandardCharsets.ISO_8859_1);
            }
            char[] chars = new char[to - from];
            for (int i = from; i < to; i++) {
                chars[i - from] = (char) ((text[1 + 2 * i] & 0xff) << 8 | text[2 + 2 * i] & 0xff);
            }
            return new String(chars);
        }
    }

    /** The node's payments by number (p1 is slot 1). Numbers are dense, so an array beats a hash map. */
    static final class PaymentsByNumber {
        private volatile Charged[] slots = new Charged[1 << 10];

        synchronized void add(long paymentNumber, Charged payment) {
            int number = Math.toIntExact(paymentNumber);
            Charged[] current = slots;
            if (number >= current.length) {
                current = Arrays.copyOf(current, Math.max(2 * current.length, number + 1));
            }
            current[number] = payment;
            slots = current;   // the volatile write publishes the new slot to readers
        }

        /** The payment with this id if this node made it, else null. */
        Charged get(String paymentId) {
            long number = Charged.paymentNumber(paymentId);
            return number < 0 ? null : get(number);
        }

        Charged get(long number) {
            Charged[] current = slots;
            return number < current.length ? current[(int) number] : null;
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
            return new RefundResult(refundNumber == NOTHING ? null : refundId(refundNumber), refunded());
        }

        /** Refund ids are r1, r2, ... in the order refunds happen. */
        static String refundId(long number) {
            return "r" + number;
        }

        long refundNumber() {
            return refundNumber;
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

    /** A charge key closed by a compensation that came first: that step is never charged. */
    enum Compensated implements Entry {
        STEP
    }

    /**
     * A charge key's final entry that is a refusal kept as the step's result (a mode's: --balance declines a
     * charge): a retry with the same params gets the same error, a compensation of the step refunds nothing,
     * and PaymentStatus shows its status.
     */
    interface Refusal extends Entry {
        /** {@link #expiresInMs} of a refused charge (a refused reservation's is its expires_in_ms, -1 when not given). */
        long OF_A_CHARGE = -2;

        String userId();

        String amount();

        /** Whether it refused a charge ({@link #OF_A_CHARGE}) or a reservation, and that reservation's expires_in_ms param. */
        default long expiresInMs() {
            return OF_A_CHARGE;
        }

        default boolean ofReservation() {
            return expiresInMs() != OF_A_CHARGE;
        }

        RpcError error();

        String status();
    }

    // ---------------------------------------------------------------------------------------------
    // 3. The node: the loop that feeds the table, a line's trip from stdin to the table
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
    /** Where checked requests go: this node's own table ({@link LocalService}) unless a mode chose another. */
    private final Service service;
    /** Set by init; until then a reply is sent from the request's {@code dest}. */
    private String nodeId;
    private long lineNumber;

    /** {@code service} makes the service that requests go to, writing its replies to this node's reply writer. */
    PaymentNode(OutputStream stdout, Log log, Function<ReplyWriter, Service> service) {
        this.replies = new ReplyWriter(stdout);
        this.log = log;
        this.service = service.apply(replies);
    }

    /** The card's node: one table, every request handled at once, in input order. */
    static PaymentNode serving(PaymentHandler table, OutputStream stdout, Log log) {
        return new PaymentNode(stdout, log, replies -> new LocalService(table, replies, log));
    }

    /** The card's node alone: no options (the command line, with every mode, is the main beside this file that run.sh starts). */
    public static void main(String[] args) {
        Log log = new Log(System.err, false);
        PaymentNode node = serving(new PaymentHandler(log, Journal.NONE), new FileOutputStream(FileDescriptor.out), log);
        System.exit(node.serve(new FileInputStream(FileDescriptor.in)));
    }

    /** Serves every line of {@code in}, one after the other, in input order; returns the exit status: 0 at end of input, else a stop's. */
    int serve(InputStream in) {
        LineReader lines = new LineReader(service.input(in), MAX_LINE_BYTES, replies);
        try {
            while (lines.next()) {
                handleLine(lines.buf, lines.lineStart, lines.lineEnd - lines.lineStart, lines.tooLongPrefix, lines.tooLongLength);
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
        } catch (RuntimeException bug) {
            // A bug outside any request's own handling (a mode's timed work, a reply to the node's own message):
            // what was answered before still goes out, and the node stops with a status rather than a stack trace on stdout.
            replies.flushQuietly();
            log.error("stopping: internal error", bug);
            return 1;
        }
    }

    /**
     * Where checked requests go: this node's own table ({@link LocalService}, the card's), or a mode's
     * service that wraps or replaces it. Each answers with the {@link Reply} the node then writes; a service
     * that answers later (a cluster waiting for its store) returns {@link Reply#LATER} and writes it itself.
     * Everything a mode needs from the node comes through here, so that the card's path never passes
     * through a mode's code.
     */
    interface Service {
        Reply charge(Envelope reply, ChargeRequest request) throws IOException;

        Reply refund(Envelope reply, RefundRequest request) throws IOException;

        Reply status(Envelope reply, StatusRequest request) throws IOException;

        Reply reserve(Envelope reply, ReserveRequest request) throws IOException;

        Reply capture(Envelope reply, CaptureRequest request) throws IOException;

        Reply voidHold(Envelope reply, VoidRequest request) throws IOException;

        /** A type the card does not know: a mode's own message reads what it needs from its {@code line}; else error 10. */
        default Reply other(Envelope reply, String type, byte[] line, int start, int length) throws IOException {
            throw new RpcError(Reason.UNSUPPORTED_TYPE, "unsupported message type: " + type);
        }

        /** init names the node ({@code nodeIds}: the nodes it names, its strings, null when none); refusing it, a service changes nothing. */
        void init(String nodeId, List<String> nodeIds) throws IOException;

        /** A reply from {@code from} to a message this node sent (a mode's own request); false when it is not one it waits for. */
        default boolean completes(String from, byte[] line, int start, int length) throws IOException {
            return false;
        }

        /** What the loop reads: stdin as it is, or a stream of the mode's that does timed work while stdin is quiet. */
        default InputStream input(InputStream stdin) {
            return stdin;
        }

        /** The end of input: what the service still owes goes out, and what it holds is released. */
        default void close() throws IOException {
        }
    }

    /** A reply a service made: the node writes it to its reply writer. */
    interface Reply {
        /** The reply of a service that answers later, by itself. */
        Reply LATER = replies -> { };

        void writeTo(ReplyWriter replies) throws IOException;
    }

    /** A service's request to end the node's run at once, with this exit status (a journal that cannot open, an injected crash). */
    static class Stop extends IOException {
        private static final long serialVersionUID = 1L;
        final int status;

        Stop(String message, int status) {
            super(message);
            this.status = status;
        }
    }

    /**
     * Splits a byte stream into lines. It holds at most {@code maxLine} bytes of any one line (the
     * rest of a longer line is read and dropped), and it flushes the replies before every read that
     * could block: replies go out in big batches under a burst, and none is left waiting in a buffer
     * while the node waits for input. The current line is {@code buf[lineStart, lineEnd)}, or, when it
     * was longer than {@code maxLine}, its first {@code maxLine} bytes are {@code tooLongPrefix}.
     */
    static final class LineReader {
        private static final int CHUNK = 64 * 1024;

        private final InputStream in;
        private final int maxLine;
        private final Flushable beforeBlocking;
        byte[] buf = new byte[CHUNK];
        private int pos;        // start of the unread bytes
        private int limit;      // end of the unread bytes
        private int scanned;    // bytes from pos on already known to hold no newline
        private boolean eof;
        int lineStart;
        int lineEnd;
        byte[] tooLongPrefix;
        long tooLongLength;

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

        private boolean takeLine(int end, int next) {
            lineStart = pos;
            lineEnd = end;
            pos = next;
            scanned = 0;
            return true;
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

    /** One line's whole trip; {@code tooLongPrefix} is the first megabyte of a line over the limit, else null. */
    void handleLine(byte[] line, int start, int length, byte[] tooLongPrefix, long tooLongLength) throws IOException {
        lineNumber++;
        if (tooLongPrefix != null) {
            refuseTooLongLine(tooLongPrefix, tooLongLength);
            return;
        }
        if (isBlank(line, start, start + length)) {
            return;
        }
        RawMessage message = new RawMessage();
        try {
            parse(line, start, length, message);
        } catch (IOException | RuntimeException e) {
            refuseUnreadable(message, e instanceof DuplicateKey ? Reason.MALFORMED_REQUEST : Reason.UNREADABLE_LINE, plainReason(e), line, start, length);
            return;
        }
        if (message.body == null || !isString(message.src)) {
            String why = !isString(message.src) ? (message.src == null ? "missing src" : "src must be a string")
                    : message.bodyToken == null ? "missing body" : "body must be an object";
            refuseUnreadable(message, Reason.UNREADABLE_LINE, why, line, start, length);
            return;
        }
        dispatch(message, line, start, length);
    }

    /** Blank lines are skipped (spaces, tabs and a CR before the newline). */
    static boolean isBlank(byte[] buf, int from, int to) {
        for (int i = from; i < to; i++) {
            byte b = buf[i];
            if (b != ' ' && b != '\t' && b != '\r') {
                return false;
            }
        }
        return true;
    }

    static final class RawMessage {
        Value src;
        Value dest;
        JsonToken bodyToken;   // null when there is no body
        RawBody body;          // null when missing or not an object
        boolean typeOutside;   // a "type" next to src: a body pasted without its envelope
    }

    static final class RawBody {
        Value type;
        Value msgId;
        Value inReplyTo;   // set: this is a reply to something this node sent, never a request
        Value nodeId;
        List<String> nodeIds;   // the node ids init named (null: none)
        Value sagaId;
        Value step;
        Value compensating;
        RawParams params;   // null when missing
    }
    /**
     * Reads one line into {@code message}. Fields fill in as they are read, so a line cut short still
     * leaves what came before the cut. A key given twice in one object, anywhere, stops it ({@link DuplicateKey}).
     */
    static void parse(byte[] line, int start, int length, RawMessage message) throws IOException {
        try (JsonParser parser = JSON.createParser(line, start, length)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                throw new JsonParseException(parser, "a JSON value, but not an object");
            }
            FieldNames names = new FieldNames();
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = names.add(parser);
                JsonToken token = parser.nextToken();
                switch (name) {
                    case "src" -> message.src = Value.read(parser, token);
                    case "dest" -> message.dest = Value.read(parser, token);
                    case "type" -> {
                        message.typeOutside = true;
                        skip(parser, token);
                    }
                    case "body" -> {
                        // Attached before it is filled in, so that a line cut short keeps what its body began with.
                        message.bodyToken = token;
                        message.body = token == JsonToken.START_OBJECT ? new RawBody() : null;
                        if (message.body != null) {
                            parseBody(parser, message.body);
                        } else {
                            skip(parser, token);
                        }
                    }
                    default -> skip(parser, token);
                }
            }
            if (parser.nextToken() != null) {
                throw new JsonParseException(parser, "more data after the JSON object");
            }
        }
    }

    /**
     * The names one JSON object gave so far. A payment service must not guess which of two values the sender
     * meant (GitHub issue 22), so a name given twice stops the parse. A request's objects have a handful of
     * names each: those are compared in a row, with no hashing; past {@link #FEW}, a set keeps an object of
     * 100,000 names linear. (Jackson's STRICT_DUPLICATE_DETECTION makes a set per object from its third name
     * on: on tests/bench.sh's 2M workload it took 7% more CPU and 40% more peak memory; this takes about 1%.)
     */
    static final class FieldNames {
        private static final int FEW = 8;
        private final String[] few = new String[FEW];
        private int count;
        private Set<String> many;

        /** The parser's current field name, refused if this object gave it before. */
        String add(JsonParser parser) throws IOException {
            String name = parser.currentName();
            if (many == null) {
                for (int i = 0; i < count; i++) {
                    if (few[i].equals(name)) {
                        throw new DuplicateKey(parser, name);
                    }
                }
                if (count < FEW) {
                    few[count++] = name;
                    return name;
                }
                many = new HashSet<>(Arrays.asList(few));
            }
            if (!many.add(name)) {
                throw new DuplicateKey(parser, name);
            }
            return name;
        }
    }

    /** A key given twice in one object: error 12 naming it (docs/PROTOCOL.md section 5). */
    static final class DuplicateKey extends JsonParseException {
        private static final long serialVersionUID = 1L;

        DuplicateKey(JsonParser parser, String name) {
            super(parser, "duplicate key " + abbreviate(name));
        }
    }

    /** A JSON scalar as written (numbers keep their exact text), or the bare token of an object or array. */
    record Value(JsonToken token, String text) {
        static Value read(JsonParser parser, JsonToken token) throws IOException {
            skip(parser, token);
            return new Value(token, token.isScalarValue() ? parser.getText() : null);
        }
    }

    /**
     * Skips the value that starts at {@code token}, as {@code skipChildren} does, but looks at the names of every
     * object inside it: a key given twice is refused wherever it is, even in a part the node does not read.
     */
    private static void skip(JsonParser parser, JsonToken token) throws IOException {
        if (token == JsonToken.START_OBJECT) {
            FieldNames names = new FieldNames();
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                names.add(parser);
                skip(parser, parser.nextToken());
            }
        } else if (token == JsonToken.START_ARRAY) {
            for (JsonToken item = parser.nextToken(); item != JsonToken.END_ARRAY && item != null; item = parser.nextToken()) {
                skip(parser, item);
            }
        }
    }

    private static void parseBody(JsonParser parser, RawBody body) throws IOException {
        FieldNames names = new FieldNames();
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String name = names.add(parser);
            JsonToken token = parser.nextToken();
            switch (name) {
                case "type" -> body.type = Value.read(parser, token);
                case "msg_id" -> body.msgId = Value.read(parser, token);
                case "in_reply_to" -> body.inReplyTo = Value.read(parser, token);
                case "node_id" -> body.nodeId = Value.read(parser, token);
                case "node_ids" -> body.nodeIds = stringItems(parser, token);
                case "saga_id" -> body.sagaId = Value.read(parser, token);
                case "step" -> body.step = Value.read(parser, token);
                case "compensating" -> body.compensating = Value.read(parser, token);
                case "params" -> {
                    body.params = new RawParams(token);
                    if (token == JsonToken.START_OBJECT) {
                        parseParams(parser, body.params);
                    } else {
                        skip(parser, token);
                    }
                }
                default -> skip(parser, token);
            }
        }
    }

    static final class RawParams {
        final JsonToken token;   // what params was: an object (its fields below), or null, a string, ...
        Value userId;
        Value amount;
        Value paymentId;
        Value expiresInMs;

        RawParams(JsonToken token) {
            this.token = token;
        }
    }

    private static void parseParams(JsonParser parser, RawParams params) throws IOException {
        FieldNames names = new FieldNames();
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String name = names.add(parser);
            JsonToken token = parser.nextToken();
            switch (name) {
                case "user_id" -> params.userId = Value.read(parser, token);
                case "amount" -> params.amount = Value.read(parser, token);
                case "payment_id" -> params.paymentId = Value.read(parser, token);
                case "expires_in_ms" -> params.expiresInMs = Value.read(parser, token);
                default -> skip(parser, token);
            }
        }
    }

    /** The strings of an array (anything else in it is skipped); null when it is no array. */
    private static List<String> stringItems(JsonParser parser, JsonToken token) throws IOException {
        if (token != JsonToken.START_ARRAY) {
            skip(parser, token);
            return null;
        }
        List<String> items = new ArrayList<>();
        for (JsonToken item = parser.nextToken(); item != JsonToken.END_ARRAY && item != null; item = parser.nextToken()) {
            if (item == JsonToken.VALUE_STRING) {
                items.add(parser.getText());
            }
            skip(parser, item);
        }
        return items;
    }


    static boolean isString(Value value) {
        return value != null && value.token() == JsonToken.VALUE_STRING;
    }

    /** Who a reply goes to: from this node, to the request's src, in reply to its msg_id (null: none). */
    record Envelope(String from, String to, Long inReplyTo) {
        Envelope withFrom(String node) {
            return new Envelope(node, to, inReplyTo);
        }
    }

    /** Sends a checked request where it goes, and its reply (or its refusal) back; {@code line} is for the types a mode reads itself. */
    private void dispatch(RawMessage message, byte[] line, int start, int length) throws IOException {
        RawBody body = message.body;
        if (!isMissing(body.inReplyTo)) {
            // A reply to something this node sent. Answering it (even with an error) would let two nodes
            // bounce errors at each other for ever.
            if (service.completes(message.src.text(), line, start, length)) {
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
            if (log.verbose) {
                log.verbose("line " + lineNumber + " from " + reply.to() + ": " + type + stepForLog(body));
            }
            Reply answer = switch (type) {
                case "ChargePayment" -> service.charge(reply, ChargeRequest.from(body));
                case "RefundPayment" -> service.refund(reply, RefundRequest.from(body));
                case "PaymentStatus" -> service.status(reply, StatusRequest.from(body));
                case "ReservePayment" -> service.reserve(reply, ReserveRequest.from(body));
                case "CapturePayment" -> service.capture(reply, CaptureRequest.from(body));
                case "VoidPayment" -> service.voidHold(reply, VoidRequest.from(body));
                case "init" -> init(reply, message, body);
                default -> service.other(reply, type, line, start, length);
            };
            answer.writeTo(replies);
        } catch (RpcError refused) {
            replies.error(reply, refused);
        } catch (BrokenInvariant broken) {
            log.error("line " + lineNumber + ": " + broken.getMessage() + "; answered with code 13", broken);
            replies.error(reply, new RpcError(Reason.INTERNAL_ERROR, "internal error: " + broken.getMessage()));
        } catch (RuntimeException bug) {
            log.error("line " + lineNumber + ": internal error, answered with code 13", bug);
            replies.error(reply, new RpcError(Reason.INTERNAL_ERROR, "internal error: " + bug));
        }
    }

    /** JSON null counts as missing, like a key that is not there. */
    static boolean isMissing(Value value) {
        return value == null || value.token() == JsonToken.VALUE_NULL;
    }

    private Envelope replyEnvelope(RawMessage message, RawBody body) {
        String from = nodeId != null ? nodeId : stringOrNull(message.dest);
        return new Envelope(from, message.src.text(), longOrNull(body.msgId));
    }

    static String stringOrNull(Value value) {
        return isString(value) ? value.text() : null;
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

    static String requiredString(Value value, String name) {
        if (isMissing(value)) {
            throw malformed("missing " + name);
        }
        if (!isString(value) || value.text().isEmpty()) {
            throw malformed(name + " must be a non-empty string");
        }
        return value.text();
    }

    /** A checked request that changes a key (all but PaymentStatus): a cluster logs it and sends it to the table later. */
    interface Request {
        String sagaId();

        long step();

        /** Its idempotency key. */
        String key();

        /** Sends it to the service's method of its type. */
        Reply sendTo(Service service, Envelope reply) throws IOException;
    }

    /** A ChargePayment, checked: docs/PROTOCOL.md, section 3. */
    record ChargeRequest(String sagaId, long step, String userId, Amount amount) implements Request {
        static ChargeRequest from(RawBody body) {
            String sagaId = requiredString(body.sagaId, "saga_id");
            long step = requiredStep(body.step);
            RawParams params = paramsObject(body, true);
            return new ChargeRequest(sagaId, step,
                    requiredString(params.userId, "params.user_id"),
                    Amount.parse(params.amount, "params.amount"));
        }

        @Override
        public String key() {
            return PaymentHandler.chargeKey(sagaId, step);
        }

        @Override
        public Reply sendTo(Service service, Envelope reply) throws IOException {
            return service.charge(reply, this);
        }
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
            if (text.length() > 3 * MAX_DIGITS) {
                throw outOfRange(name, text);
            }
            BigDecimal decimal;
            try {
                decimal = new BigDecimal(text);
            } catch (NumberFormatException exponentOverflow) {
                throw outOfRange(name, text);
            }
            if (decimal.signum() <= 0) {
                throw malformed(name + " must be greater than 0, got " + text);
            }
            if (!withinDigits(decimal)) {
                throw outOfRange(name, text);
            }
            return new Amount(text, decimal);
        }

        /** At most {@link #MAX_DIGITS} digits before the decimal point and as many after it: every amount this service takes. */
        static boolean withinDigits(BigDecimal decimal) {
            return decimal.scale() <= MAX_DIGITS && decimal.precision() - decimal.scale() <= MAX_DIGITS;
        }

        private static RpcError outOfRange(String name, String text) {
            return malformed(name + " " + abbreviate(text) + " is out of range: at most " + MAX_DIGITS
                    + " digits before the decimal point and " + MAX_DIGITS + " after it");
        }

        /** Whether a stored amount's text has this value (99.99 equals 99.990). */
        boolean sameValue(String text) {
            return value.compareTo(new BigDecimal(text)) == 0;
        }
    }

    /** This node's own table: every request is handled at once, in input order. */
    static final class LocalService implements Service {
        private final PaymentHandler table;
        private final Log log;

        LocalService(PaymentHandler table, ReplyWriter replies, Log log) {
            this.table = table;
            this.log = log;
            replies.commitFirst(table.journal());   // no reply leaves before the records behind it are durable
        }

        PaymentHandler table() {
            return table;
        }

        @Override
        public Reply charge(Envelope reply, ChargeRequest request) {
            Served<ChargeResult> served = table.charge(request);
            verboseCacheHit(served, request);
            return replies -> replies.chargeOk(reply, request, served);
        }

        @Override
        public Reply refund(Envelope reply, RefundRequest request) {
            Served<RefundResult> served = table.refund(request);
            verboseCacheHit(served, request);
            return replies -> replies.refundOk(reply, request, served);
        }

        @Override
        public Reply status(Envelope reply, StatusRequest request) {
            StepStatus status = table.status(request);
            return replies -> replies.paymentStatusOk(reply, request, status);
        }

        @Override
        public Reply reserve(Envelope reply, ReserveRequest request) {
            Served<ReserveResult> served = table.reserve(request);
            verboseCacheHit(served, request);
            return replies -> replies.reserveOk(reply, request, served);
        }

        @Override
        public Reply capture(Envelope reply, CaptureRequest request) {
            Served<CaptureResult> served = table.capture(request);
            verboseCacheHit(served, request);
            return replies -> replies.captureOk(reply, request, served);
        }

        @Override
        public Reply voidHold(Envelope reply, VoidRequest request) {
            Served<VoidResult> served = table.voidHold(request);
            verboseCacheHit(served, request);
            return replies -> replies.voidOk(reply, request, served);
        }

        /** The key is made only for a cache hit: a first attempt's path builds no string it does not need. */
        private void verboseCacheHit(Served<?> served, Request request) {
            if (served.replayed()) {
                log.verboseCacheHit(request.key());
            }
        }

        @Override
        public void init(String nodeId, List<String> nodeIds) {
            if (nodeIds != null && nodeIds.size() > 1) {
                log.warn("init names " + nodeIds.size() + " nodes, and this node shares no state with the others:"
                        + " a retry sent to another node may charge again");
            }
        }

        @Override
        public void close() throws IOException {
            table.journal().close();
        }
    }

    static String abbreviate(String text) {
        return text.length() > 50 ? text.substring(0, 20) + "...(" + text.length() + " characters)" : text;
    }

    static boolean isBoolean(Value value) {
        return value.token() == JsonToken.VALUE_TRUE || value.token() == JsonToken.VALUE_FALSE;
    }

    static RpcError malformed(String text) {
        return new RpcError(Reason.MALFORMED_REQUEST, text);
    }

    private static String stepForLog(RawBody body) {
        return isString(body.sagaId) && body.step != null ? " " + body.sagaId.text() + ":step" + body.step.text() : "";
    }

    private Reply init(Envelope reply, RawMessage message, RawBody body) throws IOException {
        String id = isMissing(body.nodeId) ? stringOrNull(message.dest) : requiredString(body.nodeId, "node_id");
        service.init(id, body.nodeIds);   // before the node takes the id: an id the service refuses changes nothing
        if (id != null) {
            // A repeated init only renames the node: the idempotency table is untouched.
            nodeId = id;
        }
        log.verbose("initialized as " + nodeId);
        Envelope renamed = reply.withFrom(nodeId);   // init_ok already comes from the new name
        return replies -> replies.initOk(renamed);
    }

    /** A RefundPayment, checked: docs/PROTOCOL.md, section 4. Both params are optional (null: not given). */
    record RefundRequest(String sagaId, long step, String paymentId, Amount amount) implements Request {
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
            return PaymentHandler.chargeKey(sagaId, step);
        }

        /** Its own key space: a refund is never answered with a charge's result, nor the other way round. */
        @Override
        public String key() {
            return chargeKey() + PaymentHandler.REFUND_SUFFIX;
        }

        @Override
        public Reply sendTo(Service service, Envelope reply) throws IOException {
            return service.refund(reply, this);
        }
    }

    /** A PaymentStatus, checked: it names a step and reads it. */
    record StatusRequest(String sagaId, long step) {
        static StatusRequest from(RawBody body) {
            return new StatusRequest(requiredString(body.sagaId, "saga_id"), requiredStep(body.step));
        }

        String chargeKey() {
            return PaymentHandler.chargeKey(sagaId, step);
        }

        String refundKey() {
            return chargeKey() + PaymentHandler.REFUND_SUFFIX;
        }
    }

    /** A ReservePayment, checked: docs/PROTOCOL.md section 11. {@code expiresInMs}: null when not given. */
    record ReserveRequest(String sagaId, long step, String userId, Amount amount, Long expiresInMs) implements Request {
        static ReserveRequest from(RawBody body) {
            ChargeRequest charge = ChargeRequest.from(body);   // the same params as a charge's, checked alike
            Value ttl = body.params.expiresInMs;
            Long expiresInMs = isMissing(ttl) ? null : longOrNull(ttl);
            if (!isMissing(ttl) && (expiresInMs == null || expiresInMs <= 0)) {
                throw malformed("params.expires_in_ms must be a positive integer (milliseconds)");
            }
            return new ReserveRequest(charge.sagaId(), charge.step(), charge.userId(), charge.amount(), expiresInMs);
        }

        /** The step's own key, shared with ChargePayment: a step is charged or reserved. */
        @Override
        public String key() {
            return PaymentHandler.chargeKey(sagaId, step);
        }

        /** expires_in_ms as kept in an entry: -1 when not given. */
        long expiresInMsOrAbsent() {
            return expiresInMs == null ? -1 : expiresInMs;
        }

        @Override
        public Reply sendTo(Service service, Envelope reply) throws IOException {
            return service.reserve(reply, this);
        }
    }

    /** A CapturePayment, checked: both params are optional (null: not given). */
    record CaptureRequest(String sagaId, long step, String paymentId, Amount amount) implements Request {
        static CaptureRequest from(RawBody body) {
            RefundRequest shape = RefundRequest.from(body);   // the same fields as a refund's, checked alike
            return new CaptureRequest(shape.sagaId(), shape.step(), shape.paymentId(), shape.amount());
        }

        String chargeKey() {
            return PaymentHandler.chargeKey(sagaId, step);
        }

        @Override
        public String key() {
            return chargeKey() + PaymentHandler.CAPTURE_SUFFIX;
        }

        @Override
        public Reply sendTo(Service service, Envelope reply) throws IOException {
            return service.capture(reply, this);
        }
    }

    /** A VoidPayment, checked: payment_id is optional (null: not given); an amount is not its to give. */
    record VoidRequest(String sagaId, long step, String paymentId) implements Request {
        static VoidRequest from(RawBody body) {
            RefundRequest shape = RefundRequest.from(body);
            return new VoidRequest(shape.sagaId(), shape.step(), shape.paymentId());
        }

        String chargeKey() {
            return PaymentHandler.chargeKey(sagaId, step);
        }

        @Override
        public String key() {
            return chargeKey() + PaymentHandler.VOID_SUFFIX;
        }

        @Override
        public Reply sendTo(Service service, Envelope reply) throws IOException {
            return service.voidHold(reply, this);
        }
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
        if (text == null || e instanceof DuplicateKey) {
            return text == null ? e.getClass().getSimpleName() : text;   // our own words (a key may hold a line break)
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
        STEP_COMPENSATED(ErrorCode.ABORT),
        INSUFFICIENT_FUNDS(ErrorCode.ABORT),
        NO_RESERVATION(ErrorCode.ABORT),
        RESERVATION_VOIDED(ErrorCode.ABORT),
        RESERVATION_EXPIRED(ErrorCode.ABORT),
        ALREADY_CAPTURED(ErrorCode.ABORT),
        KEY_REUSED(ErrorCode.PRECONDITION_FAILED),
        REFUND_EXCEEDS_PAYMENT(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_FULLY_REFUNDED(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_NOT_OF_STEP(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_OF_ANOTHER_SAGA(ErrorCode.PRECONDITION_FAILED),
        CAPTURE_EXCEEDS_RESERVATION(ErrorCode.PRECONDITION_FAILED),
        PAYMENT_NOT_CAPTURED(ErrorCode.PRECONDITION_FAILED);

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

    // ---------------------------------------------------------------------------------------------
    // 4. Replies out, and flush; the log
    // ---------------------------------------------------------------------------------------------

    /**
     * Writes replies: keys in the order of docs/PROTOCOL.md, one reply per line. The layout is fixed, so the bytes
     * are written directly. Replies gather in a buffer and reach stdout in batches: when the input runs
     * dry ({@link #flush}) or the batch is full. Before any batch goes out, the journal makes the records
     * behind it durable, so that no reply ever tells of a charge that a crash could forget.
     */
    static final class ReplyWriter implements Flushable {
        private static final int BATCH_BYTES = 128 * 1024;

        private final OutputStream out;
        private Journal journal = Journal.NONE;
        private final JsonBytes json = new JsonBytes();
        private long nextMsgId;
        private boolean rendering;        // a reply is being rendered (render): no batch may take it out yet

        ReplyWriter(OutputStream out) {
            this.out = out;
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
            begin(to, "ChargePayment_ok", request.sagaId(), request.step());
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

        private void begin(Envelope to, String type, String sagaId, long step) {
            begin(to, type);
            json.field("saga_id");
            json.string(sagaId);
            json.field("step");
            json.number(step);
        }

        private void begin(Envelope to, String type) {
            json.ascii("{\"src\": ");
            json.string(to.from());
            json.ascii(", \"dest\": ");
            json.string(to.to());
            json.ascii(", \"body\": {\"type\": ");
            json.string(type);
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

        /** A full batch goes out, unless a reply is being rendered. */
        private void writeBatchIfFull() throws IOException {
            if (json.count >= BATCH_BYTES && !rendering) {
                writeBatch();
            }
        }

        @Override
        public void flush() throws IOException {
            writeBatch();
            out.flush();
        }

        private void writeBatch() throws IOException {
            journal.commit();
            json.writeLinesTo(out);
        }

        void refundOk(Envelope to, RefundRequest request, Served<RefundResult> served) throws IOException {
            begin(to, "RefundPayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": ");
            refundResult(served.result());
            if (served.replayed()) {
                json.ascii(", \"note\": \"already_refunded\"");
            }
            end(to);
        }

        /** PaymentStatus_ok: the step's status, its payment (when it has one) and its other keys' results (when they have one). */
        void paymentStatusOk(Envelope to, StatusRequest request, StepStatus status) throws IOException {
            begin(to, "PaymentStatus_ok", request.sagaId(), request.step());
            json.field("status");
            json.string(status.status());
            PaymentView payment = status.payment();
            if (payment != null) {
                json.ascii(", \"payment\": {\"payment_id\": ");
                json.string(payment.paymentId());
                if (payment.charged() != null) {
                    json.ascii(", \"charged\": ");
                    json.ascii(payment.charged());
                } else {
                    json.ascii(", \"reserved\": ");
                    json.ascii(payment.reserved());
                    json.ascii(", \"captured\": ");
                    json.ascii(payment.captured());
                }
                json.ascii(", \"refunded\": ");
                json.ascii(payment.refunded());
                json.ascii("}");
            }
            if (status.refund() != null) {
                json.ascii(", \"refund\": ");
                refundResult(status.refund());
            }
            if (status.capture() != null) {
                json.ascii(", \"capture\": ");
                captureResult(status.capture());
            }
            if (status.voided() != null) {
                json.ascii(", \"void\": ");
                voidResult(status.voided());
            }
            end(to);
        }

        void reserveOk(Envelope to, ReserveRequest request, Served<ReserveResult> served) throws IOException {
            begin(to, "ReservePayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": {\"payment_id\": ");
            json.string(served.result().paymentId());
            json.ascii(", \"reserved\": ");
            json.ascii(served.result().reserved());
            json.ascii("}");
            note(served, "cached_result");
            end(to);
        }

        void captureOk(Envelope to, CaptureRequest request, Served<CaptureResult> served) throws IOException {
            begin(to, "CapturePayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": ");
            captureResult(served.result());
            note(served, "already_captured");
            end(to);
        }

        void voidOk(Envelope to, VoidRequest request, Served<VoidResult> served) throws IOException {
            begin(to, "VoidPayment_ok", request.sagaId(), request.step());
            json.ascii(", \"result\": ");
            voidResult(served.result());
            note(served, "already_voided");
            end(to);
        }

        private void note(Served<?> served, String note) {
            if (served.replayed()) {
                json.ascii(", \"note\": \"");
                json.ascii(note);
                json.ascii("\"");
            }
        }

        private void captureResult(CaptureResult result) {
            json.ascii("{\"payment_id\": ");
            json.string(result.paymentId());
            json.ascii(", \"captured\": ");
            json.ascii(result.captured());
            json.ascii(", \"released\": ");
            json.ascii(result.released());
            json.ascii("}");
        }

        private void voidResult(VoidResult result) {
            json.ascii("{");
            if (result.paymentId() != null) {
                json.ascii("\"payment_id\": ");
                json.string(result.paymentId());
                json.ascii(", ");
            }
            json.ascii("\"released\": ");
            json.ascii(result.released());
            json.ascii("}");
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

        // What the modes need beyond the card's replies: a message of the node's own (a cluster's requests
        // to its store, a mode's own reply type), a msg_id range of its own, and a reply as bytes to write
        // later or again (injected faults).

        /** A message of this node's own: {@code fields} writes its fields after its type. Returns its msg_id. */
        long send(Envelope to, String type, Consumer<JsonBytes> fields) throws IOException {
            begin(to, type);
            fields.accept(json);
            return end(to);
        }

        /** msg_ids from here on start at {@code base}. */
        void startMsgIdsAt(long base) {
            nextMsgId = base;
        }

        /** A reply as the bytes of its line, written nowhere yet: it takes its msg_id now, in order. */
        byte[] render(Reply reply) throws IOException {
            int size = json.size();
            rendering = true;
            try {
                reply.writeTo(this);
            } finally {
                rendering = false;
            }
            byte[] line = Arrays.copyOfRange(json.array(), size, json.size());
            json.truncate(size);
            return line;
        }

        /** Writes a line rendered before, in the order of the replies around it. */
        void writeLine(byte[] line) throws IOException {
            json.bytes(line);
            writeBatchIfFull();
        }
    }

    /**
     * A growable byte buffer that writes JSON in the layout of Python's {@code json.dumps}: ASCII only,
     * {@code ", "} and {@code ": "} between items. Replies and journal records are both written with it.
     */
    static final class JsonBytes {
        private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);

        private byte[] buf = new byte[64 * 1024];
        int count;   // bytes held

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

        void put(int b) {
            if (count == buf.length) {
                buf = Arrays.copyOf(buf, buf.length * 2);
            }
            buf[count++] = (byte) b;
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

        /** The separator and name of an object's next field (never its first). */
        void field(String name) {
            ascii(", \"");
            ascii(name);
            ascii("\": ");
        }

        void number(long value) {
            ascii(Long.toString(value));
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

    static final class Log {
        private final PrintStream err;
        final boolean verbose;

        Log(PrintStream err, boolean verbose) {
            this.err = err;
            this.verbose = verbose;
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
