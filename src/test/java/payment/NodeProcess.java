package payment;

import com.fasterxml.jackson.core.JsonFactory;

import java.io.File;
import java.io.IOException;
import java.net.URISyntaxException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** Starts the node as a real process, the way run.sh starts it (JVM logs on stderr). */
final class NodeProcess {
    /** {@code stderrFile}: where the node's stderr goes (null: a pipe), since killing a process closes its pipes. */
    static Process start(List<String> jvmOptions, Path stderrFile, String... args) throws IOException {
        ProcessBuilder builder = new ProcessBuilder(command(jvmOptions, args));
        if (stderrFile != null) {
            builder.redirectError(stderrFile.toFile());
        }
        return builder.start();
    }

    static List<String> command(List<String> jvmOptions, String... args) {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<String> command = new ArrayList<>(List.of(java, "-Xlog:disable", "-Xlog:all=warning:stderr"));
        command.addAll(jvmOptions);
        command.addAll(List.of("-cp", classpath(), PaymentNode.class.getName()));
        command.addAll(List.of(args));
        return command;
    }

    static Process start(String... args) throws IOException {
        return start(List.of(), null, args);
    }

    private static String classpath() {
        return location(PaymentNode.class) + File.pathSeparator + location(JsonFactory.class);
    }

    private static String location(Class<?> type) {
        try {
            return Path.of(type.getProtectionDomain().getCodeSource().getLocation().toURI()).toString();
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }

    private NodeProcess() {
    }
}
