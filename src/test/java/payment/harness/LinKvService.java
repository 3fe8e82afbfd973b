package payment.harness;

import payment.LinKvStore;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.util.HashMap;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.DelayQueue;
import java.util.concurrent.Delayed;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;

/**
 * Maelstrom's lin-kv, as its service.clj has it: a map behind one lock, so that every operation takes effect at one
 * instant between its request and its reply (linearizable). read gives read_ok with the value or error 20; write
 * gives write_ok; cas compares whole values (Clojure's =: 1 is not 1.0) and gives cas_ok, error 22 when the value
 * is not {@code from}, error 20 when the key is missing unless {@code create_if_not_exists}. Values are kept as
 * Maelstrom's JSON reader leaves them: numbers with a point or exponent become doubles (100.50 reads back as
 * 100.5). Replies carry in_reply_to and no msg_id. A request of another type gets no reply at all: Maelstrom's
 * service thread logs the exception and answers nothing.
 *
 * <p>Replies leave after a seeded random delay, so they can overtake each other. While the kv nemesis is on, each
 * reply is, with fixed odds, lost (1 in 5), sent twice (1 in 10) or held {@code lateMillis} longer (1 in 10: past
 * the nodes' timeout). The outbox is a delay queue of at most {@value #MAX_PENDING} replies; beyond that a reply is
 * lost, as on a congested network, and counted.
 */
final class LinKvService {
    static final String ID = "lin-kv";
    static final int MAX_PENDING = 100_000;

    /** Counts by what happened to a reply, for results.json. */
    enum Fate {
        LOST, DUPLICATED, LATE, OVERFLOW
    }

    private final ObjectMapper json;
    private final LinKvStore store;
    private final DelayQueue<Due> outbox = new DelayQueue<>();
    private final Random random;
    private final ClusterOptions.Latency latency;
    private final long lateMillis;
    private final Consumer<JsonNode> deliver;
    private final Consumer<String> log;
    private final Map<String, AtomicLong> calls = new TreeMap<>();
    private final Map<Fate, AtomicLong> fates = new TreeMap<>();
    private volatile boolean faulty;
    private final Thread postman;

    /** {@code json}: a mapper that reads numbers as Maelstrom does (doubles; whole numbers as longs). */
    LinKvService(ObjectMapper json, long seed, ClusterOptions.Latency latency, long lateMillis, Consumer<JsonNode> deliver,
                 Consumer<String> log) {
        this.json = json;
        this.store = new LinKvStore(json);
        this.random = new Random(seed);
        this.latency = latency;
        this.lateMillis = lateMillis;
        this.deliver = deliver;
        this.log = log;
        for (Fate fate : Fate.values()) {
            fates.put(fate, new AtomicLong());
        }
        postman = new Thread(() -> {
            try {
                while (!Thread.currentThread().isInterrupted()) {
                    deliver.accept(outbox.take().message());
                }
            } catch (InterruptedException stopped) {
                // the run is over
            }
        }, "lin-kv");
        postman.setDaemon(true);
        postman.start();
    }

    /** The kv nemesis: from now on (or no longer) replies are lost, duplicated or late. */
    void setFaulty(boolean on) {
        faulty = on;
    }

    void receive(JsonNode request) {
        JsonNode body = request.path("body");
        String type = body.path("type").asText();
        long delay;
        synchronized (this) {
            calls.computeIfAbsent(type, t -> new AtomicLong()).incrementAndGet();
            ObjectNode reply = store.handle(body);   // Maelstrom's lin-kv, the one store the simulated cluster uses too
            if (reply == null) {
                log.accept("lin-kv: a request of type '" + type + "' from " + request.path("src").asText()
                        + " is not one lin-kv serves: no reply (as Maelstrom's service thread)");
                return;
            }
            delay = latency.minMillis() + random.nextInt(latency.maxMillis() - latency.minMillis() + 1);
            ObjectNode message = json.createObjectNode();
            message.put("src", ID);
            message.set("dest", request.path("src"));
            message.set("body", reply);
            if (faulty) {
                int draw = random.nextInt(10);
                if (draw < 2) {
                    fates.get(Fate.LOST).incrementAndGet();
                    return;
                }
                if (draw == 2) {
                    fates.get(Fate.DUPLICATED).incrementAndGet();
                    schedule(message, delay + random.nextInt(50));
                } else if (draw == 3) {
                    fates.get(Fate.LATE).incrementAndGet();
                    delay += lateMillis;
                }
            }
            schedule(message, delay);
        }
    }

    private void schedule(JsonNode message, long delayMillis) {
        if (outbox.size() >= MAX_PENDING) {
            fates.get(Fate.OVERFLOW).incrementAndGet();
            return;
        }
        outbox.add(new Due(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(delayMillis), message));
    }

    synchronized Map<String, Long> calls() {
        Map<String, Long> copy = new TreeMap<>();
        calls.forEach((type, count) -> copy.put(type, count.get()));
        return copy;
    }

    synchronized long totalCalls() {
        return calls.values().stream().mapToLong(AtomicLong::get).sum();
    }

    Map<String, Long> fates() {
        Map<String, Long> copy = new TreeMap<>();
        fates.forEach((fate, count) -> copy.put(fate.name().toLowerCase(java.util.Locale.ROOT), count.get()));
        return copy;
    }

    void stop() {
        postman.interrupt();
    }

    private record Due(long dueNanos, JsonNode message) implements Delayed {
        @Override
        public long getDelay(TimeUnit unit) {
            return unit.convert(dueNanos - System.nanoTime(), TimeUnit.NANOSECONDS);
        }

        @Override
        public int compareTo(Delayed other) {
            return Long.compare(dueNanos, ((Due) other).dueNanos);
        }
    }
}
