package payment;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** The tests' wire helpers write what the contract says: a test that expects a built reply expects the node's own bytes. */
class WireTest {
    private static final Path GOLDEN = Path.of("tests", "golden");

    @Test
    void paymentStatusRequestsAndRepliesAreLaidOutAsInTheGoldenFile() throws IOException {
        List<String> in = Files.readAllLines(GOLDEN.resolve("20-payment-status.in"));
        List<String> out = Files.readAllLines(GOLDEN.resolve("20-payment-status.out"));
        assertEquals(in.get(1), Wire.paymentStatus(2, "saga42", 2).trim());
        assertEquals(out.get(1), Wire.paymentStatusOk("saga42", 2, "none").to(2, 1).trim());
        assertEquals(out.get(3), Wire.paymentStatusOk("saga42", 2, "charged", new Wire.Payment("p1", "99.99", "0"), null).to(4, 3).trim());
        assertEquals(out.get(6), Wire.paymentStatusOk("saga42", 2, "charged", new Wire.Payment("p1", "99.99", "30"),
                new Wire.Refund("r1", "30")).to(7, 6).trim());
        assertEquals(out.get(10), Wire.paymentStatusOk("saga42", 4, "compensated", null, new Wire.Refund(null, "0")).to(11, 10).trim());
    }

    /** docs/PROTOCOL.md section 7: a node named at init answers from that name; a node with no name, from null. */
    @Test
    void aReplyIsAddressedFromTheNodeAndToTheClientATestNames() {
        assertEquals("{\"src\": \"n1\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 1, \"msg_id\": 0}}\n",
                Wire.initOk().from("n1").to(1, 0));
        assertEquals("{\"src\": null, \"dest\": \"c1\", \"body\": {\"type\": \"error\", \"code\": 12, \"text\": \"t\", \"reason\": \"malformed_request\", \"msg_id\": 0}}\n",
                Wire.error(12, "malformed_request", "t").from(null).to(null, 0));
        assertEquals("{\"src\": \"n2\", \"dest\": \"c7\", \"body\": {\"type\": \"ChargePayment_ok\", \"saga_id\": \"s\", \"step\": 1,"
                        + " \"result\": {\"payment_id\": \"p1\", \"charged\": 5}, \"note\": \"cached_result\", \"in_reply_to\": 3, \"msg_id\": 2}}\n",
                Wire.chargeOk("s", 1, "p1", "5").toClient("c7").from("n2").cached().to(3, 2));
    }

    /** A reply read back keeps its amounts' digits: 100.50 is not 100.5, and 99.990 keeps its zero. */
    @Test
    void aReplyIsReadWithEveryFieldAndItsAmountsAsWritten() {
        Wire.Reply read = Wire.read(Wire.chargeOk("s", 7, "p3", "100.50").cached().to(4, 9));
        assertEquals(new Wire.Reply("payment", "c1", "ChargePayment_ok", "s", 7L, Map.of("payment_id", "p3", "charged", "100.50"),
                "cached_result", null, null, 4L, 9L), read);
        assertEquals("s:step7", read.key());
        assertEquals("{refund_id=r1, refunded=99.990}", Wire.read(Wire.refundOk("s", 7, "r1", "99.990").to(5, 10)).outcome());
        Wire.Reply error = Wire.read(Wire.error(22, "key_reused", "no").from(null).to(null, 0));
        assertEquals(List.of(22, "no"), List.of(error.code(), error.text()));
        assertEquals(null, error.src());
        assertEquals("code 22", error.outcome());
    }

    @Test
    void aLineThatIsNotOneReplyIsRefused() {
        assertThrows(UncheckedIOException.class, () -> Wire.read("{\"src\": \"payment\", \"body\": {"));
        assertThrows(UncheckedIOException.class, () -> Wire.read("{\"body\": {}} {\"body\": {}}"));
        assertThrows(IllegalArgumentException.class, () -> Wire.read("{\"src\": \"payment\"}"));
        assertThrows(IllegalArgumentException.class, () -> Wire.read("{\"body\": {\"msg_id\": 1.5}}"));
    }
}
