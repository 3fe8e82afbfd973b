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
import payment.Balances.Account;

/**
 * The table with balances (--balance): every user starts with the same amount, a charge above what is
 * left is declined, and the decline is that step's result; a refund pays back.
 */
final class FundedPaymentHandler extends PaymentHandler {
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
