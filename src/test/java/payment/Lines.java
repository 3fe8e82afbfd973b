package payment;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/** Reading a process's output in a test without waiting for ever when the process says nothing. */
public final class Lines {
    /**
     * The next line of {@code reader}, or null at the end of the stream. A line that does not come within
     * {@code within} fails the test (AssertionError) instead of hanging it. The read goes on in a daemon thread
     * after a timeout, so the reader must not be used again then.
     */
    public static String readLine(BufferedReader reader, Duration within) {
        CompletableFuture<String> line = new CompletableFuture<>();
        Thread thread = new Thread(() -> {
            try {
                line.complete(reader.readLine());
            } catch (IOException | RuntimeException e) {
                line.completeExceptionally(e);
            }
        }, "Lines.readLine");
        thread.setDaemon(true);   // a line that never comes must not keep the JVM alive
        thread.start();
        try {
            return line.get(within.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new AssertionError("no line within " + within.toMillis() + " ms");
        } catch (ExecutionException e) {
            throw e.getCause() instanceof IOException io ? new UncheckedIOException(io) : new IllegalStateException(e.getCause());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for a line", e);
        }
    }

    private Lines() {
    }
}
