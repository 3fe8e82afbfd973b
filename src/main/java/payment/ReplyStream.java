package payment;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.reflect.Field;

/**
 * Where replies go: stdout, or the descriptor that {@code -Dpayment.replies.fd} names.
 *
 * <p>run.sh starts the JVM with its stdout on descriptor 3 and stderr as the JVM's own stdout, so that
 * nothing the JVM prints (a {@code JAVA_OPTS} option, {@code jcmd VM.log}, a thread dump) can land among
 * the replies. The replies must then go out through descriptor 3 itself, the very open file the shell
 * gave run.sh as stdout: its file offset is the shell's, shared with stderr under {@code > f 2>&1} and
 * with whatever the shell writes after the node ({@code { ./run.sh; echo; } > f}). Opening
 * {@code /dev/fd/3} instead makes a new open file with an offset of its own, and the two then write over
 * each other (GitHub issue 22).
 *
 * <p>Java 17 has no public way to write to a descriptor by number: {@link FileDescriptor} has no public
 * constructor taking one, {@code System.inheritedChannel()} is descriptor 0 and sockets only, and the
 * foreign-function API is an incubator module in 17 (gone from later JDKs under that name). So this sets
 * the number into a new {@link FileDescriptor}'s {@code fd} field (there since JDK 1.0), which run.sh
 * allows with {@code --add-opens java.base/java.io=ALL-UNNAMED}. Without that option it fails at start
 * with a message rather than write anywhere else. Started without the property ({@code java -jar}),
 * replies go to stdout and nothing here is used.
 */
final class ReplyStream {
    /** The property run.sh sets to the number of the descriptor it hands the replies (3). */
    static final String DESCRIPTOR = "payment.replies.fd";

    private ReplyStream() {
    }

    static OutputStream open() throws IOException {
        String number = System.getProperty(DESCRIPTOR);
        return number == null ? new FileOutputStream(FileDescriptor.out) : new FileOutputStream(inherited(number));
    }

    /** The inherited descriptor {@code number} as is: no open, no dup, the same file offset. */
    private static FileDescriptor inherited(String number) throws IOException {
        int fd;
        try {
            fd = Integer.parseInt(number);
        } catch (NumberFormatException e) {
            fd = -1;
        }
        if (fd < 0) {
            throw new IOException("-D" + DESCRIPTOR + " needs a descriptor number, got " + number);
        }
        FileDescriptor descriptor = new FileDescriptor();
        try {
            Field field = FileDescriptor.class.getDeclaredField("fd");
            field.setAccessible(true);
            field.setInt(descriptor, fd);
        } catch (ReflectiveOperationException | RuntimeException e) {   // RuntimeException: InaccessibleObjectException
            throw new IOException("cannot use descriptor " + fd + " (-D" + DESCRIPTOR + " needs the JVM option"
                    + " --add-opens java.base/java.io=ALL-UNNAMED, which run.sh gives): " + e, e);
        }
        return descriptor;
    }
}
