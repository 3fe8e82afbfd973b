package payment;

import java.io.ByteArrayInputStream;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;

import payment.Faults.FaultPlan;
import payment.FundedPaymentHandler.BalanceReads;

import static payment.FileJournal.NODE_ID;
import static payment.FileJournal.journalProblem;
import static payment.FileJournal.tableFromJournal;
import static payment.PaymentNode.*;

/** The command line: the options, the usage, and the node they describe (run.sh starts this main). */
final class CommandLine {
    public static void main(String[] args) {
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("payment-node: " + e.getMessage() + " (see --help)");
            System.exit(2);
            return;
        }
        OutputStream stdout;
        try {
            stdout = replyStream();
        } catch (IOException e) {
            System.err.println("payment-node: cannot open the reply stream: " + e.getMessage());
            System.exit(2);
            return;
        }
        if (options.help()) {   // on the replies' stdout: under run.sh, System.out is stderr
            try {
                stdout.write(USAGE.getBytes(StandardCharsets.UTF_8));
            } catch (IOException e) {
                System.exit(1);
            }
            return;
        }
        // From here on a stray System.out.println, ours or a library's, lands on stderr: stdout
        // carries replies and nothing else.
        System.setOut(System.err);
        Log log = new Log(System.err, options.verbose());
        PaymentNode node;
        try {
            node = fromOptions(options, stdout, log);
        } catch (IOException | RuntimeException e) {
            System.err.println("payment-node: cannot use the journal " + options.journal() + ": " + journalProblem(e));
            System.exit(2);
            return;
        }
        Thread warmUp = new Thread(CommandLine::warmUp, "warm-up");
        warmUp.setDaemon(true);
        warmUp.start();
        System.exit(node.serve(new FileInputStream(FileDescriptor.in)));
    }

    /** A table with {@code balances} (null: none) and a limit of {@code maxKeys} keys (0: as many as the heap holds). */
    static PaymentHandler table(Log log, Journal journal, Balances balances, long maxKeys) {
        long limit = maxKeys == 0 ? PaymentHandler.keysForHeap() : maxKeys;
        return balances == null ? new PaymentHandler(log, journal, limit) : new FundedPaymentHandler(log, journal, balances, limit);
    }

    /**
     * Where replies go: stdout, or under run.sh the descriptor it hands them, its own stdout as is, while
     * the JVM's stdout is stderr ({@link ReplyStream}).
     */
    private static OutputStream replyStream() throws IOException {
        return ReplyStream.open();
    }

    /**
     * The node the options describe. The defaults keep every path as plain as it can be: one table in
     * memory, no balances, no faults; each option adds its mode around it. A journal that cannot be opened
     * now is an IOException.
     */
    static PaymentNode fromOptions(Options options, OutputStream stdout, Log log) throws IOException {
        Balances balances = options.balance() == null ? null : new Balances(options.balance());
        // Made before the journal opens: replaying it gives back the faults drawn before a restart.
        Faults faults = options.faults() == null ? null : new Faults(options.faults(), options.seed());
        if (options.linKv()) {
            // The same table as one node's, on every node; its limit fixed in advance, never the heap's (docs/CLUSTER.md).
            long maxKeys = options.maxKeys() == 0 ? ClusterService.DEFAULT_MAX_KEYS : options.maxKeys();
            PaymentHandler table = table(log, Journal.NONE, balances, maxKeys);
            return new PaymentNode(stdout, log, replies -> new ClusterService(table, options.balance(), maxKeys, options.reserveTtlMillis(),
                    faults, replies, log, options.kvTimeoutMillis()));
        }
        Function<ReplyWriter, Service> local;
        if (options.journal() != null && options.journal().contains(NODE_ID)) {
            local = replies -> new JournalAtInit(options.journal(), balances, options.maxKeys(), faults,
                    table -> new BalanceReads(new LocalService(withTtl(table, options), replies, log), balances, table::now), log);
        } else {
            PaymentHandler table = options.journal() != null
                    ? tableFromJournal(Path.of(options.journal()), log, balances, options.maxKeys(), faults)
                    : table(log, Journal.NONE, balances, options.maxKeys());
            local = replies -> new BalanceReads(new LocalService(withTtl(table, options), replies, log), balances, table::now);
        }
        if (faults == null) {
            return new PaymentNode(stdout, log, local);
        }
        boolean journalAtInit = options.journal() != null && options.journal().contains(NODE_ID);
        return new PaymentNode(stdout, log, replies -> new FaultyService(local.apply(replies), faults, journalAtInit, replies, log));
    }

    /** The table with --reserve-ttl (0: a reservation with no expires_in_ms holds for ever). */
    private static PaymentHandler withTtl(PaymentHandler table, Options options) {
        table.reserveTtl(options.reserveTtlMillis());
        return table;
    }

    /** The command line. {@code journal}, {@code balance} and {@code faults} are null when not given. */
    record Options(boolean verbose, boolean help, String journal, BigDecimal balance, FaultPlan faults, long seed,
                   boolean linKv, long kvTimeoutMillis, long maxKeys, long reserveTtlMillis) {
        /** How long a cluster node waits for a lin-kv reply before it answers its client "outcome unknown". */
        static final long DEFAULT_KV_TIMEOUT_MILLIS = 1000;

        static Options parse(String[] args) {
            boolean verbose = false;
            boolean help = false;
            String journal = null;
            BigDecimal balance = null;
            FaultPlan faults = null;
            long seed = 0;
            boolean linKv = false;
            long kvTimeout = DEFAULT_KV_TIMEOUT_MILLIS;
            long maxKeys = 0;
            long reserveTtl = 0;
            List<String> scripts = new ArrayList<>();
            Set<String> given = new HashSet<>();
            for (int i = 0; i < args.length; i++) {
                String arg = args[i];
                int equals = arg.startsWith("--") ? arg.indexOf('=') : -1;
                String name = equals < 0 ? arg : arg.substring(0, equals);
                switch (name) {
                    case "--verbose", "-v", "--help", "-h" -> {
                        if (equals >= 0) {
                            throw new IllegalArgumentException(name + " takes no value");
                        }
                        verbose |= name.equals("--verbose") || name.equals("-v");
                        help |= name.equals("--help") || name.equals("-h");
                    }
                    case "--journal", "--balance", "--faults", "--fault", "--seed", "--store", "--kv-timeout", "--max-keys",
                         "--reserve-ttl" -> {
                        given.add(name);
                        String value = equals >= 0 ? arg.substring(equals + 1) : ++i < args.length ? args[i] : null;
                        if (value == null || value.isEmpty()) {
                            throw new IllegalArgumentException(name + " needs a value" + EXAMPLES.get(name));
                        }
                        switch (name) {
                            case "--journal" -> journal = journalPath(value);
                            case "--balance" -> balance = balance(value);
                            case "--faults" -> faults = FaultPlan.parse(value);
                            case "--store" -> linKv = store(value);
                            case "--kv-timeout" -> kvTimeout = kvTimeout(value);
                            case "--fault" -> scripts.add(value);
                            case "--max-keys" -> maxKeys = maxKeys(value);
                            case "--reserve-ttl" -> reserveTtl = reserveTtl(value);
                            default -> seed = seed(value);
                        }
                    }
                    default -> throw new IllegalArgumentException("unknown option: " + arg);
                }
            }
            if (linKv && journal != null) {
                throw new IllegalArgumentException("--store lin-kv keeps the state in lin-kv: it goes with no --journal");
            }
            if (given.contains("--seed") && faults == null) {
                throw new IllegalArgumentException("--seed is the seed of --faults: it goes with --faults");
            }
            if (given.contains("--kv-timeout") && !linKv) {
                throw new IllegalArgumentException("--kv-timeout is how long a cluster node waits for lin-kv: it goes with --store lin-kv");
            }
            for (String script : scripts) {
                faults = (faults == null ? FaultPlan.NONE : faults).withScript(script);
            }
            return new Options(verbose, help, journal, balance, faults, seed, linKv, kvTimeout, maxKeys, reserveTtl);
        }

        private static boolean store(String text) {
            return switch (text) {
                case "lin-kv" -> true;
                case "memory" -> false;
                default -> throw new IllegalArgumentException("--store is lin-kv or memory, got " + text);
            };
        }

        private static long maxKeys(String text) {
            Long keys = wholeNumber(text, 1, Long.MAX_VALUE);
            if (keys == null) {
                throw new IllegalArgumentException("--max-keys needs a whole number of keys from 1, got " + text);
            }
            return keys;
        }

        private static long reserveTtl(String text) {
            Long millis = wholeNumber(text, 1, Long.MAX_VALUE);
            if (millis == null) {
                throw new IllegalArgumentException("--reserve-ttl needs milliseconds from 1, got " + text);
            }
            return millis;
        }

        private static long kvTimeout(String text) {
            Long millis = wholeNumber(text, 1, 3_600_000);
            if (millis == null) {
                throw new IllegalArgumentException("--kv-timeout needs milliseconds from 1 to 3600000, got " + text);
            }
            return millis;
        }

        /** A whole number from {@code min} to {@code max} given on the command line, else null. */
        static Long wholeNumber(String text, long min, long max) {
            try {
                long number = Long.parseLong(text);
                return number >= min && number <= max ? number : null;
            } catch (NumberFormatException notANumber) {
                return null;
            }
        }

        private static final Map<String, String> EXAMPLES = Map.of(
                "--journal", ", a file name (e.g. --journal 'payments-{node_id}.journal')",
                "--balance", ", an amount (e.g. --balance 100.00)",
                "--faults", " (e.g. --faults fail=0.05,drop=0.1,delay=0.1:200)",
                "--fault", " (e.g. --fault saga42:step2=drop,fail)",
                "--max-keys", ", a number of keys (e.g. --max-keys 1000000)",
                "--seed", ", an integer (e.g. --seed 7)",
                "--store", " (--store lin-kv)",
                "--kv-timeout", ", milliseconds (e.g. --kv-timeout 1000)",
                "--reserve-ttl", ", milliseconds (e.g. --reserve-ttl 600000)");

        private static String journalPath(String name) {
            Path.of(name.replace(NODE_ID, "n1"));   // a path this system cannot have is a usage error now, not at init
            return name;
        }

        private static BigDecimal balance(String text) {
            try {
                BigDecimal amount = new BigDecimal(text);
                if (amount.signum() >= 0 && Amount.withinDigits(amount)) {
                    return amount;
                }
            } catch (NumberFormatException notANumber) {
                // said below
            }
            throw new IllegalArgumentException("--balance needs an amount of 0 or more, got " + text);
        }

        private static long seed(String text) {
            try {
                return Long.parseLong(text);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("--seed needs an integer, got " + text);
            }
        }
    }

    static final String USAGE = """
            Usage: ./run.sh [--journal FILE] [--balance AMOUNT] [--faults LIST --seed N]
                            [--fault KEY=KINDS]... [--max-keys N] [--reserve-ttl MS]
                            [--verbose] < messages.jsonl
                   ./run.sh --store lin-kv [--kv-timeout MS] [--balance AMOUNT] [--max-keys N]
                            [--reserve-ttl MS] [--faults LIST --seed N] [--fault KEY=KINDS]...
                            [--verbose]
                   ./run.sh --build
                   java -jar target/payment-node.jar [OPTIONS]

            The payment participant of a saga, as a Maelstrom node. It reads one JSON
            message per line on stdin and writes one JSON reply per line on stdout:
              init           -> init_ok
              ChargePayment  -> ChargePayment_ok  (once per saga_id and step: a retry gets
                                                   the cached result, never a second charge)
              RefundPayment  -> RefundPayment_ok  (the compensation, just as idempotent)
              PaymentStatus  -> PaymentStatus_ok  (what is recorded for a step, read only)
              ReservePayment -> ReservePayment_ok (a hold on the step's key, instead of a
                                                   charge; expires_in_ms optional)
              CapturePayment -> CapturePayment_ok (takes the hold, or part of it, once)
              VoidPayment    -> VoidPayment_ok    (releases the hold; before it, closes
                                                   the step)
              BalanceRead    -> BalanceRead_ok    (a user's balance, charged, refunded and
                                                   held; with --balance)
            Bad input gets a Maelstrom error reply (codes 10-14, 22, with a reason such as
            key_reused or insufficient_funds), or a line on stderr
            when it cannot be answered; a message with in_reply_to is a reply and is never
            answered. The node never stops on bad input; it exits 0 at the end of its input.

            Options:
              --journal FILE  keep every charge, refund and closed step in FILE (created
                              if missing, readable by its owner only) and replay it on
                              start, so that a restart forgets nothing; a reply is written
                              only once its record is on disk. {node_id} in FILE stands
                              for the node's id: each node of a harness keeps its own
                              file, opened at its first init (requests before it get
                              error 11). Without --journal, state lives in memory only
                              and a restart forgets every idempotency key.
              --balance AMOUNT
                              every user starts with AMOUNT; a charge or reservation
                              above what is left beside the live holds is declined
                              (error 14, stored as the step's result); a refund pays
                              back, a capture takes, a void or expiry releases
              --faults LIST   inject the faults of a real payment service into
                              every request but init and the reads, at most one per
                              attempt, e.g. fail=0.05,drop=0.1,unknown=0.02,
                              delay=0.1:200,duplicate=0.05,crash=0.01:
                                fail       nothing is done; error 11 (definite)
                                drop       done; no reply
                                unknown    done; error 13 (indefinite)
                                delay=P:MS done; the reply leaves MS ms later
                                duplicate  done; the reply comes twice
                                crash      done and journaled; exit 3, no reply
                                           (with --journal, once per key)
                              each one logged on stderr with its key and msg_id
              --seed N        the seed of --faults (default 0; with --faults only): the
                              same seed gives each key's attempts the same faults,
                              whatever order the requests come in
              --fault KEY=KINDS
                              the first attempts of KEY (saga42:step2, or
                              saga42:step2:refund) get these faults in order, e.g.
                              --fault saga42:step2=drop,fail (kinds: fail, drop,
                              unknown, delay:MS, duplicate, crash, none); repeatable
              --max-keys N    refuse new keys past N (error 11, table_full; retries
                              are still served); default: what 60% of the heap holds
              --reserve-ttl MS
                              a reservation without expires_in_ms expires MS ms after
                              it first arrived (default: never); a capture after it
                              is refused (reservation_expired), its hold released
              --store lin-kv  one payment service across every node started so: every
                              node applies one log kept in the harness's lin-kv
                              service to its own table, and a retry to any node (or
                              a restarted one) gets the same result; --balance,
                              --max-keys (default 1000000) and --reserve-ttl must be
                              the same on every node; --faults touch the replies of the node that got
                              the request (fail: before it appends) (docs/CLUSTER.md)
              --store memory  the default: the table lives in this node (with --journal,
                              also in its file)
              --kv-timeout MS how long to wait for lin-kv before answering error 0,
                              outcome unknown (default 1000; with --store lin-kv only)
              -v, --verbose   also log every request and every cached answer on stderr
              -h, --help      print this help and exit
              --build         (run.sh only) build the jar ahead, then exit: a fresh
                              clone's first build takes ~10 s, as long as Maelstrom
                              waits for init_ok

            stdout carries replies and nothing else; logs go to stderr. JAVA_OPTS adds
            JVM options (run.sh keeps whatever they print off stdout).

            Example:
              printf '%s\\n' '{"src":"c1","dest":"n1","body":{"type":"init","msg_id":1}}' | ./run.sh
            """;

    /**
     * Runs every kind of request once through a throwaway node, on the second core while the real one
     * starts: the first real charge then finds its classes loaded and linked instead of paying for that
     * itself (a few milliseconds). It shares nothing with the real node: its own handler, no journal,
     * no output.
     */
    private static void warmUp() {
        String lines = """
                {"src":"c0","dest":"w","body":{"type":"init","msg_id":1}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":2,"saga_id":"w","step":1,"params":{"user_id":"u","amount":9.99}}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":3,"saga_id":"w","step":1,"params":{"user_id":"u","amount":9.99}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":4,"saga_id":"w","step":1,"params":{"payment_id":"p1","amount":1}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":5,"saga_id":"w","step":1,"params":{"payment_id":"p1","amount":1}}}
                {"src":"c1","dest":"w","body":{"type":"RefundPayment","msg_id":6,"saga_id":"w","step":2}}
                {"src":"c1","dest":"w","body":{"type":"ChargePayment","msg_id":7,"saga_id":"w","step":2,"params":{"user_id":"u","amount":1}}}
                """;
        Log silent = new Log(new PrintStream(OutputStream.nullOutputStream()), false);
        serving(new PaymentHandler(silent, Journal.NONE), OutputStream.nullOutputStream(), silent)
                .serve(new ByteArrayInputStream(lines.getBytes(StandardCharsets.UTF_8)));
    }
}
