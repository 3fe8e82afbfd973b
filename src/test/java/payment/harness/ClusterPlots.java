package payment.harness;

import org.jfree.chart.ChartUtils;
import org.jfree.chart.JFreeChart;
import org.jfree.chart.axis.LogarithmicAxis;
import org.jfree.chart.axis.NumberAxis;
import org.jfree.chart.plot.IntervalMarker;
import org.jfree.chart.plot.XYPlot;
import org.jfree.chart.renderer.xy.XYLineAndShapeRenderer;
import org.jfree.chart.ui.Layer;
import org.jfree.chart.ui.RectangleAnchor;
import org.jfree.chart.ui.TextAnchor;
import org.jfree.data.xy.XYSeries;
import org.jfree.data.xy.XYSeriesCollection;

import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.geom.Ellipse2D;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** latency.png and rate.png, drawn headless with JFreeChart, as Maelstrom's latency-raw and rate plots. */
final class ClusterPlots {
    static final int WIDTH = 1200;
    static final int LATENCY_HEIGHT = 600;
    static final int RATE_HEIGHT = 400;
    private static final Color OK = new Color(0x33, 0x99, 0x33);
    private static final Color FAIL = new Color(0xee, 0x88, 0x00);
    private static final Color INFO = new Color(0x77, 0x77, 0x77);

    static {
        System.setProperty("java.awt.headless", "true");   // no display needed, whoever calls
    }

    /** Time windows for quantile lines and rates: about 40 across the run, at least 100 ms each. */
    static double windowSeconds(double seconds) {
        return Math.max(0.1, seconds / 40);
    }

    /**
     * Every request's latency (sent to reply, or to the end of its wait when none came) at the time it was sent,
     * coloured by outcome on a log scale; the p50, p95 and p99 of each time window as lines; faults shaded.
     */
    static void latency(ClusterReport.Figures figures, List<ClusterHarness.Fault> faults, double seconds, Path file) throws IOException {
        Map<String, XYSeries> points = new LinkedHashMap<>();
        for (String outcome : List.of("ok", "fail", "info")) {
            points.put(outcome, new XYSeries(switch (outcome) {
                case "ok" -> "ok";
                case "fail" -> "definite error";
                default -> "unknown (0, 13, no reply)";
            }, false, true));
        }
        double window = windowSeconds(seconds);
        int windows = (int) Math.ceil(seconds / window) + 1;
        List<List<Long>> byWindow = new ArrayList<>();
        for (int i = 0; i < windows; i++) {
            byWindow.add(new ArrayList<>());
        }
        for (ClusterReport.Request request : figures.requests()) {
            if (request.completion() == null) {
                continue;
            }
            double sent = request.invoke().nanos() / 1e9;
            long latency = Math.max(request.latencyNanos(), 10_000);   // 0.01 ms: a log axis has no zero
            points.get(request.outcome()).add(sent, latency / 1e6);
            byWindow.get(Math.min(windows - 1, (int) (sent / window))).add(latency);
        }
        XYSeriesCollection scatter = new XYSeriesCollection();
        points.values().forEach(scatter::addSeries);
        XYSeriesCollection lines = new XYSeriesCollection();
        for (double q : new double[] {0.5, 0.95, 0.99}) {
            XYSeries series = new XYSeries("p" + Math.round(q * 100) + " per " + Math.round(window * 1000) + " ms", false, true);
            for (int i = 0; i < windows; i++) {
                List<Long> inWindow = byWindow.get(i);
                if (!inWindow.isEmpty()) {
                    Collections.sort(inWindow);
                    series.add((i + 0.5) * window, ClusterReport.quantileMillis(inWindow, q));
                }
            }
            lines.addSeries(series);
        }
        NumberAxis time = new NumberAxis("time since the start (s)");
        LogarithmicAxis latencyAxis = new LogarithmicAxis("latency (ms, log scale)");
        latencyAxis.setAllowNegativesFlag(false);
        XYLineAndShapeRenderer dots = new XYLineAndShapeRenderer(false, true);
        Color[] colours = {OK, FAIL, INFO};
        for (int i = 0; i < colours.length; i++) {
            dots.setSeriesPaint(i, colours[i]);
            dots.setSeriesShape(i, new Ellipse2D.Double(-2, -2, 4, 4));
        }
        XYPlot plot = new XYPlot(scatter, time, latencyAxis, dots);
        XYLineAndShapeRenderer quantiles = new XYLineAndShapeRenderer(true, false);
        Color[] lineColours = {new Color(0x11, 0x44, 0xcc), new Color(0x88, 0x22, 0xaa), Color.RED};
        for (int i = 0; i < lineColours.length; i++) {
            quantiles.setSeriesPaint(i, lineColours[i]);
            quantiles.setSeriesStroke(i, new BasicStroke(2f));
        }
        plot.setDataset(1, lines);
        plot.setRenderer(1, quantiles);
        shadeFaults(plot, faults);
        shadePhases(plot, figures);
        plot.setBackgroundPaint(Color.WHITE);
        plot.setDomainGridlinePaint(Color.LIGHT_GRAY);
        plot.setRangeGridlinePaint(Color.LIGHT_GRAY);
        JFreeChart chart = new JFreeChart("Latency of every request, by outcome; faults shaded", JFreeChart.DEFAULT_TITLE_FONT, plot, true);
        chart.setBackgroundPaint(Color.WHITE);
        ChartUtils.saveChartAsPNG(file.toFile(), chart, WIDTH, LATENCY_HEIGHT);
    }

    /** Requests completed per second, by outcome, in time windows; faults shaded. */
    static void rate(ClusterReport.Figures figures, List<ClusterHarness.Fault> faults, double seconds, Path file) throws IOException {
        double window = windowSeconds(seconds);
        int windows = (int) Math.ceil(seconds / window) + 1;
        Map<String, int[]> counts = new LinkedHashMap<>();
        for (String outcome : List.of("ok", "fail", "info")) {
            counts.put(outcome, new int[windows]);
        }
        for (ClusterReport.Request request : figures.requests()) {
            if (request.completion() != null) {
                counts.get(request.outcome())[Math.min(windows - 1, (int) (request.completion().nanos() / 1e9 / window))]++;
            }
        }
        XYSeriesCollection rates = new XYSeriesCollection();
        counts.forEach((outcome, perWindow) -> {
            XYSeries series = new XYSeries(switch (outcome) {
                case "ok" -> "ok";
                case "fail" -> "definite error";
                default -> "unknown (0, 13, no reply)";
            }, false, true);
            for (int i = 0; i < windows; i++) {
                series.add((i + 0.5) * window, perWindow[i] / window);
            }
            rates.addSeries(series);
        });
        XYLineAndShapeRenderer renderer = new XYLineAndShapeRenderer(true, false);
        Color[] colours = {OK, FAIL, INFO};
        for (int i = 0; i < colours.length; i++) {
            renderer.setSeriesPaint(i, colours[i]);
            renderer.setSeriesStroke(i, new BasicStroke(2f));
        }
        XYPlot plot = new XYPlot(rates, new NumberAxis("time since the start (s)"), new NumberAxis("requests completed per second"), renderer);
        shadeFaults(plot, faults);
        shadePhases(plot, figures);
        plot.setBackgroundPaint(Color.WHITE);
        plot.setDomainGridlinePaint(Color.LIGHT_GRAY);
        plot.setRangeGridlinePaint(Color.LIGHT_GRAY);
        JFreeChart chart = new JFreeChart("Rate of completed requests, by outcome; faults shaded", JFreeChart.DEFAULT_TITLE_FONT, plot, true);
        chart.setBackgroundPaint(Color.WHITE);
        ChartUtils.saveChartAsPNG(file.toFile(), chart, WIDTH, RATE_HEIGHT);
    }

    private static void shadeFaults(XYPlot plot, List<ClusterHarness.Fault> faults) {
        for (ClusterHarness.Fault fault : faults) {
            IntervalMarker marker = new IntervalMarker(fault.startNanos() / 1e9, fault.endNanos() / 1e9, new Color(255, 0, 0, 40));
            marker.setLabel(fault.kind() + " " + fault.target());
            marker.setLabelAnchor(RectangleAnchor.TOP_LEFT);
            marker.setLabelTextAnchor(TextAnchor.TOP_LEFT);
            marker.setLabelPaint(new Color(0x99, 0, 0));
            plot.addDomainMarker(marker, Layer.BACKGROUND);
        }
    }

    /** The healing phase and the final reads, in blue: what happens there is no longer the nemesis's doing. */
    private static void shadePhases(XYPlot plot, ClusterReport.Figures figures) {
        for (String phase : List.of("heal", "final")) {
            double first = Double.MAX_VALUE;
            double last = -1;
            for (ClusterReport.Request request : figures.requests()) {
                if (phase.equals(request.invoke().phase())) {
                    first = Math.min(first, request.invoke().nanos() / 1e9);
                    last = Math.max(last, (request.completion() == null ? request.invoke() : request.completion()).nanos() / 1e9);
                }
            }
            if (last >= 0) {
                IntervalMarker marker = new IntervalMarker(first, Math.max(last, first + 0.01), new Color(0, 90, 255, 30));
                // healing's name at the bottom, the final reads' at the top: two short phases side by side stay readable
                boolean healing = phase.equals("heal");
                marker.setLabel(healing ? "healing" : "final reads");
                marker.setLabelAnchor(healing ? RectangleAnchor.BOTTOM_LEFT : RectangleAnchor.TOP_LEFT);
                marker.setLabelTextAnchor(healing ? TextAnchor.BOTTOM_LEFT : TextAnchor.TOP_LEFT);
                marker.setLabelPaint(new Color(0, 60, 170));
                plot.addDomainMarker(marker, Layer.BACKGROUND);
            }
        }
    }

    private ClusterPlots() {
    }
}
