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
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The node as a citizen of a Maelstrom-style harness: docs/PROTOCOL.md section 7, and the rule of section 5 on broken lines. */
class HarnessTest {
    @TempDir
    Path dir;

    private static String initAs(String nodeId, int msgId) {
        return Wire.envelope("c0", "{\"type\":\"init\",\"msg_id\":" + msgId + ",\"node_id\":\"" + nodeId + "\",\"node_ids\":[\"n1\",\"n2\"]}");
    }

    /** docs/PROTOCOL.md section 7, "a reply is never answered": an error back would let two nodes bounce errors for ever. */
    @Test
    void aReplyIsNeverAnswered() {
        String input = Wire.envelope("n2", "{\"type\":\"error\",\"code\":10,\"text\":\"unsupported\",\"in_reply_to\":3}")
                + Wire.envelope("lin-kv", "{\"type\":\"read_ok\",\"value\":5,\"in_reply_to\":4}")
                + Wire.envelope("n3", "{\"type\":\"init_ok\",\"in_reply_to\":1,\"msg_id\":0}")
                + Wire.charge(1, "s", 1, "5");
        Node.Run run = Node.run(input);
        assertEquals(Wire.chargeOk("s", 1, "p1", "5").to(1, 0), run.stdout());
        assertEquals("""
                payment-node: warning: line 1: a reply from n2 (in_reply_to 3), and this node waits for none: dropped
                payment-node: warning: line 2: a reply from lin-kv (in_reply_to 4), and this node waits for none: dropped
                payment-node: warning: line 3: a reply from n3 (in_reply_to 1), and this node waits for none: dropped
                """, run.stderr());
    }

    /** docs/PROTOCOL.md section 5, "lines that cannot be processed": the sender learns why instead of waiting for its timeout. */
    @Test
    void aLineCutShortIsAnswered12WhenItsSrcCanBeRead() {
        String cut = "{\"src\":\"c1\",\"dest\":\"payment\",\"body\":{\"type\":\"ChargePayment\",\"msg_id\":5,\"saga_id\":\"s\",\"step\":1,\"params\":{\"user_id\":\"u1\"";
        Node.Run run = Node.run(cut + "\n" + Wire.charge(6, "s", 1, "5"));
        assertEquals(Wire.error(12, "unreadable_line", "not valid JSON: the line ends before the JSON does").to(5, 0)
                + Wire.chargeOk("s", 1, "p1", "5").to(6, 1), run.stdout(), "the broken line left no record");
        assertEquals("payment-node: warning: line 1 refused: not valid JSON: the line ends before the JSON does\n", run.stderr());
    }

    @Test
    void aBrokenReplyIsNotAnsweredEither() {
        Node.Run run = Node.run("{\"src\":\"n2\",\"dest\":\"payment\",\"body\":{\"type\":\"error\",\"in_reply_to\":3,\n");
        assertEquals("", run.stdout());
        assertTrue(run.stderr().contains("line 1 ignored: not valid JSON"), run.stderr());
    }

    /** docs/PROTOCOL.md section 7, "a journal per node": {node_id} in its name, opened at the first init, error 11 before it. */
    @Test
    void eachNodeKeepsItsOwnJournalOpenedAtItsFirstInit() throws IOException {
        String path = dir.resolve("payments-{node_id}.journal").toString();
        String session = Wire.charge(1, "trip", 1, "10") + initAs("n1", 2) + Wire.charge(3, "trip", 1, "10");
        Node.CapturedLog log = Node.CapturedLog.of(false);
        Node.Run first = Node.runWithJournalAtInit(path, session, log);
        assertEquals(Wire.error(11, "not_initialised", "not initialized: this node's journal (" + path + ") opens at its first init; nothing was done").to(1, 0)
                + Wire.initOk().from("n1").to(2, 1)
                + Wire.chargeOk("trip", 1, "p1", "10").from("n1").to(3, 2), first.stdout());
        Path n1 = dir.resolve("payments-n1.journal");
        assertTrue(Files.exists(n1), "the journal is named by the node's id");
        assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(n1)), "payment records are the owner's only");

        // A second node started with the same arguments in the same folder keeps its own file.
        Node.Run other = Node.runWithJournalAtInit(path, initAs("n2", 1) + Wire.charge(2, "trip", 1, "10"), Node.CapturedLog.of(false));
        assertEquals(Wire.initOk().from("n2").to(1, 0) + Wire.chargeOk("trip", 1, "p1", "10").from("n2").to(2, 1), other.stdout());
        assertTrue(Files.exists(dir.resolve("payments-n2.journal")));

        // n1 restarted: its journal comes back at init, and the retry gets the cached result.
        Node.Run again = Node.runWithJournalAtInit(path, initAs("n1", 1) + Wire.charge(2, "trip", 1, "10"), Node.CapturedLog.of(false));
        assertEquals(Wire.initOk().from("n1").to(1, 0)
                + Wire.chargeOk("trip", 1, "p1", "10").cached().from("n1").to(2, 1), again.stdout());
    }

    @Test
    void aNodeIdThatCannotNameAFileIsRefusedAtInit() {
        Node.Run run = Node.runWithJournalAtInit(dir.resolve("j-{node_id}").toString(), initAs("../x", 1), Node.CapturedLog.of(false));
        assertTrue(run.stdout().contains("\"code\": 12, \"text\": \"node_id ../x cannot name a journal file\""), run.stdout());
    }

    @Test
    void severalNodesWithoutASharedStoreGetAWarning() {
        Node.Run run = Node.run(initAs("n1", 1));
        assertEquals("payment-node: warning: init names 2 nodes, and this node shares no state with the others:"
                + " a retry sent to another node may charge again\n", run.stderr());
    }

    /**
     * Maelstrom's kill nemesis: SIGKILL, the same command line started again, init again. Every key answered
     * before a kill comes back with its result and its note.
     */
    @Tag("slow")
    @Test
    void aNodeKilledAndReinitializedAnswersEveryKeyAsBefore() throws Exception {
        String journal = dir.resolve("payments-{node_id}.journal").toString();
        List<String> requests = new ArrayList<>();
        for (int i = 0; i < 300; i++) {
            requests.add(i % 3 == 2 ? Wire.refund(100 + i, "saga" + (i - 1), 1, null, null) : Wire.charge(100 + i, "saga" + i, 1, "1" + i + ".50"));
        }
        List<String> firstAnswers = null;
        for (int round = 0; round < 3; round++) {
            Process node = Node.start(List.of(), dir.resolve("stderr-" + round), "--journal", journal);
            OutputStream stdin = node.getOutputStream();
            BufferedReader stdout = new BufferedReader(new InputStreamReader(node.getInputStream(), StandardCharsets.UTF_8));
            stdin.write(initAs("n1", 1).getBytes(StandardCharsets.UTF_8));
            for (String request : requests) {
                stdin.write(request.getBytes(StandardCharsets.UTF_8));
            }
            stdin.flush();
            List<String> answers = new ArrayList<>();
            // The first line waits for a JVM to start and the journal to be replayed.
            assertEquals(Wire.initOk().from("n1").to(1, 0).trim(), Lines.readLine(stdout, Duration.ofSeconds(20)));
            for (int i = 0; i < requests.size(); i++) {
                Wire.Reply reply = Wire.read(Lines.readLine(stdout, Duration.ofSeconds(10)));
                assertEquals(100 + i, reply.inReplyTo());
                if (round > 0) {
                    assertTrue(reply.note() != null, "round " + round + ": " + reply);
                }
                answers.add(reply.outcome());
            }
            if (firstAnswers == null) {
                firstAnswers = answers;
            }
            assertEquals(firstAnswers, answers, "round " + round + " answered differently");
            node.destroyForcibly();   // SIGKILL: no chance to flush or close anything
            assertTrue(node.waitFor(20, TimeUnit.SECONDS));
        }
        assertTrue(Files.exists(dir.resolve("payments-n1.journal")));
    }

    /** docs/PROTOCOL.md section 7, "logs are escaped", and section 5: a bad line's escapes never reach a terminal raw. */
    @Test
    void logsEscapeInputTextAndSpeakPlainly() {
        Node.Run run = Node.run("\u001b[31mred\u0007 {\"oops\": NaN}\n{\"type\":\"init\",\"msg_id\":1}\n"
                + "{\"src\":\"c1\",\"dest\":\"payment\",\"body\":{\"type\":\"init\",\"msg_id\":2,\"x\":NaN}}\n");
        assertEquals("""
                payment-node: warning: line 1 ignored: not valid JSON: control character U+001B between tokens: \\u001b[31mred\\u0007 {"oops": NaN}
                payment-node: warning: line 2 ignored: missing src (it looks like a message body without its envelope: send {"src": ..., "dest": ..., "body": {...}}): {"type":"init","msg_id":1}
                payment-node: warning: line 3 refused: not valid JSON: 'NaN' is not a JSON value
                """, run.stderr());
        assertFalse(run.stderr().contains("Feature"), "no parser feature names");
        assertFalse(run.stderr().contains("`"), "no parser markup");
    }
}
