package payment;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.cfg.JsonNodeFeature;
import com.fasterxml.jackson.databind.json.JsonMapper;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The crash test with reservations (issue 21): a real node with --journal and --balance, killed with SIGKILL at
 * random instants while a two-phase workload streams in (reservations with and without deadlines, partial and
 * default captures, voids before and after their reservations, refunds of captures, charges beside them), restarted,
 * and sent every earlier request again. Every request is answered as it was the first time it was answered (a
 * result, or an error that is for good), every key has one first answer (no note) at most, expiry keeps its
 * deadline across restarts, and at the end PaymentStatus and BalanceRead agree with the answers: no capture or void
 * applied twice, no hold lost or kept.
 */
class TwoPhaseCrashTest {
    @TempDir
    Path dir;

    static final String START_BALANCE = "3000";
    /** How far apart the node's clock and this test's may read one instant (same machine: the granularity). */
    static final long MARGIN_MS = 25;
    static final long LONG_TTL = 3_600_000;
    /** Errors that are a key's result for good: a retry must get them again, word for word. */
    static final Set<String> FINAL_ERRORS = Set.of("insufficient_funds", "step_compensated", "reservation_voided", "reservation_expired",
            "already_captured");
    /** Errors that may change with what comes later (a capture before its reservation, a refund before its capture). */
    static final Set<String> PASSING_ERRORS = Set.of("no_reservation", "payment_not_captured");

    /** One request of the workload (without its msg_id); retries are the same Op again. */
    record Op(String kind, String saga, String user, String amount, long ttl, String body) {
        String key() {
            String step = saga + ":step1";
            return switch (kind) {
                case "capture" -> step + ":capture";
                case "void" -> step + ":void";
                case "refund" -> step + ":refund";
                default -> step;
            };
        }

        boolean isReserve() {
            return kind.equals("reserve");
        }
    }

    static String money(long cents) {
        return cents / 100 + "." + String.format("%02d", cents % 100);
    }

    /** The workload: sagas of one step each, their follow-ups spread over the stream, and retries of earlier requests. */
    static List<Op> workload(int size, Random random) {
        List<Op> stream = new ArrayList<>();
        TreeMap<Integer, List<Op>> later = new TreeMap<>();
        int sagas = 0;
        while (stream.size() < size) {
            Map.Entry<Integer, List<Op>> due = later.firstEntry();
            if (due != null && due.getKey() <= stream.size()) {
                later.remove(due.getKey());
                stream.addAll(due.getValue());
                continue;
            }
            if (random.nextDouble() < 0.25 && !stream.isEmpty()) {
                stream.add(stream.get(stream.size() - 1 - random.nextInt(Math.min(stream.size(), 800))));
                continue;
            }
            String saga = "t" + ++sagas;
            String user = random.nextDouble() < 0.3 ? "u" + random.nextInt(3) : "u" + (3 + random.nextInt(37));
            long cents = 100 + random.nextInt(9900);
            List<Op> chain = new ArrayList<>();
            double r = random.nextDouble();
            if (r < 0.18) {
                chain.add(charge(saga, user, money(cents)));
                if (random.nextBoolean()) {
                    chain.add(refund(saga, random.nextBoolean() ? null : money(1 + random.nextInt((int) cents))));
                }
            } else if (r < 0.26) {   // the void comes first: a null compensation that closes the step
                chain.add(voidOp(saga));
                chain.add(reserve(saga, user, money(cents), -1));
                if (random.nextBoolean()) {
                    chain.add(capture(saga, null));
                }
            } else if (r < 0.30) {   // the capture overtakes its reservation: no_reservation, then the same capture again
                Op capture = capture(saga, null);
                chain.add(capture);
                chain.add(reserve(saga, user, money(cents), -1));
                chain.add(capture);
            } else {
                double t = random.nextDouble();
                long ttl = t < 0.45 ? -1 : t < 0.75 ? new long[] {1, 10, 50, 150, 250, 400}[random.nextInt(6)] : LONG_TTL;
                chain.add(reserve(saga, user, money(cents), ttl));
                double then = random.nextDouble();
                if (then < 0.65) {
                    long captured = then < 0.35 ? cents : 1 + random.nextInt((int) cents - 1);
                    chain.add(capture(saga, then < 0.35 ? null : money(captured)));
                    double after = random.nextDouble();
                    if (after < 0.4) {
                        chain.add(refund(saga, random.nextBoolean() ? null : money(1 + random.nextInt((int) captured))));
                    } else if (after < 0.7) {
                        chain.add(voidOp(saga));   // 14 already_captured (or, expired first, released 0)
                    }
                } else if (then < 0.9) {
                    chain.add(voidOp(saga));
                    if (random.nextDouble() < 0.4) {
                        chain.add(capture(saga, null));   // 14 reservation_voided
                    }
                }   // else: left alone, held to its end (or its deadline)
            }
            int at = stream.size();
            stream.add(chain.get(0));
            for (Op op : chain.subList(1, chain.size())) {
                at += 1 + random.nextInt(2_000);
                later.computeIfAbsent(at, position -> new ArrayList<>()).add(op);
            }
        }
        return stream;
    }

    static Op charge(String saga, String user, String amount) {
        return new Op("charge", saga, user, amount, -1, "\"type\":\"ChargePayment\",\"saga_id\":\"" + saga + "\",\"step\":1,\"params\":{\"user_id\":\""
                + user + "\",\"amount\":" + amount + "}");
    }

    static Op reserve(String saga, String user, String amount, long ttl) {
        return new Op("reserve", saga, user, amount, ttl, "\"type\":\"ReservePayment\",\"saga_id\":\"" + saga + "\",\"step\":1,\"params\":{\"user_id\":\""
                + user + "\",\"amount\":" + amount + (ttl < 0 ? "" : ",\"expires_in_ms\":" + ttl) + "}");
    }

    static Op capture(String saga, String amount) {
        return new Op("capture", saga, null, amount, -1, "\"type\":\"CapturePayment\",\"saga_id\":\"" + saga + "\",\"step\":1"
                + (amount == null ? "" : ",\"params\":{\"amount\":" + amount + "}"));
    }

    static Op voidOp(String saga) {
        return new Op("void", saga, null, null, -1, "\"type\":\"VoidPayment\",\"saga_id\":\"" + saga + "\",\"step\":1,\"compensating\":true");
    }

    static Op refund(String saga, String amount) {
        return new Op("refund", saga, null, amount, -1, "\"type\":\"RefundPayment\",\"saga_id\":\"" + saga + "\",\"step\":1,\"compensating\":true"
                + (amount == null ? "" : ",\"params\":{\"amount\":" + amount + "}"));
    }

    static String line(int msgId, String body) {
        return Wire.request("{\"msg_id\":" + msgId + "," + body + "}");
    }

    // ---- replies -----------------------------------------------------------------------------------------

    private static final ObjectMapper JSON = JsonMapper.builder()
            .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .configure(JsonNodeFeature.STRIP_TRAILING_BIGDECIMAL_ZEROES, false)
            .build();

    private static final Pattern NOTE = Pattern.compile(", \"note\": \"[a-z_]+\"");
    private static final Pattern ENDING = Pattern.compile(", \"in_reply_to\": (\\d+), \"msg_id\": \\d+\\}\\}$");

    /** A reply line read: its request, its answer without note and ids (what a retry must get again), its parts. */
    record Reply(int inReplyTo, String answer, String note, String reason, JsonNode body, long seenAt) {
        boolean ok() {
            return reason == null;
        }

        JsonNode result() {
            return body.get("result");
        }

        BigDecimal amount(String field) {
            JsonNode value = result().get(field);
            return value == null ? null : value.decimalValue();
        }
    }

    static Reply read(String line, long seenAt) {
        Matcher ending = ENDING.matcher(line);
        if (!ending.find()) {
            throw new IllegalArgumentException("not a reply: " + line);
        }
        JsonNode body;
        try {
            body = JSON.readTree(line).get("body");
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException("not JSON: " + line, e);
        }
        String answer = NOTE.matcher(line.substring(0, ending.start())).replaceFirst("");
        return new Reply(Integer.parseInt(ending.group(1)), answer, body.hasNonNull("note") ? body.get("note").asText() : null,
                body.get("type").asText().equals("error") ? body.get("reason").asText() : null, body, seenAt);
    }

    static boolean same(JsonNode amount, BigDecimal expected) {
        return amount != null && expected != null && amount.decimalValue().compareTo(expected) == 0;
    }

    // ---- the run -------------------------------------------------------------------------------------------

    /** What a node process answered in one round. */
    record Round(List<Reply> replies, boolean killed, String stderr, int status) {
    }

    /**
     * Runs a node on the journal and writes requests {@code 0..upTo) of {@code lines} (recording when each was
     * written), then {@code more} once every one is answered; SIGKILL once {@code killAfter} replies came.
     */
    private Round round(Path journal, int index, List<String> probes, List<String> lines, int upTo, long[] writtenAt, int killAfter,
                        List<String> more) throws Exception {
        Path stderrFile = dir.resolve("stderr-" + index);
        Process node = Node.start(List.of(), stderrFile, "--journal", journal.toString(), "--balance", START_BALANCE);
        List<String> out = new ArrayList<>();
        List<Long> seen = new ArrayList<>();
        Thread reader = new Thread(() -> {
            try (BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = stdout.readLine()) != null; ) {
                    long now = System.currentTimeMillis();
                    synchronized (out) {
                        out.add(line);
                        seen.add(now);
                    }
                }
            } catch (IOException killed) {
                // the pipe breaks when the node is killed
            }
        });
        reader.start();
        boolean killed = false;
        OutputStream stdin = node.getOutputStream();
        try {
            // A first request, answered once the journal is replayed: the probes after it are read just after the replay.
            stdin.write(line(PING, "\"type\":\"PaymentStatus\",\"saga_id\":\"ping\",\"step\":1").getBytes(StandardCharsets.UTF_8));
            stdin.flush();
            long upAt = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (size(out) == 0 && node.isAlive() && System.nanoTime() < upAt) {
                Thread.sleep(1);
            }
            probesWrittenAt = System.currentTimeMillis();
            for (String probe : probes) {
                stdin.write(probe.getBytes(StandardCharsets.UTF_8));
            }
            for (int i = 0; i < upTo && !killed; i++) {
                writtenAt[i] = System.currentTimeMillis();   // before the write: the node cannot read it earlier
                stdin.write(lines.get(i).getBytes(StandardCharsets.UTF_8));
                if (i % 100 == 99) {
                    stdin.flush();
                    killed = killIfAnswered(node, out, killAfter);
                }
            }
            stdin.flush();
        } catch (IOException brokenPipe) {
            // the node died under the writer
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (!killed && node.isAlive() && System.nanoTime() < deadline && size(out) < Math.min(killAfter, 1 + upTo + probes.size())) {
            Thread.sleep(1);
        }
        killed = killed || killIfAnswered(node, out, killAfter);
        if (!killed && more != null && node.isAlive() && size(out) == 1 + upTo + probes.size()) {
            Thread.sleep(450);   // past every short deadline
            try {
                for (String line : more) {
                    stdin.write(line.getBytes(StandardCharsets.UTF_8));
                }
                stdin.flush();
            } catch (IOException brokenPipe) {
                // the node died: its stderr says why
            }
        }
        if (!killed) {
            try {
                stdin.close();
            } catch (IOException brokenPipe) {
                // the node died: its stderr says why
            }
        }
        assertTrue(node.waitFor(60, TimeUnit.SECONDS), "round " + index + ": the node ended");
        reader.join(10_000);
        String errors = Files.readString(stderrFile);
        List<Reply> replies = new ArrayList<>();
        synchronized (out) {
            if (killed && !out.isEmpty() && !out.get(out.size() - 1).endsWith("}}")) {
                out.remove(out.size() - 1);   // cut by the kill in mid-write: never answered
            }
            for (int i = 0; i < out.size(); i++) {
                replies.add(read(out.get(i), seen.get(i)));
            }
        }
        return new Round(replies, killed, errors, killed ? -1 : node.exitValue());
    }

    /** When this round's probes were written (before the first of them). */
    private long probesWrittenAt;
    private static final int PING = Checker.PING;

    private static int size(List<String> lines) {
        synchronized (lines) {
            return lines.size();
        }
    }

    private static boolean killIfAnswered(Process node, List<String> lines, int replies) {
        if (size(lines) < replies) {
            return false;
        }
        node.destroyForcibly();
        return true;
    }

    @Tag("slow")
    @Test
    void aNodeWithReservationsKilledAtRandomMomentsAnswersEveryRetryAsBeforeAndResolvesEachHoldOnce() throws Exception {
        long seed = Long.getLong("crash.seed", 20261206L);
        int size = Integer.getInteger("crash.requests", 24_000);
        int kills = Integer.getInteger("crash.kills", 6);
        Random random = new Random(seed);
        List<Op> ops = workload(size, random);
        List<String> lines = new ArrayList<>();
        for (int i = 0; i < ops.size(); i++) {
            lines.add(line(i, ops.get(i).body()));
        }
        Path journal = dir.resolve("journal");
        Checker checker = new Checker(ops);
        StringBuilder timings = new StringBuilder("rounds (replies/time):");
        int sent = 0;
        for (int round = 0; round <= kills; round++) {
            boolean last = round == kills;
            int upTo = last ? ops.size() : Math.min(ops.size(), sent + ops.size() / (kills + 1) + 1);
            int killAfter = last ? Integer.MAX_VALUE : sent + random.nextInt(upTo - sent);
            long[] writtenAt = new long[ops.size()];
            List<String> finalReads = last ? checker.finalReads(ops.size()) : null;
            long began = System.nanoTime();
            List<String> probes = checker.probes();
            Round answered = round(journal, round, probes, lines, upTo, writtenAt, last ? Integer.MAX_VALUE : 1 + killAfter + probes.size(), finalReads);
            timings.append(" ").append(round).append(':').append(answered.replies().size()).append('/')
                    .append(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - began)).append("ms");
            assertFalse(answered.stderr().contains("cannot use the journal"), "round " + round + ": " + answered.stderr());
            assertFalse(answered.stderr().contains("invariant"), "round " + round + ": " + answered.stderr());
            assertTrue(last || answered.killed(), "round " + round + ": the node ended before its kill: " + answered.stderr());
            if (last) {
                assertEquals(0, answered.status(), answered.stderr());
                assertEquals(1 + probes.size() + ops.size() + finalReads.size(), answered.replies().size(), "every request answered in the last round");
            }
            checker.round(round, answered.replies(), writtenAt, probesWrittenAt, last);
            sent = Math.max(sent, upTo);
        }
        checker.finalState();
        System.out.println("TwoPhaseCrashTest: " + checker.summary() + "; " + timings);
    }

    /** Everything the node answered, checked as it comes, and the final state against it. */
    static final class Checker {
        final List<Op> ops;
        /** The first answer seen for each request body (ok, or a final error): every later answer to it must be this. */
        final Map<String, String> firstAnswer = new HashMap<>();
        /** Keys whose first answer (no note) was seen: a second one means a result made twice. */
        final Set<String> answeredWithoutNote = new HashSet<>();
        final Map<String, String> keyByPaymentId = new HashMap<>();
        final Map<String, String> keyByRefundId = new HashMap<>();
        /** A reservation's key: when its body was first written (its deadline is at least this + ttl). */
        final Map<String, Long> firstWritten = new HashMap<>();
        /** A reservation's key: when its ok was first seen (its deadline is at most this + ttl). */
        final Map<String, Long> firstSeenReserved = new HashMap<>();
        /** The last round's answers, by key: the final outcome of each. */
        final Map<String, Reply> last = new LinkedHashMap<>();
        final Map<String, Op> reserveBySaga = new HashMap<>();
        final Map<String, Op> chargeBySaga = new HashMap<>();
        final Map<Integer, String> finalReadOf = new HashMap<>();
        final Map<String, Integer> reasons = new TreeMap<>();
        int expiredChecks;
        int capturesAcrossRestarts;
        int retriesAfterKill;

        Checker(List<Op> ops) {
            this.ops = ops;
            for (Op op : ops) {
                if (op.isReserve()) {
                    reserveBySaga.put(op.saga(), op);
                } else if (op.kind().equals("charge")) {
                    chargeBySaga.put(op.saga(), op);
                }
            }
        }

        /** PaymentStatus of every saga's step and BalanceRead of every user, msg_ids from {@code from} on. */
        List<String> finalReads(int from) {
            List<String> reads = new ArrayList<>();
            Set<String> sagas = new java.util.TreeSet<>();
            Set<String> users = new java.util.TreeSet<>();
            for (Op op : ops) {
                sagas.add(op.saga());
                if (op.user() != null) {
                    users.add(op.user());
                }
            }
            for (String saga : sagas) {
                finalReadOf.put(from + reads.size(), "status " + saga);
                reads.add(line(from + reads.size(), "\"type\":\"PaymentStatus\",\"saga_id\":\"" + saga + "\",\"step\":1"));
            }
            for (String user : users) {
                finalReadOf.put(from + reads.size(), "balance " + user);
                reads.add(line(from + reads.size(), "\"type\":\"BalanceRead\",\"user_id\":\"" + user + "\""));
            }
            return reads;
        }

        final Map<String, Reply> finalReads = new HashMap<>();

        void round(int round, List<Reply> replies, long[] writtenAt, long probesWrittenAt, boolean lastRound) {
            for (int i = 0; i < writtenAt.length; i++) {
                if (writtenAt[i] != 0 && ops.get(i).isReserve()) {
                    firstWritten.merge(ops.get(i).key(), writtenAt[i], Math::min);
                }
            }
            for (Reply reply : replies) {
                if (reply.inReplyTo() == PING) {
                    continue;
                }
                if (reply.inReplyTo() >= PROBES) {
                    probe(round, reply, probesWrittenAt);
                    continue;
                }
                if (reply.inReplyTo() >= ops.size()) {
                    finalReads.put(finalReadOf.get(reply.inReplyTo()), reply);
                    continue;
                }
                Op op = ops.get(reply.inReplyTo());
                String where = "round " + round + ", request " + reply.inReplyTo() + " (" + op.body() + "): ";
                if (reply.reason() != null) {
                    reasons.merge(op.kind() + " " + reply.reason(), 1, Integer::sum);
                    assertTrue(FINAL_ERRORS.contains(reply.reason()) || PASSING_ERRORS.contains(reply.reason()), where + "unexpected " + reply.answer());
                } else {
                    reasons.merge(op.kind() + " ok", 1, Integer::sum);
                }
                boolean isFinal = reply.ok() || FINAL_ERRORS.contains(reply.reason());
                if (isFinal) {
                    String before = firstAnswer.putIfAbsent(op.body(), reply.answer());
                    if (before != null) {
                        assertEquals(before, reply.answer(), where + "answered otherwise than before");
                        if (round > 0) {
                            retriesAfterKill++;
                        }
                    }
                }
                if (reply.ok()) {
                    if (reply.note() == null) {
                        assertTrue(answeredWithoutNote.add(op.key()), where + "a second first answer (no note) for " + op.key() + ": " + reply.answer());
                    }
                    idsBelongToOneKey(op, reply, where);
                    if (op.isReserve()) {
                        firstSeenReserved.merge(op.key(), reply.seenAt(), Math::min);
                    }
                }
                checkDeadline(op, reply, writtenAt[reply.inReplyTo()], where);
                if (lastRound) {
                    last.put(op.key(), reply);
                }
            }
        }

        static final int PROBES = 100_000_000;
        static final int PING = PROBES - 1;
        final Map<Integer, Op> probeOf = new HashMap<>();

        /**
         * PaymentStatus of recent reservations, the first requests after a restart: one whose short deadline passed
         * before its read was written is not reserved any more, and one with a long deadline or none is not expired
         * (a deadline recomputed from the restart, or lost, or read wrong, shows here at once).
         */
        List<String> probes() {
            probeOf.clear();
            List<Map.Entry<String, Long>> seen = new ArrayList<>(firstSeenReserved.entrySet());
            seen.sort(Map.Entry.comparingByValue(java.util.Comparator.reverseOrder()));
            List<String> probes = new ArrayList<>();
            int shortOnes = 0;
            int longOnes = 0;
            for (Map.Entry<String, Long> reserved : seen) {
                Op op = reserveBySaga.get(reserved.getKey().substring(0, reserved.getKey().lastIndexOf(":step")));
                boolean isShort = op.ttl() >= 0 && op.ttl() != LONG_TTL;
                if (isShort ? shortOnes++ < 300 : longOnes++ < 100) {
                    int msgId = PROBES + probes.size();
                    probeOf.put(msgId, op);
                    probes.add(line(msgId, "\"type\":\"PaymentStatus\",\"saga_id\":\"" + op.saga() + "\",\"step\":1"));
                }
            }
            return probes;
        }

        private void probe(int round, Reply reply, long writtenAt) {
            Op op = probeOf.get(reply.inReplyTo());
            String status = reply.body().get("status").asText();
            String where = "round " + round + ", PaymentStatus of " + op.saga() + " (" + op.body() + ") after a restart: ";
            probes++;
            if (op.ttl() >= 0 && op.ttl() != LONG_TTL) {
                if (writtenAt > firstSeenReserved.get(op.key()) + op.ttl() + MARGIN_MS) {
                    assertFalse(status.equals("reserved"), where + "its deadline passed, " + (writtenAt - firstSeenReserved.get(op.key()))
                            + " ms after its reservation was answered: " + reply.answer());
                }
            } else {
                assertFalse(status.equals("expired"), where + "it has no near deadline: " + reply.answer());
            }
        }

        int probes;

        private void idsBelongToOneKey(Op op, Reply reply, String where) {
            JsonNode paymentId = reply.result().get("payment_id");
            if (paymentId != null && (op.isReserve() || op.kind().equals("charge"))) {
                String other = keyByPaymentId.putIfAbsent(paymentId.asText(), op.key());
                assertTrue(other == null || other.equals(op.key()), where + paymentId + " was given to " + other + " and to " + op.key());
            }
            JsonNode refundId = reply.result().get("refund_id");
            if (refundId != null) {
                String other = keyByRefundId.putIfAbsent(refundId.asText(), op.key());
                assertTrue(other == null || other.equals(op.key()), where + refundId + " was given to " + other + " and to " + op.key());
            }
        }

        /**
         * Expiry on the node's clock, kept across restarts: a hold is expired no sooner than its first write plus its
         * expires_in_ms, and a capture or void written after its first ok was seen plus expires_in_ms finds it expired.
         */
        private void checkDeadline(Op op, Reply reply, long writtenAt, String where) {
            if (!op.kind().equals("capture") && !op.kind().equals("void")) {
                return;
            }
            Op reservation = reserveBySaga.get(op.saga());
            if (reservation == null) {
                return;
            }
            boolean expired = "reservation_expired".equals(reply.reason())
                    || op.kind().equals("void") && reply.ok() && reply.result().has("payment_id") && same(reply.result().get("released"), BigDecimal.ZERO);
            boolean resolvedLive = reply.ok() && note(reply) == null
                    && (op.kind().equals("capture") || reply.result().has("payment_id") && !same(reply.result().get("released"), BigDecimal.ZERO));
            if (expired) {
                expiredChecks++;
                assertTrue(reservation.ttl() >= 0 && reservation.ttl() != LONG_TTL,
                        where + "a reservation without a short deadline expired (" + reservation.body() + "): " + reply.answer());
                Long written = firstWritten.get(reservation.key());
                assertTrue(written != null && reply.seenAt() + MARGIN_MS >= written + reservation.ttl(),
                        where + "expired before its deadline: first written at " + written + ", ttl " + reservation.ttl() + ", seen at " + reply.seenAt());
            }
            Long reservedSeen = firstSeenReserved.get(reservation.key());
            if (resolvedLive && reservation.ttl() >= 0 && reservedSeen != null) {
                capturesAcrossRestarts++;
                assertTrue(writtenAt <= reservedSeen + reservation.ttl() + MARGIN_MS, where + "resolved after its deadline (reserved by "
                        + reservedSeen + ", ttl " + reservation.ttl() + ", this written at " + writtenAt + "): " + reply.answer());
            }
        }

        private static String note(Reply reply) {
            return reply.note();
        }

        /** PaymentStatus and BalanceRead at the end, against every final answer. */
        void finalState() {
            Map<String, BigDecimal[]> books = new TreeMap<>();   // user: charged (and captured), refunded, held
            int captured = 0;
            int voided = 0;
            int expired = 0;
            int reserved = 0;
            for (String saga : new java.util.TreeSet<>(reserveBySaga.keySet())) {
                Op reserve = reserveBySaga.get(saga);
                Reply status = finalReads.get("status " + saga);
                String where = saga + " (" + status.answer() + "): ";
                Reply made = last.get(reserve.key());
                Reply capture = last.get(saga + ":step1:capture");
                Reply voidReply = last.get(saga + ":step1:void");
                Reply refund = last.get(saga + ":step1:refund");
                String state = status.body().get("status").asText();
                if (!made.ok()) {
                    assertEquals(made.reason().equals("insufficient_funds") ? "declined" : "compensated", state, where + made.answer());
                    continue;
                }
                BigDecimal[] book = books.computeIfAbsent(reserve.user(), user -> zeros());
                BigDecimal amount = made.amount("reserved");
                JsonNode payment = status.body().get("payment");
                assertEquals(made.result().get("payment_id").asText(), payment.get("payment_id").asText(), where);
                assertTrue(same(payment.get("reserved"), amount), where);
                boolean isCaptured = capture != null && capture.ok();
                boolean isVoided = voidReply != null && voidReply.ok() && !same(voidReply.result().get("released"), BigDecimal.ZERO);
                if (isCaptured && isVoided) {
                    fail(where + "captured and voided: " + capture.answer() + " / " + voidReply.answer());
                }
                BigDecimal refunded = refund != null && refund.ok() ? refund.amount("refunded") : BigDecimal.ZERO;
                assertTrue(same(payment.get("refunded"), refunded), where + "refunded " + refunded);
                if (isCaptured) {
                    captured++;
                    assertEquals("captured", state, where);
                    BigDecimal took = capture.amount("captured");
                    assertEquals(0, took.add(capture.amount("released")).compareTo(amount), where + capture.answer());
                    assertTrue(same(payment.get("captured"), took), where);
                    assertEquals(capture.result(), status.body().get("capture"), where);
                    book[0] = book[0].add(took);
                    book[1] = book[1].add(refunded);
                } else if (isVoided) {
                    voided++;
                    assertEquals("voided", state, where);
                    assertEquals(0, voidReply.amount("released").compareTo(amount), where + voidReply.answer());
                    assertEquals(voidReply.result(), status.body().get("void"), where);
                } else if (reserve.ttl() >= 0 && reserve.ttl() != LONG_TTL) {
                    expired++;
                    assertEquals("expired", state, where + "its short deadline passed");
                } else {
                    reserved++;
                    assertEquals("reserved", state, where + "its deadline is far or none, and nothing resolved it");
                    book[2] = book[2].add(amount);
                }
                if (!isCaptured) {
                    assertTrue(same(payment.get("captured"), BigDecimal.ZERO), where);
                }
            }
            for (Map.Entry<String, Op> entry : chargeBySaga.entrySet()) {
                Reply status = finalReads.get("status " + entry.getKey());
                Reply made = last.get(entry.getValue().key());
                String where = entry.getKey() + " (" + status.answer() + "): ";
                if (!made.ok()) {
                    assertEquals("declined", status.body().get("status").asText(), where);
                    continue;
                }
                Reply refund = last.get(entry.getKey() + ":step1:refund");
                BigDecimal refunded = refund != null && refund.ok() ? refund.amount("refunded") : BigDecimal.ZERO;
                JsonNode payment = status.body().get("payment");
                assertEquals("charged", status.body().get("status").asText(), where);
                assertTrue(same(payment.get("charged"), made.amount("charged")) && same(payment.get("refunded"), refunded), where);
                BigDecimal[] book = books.computeIfAbsent(entry.getValue().user(), user -> zeros());
                book[0] = book[0].add(made.amount("charged"));
                book[1] = book[1].add(refunded);
            }
            BigDecimal start = new BigDecimal(START_BALANCE);
            for (Map.Entry<String, Reply> read : finalReads.entrySet()) {
                if (!read.getKey().startsWith("balance ")) {
                    continue;
                }
                String user = read.getKey().substring("balance ".length());
                BigDecimal[] book = books.getOrDefault(user, zeros());
                JsonNode body = read.getValue().body();
                String where = user + " (" + read.getValue().answer() + "), charged and captured " + book[0] + ", refunded " + book[1] + ", held " + book[2] + ": ";
                assertTrue(same(body.get("balance"), start.subtract(book[0]).add(book[1])), where + "balance = start - charged - captured + refunded");
                assertTrue(same(body.get("charged"), book[0]), where + "charged");
                assertTrue(same(body.get("refunded"), book[1]), where + "refunded");
                assertTrue(same(body.get("held"), book[2]), where + "held = the live holds");
            }
            assertTrue(captured > 500 && voided > 200 && expired > 100 && reserved > 50,
                    "the workload resolves holds every way: " + captured + " captured, " + voided + " voided, " + expired + " expired, " + reserved + " held");
            summary = captured + " captured, " + voided + " voided, " + expired + " expired, " + reserved + " held at the end; ";
        }

        String summary = "";

        private static BigDecimal[] zeros() {
            return new BigDecimal[] {BigDecimal.ZERO, BigDecimal.ZERO, BigDecimal.ZERO};
        }

        String summary() {
            return summary + retriesAfterKill + " final answers repeated after kills, " + probes + " statuses read after restarts, " + expiredChecks + " expiries and " + capturesAcrossRestarts
                    + " live resolutions checked against their deadlines; answers: " + reasons;
        }
    }
}
