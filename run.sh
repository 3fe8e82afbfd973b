#!/usr/bin/env bash
# Runs the payment node on stdin/stdout, from any directory: ./run.sh [--journal FILE] [--verbose] [--help]
# The first run builds the jar (build output goes to stderr: stdout carries replies only).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jar="$here/target/payment-node.jar"
archive="$here/target/payment-node.jsa"

stale() {   # stale FILE: FILE is missing, or older than the sources (the jar) or the jar (the archive)
    case "$1" in
        "$jar") [ ! -f "$jar" ] || [ -n "$(find "$here/src/main" "$here/pom.xml" -newer "$jar" -print -quit)" ] ;;
        *) [ ! -f "$1" ] || [ "$jar" -nt "$1" ] ;;
    esac
}

build_if_needed() {
    # A jar older than the sources or the pom is rebuilt, so an edit is never silently ignored.
    stale "$jar" || stale "$archive" || return 0
    mkdir -p "$here/target"
    # Several nodes started at once (a harness starting a cluster) build once, not in parallel.
    exec 9>"$here/target/.build.lock"
    flock 9
    if stale "$jar"; then
        echo "run.sh: building $jar ..." >&2
        # (Debian's Maven 3.8 prints bare colour resets even in batch mode: filtered out.)
        (cd "$here" && mvn -q -B package -DskipTests 2>&1 | sed 's/\x1b\[[0-9;]*m//g') >&2 || {
            echo "run.sh: the build failed; see the output above" >&2
            exit 1
        }
    fi
    if stale "$archive"; then
        # A class-data archive of the classes a session uses, recorded on the golden inputs: it cuts
        # start-up by a third. It only ever changes speed: a missing, stale or broken one is skipped by the JVM.
        rm -f "$archive" 2>/dev/null || true
        cat "$here"/tests/golden/*.in | java -XX:ArchiveClassesAtExit="$archive" -XX:+UseParallelGC -Xlog:disable \
            -jar "$jar" >/dev/null 2>&1 || rm -f "$archive" 2>/dev/null || true
    fi
    exec 9>&-
}

build_if_needed

# The JVM prints some warnings (e.g. about a stale class-data archive) on stdout by default: send
# every JVM log line to stderr instead.
jvm=(-Xlog:disable -Xlog:all=warning:stderr)
# The idempotency table grows to millions of long-lived entries: a parallel collector with a young
# generation half the heap promotes them with both cores and few pauses, and huge pages (where the
# kernel offers them) spare the TLB misses of lookups spread over a large heap. See README, Performance.
jvm+=(-XX:+UseParallelGC -XX:NewRatio=1)
thp=""
[ -r /sys/kernel/mm/transparent_hugepage/enabled ] && read -r thp < /sys/kernel/mm/transparent_hugepage/enabled
case "$thp" in *"[never]"*|"") ;; *) jvm+=(-XX:+UseTransparentHugePages) ;; esac
[ -f "$archive" ] && jvm+=(-XX:SharedArchiveFile="$archive")
# JAVA_OPTS adds or overrides JVM options, e.g. JAVA_OPTS=-Xmx256m.
# shellcheck disable=SC2086
exec java "${jvm[@]}" ${JAVA_OPTS:-} -jar "$jar" "$@"
