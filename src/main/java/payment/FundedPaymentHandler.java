package payment;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;

import java.io.IOException;

import payment.Balances.Account;

import static payment.PaymentNode.*;

/**
 * The table with balances (--balance): every user starts with the same amount, a charge above what is
 * left is declined, and the decline is that step's result; a refund pays back. It plugs into the card's
 * table at its seams: {@code firstCharge} (the decline), {@code refundPayment} (the repayment),
 * {@code restore} (a replayed journal moves the balances too) and {@link Refusal} (the decline kept).
 */
final class FundedPaymentHandler extends PaymentHandler {
    private final Balances balances;

    FundedPaymentHandler(Log log, Journal journal, Balances balances) {
        this(log, journal, balances, keysForHeap());
    }

    FundedPaymentHandler(Log log, Journal journal, Balances balances, long maxKeys) {
        super(log, journal, maxKeys);
        this.balances = balances;
    }

    @Override
    Entry firstCharge(ChargeRequest request) {
        long now = now();
        expireHoldsPast(request.userId(), now);
        String shortfall = balances.withdraw(request.userId(), request.amount().value(), now);
        if (shortfall == null) {
            return super.firstCharge(request);
        }
        Declined declined = new Declined(request.userId(), request.amount().text(), declinedText(shortfall, request.key()));
        journal().refused(request, declined);
        return declined;
    }

    @Override
    Entry firstReserve(ReserveRequest request) {
        long now = now();
        expireHoldsPast(request.userId(), now);
        long expiresAt = expiresAt(request, now);   // the instant the balance check saw, not a second reading of the clock
        String shortfall = balances.hold(request.userId(), request.key(), request.amount().value(), expiresAt, now);
        if (shortfall == null) {
            return reserveUntil(request, expiresAt);
        }
        Declined declined = new Declined(request.userId(), request.amount().text(), request.expiresInMsOrAbsent(),
                declinedText(shortfall, request.key()));
        journal().refused(request, declined);
        return declined;
    }

    private static String declinedText(String shortfall, String key) {
        return "declined: insufficient funds: " + shortfall + " (" + key + ")";
    }

    /**
     * A decision that counts a user's money counts only live holds; the holds past their deadline are expired for good
     * first (recorded, released, and never captured after), so that a charge never spends money a late capture then
     * takes too (a capture decided at an earlier time: another node's clock), and no user's list of holds grows with
     * holds nobody resolved.
     */
    private void expireHoldsPast(String userId, long now) {
        for (String key : balances.holdsPast(userId, now)) {
            expireIfDue(key);
        }
    }

    /** A capture takes what it captured and releases the rest; a void or an expiry releases it all. */
    @Override
    void holdResolved(Reserved reservation) {
        balances.release(reservation.userId(), reservation.key(), reservation.captured());
    }

    @Override
    Refunded refundPayment(Charged payment, RefundRequest request) {
        Refunded refunded = super.refundPayment(payment, request);
        balances.repay(payment, refunded.refunded());
        return refunded;
    }

    @Override
    void restore(String key, Entry entry, long drewOn) {
        super.restore(key, entry, drewOn);
        if (entry instanceof Reserved reserved) {
            balances.restoreHold(reserved.userId(), reserved.key(), reserved.amount(), reserved.expiresAt());
        } else if (entry instanceof Charged charged) {
            balances.restoreWithdrawal(charged.userId(), charged.amount());
        } else if (entry instanceof Refunded refunded && drewOn != 0) {
            balances.repay(payment(drewOn), refunded.refunded());
        }
    }

    Balances balances() {
        return balances;
    }

    /** A charge key whose charge was declined: the decline is the step's result, as a charge would be. */
    record Declined(String userId, String amount, long expiresInMs, String reason) implements Refusal {
        /** A declined charge. */
        Declined(String userId, String amount, String reason) {
            this(userId, amount, OF_A_CHARGE, reason);
        }

        @Override
        public RpcError error() {
            return new RpcError(Reason.INSUFFICIENT_FUNDS, reason);
        }

        @Override
        public String status() {
            return "declined";
        }
    }

    /**
     * BalanceRead (docs/PROTOCOL.md section 9): a user's balance, and the totals charged and refunded that made it,
     * answered from {@code balances}; null balances (no --balance): error 10, this node keeps none.
     */
    static final class BalanceReads extends ServiceAround {
        private final Balances balances;
        /** The table's clock: the holds a read counts are those live at the instant the table decides by. */
        private final java.util.function.LongSupplier clock;

        BalanceReads(Service inner, Balances balances, java.util.function.LongSupplier clock) {
            super(inner);
            this.balances = balances;
            this.clock = clock;
        }

        @Override
        public Reply other(Envelope reply, String type, byte[] line, int start, int length) throws IOException {
            if (!type.equals("BalanceRead")) {
                return inner.other(reply, type, line, start, length);
            }
            if (balances == null) {
                throw new RpcError(Reason.BALANCES_NOT_KEPT, "BalanceRead needs --balance: this node keeps no balances");
            }
            String userId = userIdOf(line, start, length);
            return reply(reply, userId, balances.account(userId), clock.getAsLong());
        }

        /** BalanceRead_ok: the user's balance, and the totals charged and refunded (exact decimals). */
        static Reply reply(Envelope reply, String userId, Account account, long now) {
            return replies -> replies.send(reply, "BalanceRead_ok", json -> {
                json.field("user_id");
                json.string(userId);
                json.field("balance");
                json.ascii(account.balance().toPlainString());
                json.field("charged");
                json.ascii(account.charged().toPlainString());
                json.field("refunded");
                json.ascii(account.refunded().toPlainString());
                json.field("held");
                json.ascii(account.heldAt(now).toPlainString());
            });
        }

        /** The body's user_id, read from the line the node already found readable (error 12 when missing or not a string). */
        static String userIdOf(byte[] line, int start, int length) throws IOException {
            return requiredString(userIdValue(line, start, length), "user_id");
        }

        private static Value userIdValue(byte[] line, int start, int length) throws IOException {
            Value userId = null;
            try (JsonParser parser = JSON.createParser(line, start, length)) {
                parser.nextToken();
                while (parser.nextToken() == JsonToken.FIELD_NAME) {
                    String name = parser.currentName();
                    parser.nextToken();
                    if (!name.equals("body")) {
                        parser.skipChildren();
                        continue;
                    }
                    while (parser.nextToken() == JsonToken.FIELD_NAME) {
                        boolean isUserId = parser.currentName().equals("user_id");
                        Value value = Value.read(parser, parser.nextToken());
                        userId = isUserId ? value : userId;   // a repeated key keeps its last value, as the node's parse does
                    }
                }
            }
            return userId;
        }
    }
}
