package payment.bench;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The benchmark's workloads, with the exact replies the node must give to each request.
 *
 * <p>The throughput workload is the one the shared {@code workload.py} writes, byte for byte, for the same
 * --messages and --seed (its default mix: 30% retries of one of the last 1,000 charges or refunds, 20% refunds
 * naming the {@code p<k>} the node will give, the rest new charges of 1-4 step sagas from clients c1..c8), and
 * the latency requests are {@code latency.py}'s. Being identical is what makes the project's figures comparable
 * with the ones measured by the shared tools; to be identical, the choices come from a port of Python's own
 * random number generator ({@link PythonRandom}), called in the same order as the Python code calls it.
 */
final class BenchWorkload {
    static final String INIT = "{\"src\":\"c0\",\"dest\":\"payment\",\"body\":{\"type\":\"init\",\"msg_id\":1}}\n";
    static final String INIT_OK = "{\"src\": \"payment\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 1, \"msg_id\": 0}}\n";

    private static final int CLIENTS = 8;
    private static final int OPEN_SAGAS = 64;
    private static final int MAX_STEPS = 4;
    private static final double RETRY_RATE = 0.3;
    private static final double REFUND_RATE = 0.2;
    private static final int RETRY_WINDOW = 1000;

    /** How many requests of each kind a workload has (workload.py prints the same four counts). */
    record Counts(int charges, int chargeRetries, int refunds, int refundRetries) {
        @Override
        public String toString() {
            return "charge=" + charges + ", charge_retry=" + chargeRetries + ", refund=" + refunds + ", refund_retry=" + refundRetries;
        }
    }

    /**
     * Writes init and {@code messages} requests to {@code requests}, and the node's reply to each, in order, to
     * {@code replies}. The charges and refunds issued so far are kept as columns of ints (a row per operation),
     * not as lines, so that two million of them fit in a small heap.
     */
    static Counts write(int messages, long seed, OutputStream requests, OutputStream replies) throws IOException {
        PythonRandom rng = new PythonRandom(seed);
        Writer in = new BufferedWriter(new OutputStreamWriter(requests, StandardCharsets.US_ASCII), 1 << 16);
        Writer out = new BufferedWriter(new OutputStreamWriter(replies, StandardCharsets.US_ASCII), 1 << 16);
        int[] nextMsgId = new int[CLIENTS + 1];
        java.util.Arrays.fill(nextMsgId, 1);

        // One row per charge or refund issued (the targets of retries); a refund row has refund > 0.
        int[] opClient = new int[messages];
        int[] opSaga = new int[messages];
        int[] opStep = new int[messages];
        int[] opUser = new int[messages];
        int[] opCents = new int[messages];
        int[] opPayment = new int[messages];
        int[] opRefund = new int[messages];
        int ops = 0;
        int[] unrefunded = new int[messages];   // rows of charges not refunded yet
        int unrefundedCount = 0;
        // Open sagas, as workload.py's list [client, saga_id, user_id, next_step, last_step].
        int[][] sagas = new int[OPEN_SAGAS][];
        int openSagas = 0;
        int sagaCount = 0;
        int paymentCount = 0;
        int refundCount = 0;
        int charges = 0;
        int chargeRetries = 0;
        int refunds = 0;
        int refundRetries = 0;

        in.write(INIT);
        out.write(INIT_OK);
        for (int n = 0; n < messages; n++) {
            double r = rng.random();
            int row;
            boolean retry = false;
            if (r < RETRY_RATE && ops > 0) {
                row = rng.randrange(Math.max(0, ops - RETRY_WINDOW), ops);
                retry = true;
                if (opRefund[row] > 0) {
                    refundRetries++;
                } else {
                    chargeRetries++;
                }
            } else if (RETRY_RATE <= r && r < RETRY_RATE + REFUND_RATE && unrefundedCount > 0) {
                int i = rng.randrange(unrefundedCount);
                int charge = unrefunded[i];
                unrefunded[i] = unrefunded[--unrefundedCount];
                row = ops++;
                opClient[row] = opClient[charge];
                opSaga[row] = opSaga[charge];
                opStep[row] = opStep[charge];
                opCents[row] = opCents[charge];
                opPayment[row] = opPayment[charge];
                opRefund[row] = ++refundCount;
                refunds++;
            } else {
                while (openSagas < OPEN_SAGAS) {
                    sagaCount++;
                    int client = rng.randrange(CLIENTS) + 1;
                    int user = rng.randrange(1, 10001);
                    int lastStep = rng.randrange(1, MAX_STEPS + 1);
                    sagas[openSagas++] = new int[] {client, sagaCount, user, 1, lastStep};
                }
                int j = rng.randrange(openSagas);
                int[] saga = sagas[j];
                int step = saga[3];
                if (step == saga[4]) {
                    sagas[j] = sagas[--openSagas];
                } else {
                    saga[3] = step + 1;
                }
                int cents = rng.randrange(100, 100000);
                if (cents % 10 == 0) {
                    cents += 1 + rng.randrange(9);
                }
                row = ops++;
                opClient[row] = saga[0];
                opSaga[row] = saga[1];
                opStep[row] = step;
                opUser[row] = saga[2];
                opCents[row] = cents;
                opPayment[row] = ++paymentCount;
                opRefund[row] = 0;
                unrefunded[unrefundedCount++] = row;
                charges++;
            }
            int client = opClient[row];
            int msgId = nextMsgId[client]++;
            String amount = amount(opCents[row]);
            boolean refund = opRefund[row] > 0;
            in.write("{\"src\":\"c" + client + "\",\"dest\":\"payment\",\"body\":{\"type\":\""
                    + (refund ? "RefundPayment" : "ChargePayment") + "\",\"msg_id\":" + msgId
                    + ",\"saga_id\":\"saga" + opSaga[row] + "\",\"step\":" + opStep[row]
                    + (refund ? ",\"compensating\":true,\"params\":{\"payment_id\":\"p" + opPayment[row] + "\",\"amount\":" + amount
                              : ",\"params\":{\"user_id\":\"u" + opUser[row] + "\",\"amount\":" + amount)
                    + "}}}\n");
            out.write(reply(client, refund, opSaga[row], opStep[row],
                    refund ? "\"refund_id\": \"r" + opRefund[row] + "\", \"refunded\": " + amount
                           : "\"payment_id\": \"p" + opPayment[row] + "\", \"charged\": " + amount,
                    retry, msgId, n + 1));
        }
        in.flush();
        out.flush();
        return new Counts(charges, chargeRetries, refunds, refundRetries);
    }

    /** One ping-pong request of the latency run and the reply it must get. */
    record Exchange(int msgId, byte[] request, byte[] reply) {
    }

    /**
     * latency.py's requests (after init): ChargePayment from c1 with msg_ids 2.., new one-step sagas mixed with
     * 30% retries of one of the last 1,000 new ones.
     */
    static List<Exchange> latencyRequests(int count, long seed) {
        PythonRandom rng = new PythonRandom(seed);
        List<Exchange> exchanges = new ArrayList<>(count);
        List<int[]> sent = new ArrayList<>();   // new charges: {saga (the index i of lat<i>), user, cents, payment}
        for (int i = 0; i < count; i++) {
            int[] charge;
            boolean retry = !sent.isEmpty() && rng.random() < RETRY_RATE;
            if (retry) {
                charge = sent.get(rng.randrange(Math.max(0, sent.size() - RETRY_WINDOW), sent.size()));
            } else {
                int cents = rng.randrange(100, 100000);
                if (cents % 10 == 0) {
                    cents += 1;   // latency.py's rule, not workload.py's
                }
                charge = new int[] {i, rng.randrange(1, 10001), cents, sent.size() + 1};
                sent.add(charge);
            }
            int msgId = i + 2;
            String amount = amount(charge[2]);
            String request = "{\"src\":\"c1\",\"dest\":\"payment\",\"body\":{\"type\":\"ChargePayment\",\"msg_id\":" + msgId
                    + ",\"saga_id\":\"lat" + charge[0] + "\",\"step\":1,\"params\":{\"user_id\":\"u" + charge[1]
                    + "\",\"amount\":" + amount + "}}}\n";
            String reply = "{\"src\": \"payment\", \"dest\": \"c1\", \"body\": {\"type\": \"ChargePayment_ok\", \"saga_id\": \"lat"
                    + charge[0] + "\", \"step\": 1, \"result\": {\"payment_id\": \"p" + charge[3] + "\", \"charged\": " + amount + "}"
                    + (retry ? ", \"note\": \"cached_result\"" : "") + ", \"in_reply_to\": " + msgId + ", \"msg_id\": " + (i + 1) + "}}\n";
            exchanges.add(new Exchange(msgId, request.getBytes(StandardCharsets.US_ASCII), reply.getBytes(StandardCharsets.US_ASCII)));
        }
        return exchanges;
    }

    /** The node's reply layout (json.dumps' spacing); a retry gets the first answer with a note. */
    private static String reply(int client, boolean refund, int saga, int step, String result, boolean retry, int inReplyTo, int msgId) {
        return "{\"src\": \"payment\", \"dest\": \"c" + client + "\", \"body\": {\"type\": \""
                + (refund ? "RefundPayment_ok" : "ChargePayment_ok") + "\", \"saga_id\": \"saga" + saga + "\", \"step\": " + step
                + ", \"result\": {" + result + "}"
                + (retry ? (refund ? ", \"note\": \"already_refunded\"" : ", \"note\": \"cached_result\"") : "")
                + ", \"in_reply_to\": " + inReplyTo + ", \"msg_id\": " + msgId + "}}\n";
    }

    /** workload.py's f"{cents // 100}.{cents % 100:02d}". */
    private static String amount(int cents) {
        int fraction = cents % 100;
        return (cents / 100) + (fraction < 10 ? ".0" : ".") + fraction;
    }

    /**
     * CPython's {@code random.Random(seed)} for a non-negative integer seed: the same Mersenne Twister, seeded
     * by {@code init_by_array} with the seed's 32-bit words, and the same {@code random()} and
     * {@code randrange()} on top (Python 3.2+), so that every draw equals Python's.
     */
    static final class PythonRandom {
        private static final int N = 624;
        private static final int M = 397;
        private final int[] mt = new int[N];
        private int index;

        PythonRandom(long seed) {
            if (seed < 0) {
                throw new IllegalArgumentException("seed must be >= 0, got " + seed);
            }
            int[] key = (seed >>> 32) == 0 ? new int[] {(int) seed} : new int[] {(int) seed, (int) (seed >>> 32)};
            initByArray(key);
        }

        private void initGenrand(int s) {
            mt[0] = s;
            for (int i = 1; i < N; i++) {
                mt[i] = 1812433253 * (mt[i - 1] ^ (mt[i - 1] >>> 30)) + i;
            }
            index = N;
        }

        private void initByArray(int[] key) {
            initGenrand(19650218);
            int i = 1;
            int j = 0;
            for (int k = Math.max(N, key.length); k > 0; k--) {
                mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >>> 30)) * 1664525)) + key[j] + j;
                i++;
                j++;
                if (i >= N) {
                    mt[0] = mt[N - 1];
                    i = 1;
                }
                if (j >= key.length) {
                    j = 0;
                }
            }
            for (int k = N - 1; k > 0; k--) {
                mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >>> 30)) * 1566083941)) - i;
                i++;
                if (i >= N) {
                    mt[0] = mt[N - 1];
                    i = 1;
                }
            }
            mt[0] = 0x80000000;
        }

        /** genrand_uint32, as an int holding the 32 bits. */
        int nextInt32() {
            if (index >= N) {
                for (int k = 0; k < N; k++) {
                    int y = (mt[k] & 0x80000000) | (mt[(k + 1) % N] & 0x7fffffff);
                    mt[k] = mt[(k + M) % N] ^ (y >>> 1) ^ ((y & 1) != 0 ? 0x9908b0df : 0);
                }
                index = 0;
            }
            int y = mt[index++];
            y ^= y >>> 11;
            y ^= (y << 7) & 0x9d2c5680;
            y ^= (y << 15) & 0xefc60000;
            y ^= y >>> 18;
            return y;
        }

        /** random.random(): 53 random bits in [0, 1). */
        double random() {
            int a = nextInt32() >>> 5;
            int b = nextInt32() >>> 6;
            return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
        }

        /** random.randrange(n): _randbelow, which draws bit_length(n) bits until the value is below n. */
        int randrange(int n) {
            if (n <= 0) {
                throw new IllegalArgumentException("empty range for randrange(" + n + ")");
            }
            int bits = 32 - Integer.numberOfLeadingZeros(n);
            // Each draw is below n with probability > 1/2; Python draws again on a miss, so must we, to stay in step.
            int value = nextInt32() >>> (32 - bits);
            while (value >= n) {
                value = nextInt32() >>> (32 - bits);
            }
            return value;
        }

        /** random.randrange(start, stop). */
        int randrange(int start, int stop) {
            return start + randrange(stop - start);
        }
    }

    private BenchWorkload() {
    }
}
