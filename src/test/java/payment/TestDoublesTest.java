package payment;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The node as a payment service to test saga orchestrators against: balances, declines, seeded faults. */
class TestDoublesTest {
    @TempDir
    Path dir;

    /** A saga workload: each saga's charge, its retry, a status read, its compensation and the compensation's retry. */
    private static String sagas(int count) {
        StringBuilder input = new StringBuilder(Wire.init(1));
        int msgId = 2;
        for (int i = 1; i <= count; i++) {
            input.append(Wire.charge(msgId++, "s" + i, 1, i + ".25"));
            input.append(Wire.charge(msgId++, "s" + i, 1, i + ".25"));
            input.append(Wire.paymentStatus(msgId++, "s" + i, 1));
            input.append(Wire.refund(msgId++, "s" + i, 1, null, null));
            input.append(Wire.refund(msgId++, "s" + i, 1, null, null));
        }
        return input.toString();
    }

    private static final String ALL_BUT_TIME = "fail=0.1,drop=0.1,unknown=0.1,duplicate=0.1";

    @Test
    void theSameSeedGivesTheSameOutputByteForByteAndAnotherSeedDoesNot() {
        byte[] input = sagas(200).getBytes(StandardCharsets.UTF_8);
        Node.Run first = Node.runWithOptions(input, "--faults", ALL_BUT_TIME, "--seed", "42");
        Node.Run again = Node.runWithOptions(input, "--faults", ALL_BUT_TIME, "--seed", "42");
        Node.Run other = Node.runWithOptions(input, "--faults", ALL_BUT_TIME, "--seed", "43");
        assertEquals(first.stdout(), again.stdout());
        assertEquals(first.stderr(), again.stderr());
        assertNotEquals(first.stdout(), other.stdout());
        assertEquals(Node.run(input).stdout(), Node.runWithOptions(input, "--faults", "fail=0", "--seed", "42").stdout(),
                "faults of probability 0 change nothing");
    }

    /** Every fault is one stderr line naming its key and msg_id, and does to the reply exactly what it says. */
    @Test
    void everyInjectedFaultIsLoggedAndDoesWhatItSays() {
        String input = sagas(300);
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--faults", ALL_BUT_TIME, "--seed", "7");
        Map<Long, String> faultByMsgId = new HashMap<>();
        Matcher line = Pattern.compile("(?m)^payment-node: fault: (\\w+) (s\\d+:step1(?::refund)?) msg_id (\\d+)$").matcher(run.stderr());
        while (line.find()) {
            faultByMsgId.put(Long.valueOf(line.group(3)), line.group(1));
        }
        assertEquals(run.stderr().lines().count(), faultByMsgId.size(), "every stderr line is one fault: " + run.stderr());
        assertTrue(faultByMsgId.size() > 200, "faults drawn: " + faultByMsgId.size());
        Map<Long, List<Wire.Reply>> repliesByRequest = new HashMap<>();
        for (String reply : run.stdout().lines().toList()) {
            Wire.Reply read = Wire.read(reply);
            repliesByRequest.computeIfAbsent(read.inReplyTo(), id -> new ArrayList<>()).add(read);
        }
        for (long msgId = 2; msgId < 2 + 5 * 300; msgId++) {
            List<Wire.Reply> replies = repliesByRequest.getOrDefault(msgId, List.of());
            String fault = faultByMsgId.get(msgId);
            String seen = replies.size() == 0 ? "drop" : replies.size() == 2 ? "duplicate"
                    : Integer.valueOf(11).equals(replies.get(0).code()) ? "fail"
                    : Integer.valueOf(13).equals(replies.get(0).code()) ? "unknown" : null;
            assertEquals(fault, seen, "request " + msgId + ": " + replies);
        }
    }

    @Test
    void initAndPaymentStatusAreNeverFaulted() {
        String input = Wire.init(1) + Wire.paymentStatus(2, "s", 1)
                + Wire.charge(3, "s", 1, "5");
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--faults", "fail=1", "--seed", "1");
        assertEquals(Wire.initOk(1, 0)
                + Wire.paymentStatusOk("s", 1, "none").to(2, 1)
                + Wire.error(11, "injected_fail", "injected fault: fail: nothing was done; safe to retry").to(3, 2), run.stdout());
        assertEquals("payment-node: fault: fail s:step1 msg_id 3\n", run.stderr());
    }

    /** A delayed reply is overtaken by later ones, and still written before the node exits. */
    @Test
    void aDelayedReplyIsOvertakenAndStillWrittenBeforeTheEnd() {
        String input = Wire.charge(1, "slow", 1, "5") + Wire.charge(2, "fast", 1, "6");
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--fault", "slow:step1=delay:300");
        assertEquals(Wire.chargeOk("fast", 1, "p2", "6").to(2, 1) + Wire.chargeOk("slow", 1, "p1", "5").to(1, 0), run.stdout());
        assertEquals("payment-node: fault: delay 300ms slow:step1 msg_id 1\n", run.stderr());
    }

    @Test
    void aBadFaultListIsAUsageErrorThatSaysWhatIsWrong() {
        assertEquals("--faults: unknown fault 'slow' (known: fail, drop, unknown, delay, duplicate, crash; e.g. --faults fail=0.05,delay=0.1:200)",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--faults", "slow=0.1"})).getMessage());
        assertEquals("--faults: the probabilities add up to 1.2, more than 1 (each attempt draws at most one fault)",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--faults=fail=0.6,drop=0.6"})).getMessage());
        assertEquals("--faults: delay needs a probability and milliseconds, e.g. delay=0.1:200",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--faults", "delay=0.1"})).getMessage());
        assertEquals("--faults: drop needs a probability from 0 to 1, e.g. drop=0.05, got 'often'",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--faults", "drop=often"})).getMessage());
        assertEquals("--seed needs an integer, got x",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--seed", "x"})).getMessage());
        assertEquals("--balance needs an amount of 0 or more, got -5",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--balance", "-5"})).getMessage());
    }

    @Test
    void aBadFaultListStopsTheProcessWithStatus2() throws Exception {
        assertEquals(new Node.Run(2, "", "payment-node: --faults: fail needs a probability from 0 to 1, e.g. fail=0.05, got '2' (see --help)\n"),
                Node.runProcess("--faults", "fail=2"));
    }

    /** With --journal, balances and declines come back after a restart. */
    @Test
    void balancesAndDeclinesSurviveARestartWithTheJournal() {
        String journal = dir.resolve("j").toString();
        String first = Wire.charge(1, "trip", 1, "60") + Wire.charge(2, "trip", 2, "50")
                + Wire.refund(3, "trip", 1, null, "10");
        Node.Run before = Node.runWithOptions(first.getBytes(StandardCharsets.UTF_8), "--journal", journal, "--balance", "100");
        String declined = "declined: insufficient funds: u1 has 40 left, the charge is 50 (trip:step2)";
        assertEquals(Wire.chargeOk("trip", 1, "p1", "60").to(1, 0) + Wire.error(14, "insufficient_funds", declined).to(2, 1)
                + Wire.refundOk("trip", 1, "r1", "10").to(3, 2), before.stdout());

        String second = Wire.charge(1, "trip", 2, "50") + Wire.charge(2, "trip", 3, "50") + Wire.charge(3, "trip", 4, "0.01");
        Node.Run after = Node.runWithOptions(second.getBytes(StandardCharsets.UTF_8), "--journal", journal, "--balance", "100");
        assertEquals(Wire.error(14, "insufficient_funds", declined).to(1, 0) + Wire.chargeOk("trip", 3, "p2", "50").to(2, 1)
                + Wire.error(14, "insufficient_funds", "declined: insufficient funds: u1 has 0 left, the charge is 0.01 (trip:step4)").to(3, 2), after.stdout());
    }

    /**
     * A crash fault with a journal: the node dies (status 3) with the work committed and no reply. Restarted
     * again and again and sent everything again, it answers every request, and no key ever gets two payments.
     */
    @Test
    void crashesWithAJournalNeverGiveAKeyTwoPayments() throws Exception {
        String journal = dir.resolve("journal").toString();
        List<String> requests = new ArrayList<>();
        for (int i = 0; i < 200; i++) {
            requests.add(i % 4 == 3 ? Wire.refund(i + 1, "saga" + (i - 1), 1, null, null) : Wire.charge(i + 1, "saga" + i, 1, (i + 1) + ".5"));
        }
        Map<String, String> paymentByKey = new HashMap<>();
        Map<String, String> keyByPayment = new HashMap<>();
        int crashes = 0;
        for (int round = 0; round < 100; round++) {
            Process node = Node.start(List.of(), dir.resolve("stderr-" + round), "--journal", journal,
                    "--faults", "crash=0.02", "--seed", String.valueOf(round));
            try (OutputStream stdin = node.getOutputStream()) {
                for (String request : requests) {
                    stdin.write(request.getBytes(StandardCharsets.UTF_8));
                }
            } catch (IOException crashedWhileWriting) {
                // the node died under the writer
            }
            List<String> lines = new ArrayList<>();
            // Closed only after the end of the stream: closing a reader that a timed-out read still holds would block.
            BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8));
            for (String line; (line = Lines.readLine(stdout, Duration.ofSeconds(30))) != null; ) {
                lines.add(line);
            }
            stdout.close();
            assertTrue(node.waitFor(30, TimeUnit.SECONDS));
            for (String line : lines) {
                Wire.Reply reply = Wire.read(line);
                String paymentId = reply.result() == null ? null : reply.result().get("payment_id");
                if (paymentId != null) {
                    String earlier = paymentByKey.putIfAbsent(reply.key(), paymentId);
                    assertTrue(earlier == null || earlier.equals(paymentId), reply.key() + " got " + earlier + " and " + paymentId);
                    String otherKey = keyByPayment.putIfAbsent(paymentId, reply.key());
                    assertTrue(otherKey == null || otherKey.equals(reply.key()), paymentId + " went to " + otherKey + " and " + reply.key());
                }
            }
            if (node.exitValue() == 0) {
                assertEquals(requests.size(), lines.size(), "the run that was not crashed answered everything");
                assertTrue(crashes > 0, "no crash was drawn");
                assertEquals(150, paymentByKey.size());
                return;
            }
            assertEquals(FaultyService.EXIT_INJECTED_CRASH, node.exitValue(), Files.readString(dir.resolve("stderr-" + round)));
            assertTrue(Files.readString(dir.resolve("stderr-" + round)).contains("fault: crash"));
            crashes++;
        }
        throw new AssertionError("the node crashed in every one of 100 rounds");
    }

    /** A node process run to its end on {@code input}: its status, stdout and stderr. */
    private Node.Run runProcess(String input, String... args) throws Exception {
        Path stderr = Files.createTempFile(dir, "stderr", ".txt");
        Process node = Node.start(List.of(), stderr, args);
        try (OutputStream stdin = node.getOutputStream()) {
            stdin.write(input.getBytes(StandardCharsets.UTF_8));
        } catch (IOException crashedWhileWriting) {
            // the node died under the writer
        }
        String stdout = new String(node.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(node.waitFor(30, TimeUnit.SECONDS));
        return new Node.Run(node.exitValue(), stdout, Files.readString(stderr));
    }

    /**
     * A crash fault aimed at a step (issue 22, item 2): the node crashes once with the charge committed; restarted
     * on the same journal with the same options, it answers the retry with the cached payment and exits 0 at
     * the end of its input, instead of crashing that key again after every restart.
     */
    /**
     * With a per-node journal, a request before init is refused 11 with nothing done, and draws no fault: the key's
     * first attempt is the first one served (found by review: a crash aimed at it crashed the node before init, with
     * nothing to record, on every restart).
     */
    @Test
    void aRequestBeforeInitDrawsNoFault() {
        String journal = dir.resolve("j-{node_id}").toString();
        String input = Wire.charge(1, "s", 1, "5") + Wire.envelope("c0", "{\"type\":\"init\",\"msg_id\":2,\"node_id\":\"n1\"}")
                + Wire.charge(3, "s", 1, "5");
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--journal", journal, "--fault", "s:step1=drop");
        assertEquals(Wire.error(11, "not_initialised", "not initialized: this node's journal (" + journal
                        + ") opens at its first init; nothing was done").to(1, 0)
                        + "{\"src\": \"n1\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 2, \"msg_id\": 1}}\n",
                run.stdout());
        assertEquals("payment-node: fault: drop s:step1 msg_id 3\n", run.stderr().lines().filter(l -> l.contains("fault:")).map(l -> l + "\n")
                .findFirst().orElse(""), run.stderr());
    }

    @Test
    void anAimedCrashCrashesItsKeyOncePerJournal() throws Exception {
        String journal = dir.resolve("journal").toString();
        String[] options = {"--fault", "trip:step1=crash", "--journal", journal};
        assertEquals(new Node.Run(FaultyService.EXIT_INJECTED_CRASH, "", "payment-node: fault: crash trip:step1 msg_id 1\n"),
                runProcess(Wire.charge(1, "trip", 1, "10"), options));
        assertEquals(new Node.Run(0, Wire.chargeOk("trip", 1, "p1", "10").cached().to(2, 0), ""),
                runProcess(Wire.charge(2, "trip", 1, "10"), options), "the restarted node answers the retry");
        assertEquals(new Node.Run(0, Wire.chargeOk("trip", 1, "p1", "10").cached().to(3, 0)
                        + Wire.chargeOk("trip", 2, "p2", "20").to(4, 1), ""),
                runProcess(Wire.charge(3, "trip", 1, "10") + Wire.charge(4, "trip", 2, "20"), options), "and every later one");
        assertEquals(new Node.Run(0, Wire.chargeOk("trip", 1, "p1", "10").cached().to(5, 0), ""),
                Node.runWithOptions(Wire.charge(5, "trip", 1, "10").getBytes(StandardCharsets.UTF_8), "--journal", journal),
                "a node started without --fault passes over the fault records");
        assertEquals(new Node.Run(0, Wire.chargeOk("trip", 1, "p1", "10").cached().to(6, 0), ""),
                Node.runWithOptions(Wire.charge(6, "trip", 1, "10").getBytes(StandardCharsets.UTF_8), options),
                "and keeps them: the key still crashed once");
    }

    /**
     * A drawn crash (issue 22, item 2): with --seed 3, trip:step1's first two attempts both draw crash. The
     * first crashes the node; restarted on the same per-node journal, the node counts on from that attempt, and
     * the second attempt's crash is no fault, since the key crashed once: the retry is answered.
     */
    @Test
    void aDrawnCrashCrashesItsKeyOncePerJournal() throws Exception {
        String[] options = {"--faults", "crash=0.5", "--seed", "3", "--journal", dir.resolve("payments-{node_id}.journal").toString()};
        assertEquals(new Node.Run(FaultyService.EXIT_INJECTED_CRASH, Wire.initOk(1, 0), "payment-node: fault: crash trip:step1 msg_id 2\n"),
                runProcess(Wire.init(1) + Wire.charge(2, "trip", 1, "10"), options));
        assertEquals(new Node.Run(0, Wire.initOk(1, 0) + Wire.chargeOk("trip", 1, "p1", "10").cached().to(3, 1), ""),
                runProcess(Wire.init(1) + Wire.charge(3, "trip", 1, "10"), options), "the restarted node answers the retry");
        assertEquals(List.of("[\"fault\", \"trip:step1\", 1, \"crash\"]", "[\"charge\", \"trip:step1\", \"u1\", 10, 1]"),
                Files.readAllLines(dir.resolve("payments-payment.journal")).stream().map(record -> record.substring(9)).toList(),
                "the fault goes in before its work, and a crash that is no fault leaves no record");
    }

    /** While only delayed replies are pending, the node sleeps: no busy wait. */
    @Tag("slow")
    @Test
    void pendingDelayedRepliesCostNoCpu() throws Exception {
        Process node = Node.start("--faults", "delay=1:6000", "--seed", "1");
        OutputStream stdin = node.getOutputStream();
        for (int i = 1; i <= 20; i++) {
            stdin.write(Wire.charge(i, "s" + i, 1, "1").getBytes(StandardCharsets.UTF_8));
        }
        stdin.flush();
        Thread.sleep(2500);   // start-up, its compilation and the requests are done; 20 replies wait for their time
        Duration before = node.info().totalCpuDuration().orElseThrow();
        Thread.sleep(1000);
        Duration spent = node.info().totalCpuDuration().orElseThrow().minus(before);
        assertTrue(spent.toMillis() < 150, "CPU while waiting: " + spent.toMillis() + " ms in 1 s");
        stdin.close();
        List<String> replies = new ArrayList<>();
        BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8));
        for (String line; (line = Lines.readLine(stdout, Duration.ofSeconds(20))) != null; ) {
            replies.add(line);
        }
        assertTrue(node.waitFor(20, TimeUnit.SECONDS));
        assertEquals(0, node.exitValue());
        assertEquals(20, replies.size(), "every delayed reply was written before the exit");
    }

    /** The same sagas, their requests in two different orders: each key's attempts get the same faults (issue 16, item 2). */
    @Test
    void faultsFollowTheKeyAndItsAttemptNotTheArrivalOrder() {
        List<String> inOrder = new ArrayList<>();
        List<String> interleaved = new ArrayList<>();
        for (int i = 1; i <= 100; i++) {
            for (int attempt = 0; attempt < 3; attempt++) {
                inOrder.add(Wire.charge(i * 10 + attempt, "s" + i, 1, i + ".25"));
            }
        }
        for (int attempt = 0; attempt < 3; attempt++) {   // every saga's first attempt, then every second, ... backwards
            for (int i = 100; i >= 1; i--) {
                interleaved.add(Wire.charge(i * 10 + attempt, "s" + i, 1, i + ".25"));
            }
        }
        Node.Run first = Node.runWithOptions(String.join("", inOrder).getBytes(StandardCharsets.UTF_8), "--faults", ALL_BUT_TIME, "--seed", "7");
        Node.Run second = Node.runWithOptions(String.join("", interleaved).getBytes(StandardCharsets.UTF_8), "--faults", ALL_BUT_TIME, "--seed", "7");
        assertTrue(first.stderr().lines().count() > 50, first.stderr());
        assertEquals(first.stderr().lines().sorted().toList(), second.stderr().lines().sorted().toList(),
                "the faults of each key and msg_id, whatever the order");
        assertEquals(first.stdout().lines().filter(line -> line.contains("\"error\"")).sorted().toList().size(),
                second.stdout().lines().filter(line -> line.contains("\"error\"")).sorted().toList().size());
    }

    /** --fault KEY=KINDS: that key's first attempts get those faults in order, then it goes through (issue 16, item 2). */
    @Test
    void aFaultCanTargetOneStepLikeATestCard() {
        String input = Wire.charge(2, "trip", 1, "10") + Wire.charge(3, "trip", 1, "10") + Wire.charge(4, "trip", 1, "10")
                + Wire.charge(5, "trip", 2, "20") + Wire.refund(6, "trip", 1, null, null) + Wire.refund(7, "trip", 1, null, null);
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8),
                "--fault", "trip:step1=drop,fail", "--fault", "trip:step1:refund=none,unknown");
        assertEquals(Wire.error(11, "injected_fail", "injected fault: fail: nothing was done; safe to retry").to(3, 0)
                + Wire.chargeOk("trip", 1, "p1", "10").cached().to(4, 1)
                + Wire.chargeOk("trip", 2, "p2", "20").to(5, 2)
                + Wire.refundOk("trip", 1, "r1", "10").to(6, 3)
                + Wire.error(13, "injected_unknown", "injected fault: unknown outcome: the request may or may not have been done; a retry will tell")
                        .to(7, 4), run.stdout());
        assertEquals("""
                payment-node: fault: drop trip:step1 msg_id 2
                payment-node: fault: fail trip:step1 msg_id 3
                payment-node: fault: unknown trip:step1:refund msg_id 7
                """, run.stderr());
        assertEquals("--fault: unknown fault 'late' (known: fail, drop, unknown, delay:MS, duplicate, crash, none)",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--fault", "k=late"})).getMessage());
        assertEquals("--fault needs KEY=KIND[,KIND...], e.g. --fault saga42:step2=drop,fail, got 'trip'",
                assertThrows(IllegalArgumentException.class, () -> CommandLine.Options.parse(new String[] {"--fault", "trip"})).getMessage());
    }

    /** BalanceRead: a user's balance and what was charged and refunded, so that a test can see nobody paid twice (issue 16, item 3). */
    @Test
    void aBalanceReadShowsWhatWasChargedAndRefunded() {
        String input = Wire.charge(1, "trip", 1, "30.00") + Wire.charge(2, "trip", 1, "30.00") + Wire.refund(3, "trip", 1, null, "10")
                + Wire.request("{\"type\":\"BalanceRead\",\"msg_id\":4,\"user_id\":\"u1\"}")
                + Wire.request("{\"type\":\"BalanceRead\",\"msg_id\":5,\"user_id\":\"u9\"}")
                + Wire.request("{\"type\":\"BalanceRead\",\"msg_id\":6}");
        Node.Run run = Node.runWithOptions(input.getBytes(StandardCharsets.UTF_8), "--balance", "100.00");
        assertEquals(Wire.chargeOk("trip", 1, "p1", "30.00").to(1, 0) + Wire.chargeOk("trip", 1, "p1", "30.00").cached().to(2, 1)
                + Wire.refundOk("trip", 1, "r1", "10").to(3, 2)
                + new Wire.ReplyBody("\"type\": \"BalanceRead_ok\", \"user_id\": \"u1\", \"balance\": 80.00, \"charged\": 30.00, \"refunded\": 10, \"held\": 0").to(4, 3)
                + new Wire.ReplyBody("\"type\": \"BalanceRead_ok\", \"user_id\": \"u9\", \"balance\": 100.00, \"charged\": 0, \"refunded\": 0, \"held\": 0").to(5, 4)
                + Wire.error(12, "malformed_request", "missing user_id").to(6, 5), run.stdout());
        Node.Run without = Node.runWithOptions(Wire.request("{\"type\":\"BalanceRead\",\"msg_id\":1,\"user_id\":\"u1\"}")
                .getBytes(StandardCharsets.UTF_8));
        assertEquals(Wire.error(10, "balances_not_kept", "BalanceRead needs --balance: this node keeps no balances").to(1, 0), without.stdout());
    }

    /** A journal remembers its --balance: a restart with another (or none) is a usage error saying both (issue 16, item 3). */
    @Test
    void aJournalRefusesARestartWithAnotherBalance() throws Exception {
        String journal = dir.resolve("j").toString();
        Node.Run first = Node.runWithOptions(Wire.charge(1, "trip", 1, "60").getBytes(StandardCharsets.UTF_8), "--journal", journal, "--balance", "100");
        assertEquals(Wire.chargeOk("trip", 1, "p1", "60").to(1, 0), first.stdout());
        assertEquals(new Node.Run(2, "", "payment-node: cannot use the journal " + journal + ": it was started with --balance 100,"
                        + " and this node with --balance 500: start it with the same --balance (or move the journal aside)\n"),
                Node.runProcess("--journal", journal, "--balance", "500"));
        assertEquals(new Node.Run(2, "", "payment-node: cannot use the journal " + journal + ": it was started with --balance 100,"
                        + " and this node without --balance: start it with the same --balance (or move the journal aside)\n"),
                Node.runProcess("--journal", journal));
        Node.Run again = Node.runWithOptions(Wire.charge(2, "trip", 2, "50").getBytes(StandardCharsets.UTF_8), "--journal", journal, "--balance", "100.00");
        assertEquals(Wire.error(14, "insufficient_funds", "declined: insufficient funds: u1 has 40.00 left, the charge is 50 (trip:step2)").to(2, 0),
                again.stdout(), "the same balance, written otherwise, is the same");
    }
}
