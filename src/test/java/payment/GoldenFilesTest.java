package payment;

import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.DynamicTest.dynamicTest;

/**
 * Every tests/golden/NAME.in, run through the node's main loop, must print NAME.out byte for byte, and where
 * a NAME.err exists, log exactly that on stderr.
 */
class GoldenFilesTest {
    private static final Path GOLDEN = Path.of("tests", "golden");
    /** The one output line the original task lists for each sample case, byte for byte. */
    private static final String SAMPLE_FIRST_LINE =
            "{\"src\": \"payment\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 1, \"msg_id\": 0}}";

    static List<Path> inputs() throws IOException {
        try (Stream<Path> files = Files.list(GOLDEN)) {
            return files.filter(p -> p.toString().endsWith(".in")).sorted().toList();
        }
    }

    @TestFactory
    Stream<DynamicTest> everyGoldenFileReplaysByteForByte() throws IOException {
        List<Path> inputs = inputs();
        assertTrue(inputs.size() >= 18, "golden files missing: " + inputs);
        return inputs.stream().map(in -> dynamicTest(in.getFileName().toString(), () -> {
            Path out = Path.of(in.toString().replaceAll("\\.in$", ".out"));
            byte[] expected = Files.readAllBytes(out);
            Path args = Path.of(in.toString().replaceAll("\\.in$", ".args"));
            Node.Run run = Files.exists(args)
                    ? Node.runWithOptions(Files.readAllBytes(in), Files.readString(args).trim().split("\\s+"))
                    : Node.run(Files.readAllBytes(in));
            assertEquals(0, run.status());
            assertEquals(new String(expected, StandardCharsets.UTF_8), run.stdout(), "stdout of " + in);
            assertArrayEquals(expected, run.stdout().getBytes(StandardCharsets.UTF_8), "bytes of " + in);
            Path err = Path.of(in.toString().replaceAll("\\.in$", ".err"));
            if (Files.exists(err)) {
                assertEquals(Files.readString(err), run.stderr(), "stderr of " + in);
            }
        }));
    }

    /** The original task's two sample cases come first and open with the exact init_ok line it lists. */
    @Test
    void theSampleCasesComeFirstWithTheGoldenInitLine() throws IOException {
        List<Path> inputs = inputs();
        assertEquals("01-sample-idempotent-charge.in", inputs.get(0).getFileName().toString());
        assertEquals("02-sample-idempotent-refund.in", inputs.get(1).getFileName().toString());
        for (Path in : inputs.subList(0, 2)) {
            List<String> lines = Node.run(Files.readAllBytes(in)).stdout().lines().toList();
            assertEquals(SAMPLE_FIRST_LINE, lines.get(0));
            assertEquals(3, lines.size());
        }
    }
}
