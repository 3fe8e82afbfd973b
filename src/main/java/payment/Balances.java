package payment;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.UnaryOperator;

import static payment.PaymentNode.*;

/**
 * Per-user balances (--balance), exact decimals; each user's updates are atomic. A reservation holds its amount
 * until it is captured, voided or past its deadline: what a user has available is the balance minus the holds
 * live at that instant, so a hold past its deadline stops counting at its deadline, with nothing to do.
 */
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

    /** A user's account: a user never seen has the start balance and nothing charged, refunded or held. */
    Account account(String userId) {
        return accounts.getOrDefault(userId, new Account(start, BigDecimal.ZERO, BigDecimal.ZERO, List.of()));
    }

    /** Takes {@code amount} from what the user has available at {@code now}; null when done, else why not (nothing is taken). */
    String withdraw(String userId, BigDecimal amount, long now) {
        return updateIfAvailable(userId, amount, now, "the charge", account -> account.afterCharge(amount));
    }

    /** Holds {@code amount} of what the user has available at {@code now} until {@code expiresAt}; null when done, else why not. */
    String hold(String userId, String key, BigDecimal amount, long expiresAt, long now) {
        return updateIfAvailable(userId, amount, now, "the reservation", account -> account.withHold(new Held(key, amount, expiresAt)));
    }

    private String updateIfAvailable(String userId, BigDecimal amount, long now, String what, UnaryOperator<Account> change) {
        String[] shortfall = new String[1];
        update(userId, current -> {
            BigDecimal available = current.available(now);
            if (available.compareTo(amount) < 0) {
                shortfall[0] = userId + " has " + available.toPlainString() + " left" + (current.heldAt(now).signum() == 0 ? ""
                        : " beside " + current.heldAt(now).toPlainString() + " held") + ", " + what + " is " + amount.toPlainString();
                return current;
            }
            return change.apply(current);
        });
        return shortfall[0];
    }

    /** The step keys of the user's holds past their deadline at {@code now}, not resolved yet (none, nearly always). */
    List<String> holdsPast(String userId, long now) {
        Account account = accounts.get(userId);
        if (account == null || account.holds().isEmpty()) {
            return List.of();
        }
        List<String> past = new ArrayList<>();
        for (Held hold : account.holds()) {
            if (now >= hold.expiresAt()) {
                past.add(hold.key());
            }
        }
        return past;
    }

    /** A hold resolved: {@code captured} (null: nothing, a void or an expiry) is taken from the balance, the rest released. */
    void release(String userId, String key, String captured) {
        update(userId, account -> {
            Account released = account.withoutHold(key);
            return captured == null ? released : released.afterCharge(new BigDecimal(captured));
        });
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

    /** Replaying a journal: a hold that was made, taken without a check. */
    void restoreHold(String userId, String key, String amount, long expiresAt) {
        update(userId, account -> account.withHold(new Held(key, new BigDecimal(amount), expiresAt)));
    }

    /** Changes a user's account atomically (a user never seen starts from the start balance). */
    private void update(String userId, UnaryOperator<Account> change) {
        accounts.compute(userId, (user, account) -> change.apply(account == null ? account(user) : account));
    }

    /** A live reservation's hold on a user's money, until its deadline; {@code key}: its step's key. */
    record Held(String key, BigDecimal amount, long expiresAt) {
    }

    /**
     * What BalanceRead answers: a user's balance (the start, minus what was charged or captured, plus what was
     * refunded), the totals that made it, and the holds of reservations not resolved yet.
     */
    record Account(BigDecimal balance, BigDecimal charged, BigDecimal refunded, List<Held> holds) {
        Account afterCharge(BigDecimal amount) {
            return new Account(balance.subtract(amount), charged.add(amount), refunded, holds);
        }

        Account afterRefund(BigDecimal amount) {
            return new Account(balance.add(amount), charged, refunded.add(amount), holds);
        }

        Account withHold(Held held) {
            List<Held> more = new ArrayList<>(holds);
            more.add(held);
            return new Account(balance, charged, refunded, List.copyOf(more));
        }

        Account withoutHold(String key) {
            List<Held> fewer = new ArrayList<>(holds);
            fewer.removeIf(held -> held.key().equals(key));
            return new Account(balance, charged, refunded, List.copyOf(fewer));
        }

        /** The sum of the holds live at {@code now}: one past its deadline holds nothing, whether or not anyone looked. */
        BigDecimal heldAt(long now) {
            BigDecimal held = BigDecimal.ZERO;
            for (Held hold : holds) {
                if (now < hold.expiresAt()) {
                    held = held.add(hold.amount());
                }
            }
            return held;
        }

        BigDecimal available(long now) {
            return holds.isEmpty() ? balance : balance.subtract(heldAt(now));
        }
    }
}
