package payment;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;

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
        assertEquals(out.get(6), Wire.paymentStatusOk("saga42", 2, "charged", new Wire.Payment("p1", "99.99", "30.01"),
                new Wire.Refund("r1", "30")).to(7, 6).trim());
        assertEquals(out.get(10), Wire.paymentStatusOk("saga42", 4, "compensated", null, new Wire.Refund(null, "0")).to(11, 10).trim());
    }

    /** docs/PROTOCOL.md section 7: a node named at init answers from that name; a node with no name, from null. */
    @Test
    void aReplyIsAddressedFromTheNodeAndToTheClientATestNames() {
        assertEquals("{\"src\": \"n1\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 1, \"msg_id\": 0}}\n",
                Wire.initOk().from("n1").to(1, 0));
        assertEquals("{\"src\": null, \"dest\": \"c1\", \"body\": {\"type\": \"error\", \"code\": 12, \"text\": \"t\", \"msg_id\": 0}}\n",
                Wire.error(12, "t").from(null).to(null, 0));
        assertEquals("{\"src\": \"n2\", \"dest\": \"c7\", \"body\": {\"type\": \"ChargePayment_ok\", \"saga_id\": \"s\", \"step\": 1,"
                        + " \"result\": {\"payment_id\": \"p1\", \"charged\": 5}, \"note\": \"cached_result\", \"in_reply_to\": 3, \"msg_id\": 2}}\n",
                Wire.chargeOk("s", 1, "p1", "5").toClient("c7").from("n2").cached().to(3, 2));
    }
}
