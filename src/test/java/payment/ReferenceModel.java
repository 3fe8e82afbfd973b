package payment;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.exc.StreamReadException;
import com.fasterxml.jackson.core.io.JsonEOFException;
import com.fasterxml.jackson.core.util.JsonParserDelegate;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.exc.MismatchedInputException;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.BigIntegerNode;
import com.fasterxml.jackson.databind.node.DecimalNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.NumericNode;
import com.fasterxml.jackson.databind.node.ValueNode;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * The protocol (docs/PROTOCOL.md) as plain maps: what the node must print for a sequence of lines. Written
 * from the contract, sharing no code with the node: it reads lines with Jackson Databind's trees (the node
 * reads tokens with jackson-core) and writes replies as text. ModelTest holds one node to it byte for byte;
 * ClusterModelTest holds the cluster to it, searching for an order of the concurrent requests that the
 * model explains (hence {@link #copy} and {@link #fingerprint}).
 */
final class ReferenceModel {
    record Charge(String userId, String amount, String paymentId) {
    }

    /** A step's refused first attempt kept as its result: {@code type} is the message that was declined (a charge or a reservation). */
    record Declined(String type, String userId, String amount, Long expiresInMs, String text) {
    }

    // ---- two-phase payments (SPEC section 12) --------------------------------------------------------------

    /** A step reserved: who, how much (as written), expires_in_ms as given (null: not given), its payment id and its deadline. */
    record Reservation(String userId, String amount, Long expiresInMs, String paymentId, long deadline) {
    }

    /** Where a reservation stands: held until one capture or one void resolves it, or its deadline passes. */
    enum Hold { RESERVED, CAPTURED, VOIDED, EXPIRED }

    /** A capture key's result, and the params it was first sent with (null: not given). */
    record Capture(String paymentIdGiven, String amountGiven, String paymentId, String captured, String released) {
    }

    /** A void key's result (paymentId null: it found no hold), and the payment_id it was first sent with. */
    record Voided(String paymentIdGiven, String paymentId, String released) {
    }

    /** With --balance: a hold not resolved yet, counted against its user until its deadline. */
    record Held(String userId, BigDecimal amount, long deadline) {
    }

    /** A deadline that never comes. */
    static final long NEVER = Long.MAX_VALUE;

    ReferenceModel(BigDecimal start) {
        this(start, 0);
    }

    /** {@code reserveTtl}: the --reserve-ttl of the node (0: a reservation without expires_in_ms never expires). */
    ReferenceModel(BigDecimal start, long reserveTtl) {
        this.start = start;
        this.reserveTtl = reserveTtl;
    }

    /** The time the node decides by, in milliseconds, for the lines that follow: the model is told it (a test's clock). */
    void clock(long millis) {
        this.now = millis;
    }

    record Refund(String paymentId, String amount, String refundId, String refunded) {
    }

    /** Every user's balance at the start (--balance), or null: no limit. */
    private final BigDecimal start;
    private final Map<String, BigDecimal> balances = new HashMap<>();
    private final Map<String, Declined> declines = new HashMap<>();
    private final Map<String, String> userByPayment = new HashMap<>();
    private final Map<String, Charge> charges = new HashMap<>();
    private final Set<String> closedSteps = new HashSet<>();
    private final Map<String, Refund> refunds = new HashMap<>();
    private final Map<String, BigDecimal> refundedByPayment = new HashMap<>();
    private final Map<String, String> chargedByPayment = new HashMap<>();
    /** The saga each payment was charged under: a compensation refunds only its own saga's payments. */
    private final Map<String, String> sagaByPayment = new HashMap<>();
    private final Map<String, Reservation> reservations = new HashMap<>();   // step key ->
    private final Map<String, Hold> holds = new HashMap<>();                // payment id -> (reservations only)
    private final Map<String, Capture> captures = new HashMap<>();          // capture key ->
    private final Map<String, Voided> voids = new HashMap<>();              // void key ->
    private final Map<String, Held> held = new HashMap<>();                 // step key -> its live hold (--balance)
    private final Map<String, BigDecimal> chargedTotal = new HashMap<>();   // user -> charged and captured (--balance)
    private final Map<String, BigDecimal> refundedTotal = new HashMap<>();  // user -> refunded (--balance)
    private final long reserveTtl;
    private long now;
    private int payments;
    private int refundIds;
    private int msgId;
    private String nodeId;
    private final StringBuilder out = new StringBuilder();

    /** An independent model in the same state: the cluster's checker tries several orders from one state. */
    ReferenceModel copy() {
        ReferenceModel copy = new ReferenceModel(start, reserveTtl);
        copy.reservations.putAll(reservations);
        copy.holds.putAll(holds);
        copy.captures.putAll(captures);
        copy.voids.putAll(voids);
        copy.held.putAll(held);
        copy.chargedTotal.putAll(chargedTotal);
        copy.refundedTotal.putAll(refundedTotal);
        copy.now = now;
        copy.balances.putAll(balances);
        copy.declines.putAll(declines);
        copy.userByPayment.putAll(userByPayment);
        copy.charges.putAll(charges);
        copy.closedSteps.addAll(closedSteps);
        copy.refunds.putAll(refunds);
        copy.refundedByPayment.putAll(refundedByPayment);
        copy.chargedByPayment.putAll(chargedByPayment);
        copy.sagaByPayment.putAll(sagaByPayment);
        copy.payments = payments;
        copy.refundIds = refundIds;
        copy.msgId = msgId;
        copy.nodeId = nodeId;
        return copy;
    }

    /** What the model prints for one more line (empty when it prints nothing). */
    String handle(String line) {
        int before = out.length();
        run(List.of(line));
        String printed = out.substring(before);
        out.setLength(before);
        return printed;
    }

    /**
     * The state that decides every later answer, as text: two models with equal fingerprints answer every
     * sequence alike (up to msg_ids, which the cluster's checker ignores).
     */
    String fingerprint() {
        return new java.util.TreeMap<>(charges) + "|" + new java.util.TreeSet<>(closedSteps) + "|" + new java.util.TreeMap<>(refunds)
                + "|" + new java.util.TreeMap<>(refundedByPayment) + "|" + new java.util.TreeMap<>(declines) + "|"
                + new java.util.TreeMap<>(balances) + "|" + payments + "|" + refundIds + "|" + nodeId
                + "|" + new java.util.TreeMap<>(reservations) + "|" + new java.util.TreeMap<>(holds) + "|" + new java.util.TreeMap<>(captures)
                + "|" + new java.util.TreeMap<>(voids) + "|" + new java.util.TreeMap<>(held) + "|" + new java.util.TreeMap<>(chargedTotal)
                + "|" + new java.util.TreeMap<>(refundedTotal) + "|" + now;
    }

    // ---- reading a line: docs/PROTOCOL.md sections 1 and 5 ------------------------------------------------

    /**
     * Lines as trees. Amounts keep their text (see {@link Written}), decimals are never doubles, and a line is
     * one value: anything after it makes the line unreadable. Numbers of any length are read, so that an
     * absurd amount is refused by the protocol's rule (error 12, out of range) rather than by the parser's limit.
     */
    private static final ObjectMapper JSON = JsonMapper.builder(JsonFactory.builder()
                    .streamReadConstraints(StreamReadConstraints.builder().maxNumberLength(Integer.MAX_VALUE).build()).build())
            .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    String run(List<String> lines) {
        for (String line : lines) {
            read(line);
        }
        return out.toString();
    }

    /** One line: answered, or skipped as docs/PROTOCOL.md section 5 says (blank, or unreadable without a string src). */
    private void read(String line) {
        if (line.isBlank()) {
            return;
        }
        JsonNode envelope;
        try (JsonParser parser = new OutOfRangeAsUnvalued(JSON.createParser(line))) {
            envelope = JSON.reader().with(new KeepNumbersAsWritten(parser)).readTree(parser);
        } catch (JsonProcessingException e) {
            unreadable(line, e);
            return;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        JsonNode src = envelope.get("src");
        if (!envelope.isObject() || src == null || !src.isTextual()) {
            return;   // nobody to answer: the node only logs it
        }
        JsonNode dest = envelope.get("dest");
        String from = nodeId != null ? nodeId : dest != null && dest.isTextual() ? dest.textValue() : null;
        JsonNode body = given(envelope, "body");
        if (body == null || !body.isObject()) {
            reply(from, src.textValue(), unreadableLine(body == null ? "missing body" : "body must be an object"), null);
            return;
        }
        handle(src.textValue(), dest != null && dest.isTextual() ? dest.textValue() : null, body);
    }

    /**
     * A line that is not JSON: answered 12 if its text, read up to where it breaks, gives a string src (with
     * in_reply_to when a msg_id was read too), unless what was read is a reply; otherwise only logged.
     */
    private void unreadable(String line, JsonProcessingException e) {
        String src = null;
        String dest = null;
        Long msgId = null;
        boolean isReply = false;
        try (JsonParser parser = JSON.createParser(line)) {
            int depth = 0;
            boolean inBody = false;
            for (JsonToken token = parser.nextToken(); token != null; token = parser.nextToken()) {
                if (token.isStructStart()) {
                    inBody = depth == 1 && "body".equals(parser.currentName()) && token == JsonToken.START_OBJECT;
                    depth++;
                } else if (token.isStructEnd()) {
                    depth--;
                    inBody = false;
                } else if (token.isScalarValue() && depth == 1 && token == JsonToken.VALUE_STRING) {
                    if ("src".equals(parser.currentName())) {
                        src = parser.getText();
                    } else if ("dest".equals(parser.currentName())) {
                        dest = parser.getText();
                    }
                } else if (token.isScalarValue() && depth == 2 && inBody) {
                    if ("in_reply_to".equals(parser.currentName()) && token != JsonToken.VALUE_NULL) {
                        isReply = true;
                    } else if ("msg_id".equals(parser.currentName()) && token == JsonToken.VALUE_NUMBER_INT && parser.getNumberType() != JsonParser.NumberType.BIG_INTEGER) {
                        msgId = parser.getLongValue();
                    }
                }
                if (depth == 0) {
                    break;   // one whole value was read: what breaks the line comes after it
                }
            }
        } catch (IOException brokenHere) {
            // the text ends or breaks here: keep what was read before it
        }
        if (src == null || isReply) {
            return;
        }
        String why;
        if (e instanceof JsonEOFException) {
            why = "not valid JSON: the line ends before the JSON does";   // the contract's own example, section 5
        } else if (e instanceof MismatchedInputException && e.getOriginalMessage().startsWith("Trailing token")) {
            why = "more data after the JSON object";
        } else {
            // The contract words only these; a new kind of broken line needs its words here, not a guess.
            throw new IllegalArgumentException("the model has no words for this unreadable line (" + e.getOriginalMessage() + "): " + line);
        }
        reply(nodeId != null ? nodeId : dest, src, unreadableLine(why), msgId);
    }

    private static String unreadableLine(String why) {
        return "\"type\": \"error\", \"code\": 12, \"text\": " + quote(why) + ", \"reason\": \"unreadable_line\"";
    }

    /** A field's value; JSON null counts as absent (docs/PROTOCOL.md section 5), as a missing field does. */
    private static JsonNode given(JsonNode object, String name) {
        JsonNode value = object.get(name);
        return value == null || value.isNull() ? null : value;
    }

    /** A number's text as the line wrote it. */
    private static String written(JsonNode number) {
        return ((Written) number).text();
    }

    /**
     * A JSON number that keeps its text as the line wrote it: the node echoes an amount's own digits
     * ({@code 1e1} stays {@code 1e1}, {@code 100.50} stays {@code 100.50}), which no BigDecimal remembers.
     */
    interface Written {
        String text();
    }

    static final class WrittenDecimal extends DecimalNode implements Written {
        private static final long serialVersionUID = 1L;
        private final String text;

        WrittenDecimal(BigDecimal value, String text) {
            super(value);
            this.text = text;
        }

        @Override
        public String text() {
            return text;
        }
    }

    static final class WrittenInteger extends BigIntegerNode implements Written {
        private static final long serialVersionUID = 1L;
        private final String text;

        WrittenInteger(BigInteger value, String text) {
            super(value);
            this.text = text;
        }

        @Override
        public String text() {
            return text;
        }
    }

    /**
     * Jackson makes no BigDecimal of {@code 1E+99999999999999} (an exponent beyond an int): the line is still
     * JSON, and the amount is refused by the protocol's range rule, from its text. Such a number gets no value.
     */
    private static final class OutOfRangeAsUnvalued extends JsonParserDelegate {
        OutOfRangeAsUnvalued(JsonParser parser) {
            super(parser);
        }

        @Override
        public BigDecimal getDecimalValue() throws IOException {
            try {
                return super.getDecimalValue();
            } catch (StreamReadException | NumberFormatException beyondBigDecimal) {
                return null;
            }
        }
    }

    /** Makes every number of one line a {@link Written} one, its text read off the parser standing on it. */
    private static final class KeepNumbersAsWritten extends JsonNodeFactory {
        private static final long serialVersionUID = 1L;
        private final transient JsonParser parser;

        KeepNumbersAsWritten(JsonParser parser) {
            super(true);
            this.parser = parser;
        }

        private String text() {
            try {
                return parser.getText();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        @Override
        public NumericNode numberNode(int v) {
            return new WrittenInteger(BigInteger.valueOf(v), text());
        }

        @Override
        public NumericNode numberNode(long v) {
            return new WrittenInteger(BigInteger.valueOf(v), text());
        }

        @Override
        public ValueNode numberNode(BigInteger v) {
            return new WrittenInteger(v, text());
        }

        @Override
        public ValueNode numberNode(BigDecimal v) {
            return new WrittenDecimal(v == null ? BigDecimal.ZERO : v, text());   // the model reads a decimal by its text only
        }
    }

    // ---- answering it ---------------------------------------------------------------------------------------

    private void handle(String src, String dest, JsonNode body) {
        if (given(body, "in_reply_to") != null) {
            return;   // a reply to something the node sent: never answered
        }
        JsonNode rawMsgId = given(body, "msg_id");
        boolean integer = rawMsgId != null && rawMsgId.isIntegralNumber();
        Long inReplyTo = integer && rawMsgId.canConvertToLong() ? rawMsgId.longValue() : null;
        String from = nodeId != null ? nodeId : dest;
        try {
            if (rawMsgId != null && inReplyTo == null) {
                throw new Refusal(12, "malformed_request", integer ? "msg_id " + written(rawMsgId) + " does not fit in 64 bits" : "msg_id must be an integer");
            }
            String type = requiredString(body, "type", "type");
            switch (type) {
                case "init" -> {
                    nodeId = given(body, "node_id") != null ? requiredString(body, "node_id", "node_id") : dest != null ? dest : nodeId;
                    reply(nodeId != null ? nodeId : dest, src, "\"type\": \"init_ok\"", inReplyTo);
                }
                case "ChargePayment" -> reply(from, src, charge(body), inReplyTo);
                case "RefundPayment" -> reply(from, src, refund(body), inReplyTo);
                case "PaymentStatus" -> reply(from, src, status(body), inReplyTo);
                case "ReservePayment" -> reply(from, src, reserve(body), inReplyTo);
                case "CapturePayment" -> reply(from, src, capture(body), inReplyTo);
                case "VoidPayment" -> reply(from, src, voidHold(body), inReplyTo);
                case "BalanceRead" -> reply(from, src, balanceRead(body), inReplyTo);
                default -> throw new Refusal(10, "unsupported_type", "unsupported message type: " + type);
            }
        } catch (Refusal e) {
            reply(from, src, "\"type\": \"error\", \"code\": " + e.code + ", \"text\": " + quote(e.getMessage()) + ", \"reason\": \"" + e.reason + "\""
                    + (e.differs.isEmpty() ? "" : ", \"differs\": [\"" + String.join("\", \"", e.differs) + "\"]"), inReplyTo);
        }
    }

    private void reply(String from, String to, String fields, Long inReplyTo) {
        out.append("{\"src\": ").append(from == null ? "null" : quote(from)).append(", \"dest\": ").append(quote(to))
                .append(", \"body\": {").append(fields);
        if (inReplyTo != null) {
            out.append(", \"in_reply_to\": ").append(inReplyTo);
        }
        out.append(", \"msg_id\": ").append(msgId++).append("}}\n");
    }

    /** An error reply as docs/PROTOCOL.md section 5 has it: code, text, reason and (a reused key) the params that differ. */
    static final class Refusal extends RuntimeException {
        final int code;
        final String reason;
        final List<String> differs;

        Refusal(int code, String reason, String text) {
            this(code, reason, text, List.of());
        }

        Refusal(int code, String reason, String text, List<String> differs) {
            super(text);
            this.code = code;
            this.reason = reason;
            this.differs = differs;
        }
    }

    /** A string as the node writes it: escaped as Python's json.dumps escapes (ASCII only, {@code \\u00e9}). */
    static String quote(String text) {
        StringBuilder quoted = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> quoted.append("\\\"");
                case '\\' -> quoted.append("\\\\");
                case '\n' -> quoted.append("\\n");
                case '\r' -> quoted.append("\\r");
                case '\t' -> quoted.append("\\t");
                case '\b' -> quoted.append("\\b");
                case '\f' -> quoted.append("\\f");
                default -> {
                    if (c < 0x20 || c > 0x7e) {
                        quoted.append(String.format("\\u%04x", (int) c));
                    } else {
                        quoted.append(c);
                    }
                }
            }
        }
        return quoted.append('"').toString();
    }

    private static Refusal malformed(String text) {
        return new Refusal(12, "malformed_request", text);
    }

    /** A field that must be a non-empty string; {@code name} is how the error names it ({@code params.user_id}). */
    private static String requiredString(JsonNode object, String field, String name) {
        JsonNode value = given(object, field);
        if (value == null) {
            throw malformed("missing " + name);
        }
        if (!value.isTextual() || value.textValue().isEmpty()) {
            throw malformed(name + " must be a non-empty string");
        }
        return value.textValue();
    }

    private static long step(JsonNode body) {
        JsonNode step = given(body, "step");
        if (step == null) {
            throw malformed("missing step");
        }
        if (!step.isIntegralNumber() || !step.canConvertToLong() || step.longValue() < 0) {
            throw malformed("step must be an integer from 0 to " + Long.MAX_VALUE);
        }
        return step.longValue();
    }

    /** The params object; a missing (or null) one is an error where params are required, else no params. */
    private static JsonNode params(JsonNode body, boolean required) {
        JsonNode params = given(body, "params");
        if (params == null) {
            if (required) {
                throw malformed("missing params");
            }
            return JSON.createObjectNode();
        }
        if (!params.isObject()) {
            throw malformed("params must be an object");
        }
        return params;
    }

    /** An amount's text as the request wrote it, once it is a number > 0 of sane size (docs/PROTOCOL.md section 5). */
    private static String amount(JsonNode params) {
        JsonNode amount = given(params, "amount");
        if (amount == null) {
            throw malformed("missing params.amount");
        }
        if (!amount.isNumber()) {
            throw malformed("params.amount must be a number");
        }
        String text = written(amount);
        BigDecimal value;
        try {
            value = new BigDecimal(text);
        } catch (NumberFormatException exponentBeyondInt) {
            throw outOfRange(text);
        }
        if (value.signum() <= 0) {
            throw malformed("params.amount must be greater than 0, got " + text);
        }
        if (value.scale() > 40 || value.precision() - value.scale() > 40) {
            throw outOfRange(text);   // refused before any arithmetic: 1e999999999 is never expanded
        }
        return text;
    }

    private static Refusal outOfRange(String text) {
        return malformed("params.amount " + text + " is out of range: at most 40 digits before the decimal point and 40 after it");
    }

    private static boolean sameAmount(String a, String b) {
        return a == null ? b == null : b != null && new BigDecimal(a).compareTo(new BigDecimal(b)) == 0;
    }

    /** The step's payment when it has one (a charge or a reservation), else null. */
    private String paymentOfStep(String key) {
        Charge charge = charges.get(key);
        Reservation reservation = reservations.get(key);
        return charge != null ? charge.paymentId() : reservation != null ? reservation.paymentId() : null;
    }

    /** With --balance: what a user's live holds add up to now (a hold past its deadline holds nothing). */
    private BigDecimal heldNow(String userId) {
        BigDecimal sum = BigDecimal.ZERO;
        for (Held hold : held.values()) {
            if (hold.userId().equals(userId) && now < hold.deadline()) {
                sum = sum.add(hold.amount());
            }
        }
        return sum;
    }

    /**
     * With --balance, a first charge or reservation of {@code amount}: the text of its decline when the user's balance less
     * their live holds is below it, else null (and nothing changes here: the caller takes or holds the money).
     */
    private String shortfall(String userId, String amount, String what, String key) {
        BigDecimal heldNow = heldNow(userId);
        BigDecimal available = balances.getOrDefault(userId, start).subtract(heldNow);
        BigDecimal value = new BigDecimal(amount);
        if (available.compareTo(value) >= 0) {
            return null;
        }
        return "declined: insufficient funds: " + userId + " has " + available.toPlainString() + " left"
                + (heldNow.signum() == 0 ? "" : " beside " + heldNow.toPlainString() + " held") + ", " + what + " is "
                + value.toPlainString() + " (" + key + ")";
    }

    private static Refusal otherType(String key, String firstType) {
        return new Refusal(22, "key_reused", "idempotency key " + key + " was first used by " + firstType, List.of("type"));
    }

    private String charge(JsonNode body) {
        String saga = requiredString(body, "saga_id", "saga_id");
        long step = step(body);
        JsonNode params = params(body, true);
        String userId = requiredString(params, "user_id", "params.user_id");
        String amount = amount(params);
        String key = saga + ":step" + step;
        Charge charge = charges.get(key);
        Declined declined = declines.get(key);
        String note = "";
        if (reservations.containsKey(key) || declined != null && declined.type().equals("ReservePayment")) {
            throw otherType(key, "ReservePayment");   // a step is charged or reserved
        } else if (charge != null) {
            reuse(key, !charge.userId().equals(userId), "user_id", !sameAmount(charge.amount(), amount));
            note = ", \"note\": \"cached_result\"";
        } else if (declined != null) {
            reuse(key, !declined.userId().equals(userId), "user_id", !sameAmount(declined.amount(), amount));
            throw new Refusal(14, "insufficient_funds", declined.text());
        } else if (closedSteps.contains(key)) {
            // The words name what closed it when a void is on record for the step (no refund may have come at all).
            throw new Refusal(14, "step_compensated", "step " + key + " was already compensated: its "
                    + (voids.containsKey(key + ":void") ? "compensation" : "refund") + " came first, so it is never charged");
        } else {
            if (start != null) {
                String shortfall = shortfall(userId, amount, "the charge", key);
                if (shortfall != null) {
                    declines.put(key, new Declined("ChargePayment", userId, amount, null, shortfall));
                    throw new Refusal(14, "insufficient_funds", shortfall);
                }
                takeFrom(userId, new BigDecimal(amount));
            }
            charge = new Charge(userId, amount, "p" + ++payments);
            charges.put(key, charge);
            chargedByPayment.put(charge.paymentId(), amount);
            sagaByPayment.put(charge.paymentId(), saga);
            userByPayment.put(charge.paymentId(), userId);
        }
        return "\"type\": \"ChargePayment_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step
                + ", \"result\": {\"payment_id\": " + quote(charge.paymentId()) + ", \"charged\": " + charge.amount() + "}" + note;
    }

    /** With --balance: money charged or captured leaves the user's balance. */
    private void takeFrom(String userId, BigDecimal amount) {
        balances.put(userId, balances.getOrDefault(userId, start).subtract(amount));
        chargedTotal.merge(userId, amount, BigDecimal::add);
    }

    /** A retry whose params differ is refused with error 22, naming them in the order of the contract. */
    private static void reuse(String key, boolean firstDiffers, String first, boolean amountDiffers) {
        reuse(key, firstDiffers, first, amountDiffers, false);
    }

    private static void reuse(String key, boolean firstDiffers, String first, boolean amountDiffers, boolean expiryDiffers) {
        List<String> differs = new ArrayList<>();
        if (firstDiffers) {
            differs.add(first);
        }
        if (amountDiffers) {
            differs.add("amount");
        }
        if (expiryDiffers) {
            differs.add("expires_in_ms");
        }
        if (!differs.isEmpty()) {
            throw new Refusal(22, "key_reused", "idempotency key " + key + " was first used with other params", differs);
        }
    }

    /** An optional amount: null when not given (or null), else checked as every amount is. */
    private static String optionalAmount(JsonNode params) {
        return given(params, "amount") == null ? null : amount(params);
    }

    private static String optionalPaymentId(JsonNode params) {
        return given(params, "payment_id") == null ? null : requiredString(params, "payment_id", "params.payment_id");
    }

    /** The fields RefundPayment, CapturePayment and VoidPayment share, checked in the same order: saga_id, step, compensating, params. */
    private static JsonNode compensationParams(JsonNode body) {
        requiredString(body, "saga_id", "saga_id");
        step(body);
        JsonNode compensating = given(body, "compensating");
        if (compensating != null && !compensating.isBoolean()) {
            throw malformed("compensating must be true or false");
        }
        return params(body, false);
    }

    private String refund(JsonNode body) {
        JsonNode params = compensationParams(body);
        String saga = body.get("saga_id").textValue();
        long step = step(body);
        String paymentId = optionalPaymentId(params);
        String amount = optionalAmount(params);
        String chargeKey = saga + ":step" + step;
        String key = chargeKey + ":refund";
        Refund refund = refunds.get(key);
        String note = "";
        if (refund != null) {
            reuse(key, !Objects.equals(refund.paymentId(), paymentId), "payment_id", !sameAmount(refund.amount(), amount));
            note = ", \"note\": \"already_refunded\"";
        } else {
            String ofStep = paymentOfStep(chargeKey);
            if (declines.containsKey(chargeKey)) {
                refund = new Refund(paymentId, amount, null, "0");   // a declined step: nothing was charged
            } else if (ofStep != null) {
                if (paymentId != null && !paymentId.equals(ofStep)) {
                    throw new Refusal(22, "payment_not_of_step", "payment_id " + paymentId + " is not the payment of step " + chargeKey + " (" + ofStep + ")");
                }
                refund = refundOf(ofStep, paymentId, amount);
            } else if (paymentId != null && sagaByPayment.containsKey(paymentId)) {
                if (!sagaByPayment.get(paymentId).equals(saga)) {
                    // SPEC section 4, case 2: nothing is done, and the step stays open (checked before payment_not_captured, section 12).
                    throw new Refusal(22, "payment_of_another_saga", "payment_id " + paymentId
                            + " is a payment of another saga: a compensation refunds its own saga's payments");
                }
                refund = refundOf(paymentId, paymentId, amount);
            } else if (paymentId != null) {
                if (amount == null) {
                    throw new Refusal(12, "amount_required", "params.amount is required to refund " + paymentId + ", a payment this node does not know");
                }
                closedSteps.add(chargeKey);
                refund = new Refund(paymentId, amount, "r" + ++refundIds, amount);
            } else {
                closedSteps.add(chargeKey);
                refund = new Refund(null, amount, null, "0");
            }
            refunds.put(key, refund);
        }
        return "\"type\": \"RefundPayment_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step + ", \"result\": {"
                + (refund.refundId() == null ? "" : "\"refund_id\": " + quote(refund.refundId()) + ", ")
                + "\"refunded\": " + refund.refunded() + "}" + note;
    }

    /** A refund drawn on a payment: a charge's ledger is its amount, a reservation's what was captured of it (none: 22). */
    private Refund refundOf(String payment, String paymentIdGiven, String amount) {
        String charged = chargedByPayment.get(payment);
        if (charged == null) {
            throw new Refusal(22, "payment_not_captured", "payment " + payment + " is a reservation not captured: void it instead");
        }
        BigDecimal refunded = refundedByPayment.getOrDefault(payment, BigDecimal.ZERO);
        BigDecimal left = new BigDecimal(charged).subtract(refunded);
        String text;
        if (amount != null) {
            if (new BigDecimal(amount).compareTo(left) > 0) {
                throw new Refusal(22, "refund_exceeds_payment", "refund of " + amount + " is more than is left of payment " + payment
                        + " (" + left.toPlainString() + " of " + charged + ")");
            }
            text = amount;
        } else if (left.signum() == 0) {
            throw new Refusal(22, "payment_fully_refunded", "payment " + payment + " is already fully refunded");
        } else {
            text = refunded.signum() == 0 ? charged : left.toPlainString();
        }
        refundedByPayment.put(payment, refunded.add(new BigDecimal(text)));
        if (start != null) {
            String userId = userByPayment.get(payment);
            balances.put(userId, balances.getOrDefault(userId, start).add(new BigDecimal(text)));
            refundedTotal.merge(userId, new BigDecimal(text), BigDecimal::add);
        }
        return new Refund(paymentIdGiven, amount, "r" + ++refundIds, text);
    }

    // ---- two-phase payments: SPEC section 12 ---------------------------------------------------------------

    private String reserve(JsonNode body) {
        String saga = requiredString(body, "saga_id", "saga_id");
        long step = step(body);
        JsonNode params = params(body, true);
        String userId = requiredString(params, "user_id", "params.user_id");
        String amount = amount(params);
        JsonNode ttl = given(params, "expires_in_ms");
        Long expiresInMs = null;
        if (ttl != null) {
            if (!ttl.isIntegralNumber() || !ttl.canConvertToLong() || ttl.longValue() <= 0) {
                throw malformed("params.expires_in_ms must be a positive integer (milliseconds)");
            }
            expiresInMs = ttl.longValue();
        }
        String key = saga + ":step" + step;
        Reservation reservation = reservations.get(key);
        Declined declined = declines.get(key);
        String note = "";
        if (charges.containsKey(key) || declined != null && declined.type().equals("ChargePayment")) {
            throw otherType(key, "ChargePayment");
        } else if (reservation != null) {
            // Its original result, whatever became of the hold since (captured, voided, expired): never a new hold.
            reuse(key, !reservation.userId().equals(userId), "user_id", !sameAmount(reservation.amount(), amount),
                    !Objects.equals(reservation.expiresInMs(), expiresInMs));
            note = ", \"note\": \"cached_result\"";
        } else if (declined != null) {
            reuse(key, !declined.userId().equals(userId), "user_id", !sameAmount(declined.amount(), amount),
                    !Objects.equals(declined.expiresInMs(), expiresInMs));
            throw new Refusal(14, "insufficient_funds", declined.text());
        } else if (closedSteps.contains(key)) {
            throw new Refusal(14, "step_compensated", "step " + key + " was already compensated: its compensation came first, so it is never reserved");
        } else {
            long ttlMillis = expiresInMs != null ? expiresInMs : reserveTtl;
            long deadline = ttlMillis == 0 ? NEVER : now > NEVER - ttlMillis ? NEVER : now + ttlMillis;
            if (start != null) {
                String shortfall = shortfall(userId, amount, "the reservation", key);
                if (shortfall != null) {
                    declines.put(key, new Declined("ReservePayment", userId, amount, expiresInMs, shortfall));
                    throw new Refusal(14, "insufficient_funds", shortfall);
                }
                held.put(key, new Held(userId, new BigDecimal(amount), deadline));
            }
            reservation = new Reservation(userId, amount, expiresInMs, "p" + ++payments, deadline);
            reservations.put(key, reservation);
            holds.put(reservation.paymentId(), Hold.RESERVED);
            sagaByPayment.put(reservation.paymentId(), saga);
            userByPayment.put(reservation.paymentId(), userId);
        }
        return "\"type\": \"ReservePayment_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step
                + ", \"result\": {\"payment_id\": " + quote(reservation.paymentId()) + ", \"reserved\": " + reservation.amount() + "}" + note;
    }

    /**
     * The hold of a reservation as a capture or a void finds it now: one still held past its deadline expires here, for
     * good (a later instant, even an earlier clock, finds it expired), and its money is released.
     */
    private Hold resolveExpiry(String key, Reservation reservation) {
        Hold hold = holds.get(reservation.paymentId());
        if (hold == Hold.RESERVED && now >= reservation.deadline()) {
            holds.put(reservation.paymentId(), Hold.EXPIRED);
            held.remove(key);
            return Hold.EXPIRED;
        }
        return hold;
    }

    private String capture(JsonNode body) {
        JsonNode params = compensationParams(body);
        String saga = body.get("saga_id").textValue();
        long step = step(body);
        String paymentId = optionalPaymentId(params);
        String amount = optionalAmount(params);
        String stepKey = saga + ":step" + step;
        String key = stepKey + ":capture";
        Capture capture = captures.get(key);
        String note = "";
        if (capture != null) {
            reuse(key, !Objects.equals(capture.paymentIdGiven(), paymentId), "payment_id", !sameAmount(capture.amountGiven(), amount));
            note = ", \"note\": \"already_captured\"";
        } else {
            // Every refusal below records nothing: a capture that overtook its reservation may be sent again.
            Reservation reservation = reservations.get(stepKey);
            if (reservation == null) {
                if (closedSteps.contains(stepKey)) {
                    throw new Refusal(14, "step_compensated", "step " + stepKey
                            + " was already compensated: its compensation came first, so it is never reserved or captured");
                }
                String why = charges.containsKey(stepKey) ? "it was charged" : declines.containsKey(stepKey) ? "its reservation was declined"
                        : "none yet (a capture that came first may be sent again)";
                throw new Refusal(14, "no_reservation", "step " + stepKey + " has no reservation: " + why);
            }
            String id = reservation.paymentId();
            if (paymentId != null && !paymentId.equals(id)) {
                throw new Refusal(22, "payment_not_of_step", "payment_id " + paymentId + " is not the payment of step " + stepKey + " (" + id + ")");
            }
            switch (resolveExpiry(stepKey, reservation)) {
                case VOIDED -> throw new Refusal(14, "reservation_voided", "the reservation " + id + " of step " + stepKey + " was voided: nothing was captured");
                case EXPIRED -> throw new Refusal(14, "reservation_expired", "the reservation " + id + " of step " + stepKey
                        + " expired: nothing was captured, its hold is released");
                case CAPTURED -> throw new IllegalStateException("the model captured " + id + " without a capture key");
                case RESERVED -> {
                }
            }
            BigDecimal reserved = new BigDecimal(reservation.amount());
            String captured = amount == null ? reservation.amount() : amount;
            if (new BigDecimal(captured).compareTo(reserved) > 0) {
                throw new Refusal(22, "capture_exceeds_reservation", "capture of " + amount + " is more than reservation " + id
                        + " holds (" + reservation.amount() + ")");
            }
            BigDecimal rest = reserved.subtract(new BigDecimal(captured));
            capture = new Capture(paymentId, amount, id, captured, rest.signum() == 0 ? "0" : rest.toPlainString());
            captures.put(key, capture);
            holds.put(id, Hold.CAPTURED);
            chargedByPayment.put(id, captured);   // what its refunds draw on
            if (start != null) {
                held.remove(stepKey);
                takeFrom(reservation.userId(), new BigDecimal(captured));
            }
        }
        return "\"type\": \"CapturePayment_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step + ", \"result\": " + captureResult(capture) + note;
    }

    private static String captureResult(Capture capture) {
        return "{\"payment_id\": " + quote(capture.paymentId()) + ", \"captured\": " + capture.captured() + ", \"released\": " + capture.released() + "}";
    }

    private static String voidResult(Voided voided) {
        return "{" + (voided.paymentId() == null ? "" : "\"payment_id\": " + quote(voided.paymentId()) + ", ") + "\"released\": " + voided.released() + "}";
    }

    private String voidHold(JsonNode body) {
        JsonNode params = compensationParams(body);
        String saga = body.get("saga_id").textValue();
        long step = step(body);
        String paymentId = optionalPaymentId(params);
        optionalAmount(params);   // read as every amount is, and not the void's to use
        String stepKey = saga + ":step" + step;
        String key = stepKey + ":void";
        Voided voided = voids.get(key);
        String note = "";
        if (voided != null) {
            reuse(key, !Objects.equals(voided.paymentIdGiven(), paymentId), "payment_id", false);
            note = ", \"note\": \"already_voided\"";
        } else {
            Reservation reservation = reservations.get(stepKey);
            if (reservation != null) {
                String id = reservation.paymentId();
                if (paymentId != null && !paymentId.equals(id)) {
                    throw new Refusal(22, "payment_not_of_step", "payment_id " + paymentId + " is not the payment of step " + stepKey + " (" + id + ")");
                }
                voided = switch (resolveExpiry(stepKey, reservation)) {
                    case CAPTURED -> throw new Refusal(14, "already_captured", "the reservation " + id + " of step " + stepKey
                            + " is captured: compensate it with RefundPayment");
                    case VOIDED -> throw new IllegalStateException("the model voided " + id + " without a void key");
                    case EXPIRED -> new Voided(paymentId, id, "0");   // released when it expired
                    case RESERVED -> {
                        holds.put(id, Hold.VOIDED);
                        held.remove(stepKey);
                        yield new Voided(paymentId, id, reservation.amount());
                    }
                };
            } else if (charges.containsKey(stepKey)) {
                throw new Refusal(14, "no_reservation", "step " + stepKey + " has no reservation: it was charged: compensate it with RefundPayment");
            } else {
                boolean open = !declines.containsKey(stepKey) && !closedSteps.contains(stepKey);
                if (open && paymentId != null && sagaByPayment.containsKey(paymentId)) {
                    throw new Refusal(22, "payment_not_of_step", "payment_id " + paymentId + " is not the payment of step " + stepKey + " (none)");
                }
                if (open) {
                    closedSteps.add(stepKey);   // a null compensation: a reservation or charge that comes later is refused
                }
                voided = new Voided(paymentId, null, "0");
            }
            voids.put(key, voided);
        }
        return "\"type\": \"VoidPayment_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step + ", \"result\": " + voidResult(voided) + note;
    }

    private String balanceRead(JsonNode body) {
        if (start == null) {
            throw new Refusal(10, "balances_not_kept", "BalanceRead needs --balance: this node keeps no balances");
        }
        String userId = requiredString(body, "user_id", "user_id");
        return "\"type\": \"BalanceRead_ok\", \"user_id\": " + quote(userId) + ", \"balance\": " + balances.getOrDefault(userId, start).toPlainString()
                + ", \"charged\": " + chargedTotal.getOrDefault(userId, BigDecimal.ZERO).toPlainString()
                + ", \"refunded\": " + refundedTotal.getOrDefault(userId, BigDecimal.ZERO).toPlainString()
                + ", \"held\": " + heldNow(userId).toPlainString();
    }

    private String status(JsonNode body) {
        String saga = requiredString(body, "saga_id", "saga_id");
        long step = step(body);
        String key = saga + ":step" + step;
        Charge charge = charges.get(key);
        Reservation reservation = reservations.get(key);
        String status;
        if (charge != null) {
            status = "charged";
        } else if (reservation != null) {
            Hold hold = holds.get(reservation.paymentId());
            status = (hold == Hold.RESERVED && now >= reservation.deadline() ? Hold.EXPIRED : hold).name().toLowerCase(java.util.Locale.ROOT);
        } else {
            status = declines.containsKey(key) ? "declined" : closedSteps.contains(key) ? "compensated" : "none";
        }
        StringBuilder reply = new StringBuilder("\"type\": \"PaymentStatus_ok\", \"saga_id\": " + quote(saga) + ", \"step\": " + step
                + ", \"status\": \"" + status + "\"");
        if (charge != null) {
            reply.append(", \"payment\": {\"payment_id\": ").append(quote(charge.paymentId())).append(", \"charged\": ").append(charge.amount())
                    .append(", \"refunded\": ").append(refundedByPayment.getOrDefault(charge.paymentId(), BigDecimal.ZERO).toPlainString()).append("}");
        } else if (reservation != null) {
            String id = reservation.paymentId();
            reply.append(", \"payment\": {\"payment_id\": ").append(quote(id)).append(", \"reserved\": ").append(reservation.amount())
                    .append(", \"captured\": ").append(chargedByPayment.getOrDefault(id, "0"))
                    .append(", \"refunded\": ").append(refundedByPayment.getOrDefault(id, BigDecimal.ZERO).toPlainString()).append("}");
        }
        Refund refund = refunds.get(key + ":refund");
        if (refund != null) {
            reply.append(", \"refund\": {").append(refund.refundId() == null ? "" : "\"refund_id\": " + quote(refund.refundId()) + ", ")
                    .append("\"refunded\": ").append(refund.refunded()).append("}");
        }
        Capture capture = captures.get(key + ":capture");
        if (capture != null) {
            reply.append(", \"capture\": ").append(captureResult(capture));
        }
        Voided voided = voids.get(key + ":void");
        if (voided != null) {
            reply.append(", \"void\": ").append(voidResult(voided));
        }
        return reply.toString();
    }
}
