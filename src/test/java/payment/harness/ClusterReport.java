package payment.harness;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import payment.harness.ClusterChecker.Anomaly;
import payment.harness.ClusterChecker.Kind;
import payment.harness.ClusterHistory.Event;
import payment.harness.ClusterHistory.Type;
import payment.harness.ClusterOptions.Settings;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;

/** What a run tells its user: the summary on stdout, and the results folder (history, results.json, timeline, plots). */
final class ClusterReport {
    /** Examples of each anomaly kind: in the summary, and in results.json. */
    static final int SUMMARY_EXAMPLES = 3;
    static final int RESULTS_EXAMPLES = 20;

    /** One request: its invocation and completion (null if it never completed: the harness always completes them). */
    record Request(Event invoke, Event completion) {
        boolean replied() {
            return completion != null && completion.body() != null;
        }

        long latencyNanos() {
            return completion.nanos() - invoke.nanos();
        }

        /** ok, fail (definite error) or info (unknown: 0, 13, no reply). */
        String outcome() {
            return completion == null ? "info" : completion.typeLabel();
        }
    }

    /**
     * The figures of a run, computed once from its history. {@code workloadRequests} are the requests of the workload
     * (not healing, not final reads), {@code sentDuringFaults} those of them sent while a fault ran.
     */
    record Figures(List<Request> requests, int operations, Map<String, Integer> answers, int timeouts, int late,
                   Map<String, Integer> provoked, int healed, int healedOps, int finalReads, List<Long> requestLatencies,
                   List<Long> opLatencies, int workloadRequests, int sentDuringFaults) {
        /** The share of the workload's requests sent while a fault ran, in percent (0 with no request). */
        double faultSharePercent() {
            return workloadRequests == 0 ? 0 : 100.0 * sentDuringFaults / workloadRequests;
        }
    }

    /** When faults ran, from the history's fault-start and fault-end events (the nemesis runs one at a time). */
    static List<long[]> faultWindows(List<Event> history) {
        List<long[]> windows = new ArrayList<>();
        long[] open = null;
        for (Event event : history) {
            if (event.is(Type.FAULT_START)) {
                open = new long[] {event.nanos(), Long.MAX_VALUE};
                windows.add(open);
            } else if (event.is(Type.FAULT_END) && open != null) {
                open[1] = event.nanos();
                open = null;
            }
        }
        return windows;
    }

    static Figures figures(List<Event> history) {
        Map<String, Event> invokes = new LinkedHashMap<>();
        Map<String, Event> completions = new HashMap<>();
        Map<String, Long> firstInvoke = new LinkedHashMap<>();
        Map<String, Long> firstAnswer = new HashMap<>();
        Map<String, Integer> answers = new TreeMap<>();
        Map<String, Integer> provoked = new LinkedHashMap<>();
        java.util.Set<String> healedOps = new java.util.HashSet<>();
        int timeouts = 0;
        int late = 0;
        int healed = 0;
        int finalReads = 0;
        for (Event event : history) {
            String request = event.process() + "#" + event.msgId();
            String op = event.process() + " op " + event.op();
            if (event.is(Type.INVOKE)) {
                invokes.put(request, event);
                firstInvoke.putIfAbsent(op, event.nanos());
                if ("heal".equals(event.phase())) {
                    healed++;
                    healedOps.add(op);
                }
                if ("final".equals(event.phase()) && event.attempt() == 1) {
                    finalReads++;
                }
                continue;
            }
            if (!(event.is(Type.OK) || event.is(Type.FAIL) || event.is(Type.INFO) || event.is(Type.LATE)) || !invokes.containsKey(request)) {
                continue;
            }
            if (event.is(Type.LATE)) {
                late++;
            } else {
                completions.put(request, event);
            }
            if (event.body() == null) {
                timeouts++;
                continue;
            }
            String type = event.body().path("type").asText();
            String answer = type.equals("error") ? "error " + event.body().path("code").asInt() : type;
            if (!event.is(Type.LATE)) {
                answers.merge(answer, 1, Integer::sum);
                JsonNode asked = invokes.get(request).body();
                String purpose = purpose(asked, event.body());
                if (purpose != null) {
                    provoked.merge(purpose, 1, Integer::sum);
                }
            }
            boolean definite = event.is(Type.OK) || (type.equals("error") && !ClusterChecker.indefiniteOrNothingDone(event.body().path("code").asInt(-1)));
            if (definite && !"heal".equals(event.phase())) {   // an answer the healing phase got is counted apart
                firstAnswer.putIfAbsent(op, event.nanos());
            }
        }
        List<Request> requests = new ArrayList<>();
        List<Long> requestLatencies = new ArrayList<>();
        invokes.forEach((key, invoke) -> {
            Request request = new Request(invoke, completions.get(key));
            requests.add(request);
            if (request.replied()) {
                requestLatencies.add(request.latencyNanos());
            }
        });
        List<Long> opLatencies = new ArrayList<>();
        firstAnswer.forEach((op, at) -> {
            if (!healedOps.contains(op)) {
                opLatencies.add(at - firstInvoke.get(op));
            }
        });
        Collections.sort(requestLatencies);
        Collections.sort(opLatencies);
        List<long[]> faultWindows = faultWindows(history);
        int workloadRequests = 0;
        int sentDuringFaults = 0;
        for (Request request : requests) {
            if ("run".equals(request.invoke().phase())) {
                workloadRequests++;
                long sent = request.invoke().nanos();
                if (faultWindows.stream().anyMatch(w -> w[0] <= sent && sent < w[1])) {
                    sentDuringFaults++;
                }
            }
        }
        return new Figures(requests, firstInvoke.size(), answers, timeouts, late, provoked, healed, healedOps.size(), finalReads,
                requestLatencies, opLatencies, workloadRequests, sentDuringFaults);
    }

    /** The errors the workload asks for on purpose, named by what it did to get them. */
    private static String purpose(JsonNode asked, JsonNode reply) {
        int code = reply.path("code").asInt(-1);
        String type = asked.path("type").asText();
        if (code == 22 && type.equals("ChargePayment")) {
            return "error 22: a charge retried with another amount";
        }
        if (code == 22 && type.equals("RefundPayment") && !reply.path("reason").asText().equals("payment_not_captured")) {
            return "error 22: the third refund of 40% of one payment (20% left)";
        }
        if (code == 14 && type.equals("ChargePayment")) {
            return "error 14: the charge of a step compensated first";
        }
        String reason = reply.path("reason").asText();
        if (code == 22 && type.equals("ReservePayment")) {
            return "error 22: a reservation retried with another amount";
        }
        if (code == 22 && type.equals("CapturePayment")) {
            return "error 22: a capture of more than is held";
        }
        if (code == 14 && type.equals("ReservePayment")) {
            return "error 14: the reservation of a step voided first";
        }
        if (code == 14 && type.equals("CapturePayment") && !reason.isEmpty()) {
            return "error 14: a capture refused, " + reason;
        }
        if (code == 14 && type.equals("VoidPayment")) {
            return "error 14: a void of a captured hold";
        }
        if (code == 22 && type.equals("RefundPayment") && reason.equals("payment_not_captured")) {
            return "error 22: a refund of a hold never captured";
        }
        return null;
    }

    static double quantileMillis(List<Long> sortedNanos, double q) {
        if (sortedNanos.isEmpty()) {
            return 0;
        }
        int rank = (int) Math.ceil(q * sortedNanos.size()) - 1;
        return sortedNanos.get(Math.max(0, Math.min(sortedNanos.size() - 1, rank))) / 1e6;
    }

    // ---- the summary -----------------------------------------------------------------------------------------

    static String heading(Settings s, Path folder) {
        if (s.measure()) {
            return String.format(Locale.ROOT, "cluster: %d nodes (%s), measuring lin-kv calls per request kind: one client, no faults, lin-kv delay %s%n"
                    + "cluster: results folder %s", s.nodes(), String.join(" ", s.nodeCommand()), s.kvLatency(), folder);
        }
        String nemesis = s.faultFree() ? "no nemesis"
                : "nemesis " + s.nemeses().stream().map(ClusterOptions.Nemesis::label).sorted().collect(Collectors.joining(","))
                + ": " + s.faults() + " faults, one every " + s.faultIntervalMillis() + " ms, each " + s.faultLengthMillis() + " ms long";
        String bound = s.timeBound() ? "for " + s.timeLimitSeconds() + " s" : "until " + s.sagas() + " sagas are done";
        return String.format(Locale.ROOT, "cluster: %d nodes (%s), %s operations/s %s (open loop, %d clients), seed %d; %s; lin-kv delay %s;"
                        + " client timeout %d ms; stall timeout %d s%n"
                        + "cluster: results folder %s", s.nodes(), String.join(" ", s.nodeCommand()), number(s.rate()), bound, s.concurrency(),
                s.seed(), nemesis, s.kvLatency(), s.clientTimeoutMillis(), s.stallTimeoutSeconds(), folder);
    }

    /** A rate as typed: 50, not 50.0. */
    static String number(double value) {
        return value == Math.rint(value) ? Long.toString((long) value) : Double.toString(value);
    }

    /** Latency quantiles of one line of the summary, or what there is instead when nothing was measured. */
    private static String quantiles(List<Long> sorted, String none) {
        if (sorted.isEmpty()) {
            return none;
        }
        return String.format(Locale.ROOT, "p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms", quantileMillis(sorted, 0.5),
                quantileMillis(sorted, 0.95), quantileMillis(sorted, 0.99), quantileMillis(sorted, 1));
    }

    static String summary(ClusterHarness.Run run) {
        Settings s = run.settings();
        Figures f = figures(run.history());
        StringBuilder text = new StringBuilder();
        long retries = f.requests().stream().filter(r -> r.invoke().attempt() > 1).count();
        long firstRequests = f.requests().stream().filter(r -> r.invoke().attempt() == 1).map(r -> r.invoke().process() + " " + r.invoke().op())
                .distinct().count();
        long duplicates = f.requests().size() - retries - firstRequests;
        text.append(String.format(Locale.ROOT, "history: %d requests sent for %d operations in %.1f s: %d first requests, %d duplicates sent at once"
                + " to a second node, %d retries%n", f.requests().size(), f.operations(), run.seconds(), firstRequests, duplicates, retries));
        text.append(String.format(Locale.ROOT, "workload: %d operations started on schedule, %s a second offered %s; slots missed (all %d"
                        + " clients busy): %d%n", run.onSchedule(), number(s.rate()), s.timeBound() ? "for " + s.timeLimitSeconds() + " s"
                        : "until " + s.sagas() + " sagas were done", s.concurrency(), run.slotsMissed()));
        if (run.stopped() != null) {
            text.append("stopped early: ").append(run.stopped()).append('\n');
        }
        if (!run.faults().isEmpty()) {
            Map<String, Long> byKind = run.faults().stream().collect(Collectors.groupingBy(ClusterHarness.Fault::kind, TreeMap::new, Collectors.counting()));
            text.append("faults: ").append(run.faults().size()).append(" (").append(byKind.entrySet().stream().map(e -> e.getKey() + " " + e.getValue())
                    .collect(Collectors.joining(", "))).append("): ").append(run.faults().stream().map(fault -> String.format(Locale.ROOT, "%s %s %.1f-%.1f s",
                    fault.kind(), fault.target(), fault.startNanos() / 1e9, fault.endNanos() / 1e9)).collect(Collectors.joining(", "))).append('\n');
            text.append(String.format(Locale.ROOT, "  sent while a fault ran: %d of the workload's %d requests (%.0f%%)%n", f.sentDuringFaults(),
                    f.workloadRequests(), f.faultSharePercent()));
        }
        text.append("answers: ").append(f.answers().isEmpty() ? "no replies"
                        : f.answers().entrySet().stream().map(e -> e.getKey() + " " + e.getValue()).collect(Collectors.joining(", ")))
                .append(String.format(Locale.ROOT, "; no reply in time %d; late replies %d%n", f.timeouts(), f.late()));
        text.append("  on purpose: ").append(f.provoked().isEmpty() ? "none"
                : f.provoked().entrySet().stream().map(e -> e.getKey() + " (" + e.getValue() + ")").collect(Collectors.joining("; "))).append('\n');
        text.append("  from faults: error 0 (a lin-kv call timed out) and 13 leave the outcome unknown, and so does no reply; error 11 is a"
                + " restarted node before its init (nothing done). Each is retried on another node.\n");
        text.append(String.format(Locale.ROOT, "healing: %d operations were still open after the last fault and the sagas; %d requests retried them%n",
                f.healedOps(), f.healed()));
        text.append(String.format(Locale.ROOT, "final reads: %d PaymentStatus, one per step touched (made only when nothing is open)%n", f.finalReads()));
        text.append("latency, one request (sent to its reply; timeouts left out): ").append(quantiles(f.requestLatencies(), "no replies")).append('\n');
        text.append("latency, one operation (first request to its definite answer, retries included; healed ones left out): ")
                .append(quantiles(f.opLatencies(), "no operation answered")).append('\n');
        text.append(String.format(Locale.ROOT, "  an operation near %d ms or above waited out the client timeout once (a killed, paused or cut-off node, a lost"
                + " lin-kv reply) before its retry on another node%n", s.clientTimeoutMillis()));
        long kvTotal = run.kvCalls().values().stream().mapToLong(Long::longValue).sum();
        text.append(String.format(Locale.ROOT, "lin-kv: %d calls %s, %.2f per request sent; replies lost %d, duplicated %d, late %d (kv nemesis)%n", kvTotal, run.kvCalls(),
                f.requests().isEmpty() ? 0.0 : kvTotal / (double) f.requests().size(), run.kvFates().getOrDefault("lost", 0L),
                run.kvFates().getOrDefault("duplicated", 0L), run.kvFates().getOrDefault("late", 0L)));
        if (!run.dropped().isEmpty()) {
            text.append("messages dropped by the network: ").append(run.dropped()).append('\n');
        }
        double harnessCpu = run.cpuSeconds().getOrDefault("harness", 0.0);
        Map<String, Double> nodesCpu = new LinkedHashMap<>(run.cpuSeconds());
        nodesCpu.remove("harness");
        double nodesTotal = nodesCpu.values().stream().mapToDouble(Double::doubleValue).sum();
        int sent = Math.max(1, f.requests().size());
        text.append(String.format(Locale.ROOT, "cpu: nodes %.2f s (%s), %.3f ms per request sent; harness %.2f s, %.3f ms per request sent"
                + " (all of them share this machine's cores)%n", nodesTotal, nodesCpu.entrySet().stream()
                .map(e -> String.format(Locale.ROOT, "%s %.2f", e.getKey(), e.getValue())).collect(Collectors.joining(", ")),
                nodesTotal * 1000 / sent, harnessCpu, harnessCpu * 1000 / sent));
        text.append(String.format(Locale.ROOT, "seed %d pins every choice (sagas, amounts, nodes, duplicates, each fault's kind and target, the stream of lin-kv"
                + " delays and kv faults); it does not pin timing (threads, JVM warm-up, where a fault lands among requests, which"
                + " lin-kv call meets which delay): two runs differ in detail%n", s.seed()));
        ClusterChecker.Verdict verdict = run.verdict();
        if (verdict.valid()) {
            text.append("anomalies: none (the checks: ").append(java.util.Arrays.stream(Kind.values()).map(k -> k.label).collect(Collectors.joining(", "))).append(")\n");
        } else {
            text.append(String.format(Locale.ROOT, "anomalies: %d, in %d kind%s%n", verdict.total(), verdict.kinds().size(),
                    verdict.kinds().size() == 1 ? "" : "s"));
            verdict.anomalies().forEach((kind, list) -> {
                text.append(String.format(Locale.ROOT, "  %s: %d (%s)%n", kind.label, list.size(), kind.meaning));
                list.stream().limit(SUMMARY_EXAMPLES).forEach(a -> text.append("    ").append(a.text()).append('\n'));
            });
        }
        text.append(verdict.valid() ? "verdict: VALID\n" : "verdict: INVALID\n");
        return text.toString();
    }

    // ---- the results folder ----------------------------------------------------------------------------------

    static void write(ClusterHarness.Run run) throws IOException {
        Path folder = run.folder();
        ClusterHistory.write(run.history(), folder.resolve("history.jsonl"), ClusterHarness.JSON);
        Figures f = figures(run.history());
        Files.writeString(folder.resolve("results.json"), ClusterHarness.JSON.copy().enable(SerializationFeature.INDENT_OUTPUT)
                .writeValueAsString(results(run, f)) + "\n", StandardCharsets.UTF_8);
        Files.writeString(folder.resolve("timeline.html"), timeline(run, f), StandardCharsets.UTF_8);
        ClusterPlots.latency(f, run.faults(), run.seconds(), folder.resolve("latency.png"));
        ClusterPlots.rate(f, run.faults(), run.seconds(), folder.resolve("rate.png"));
    }

    static ObjectNode results(ClusterHarness.Run run, Figures f) {
        Settings s = run.settings();
        ObjectNode results = ClusterHarness.JSON.createObjectNode();
        results.put("verdict", run.verdict().valid() ? "VALID" : "INVALID");
        ObjectNode anomalies = results.putObject("anomalies");
        ObjectNode examples = results.putObject("examples");
        run.verdict().anomalies().forEach((kind, list) -> {
            anomalies.put(kind.label, list.size());
            ArrayNode some = examples.putArray(kind.label);
            list.stream().limit(RESULTS_EXAMPLES).map(Anomaly::text).forEach(some::add);
        });
        ObjectNode settings = results.putObject("settings");
        settings.put("nodes", s.nodes()).put("concurrency", s.concurrency()).put("rate", s.rate()).put("seed", s.seed());
        if (s.timeBound()) {
            settings.put("time_limit_s", s.timeLimitSeconds());
        } else {
            settings.put("sagas", s.sagas());
        }
        settings.put("stall_timeout_s", s.stallTimeoutSeconds());
        settings.set("node_command", ClusterHarness.JSON.valueToTree(s.nodeCommand()));
        settings.set("nemesis", ClusterHarness.JSON.valueToTree(s.nemeses().stream().map(ClusterOptions.Nemesis::label).sorted().toList()));
        settings.put("nemesis_interval_ms", s.faultIntervalMillis()).put("fault_length_ms", s.faultLengthMillis()).put("faults", s.faults())
                .put("lin_kv_delay_ms", s.kvLatency().minMillis() + ":" + s.kvLatency().maxMillis()).put("kv_late_ms", s.kvLateMillis())
                .put("client_timeout_ms", s.clientTimeoutMillis()).put("attempts", s.attempts()).put("heal_timeout_ms", s.healTimeoutMillis());
        results.put("seconds", Math.round(run.seconds() * 1000) / 1000.0);
        ObjectNode cpu = results.putObject("cpu_seconds");
        run.cpuSeconds().forEach((process, seconds) -> cpu.put(process, Math.round(seconds * 1000) / 1000.0));
        if (run.stopped() != null) {
            results.put("stopped_early", run.stopped());
        }
        results.put("operations_on_schedule", run.onSchedule()).put("slots_missed", run.slotsMissed());
        results.putObject("sent_during_faults").put("requests", f.sentDuringFaults()).put("of_workload_requests", f.workloadRequests())
                .put("percent", Math.round(f.faultSharePercent() * 10) / 10.0);
        results.put("requests", f.requests().size()).put("operations", f.operations()).put("healing_requests", f.healed())
                .put("final_reads", f.finalReads()).put("no_reply_in_time", f.timeouts()).put("late_replies", f.late());
        results.set("answers", ClusterHarness.JSON.valueToTree(f.answers()));
        results.set("on_purpose", ClusterHarness.JSON.valueToTree(f.provoked()));
        ObjectNode latency = results.putObject("latency_ms");
        quantiles(latency.putObject("request"), f.requestLatencies());
        quantiles(latency.putObject("operation_with_retries"), f.opLatencies());
        ObjectNode kv = results.putObject("lin_kv");
        long kvTotal = run.kvCalls().values().stream().mapToLong(Long::longValue).sum();
        kv.set("calls", ClusterHarness.JSON.valueToTree(run.kvCalls()));
        kv.put("calls_per_request", f.requests().isEmpty() ? 0.0 : Math.round(kvTotal * 100.0 / f.requests().size()) / 100.0);
        kv.set("replies", ClusterHarness.JSON.valueToTree(run.kvFates()));
        results.set("dropped_messages", ClusterHarness.JSON.valueToTree(run.dropped()));
        ArrayNode faults = results.putArray("faults");
        for (ClusterHarness.Fault fault : run.faults()) {
            faults.addObject().put("fault", fault.kind()).put("target", fault.target())
                    .put("start_ms", Math.round(fault.startNanos() / 1e5) / 10.0).put("end_ms", Math.round(fault.endNanos() / 1e5) / 10.0);
        }
        return results;
    }

    private static void quantiles(ObjectNode into, List<Long> sorted) {
        into.put("count", sorted.size());
        for (double q : new double[] {0.5, 0.95, 0.99, 1}) {
            into.put(q == 1 ? "max" : "p" + Math.round(q * 100), Math.round(quantileMillis(sorted, q) * 10) / 10.0);
        }
    }

    // ---- timeline.html ----------------------------------------------------------------------------------------

    /** The timeline's page height for a whole run at zoom 1: about two and a half screens, whatever the run's length. */
    static final int TIMELINE_HEIGHT = 2400;
    /** Width of one column of request boxes in a node's lane; a lane has at most so many columns (then they overlap). */
    static final int COLUMN_WIDTH = 11;
    static final int MAX_COLUMNS = 24;
    /** A box's letter shows only when the box is at least this tall at the current zoom. */
    static final int LABEL_MIN_HEIGHT = 11;

    /** Pixels per second at zoom 1: the run fits {@link #TIMELINE_HEIGHT}, between 20 and 400 px a second. */
    static double pixelsPerSecond(double seconds) {
        return Math.max(20, Math.min(400, TIMELINE_HEIGHT / Math.max(seconds, 0.001)));
    }

    /** A box on the page: its place at zoom 1 (top and height scale with the zoom), its look and its details. */
    private record Box(String css, double left, double width, double top, double height, String label, String details) {
        void write(StringBuilder html) {
            html.append("<div class=\"").append(css).append("\" data-h=\"").append(String.format(Locale.ROOT, "%.1f", height))
                    .append("\" style=\"left:").append(String.format(Locale.ROOT, "%.0f", left)).append("px;width:")
                    .append(String.format(Locale.ROOT, "%.0f", width)).append("px;top:calc(var(--z)*")
                    .append(String.format(Locale.ROOT, "%.1f", top)).append("px);height:calc(var(--z)*")
                    .append(String.format(Locale.ROOT, "%.1f", height)).append("px)\" title=\"").append(escape(details)).append("\">")
                    .append(escape(label)).append("</div>\n");
        }
    }

    /**
     * The run on one page, time downwards, scaled so that the whole run is a few screens (zoom with the buttons or
     * the + and - keys). A lane for the nemesis (each fault a red box named by its kind and target; healing and the
     * final reads in blue), then a lane per node: each request a box in the lane of the node it was sent to, from its
     * sending to its completion, green ok, orange a definite error, grey unknown, with a letter for its type (C, R, S;
     * H, T, V: reserve, capture, void) where the box is tall enough; its request and reply show on hover and, kept, on click. A fault is also a
     * band across its node's lane (across every lane for kv). One file with its own small script, nothing fetched.
     */
    static String timeline(ClusterHarness.Run run, Figures f) {
        List<String> lanes = new ArrayList<>();
        for (int i = 1; i <= run.settings().nodes(); i++) {
            lanes.add("n" + i);
        }
        // the page starts at the second of the first request: the nodes' start-up before it is empty
        double origin = Math.floor(f.requests().stream().mapToLong(r -> r.invoke().nanos()).min().orElse(0) / 1e9);
        double end = Math.max(run.seconds(), origin + 1);
        double scale = pixelsPerSecond(end - origin);
        int top = 12;
        int axis = 52;
        int nemesisLane = 128;

        // each lane's requests packed into columns: a request goes in the first column free when it is sent
        Map<String, List<Double>> columnEnds = new HashMap<>();
        List<Box> requests = new ArrayList<>();
        List<Integer> requestLane = new ArrayList<>();
        List<Integer> requestColumn = new ArrayList<>();
        for (Request request : f.requests()) {
            Event invoke = request.invoke();
            double start = invoke.nanos() / 1e9;
            double finish = request.completion() == null ? end : request.completion().nanos() / 1e9;
            List<Double> ends = columnEnds.computeIfAbsent(invoke.node(), n -> new ArrayList<>());
            int column = 0;
            while (column < ends.size() && ends.get(column) > start) {
                column++;
            }
            // a box is at least 3 px tall at zoom 1: it takes its column that long
            double taken = Math.max(finish, start + 3 / scale);
            if (column == ends.size()) {
                ends.add(taken);
            } else {
                ends.set(column, taken);
            }
            String details = invoke.process() + " op " + invoke.op() + " attempt " + invoke.attempt() + " -> " + invoke.node() + " (" + invoke.phase() + ")\n"
                    + "sent at " + String.format(Locale.ROOT, "%.3f s", start) + ": " + invoke.body() + "\n"
                    + (request.completion() == null ? "never completed" : request.outcome() + " after "
                    + String.format(Locale.ROOT, "%.1f ms", (finish - start) * 1000) + ": "
                    + (request.completion().body() != null ? request.completion().body() : request.completion().text()));
            requests.add(new Box("op " + request.outcome(), 0, COLUMN_WIDTH - 1, (start - origin) * scale, Math.max(3, (finish - start) * scale),
                    letter(invoke.body().path("type").asText()), details));
            requestLane.add(Math.max(0, lanes.indexOf(invoke.node())));
            requestColumn.add(column % MAX_COLUMNS);
        }
        List<Double> laneLeft = new ArrayList<>();
        double left = axis + nemesisLane + 8;
        for (String lane : lanes) {
            laneLeft.add(left);
            int columns = Math.min(MAX_COLUMNS, Math.max(columnEnds.getOrDefault(lane, List.of()).size(), 1));
            left += Math.max(100, columns * COLUMN_WIDTH + 12);
        }
        double right = left;

        List<Box> nemesis = new ArrayList<>();
        List<Box> bands = new ArrayList<>();
        Event began = null;
        for (Event event : run.history()) {
            if (event.is(Type.FAULT_START)) {
                began = event;
            } else if (event.is(Type.FAULT_END) && began != null) {
                double from = began.nanos() / 1e9;
                double to = event.nanos() / 1e9;
                String name = began.fault() + " " + began.node();
                String details = name + String.format(Locale.ROOT, ", %.3f s to %.3f s: ", from, to) + began.text() + "; " + event.text();
                double y = (from - origin) * scale;
                double h = Math.max(3, (to - from) * scale);
                nemesis.add(new Box("fault", axis + 4, nemesisLane - 8, y, h, name, details));
                int lane = lanes.indexOf(began.node());
                bands.add(lane < 0 ? new Box("band", axis + nemesisLane, right - axis - nemesisLane, y, h, "", details)
                        : new Box("band", laneLeft.get(lane) - 4, (lane + 1 < lanes.size() ? laneLeft.get(lane + 1) : right) - laneLeft.get(lane), y, h, "", details));
                began = null;
            }
        }
        for (String phase : List.of("heal", "final")) {
            double first = Double.MAX_VALUE;
            double last = -1;
            for (Request request : f.requests()) {
                if (phase.equals(request.invoke().phase())) {
                    first = Math.min(first, request.invoke().nanos() / 1e9);
                    last = Math.max(last, (request.completion() == null ? request.invoke() : request.completion()).nanos() / 1e9);
                }
            }
            if (last >= 0) {
                String name = phase.equals("heal") ? "healing" : "final reads";
                nemesis.add(new Box("phase", axis + 4, nemesisLane - 8, (first - origin) * scale, Math.max(3, (last - first) * scale), name,
                        name + String.format(Locale.ROOT, ", %.3f s to %.3f s", first, last)));
            }
        }

        double height = top + (end - origin) * scale + 40;
        StringBuilder html = new StringBuilder();
        html.append("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cluster timeline</title><style>\n")
                .append("body{font:12px sans-serif;margin:0;--z:1}\n")
                .append(".head{position:fixed;top:0;left:0;right:0;height:58px;background:#fff;border-bottom:1px solid #bbb;z-index:3;padding:4px 8px;box-sizing:border-box}\n")
                .append(".head .lanes{position:absolute;bottom:2px;left:0;right:0;height:16px}\n")
                .append(".head .lanes span{position:absolute;font-weight:bold}\n")
                .append(".main{position:absolute;top:58px;left:0;width:").append((int) right + 10).append("px;height:calc(var(--z)*").append((int) height).append("px)}\n")
                .append(".main>div{position:absolute;box-sizing:border-box;overflow:hidden;white-space:nowrap}\n")
                .append(".lane{border-left:1px solid #ddd;top:0;bottom:0}\n")
                .append(".tick{left:0;width:").append(axis - 4).append("px;text-align:right;color:#666;font-size:11px;border-top:1px solid #ccc}\n")
                .append(".op{border:1px solid #0004;font-size:9px;line-height:10px;text-align:center;color:transparent;cursor:pointer}\n")
                .append(".op.lbl{color:#000}\n")
                .append(".ok{background:#6c6}.fail{background:#f90}.info{background:#bbb}\n")
                .append(".fault{background:#f66;border:1px solid #b00;color:#fff;font-weight:bold;padding:2px 4px;cursor:pointer;z-index:1}\n")
                .append(".phase{background:#9bd;border:1px solid #36a;color:#024;padding:2px 4px;cursor:pointer}\n")
                .append(".band{background:#f002;pointer-events:none}\n")
                .append(".op.sel,.fault.sel,.phase.sel{outline:2px solid #00f;z-index:2}\n")
                .append("#detail{position:fixed;top:58px;right:0;width:380px;bottom:0;overflow:auto;background:#f8f8f8;border-left:1px solid #bbb;")
                .append("padding:8px;box-sizing:border-box;white-space:pre-wrap;word-break:break-all;font:12px monospace;z-index:3}\n")
                .append(".key{display:inline-block;padding:0 4px;border:1px solid #0004}\n")
                .append("button{font-size:12px;padding:0 6px}\n")
                .append("</style></head><body>\n");
        html.append("<div class=\"head\"><b>").append(escape(run.settings().nodes() + " nodes, seed " + run.settings().seed() + ", "
                        + f.requests().size() + " requests in " + String.format(Locale.ROOT, "%.1f s", run.seconds()) + ", verdict "
                        + (run.verdict().valid() ? "VALID" : "INVALID")))
                .append("</b> &nbsp; <span class=\"key ok\">ok</span> <span class=\"key fail\">definite error</span>"
                        + " <span class=\"key info\">unknown (0, 13, no reply)</span> <span class=\"key fault\">fault</span>"
                        + " <span class=\"key phase\">healing, final reads</span> &nbsp; C charge, R refund, S status &nbsp; "
                        + "<button onclick=\"zoom(0.5)\">&minus;</button> <button onclick=\"zoom(2)\">+</button> "
                        + "<button onclick=\"zoom(0)\">fit</button> <span id=\"scale\"></span> &nbsp; click a box for its details\n");
        html.append("<div class=\"lanes\"><span style=\"left:").append(axis + 4).append("px\">nemesis</span>");
        for (int i = 0; i < lanes.size(); i++) {
            html.append("<span style=\"left:").append(String.format(Locale.ROOT, "%.0f", laneLeft.get(i))).append("px\">").append(escape(lanes.get(i)))
                    .append("</span>");
        }
        html.append("</div></div>\n<div class=\"main\">\n");
        int step = scale >= 30 ? 1 : 5;
        for (int second = (int) origin; second <= end; second += 1) {
            html.append("<div class=\"tick\" data-s=\"").append(second).append("\" style=\"top:calc(var(--z)*")
                    .append(String.format(Locale.ROOT, "%.1f", top + (second - origin) * scale)).append("px)").append(second % step == 0 ? "" : ";display:none")
                    .append("\">").append(second).append(" s</div>\n");
        }
        html.append("<div class=\"lane\" style=\"left:").append(axis).append("px\"></div>\n");
        for (double laneAt : laneLeft) {
            html.append("<div class=\"lane\" style=\"left:").append(String.format(Locale.ROOT, "%.0f", laneAt - 4)).append("px\"></div>\n");
        }
        for (Box band : bands) {
            shifted(band, 0, top).write(html);
        }
        for (Box box : nemesis) {
            shifted(box, 0, top).write(html);
        }
        for (int i = 0; i < requests.size(); i++) {
            shifted(requests.get(i), laneLeft.get(requestLane.get(i)) + requestColumn.get(i) * COLUMN_WIDTH, top).write(html);
        }
        html.append("</div>\n<div id=\"detail\">Click a request or a fault for its details; hover shows them too.</div>\n");
        html.append("<script>\n")
                .append("var base=").append(String.format(Locale.ROOT, "%.2f", scale)).append(",z=1,top0=58+").append(top).append(";\n")
                .append("function zoom(f){var t=(window.scrollY)/z;z=f?Math.min(64,Math.max(0.125,z*f)):1;")
                .append("document.body.style.setProperty('--z',z);window.scrollTo(window.scrollX,t*z);")
                .append("document.getElementById('scale').textContent=Math.round(base*z)+' px per second';")
                .append("document.querySelectorAll('.op').forEach(function(e){e.classList.toggle('lbl',e.dataset.h*z>=").append(LABEL_MIN_HEIGHT).append(")});")
                .append("document.querySelectorAll('.tick').forEach(function(e){e.style.display=(base*z>=30||e.dataset.s%5==0)?'':'none'})}\n")
                .append("document.addEventListener('click',function(ev){var b=ev.target.closest('.op,.fault,.phase');if(!b)return;")
                .append("document.querySelectorAll('.sel').forEach(function(e){e.classList.remove('sel')});b.classList.add('sel');")
                .append("document.getElementById('detail').textContent=b.title});\n")
                .append("document.addEventListener('keydown',function(ev){if(ev.key=='+'||ev.key=='=')zoom(2);if(ev.key=='-')zoom(0.5)});\n")
                .append("zoom(0);\n</script>\n</body></html>\n");
        return html.toString();
    }

    private static Box shifted(Box box, double left, double top) {
        return new Box(box.css(), box.left() + left, box.width(), box.top() + top, box.height(), box.label(), box.details());
    }

    /** The one letter of a request's type in its box. */
    private static String letter(String type) {
        return switch (type) {
            case "ChargePayment" -> "C";
            case "RefundPayment" -> "R";
            case "PaymentStatus" -> "S";
            case "ReservePayment" -> "H";
            case "CapturePayment" -> "T";
            case "VoidPayment" -> "V";
            default -> "?";
        };
    }

    static String escape(String text) {
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
    }

    private ClusterReport() {
    }
}
