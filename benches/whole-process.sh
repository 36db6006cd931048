#!/usr/bin/env bash
# Whole-process benchmark of `kiln run`: the peers' scenarios (see ../shared/peers/README.md)
# as Kiln workflows of trivial plugin steps, timed from outside, one fresh `kiln` process per run.
#
# usage: benches/whole-process.sh [SCENARIO...]      (default: one chain5 chain50 fanout100)
#
# Each step is the test plugin `hostile`, action `ok` (logs one line, returns {"result": "ok"}),
# so a step costs what any plugin step costs: its records in SQLite (planned, started, log
# event, finished; WAL with synchronous=FULL) and a fresh sandboxed wasm instance.
#
# Scenarios (the peers' names; `empty` cannot exist in Kiln, a workflow needs a step):
#   one        1 step: the closest to the peers' `empty`, the fixed cost of a run
#   chain5     5 steps, each `needs` the previous one
#   chain50    50 steps in a chain; (chain50 - chain5)/45 is the marginal cost of a step
#   fanout100  100 independent steps, then a join step that needs all 100 (n_tasks=101)
#   spawn5     5 chained steps, each launching `true` through the process capability and its
#              supervisor (`kiln supervise`), and waiting for it (action `launch-true`)
#   layered1000, layered3000, layered10000
#              N steps in layers of 10, each needing two steps of the layer before: the cost
#              of large workflows (1 run each after the warm-up; see benches/README.md)
#
# Prerequisites (from the repository root):
#   cargo build --release -p kiln
#   scripts/build-plugins.sh --with-test-plugins
#
# Environment:
#   KILN_BIN             the kiln binary (default target/release/kiln)
#   KILN_BENCH_WASM      the hostile plugin component, built from the same commit as KILN_BIN
#                        (default target/wasm32-wasip2/plugin/kiln_test_hostile.wasm)
#   KILN_BENCH_RUNS      timed runs per scenario after 1 warm-up run (default 5)
#   KILN_BENCH_PARALLEL  --max-parallel (default 4, kiln's default)
#   KILN_BENCH_VERSION   the `version` field (default: kiln --version + the repository's git HEAD)
#   KILN_BENCH_DIR       scratch workspace (default: a new mktemp -d /tmp/kiln-bench.XXXXXX, kept)
#   KILN_BENCH_NO_HYPERFINE=1  time with the bash loop even if hyperfine is installed
#   PEERS_DIR            takes $PEERS_DIR/bench.lock (default /tmp/peers) like the peer scripts, so
#                        two benchmarks never run at once
#
# Prints one JSON line per scenario on stdout (the peers' schema: engine, scenario, median_s,
# min_s, max_s, n_tasks, plus runs, version, mode, load1, max_parallel, timer, and
# inner_median_s = the median run duration the engine itself recorded). Checks go to stderr.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN_BIN:-$repo/target/release/kiln}"
wasm="${KILN_BENCH_WASM:-$repo/target/wasm32-wasip2/plugin/kiln_test_hostile.wasm}"
runs="${KILN_BENCH_RUNS:-5}"
parallel="${KILN_BENCH_PARALLEL:-4}"
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(one chain5 chain50 fanout100 spawn5)

die() { echo "whole-process.sh: $*" >&2; exit 1; }
[[ -x "$kiln" ]] || die "$kiln is missing: run \`cargo build --release -p kiln\` first"
[[ -f "$wasm" ]] || die "$wasm is missing: run \`scripts/build-plugins.sh --with-test-plugins\` first"
command -v python3 >/dev/null || die "python3 is needed to read JSON"

ws="${KILN_BENCH_DIR:-$(mktemp -d /tmp/kiln-bench.XXXXXX)}"
mkdir -p "$ws/.kiln/plugins" "$ws/configs/hostile" "$ws/workflows"
cp "$wasm" "$ws/.kiln/plugins/hostile.wasm"
# The default limits; `true` is the only program granted (spawn5 launches it).
cat > "$ws/configs/plugins.yaml" <<'EOF'
defaults: {memory_mb: 256, cpu_seconds_per_call: 10}
plugins: {hostile: {programs: ["true"]}}
EOF

export KILN_WORKSPACE="$ws" KILN_CACHE_DIR="$ws/.kiln/cache" KILN_USER=bench
unset KILN_DATABASE_URL KILN_PLUGINS_DIR KILN_LOG

# --- workflows ---------------------------------------------------------------------------------
gen() { # gen SCENARIO -> writes $ws/workflows/SCENARIO.yaml, prints n_tasks
    local s="$1" f="$ws/workflows/$1.yaml" n i
    case "$s" in
        one) n=1 ;;
        chain5) n=5 ;;
        chain50) n=50 ;;
        fanout100) n=100 ;;
        spawn5) n=5 ;;
        layered*) n=${s#layered} ;;
        *) die "unknown scenario $s (one, chain5, chain50, fanout100, spawn5, layeredN)" ;;
    esac
    {
        echo "name: bench-$s"
        echo "steps:"
        if [[ $s == layered* ]]; then
            for ((i = 0; i < n; i++)); do
                if ((i < 10)); then
                    echo "  - {id: s$i, uses: hostile, action: ok}"
                else
                    local layer=$((i / 10)) a b
                    a=$(((layer - 1) * 10 + i % 10)); b=$(((layer - 1) * 10 + (i + 1) % 10))
                    echo "  - {id: s$i, uses: hostile, action: ok, needs: [s$a, s$b]}"
                fi
            done
        elif [[ $s == spawn5 ]]; then
            echo "  - {id: s0, uses: hostile, action: launch-true}"
            for ((i = 1; i < n; i++)); do
                echo "  - {id: s$i, uses: hostile, action: launch-true, needs: [s$((i - 1))]}"
            done
        elif [[ $s == fanout100 ]]; then
            for ((i = 0; i < n; i++)); do echo "  - {id: s$i, uses: hostile, action: ok}"; done
            local needs
            needs=$(seq -s ', s' 0 $((n - 1)))
            echo "  - {id: join, uses: hostile, action: ok, needs: [s$needs]}"
        else
            echo "  - {id: s0, uses: hostile, action: ok}"
            for ((i = 1; i < n; i++)); do
                echo "  - {id: s$i, uses: hostile, action: ok, needs: [s$((i - 1))]}"
            done
        fi
    } > "$f"
    [[ $s == fanout100 ]] && n=$((n + 1))
    echo "$n"
}

# --- timing --------------------------------------------------------------------------------------
use_hyperfine=0
if [[ -z "${KILN_BENCH_NO_HYPERFINE:-}" ]] && command -v hyperfine >/dev/null; then use_hyperfine=1; fi

# time_runs FILE RUNS -> prints the timed runs' wall times in seconds, one a line
time_runs() {
    local f="$1" runs="$2" out="$ws/hyperfine.json" i t0 t1
    if ((use_hyperfine)); then
        hyperfine --shell=none --warmup 1 --runs "$runs" --style none \
            --export-json "$out" "$kiln run $f --max-parallel $parallel" >/dev/null
        python3 -c 'import json,sys; [print(t) for t in json.load(open(sys.argv[1]))["results"][0]["times"]]' "$out"
    else
        "$kiln" run "$f" --max-parallel "$parallel" >/dev/null 2>&1 || die "warm-up run of $f failed"
        for ((i = 0; i < runs; i++)); do
            t0=$(date +%s%N)
            "$kiln" run "$f" --max-parallel "$parallel" >/dev/null 2>&1 || die "run of $f failed"
            t1=$(date +%s%N)
            echo "$(( t1 - t0 ))e-9"
        done
    fi
}

# check SCENARIO N_TASKS COUNT: the last COUNT runs are this workflow's, all succeeded with every
# step succeeded; prints their engine-recorded durations (s), one a line.
check() {
    "$kiln" runs list --json --limit "$3" > "$ws/runs.json"
    local newest
    newest=$(python3 - "$ws/runs.json" "bench-$1" "$3" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
runs = runs["runs"] if isinstance(runs, dict) else runs
name, count = sys.argv[2], int(sys.argv[3])
assert len(runs) == count, f"expected {count} runs, found {len(runs)}"
for r in runs:
    assert r["workflow_name"] == name, f"run {r['id']} is {r['workflow_name']}, not {name}"
    assert r["status"] == "succeeded", f"run {r['id']} is {r['status']}: {r.get('error_message')}"
print(runs[0]["id"])
with open(sys.argv[1] + ".durations", "w") as out:
    for r in runs[:-1]:   # the oldest is the warm-up
        out.write(f"{r['duration_ms'] / 1000}\n")
EOF
    )
    "$kiln" runs show "$newest" --json > "$ws/show.json"
    python3 - "$ws/show.json" "$2" <<'EOF'
import json, sys
show = json.load(open(sys.argv[1]))
steps = show["steps"]
n = int(sys.argv[2])
ok = [s for s in steps if s["status"] == "succeeded" and (s.get("outputs") or {}).get("result") == "ok"]
assert len(steps) == n and len(ok) == n, f"expected {n} succeeded steps, found {len(ok)} of {len(steps)}"
EOF
    cat "$ws/runs.json.durations"
}

version="${KILN_BENCH_VERSION:-$("$kiln" --version | awk '{print $2}')+$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
lock="${PEERS_DIR:-/tmp/peers}/bench.lock"
mkdir -p "$(dirname "$lock")"
exec 9>>"$lock"
echo "whole-process.sh: workspace $ws, kiln $version, runs $runs (+1 warm-up), --max-parallel $parallel, timer $( ((use_hyperfine)) && echo hyperfine || echo bash-loop)" >&2

for s in "${scenarios[@]}"; do
    n=$(gen "$s")
    f="$ws/workflows/$s.yaml"
    # Large workflows: one timed run each (plus the warm-up).
    r=$runs
    [[ $s == layered* ]] && r=1
    t0=$(date +%s%N)
    "$kiln" validate "$f" >/dev/null || die "$f does not validate"
    validate_s=$(python3 -c "print(($(date +%s%N) - $t0) / 1e9)")
    flock 9
    times=$(time_runs "$f" "$r")
    # One more run for its peak memory (GNU time), outside the timed ones.
    rss_kb=0
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -f %M -o "$ws/rss.txt" "$kiln" run "$f" --max-parallel "$parallel" >/dev/null 2>&1 \
            || die "run of $f failed"
        rss_kb=$(tail -n 1 "$ws/rss.txt")
    else
        "$kiln" run "$f" --max-parallel "$parallel" >/dev/null 2>&1 || die "run of $f failed"
    fi
    flock -u 9
    # The newest run is the memory run: leave it out of the durations.
    inner=$(check "$s" "$n" $((r + 2)) | tail -n +2)
    load1=$(cut -d' ' -f1 /proc/loadavg)
    python3 - "$s" "$n" "$version" "$parallel" "$load1" "$( ((use_hyperfine)) && echo hyperfine || echo bash-loop)" "$times" "$inner" "$rss_kb" "$validate_s" <<'EOF'
import json, statistics, sys
s, n, version, parallel, load1, timer, times, inner, rss_kb, validate_s = sys.argv[1:]
t = [float(x) for x in times.split()]
i = [float(x) for x in inner.split()]
print(json.dumps({
    "engine": "kiln", "scenario": s,
    "median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4), "max_s": round(max(t), 4),
    "n_tasks": int(n), "runs": len(t), "version": version,
    "mode": "process/sqlite-full", "max_parallel": int(parallel), "timer": timer,
    "inner_median_s": round(statistics.median(i), 4),
    "max_rss_mb": round(int(rss_kb) / 1024, 1), "validate_s": round(float(validate_s), 4),
    "load1": float(load1),
}), flush=True)
EOF
    echo "whole-process.sh: $s ok ($n steps succeeded in each of $((r + 2)) runs)" >&2
done
