package payment;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.jar.Attributes;
import java.util.jar.JarEntry;
import java.util.jar.JarInputStream;
import java.util.jar.JarOutputStream;
import java.util.jar.Manifest;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * run.sh as users start it: with their own JVM options, through a symlink, on a machine without flock,
 * building ahead. It runs on a copy of the project whose jar this test makes from the compiled classes
 * (the test phase comes before Maven's package phase), so that no test ever starts a Maven build.
 */
class RunScriptTest {
    @TempDir
    static Path project;

    private static final Path GOLDEN_IN = Path.of("tests", "golden", "01-sample-idempotent-charge.in");
    private static final Path GOLDEN_OUT = Path.of("tests", "golden", "01-sample-idempotent-charge.out");

    record Result(int status, String stdout, String stderr) {
    }

    @BeforeAll
    static void copyTheProjectWithABuiltJar() throws IOException {
        Files.copy(Path.of("run.sh"), project.resolve("run.sh"));
        Files.createDirectories(project.resolve("tests/golden"));
        try (Stream<Path> golden = Files.list(Path.of("tests", "golden"))) {
            for (Path in : golden.filter(p -> p.toString().endsWith(".in")).toList()) {
                Files.copy(in, project.resolve("tests/golden").resolve(in.getFileName()));
            }
        }
        FileTime anHourAgo = FileTime.fromMillis(System.currentTimeMillis() - 3_600_000);
        Files.createDirectories(project.resolve("src/main"));
        Files.writeString(project.resolve("pom.xml"), "<project/>\n");
        Files.setLastModifiedTime(project.resolve("src/main"), anHourAgo);
        Files.setLastModifiedTime(project.resolve("pom.xml"), anHourAgo);
        Files.createDirectories(project.resolve("target"));
        writeJar(project.resolve("target/payment-node.jar"));
    }

    /** The node's classes and Jackson's, with the node as the main class: what the shade plugin makes. */
    private static void writeJar(Path jar) throws IOException {
        Manifest manifest = new Manifest();
        manifest.getMainAttributes().put(Attributes.Name.MANIFEST_VERSION, "1.0");
        manifest.getMainAttributes().put(Attributes.Name.MAIN_CLASS, CommandLine.class.getName());
        Set<String> written = new HashSet<>();
        try (JarOutputStream out = new JarOutputStream(Files.newOutputStream(jar), manifest)) {
            Path classes = Path.of(Node.location(PaymentNode.class));
            try (Stream<Path> files = Files.walk(classes)) {
                for (Path file : files.filter(Files::isRegularFile).toList()) {
                    String name = classes.relativize(file).toString().replace('\\', '/');
                    written.add(name);
                    out.putNextEntry(new JarEntry(name));
                    Files.copy(file, out);
                    out.closeEntry();
                }
            }
            try (JarInputStream jackson = new JarInputStream(Files.newInputStream(Path.of(Node.location(
                    com.fasterxml.jackson.core.JsonFactory.class))))) {
                for (JarEntry entry; (entry = jackson.getNextJarEntry()) != null; ) {
                    String name = entry.getName();
                    if (entry.isDirectory() || name.startsWith("META-INF/") || name.endsWith("module-info.class") || !written.add(name)) {
                        continue;
                    }
                    out.putNextEntry(new JarEntry(name));
                    jackson.transferTo(out);
                    out.closeEntry();
                }
            }
        }
    }

    private static Result run(List<String> command, Path directory, Map<String, String> environment, byte[] stdin) throws Exception {
        ProcessBuilder builder = new ProcessBuilder(command).directory(directory.toFile());
        builder.environment().remove("JAVA_OPTS");
        builder.environment().putAll(environment);
        Process process = builder.start();
        CompletableFuture<byte[]> stdout = CompletableFuture.supplyAsync(() -> readAll(process.getInputStream()));
        CompletableFuture<byte[]> stderr = CompletableFuture.supplyAsync(() -> readAll(process.getErrorStream()));
        try (OutputStream in = process.getOutputStream()) {
            in.write(stdin);
        }
        assertTrue(process.waitFor(120, TimeUnit.SECONDS), "run.sh hung: " + command);
        return new Result(process.exitValue(), new String(stdout.get(), StandardCharsets.UTF_8), new String(stderr.get(), StandardCharsets.UTF_8));
    }

    private static byte[] readAll(InputStream in) {
        try {
            return in.readAllBytes();
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
    }

    private static Result runSample(Path directory, String script, Map<String, String> environment) throws Exception {
        return run(List.of(script), directory, environment, Files.readAllBytes(GOLDEN_IN));
    }

    private static void assertRepliesOnly(Result result) throws IOException {
        assertEquals(0, result.status(), result.stderr());
        assertEquals(Files.readString(GOLDEN_OUT), result.stdout(), "stdout must carry the replies and nothing else");
    }

    /** docs/PROTOCOL.md section 7, "stdout carries replies only, whatever JVM options a user adds". */
    @Test
    void whateverJavaOptsPrintStaysOffStdout() throws Exception {
        Result result = runSample(project, "./run.sh", Map.of("JAVA_OPTS", "-verbose:gc -XX:+PrintCommandLineFlags"));
        assertRepliesOnly(result);
        assertTrue(result.stderr().contains("-XX:+PrintCommandLineFlags"), "the flags went to stderr: " + result.stderr());
        assertTrue(result.stderr().contains("[gc]"), "the GC log went to stderr: " + result.stderr());
    }

    /** README, Troubleshooting, "Garbage collector": one in JAVA_OPTS replaces run.sh's (two would stop the JVM). */
    @Test
    void aCollectorChosenInJavaOptsWins() throws Exception {
        Result result = runSample(project, "./run.sh", Map.of("JAVA_OPTS", "-XX:+UseSerialGC -Xlog:gc:stdout"));
        assertRepliesOnly(result);
        assertTrue(result.stderr().contains("Using Serial"), result.stderr());
    }

    /** README, "Under a Maelstrom-style harness": run.sh through a symlink finds its jar beside itself, not beside the link. */
    @Test
    void worksThroughASymlinkFromAnotherFolder(@TempDir Path elsewhere) throws Exception {
        Path link = Files.createSymbolicLink(elsewhere.resolve("payment-node"), project.resolve("run.sh"));
        try {
            Result result = runSample(elsewhere, "./payment-node", Map.of());
            assertRepliesOnly(result);
            assertFalse(Files.exists(elsewhere.resolve("target")), "nothing is built beside the link");
        } finally {
            Files.delete(link);   // (JUnit warns about links that lead out of a temporary folder)
        }
    }

    /** README, Troubleshooting, "macOS": without flock (stock macOS has none) run.sh locks the build with a folder. */
    @Test
    void buildsAheadWithoutFlockAndThenStartsAtOnce(@TempDir Path bin) throws Exception {
        // A PATH with the commands run.sh uses, and no flock.
        for (String command : List.of("bash", "env", "dirname", "readlink", "find", "mkdir", "cat", "rm", "sleep", "sed", "java")) {
            Files.createSymbolicLink(bin.resolve(command), Path.of("/usr/bin", command).toRealPath());
        }
        try {
            buildAheadOn(bin);
        } finally {
            try (Stream<Path> links = Files.list(bin)) {
                for (Path link : links.toList()) {
                    Files.delete(link);   // (JUnit warns about links that lead out of a temporary folder)
                }
            }
        }
    }

    private static void buildAheadOn(Path bin) throws Exception {
        Files.deleteIfExists(project.resolve("target/payment-node.jsa"));   // stale: --build must make it again
        Map<String, String> noFlock = Map.of("PATH", bin.toString());
        Result built = run(List.of("./run.sh", "--build"), project, noFlock, new byte[0]);
        assertEquals(0, built.status(), built.stderr());
        assertEquals("", built.stdout());
        assertTrue(built.stderr().contains("is built and up to date"), built.stderr());
        assertTrue(Files.exists(project.resolve("target/payment-node.jsa")), "the start-up archive was made ahead");
        assertFalse(Files.exists(project.resolve("target/.build.lock.d")), "the lock was released");
        assertRepliesOnly(runSample(project, "./run.sh", noFlock));
    }

    /**
     * GitHub issue 22: stdout is the replies' own whatever the redirections. With stdout and stderr one
     * file ({@code > f 2>&1}) and a log line beside every reply, every reply is there, whole, in order, and
     * so is every log line: the replies share the shell's open file (and its offset) rather than reopen it.
     */
    @Test
    void repliesAndTheLogShareOneFileWhole() throws Exception {
        int charges = 3000;
        StringBuilder in = new StringBuilder("{\"src\":\"c0\",\"dest\":\"n1\",\"body\":{\"type\":\"init\",\"msg_id\":1,\"node_id\":\"n1\",\"node_ids\":[\"n1\"]}}\n");
        for (int i = 0; i < charges; i++) {
            in.append("{\"src\":\"c1\",\"dest\":\"n1\",\"body\":{\"type\":\"ChargePayment\",\"msg_id\":").append(i + 2)
                    .append(",\"saga_id\":\"s").append(i).append("\",\"step\":1,\"params\":{\"user_id\":\"u").append(i % 50)
                    .append("\",\"amount\":1.00}}}\n");
        }
        byte[] requests = in.toString().getBytes(StandardCharsets.UTF_8);
        Files.write(project.resolve("many.in"), requests);
        // What the replies are: a pipe carries them whole.
        Result piped = run(List.of("./run.sh"), project, Map.of(), requests);
        assertEquals(0, piped.status(), piped.stderr());
        List<String> expected = piped.stdout().lines().toList();
        assertEquals(charges + 1, expected.size(), "one reply per request through a pipe");

        Result shared = shell("./run.sh --verbose < many.in > shared.out 2>&1");
        assertEquals(0, shared.status(), shared.stderr());
        List<String> lines = Files.readAllLines(project.resolve("shared.out"));
        assertLines(expected, lines.stream().filter(line -> line.startsWith("{")).toList(), "the replies in shared.out");
        List<String> log = lines.stream().filter(line -> !line.startsWith("{")).toList();
        assertEquals(List.of(), log.stream().filter(line -> !line.startsWith("payment-node: ") && !line.matches("\\[[0-9.]+s\\]\\[.*")).toList(),
                "shared.out holds replies, the node's log lines and the JVM's, nothing torn");
        assertEquals(charges + 1, log.stream().filter(line -> line.startsWith("payment-node: line ")).count(),
                "one log line per request");
    }

    /**
     * GitHub issue 22: what the shell writes before and after the node, into the same file, stays whole and
     * in place, and so do the replies between: with {@code >} (one offset shared by the shell and the node)
     * and with {@code >>}.
     */
    @Test
    void theShellsLinesAroundTheNodeStayWhole() throws Exception {
        String framed = "HEADER\n" + Files.readString(GOLDEN_OUT) + "FOOTER\n";
        String sample = GOLDEN_IN.toString();   // the copy's, in the copy's folder
        Result written = shell("{ echo HEADER; ./run.sh < " + sample + "; echo FOOTER; } > framed.out");
        assertEquals(0, written.status(), written.stderr());
        assertEquals(framed, Files.readString(project.resolve("framed.out")));
        Result appended = shell("echo HEADER > appended.out; ./run.sh < " + sample + " >> appended.out; echo FOOTER >> appended.out");
        assertEquals(0, appended.status(), appended.stderr());
        assertEquals(framed, Files.readString(project.resolve("appended.out")));
    }

    /** README, Quick start: `./run.sh --help` prints the usage on stdout (`./run.sh --help | less`), status 0. */
    @Test
    void helpThroughRunShIsOnStdout() throws Exception {
        Result help = run(List.of("./run.sh", "--help"), project, Map.of(), new byte[0]);
        assertEquals(0, help.status(), help.stderr());
        assertEquals(CommandLine.USAGE, help.stdout());
        assertFalse(help.stderr().contains("Usage"), help.stderr());
    }

    /**
     * Why run.sh gives the JVM stderr as its stdout rather than steering the JVM's output with options: what
     * reaches a running node keeps off stdout too. {@code jcmd PID VM.log what=gc} logs to the JVM's stdout
     * unless told otherwise, and no option given at start can move that.
     */
    @Test
    void whatJcmdTurnsOnInARunningNodeStaysOffStdout() throws Exception {
        Path jcmd = Path.of(System.getProperty("java.home"), "bin", "jcmd");
        assumeTrue(Files.isExecutable(jcmd), "no jcmd beside this JVM: " + jcmd);
        ProcessBuilder builder = new ProcessBuilder("./run.sh").directory(project.toFile());
        builder.environment().remove("JAVA_OPTS");
        Process node = builder.start();   // run.sh execs the JVM: this is its pid
        CompletableFuture<byte[]> stderr = CompletableFuture.supplyAsync(() -> readAll(node.getErrorStream()));
        try {
            List<String> requests = Files.readAllLines(GOLDEN_IN);
            InputStream stdout = node.getInputStream();
            OutputStream stdin = node.getOutputStream();
            stdin.write((requests.get(0) + "\n").getBytes(StandardCharsets.UTF_8));
            stdin.flush();
            ByteArrayOutputStream replies = new ByteArrayOutputStream();
            CompletableFuture.runAsync(() -> {   // init_ok: the node is up
                int b;
                do {
                    b = read(stdout);
                    if (b >= 0) {
                        replies.write(b);
                    }
                } while (b >= 0 && b != '\n');
            }).get(60, TimeUnit.SECONDS);
            for (List<String> command : List.of(List.of("VM.log", "what=gc=info"), List.of("GC.run"))) {
                List<String> line = new ArrayList<>(List.of(jcmd.toString(), Long.toString(node.pid())));
                line.addAll(command);
                Result result = run(line, project, Map.of(), new byte[0]);
                assertEquals(0, result.status(), "jcmd " + command + ": " + result.stdout() + result.stderr());
            }
            for (String request : requests.subList(1, requests.size())) {
                stdin.write((request + "\n").getBytes(StandardCharsets.UTF_8));
            }
            stdin.close();
            replies.write(readAll(stdout));
            assertTrue(node.waitFor(60, TimeUnit.SECONDS), "the node hung");
            assertEquals(0, node.exitValue());
            assertEquals(Files.readString(GOLDEN_OUT), replies.toString(StandardCharsets.UTF_8), "stdout must carry the replies and nothing else");
            String log = new String(stderr.get(60, TimeUnit.SECONDS), StandardCharsets.UTF_8);
            assertTrue(log.contains("(Diagnostic Command)"), "the GC that jcmd asked for is logged on stderr: " + log);
        } finally {
            node.destroyForcibly();
        }
    }

    private static int read(InputStream in) {
        try {
            return in.read();
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
    }

    private static Result shell(String script) throws Exception {
        return run(List.of("bash", "-c", script), project, Map.of(), new byte[0]);
    }

    /** The two lists equal, and if not, a message that says how, without printing thousands of lines. */
    private static void assertLines(List<String> expected, List<String> actual, String what) {
        if (expected.equals(actual)) {
            return;
        }
        Set<String> present = new HashSet<>(actual);
        long whole = expected.stream().filter(present::contains).count();
        int first = 0;
        while (first < Math.min(expected.size(), actual.size()) && expected.get(first).equals(actual.get(first))) {
            first++;
        }
        throw new AssertionError(what + ": " + whole + " of " + expected.size() + " replies whole, " + actual.size()
                + " lines starting with '{'; the first difference is at reply " + (first + 1) + ": expected\n  "
                + (first < expected.size() ? expected.get(first) : "(no more)") + "\nbut was\n  "
                + (first < actual.size() ? actual.get(first) : "(no more)"));
    }

    @Test
    void helpListsTheShortOptionsAndBuildingAhead() {
        assertTrue(CommandLine.USAGE.contains("-v, --verbose"), CommandLine.USAGE);
        assertTrue(CommandLine.USAGE.contains("-h, --help"), CommandLine.USAGE);
        assertTrue(CommandLine.USAGE.contains("--build"), CommandLine.USAGE);
    }
}
