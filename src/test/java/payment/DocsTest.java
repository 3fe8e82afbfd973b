package payment;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A clone of this repository alone is complete: its README is for users, and its docs hold the whole contract. */
class DocsTest {
    private static final Path README = Path.of("README.md");
    private static final Path DOCS = Path.of("docs");

    private static List<Path> pages() throws IOException {
        List<Path> pages = new ArrayList<>(List.of(README));
        try (Stream<Path> docs = Files.list(DOCS)) {
            pages.addAll(docs.filter(p -> p.toString().endsWith(".md")).sorted().toList());
        }
        return pages;
    }

    @Test
    void theReadmeIsShortAndNeedsNothingOutsideTheRepository() throws IOException {
        String readme = Files.readString(README);
        assertTrue(readme.lines().count() <= 150, "README has " + readme.lines().count() + " lines");
        assertFalse(readme.contains("../shared") || readme.contains("SPEC.md"), "README points outside the repository");
        assertTrue(readme.contains("./run.sh < tests/golden/01-sample-idempotent-charge.in"), "the command that runs the node");
        assertTrue(readme.contains("mvn -B -ntp test"), "the command that runs the tests");
    }

    /** The output the quick start promises is what the node prints for that input. */
    /** The options are written once, in the usage text: the README's table names exactly the options --help names (issue 19). */
    @Test
    void theReadmesOptionsAreTheUsagesOptions() throws IOException {
        java.util.regex.Pattern option = java.util.regex.Pattern.compile("(?<![\\w-])--[a-z][a-z-]+");
        java.util.Set<String> inUsage = new java.util.TreeSet<>();
        option.matcher(CommandLine.USAGE.substring(CommandLine.USAGE.indexOf("Options:"))).results().forEach(m -> inUsage.add(m.group()));
        String readme = Files.readString(Path.of("README.md"));
        String table = readme.substring(readme.indexOf("| option |"), readme.indexOf("\n\n", readme.indexOf("| option |")));
        java.util.Set<String> inReadme = new java.util.TreeSet<>();
        table.lines().map(row -> row.split("\\|")).filter(cells -> cells.length > 1)
                .forEach(cells -> option.matcher(cells[1]).results().forEach(m -> inReadme.add(m.group())));
        assertEquals(inUsage, inReadme);
    }

    @Test
    void theQuickStartShowsExactlyWhatTheNodePrints() throws IOException {
        String readme = Files.readString(README);
        String block = readme.substring(readme.indexOf("The first command prints"));
        block = block.substring(block.indexOf("```text\n") + 8, block.indexOf("\n```", block.indexOf("```text")) + 1);
        Path in = Path.of("tests", "golden", "01-sample-idempotent-charge.in");
        assertEquals(Node.run(Files.readAllBytes(in)).stdout(), block);
    }

    @Test
    void everyRelativeLinkLeadsToAFileOfTheRepository() throws IOException {
        Pattern link = Pattern.compile("\\]\\(([^)#:]+)(#[^)]*)?\\)");
        for (Path page : pages()) {
            Matcher m = link.matcher(Files.readString(page));
            while (m.find()) {
                Path target = page.resolveSibling(m.group(1)).normalize();
                assertTrue(Files.exists(target), page + " links to " + m.group(1) + ", which does not exist");
            }
        }
    }

    /** The contract page names every error code the node can send and every message type it answers. */
    @Test
    void theProtocolPageCoversEveryErrorCodeAndMessageType() throws IOException {
        String protocol = Files.readString(DOCS.resolve("PROTOCOL.md"));
        for (PaymentNode.ErrorCode code : PaymentNode.ErrorCode.values()) {
            assertTrue(protocol.contains("| " + code.code + " | " + code.name().toLowerCase().replace('_', '-') + " |"),
                    "PROTOCOL.md has no row for error " + code.code + " " + code);
        }
        for (String type : List.of("init", "ChargePayment", "RefundPayment", "PaymentStatus")) {
            assertTrue(Pattern.compile("(?m)^## \\d+\\. " + type + "\\b").matcher(protocol).find(), "PROTOCOL.md has no section for " + type);
        }
        assertEquals(-1, protocol.indexOf("SPEC.md"), "the contract is in the repository's own words");
    }

    /** The reason table of docs/PROTOCOL.md section 5 has one row per reason the code knows, with its code (issue 16, item 1). */
    @Test
    void theProtocolPageListsEveryReasonWithItsCode() throws IOException {
        String protocol = Files.readString(DOCS.resolve("PROTOCOL.md"));
        Matcher row = Pattern.compile("(?m)^\\| `([a-z_]+)` \\| (\\d+) \\|").matcher(protocol);
        List<String> documented = new ArrayList<>();
        while (row.find()) {
            documented.add(row.group(1) + " " + row.group(2));
        }
        List<String> known = Stream.of(PaymentNode.Reason.values()).map(r -> r.wire() + " " + r.code.code).toList();
        assertEquals(known, documented, "PROTOCOL.md's reason table, row by row");
    }

    /** docs/JOURNAL.md has a row for every record kind the journal writes and reads (issue 16, item 5). */
    @Test
    void theJournalPageListsEveryRecordKind() throws IOException {
        String journal = Files.readString(DOCS.resolve("JOURNAL.md"));
        for (String kind : FileJournal.RECORD_KINDS) {
            assertTrue(journal.contains("| `[\"" + kind + "\", "), "JOURNAL.md has no row for the record " + kind);
        }
    }

    /** docs/CLUSTER.md's example of a slot's value is one the cluster decodes, to what the page says it holds. */
    @Test
    void theClusterPagesExampleEntryDecodes() throws IOException {
        Matcher example = Pattern.compile("(?s)```text\n([0-9a-f]{8} 13:payment-log/2[^\n]*)\n```").matcher(Files.readString(DOCS.resolve("CLUSTER.md")));
        assertTrue(example.find(), "CLUSTER.md shows an entry");
        ClusterService.LogEntry entry = ClusterService.LogEntry.decode(example.group(1));
        assertEquals("n1", entry.appender());
        assertEquals("n2/7f3a9c0d2e4b1a680/1", entry.batches().get(0).id());
        ClusterService.LoggedRequest request = entry.batches().get(0).requests().get(0);
        assertEquals(new PaymentNode.ChargeRequest("saga42", 2, "u42", new PaymentNode.Amount("99.99", new java.math.BigDecimal("99.99"))), request.request());
        assertEquals(List.of(1764580000123L, "c1", 7L), List.of(request.arrivedMillis(), request.src(), request.msgId()));
    }

    /** Every file the README feeds the node (`< FILE`) is in the repository. */
    @Test
    void everyFileTheReadmeFeedsTheNodeExists() throws IOException {
        Matcher input = Pattern.compile("< ([\\w./-]+)").matcher(Files.readString(README));
        int files = 0;
        while (input.find()) {
            assertTrue(Files.exists(Path.of(input.group(1))), "README reads " + input.group(1) + ", which does not exist");
            files++;
        }
        assertTrue(files >= 2, "files the README feeds the node: " + files);
    }
}
