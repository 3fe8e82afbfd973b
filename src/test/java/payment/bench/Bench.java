package payment.bench;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.FileTime;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.ToDoubleFunction;
import java.util.stream.Stream;
import java.util.zip.CRC32C;

/**
 * The project's benchmark: a baseline and a candidate node command measured in one run, alternating (baseline,
 * candidate, baseline, candidate, ...), so that the machine's mood is shared by both and their ratio means
 * something on a small, shared machine where absolute figures move by tens of percent from one hour to the next.
 *
 * <p>It measures what the shared tools measure, the same way: throughput = replies / wall time from spawn to
 * exit, with the workload file as stdin; ping-pong latency of ChargePayment (p50/p90/p99, the first 10% not
 * counted); start-up = spawn to the init_ok line, after one untimed warm-up; and beside them the node's CPU time
 * and peak RSS during a throughput run, and the CPU that other processes used meanwhile (from /proc), so that a
 * noisy run shows. Before anything is timed, each side's output on the workload must be, byte for byte, the
 * replies the workload expects ({@link BenchWorkload}): a side that answers differently is a failure, not a figure.
 *
 * <p>Run it: {@code tests/bench.sh [--baseline-rev REV] [--runs 3] [--messages 2000000]} ({@code --help}).
 */
final class Bench {
    static final String USAGE = """
            usage: tests/bench.sh [options]
            Measures a baseline and a candidate node in one run, alternating, and prints each metric's
            median per side and the ratio candidate / baseline.

            the sides (one of each; run by their own run.sh, so JVM options are part of what is compared):
              --baseline-rev REV    a git revision of this repository, built in target/bench/ (default: main)
              --baseline JAR        a payment-node jar, run by this working tree's run.sh (a jar older than
                                    92d55d6 writes its replies where that run.sh sends the JVM's own
                                    stdout, to stderr: use --baseline-rev for those)
              --baseline-cmd CMD    any command, run by /bin/sh -c CMD (start it with exec, as in
                                    'rm -f j; exec ./run.sh --journal j', for the peak RSS to be the node's)
              --candidate-rev REV, --candidate JAR, --candidate-cmd CMD
                                    the same for the candidate (default: this working tree's ./run.sh)
            what to run:
              --messages N          throughput workload: init + N requests (default 2000000)
              --seed S              workload seed (default 1); the workload is shared/bench/workload.py's
              --runs R              throughput and latency runs per side (default 3)
              --latency-requests N  ping-pong ChargePayments per latency run (default 20000)
              --startup-runs N      start-ups per side, after one untimed warm-up each (default 10)
              --timeout S           kill a node that runs longer than S seconds (default 300)
              --workdir DIR         workload, outputs and built revisions (default target/bench)
              --workload-only       write the workload and its expected replies to the workdir, and exit
            exit status: 0 measured; 1 a side's output differs from the expected replies; 2 usage error,
            or a node failed (died, timed out, could not start)
            """;

    /** A node command to measure, and how to say what it is. */
    record Side(String name, String description, List<String> command) {
    }

    record Settings(Side baseline, Side candidate, int messages, long seed, int runs, int latencyRequests,
                    int startupRuns, long timeoutSeconds, Path workDir) {
    }

    /** One line of the table: a metric's median per side. */
    record Row(String metric, String format, double baseline, double candidate, String otherLoad) {
        double ratio() {
            return candidate / baseline;
        }
    }

    /** What a run of the benchmark found: its verdict on the output and, if it measured, the table. */
    record Report(int status, List<String> header, List<Row> rows, List<String> runs) {
    }

    /** A failure that stops the benchmark: a node that died or hung, a revision that does not build. */
    static final class Failure extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final int status;

        Failure(int status, String message) {
            super(message);
            this.status = status;
        }
    }

    private static final int CHUNK = 1 << 20;
    private static final double NOISE_CORES = 0.1;
    private static final ScheduledExecutorService WATCHDOG = Executors.newSingleThreadScheduledExecutor(r -> {
        Thread thread = new Thread(r, "bench-watchdog");
        thread.setDaemon(true);
        return thread;
    });

    private final Settings settings;
    private final PrintStream progress;
    private final Path workload;
    private final Path expected;

    private Bench(Settings settings, PrintStream progress) {
        this.settings = settings;
        this.progress = progress;
        String name = "workload-" + settings.messages + "-seed" + settings.seed;
        this.workload = settings.workDir.resolve(name + ".jsonl");
        this.expected = settings.workDir.resolve(name + ".expected");
    }

    // ---- the run -----------------------------------------------------------------------------------------

    /** Measures both sides; the report's status is 0, or 1 when a side's output is not the expected one. */
    static Report run(Settings settings, PrintStream progress) throws IOException {
        return new Bench(settings, progress).run();
    }

    /** The workload file and its expected replies, written afresh (two million lines take a few seconds). */
    private BenchWorkload.Counts writeWorkload() throws IOException {
        Files.createDirectories(settings.workDir);
        try (OutputStream requests = Files.newOutputStream(workload); OutputStream replies = Files.newOutputStream(expected)) {
            return BenchWorkload.write(settings.messages, settings.seed, requests, replies);
        }
    }

    private Report run() throws IOException {
        BenchWorkload.Counts counts = writeWorkload();
        List<String> header = new ArrayList<>();
        header.add("baseline:  " + settings.baseline.description + ": " + String.join(" ", settings.baseline.command));
        header.add("candidate: " + settings.candidate.description + ": " + String.join(" ", settings.candidate.command));
        header.add(String.format(Locale.ROOT, "workload:  init + %,d requests, seed %d (%s), the bytes of shared/bench/workload.py --messages %d --seed %d",
                settings.messages, settings.seed, counts, settings.messages, settings.seed));
        header.add("machine:   " + machine());

        String verdict = checkOutputs();
        header.add("output:    " + verdict);
        if (!verdict.startsWith("identical")) {
            return new Report(1, header, List.of(), List.of());
        }
        long expectedBytes = Files.size(expected);
        long expectedCrc = crc(expected);

        List<Side> sides = List.of(settings.baseline, settings.candidate);
        List<List<ThroughputRun>> throughput = List.of(new ArrayList<>(), new ArrayList<>());
        for (int round = 1; round <= settings.runs; round++) {
            for (int s = 0; s < 2; s++) {
                ThroughputRun run = throughput(sides.get(s), expectedBytes, expectedCrc);
                throughput.get(s).add(run);
                progress.printf(Locale.ROOT, "bench: throughput %d/%d %s: %,.0f msg/s, %.2f s CPU, %.0f MiB, other load %s%n",
                        round, settings.runs, sides.get(s).name, run.messagesPerSecond, run.cpuSeconds, run.peakRssMib, cores(run.otherCores));
            }
        }
        List<BenchWorkload.Exchange> exchanges = BenchWorkload.latencyRequests(settings.latencyRequests, settings.seed);
        List<List<LatencyRun>> latency = List.of(new ArrayList<>(), new ArrayList<>());
        for (int round = 1; round <= settings.runs; round++) {
            for (int s = 0; s < 2; s++) {
                LatencyRun run = latency(sides.get(s), exchanges);
                latency.get(s).add(run);
                progress.printf(Locale.ROOT, "bench: latency %d/%d %s: p50 %.1f p90 %.1f p99 %.1f us, other load %s%n",
                        round, settings.runs, sides.get(s).name, run.p50, run.p90, run.p99, cores(run.otherCores));
            }
        }
        List<List<Double>> startup = List.of(new ArrayList<>(), new ArrayList<>());
        for (Side side : sides) {
            startupMillis(side);   // untimed: the file cache, and for run.sh its first look at the jar
        }
        CpuClock startupBefore = CpuClock.now();
        long startupT0 = System.nanoTime();
        for (int round = 1; round <= settings.startupRuns; round++) {
            for (int s = 0; s < 2; s++) {
                startup.get(s).add(startupMillis(sides.get(s)));
            }
        }
        double startupLoad = CpuClock.now().otherCores(startupBefore, (System.nanoTime() - startupT0) / 1e9);
        progress.printf(Locale.ROOT, "bench: start-up medians: baseline %.1f ms, candidate %.1f ms, other load %s%n",
                median(startup.get(0), x -> x), median(startup.get(1), x -> x), cores(startupLoad));

        List<Row> rows = new ArrayList<>();
        rows.add(row("throughput, msg/s", "%,.0f", throughput, r -> r.messagesPerSecond, r -> r.otherCores));
        rows.add(row("CPU per throughput run, s", "%.2f", throughput, r -> r.cpuSeconds, r -> r.otherCores));
        rows.add(row("peak RSS, MiB", "%.0f", throughput, r -> r.peakRssMib, r -> r.otherCores));
        rows.add(row("latency p50, µs", "%.1f", latency, r -> r.p50, r -> r.otherCores));
        rows.add(row("latency p90, µs", "%.1f", latency, r -> r.p90, r -> r.otherCores));
        rows.add(row("latency p99, µs", "%.1f", latency, r -> r.p99, r -> r.otherCores));
        rows.add(new Row("start-up to init_ok, ms", "%.1f", median(startup.get(0), x -> x), median(startup.get(1), x -> x),
                cores(startupLoad) + " (both)"));

        List<String> runs = new ArrayList<>();
        for (int s = 0; s < 2; s++) {
            runs.add(sides.get(s).name + " throughput, msg/s (other load): " + join(throughput.get(s),
                    r -> String.format(Locale.ROOT, "%,.0f (%s)", r.messagesPerSecond, cores(r.otherCores))));
        }
        for (int s = 0; s < 2; s++) {
            runs.add(sides.get(s).name + " latency p50/p99, µs (other load): " + join(latency.get(s),
                    r -> String.format(Locale.ROOT, "%.1f/%.1f (%s)", r.p50, r.p99, cores(r.otherCores))));
        }
        for (int s = 0; s < 2; s++) {
            runs.add(sides.get(s).name + " start-up, ms: " + join(startup.get(s), x -> String.format(Locale.ROOT, "%.1f", x)));
        }
        return new Report(0, header, rows, runs);
    }

    private static <T> Row row(String metric, String format, List<List<T>> runs, ToDoubleFunction<T> value, ToDoubleFunction<T> load) {
        return new Row(metric, format, median(runs.get(0), value), median(runs.get(1), value),
                cores(max(runs.get(0), load)) + " / " + cores(max(runs.get(1), load)));
    }

    static void print(Report report, Settings settings, PrintStream out) {
        report.header.forEach(out::println);
        if (report.rows.isEmpty()) {
            return;
        }
        out.println();
        out.printf(Locale.ROOT, "medians: throughput and latency of %d runs per side (latency: %,d requests each), start-up of %d;%n",
                settings.runs, settings.latencyRequests, settings.startupRuns);
        out.printf(Locale.ROOT, "other load: cores used by other processes meanwhile, max of the runs, baseline / candidate (above %.2f, skewed)%n", NOISE_CORES);
        out.println();
        out.println("| metric | baseline | candidate | candidate / baseline | other load, cores |");
        out.println("|---|---:|---:|---:|---:|");
        for (Row row : report.rows) {
            out.println(tableLine(row));
        }
        out.println();
        report.runs.forEach(line -> out.println("runs: " + line));
    }

    static String tableLine(Row row) {
        return "| " + row.metric + " | " + String.format(Locale.ROOT, row.format, row.baseline) + " | "
                + String.format(Locale.ROOT, row.format, row.candidate) + " | "
                + String.format(Locale.ROOT, "%.3f", row.ratio()) + " | " + row.otherLoad + " |";
    }

    // ---- output check ------------------------------------------------------------------------------------

    /** Runs each side once on the workload, untimed, and compares its stdout with the expected replies. */
    private String checkOutputs() throws IOException {
        List<Path> outputs = new ArrayList<>();
        for (Side side : List.of(settings.baseline, settings.candidate)) {
            Path output = settings.workDir.resolve(side.name + ".out");
            progress.println("bench: checking " + side.name + "'s output on the workload");
            Process node = start(side, ProcessBuilder.Redirect.from(workload.toFile()), ProcessBuilder.Redirect.to(output.toFile()));
            awaitExit(node, side);
            long at = Files.mismatch(output, expected);
            if (at >= 0) {
                String said = Files.size(output) > 0 ? "" : "\n           its stderr's first line: " + shortText(lineAt(stderrFile(side), 0));
                return "FAIL: " + difference(side.name, output, at) + said + "\n           (kept in " + output + ")";
            }
            outputs.add(output);
        }
        // Both equal the expected replies, so they equal each other; cmp them all the same, as the contract says.
        if (Files.mismatch(outputs.get(0), outputs.get(1)) >= 0) {
            return "FAIL: the baseline's and the candidate's outputs differ";
        }
        long lines = countLines(expected);
        for (Path output : outputs) {
            Files.delete(output);
        }
        return String.format(Locale.ROOT, "identical (cmp): both sides wrote the %,d expected replies, byte for byte", lines);
    }

    /** Which reply differs, both ways of it, for a reader who has to find out why. */
    private String difference(String name, Path output, long offset) throws IOException {
        byte[] got = lineAt(output, offset);
        byte[] want = lineAt(expected, offset);
        long line = countLines(expected, offset) + 1;
        return name + "'s reply " + line + " differs from the expected reply (byte " + (offset + 1) + "):"
                + "\n           got:      " + shortText(got) + "\n           expected: " + shortText(want);
    }

    private static byte[] lineAt(Path file, long offset) throws IOException {
        long start = Math.max(0, offset - 4096);
        byte[] around;
        try (InputStream in = Files.newInputStream(file)) {
            in.skipNBytes(start);
            around = in.readNBytes(8192);
        }
        int at = (int) Math.min(offset - start, around.length);
        int from = at;
        while (from > 0 && around[from - 1] != '\n') {
            from--;
        }
        int to = at;
        while (to < around.length && around[to] != '\n') {
            to++;
        }
        return Arrays.copyOfRange(around, from, to);
    }

    private static String shortText(byte[] line) {
        String text = new String(line, StandardCharsets.UTF_8);
        return line.length == 0 ? "(nothing)" : text.length() <= 300 ? text : text.substring(0, 300) + "...";
    }

    private static long countLines(Path file) throws IOException {
        return countLines(file, Long.MAX_VALUE);
    }

    /** Newlines in the first {@code limit} bytes of a file. */
    private static long countLines(Path file, long limit) throws IOException {
        long lines = 0;
        long seen = 0;
        byte[] buffer = new byte[CHUNK];
        try (InputStream in = Files.newInputStream(file)) {
            for (int n = in.read(buffer); n > 0 && seen < limit; n = in.read(buffer)) {
                int upTo = (int) Math.min(n, limit - seen);
                for (int i = 0; i < upTo; i++) {
                    if (buffer[i] == '\n') {
                        lines++;
                    }
                }
                seen += n;
            }
        }
        return lines;
    }

    private static long crc(Path file) throws IOException {
        CRC32C crc = new CRC32C();
        byte[] buffer = new byte[CHUNK];
        try (InputStream in = Files.newInputStream(file)) {
            for (int n = in.read(buffer); n > 0; n = in.read(buffer)) {
                crc.update(buffer, 0, n);
            }
        }
        return crc.getValue();
    }

    // ---- throughput --------------------------------------------------------------------------------------

    record ThroughputRun(double messagesPerSecond, double cpuSeconds, double peakRssMib, double otherCores) {
    }

    /**
     * One timed run: the workload file as stdin, stdout read on a pipe in 1 MiB chunks until the node exits.
     * The bytes are not kept but checksummed (CRC32C, which the JIT turns into a few instructions per 8 bytes),
     * so that a timed run that answers differently from the checked run is caught too.
     */
    private ThroughputRun throughput(Side side, long expectedBytes, long expectedCrc) throws IOException {
        long replies = settings.messages + 1L;   // init's and every request's: the bytes say so, checked below
        CpuClock before = CpuClock.now();
        long t0 = System.nanoTime();
        Process node = start(side, ProcessBuilder.Redirect.from(workload.toFile()), ProcessBuilder.Redirect.PIPE);
        PeakRss rss = PeakRss.watch(node);
        CRC32C crc = new CRC32C();
        long bytes = 0;
        byte[] buffer = new byte[CHUNK];
        try (InputStream stdout = node.getInputStream()) {
            for (int n = stdout.read(buffer); n > 0; n = stdout.read(buffer)) {
                crc.update(buffer, 0, n);
                bytes += n;
            }
        }
        awaitExit(node, side);
        double wall = (System.nanoTime() - t0) / 1e9;
        CpuClock after = CpuClock.now();
        if (bytes != expectedBytes || crc.getValue() != expectedCrc) {
            throw new Failure(1, side.name + " wrote other bytes in a timed run than in its checked run (" + bytes
                    + " bytes, " + expectedBytes + " expected): its output is not deterministic");
        }
        return new ThroughputRun(replies / wall, after.childrenSeconds - before.childrenSeconds, rss.mib(), after.otherCores(before, wall));
    }

    /** The largest VmHWM (the resident set's high-water mark) seen in /proc while the process lives. */
    static final class PeakRss implements Runnable {
        private final Process process;
        private volatile long kib;

        private PeakRss(Process process) {
            this.process = process;
        }

        static PeakRss watch(Process process) {
            PeakRss peak = new PeakRss(process);
            Thread thread = new Thread(peak, "bench-rss");
            thread.setDaemon(true);
            thread.start();
            return peak;
        }

        @Override
        public void run() {
            Path status = Path.of("/proc", Long.toString(process.pid()), "status");
            // Sampled, since a process's /proc entry goes with it; the high-water mark only grows, so the last sample
            // (at most 20 ms before the exit) is the peak unless the node grew in its last 20 ms.
            while (process.isAlive()) {
                try {
                    for (String line : Files.readAllLines(status)) {
                        if (line.startsWith("VmHWM:")) {
                            kib = Math.max(kib, Long.parseLong(line.replaceAll("[^0-9]", "")));
                        }
                    }
                    Thread.sleep(20);
                } catch (IOException | NumberFormatException e) {
                    return;   // gone, or no /proc: the figure stays what it was (0 without /proc)
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
        }

        double mib() {
            return kib / 1024.0;
        }
    }

    // ---- latency -----------------------------------------------------------------------------------------

    record LatencyRun(double p50, double p90, double p99, double otherCores) {
    }

    /** Ping-pong: one ChargePayment at a time, each reply read and then checked before the next is sent. */
    private LatencyRun latency(Side side, List<BenchWorkload.Exchange> exchanges) throws IOException {
        CpuClock before = CpuClock.now();
        long t0 = System.nanoTime();
        Process node = start(side, ProcessBuilder.Redirect.PIPE, ProcessBuilder.Redirect.PIPE);
        OutputStream stdin = node.getOutputStream();
        LineReader stdout = new LineReader(node.getInputStream());
        send(stdin, BenchWorkload.INIT.getBytes(StandardCharsets.US_ASCII), node, side);
        expectLine(stdout.next(), BenchWorkload.INIT_OK.getBytes(StandardCharsets.US_ASCII), "init", node, side);
        int warmUp = exchanges.size() / 10;
        long[] nanos = new long[exchanges.size() - warmUp];
        for (int i = 0; i < exchanges.size(); i++) {
            BenchWorkload.Exchange exchange = exchanges.get(i);
            long sent = System.nanoTime();
            send(stdin, exchange.request(), node, side);
            byte[] reply = stdout.next();
            long received = System.nanoTime();
            if (i >= warmUp) {
                nanos[i - warmUp] = received - sent;
            }
            expectLine(reply, exchange.reply(), "msg_id " + exchange.msgId(), node, side);
        }
        stdin.close();
        awaitExit(node, side);
        CpuClock after = CpuClock.now();
        Arrays.sort(nanos);
        return new LatencyRun(percentile(nanos, 50) / 1e3, percentile(nanos, 90) / 1e3, percentile(nanos, 99) / 1e3,
                after.otherCores(before, (System.nanoTime() - t0) / 1e9));
    }

    /** Nearest rank, as latency.py computes it. */
    static long percentile(long[] sorted, int percent) {
        int rank = (int) ((percent * (long) sorted.length + 99) / 100);
        return sorted[Math.max(0, Math.min(sorted.length - 1, rank - 1))];
    }

    private void send(OutputStream stdin, byte[] line, Process node, Side side) {
        try {
            stdin.write(line);
            stdin.flush();
        } catch (IOException e) {
            throw died(node, side, "closed its stdin");
        }
    }

    private void expectLine(byte[] got, byte[] want, String what, Process node, Side side) {
        if (got == null) {
            throw died(node, side, "closed stdout before the reply to " + what);
        }
        if (!Arrays.equals(got, want)) {
            kill(node);
            throw new Failure(1, side.name + "'s reply to " + what + " differs from the expected reply:\n  got:      "
                    + shortText(got).strip() + "\n  expected: " + shortText(want).strip());
        }
    }

    /** Lines of a stream, each with its newline, read through one buffer. */
    static final class LineReader {
        private final InputStream in;
        private byte[] buffer = new byte[1 << 16];
        private int start;
        private int end;

        LineReader(InputStream in) {
            this.in = in;
        }

        /** The next line with its newline, or null at the end of the stream. */
        byte[] next() {
            int scanned = start;
            while (true) {
                for (int i = scanned; i < end; i++) {
                    if (buffer[i] == '\n') {
                        byte[] line = Arrays.copyOfRange(buffer, start, i + 1);
                        start = i + 1;
                        return line;
                    }
                }
                scanned = end;
                if (start > 0) {
                    System.arraycopy(buffer, start, buffer, 0, end - start);
                    end -= start;
                    scanned -= start;
                    start = 0;
                }
                if (end == buffer.length) {
                    buffer = Arrays.copyOf(buffer, buffer.length * 2);
                }
                int n;
                try {
                    n = in.read(buffer, end, buffer.length - end);
                } catch (IOException e) {
                    n = -1;
                }
                if (n <= 0) {
                    return null;
                }
                end += n;
            }
        }
    }

    // ---- start-up ----------------------------------------------------------------------------------------

    /** Spawn to the init_ok line, in ms; then stdin is closed and the node must exit 0. */
    private double startupMillis(Side side) throws IOException {
        long t0 = System.nanoTime();
        Process node = start(side, ProcessBuilder.Redirect.PIPE, ProcessBuilder.Redirect.PIPE);
        OutputStream stdin = node.getOutputStream();
        send(stdin, BenchWorkload.INIT.getBytes(StandardCharsets.US_ASCII), node, side);
        byte[] line = new LineReader(node.getInputStream()).next();
        long t1 = System.nanoTime();
        expectLine(line, BenchWorkload.INIT_OK.getBytes(StandardCharsets.US_ASCII), "init", node, side);
        stdin.close();
        awaitExit(node, side);
        return (t1 - t0) / 1e6;
    }

    // ---- processes ---------------------------------------------------------------------------------------

    private Process start(Side side, ProcessBuilder.Redirect stdin, ProcessBuilder.Redirect stdout) throws IOException {
        ProcessBuilder builder = new ProcessBuilder(side.command)
                .redirectInput(stdin)
                .redirectOutput(stdout)
                .redirectError(stderrFile(side).toFile());
        Process node;
        try {
            node = builder.start();
        } catch (IOException e) {
            throw new Failure(2, "cannot start " + side.name + " (" + String.join(" ", side.command) + "): " + e.getMessage());
        }
        ScheduledFuture<?> watchdog = WATCHDOG.schedule(() -> kill(node), settings.timeoutSeconds, TimeUnit.SECONDS);
        node.onExit().thenRun(() -> watchdog.cancel(false));
        return node;
    }

    private Path stderrFile(Side side) {
        return settings.workDir.resolve(side.name + ".stderr");
    }

    private void awaitExit(Process node, Side side) {
        int status;
        try {
            status = node.waitFor();
        } catch (InterruptedException e) {
            kill(node);
            Thread.currentThread().interrupt();
            throw new Failure(2, "interrupted");
        }
        if (status != 0) {
            throw died(node, side, "exited with status " + status);
        }
    }

    private Failure died(Process node, Side side, String what) {
        kill(node);
        try {
            node.waitFor(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        String tail;
        try {
            String err = Files.readString(stderrFile(side), StandardCharsets.UTF_8);
            tail = err.isBlank() ? "" : "\n--- its stderr (last 2000 characters) ---\n" + err.substring(Math.max(0, err.length() - 2000));
        } catch (IOException e) {
            tail = "";
        }
        return new Failure(2, side.name + " " + what + " (killed after " + settings.timeoutSeconds + " s if it ran that long)" + tail);
    }

    /** The node and whatever it started: a run.sh that execs java is one process, a shell command may be more. */
    private static void kill(Process node) {
        node.descendants().forEach(ProcessHandle::destroyForcibly);
        node.destroyForcibly();
    }

    // ---- CPU load ----------------------------------------------------------------------------------------

    /**
     * CPU seconds from /proc: the whole machine's busy time, this JVM's own, and that of its children once reaped
     * (the kernel adds a child's time to its parent's cutime/cstime when the parent waits for it, as getrusage's
     * RUSAGE_CHILDREN does). NaN where there is no /proc. Ticks are USER_HZ, 100 on Linux.
     */
    record CpuClock(double machineBusySeconds, double ownSeconds, double childrenSeconds) {
        static CpuClock now() {
            try {
                String[] cpu = Files.readAllLines(Path.of("/proc/stat")).get(0).trim().split("\\s+");
                long busy = 0;
                for (int i = 1; i < cpu.length; i++) {
                    busy += (i == 4 || i == 5) ? 0 : Long.parseLong(cpu[i]);   // all but idle and iowait
                }
                String self = Files.readString(Path.of("/proc/self/stat"));
                String[] fields = self.substring(self.lastIndexOf(')') + 2).split(" ");
                // fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
                long own = Long.parseLong(fields[11]) + Long.parseLong(fields[12]);
                long children = Long.parseLong(fields[13]) + Long.parseLong(fields[14]);
                return new CpuClock(busy / 100.0, own / 100.0, children / 100.0);
            } catch (IOException | RuntimeException e) {
                return new CpuClock(Double.NaN, Double.NaN, Double.NaN);
            }
        }

        /** Cores that processes other than this JVM and its children used since {@code before}. */
        double otherCores(CpuClock before, double wallSeconds) {
            double other = (machineBusySeconds - before.machineBusySeconds) - (childrenSeconds - before.childrenSeconds)
                    - (ownSeconds - before.ownSeconds);
            return Math.max(0, other) / wallSeconds;
        }
    }

    private static String cores(double cores) {
        return Double.isNaN(cores) ? "n/a" : String.format(Locale.ROOT, "%.2f", cores) + (cores > NOISE_CORES ? "*" : "");
    }

    private static String machine() {
        String model = "";
        try (Stream<String> lines = Files.lines(Path.of("/proc/cpuinfo"))) {
            model = lines.filter(l -> l.startsWith("model name")).findFirst().map(l -> " (" + l.substring(l.indexOf(':') + 1).trim() + ")").orElse("");
        } catch (IOException | UncheckedIOException e) {
            // no /proc/cpuinfo: the core count alone
        }
        return Runtime.getRuntime().availableProcessors() + " cores" + model + ", " + System.getProperty("os.name") + " "
                + System.getProperty("os.version") + ", Java " + System.getProperty("java.runtime.version") + "; "
                + ZonedDateTime.now(ZoneOffset.UTC).format(DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm 'UTC'"));
    }

    // ---- medians -----------------------------------------------------------------------------------------

    static <T> double median(List<T> runs, ToDoubleFunction<T> value) {
        double[] values = runs.stream().mapToDouble(value).sorted().toArray();
        int mid = values.length / 2;
        return values.length % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
    }

    private static <T> double max(List<T> runs, ToDoubleFunction<T> value) {
        return runs.stream().mapToDouble(value).max().orElse(Double.NaN);
    }

    private static <T> String join(List<T> runs, java.util.function.Function<T, String> format) {
        return String.join(", ", runs.stream().map(format).toList());
    }

    // ---- the sides ---------------------------------------------------------------------------------------

    /** A git revision of the repository at {@code repo}: extracted with git archive and built by its own run.sh. */
    static Side fromRevision(String name, String revision, Path repo, Path workDir, PrintStream progress) throws IOException {
        String sha = command(repo, "git", "rev-parse", "--verify", "--quiet", revision + "^{commit}").strip();
        if (sha.isEmpty()) {
            throw new Failure(2, "--" + name + "-rev " + revision + ": not a revision of " + repo.toAbsolutePath());
        }
        Path dir = workDir.resolve("rev-" + sha.substring(0, 12)).toAbsolutePath();
        Path jar = dir.resolve("target/payment-node.jar");
        if (!Files.isRegularFile(jar)) {
            progress.println("bench: building " + revision + " (" + sha.substring(0, 7) + ") in " + dir);
            deleteTree(dir);
            Files.createDirectories(dir);
            Path tar = workDir.resolve("rev-" + sha.substring(0, 12) + ".tar").toAbsolutePath();
            command(repo, "git", "archive", "--format=tar", "-o", tar.toString(), sha);
            command(dir, "tar", "-xf", tar.toString());
            Files.delete(tar);
            // An older run.sh takes no --build: started on an empty stdin, it builds the jar, and the node exits at once.
            Path runSh = dir.resolve("run.sh");
            if (!Files.isRegularFile(runSh)) {
                throw new Failure(2, revision + " (" + sha.substring(0, 7) + ") has no run.sh; pass its jar with --" + name);
            }
            List<String> build = Files.readString(runSh).contains("--build") ? List.of(runSh.toString(), "--build") : List.of(runSh.toString());
            new ProcessBuilder(build).directory(dir.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .redirectError(ProcessBuilder.Redirect.INHERIT)
                    .start().onExit().join();
            if (!Files.isRegularFile(jar)) {
                throw new Failure(2, revision + " (" + sha.substring(0, 7) + ") did not build: no " + jar);
            }
        }
        String described = revision.equals(sha) ? sha.substring(0, 7) : sha.substring(0, 7) + " (" + revision + ")";
        return new Side(name, "rev " + described + ", its own run.sh", List.of(dir.resolve("run.sh").toString()));
    }

    /**
     * A jar, run by this working tree's run.sh from a folder of its own (run.sh, the golden inputs it records its
     * start-up archive on, and a pom and sources older than the jar, so that it never tries to rebuild it).
     */
    static Side fromJar(String name, Path jar, Path repo, Path workDir) throws IOException {
        if (!Files.isRegularFile(jar)) {
            throw new Failure(2, "--" + name + " " + jar + ": no such file");
        }
        Path dir = workDir.resolve("jar-" + name).toAbsolutePath();
        deleteTree(dir);
        Files.createDirectories(dir.resolve("target"));
        Files.createDirectories(dir.resolve("tests/golden"));
        Files.copy(repo.resolve("run.sh"), dir.resolve("run.sh"), StandardCopyOption.COPY_ATTRIBUTES);
        try (Stream<Path> golden = Files.list(repo.resolve("tests/golden"))) {
            for (Path in : golden.filter(p -> p.toString().endsWith(".in")).toList()) {
                Files.copy(in, dir.resolve("tests/golden").resolve(in.getFileName()));
            }
        }
        Files.createDirectories(dir.resolve("src/main"));
        Files.writeString(dir.resolve("pom.xml"), "<project/>\n");
        FileTime longAgo = FileTime.fromMillis(0);
        Files.setLastModifiedTime(dir.resolve("src/main"), longAgo);
        Files.setLastModifiedTime(dir.resolve("pom.xml"), longAgo);
        Files.copy(jar, dir.resolve("target/payment-node.jar"));
        return new Side(name, "jar " + jar.toAbsolutePath() + ", this working tree's run.sh", List.of(dir.resolve("run.sh").toString()));
    }

    static Side fromCommand(String name, String command) {
        return new Side(name, "command", List.of("/bin/sh", "-c", command));
    }

    static Side workingTree(String name, Path repo) throws IOException {
        String head = command(repo, "git", "rev-parse", "--short", "HEAD").strip();
        boolean dirty = !command(repo, "git", "status", "--porcelain", "--untracked-files=no").isBlank();
        return new Side(name, "working tree at " + head + (dirty ? " with uncommitted changes" : ""),
                List.of(repo.toAbsolutePath().resolve("run.sh").toString()));
    }

    /** A helper command's stdout; its stderr goes to ours. */
    private static String command(Path dir, String... command) throws IOException {
        Process process = new ProcessBuilder(command).directory(dir.toFile()).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        process.getOutputStream().close();
        String out = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        int status = process.onExit().join().exitValue();
        if (status != 0 && !(command[0].equals("git") && command[1].equals("rev-parse"))) {
            throw new Failure(2, String.join(" ", command) + " failed with status " + status);
        }
        return out;
    }

    private static void deleteTree(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> files = Files.walk(dir)) {
            for (Path file : files.sorted(Comparator.reverseOrder()).toList()) {
                Files.delete(file);
            }
        }
    }

    // ---- command line ------------------------------------------------------------------------------------

    public static void main(String[] args) {
        System.exit(cli(args, Path.of(""), System.out, System.err));
    }

    /** Runs the benchmark as tests/bench.sh does, from the repository at {@code repo}; the exit status. */
    static int cli(String[] args, Path repoPath, PrintStream out, PrintStream err) {
        Path repo = repoPath.toAbsolutePath();
        String[] baseline = {"rev", "main"};
        String[] candidate = {"tree", null};
        int messages = 2_000_000;
        long seed = 1;
        int runs = 3;
        int latencyRequests = 20_000;
        int startupRuns = 10;
        long timeout = 300;
        Path workDir = repo.resolve("target/bench");
        boolean workloadOnly = false;
        try {
            for (int i = 0; i < args.length; i++) {
                String option = args[i];
                if (option.equals("--help") || option.equals("-h")) {
                    out.print(USAGE);
                    return 0;
                }
                if (option.equals("--workload-only")) {
                    workloadOnly = true;
                    continue;
                }
                if (i + 1 >= args.length) {
                    throw new IllegalArgumentException(option.startsWith("--") ? option + " needs a value" : "unknown argument " + option);
                }
                String value = args[++i];
                switch (option) {
                    case "--baseline-rev" -> baseline = new String[] {"rev", value};
                    case "--baseline" -> baseline = new String[] {"jar", value};
                    case "--baseline-cmd" -> baseline = new String[] {"cmd", value};
                    case "--candidate-rev" -> candidate = new String[] {"rev", value};
                    case "--candidate" -> candidate = new String[] {"jar", value};
                    case "--candidate-cmd" -> candidate = new String[] {"cmd", value};
                    case "--messages" -> messages = atLeast(option, value, 1);
                    case "--seed" -> seed = atLeast(option, value, 0);
                    case "--runs" -> runs = atLeast(option, value, 1);
                    case "--latency-requests" -> latencyRequests = atLeast(option, value, 10);
                    case "--startup-runs" -> startupRuns = atLeast(option, value, 1);
                    case "--timeout" -> timeout = atLeast(option, value, 1);
                    case "--workdir" -> workDir = Path.of(value);
                    default -> throw new IllegalArgumentException("unknown option " + option);
                }
            }
        } catch (IllegalArgumentException e) {
            err.println("bench: " + e.getMessage());
            err.print(USAGE);
            return 2;
        }
        try {
            if (workloadOnly) {
                Settings settings = new Settings(null, null, messages, seed, runs, latencyRequests, startupRuns, timeout, workDir);
                Bench bench = new Bench(settings, err);
                BenchWorkload.Counts counts = bench.writeWorkload();
                out.println("workload: " + bench.workload + " (init + " + messages + " requests: " + counts + ")");
                out.println("expected: " + bench.expected);
                return 0;
            }
            Settings settings = new Settings(side("baseline", baseline, repo, workDir, err), side("candidate", candidate, repo, workDir, err),
                    messages, seed, runs, latencyRequests, startupRuns, timeout, workDir);
            Report report = run(settings, err);
            print(report, settings, out);
            return report.status;
        } catch (Failure e) {
            err.println("bench: " + e.getMessage());
            return e.status;
        } catch (IOException e) {
            err.println("bench: " + e);
            return 2;
        }
    }

    private static Side side(String name, String[] spec, Path repo, Path workDir, PrintStream progress) throws IOException {
        return switch (spec[0]) {
            case "rev" -> fromRevision(name, spec[1], repo, workDir, progress);
            case "jar" -> fromJar(name, Path.of(spec[1]), repo, workDir);
            case "cmd" -> fromCommand(name, spec[1]);
            default -> workingTree(name, repo);
        };
    }

    private static int atLeast(String option, String value, int least) {
        int number;
        try {
            number = Integer.parseInt(value.replace("_", "").replace(",", ""));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(option + " wants a whole number, got " + value);
        }
        if (number < least) {
            throw new IllegalArgumentException(option + " must be at least " + least + ", got " + value);
        }
        return number;
    }
}
