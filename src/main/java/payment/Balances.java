package payment;

import java.math.BigDecimal;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.UnaryOperator;

import static payment.PaymentNode.*;

/** Per-user balances (--balance), exact decimals; each user's updates are atomic. */
final class Balances {
    private final BigDecimal start;
    private final ConcurrentHashMap<String, Account> accounts = new ConcurrentHashMap<>();

    Balances(BigDecimal start) {
        this.start = start;
    }

    BigDecimal start() {
        return start;
    }

    BigDecimal balance(String userId) {
        return account(userId).balance();
    }

    /** A user's account: a user never seen has the start balance and nothing charged or refunded. */
    Account account(String userId) {
        return accounts.getOrDefault(userId, new Account(start, BigDecimal.ZERO, BigDecimal.ZERO));
    }

    /** Takes {@code amount} from the user's balance; null when done, else why not (nothing is taken). */
    String withdraw(String userId, BigDecimal amount) {
        String[] shortfall = new String[1];
        update(userId, current -> {
            if (current.balance().compareTo(amount) < 0) {
                shortfall[0] = userId + " has " + current.balance().toPlainString() + " left, the charge is " + amount.toPlainString();
                return current;
            }
            return current.afterCharge(amount);
        });
        return shortfall[0];
    }

    /** Gives a refunded amount back to the user who paid it. */
    void repay(Charged payment, String amount) {
        BigDecimal repaid = new BigDecimal(amount);
        update(payment.userId(), account -> account.afterRefund(repaid));
    }

    /** Replaying a journal: a charge that happened, taken without a check. */
    void restoreWithdrawal(String userId, String amount) {
        BigDecimal charged = new BigDecimal(amount);
        update(userId, account -> account.afterCharge(charged));
    }

    /** Changes a user's account atomically (a user never seen starts from the start balance). */
    private void update(String userId, UnaryOperator<Account> change) {
        accounts.compute(userId, (user, account) -> change.apply(account == null ? account(user) : account));
    }

    /** What BalanceRead answers: a user's balance, and the totals charged and refunded that made it. */
    record Account(BigDecimal balance, BigDecimal charged, BigDecimal refunded) {
        Account afterCharge(BigDecimal amount) {
            return new Account(balance.subtract(amount), charged.add(amount), refunded);
        }

        Account afterRefund(BigDecimal amount) {
            return new Account(balance.add(amount), charged, refunded.add(amount));
        }
    }
}
