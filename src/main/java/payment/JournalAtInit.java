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
import static payment.FileJournal.NODE_ID;
import static payment.FileJournal.journalProblem;
import static payment.FileJournal.tableFromJournal;

/**
 * A node whose journal is its own file, named by its id (docs/PROTOCOL.md, section 7): the journal opens
 * at the first init, before init_ok; until then requests get error 11. A journal that cannot be opened
 * then stops the node (status 2) rather than let it serve from memory.
 */
final class JournalAtInit extends LocalService {
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
