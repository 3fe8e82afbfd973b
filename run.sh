#!/usr/bin/env bash
# Runs the payment node on stdin/stdout, from any directory and through symlinks:
#   ./run.sh [OPTIONS] < messages.jsonl    run the node (builds the jar first if needed); ./run.sh --help lists
#                                          the options (CommandLine.USAGE, the one place they are written)
#   ./run.sh --build                       only build the jar (and its start-up archive), then exit
# Build output goes to stderr: stdout carries replies only, whatever JAVA_OPTS asks the JVM to print.
set -euo pipefail

# Where the project is: the folder of this script, following symlinks (a harness may link to it).
src="${BASH_SOURCE[0]}"
while [ -L "$src" ]; do
    dir="$(cd -P "$(dirname "$src")" && pwd)"
    src="$(readlink "$src")"
    case "$src" in /*) ;; *) src="$dir/$src" ;; esac
done
here="$(cd -P "$(dirname "$src")" && pwd)"
jar="$here/target/payment-node.jar"
archive="$here/target/payment-node.jsa"

stale() {   # stale FILE: FILE is missing, or older than the sources (the jar) or the jar (the archive)
    case "$1" in
        "$jar") [ ! -f "$jar" ] || [ -n "$(find "$here/src/main" "$here/pom.xml" -newer "$jar" -print -quit 2>/dev/null)" ] ;;
        *) [ ! -f "$1" ] || [ "$jar" -nt "$1" ] ;;
    esac
}

# Several nodes started at once (a harness starting a cluster) build once, not in parallel. flock where
# there is one (Linux); elsewhere (stock macOS) a lock folder, taken over when its owner is gone.
lock_dir="$here/target/.build.lock.d"
take_lock() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$here/target/.build.lock"
        flock 9
        return
    fi
    until mkdir "$lock_dir" 2>/dev/null; do
        owner="$(cat "$lock_dir/pid" 2>/dev/null || true)"
        if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
            rm -rf "$lock_dir"
        fi
        sleep 0.2
    done
    echo $$ > "$lock_dir/pid"
}
release_lock() {
    if [ -d "$lock_dir" ] && [ "$(cat "$lock_dir/pid" 2>/dev/null)" = "$$" ]; then
        rm -rf "$lock_dir"
    fi
    exec 9>&-
}

build_if_needed() {
    # A jar older than the sources or the pom is rebuilt, so an edit is never silently ignored.
    stale "$jar" || stale "$archive" || return 0
    mkdir -p "$here/target"
    take_lock
    if stale "$jar"; then
        echo "run.sh: building $jar ..." >&2
        # (Debian's Maven 3.8 prints bare colour resets, even in batch mode, unless .mvn/jvm.config stops them.)
        if ! (cd "$here" && mvn -q -B package -DskipTests 2>&1 | sed 's/\x1b\[[0-9;]*m//g') >&2; then
            release_lock
            echo "run.sh: the build failed; see the output above" >&2
            exit 1
        fi
    fi
    if stale "$archive"; then
        # A class-data archive of the classes a session uses, recorded on the golden inputs: it cuts
        # start-up by a third. It only ever changes speed: a missing, stale or broken one is skipped by the JVM.
        rm -f "$archive" 2>/dev/null || true
        cat "$here"/tests/golden/*.in 2>/dev/null | java -XX:ArchiveClassesAtExit="$archive" -XX:+UseParallelGC -Xlog:disable \
            -jar "$jar" >/dev/null 2>&1 || rm -f "$archive" 2>/dev/null || true
    fi
    release_lock
}

if [ "${1:-}" = "--build" ]; then
    if [ $# -gt 1 ]; then
        echo "run.sh: --build takes no other arguments" >&2
        exit 2
    fi
    build_if_needed
    echo "run.sh: $jar is built and up to date" >&2
    exit 0
fi

build_if_needed

# The JVM prints some warnings (e.g. about a stale class-data archive) on stdout by default: send
# every JVM log line to stderr instead.
jvm=(-Xlog:disable -Xlog:all=warning:stderr)
# The idempotency table grows to millions of long-lived entries: a parallel collector with a young
# generation half the heap promotes them with both cores and few pauses. A collector chosen in
# JAVA_OPTS wins (two would stop the JVM: "Multiple garbage collectors selected").
collector=""
for option in ${JAVA_OPTS:-}; do
    case "$option" in -XX:+Use*GC) collector="$option" ;; esac
done
[ -n "$collector" ] || jvm+=(-XX:+UseParallelGC -XX:NewRatio=1)
# Huge pages (where the kernel offers them) spare the TLB misses of lookups spread over a large heap.
thp=""
[ -r /sys/kernel/mm/transparent_hugepage/enabled ] && read -r thp < /sys/kernel/mm/transparent_hugepage/enabled
case "$thp" in *"[never]"*|"") ;; *) jvm+=(-XX:+UseTransparentHugePages) ;; esac
[ -f "$archive" ] && jvm+=(-XX:SharedArchiveFile="$archive")
# stdout is the replies' own, whatever the redirections:
# - The JVM gets stderr as its stdout (1>&2), so that nothing the JVM prints can mix with the replies:
#   not what JAVA_OPTS asks for (-verbose:gc, -Xlog:gc:stdout, -XX:+PrintCommandLineFlags, ...), nor
#   JAVA_TOOL_OPTIONS or an @argfile, nor what reaches a running node (`jcmd PID VM.log what=gc`, whose
#   output is stdout by default; a SIGQUIT thread dump), nor a start-up error. Steering the JVM with
#   options instead (-XX:+DisplayVMOutputToStderr, JAVA_OPTS's -Xlog and -verbose rewritten to stderr)
#   would miss options given elsewhere and whatever jcmd turns on later: unified logging's stdout
#   output is always descriptor 1.
# - The replies go out through descriptor 3 (3>&1), the very open file this script was given as
#   stdout, written as is by the node (ReplyStream.java): never reopened (/dev/fd/3 would be a new
#   open file with an offset of its own: under `> f 2>&1` stderr and the replies then overwrite each
#   other, and under `{ ./run.sh; echo; } > f` the shell's next line overwrites the replies). Java 17
#   has no public way to write to a descriptor by number, hence --add-opens for the one field that holds it.
jvm+=(-Dpayment.replies.fd=3 --add-opens=java.base/java.io=ALL-UNNAMED)
# JAVA_OPTS adds or overrides JVM options, e.g. JAVA_OPTS=-Xmx256m.
# shellcheck disable=SC2086
exec java "${jvm[@]}" ${JAVA_OPTS:-} -jar "$jar" "$@" 3>&1 1>&2
