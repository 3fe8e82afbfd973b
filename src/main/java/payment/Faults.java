package payment;

import java.util.ArrayList;
import java.util.EnumMap;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;

import payment.CommandLine.Options;

import static payment.PaymentNode.*;

/**
 * Draws at most one fault per ChargePayment or RefundPayment attempt. The fault of attempt k of key K
 * comes from (--seed, K, k) alone, so the same sagas get the same faults however their requests
 * interleave; a key named by --fault gets its listed faults on its first attempts, in order. Among
 * the --faults probabilities the faults are tried in a fixed order (fail, drop, unknown, delay,
 * duplicate, crash), whatever order the option lists them in. With --journal, each drawn fault is recorded
 * and replayed, so that a restart neither draws a faulted attempt again nor crashes a key a second time
 * (docs/PROTOCOL.md section 9, "Faults and restarts").
 */
final class Faults {
    private final FaultPlan plan;
    private final long seed;
    /** Attempts so far of each key that came here: one small counter per key, like the table's entry. */
    private final ConcurrentHashMap<String, Integer> attempts = new ConcurrentHashMap<>();
    /** Keys that crashed the node once: a restarted node that crashed them again would never answer them. */
    private final Set<String> crashed = ConcurrentHashMap.newKeySet();
    /** Where each drawn fault is recorded, so that a restart does not replay it (--journal); null: nowhere. */
    private volatile FileJournal journal;

    Faults(FaultPlan plan, long seed) {
        this.plan = plan;
        this.seed = seed;
    }

    /**
     * The fault of this attempt of {@code key}, or null. A drawn fault is recorded in the journal (if any)
     * before the work it goes with, so that a crash commits it with that work: the restarted node counts on
     * from that attempt and never draws it again. A key that crashed the node once is never crashed again
     * (its crash is no fault), so that a supervisor that restarts and retries gets its answer.
     */
    Drawn draw(String key) {
        int attempt = attempts.merge(key, 1, Integer::sum);
        Drawn drawn = drawFor(key, attempt);
        if (drawn == null || drawn.fault() == Fault.CRASH && !crashed.add(key)) {
            return null;
        }
        FileJournal keeping = journal;
        if (keeping != null) {
            keeping.faultDrawn(key, attempt, drawn.fault());
        }
        return drawn;
    }

    private Drawn drawFor(String key, int attempt) {
        List<Drawn> scripted = plan.scripted().get(key);
        if (scripted != null && attempt <= scripted.size()) {
            Drawn drawn = scripted.get(attempt - 1);
            return drawn.fault() == null ? null : drawn;
        }
        if (plan.probabilities().isEmpty()) {
            return null;
        }
        double roll = new SplittableRandom(seed ^ fnv64(key) ^ attempt * 0x9E3779B97F4A7C15L).nextDouble();
        for (var fault : plan.probabilities().entrySet()) {
            roll -= fault.getValue();
            if (roll < 0) {
                return new Drawn(fault.getKey(), plan.delayMillis());
            }
        }
        return null;
    }

    /** Replaying a journal: attempt {@code attempt} of {@code key} drew {@code fault}; the next attempt comes after it. */
    void restore(String key, int attempt, Fault fault) {
        attempts.merge(key, attempt, Math::max);
        if (fault == Fault.CRASH) {
            crashed.add(key);
        }
    }

    /** From now on every drawn fault is recorded in {@code journal} (replayed first, with {@link #restore}). */
    void recordIn(FileJournal journal) {
        this.journal = journal;
    }

    /** A 64-bit hash of a key (FNV-1a over its chars): nearby keys get unrelated seeds. */
    private static long fnv64(String key) {
        long hash = 0xcbf29ce484222325L;
        for (int i = 0; i < key.length(); i++) {
            hash = (hash ^ key.charAt(i)) * 0x100000001b3L;
        }
        return hash;
    }

    /** The faults a payment service shows in real life (docs/PROTOCOL.md section 9 has what each does to a reply). */
    enum Fault {
        FAIL("fail"), DROP("drop"), UNKNOWN("unknown"), DELAY("delay"), DUPLICATE("duplicate"), CRASH("crash");

        final String option;

        Fault(String option) {
            this.option = option;
        }

        /** The fault an option names ({@code drop}), or null. */
        static Fault named(String option) {
            for (Fault fault : values()) {
                if (fault.option.equals(option)) {
                    return fault;
                }
            }
            return null;
        }
    }

    /** --faults: the probability of each fault per attempt (they add up to at most 1), and the delay. */
    record FaultPlan(EnumMap<Fault, Double> probabilities, long delayMillis, Map<String, List<Drawn>> scripted) {
        static final FaultPlan NONE = new FaultPlan(new EnumMap<>(Fault.class), 0, Map.of());

        /** The same plan, and {@code KEY=KIND[,KIND...]} (--fault): that key's first attempts get those faults, in order. */
        FaultPlan withScript(String option) {
            int equals = option.lastIndexOf('=');
            if (equals <= 0 || equals == option.length() - 1) {
                throw new IllegalArgumentException("--fault needs KEY=KIND[,KIND...], e.g. --fault saga42:step2=drop,fail, got '" + option + "'");
            }
            String key = option.substring(0, equals);
            List<Drawn> faults = new ArrayList<>();
            for (String kind : option.substring(equals + 1).split(",", -1)) {
                faults.add(scriptedFault(kind));
            }
            Map<String, List<Drawn>> more = new HashMap<>(scripted);
            if (more.put(key, List.copyOf(faults)) != null) {
                throw new IllegalArgumentException("--fault: " + key + " is given twice");
            }
            return new FaultPlan(probabilities, delayMillis, Map.copyOf(more));
        }

        /** One attempt's fault in a --fault list: a kind, delay:MS, or none (the attempt goes through). */
        private static Drawn scriptedFault(String kind) {
            if (kind.equals("none")) {
                return new Drawn(null, 0);
            }
            if (kind.startsWith("delay:")) {
                return new Drawn(Fault.DELAY, milliseconds(kind.substring("delay:".length())));
            }
            Fault fault = Fault.named(kind);
            if (fault == null || fault == Fault.DELAY) {
                throw new IllegalArgumentException("--fault: unknown fault '" + kind + "' (known: fail, drop, unknown, delay:MS,"
                        + " duplicate, crash, none)");
            }
            return new Drawn(fault, 0);
        }

        static FaultPlan parse(String list) {
            EnumMap<Fault, Double> probabilities = new EnumMap<>(Fault.class);
            long delayMillis = 0;
            double total = 0;
            for (String item : list.split(",", -1)) {
                int equals = item.indexOf('=');
                String name = equals < 0 ? item : item.substring(0, equals);
                Fault fault = Fault.named(name);
                if (fault == null) {
                    throw new IllegalArgumentException("--faults: unknown fault '" + name + "' (known: fail, drop, unknown,"
                            + " delay, duplicate, crash; e.g. --faults fail=0.05,delay=0.1:200)");
                }
                if (probabilities.containsKey(fault)) {
                    throw new IllegalArgumentException("--faults: " + name + " is given twice");
                }
                String value = equals < 0 ? "" : item.substring(equals + 1);
                if (fault == Fault.DELAY) {
                    int colon = value.indexOf(':');
                    if (colon < 0) {
                        throw new IllegalArgumentException("--faults: delay needs a probability and milliseconds, e.g. delay=0.1:200");
                    }
                    delayMillis = milliseconds(value.substring(colon + 1));
                    value = value.substring(0, colon);
                }
                double probability = probability(name, value);
                probabilities.put(fault, probability);
                total += probability;
            }
            if (total > 1 + 1e-9) {
                throw new IllegalArgumentException("--faults: the probabilities add up to " + total + ", more than 1"
                        + " (each attempt draws at most one fault)");
            }
            return new FaultPlan(probabilities, delayMillis, Map.of());
        }

        private static double probability(String name, String text) {
            try {
                double p = Double.parseDouble(text);
                if (p >= 0 && p <= 1) {
                    return p;
                }
            } catch (NumberFormatException notANumber) {
                // said below
            }
            throw new IllegalArgumentException("--faults: " + name + " needs a probability from 0 to 1, e.g. " + name + "=0.05,"
                    + " got '" + text + "'");
        }

        private static long milliseconds(String text) {
            Long millis = Options.wholeNumber(text, 0, 3_600_000);
            if (millis != null) {
                return millis;
            }
            throw new IllegalArgumentException("--faults: delay needs whole milliseconds from 0 to 3600000, got '" + text + "'");
        }
    }

    /** A fault drawn for one attempt, and how long its reply waits when it is a delay. */
    record Drawn(Fault fault, long delayMillis) {
    }
}
