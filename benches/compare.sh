#!/usr/bin/env bash
# Kiln against the Dagster peer on the peers' scenarios, in one invocation: Kiln, then Dagster,
# then Kiln again (bracketing the peer, so drift of the machine between them shows), then a table
# of medians and ratios with the load average of each pass.
#
# usage: benches/compare.sh            (about 10 minutes; the first run also installs Dagster)
#
# Environment:
#   KILN_PEERS_DIR       the peers' scripts (default ../shared/peers beside the repository)
#   KILN_COMPARE_BACKEND Dagster backend: sqlite (default; durable SQLite storage, like Kiln) or
#                        ephemeral (in-memory, nothing stored)
#   PEERS_RUNS           timed runs per scenario and engine (default 5)
#   PEERS_DIR            the peers' scratch folder (venvs, homes, lock; default /tmp/peers)
# and those of benches/whole-process.sh (KILN_BIN, KILN_BENCH_WASM, ...).
#
# Prerequisites: `cargo build --release -p kiln` and `scripts/build-plugins.sh --with-test-plugins`.
# Prints the JSON lines of every pass to $out/*.jsonl (the folder is named on stderr) and the
# table on stdout. Nothing here asserts on time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
peers="${KILN_PEERS_DIR:-$repo/../shared/peers}"
backend="${KILN_COMPARE_BACKEND:-sqlite}"
[[ -x "$peers/dagster/run.sh" ]] || {
    echo "compare.sh: no Dagster peer at $peers/dagster/run.sh (set KILN_PEERS_DIR)" >&2
    exit 1
}
out="$(mktemp -d /tmp/kiln-compare.XXXXXX)"
echo "compare.sh: results in $out" >&2
scenarios=(one chain5 chain50 fanout100 spawn5)
export KILN_BENCH_RUNS="${PEERS_RUNS:-5}"

echo "== kiln (1/2)" >&2
"$repo/benches/whole-process.sh" "${scenarios[@]}" > "$out/kiln-1.jsonl"
echo "== dagster ($backend; its cold passes are whole processes like kiln run)" >&2
PEERS_SCENARIOS=chain5,chain50,fanout100,spawn5 "$peers/dagster/run.sh" "$backend" > "$out/dagster.jsonl"
echo "== kiln (2/2)" >&2
"$repo/benches/whole-process.sh" "${scenarios[@]}" > "$out/kiln-2.jsonl"

python3 - "$out" "$backend" <<'EOF'
import json, sys, os
out, backend = sys.argv[1], sys.argv[2]
def load(name):
    with open(os.path.join(out, name)) as f:
        return [json.loads(l) for l in f if l.strip()]
k1, k2, dg = load("kiln-1.jsonl"), load("kiln-2.jsonl"), load("dagster.jsonl")
def kiln(rows, s):
    return next((r for r in rows if r["scenario"] == s), None)
peer_name = {"one": "empty"}
modes = [m for m in (f"process/{backend}", f"in-process/{backend}") if any(r.get("mode") == m for r in dg)]
print(f"Kiln (whole process, durable SQLite) vs Dagster {backend}: medians in ms; ratio = Dagster / Kiln")
print(f"load1: kiln pass 1 {k1[0]['load1']}, dagster {dg[-1].get('load1')}, kiln pass 2 {k2[0]['load1']}")
head = "| scenario | kiln 1 | kiln 2 | " + " | ".join(f"dagster {m} | ratio" for m in modes) + " |"
print(head)
print("|" + "---|" * (3 + 2 * len(modes)))
for s in ["one", "chain5", "chain50", "fanout100", "spawn5"]:
    a, b = kiln(k1, s), kiln(k2, s)
    if not a or not b:
        continue
    ka, kb = a["median_s"] * 1000, b["median_s"] * 1000
    cells = [s, f"{ka:.1f}", f"{kb:.1f}"]
    for m in modes:
        d = next((r for r in dg if r.get("mode") == m and r["scenario"] == peer_name.get(s, s)), None)
        if d is None:
            cells += ["-", "-"]
        else:
            dm = d["median_s"] * 1000
            cells += [f"{dm:.1f}", f"{dm / ((ka + kb) / 2):.0f}x"]
    print("| " + " | ".join(cells) + " |")
print("(`one` is compared with the peers' `empty`: a Kiln workflow needs a step, so it does more.)")
EOF
