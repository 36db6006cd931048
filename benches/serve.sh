#!/usr/bin/env bash
# Runs triggered over HTTP: a real `kiln serve` (release build, durable SQLite) with a 3-step
# no-op workflow; benches/serve-load.py triggers runs and follows each until it is durably
# `succeeded`, first one at a time, then with many clients. Prints JSON lines.
#
# usage: benches/serve.sh [SECONDS] [CLIENTS]      (defaults: 10 s per phase, 50 clients)
#
# Prerequisites: `cargo build --release -p kiln` and `scripts/build-plugins.sh --with-test-plugins`.
# Environment: KILN_BIN, KILN_BENCH_WASM (as for whole-process.sh), KILN_BENCH_PORT (default 18181).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN_BIN:-$repo/target/release/kiln}"
wasm="${KILN_BENCH_WASM:-$repo/target/wasm32-wasip2/plugin/kiln_test_hostile.wasm}"
port="${KILN_BENCH_PORT:-18181}"
seconds="${1:-10}"
clients="${2:-50}"
[[ -x "$kiln" ]] || { echo "serve.sh: $kiln is missing: cargo build --release -p kiln" >&2; exit 1; }
[[ -f "$wasm" ]] || { echo "serve.sh: $wasm is missing: scripts/build-plugins.sh --with-test-plugins" >&2; exit 1; }

ws="$(mktemp -d /tmp/kiln-serve-bench.XXXXXX)"
mkdir -p "$ws/.kiln/plugins" "$ws/configs" "$ws/workflows"
cp "$wasm" "$ws/.kiln/plugins/hostile.wasm"
printf 'defaults: {memory_mb: 256, cpu_seconds_per_call: 10}\nplugins: {}\n' > "$ws/configs/plugins.yaml"
cat > "$ws/workflows/three.yaml" <<'EOF'
name: three
steps:
  - {id: a, uses: hostile, action: ok}
  - {id: b, uses: hostile, action: ok, needs: [a]}
  - {id: c, uses: hostile, action: ok, needs: [b]}
EOF
export KILN_WORKSPACE="$ws" KILN_CACHE_DIR="$ws/.kiln/cache"
unset KILN_DATABASE_URL KILN_PLUGINS_DIR KILN_LOG
token="$("$kiln" token create --name bench --roles admin 2>/dev/null)"
"$kiln" serve --addr "127.0.0.1:$port" --max-parallel 64 --max-connections 512 2>"$ws/serve.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/openapi.json" && break
    sleep 0.1
done
echo "serve.sh: workspace $ws, $seconds s per phase, $clients clients, load $(cut -d' ' -f1 /proc/loadavg)" >&2
python3 "$repo/benches/serve-load.py" "http://127.0.0.1:$port/api/v1" "$token" three "$seconds" "$clients"
# The server's memory after both phases: resident now and at its peak.
awk '/^VmRSS|^VmHWM/ {kb[$1] = $2} END {printf "{\"phase\": \"server memory\", \"rss_mb\": %.1f, \"peak_rss_mb\": %.1f}\n", kb["VmRSS:"] / 1024, kb["VmHWM:"] / 1024}' "/proc/$server/status"
