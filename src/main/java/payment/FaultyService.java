package payment;

import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.util.List;
import java.util.PriorityQueue;
import java.util.concurrent.TimeUnit;

import payment.Faults.Drawn;
import payment.Faults.Fault;

import static payment.PaymentNode.*;

/**
 * A service under injected faults (--faults): ChargePayment, RefundPayment, ReservePayment, CapturePayment and
 * VoidPayment draw at most one fault an attempt. {@code fail} does nothing and answers 11; every other fault lets the work happen, then changes
 * what becomes of its reply: dropped, replaced, doubled or delayed. init and PaymentStatus are never faulted.
 * A delayed reply is rendered at once (it takes its msg_id in order) and written when it is due, by the
 * node's own loop, which reads its input through a {@link TimedInput} that wakes up for it.
 */
final class FaultyService extends ServiceAround {
    private final Faults faults;
    private final ReplyWriter replies;
    private final Log log;
    private final DelayedReplies delayed = new DelayedReplies();
    /** Whether attempts draw faults now: from the start, or from the first init taken (see the constructor). */
    private boolean drawing;

    /**
     * {@code untilInit}: the inner service serves nothing before init (a per-node journal opens at init), so a request
     * before it draws no fault: it is refused 11 with nothing done, and a fault drawn for it could neither be recorded
     * nor be that attempt's (a crash there would repeat on every restart).
     */
    FaultyService(Service service, Faults faults, boolean untilInit, ReplyWriter replies, Log log) {
        super(service);
        this.drawing = !untilInit;
        this.faults = faults;
        this.replies = replies;
        this.log = log;
    }

    @Override
    public Reply charge(Envelope reply, ChargeRequest request) throws IOException {
        return withFault(reply, request.key(), () -> inner.charge(reply, request));
    }

    @Override
    public Reply refund(Envelope reply, RefundRequest request) throws IOException {
        return withFault(reply, request.key(), () -> inner.refund(reply, request));
    }

    @Override
    public Reply reserve(Envelope reply, ReserveRequest request) throws IOException {
        return withFault(reply, request.key(), () -> inner.reserve(reply, request));
    }

    @Override
    public Reply capture(Envelope reply, CaptureRequest request) throws IOException {
        return withFault(reply, request.key(), () -> inner.capture(reply, request));
    }

    @Override
    public Reply voidHold(Envelope reply, VoidRequest request) throws IOException {
        return withFault(reply, request.key(), () -> inner.voidHold(reply, request));
    }

    @Override
    public InputStream input(InputStream stdin) {
        return new TimedInput(inner.input(stdin), () -> delayed.writeDue(replies));
    }

    /** Delayed replies still leave, each at its time, before the node exits. */
    @Override
    public void close() throws IOException {
        delayed.drain(replies);
        inner.close();
    }

    /** A request's work, with what it answers or refuses. */
    private interface Work {
        Reply run() throws IOException;
    }

    @Override
    public void init(String nodeId, List<String> nodeIds) throws IOException {
        inner.init(nodeId, nodeIds);
        drawing = true;   // the inner service took the init: from now on it serves
    }

    private Reply withFault(Envelope reply, String key, Work work) throws IOException {
        if (!drawing) {
            return work.run();
        }
        Drawn drawn = draw(faults, key, reply, log);
        if (drawn == null) {
            return work.run();
        }
        Reply done;
        try {
            done = work.run();
        } catch (RpcError refused) {
            done = writer -> writer.error(reply, refused);
        }
        return afterWork(drawn, reply, done, delayed);
    }

    /**
     * The attempt's fault, drawn and logged before its work; {@code fail} is refused here, with nothing done; null: none.
     * (A cluster draws on the node that received the attempt, before appending: nothing of a {@code fail} reaches the log.)
     */
    static Drawn draw(Faults faults, String key, Envelope reply, Log log) {
        Drawn drawn = faults.draw(key);
        if (drawn != null) {
            Fault fault = drawn.fault();
            log.event("fault: " + fault.option + (fault == Fault.DELAY ? " " + drawn.delayMillis() + "ms" : "")
                    + " " + key + " msg_id " + (reply.inReplyTo() == null ? "none" : reply.inReplyTo()));
            if (fault == Fault.FAIL) {
                throw new RpcError(Reason.INJECTED_FAIL, "injected fault: fail: nothing was done; safe to retry");
            }
        }
        return drawn;
    }

    /**
     * What a fault makes of a request's answer once its work is done: dropped, replaced by an indefinite error,
     * doubled, delayed, or the process ends. (A cluster draws its faults before appending and comes here once the
     * log has applied the request.)
     */
    static Reply afterWork(Drawn drawn, Envelope reply, Reply answer, DelayedReplies delayed) throws IOException {
        return switch (drawn.fault()) {
            case DROP -> Reply.LATER;   // never
            case UNKNOWN -> writer -> writer.error(reply, new RpcError(Reason.INJECTED_UNKNOWN,
                    "injected fault: unknown outcome: the request may or may not have been done; a retry will tell"));
            case DELAY -> writer -> delayed.add(writer.render(answer), drawn.delayMillis());   // later replies may overtake it
            case DUPLICATE -> writer -> {
                byte[] line = writer.render(answer);
                writer.writeLine(line);
                writer.writeLine(line);
            };
            case CRASH -> throw new Stop(null, EXIT_INJECTED_CRASH);   // the fault's line said it all
            default -> throw new IllegalStateException("fault " + drawn.fault());
        };
    }

    /**
     * Replies rendered at once (each took its msg_id in order) and waiting for their time, soonest first, then in
     * the order they were made. The node's loop writes them when they are due, from {@link TimedInput}'s wake-ups.
     */
    static final class DelayedReplies {
        private final PriorityQueue<Delayed> waiting = new PriorityQueue<>();
        private long made;

        void add(byte[] line, long millis) {
            waiting.add(new Delayed(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(millis), made++, line));
        }

        /** Writes the replies that are due, and flushes them; returns the nanoseconds until the next is due, -1 for none. */
        long writeDue(ReplyWriter replies) throws IOException {
            boolean wrote = false;
            while (!waiting.isEmpty() && waiting.peek().dueNanos() - System.nanoTime() <= 0) {
                replies.writeLine(waiting.poll().line());
                wrote = true;
            }
            if (wrote) {
                replies.flush();
            }
            return waiting.isEmpty() ? -1 : Math.max(1, waiting.peek().dueNanos() - System.nanoTime());
        }

        /** Waits for every reply's time and writes it: at the end of input, none is lost. */
        void drain(ReplyWriter replies) throws IOException {
            while (!waiting.isEmpty()) {
                long wait = writeDue(replies);
                if (wait > 0) {
                    try {
                        TimeUnit.NANOSECONDS.sleep(wait);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new InterruptedIOException("interrupted while delayed replies were pending");
                    }
                }
            }
        }
    }

    /** A reply's line, and when it is due. */
    private record Delayed(long dueNanos, long order, byte[] line) implements Comparable<Delayed> {
        @Override
        public int compareTo(Delayed other) {
            int byTime = Long.compare(dueNanos - other.dueNanos, 0);
            return byTime != 0 ? byTime : Long.compare(order, other.order);
        }
    }

    /** The exit status of an injected crash (--faults crash=P): the work was done and journaled, no reply sent. */
    static final int EXIT_INJECTED_CRASH = 3;
}
