package payment;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;

import java.io.IOException;
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
import java.util.Arrays;
import java.util.EnumSet;
import java.util.HexFormat;
import java.util.List;
import java.util.Set;
import java.util.zip.CRC32;

import payment.Faults.Fault;
import payment.FundedPaymentHandler.Declined;

import static payment.CommandLine.table;
import static payment.PaymentNode.*;

/**
 * An append-only file of state changes, one record a line: the CRC-32 of the record in eight hex
 * digits, a space, and the record as a JSON array ({@code ["charge", key, user_id, amount, number]},
 * {@code ["refund", key, payment_id, amount, refunded, number, payment_number]}, {@code ["close", key]},
 * {@code ["decline", key, user_id, amount, reason]}, the two-phase records (docs/JOURNAL.md), and with --faults
 * {@code ["fault", key, attempt, kind]}).
 * Records gather in memory and {@link #commit} writes and forces them to disk once per batch of
 * replies (group commit). On start the records are replayed; a torn tail, the trace of a crash in
 * mid-write, is cut off with a warning, while a bad record followed by good ones stops the node:
 * that is damage, not a crash, and dropping good records would forget answered charges.
 */
final class FileJournal implements Journal {
    private static final int MAX_RECORD_BYTES = 16 * MAX_LINE_BYTES;

    /** The record kinds, as docs/JOURNAL.md lists them. */
    static final List<String> RECORD_KINDS = List.of("balance", "charge", "decline", "refund", "close", "fault",
            "reserve", "decline-reserve", "capture", "void", "expire");

    private final Path path;
    private final FileChannel file;
    private final JsonBytes pending = new JsonBytes();
    private final CRC32 crc = new CRC32();
    /** The --balance the journal was started with (its first record), null for none. */
    private String balanceRecorded;
    /** Where fault records are replayed (--faults); null: they are read and passed over. */
    private Faults faults;

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
            int length = lines.lineEnd - lines.lineStart;
            boolean complete;
            try {
                complete = lines.tooLongPrefix == null && offset + length < size && replayRecord(lines.buf, lines.lineStart, length, handler);
            } catch (BrokenInvariant broken) {
                if (firstBadLine != 0) {   // a good record that only breaks a rule for want of the damaged one: name the damage
                    throw new IOException("record " + firstBadLine + " is damaged and good records follow it:"
                            + " refusing to start rather than forget them (repair the file, or move it aside)");
                }
                throw new IOException("record " + lineNumber + ": " + broken.getMessage() + ": refusing to start (repair the file, or move it aside)");
            }
            offset += lines.tooLongPrefix != null ? lines.tooLongLength + 1 : length + 1;
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
                case "charge" -> {
                    String key = nextText(record);
                    handler.restore(key, new Charged(PaymentHandler.sagaIdOf(key), nextText(record), nextText(record), nextLong(record)), 0);
                }
                case "refund" -> {
                    String key = nextText(record);
                    Refunded refunded = new Refunded(nextText(record), nextText(record), nextText(record), nextLong(record));
                    handler.restore(key, refunded, nextLong(record));
                }
                case "close" -> handler.restore(nextText(record), Compensated.STEP, 0);
                case "balance" -> balanceRecorded = nextText(record);
                case "decline" -> handler.restore(nextText(record), new Declined(nextText(record), nextText(record), nextText(record)), 0);
                case "reserve" -> {
                    String key = nextText(record);
                    String userId = nextText(record);
                    String amount = nextText(record);
                    long expiresInMs = nextLongOrAbsent(record);
                    long expiresAt = nextLong(record);
                    handler.restore(key, new Reserved(key, userId, amount, expiresInMs, expiresAt, nextLong(record)), 0);
                }
                case "decline-reserve" -> {
                    String key = nextText(record);
                    String userId = nextText(record);
                    String amount = nextText(record);
                    long expiresInMs = nextLongOrAbsent(record);
                    handler.restore(key, new Declined(userId, amount, expiresInMs, nextText(record)), 0);
                }
                case "capture" -> {
                    String key = nextText(record);
                    String paymentId = nextText(record);
                    String amount = nextText(record);
                    String captured = nextText(record);
                    String released = nextText(record);
                    long number = nextLong(record);
                    handler.restore(key, new Captured(paymentId, amount, new CaptureResult(Charged.paymentId(number), captured, released)), number);
                }
                case "void" -> {
                    String key = nextText(record);
                    String paymentId = nextText(record);
                    String released = nextText(record);
                    long number = nextLong(record);
                    handler.restore(key, new Voided(paymentId, new VoidResult(number == 0 ? null : Charged.paymentId(number), released)), number);
                }
                case "expire" -> handler.restoreExpired(nextText(record));
                case "fault" -> {
                    String key = nextText(record);
                    long attempt = nextLong(record);
                    Fault fault = Fault.named(nextText(record));
                    if (key == null || attempt < 1 || attempt > Integer.MAX_VALUE || fault == null) {
                        return false;
                    }
                    if (faults != null) {   // a node restarted without --faults keeps the records for a later one
                        faults.restore(key, (int) attempt, fault);
                    }
                }
                default -> {
                    return false;
                }
            }
            return record.nextToken() == JsonToken.END_ARRAY;
        } catch (BrokenInvariant broken) {
            throw broken;   // a record that breaks a money rule is damage to report, not a torn tail to cut
        } catch (IOException | RuntimeException unreadable) {
            return false;
        }
    }

    /** A number that may be null: -1 for null. */
    private static long nextLongOrAbsent(JsonParser record) throws IOException {
        return record.nextToken() == JsonToken.VALUE_NULL ? -1 : record.getLongValue();
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

    /** A decline (--balance), the step's refusal kept as its result: {@code ["decline", key, user_id, amount, reason]}. */
    @Override
    public synchronized void refused(ChargeRequest request, Refusal refusal) {
        int start = beginCharge("decline", request);
        pending.string(refusal.error().getMessage());
        end(start);
    }

    /** A charge's or a decline's record up to its last field: kind, key, user_id, amount. */
    private int beginCharge(String kind, ChargeRequest request) {
        return beginStep(kind, request.key(), request.userId(), request.amount());
    }

    /** A record of what a step's key holds, up to its own fields: kind, key, user_id, amount (a JSON number, as the request wrote it). */
    private int beginStep(String kind, String key, String userId, Amount amount) {
        int start = begin(kind, key);
        pending.ascii(", ");
        pending.string(userId);
        pending.ascii(", ");
        pending.ascii(amount.text());
        pending.ascii(", ");
        return start;
    }

    @Override
    public synchronized void closed(String chargeKey) {
        end(begin("close", chargeKey));
    }

    /**
     * A fault drawn for attempt {@code attempt} of {@code key} (--faults, --fault): {@code ["fault", key, attempt, kind]}.
     * It goes in before the attempt's work, so that the commit of a crash's last batch takes it along.
     */
    synchronized void faultDrawn(String key, int attempt, Fault fault) {
        int start = begin("fault", key);
        pending.ascii(", ");
        pending.number(attempt);
        pending.ascii(", ");
        pending.string(fault.option);
        end(start);
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

    /** {@code ["reserve", key, user_id, amount, expires_in_ms, expires_at, number]}: expires_in_ms as given (null: not), the deadline in epoch ms. */
    @Override
    public synchronized void reserved(ReserveRequest request, long paymentNumber, long expiresAt) {
        int start = beginReserve("reserve", request);
        pending.number(expiresAt);
        pending.ascii(", ");
        pending.number(paymentNumber);
        end(start);
    }

    /** A refused reservation (--balance): {@code ["decline-reserve", key, user_id, amount, expires_in_ms, reason]}. */
    @Override
    public synchronized void refused(ReserveRequest request, Refusal refusal) {
        int start = beginReserve("decline-reserve", request);
        pending.string(refusal.error().getMessage());
        end(start);
    }

    /** A reservation's or its decline's record up to its last fields: a step's, then expires_in_ms (null: not given). */
    private int beginReserve(String kind, ReserveRequest request) {
        int start = beginStep(kind, request.key(), request.userId(), request.amount());
        pending.ascii(request.expiresInMs() == null ? "null" : Long.toString(request.expiresInMs()));
        pending.ascii(", ");
        return start;
    }

    /** {@code ["capture", key, payment_id, amount, captured, released, number]}: the params as given (null: not), the reservation's number. */
    @Override
    public synchronized void captured(CaptureRequest request, String captured, String released, long paymentNumber) {
        int start = begin("capture", request.key());
        pending.ascii(", ");
        pending.string(request.paymentId());
        pending.ascii(", ");
        pending.string(request.amount() == null ? null : request.amount().text());
        pending.ascii(", ");
        pending.string(captured);
        pending.ascii(", ");
        pending.string(released);
        pending.ascii(", ");
        pending.number(paymentNumber);
        end(start);
    }

    /** {@code ["void", key, payment_id, released, number]}: number 0 when it found no hold. */
    @Override
    public synchronized void voided(VoidRequest request, String released, long paymentNumber) {
        int start = begin("void", request.key());
        pending.ascii(", ");
        pending.string(request.paymentId());
        pending.ascii(", ");
        pending.string(released);
        pending.ascii(", ");
        pending.number(paymentNumber);
        end(start);
    }

    /** {@code ["expire", step_key]}: a hold found past its deadline, expired for good. */
    @Override
    public synchronized void expired(String chargeKey) {
        end(begin("expire", chargeKey));
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

    /** In a --journal path, stands for the node's id: each node of a harness keeps its own file. */
    static final String NODE_ID = "{node_id}";

    /** The table that comes back from the journal at {@code path}, with no injected faults. */
    static PaymentHandler tableFromJournal(Path path, Log log, Balances balances, long maxKeys) throws IOException {
        return tableFromJournal(path, log, balances, maxKeys, null);
    }

    /**
     * The table that comes back from the journal at {@code path} and goes on into it; {@code balances} (null:
     * none) are replayed with it, and must be the ones the journal was started with; so are the faults drawn
     * so far into {@code faults} (null: none), which go on recording theirs in it. A journal that cannot
     * be opened or read, or that was started with another --balance, is an IOException.
     */
    static PaymentHandler tableFromJournal(Path path, Log log, Balances balances, long maxKeys, Faults faults) throws IOException {
        FileJournal journal = FileJournal.open(path);
        PaymentHandler table = table(log, journal, balances, maxKeys);
        journal.faults = faults;
        long records;
        try {
            records = journal.replay(table, log);
        } catch (IOException | RuntimeException e) {
            journal.close();   // the file and its lock go with the refusal
            throw e;
        }
        String startedWith = balances == null ? null : balances.start().toPlainString();
        if (records == 0 && startedWith != null) {
            journal.balanceStarted(startedWith);   // so that a restart with another --balance is refused, not served
            journal.commit();
        } else if (!sameBalance(journal.balanceRecorded(), startedWith)) {
            journal.close();
            throw new IOException("it was started " + withBalance(journal.balanceRecorded()) + ", and this node " + withBalance(startedWith)
                    + ": start it with the same --balance (or move the journal aside)");
        }
        if (faults != null) {
            faults.recordIn(journal);
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

    static String journalProblem(Exception e) {
        if (e instanceof NoSuchFileException) {
            return "its folder does not exist";
        }
        if (e instanceof AccessDeniedException) {
            return "permission denied";
        }
        return e instanceof FileSystemException f && f.getReason() != null ? f.getReason() : e.getMessage();
    }
}
