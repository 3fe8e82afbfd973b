package payment;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;
import java.util.stream.IntStream;

import payment.PaymentNode.Amount;
import payment.PaymentNode.ChargeRequest;
import payment.PaymentNode.ChargeResult;
import payment.PaymentNode.ErrorCode;
import payment.PaymentNode.PaymentHandler;
import payment.PaymentNode.RefundRequest;
import payment.PaymentNode.RefundResult;
import payment.PaymentNode.RpcError;
import payment.PaymentNode.Served;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** docs/PROTOCOL.md section 6: however often and however concurrently a step is retried, it takes effect once. */
class ConcurrencyTest {
    private static final int THREADS = 8;

    private static PaymentHandler handler() {
        return new PaymentHandler(Node.silentLog(), PaymentNode.Journal.NONE);
    }

    private static Amount amount(String text) {
        return new Amount(text, new BigDecimal(text));
    }

    /** Runs {@code work(thread)} on THREADS threads released together, and rethrows any failure. */
    private static void onAllThreads(ThrowingIntConsumer work) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(THREADS);
        CyclicBarrier start = new CyclicBarrier(THREADS);
        try {
            List<Future<?>> futures = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                int thread = t;
                futures.add(pool.submit(() -> {
                    start.await();
                    work.accept(thread);
                    return null;
                }));
            }
            for (Future<?> f : futures) {
                f.get(120, TimeUnit.SECONDS);
            }
        } finally {
            pool.shutdownNow();
        }
    }

    interface ThrowingIntConsumer {
        void accept(int value) throws Exception;
    }

    @Tag("slow")
    @Test
    void everyKeyIsChargedOnceAndEveryAttemptSeesTheSameResult() throws Exception {
        int keys = 300;
        int attemptsPerKey = 2_000;
        PaymentHandler payments = handler();
        Map<String, Set<ChargeResult>> seen = new ConcurrentHashMap<>();
        AtomicInteger firstAttempts = new AtomicInteger();
        onAllThreads(thread -> {
            Random random = new Random(thread);
            List<Integer> order = IntStream.range(0, keys).boxed().collect(Collectors.toList());
            for (int round = 0; round < attemptsPerKey / THREADS; round++) {
                Collections.shuffle(order, random);
                for (int k : order) {
                    ChargeRequest request = new ChargeRequest("saga" + k, k % 4, "u" + k, amount(k + 1 + ".50"));
                    Served<ChargeResult> served = payments.charge(request);
                    seen.computeIfAbsent(request.key(), key -> ConcurrentHashMap.newKeySet()).add(served.result());
                    if (!served.replayed()) {
                        firstAttempts.incrementAndGet();
                    }
                }
            }
        });
        assertEquals(keys, seen.size());
        Set<String> paymentIds = new HashSet<>();
        seen.forEach((key, results) -> {
            assertEquals(1, results.size(), key + " got different results: " + results);
            paymentIds.add(results.iterator().next().paymentId());
        });
        assertEquals(keys, firstAttempts.get(), "exactly one attempt per key charged");
        assertEquals(IntStream.rangeClosed(1, keys).mapToObj(i -> "p" + i).collect(Collectors.toSet()), paymentIds,
                "payment ids are exactly p1..pN");
    }

    @Test
    void concurrentRefundsOfOnePaymentNeverAddUpToMoreThanItCharged() throws Exception {
        PaymentHandler payments = handler();
        String paymentId = payments.charge(new ChargeRequest("order", 0, "u1", amount("100"))).result().paymentId();
        Map<String, RefundResult> granted = new ConcurrentHashMap<>();
        AtomicInteger refused = new AtomicInteger();
        onAllThreads(thread -> {
            for (int attempt = 0; attempt < 3; attempt++) {           // each step retried three times
                for (int i = 0; i < 50; i++) {
                    int step = thread * 50 + i + 1;                    // 400 compensations, each its own step
                    try {
                        RefundResult result = payments.refund(new RefundRequest("order", step, paymentId, amount("1"))).result();
                        RefundResult earlier = granted.putIfAbsent("order:step" + step, result);
                        assertTrue(earlier == null || earlier.equals(result), "a retry got another result");
                    } catch (RpcError e) {
                        assertEquals(ErrorCode.PRECONDITION_FAILED, e.code);
                        refused.incrementAndGet();
                    }
                }
            }
        });
        assertEquals(100, granted.size(), "exactly the charged 100 was refunded, 1 at a time");
        assertEquals(IntStream.rangeClosed(1, 100).mapToObj(i -> "r" + i).collect(Collectors.toSet()),
                granted.values().stream().map(RefundResult::refundId).collect(Collectors.toSet()));
        assertEquals(300 * 3, refused.get(), "the other 300 steps are refused on every attempt, leaving no record");
    }

    @Test
    void aCompensationRacingItsChargeEitherRefundsItOrClosesTheStep() throws Exception {
        int steps = 2_000;
        PaymentHandler payments = handler();
        Map<Integer, Served<ChargeResult>> charges = new ConcurrentHashMap<>();
        Map<Integer, RpcError> chargeErrors = new ConcurrentHashMap<>();
        Map<Integer, RefundResult> refunds = new ConcurrentHashMap<>();
        onAllThreads(thread -> {
            for (int step = 0; step < steps; step++) {
                if ((thread + step) % 2 == 0) {   // for each step, half the threads charge and half compensate
                    try {
                        Served<ChargeResult> served = payments.charge(new ChargeRequest("race", step, "u1", amount("5")));
                        charges.merge(step, served, (a, b) -> {
                            assertEquals(a.result(), b.result());
                            return a;
                        });
                    } catch (RpcError e) {
                        assertEquals(ErrorCode.ABORT, e.code);
                        chargeErrors.put(step, e);
                    }
                } else {
                    RefundResult result = payments.refund(new RefundRequest("race", step, null, null)).result();
                    RefundResult earlier = refunds.putIfAbsent(step, result);
                    assertTrue(earlier == null || earlier.equals(result));
                }
            }
        });
        for (int step = 0; step < steps; step++) {
            RefundResult refund = refunds.get(step);
            if (refund.refundId() == null) {
                assertEquals("0", refund.refunded());
                assertTrue(chargeErrors.containsKey(step) && !charges.containsKey(step), "step " + step + " charged after its compensation");
            } else {
                assertNull(chargeErrors.get(step));
                assertEquals("5", refund.refunded(), "step " + step + " refunded its own charge");
            }
        }
    }
}
