package payment;

import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.util.Arrays;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * stdin, read on a thread of its own, so that the node's loop (which reads its input through this stream)
 * wakes up on time to do a mode's timed work while stdin is quiet: a delayed reply that is due (--faults),
 * a store's reply that is overdue (a cluster). The timed work runs on the loop's own thread, inside
 * {@link #read}, so a mode never writes a reply from another thread.
 */
final class TimedInput extends InputStream {
    /** A mode's timed work. */
    interface Timed {
        /** Does what is due now; returns the nanoseconds until the next thing is due, or -1 when nothing is. */
        long runDue() throws IOException;
    }

    /** Chunks read ahead at most: stdin is not read further while the loop is this far behind. */
    private static final int CHUNKS_AHEAD = 64;
    private static final int CHUNK = 64 * 1024;
    private static final byte[] END = new byte[0];

    private final BlockingQueue<byte[]> chunks = new ArrayBlockingQueue<>(CHUNKS_AHEAD);
    private final Timed timed;
    private volatile IOException readFailure;
    private byte[] current = new byte[0];
    private int pos;
    private boolean ended;

    TimedInput(InputStream stdin, Timed timed) {
        this.timed = timed;
        Thread reader = new Thread(() -> readAhead(stdin), "stdin");
        reader.setDaemon(true);   // a node that exits does not wait for its last read
        reader.start();
    }

    private void readAhead(InputStream stdin) {
        try {
            byte[] buffer = new byte[CHUNK];
            for (int n; (n = stdin.read(buffer)) >= 0; ) {
                if (n > 0) {
                    chunks.put(Arrays.copyOf(buffer, n));
                }
            }
        } catch (IOException e) {
            readFailure = e;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return;
        }
        try {
            chunks.put(END);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public int read(byte[] into, int offset, int length) throws IOException {
        while (true) {
            long wait = timed.runDue();
            if (pos < current.length) {
                int n = Math.min(length, current.length - pos);
                System.arraycopy(current, pos, into, offset, n);
                pos += n;
                return n;
            }
            if (ended) {
                return -1;
            }
            byte[] next;
            try {
                next = wait < 0 ? chunks.take() : chunks.poll(wait, TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted while waiting for input");
            }
            if (next == END) {
                ended = true;
                if (readFailure != null) {
                    throw readFailure;
                }
            } else if (next != null) {
                current = next;
                pos = 0;
            }
        }
    }

    @Override
    public int read() throws IOException {
        byte[] one = new byte[1];
        return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
    }

    /** Bytes that can be read without waiting: the loop flushes its replies before it reads when there are none. */
    @Override
    public int available() {
        byte[] next = chunks.peek();
        return current.length - pos + (next == null ? 0 : next.length);
    }
}
