#!/usr/bin/env bash
# Runs the cluster harness (src/test/java/payment/ClusterHarness.java): payment nodes on one lin-kv, a nemesis,
# saga clients, a healing phase and a checker; a results folder per run. Options: tests/cluster.sh --help.
# Build output goes to stderr; stdout is the summary, its last line the results folder.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
classpath_file="$here/target/cluster-classpath.txt"
(
    cd "$here"
    ./run.sh --build
    mvn -q -B -ntp test-compile 1>&2
    if [ ! -s "$classpath_file" ] || [ pom.xml -nt "$classpath_file" ]; then
        # The test-scope libraries (Jackson Databind, JFreeChart) from the local Maven repository.
        mvn -q -B -ntp dependency:build-classpath -Dmdep.includeScope=test -Dmdep.outputFile="$classpath_file" 1>&2
    fi
)
# The caller's working directory stays: a relative --out is relative to where the command was typed.
exec java -Djava.awt.headless=true -Dcluster.project="$here" \
    -cp "$here/target/test-classes:$here/target/classes:$(cat "$classpath_file")" payment.ClusterHarness "$@"
