package payment;

import java.io.IOException;
import java.io.InputStream;
import java.util.List;

import static payment.PaymentNode.*;

/**
 * A mode's service around another (the card's table, or another mode's): every call goes on to the inner
 * service unless the mode overrides it. BalanceRead, injected faults and a journal opened at init are each
 * one of these, so that each says only what it changes.
 */
abstract class ServiceAround implements Service {
    final Service inner;

    ServiceAround(Service inner) {
        this.inner = inner;
    }

    @Override
    public Reply charge(Envelope reply, ChargeRequest request) throws IOException {
        return inner.charge(reply, request);
    }

    @Override
    public Reply refund(Envelope reply, RefundRequest request) throws IOException {
        return inner.refund(reply, request);
    }

    @Override
    public Reply status(Envelope reply, StatusRequest request) throws IOException {
        return inner.status(reply, request);
    }

    @Override
    public Reply reserve(Envelope reply, ReserveRequest request) throws IOException {
        return inner.reserve(reply, request);
    }

    @Override
    public Reply capture(Envelope reply, CaptureRequest request) throws IOException {
        return inner.capture(reply, request);
    }

    @Override
    public Reply voidHold(Envelope reply, VoidRequest request) throws IOException {
        return inner.voidHold(reply, request);
    }

    @Override
    public Reply other(Envelope reply, String type, byte[] line, int start, int length) throws IOException {
        return inner.other(reply, type, line, start, length);
    }

    @Override
    public void init(String nodeId, List<String> nodeIds) throws IOException {
        inner.init(nodeId, nodeIds);
    }

    @Override
    public boolean completes(String from, byte[] line, int start, int length) throws IOException {
        return inner.completes(from, line, start, length);
    }

    @Override
    public InputStream input(InputStream stdin) {
        return inner.input(stdin);
    }

    @Override
    public void close() throws IOException {
        inner.close();
    }
}
