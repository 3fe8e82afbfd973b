package payment;

import com.fasterxml.jackson.core.JsonFactory;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Runs the node: its real main loop in-process, on byte streams instead of stdin/stdout ({@link #run}),
 * or as a real process started the way run.sh starts it, JVM logs on stderr ({@link #start}).
 */
public final class Node {
    public record Run(int status, String stdout, String stderr) {
    }

    /** A node's log, written to memory so that a test can read what it said. */
    record CapturedLog(PaymentNode.Log log, ByteArrayOutputStream bytes) {
        static CapturedLog of(boolean verbose) {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            return new CapturedLog(new PaymentNode.Log(new PrintStream(bytes, true, StandardCharsets.UTF_8), verbose), bytes);
        }

        String text() {
            return bytes.toString(StandardCharsets.UTF_8);
        }
    }

    static PaymentNode.Log silentLog() {
        return new PaymentNode.Log(new PrintStream(OutputStream.nullOutputStream()), false);
    }

    static Run run(String input) {
        return run(input.getBytes(StandardCharsets.UTF_8));
    }

    public static Run run(byte[] input) {
        return run(input, false);
    }

    static Run run(byte[] input, boolean verbose) {
        CapturedLog log = CapturedLog.of(verbose);
        return run(input, new PaymentNode.PaymentHandler(log.log(), PaymentNode.Journal.NONE), log);
    }

    /** Serves {@code input} from {@code table}, logging to {@code log}. */
    static Run run(byte[] input, PaymentNode.PaymentHandler table, CapturedLog log) {
        return run(new ByteArrayInputStream(input), table, new ByteArrayOutputStream(), log);
    }

    static Run run(InputStream input, PaymentNode.PaymentHandler table, OutputStream stdout, CapturedLog log) {
        return serve(PaymentNode.serving(table, stdout, log.log()), input, stdout, log);
    }

    /** Serves {@code input} with a node made from these command-line options, as main makes it. */
    static Run runWithOptions(byte[] input, String... args) {
        CapturedLog log = CapturedLog.of(false);
        ByteArrayOutputStream stdout = new ByteArrayOutputStream();
        try {
            return serve(CommandLine.fromOptions(CommandLine.Options.parse(args), stdout, log.log()),
                    new ByteArrayInputStream(input), stdout, log);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /** A node whose journal is its own file, {@code {node_id}} in its path, opened at its first init. */
    static Run runWithJournalAtInit(String path, String input, CapturedLog log) {
        ByteArrayOutputStream stdout = new ByteArrayOutputStream();
        try {
            return serve(CommandLine.fromOptions(CommandLine.Options.parse(new String[] {"--journal", path}), stdout, log.log()),
                    new ByteArrayInputStream(input.getBytes(StandardCharsets.UTF_8)), stdout, log);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    private static Run serve(PaymentNode node, InputStream input, OutputStream stdout, CapturedLog log) {
        int status = node.serve(input);
        return new Run(status, stdout instanceof ByteArrayOutputStream bytes ? bytes.toString(StandardCharsets.UTF_8) : "", log.text());
    }

    // ---- as a real process ---------------------------------------------------------------------------

    /** {@code stderrFile}: where the node's stderr goes (null: a pipe), since killing a process closes its pipes. */
    public static Process start(List<String> jvmOptions, Path stderrFile, String... args) throws IOException {
        ProcessBuilder builder = new ProcessBuilder(command(jvmOptions, args));
        if (stderrFile != null) {
            builder.redirectError(stderrFile.toFile());
        }
        return builder.start();
    }

    static Process start(String... args) throws IOException {
        return start(List.of(), null, args);
    }

    /** Runs the process with no input to its end: its status, stdout and stderr (a usage error, --help). */
    public static Run runProcess(String... args) throws IOException, InterruptedException {
        Process node = start(args);
        node.getOutputStream().close();
        String out = new String(node.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        String err = new String(node.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!node.waitFor(20, java.util.concurrent.TimeUnit.SECONDS)) {
            node.destroyForcibly();
            throw new IllegalStateException("the node did not exit: " + List.of(args));
        }
        return new Run(node.exitValue(), out, err);
    }

    public static List<String> command(List<String> jvmOptions, String... args) {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<String> command = new ArrayList<>(List.of(java, "-Xlog:disable", "-Xlog:all=warning:stderr"));
        command.addAll(jvmOptions);
        command.addAll(List.of("-cp", classpath(), CommandLine.class.getName()));
        command.addAll(List.of(args));
        return command;
    }

    private static String classpath() {
        return location(PaymentNode.class) + File.pathSeparator + location(JsonFactory.class);
    }

    /** The jar or folder a class was loaded from. */
    public static String location(Class<?> type) {
        try {
            return Path.of(type.getProtectionDomain().getCodeSource().getLocation().toURI()).toString();
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }

    private Node() {
    }
}
