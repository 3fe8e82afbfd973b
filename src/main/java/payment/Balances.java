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

/** Per-user balances (--balance), exact decimals; each user's updates are atomic. */
final class Balances {
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

    /** What BalanceRead answers: a user's balance, and the totals charged and refunded that made it. */
    record Account(BigDecimal balance, BigDecimal charged, BigDecimal refunded) {
        Account afterCharge(BigDecimal amount) {
            return new Account(balance.subtract(amount), charged.add(amount), refunded);
        }

        Account afterRefund(BigDecimal amount) {
            return new Account(balance.add(amount), charged, refunded.add(amount));
        }
    }
}
