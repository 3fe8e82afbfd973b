package payment;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Random;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * The journal's store gets the single node's model test: {@link ModelTest}'s random sequences (charges, refunds,
 * reservations, captures, voids, status and balance reads, malformed lines, ticks of the test clock), served by a
 * node on a {@link FileJournal} that is stopped and started again from its file at random points of the sequence, its
 * replies compared with the same {@link ReferenceModel}, which never restarts: a restart with --journal forgets
 * nothing, so every answer after it is the answer without it. A reply's {@code src} (the name init gave the process
 * before) and {@code msg_id} (each process counts from 0) are the only fields left out of the comparison.
 */
class JournalModelTest {
    private static final int SEQUENCES = 1_200;
    private static final int FAST_SEQUENCES = 200;
    private static final int MAX_RESTARTS = 4;
    private static final BigDecimal BALANCE = new BigDecimal("150.00");
    private static final Pattern SRC = Pattern.compile("^\\{\"src\": (?:null|\"(?:[^\"\\\\]|\\\\.)*\"), ");
    private static final Pattern MSG_ID = Pattern.compile(", \"msg_id\": \\d+\\}\\}$");

    @Test
    void aNodeRestartedFromItsJournalAnswersAsTheModelDoes() throws IOException {
        check(0, FAST_SEQUENCES);
    }

    @Test
    @Tag("slow")
    void aNodeRestartedFromItsJournalAnswersFurtherSequencesAsTheModelDoes() throws IOException {
        check(FAST_SEQUENCES, SEQUENCES - FAST_SEQUENCES);
    }

    private void check(int from, int count) throws IOException {
        long base = Long.getLong("journal.model.seed", 20261206L) + from;
        // A file system in memory where there is one: every flush forces the journal to disk, once per line here.
        Path shm = Path.of("/dev/shm");
        Path folder = Files.isDirectory(shm) && Files.isWritable(shm) ? Files.createTempDirectory(shm, "journal-model")
                : Files.createTempDirectory("journal-model");
        try {
            for (int i = 0; i < count; i++) {
                long seed = base + i;
                BigDecimal start = seed % 2 == 1 ? BALANCE : null;
                long reserveTtl = seed % 4 >= 2 ? ModelTest.RESERVE_TTL : 0;
                Random random = new Random(seed);
                List<String> lines = ModelTest.generate(random, start != null);
                List<Integer> restarts = new ArrayList<>();
                for (int r = random.nextInt(MAX_RESTARTS + 1); r > 0; r--) {
                    restarts.add(random.nextInt(lines.size() + 1));
                }
                restarts.sort(null);
                String failure = failure(lines, restarts, start, reserveTtl, folder.resolve(seed + ".journal"));
                if (failure != null) {
                    fail("sequence with seed " + seed + " (rerun: -Djournal.model.seed=" + seed + ")" + (start == null ? "" : " and --balance " + start)
                            + (reserveTtl == 0 ? "" : " and --reserve-ttl " + reserveTtl) + ", restarted before lines " + restarts + ", fails: " + failure);
                }
            }
        } finally {
            try (Stream<Path> files = Files.walk(folder)) {
                files.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
            }
        }
    }

    /** Null when every reply of the restarted node is the model's, else the first that is not. */
    static String failure(List<String> lines, List<Integer> restarts, BigDecimal start, long reserveTtl, Path journal) {
        long[] clock = {ModelTest.CLOCK_START};
        StringBuilder actual = new StringBuilder();
        Node.CapturedLog log = Node.CapturedLog.of(false);
        int from = 0;
        List<Integer> ends = new ArrayList<>(restarts);
        ends.add(lines.size());
        for (int end : ends) {
            // One process: its table and balances come back from the file alone.
            Balances balances = start == null ? null : new Balances(start);
            PaymentNode.PaymentHandler table;
            try {
                table = FileJournal.tableFromJournal(journal, log.log(), balances, 0);
            } catch (IOException e) {
                return "the node could not start again from its journal before line " + from + ": " + e.getMessage();
            }
            table.decideBy(() -> clock[0]);
            table.reserveTtl(reserveTtl);
            ByteArrayOutputStream stdout = new ByteArrayOutputStream();
            PaymentNode node = new PaymentNode(stdout, log.log(), replies -> new FundedPaymentHandler.BalanceReads(
                    new PaymentNode.LocalService(table, replies, log.log()), balances, table::now));
            int status = node.serve(new ModelTest.TickingInput(lines.subList(from, end), clock));   // closes the journal at the end
            if (status != 0) {
                return "the node stopped with status " + status + ": " + log.text();
            }
            actual.append(stdout.toString(StandardCharsets.UTF_8));
            from = end;
        }
        ReferenceModel model = new ReferenceModel(start, reserveTtl);
        model.clock(ModelTest.CLOCK_START);
        StringBuilder expected = new StringBuilder();
        long modelClock = ModelTest.CLOCK_START;
        for (String line : lines) {
            if (line.startsWith(ModelTest.TICK)) {
                modelClock += Long.parseLong(line.substring(ModelTest.TICK.length()));
                model.clock(modelClock);
            } else {
                expected.append(model.handle(line));
            }
        }
        String[] got = actual.toString().split("\n", -1);
        String[] want = expected.toString().split("\n", -1);
        for (int i = 0; i < Math.max(got.length, want.length); i++) {
            String node = i < got.length ? withoutProcessFields(got[i]) : "(nothing)";
            String reference = i < want.length ? withoutProcessFields(want[i]) : "(nothing)";
            if (!node.equals(reference)) {
                return "reply " + (i + 1) + " differs:\n  node:  " + node + "\n  model: " + reference;
            }
        }
        return null;
    }

    /** A reply without what belongs to its process: the name init gave it ({@code src}) and its count ({@code msg_id}). */
    static String withoutProcessFields(String reply) {
        return SRC.matcher(MSG_ID.matcher(reply).replaceFirst("}}")).replaceFirst("{");
    }
}
