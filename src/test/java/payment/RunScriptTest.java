package payment;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
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

    @Test
    void helpListsTheShortOptionsAndBuildingAhead() {
        assertTrue(CommandLine.USAGE.contains("-v, --verbose"), CommandLine.USAGE);
        assertTrue(CommandLine.USAGE.contains("-h, --help"), CommandLine.USAGE);
        assertTrue(CommandLine.USAGE.contains("--build"), CommandLine.USAGE);
    }
}
