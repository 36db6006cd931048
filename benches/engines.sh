#!/usr/bin/env bash
# Several engines on one PostgreSQL database: N `kiln serve` (release build) sharing a database
# and a workspace, a 3-step no-op workflow triggered over HTTP by CLIENTS clients spread over the
# engines, each run followed until it is durably `succeeded` (benches/serve-load.py), for each N
# given. Then the takeover path: runs queued for a label only the last-started engine offers,
# created through the first engine, are claimed and executed by the labelled one; claims/s is
# how fast they are picked up and finished. Prints JSON lines; asserts nothing on time.
#
# usage: benches/engines.sh [SECONDS] [CLIENTS] [ENGINE COUNTS...]   (defaults: 10 50 1 2 4)
#
# Prerequisites: `cargo build --release -p kiln`, `scripts/build-plugins.sh --with-test-plugins`,
# a PostgreSQL server: KILN_BENCH_POSTGRES_URL (an admin URL; default: what
# `scripts/start-postgres.sh` prints, starting it). Environment: KILN_BIN, KILN_BENCH_WASM,
# KILN_BENCH_PORT (default 18281).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN_BIN:-$repo/target/release/kiln}"
wasm="${KILN_BENCH_WASM:-$repo/target/wasm32-wasip2/plugin/kiln_test_hostile.wasm}"
port="${KILN_BENCH_PORT:-18281}"
seconds="${1:-10}"
clients="${2:-50}"
shift $(( $# > 2 ? 2 : $# ))
counts=("$@")
[[ ${#counts[@]} -gt 0 ]] || counts=(1 2 4)
[[ -x "$kiln" ]] || { echo "engines.sh: $kiln is missing: cargo build --release -p kiln" >&2; exit 1; }
[[ -f "$wasm" ]] || { echo "engines.sh: $wasm is missing: scripts/build-plugins.sh --with-test-plugins" >&2; exit 1; }
admin="${KILN_BENCH_POSTGRES_URL:-$("$repo/scripts/start-postgres.sh" | tail -1)}"

pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

for n in "${counts[@]}"; do
    ws="$(mktemp -d /tmp/kiln-engines-bench.XXXXXX)"
    mkdir -p "$ws/.kiln/plugins" "$ws/configs" "$ws/workflows"
    cp "$wasm" "$ws/.kiln/plugins/hostile.wasm"
    printf 'defaults: {memory_mb: 256, cpu_seconds_per_call: 10}\nplugins: {}\n' > "$ws/configs/plugins.yaml"
    cat > "$ws/workflows/three.yaml" <<'YAML'
name: three
steps:
  - {id: a, uses: hostile, action: ok}
  - {id: b, uses: hostile, action: ok, needs: [a]}
  - {id: c, uses: hostile, action: ok, needs: [b]}
YAML
    cat > "$ws/workflows/labelled.yaml" <<'YAML'
name: labelled
steps:
  - {id: a, uses: hostile, action: ok, runs_on: {pool: bench}}
  - {id: b, uses: hostile, action: ok, needs: [a]}
  - {id: c, uses: hostile, action: ok, needs: [b]}
YAML
    db="kiln_engines_bench_$$_$n"
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    export KILN_DATABASE_URL="${admin%/*}/$db"
    export KILN_WORKSPACE="$ws" KILN_CACHE_DIR="$ws/.kiln/cache"
    unset KILN_PLUGINS_DIR KILN_LOG
    token="$("$kiln" token create --name bench --roles admin 2>/dev/null)"
    urls=()
    for i in $(seq 0 $((n - 1))); do
        p=$((port + i))
        label=()
        [[ $i -eq $((n - 1)) ]] && label=(--label pool=bench)
        "$kiln" serve --addr "127.0.0.1:$p" --max-parallel 64 --max-connections 512 "${label[@]}" \
            2>"$ws/serve-$i.log" &
        pids+=($!)
        urls+=("http://127.0.0.1:$p/api/v1")
    done
    for u in "${urls[@]}"; do
        for _ in $(seq 200); do curl -s -o /dev/null "$u/openapi.json" && break; sleep 0.1; done
    done
    echo "engines.sh: $n engine(s), workspace $ws, database $db, load $(cut -d' ' -f1 /proc/loadavg)" >&2
    joined="$(IFS=,; echo "${urls[*]}")"
    python3 "$repo/benches/serve-load.py" "$joined" "$token" three "$seconds" "$clients" \
        | sed "s/^{/{\"engines\": $n, /"
    # Claims: 200 runs queued through the first engine for the labelled (last) one.
    python3 - "${urls[0]}" "$token" "$n" <<'PY'
import http.client, json, sys, time, urllib.parse
base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
ids, t0 = [], time.perf_counter()
for _ in range(200):
    conn.request("POST", u.path + "/runs", body=json.dumps({"workflow": "labelled"}), headers=h)
    r = conn.getresponse(); body = r.read()
    if r.status != 201:
        raise SystemExit(f"POST /runs answered {r.status}: {body[:200]!r}")
    ids.append(json.loads(body)["id"])
for i in ids:
    while True:
        conn.request("GET", f"{u.path}/runs/{i}?wait=60", headers=h)
        r = conn.getresponse(); run = json.loads(r.read())
        if run["status"] == "succeeded":
            break
        if run["status"] in ("failed", "cancelled"):
            raise SystemExit(f"run {i} {run['status']}: {run.get('error_message')}")
elapsed = time.perf_counter() - t0
print(json.dumps({"engines": n, "phase": "claimed by the labelled engine", "runs": len(ids),
                  "claims_per_s": round(len(ids) / elapsed, 1)}), flush=True)
PY
    stop_all
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null || true
done
