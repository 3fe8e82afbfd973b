#!/usr/bin/env bash
# The project's benchmark (src/test/java/payment/bench/Bench.java): a baseline and a candidate node measured in one
# run, alternating, with the ratio candidate / baseline of each metric. Options: tests/bench.sh --help.
# Needs only the JDK and Maven; build output and progress go to stderr, the report to stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
case " $* " in *" --help "*|*" -h "*) ;; *) ./run.sh --build ;; esac
mvn -q -B -ntp test-compile 1>&2
# The serial collector: the benchmark's own JVM must not run GC threads on the cores the node is measured on.
exec java -XX:+UseSerialGC -Xmx512m -Xlog:disable -cp target/test-classes payment.bench.Bench "$@"
