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
import payment.Faults.Drawn;
import payment.Faults.Fault;

/**
 * A service under injected faults (--faults): ChargePayment and RefundPayment draw at most one fault an
 * attempt. {@code fail} does nothing and answers 11; every other fault lets the work happen, then changes
 * what becomes of its reply, which the reply writer keeps back while the work runs, so that it can be
 * dropped, replaced, doubled or delayed. init and PaymentStatus are never faulted.
 */
final class FaultyService implements Service {
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

    /** The exit status of an injected crash (--faults crash=P): the work was done and journaled, no reply sent. */
    static final int EXIT_INJECTED_CRASH = 3;

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
}
