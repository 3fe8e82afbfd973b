#!/usr/bin/env bash
# Old node against new in one sitting of the same harness (docs/CLUSTER.md, "Cost, measured with the harness"):
#   tests/cluster-compare.sh OLD_RUN_SH [RUNS] [SECONDS]
# runs tests/cluster.sh --nodes 3 --concurrency 16 --rate 100000 (closed loop in effect: every client is always busy)
# --nemesis none --latency 5 --time-limit SECONDS --seed 1..RUNS, old and this tree's node alternating (old first on odd
# seeds, new first on even ones: a fixed order charges any drift of the machine over a sitting to the second; one sitting
# here fell run after run from 2,066 to 1,267 requests/s), and prints each run's figures, then the medians, their new/old
# ratios, and the median of each seed's ratio. OLD_RUN_SH is another checkout's run.sh, e.g. one made with
#   git archive c177473 | tar -x -C /tmp/old && /tmp/old/run.sh --build
# Figures (python3 reads each run's history.jsonl): requests/s of the workload (requests sent from the first to the
# last answer of the run phase), request p50/p99 (every request answered), lin-kv calls per request (the summary),
# first charges (ChargePayment_ok of the run phase without a note) per second and their p50, and the CPU the nodes and
# the harness used per request (the summary's cpu line: on this machine they share two cores, so CPU is what bounds both).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
old="${1:?usage: tests/cluster-compare.sh OLD_RUN_SH [RUNS] [SECONDS]}"
runs="${2:-3}"
seconds="${3:-15}"
out="$here/target/cluster-compare/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
for seed in $(seq 1 "$runs"); do
    order="old new"
    [ $((seed % 2)) -eq 0 ] && order="new old"
    for who in $order; do
        node=("$here/run.sh" --store lin-kv --verbose)
        [ "$who" = old ] && node=("$old" --store lin-kv --verbose)
        echo "compare: $who, seed $seed, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)" >&2
        "$here/tests/cluster.sh" --nodes 3 --concurrency 16 --rate 100000 --nemesis none --latency 5 --time-limit "$seconds" \
            --seed "$seed" --out "$out/$who-$seed" -- "${node[@]}" >/dev/null
    done
done
python3 - "$out" "$runs" <<'PY'
import json, re, statistics, sys

def pct(values, p):
    values = sorted(values)
    return values[max(0, min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1))]

def figures(folder):
    invokes, every, first = {}, [], []
    start = end = None
    requests = charges = 0
    for line in open(folder + '/history.jsonl'):
        e = json.loads(line)
        if e.get('process') in ('c0', 'nemesis'):
            continue
        key = (e['process'], e.get('msg_id'))
        if e['type'] == 'invoke':
            invokes[key] = e
            if e.get('phase') == 'run':
                requests += 1
                start = e['time_ms'] if start is None else start
        elif e['type'] in ('ok', 'fail', 'info') and key in invokes:
            sent = invokes.pop(key)
            if e.get('body') is None:
                continue   # no reply in time
            took = e['time_ms'] - sent['time_ms']
            every.append(took)
            if sent.get('phase') == 'run':
                end = e['time_ms']
                body = e['body']
                if e['type'] == 'ok' and body.get('type') == 'ChargePayment_ok' and 'note' not in body:
                    charges += 1
                    first.append(took)
    seconds = (end - start) / 1000
    summary = open(folder + '/summary.txt').read()
    calls = float(re.search(r'lin-kv: \d+ calls .*?, ([0-9.]+) per request sent', summary).group(1))
    cpu = re.search(r'cpu: nodes .*?, ([0-9.]+) ms per request sent; harness .*?, ([0-9.]+) ms per request sent', summary)
    return {'requests/s': requests / seconds, 'request p50 ms': pct(every, 50), 'request p99 ms': pct(every, 99),
            'lin-kv calls per request': calls, 'first charges/s': charges / seconds, 'first-charge p50 ms': pct(first, 50),
            'nodes cpu ms per request': float(cpu.group(1)), 'harness cpu ms per request': float(cpu.group(2))}

out, runs = sys.argv[1], int(sys.argv[2])
table = {who: [figures(f'{out}/{who}-{seed}') for seed in range(1, runs + 1)] for who in ('old', 'new')}
names = list(table['old'][0])
for who in ('old', 'new'):
    for seed, f in enumerate(table[who], 1):
        print(f'{who} seed {seed}: ' + ', '.join(f'{n} {f[n]:.2f}' for n in names))
print('medians of ' + str(runs) + ' runs each (new/old):')
for n in names:
    o = statistics.median(f[n] for f in table['old'])
    w = statistics.median(f[n] for f in table['new'])
    paired = statistics.median(w_ / o_ for w_, o_ in zip((f[n] for f in table['new']), (f[n] for f in table['old'])))
    print(f'  {n}: old {o:.2f}, new {w:.2f} ({w / o:.2f}x; per seed {paired:.2f}x)')
print('runs: ' + out)
PY
