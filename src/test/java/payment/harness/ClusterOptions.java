package payment.harness;

import java.nio.file.Path;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/** The cluster harness's command line: every option, its default and unit, and one readable line per mistake. */
final class ClusterOptions {
    enum Nemesis {
        KILL, PAUSE, PARTITION, KV;

        String label() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /** lin-kv's delay before each reply, uniform in [min, max] ms. */
    record Latency(int minMillis, int maxMillis) {
        @Override
        public String toString() {
            return minMillis + "-" + maxMillis + " ms";
        }
    }

    /**
     * What to run. {@code nodeCommand} starts one node (the harness adds nothing to it); {@code out} is the results
     * folder. The workload is bounded by {@code timeLimitSeconds}, or by {@code sagas} in all when that is above 0
     * (the alternative bound); {@code rate} operations a second are offered open loop by {@code concurrency} clients.
     * {@code nemesisIntervalMillis} 0 means: the faults spread evenly over the time limit.
     */
    record Settings(List<String> nodeCommand, int nodes, int concurrency, double rate, int timeLimitSeconds, int sagas, long seed,
                    Set<Nemesis> nemeses, long nemesisIntervalMillis, int faults, Latency kvLatency, long kvLateMillis,
                    long clientTimeoutMillis, int attempts, long healTimeoutMillis, int stallTimeoutSeconds, Path out, boolean measure) {
        /** With --sagas and no interval given, faults come this often, as before the time limit existed. */
        static final long SAGAS_RUN_INTERVAL_MILLIS = 2000;

        Settings {
            // in the enum's order: the nemesis draws its faults from this list, and the seed must pin the draw
            nemeses = java.util.Collections.unmodifiableSet(nemeses.isEmpty() ? EnumSet.noneOf(Nemesis.class) : EnumSet.copyOf(nemeses));
            nodeCommand = List.copyOf(nodeCommand);
        }

        /** No nemesis, or no fault to inject: the run has no faults at all. */
        boolean faultFree() {
            return nemeses.isEmpty() || faults == 0;
        }

        /** Bounded by time (the default), not by a number of sagas. */
        boolean timeBound() {
            return sagas == 0;
        }

        /** From one fault's start to the next: given, or the time limit shared evenly among the faults. */
        long faultIntervalMillis() {
            if (nemesisIntervalMillis > 0) {
                return nemesisIntervalMillis;
            }
            return timeBound() ? Math.max(1, timeLimitSeconds * 1000L / Math.max(1, faults)) : SAGAS_RUN_INTERVAL_MILLIS;
        }

        /**
         * How long each fault lasts: three quarters of its interval, so that most requests meet a fault while a quarter
         * is left for the cluster to recover (a restarted node's init) before the next.
         */
        long faultLengthMillis() {
            return faultIntervalMillis() * 3 / 4;
        }

        Settings withOut(Path folder) {
            return new Settings(nodeCommand, nodes, concurrency, rate, timeLimitSeconds, sagas, seed, nemeses, nemesisIntervalMillis, faults,
                    kvLatency, kvLateMillis, clientTimeoutMillis, attempts, healTimeoutMillis, stallTimeoutSeconds, folder, measure);
        }
    }

    /** A mistake on the command line: its message is the one line the user sees (exit 2). */
    static final class UsageError extends Exception {
        private static final long serialVersionUID = 1L;

        UsageError(String message) {
            super(message);
        }
    }

    /** --help was asked for. */
    static final class HelpRequested extends Exception {
        private static final long serialVersionUID = 1L;

        HelpRequested() {
            super("help");
        }
    }

    static final String USAGE = """
            Usage: tests/cluster.sh [OPTIONS] [-- NODE COMMAND...]

            Runs payment nodes as a Maelstrom-style cluster on one machine: a lin-kv service with Maelstrom's
            semantics, a nemesis, and clients running sagas for a time limit at a rate offered open loop; then
            heals, checks every answer in the history, prints a summary and writes a results folder (its path is
            the last line printed). A progress line goes to stderr every few seconds.
            Exit status: 0 valid, 1 anomalies found, 2 could not run (a usage error included).

            Options (defaults in brackets):
              --time-limit S         seconds of workload, then healing and final reads, 1-86400 [20]
              --rate R               operations a second offered across all clients, open loop: each starts on
                                     schedule whether or not earlier ones were answered (a retry is part of its
                                     operation), 0.1-100000 [50]
              --concurrency N        clients, each one saga at a time: at most N operations in flight (a saga's
                                     three refunds sent together count as one); a slot that finds every client
                                     busy is missed, and counted, 1-1000 [200]
              --sagas N              bound the run by N sagas in all instead of by time (not with --time-limit),
                                     1-1000000 [none: the time limit]
              --stall-timeout S      stop the run early, INVALID (unavailable), when no request has been answered
                                     for S seconds while requests wait, 1-3600 [10]
              --nodes N              nodes to start, 1-20 [3]
              --seed N               seed of every choice: workload, fault kinds and targets, lin-kv delays; not
                                     of timing [1]
              --nemesis LIST         faults to inject, any mix of kill,pause,partition,kv, or none; each kind
                                     named is used in turn, in a seeded order [kill]
                                       kill       SIGKILL a node, restart it with the same command, init again
                                       pause      SIGSTOP a node, SIGCONT it when the fault ends
                                       partition  drop every message to and from one node (clients and lin-kv
                                                  included)
                                       kv         lin-kv replies lost, duplicated, or late (see --kv-late)
              --faults N             how many faults the nemesis injects, 0-10000 [4]
              --nemesis-interval MS  milliseconds from one fault's start to the next; each fault lasts three
                                     quarters of it, 50-600000 [the time limit / faults; 2000 with --sagas]
              --latency MS|MIN:MAX   lin-kv's delay before each reply, milliseconds, uniform in MIN-MAX (one
                                     number: 0-MS), 0-60000 [0:5]
              --kv-late MS           how late the kv nemesis delivers a reply it delays, milliseconds: past the
                                     nodes' --kv-timeout (1000 by default), 1-600000 [1500]
              --timeout MS           how long a client waits for a reply before it counts the outcome as
                                     unknown and retries on another node, milliseconds, 10-600000 [2000]
              --attempts N           requests per operation while faults run (the first and its retries),
                                     1-100 [3]
              --heal-timeout MS      after the workload and the last fault, how long the healing phase may retry
                                     operations still without a definite answer, milliseconds, 0-3600000 [20000]
              --out DIR              results folder [target/cluster-runs/<time>, linked as
                                     target/cluster-runs/latest]
              --no-store             nodes without --store lin-kv (each keeps its own table): the checker must
                                     find double charges
              --measure              count lin-kv calls per request kind instead (one client, no faults)
              -h, --help             print this help and exit
              -- NODE COMMAND...     the command that starts one node, run in the results folder (a relative
                                     path to it is taken from here) [./run.sh --store lin-kv --verbose]
            """;

    /** {@code projectDir}: where run.sh and target/ are (the default node command and results folder). */
    static Settings parse(String[] args, Path projectDir) throws UsageError, HelpRequested {
        int nodes = 3;
        int concurrency = 200;   // at 100 a second, a node paused past the 2 s timeout holds about 70
        double rate = 50;
        Integer timeLimit = null;
        int sagas = 0;
        int stallTimeout = 10;
        long seed = 1;
        Set<Nemesis> nemeses = EnumSet.of(Nemesis.KILL);
        long interval = 0;
        int faults = 4;
        Latency latency = new Latency(0, 5);
        long kvLate = 1500;
        long timeout = 2000;
        int attempts = 3;
        long heal = 20000;
        Path out = null;
        boolean store = true;
        boolean measure = false;
        List<String> command = null;
        for (int i = 0; i < args.length; i++) {
            String option = args[i];
            switch (option) {
                case "--help", "-h" -> throw new HelpRequested();
                case "--no-store" -> store = false;
                case "--measure" -> measure = true;
                case "--" -> {
                    command = List.of(args).subList(i + 1, args.length);
                    if (command.isEmpty()) {
                        throw new UsageError("-- must be followed by the command that starts one node");
                    }
                    i = args.length;
                }
                case "--kills" -> throw new UsageError("--kills is now --nemesis kill --faults N");
                case "--clients" -> throw new UsageError("--clients is now --concurrency N (clients, at most N operations in flight)");
                case "--nodes", "--concurrency", "--rate", "--time-limit", "--sagas", "--stall-timeout", "--seed", "--nemesis",
                        "--nemesis-interval", "--faults", "--latency", "--kv-late", "--timeout", "--attempts", "--heal-timeout", "--out" -> {
                    if (i + 1 >= args.length) {
                        throw new UsageError(option + " needs a value");
                    }
                    String value = args[++i];
                    switch (option) {
                        case "--nodes" -> nodes = (int) number(option, value, 1, 20);
                        case "--concurrency" -> concurrency = (int) number(option, value, 1, 1000);
                        case "--rate" -> rate = rate(value);
                        case "--time-limit" -> timeLimit = (int) number(option, value, 1, 86_400);
                        case "--sagas" -> sagas = (int) number(option, value, 1, 1_000_000);
                        case "--stall-timeout" -> stallTimeout = (int) number(option, value, 1, 3600);
                        case "--seed" -> seed = number(option, value, Long.MIN_VALUE, Long.MAX_VALUE);
                        case "--nemesis" -> nemeses = nemeses(value);
                        case "--nemesis-interval" -> interval = number(option, value, 50, 600_000);
                        case "--faults" -> faults = (int) number(option, value, 0, 10_000);
                        case "--latency" -> latency = latency(value);
                        case "--kv-late" -> kvLate = number(option, value, 1, 600_000);
                        case "--timeout" -> timeout = number(option, value, 10, 600_000);
                        case "--attempts" -> attempts = (int) number(option, value, 1, 100);
                        case "--heal-timeout" -> heal = number(option, value, 0, 3_600_000);
                        default -> out = Path.of(value);
                    }
                }
                default -> throw new UsageError("unknown option " + option + " (tests/cluster.sh --help lists them)");
            }
        }
        if (timeLimit != null && sagas > 0) {
            throw new UsageError("--time-limit and --sagas are two bounds of one run: give one or the other");
        }
        if (command == null) {
            String runSh = projectDir.resolve("run.sh").toAbsolutePath().toString();
            command = store ? List.of(runSh, "--store", "lin-kv", "--verbose") : List.of(runSh, "--verbose");
        } else if (!store) {
            throw new UsageError("--no-store changes the default node command: give one or the other, not both");
        } else if (command.get(0).contains("/") && !Path.of(command.get(0)).isAbsolute()) {
            // nodes run in the results folder: a path like ./run.sh means the caller's folder, as Maelstrom's --bin does
            List<String> absolute = new java.util.ArrayList<>(command);
            absolute.set(0, Path.of(command.get(0)).toAbsolutePath().normalize().toString());
            command = absolute;
        }
        if (out == null) {
            out = projectDir.resolve("target").resolve("cluster-runs")
                    .resolve(java.time.LocalDateTime.now().format(java.time.format.DateTimeFormatter.ofPattern("yyyyMMdd-HHmmss-SSS")));
        }
        return new Settings(command, nodes, concurrency, rate, timeLimit == null ? 20 : timeLimit, sagas, seed, nemeses, interval, faults,
                latency, kvLate, timeout, attempts, heal, stallTimeout, out, measure);
    }

    private static double rate(String text) throws UsageError {
        double value;
        try {
            value = Double.parseDouble(text);
        } catch (NumberFormatException e) {
            throw new UsageError("--rate needs a number of operations a second, got '" + text + "'");
        }
        if (!(value >= 0.1 && value <= 100_000)) {
            throw new UsageError("--rate must be from 0.1 to 100000 operations a second, got " + text);
        }
        return value;
    }

    private static long number(String option, String text, long min, long max) throws UsageError {
        long value;
        try {
            value = Long.parseLong(text);
        } catch (NumberFormatException e) {
            throw new UsageError(option + " needs a whole number, got '" + text + "'");
        }
        if (value < min || value > max) {
            throw new UsageError(option + " must be from " + min + " to " + max + ", got " + value);
        }
        return value;
    }

    private static Set<Nemesis> nemeses(String list) throws UsageError {
        if (list.equals("none")) {
            return EnumSet.noneOf(Nemesis.class);
        }
        Set<Nemesis> chosen = EnumSet.noneOf(Nemesis.class);
        for (String name : list.split(",", -1)) {
            try {
                chosen.add(Nemesis.valueOf(name.toUpperCase(Locale.ROOT)));
            } catch (IllegalArgumentException e) {
                throw new UsageError("--nemesis takes none or a comma list of kill, pause, partition, kv; got '" + name + "'");
            }
        }
        return chosen;
    }

    private static Latency latency(String text) throws UsageError {
        String[] bounds = text.split(":", -1);
        if (bounds.length > 2) {
            throw new UsageError("--latency takes MS or MIN:MAX, got '" + text + "'");
        }
        int min = bounds.length == 1 ? 0 : (int) number("--latency", bounds[0], 0, 60_000);
        int max = (int) number("--latency", bounds[bounds.length - 1], 0, 60_000);
        if (min > max) {
            throw new UsageError("--latency " + text + ": the least delay " + min + " is above the greatest " + max);
        }
        return new Latency(min, max);
    }

    private ClusterOptions() {
    }
}
