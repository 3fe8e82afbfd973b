package payment;

import com.fasterxml.jackson.core.JsonFactory;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The design card's node is one file that stands alone (issue 19): PaymentNode.java compiles with jackson-core and
 * nothing else, runs the original task's two sample cases byte for byte, and names none of the modes beside it.
 */
class CardTest {
    private static final Path SOURCES = Path.of("src", "main", "java", "payment");
    private static final Path CARD = SOURCES.resolve("PaymentNode.java");

    @TempDir
    Path classes;

    @Test
    void theCardsFileCompilesAloneAndRunsTheSampleCasesByteForByte() throws Exception {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
        int status = javac.run(null, diagnostics, diagnostics, "-proc:none", "-d", classes.toString(),
                "-cp", Node.location(JsonFactory.class), CARD.toString());
        assertEquals(0, status, "PaymentNode.java alone, with jackson-core only:\n" + diagnostics.toString(StandardCharsets.UTF_8));
        for (String sample : List.of("01-sample-idempotent-charge", "02-sample-idempotent-refund")) {
            Path in = Path.of("tests", "golden", sample + ".in");
            String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
            Process node = new ProcessBuilder(java, "-cp", classes + File.pathSeparator + Node.location(JsonFactory.class), "payment.PaymentNode")
                    .redirectInput(in.toFile()).redirectError(ProcessBuilder.Redirect.DISCARD).start();
            String stdout = new String(node.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertEquals(0, node.waitFor(), sample);
            assertEquals(Files.readString(Path.of("tests", "golden", sample + ".out")), stdout, sample);
        }
    }

    @Test
    void theCardsFileNamesNoModeBesideIt() throws IOException {
        String card = Files.readString(CARD);
        Set<String> named = new TreeSet<>();
        try (Stream<Path> files = Files.list(SOURCES)) {
            for (Path file : files.filter(f -> !f.equals(CARD)).toList()) {
                String mode = file.getFileName().toString().replace(".java", "");
                if (Pattern.compile("\\b" + mode + "\\b").matcher(card).find()) {
                    named.add(mode);
                }
            }
        }
        assertEquals(Set.of(), named, "mode files named in PaymentNode.java");
    }
}
