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

    /** The figures of a run, computed once from its history. */
    record Figures(List<Request> requests, int operations, Map<String, Integer> answers, int timeouts, int late,
                   Map<String, Integer> provoked, int healed, int healedOps, int finalReads, List<Long> requestLatencies,
                   List<Long> opLatencies) {
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
        return new Figures(requests, firstInvoke.size(), answers, timeouts, late, provoked, healed, healedOps.size(), finalReads,
                requestLatencies, opLatencies);
    }

    /** The errors the workload asks for on purpose, named by what it did to get them. */
    private static String purpose(JsonNode asked, JsonNode reply) {
        int code = reply.path("code").asInt(-1);
        String type = asked.path("type").asText();
        if (code == 22 && type.equals("ChargePayment")) {
            return "error 22: a charge retried with another amount";
        }
        if (code == 22 && type.equals("RefundPayment")) {
            return "error 22: the third refund of 40% of one payment (20% left)";
        }
        if (code == 14 && type.equals("ChargePayment")) {
            return "error 14: the charge of a step compensated first";
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
                + ": " + s.faults() + " faults, one every " + s.nemesisIntervalMillis() + " ms, each " + s.nemesisIntervalMillis() / 2 + " ms long";
        return String.format(Locale.ROOT, "cluster: %d nodes (%s), %d clients x %d sagas, seed %d; %s; lin-kv delay %s; client timeout %d ms%n"
                        + "cluster: results folder %s", s.nodes(), String.join(" ", s.nodeCommand()), s.clients(), s.sagasPerClient(), s.seed(),
                nemesis, s.kvLatency(), s.clientTimeoutMillis(), folder);
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
        if (!run.faults().isEmpty()) {
            text.append("faults: ").append(run.faults().stream().map(fault -> String.format(Locale.ROOT, "%s %s %.1f-%.1f s", fault.kind(), fault.target(),
                    fault.startNanos() / 1e9, fault.endNanos() / 1e9)).collect(Collectors.joining(", "))).append('\n');
        }
        text.append("answers: ").append(f.answers().entrySet().stream().map(e -> e.getKey() + " " + e.getValue()).collect(Collectors.joining(", ")))
                .append(String.format(Locale.ROOT, "; no reply in time %d; late replies %d%n", f.timeouts(), f.late()));
        text.append("  on purpose: ").append(f.provoked().isEmpty() ? "none"
                : f.provoked().entrySet().stream().map(e -> e.getKey() + " (" + e.getValue() + ")").collect(Collectors.joining("; "))).append('\n');
        text.append("  from faults: error 0 (a lin-kv call timed out) and 13 leave the outcome unknown, and so does no reply; error 11 is a"
                + " restarted node before its init (nothing done). Each is retried on another node.\n");
        text.append(String.format(Locale.ROOT, "healing: %d operations were still open after the last fault and the sagas; %d requests retried them%n",
                f.healedOps(), f.healed()));
        text.append(String.format(Locale.ROOT, "final reads: %d PaymentStatus, one per step touched (made only when nothing is open)%n", f.finalReads()));
        text.append(String.format(Locale.ROOT, "latency, one request (sent to its reply; timeouts left out): p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms%n",
                quantileMillis(f.requestLatencies(), 0.5), quantileMillis(f.requestLatencies(), 0.95), quantileMillis(f.requestLatencies(), 0.99),
                quantileMillis(f.requestLatencies(), 1)));
        text.append(String.format(Locale.ROOT, "latency, one operation (first request to its definite answer, retries included; healed ones left out): p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms%n",
                quantileMillis(f.opLatencies(), 0.5), quantileMillis(f.opLatencies(), 0.95), quantileMillis(f.opLatencies(), 0.99),
                quantileMillis(f.opLatencies(), 1)));
        text.append(String.format(Locale.ROOT, "  an operation near %d ms or above waited out the client timeout once (a killed, paused or cut-off node, a lost"
                + " lin-kv reply) before its retry on another node%n", s.clientTimeoutMillis()));
        long kvTotal = run.kvCalls().values().stream().mapToLong(Long::longValue).sum();
        text.append(String.format(Locale.ROOT, "lin-kv: %d calls %s, %.2f per request sent; replies lost %d, duplicated %d, late %d (kv nemesis)%n", kvTotal, run.kvCalls(),
                f.requests().isEmpty() ? 0.0 : kvTotal / (double) f.requests().size(), run.kvFates().getOrDefault("lost", 0L),
                run.kvFates().getOrDefault("duplicated", 0L), run.kvFates().getOrDefault("late", 0L)));
        if (!run.dropped().isEmpty()) {
            text.append("messages dropped by the network: ").append(run.dropped()).append('\n');
        }
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
        settings.put("nodes", s.nodes()).put("clients", s.clients()).put("sagas_per_client", s.sagasPerClient()).put("seed", s.seed());
        settings.set("node_command", ClusterHarness.JSON.valueToTree(s.nodeCommand()));
        settings.set("nemesis", ClusterHarness.JSON.valueToTree(s.nemeses().stream().map(ClusterOptions.Nemesis::label).sorted().toList()));
        settings.put("nemesis_interval_ms", s.nemesisIntervalMillis()).put("faults", s.faults())
                .put("lin_kv_delay_ms", s.kvLatency().minMillis() + ":" + s.kvLatency().maxMillis()).put("kv_late_ms", s.kvLateMillis())
                .put("client_timeout_ms", s.clientTimeoutMillis()).put("attempts", s.attempts()).put("heal_timeout_ms", s.healTimeoutMillis());
        results.put("seconds", Math.round(run.seconds() * 1000) / 1000.0);
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

    /**
     * Pixels of the page's height per second of the run: 600 (a 5 ms request is 3 px) for short runs; longer runs
     * are squeezed so that the page stays under ~20,000 px, down to 40 px a second.
     */
    private static double pixelsPerSecond(double seconds) {
        return Math.max(40, Math.min(600, 20_000 / Math.max(seconds, 0.001)));
    }

    /**
     * A lane per client, time downwards; each request a box from its sending to its completion, green ok, orange a
     * definite error, grey unknown; its request and reply on hover (title). No script, no link: it opens offline.
     */
    static String timeline(ClusterHarness.Run run, Figures f) {
        List<String> lanes = f.requests().stream().map(r -> r.invoke().process()).distinct().sorted(ClusterReport::byNumber).toList();
        // the page starts at the second of the first request: the nodes' start-up before it is empty
        double origin = Math.floor(f.requests().stream().mapToLong(r -> r.invoke().nanos()).min().orElse(0) / 1e9);
        double scale = pixelsPerSecond(run.seconds() - origin);
        int laneWidth = 180;
        int top = 60;
        double height = top + (run.seconds() - origin) * scale + 40;
        StringBuilder html = new StringBuilder();
        html.append("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cluster timeline</title><style>\n")
                .append("body{font:12px sans-serif;margin:0}\n")
                .append(".lane{position:absolute;top:0;height:").append((int) height).append("px;border-left:1px solid #ddd}\n")
                .append(".head{position:absolute;top:30px;font-weight:bold}\n")
                .append(".op{position:absolute;min-height:3px;border:1px solid #0003;box-sizing:border-box;overflow:hidden;font-size:10px;white-space:nowrap}\n")
                .append(".ok{background:#6c6}.fail{background:#f90}.info{background:#bbb}\n")
                .append(".fault{position:absolute;left:0;right:0;background:#f004;border-top:1px solid #c00;font-size:11px;color:#900;text-align:right;padding-right:8px}\n")
                .append(".tick{position:absolute;left:2px;color:#888;font-size:10px}\n")
                .append(".legend{position:fixed;top:0;left:0;right:0;background:#fffe;padding:6px;border-bottom:1px solid #ccc;z-index:2}\n")
                .append("</style></head><body>\n");
        html.append("<div class=\"legend\">").append(escape(run.settings().nodes() + " nodes, seed " + run.settings().seed() + ", "
                        + f.requests().size() + " requests, verdict " + (run.verdict().valid() ? "VALID" : "INVALID")))
                .append(" &mdash; <span class=\"op ok\" style=\"position:static;padding:0 4px\">ok</span> <span class=\"op fail\" style=\"position:static;padding:0 4px\">definite error</span>"
                        + " <span class=\"op info\" style=\"position:static;padding:0 4px\">unknown (0, 13, no reply)</span> <span class=\"fault\" style=\"position:static;padding:0 4px\">fault</span>"
                        + " &mdash; hover a box for its request and reply</div>\n");
        for (int second = (int) origin; second <= run.seconds(); second++) {
            html.append("<div class=\"tick\" style=\"top:").append((int) (top + (second - origin) * scale)).append("px\">").append(second).append(" s</div>\n");
        }
        for (ClusterHarness.Fault fault : run.faults()) {
            html.append("<div class=\"fault\" style=\"top:").append((int) (top + (fault.startNanos() / 1e9 - origin) * scale)).append("px;height:")
                    .append(Math.max(2, (int) ((fault.endNanos() - fault.startNanos()) / 1e9 * scale))).append("px\" title=\"")
                    .append(escape(fault.kind() + " " + fault.target())).append("\">").append(escape(fault.kind() + " " + fault.target())).append("</div>\n");
        }
        for (int i = 0; i < lanes.size(); i++) {
            html.append("<div class=\"lane\" style=\"left:").append(40 + i * laneWidth).append("px\"><div class=\"head\">")
                    .append(escape(lanes.get(i))).append("</div></div>\n");
        }
        Map<String, List<Double>> columnEnds = new HashMap<>();   // per lane: when each column's last box ends
        for (Request request : f.requests()) {
            Event invoke = request.invoke();
            int lane = lanes.indexOf(invoke.process());
            double start = invoke.nanos() / 1e9;
            double end = request.completion() == null ? run.seconds() : request.completion().nanos() / 1e9;
            // a request still open when the next starts (a duplicate sent to two nodes at once) goes beside it
            List<Double> ends = columnEnds.computeIfAbsent(invoke.process(), p -> new ArrayList<>());
            int column = 0;
            while (column < ends.size() && ends.get(column) > start) {
                column++;
            }
            if (column == ends.size()) {
                ends.add(end);
            } else {
                ends.set(column, end);
            }
            int width = column == 0 ? 80 : 40;
            int left = 44 + lane * laneWidth + (column == 0 ? 0 : 85 + (column - 1) % 2 * 45);
            String title = invoke.process() + " op " + invoke.op() + " attempt " + invoke.attempt() + " -> " + invoke.node() + " (" + invoke.phase() + ")\n"
                    + "sent at " + String.format(Locale.ROOT, "%.3f s", start) + ": " + invoke.body() + "\n"
                    + (request.completion() == null ? "never completed" : request.outcome() + " after " + String.format(Locale.ROOT, "%.1f ms", (end - start) * 1000)
                    + ": " + (request.completion().body() != null ? request.completion().body() : request.completion().text()));
            String label = invoke.body().path("type").asText().replace("Payment", "") + " " + invoke.node();
            html.append("<div class=\"op ").append(request.outcome()).append("\" style=\"left:").append(left)
                    .append("px;width:").append(width).append("px;top:").append(String.format(Locale.ROOT, "%.1f", top + (start - origin) * scale))
                    .append("px;height:").append(String.format(Locale.ROOT, "%.1f", Math.max(3, (end - start) * scale))).append("px\" title=\"")
                    .append(escape(title)).append("\">").append(escape(label)).append("</div>\n");
        }
        html.append("<div style=\"position:absolute;top:").append((int) height).append("px\">&nbsp;</div>\n</body></html>\n");
        return html.toString();
    }

    private static int byNumber(String a, String b) {
        return a.length() != b.length() ? Integer.compare(a.length(), b.length()) : a.compareTo(b);
    }

    static String escape(String text) {
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
    }

    private ClusterReport() {
    }
}
