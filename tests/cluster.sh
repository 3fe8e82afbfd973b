#!/usr/bin/env bash
# Runs the cluster harness (src/test/java/payment/ClusterHarness.java): payment nodes on one lin-kv, a kill
# nemesis, saga clients and a checker. Options: tests/cluster.sh --help. Build output goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
./run.sh --build
mvn -q -B -ntp test-compile 1>&2
exec java -cp target/payment-node.jar:target/test-classes payment.ClusterHarness "$@"
