#!/usr/bin/env bash
# Runs the cluster harness (src/test/java/payment/harness/ClusterHarness.java): payment nodes on one lin-kv, a nemesis,
# saga clients, a healing phase and a checker; a results folder per run. Options: tests/cluster.sh --help.
# Build output is shown only when the build fails; stdout is the summary, its last line the results folder.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
classpath_file="$here/target/cluster-classpath.txt"
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
# The build speaks only when it fails, so that a usage error stays one line on stderr.
if ! (
    cd "$here"
    ./run.sh --build
    mvn -q -B -ntp test-compile
    if [ ! -s "$classpath_file" ] || [ pom.xml -nt "$classpath_file" ]; then
        # The test-scope libraries (Jackson Databind, JFreeChart) from the local Maven repository.
        mvn -q -B -ntp dependency:build-classpath -Dmdep.includeScope=test -Dmdep.outputFile="$classpath_file"
    fi
) >"$build_log" 2>&1; then
    cat "$build_log" >&2
    echo "cluster: could not run: the build failed (above)" >&2
    exit 2
fi
# The caller's working directory stays: a relative --out is relative to where the command was typed.
java -Djava.awt.headless=true -Dcluster.project="$here" \
    -cp "$here/target/test-classes:$here/target/classes:$(cat "$classpath_file")" payment.harness.ClusterHarness "$@"
