package payment;

import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.function.Function;

import static payment.FileJournal.NODE_ID;
import static payment.FileJournal.journalProblem;
import static payment.FileJournal.tableFromJournal;
import static payment.PaymentNode.*;

/**
 * A node whose journal is its own file, named by its id (docs/PROTOCOL.md, section 7): the journal opens
 * at the first init, before init_ok; until then requests get error 11. A journal that cannot be opened
 * then stops the node (status 2) rather than let it serve from memory.
 */
final class JournalAtInit implements Service {
    private final String pathWithNodeId;
    private final Balances balances;
    private final long maxKeys;
    /** The injected faults (null: none): the journal gives back the faults drawn before a restart, and keeps new ones. */
    private final Faults faults;
    /** The service of the table once it is replayed from the journal: the card's, with any mode around it. */
    private final Function<PaymentHandler, Service> serving;
    private final Log log;
    /** Null until the first init opens the journal. */
    private Service opened;

    JournalAtInit(String pathWithNodeId, Balances balances, long maxKeys, Faults faults, Function<PaymentHandler, Service> serving, Log log) {
        this.pathWithNodeId = pathWithNodeId;
        this.balances = balances;
        this.maxKeys = maxKeys;
        this.faults = faults;
        this.serving = serving;
        this.log = log;
    }

    private Service opened() {
        if (opened == null) {
            throw new RpcError(Reason.NOT_INITIALISED, "not initialized: this node's journal ("
                    + pathWithNodeId + ") opens at its first init; nothing was done");
        }
        return opened;
    }

    @Override
    public void init(String nodeId, List<String> nodeIds) throws IOException {
        if (opened == null) {
            if (nodeId == null || nodeId.contains("/") || nodeId.contains("\\") || nodeId.equals("..") || nodeId.contains("\0")) {
                throw new RpcError(Reason.BAD_NODE_ID, "node_id " + nodeId + " cannot name a journal file");
            }
            String path = pathWithNodeId.replace(NODE_ID, nodeId);
            try {
                opened = serving.apply(tableFromJournal(Path.of(path), log, balances, maxKeys, faults));
            } catch (IOException | RuntimeException e) {
                throw new Stop("cannot use the journal " + path + ": " + journalProblem(e), 2);
            }
        }
        opened.init(nodeId, nodeIds);
    }

    @Override
    public Reply charge(Envelope reply, ChargeRequest request) throws IOException {
        return opened().charge(reply, request);
    }

    @Override
    public Reply refund(Envelope reply, RefundRequest request) throws IOException {
        return opened().refund(reply, request);
    }

    @Override
    public Reply status(Envelope reply, StatusRequest request) throws IOException {
        return opened().status(reply, request);
    }

    @Override
    public Reply reserve(Envelope reply, ReserveRequest request) throws IOException {
        return opened().reserve(reply, request);
    }

    @Override
    public Reply capture(Envelope reply, CaptureRequest request) throws IOException {
        return opened().capture(reply, request);
    }

    @Override
    public Reply voidHold(Envelope reply, VoidRequest request) throws IOException {
        return opened().voidHold(reply, request);
    }

    @Override
    public Reply other(Envelope reply, String type, byte[] line, int start, int length) throws IOException {
        return opened().other(reply, type, line, start, length);
    }

    @Override
    public void close() throws IOException {
        if (opened != null) {
            opened.close();
        }
    }
}
