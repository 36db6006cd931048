#!/usr/bin/env bash
# Schemathesis with all its checks against the served OpenAPI document of a real `kiln serve`
# (SQLite, an admin token), in a throwaway workspace: the workflows of workflows/, the built
# plugins, the demo release, and the stand-in `yolo` of tests/fixtures/bin on PATH, so whatever
# runs Schemathesis triggers finish fast and touch nothing outside the workspace. Exits non-zero
# on any failure. Settings: scripts/schemathesis.toml (docs/api.md says why each is there).
#
#   KILN_SCHEMATHESIS_EXAMPLES  test cases per operation and phase (default 60)
#   KILN_SCHEMATHESIS_SEED      the seed (default 1, so CI is reproducible; `random` for a new one)
#   KILN_SCHEMATHESIS_VENV      where Schemathesis is installed (default target/schemathesis-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
examples="${KILN_SCHEMATHESIS_EXAMPLES:-60}"
seed="${KILN_SCHEMATHESIS_SEED:-1}"
venv="${KILN_SCHEMATHESIS_VENV:-$repo/target/schemathesis-venv}"
requirement='schemathesis>=4.32,<5'

if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "installing $requirement into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement"
fi
echo "$("$venv/bin/schemathesis" --version)"

cargo build --quiet -p kiln
kiln="$repo/target/debug/kiln"
wasm="$repo/target/wasm32-wasip2/plugin/kiln_plugin_ultralytics.wasm"
[[ -f "$wasm" ]] || scripts/build-plugins.sh

ws="$(mktemp -d -t kiln-schemathesis.XXXXXX)"
server=""
cleanup() {
  if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
  fi
  # Programs of the runs Schemathesis triggered: their supervisors outlive the server, and
  # their command lines name the throwaway workspace.
  for cmdline in /proc/[0-9]*/cmdline; do
    pid="${cmdline#/proc/}"; pid="${pid%/cmdline}"
    if [[ "$pid" != "$$" ]] && tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -qF -- "$ws"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$ws"
}
trap cleanup EXIT

mkdir -p "$ws/workflows" "$ws/projects/demo/releases" "$ws/.kiln/plugins"
cp workflows/*.yaml "$ws/workflows/"
cp -r configs "$ws/configs"
cp workflows/data/demo-release.zip "$ws/projects/demo/releases/"
cp "$wasm" "$ws/.kiln/plugins/ultralytics.wasm"
export KILN_WORKSPACE="$ws"
export KILN_PLUGINS_DIR="$ws/.kiln/plugins"
export KILN_CACHE_DIR="$repo/target/kiln-test-cache"
export PATH="$repo/tests/fixtures/bin:$PATH"
export FAKE_YOLO_EPOCH_SECONDS=0.05
unset KILN_DATABASE_URL

token="$("$kiln" token create --name schemathesis --roles admin)"
log="$ws/serve.log"
"$kiln" serve --addr 127.0.0.1:0 --kill-grace-secs 2 2>"$log" >/dev/null &
server=$!
base=""
for _ in $(seq 600); do
  base="$(sed -n 's|^kiln API listening on \(http://[^ ]*/api/v1\).*|\1|p' "$log")"
  [[ -n "$base" ]] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "kiln serve exited" >&2; exit 1; }
  sleep 0.2
done
[[ -n "$base" ]] || { cat "$log"; echo "kiln serve did not start" >&2; exit 1; }
echo "kiln serve at $base (workspace $ws)"

# Real records for the operations that take ids (scripts/schemathesis.toml pins them), so those
# are tested beyond 404: a succeeded run with its registered model, a failed run to retry and
# another to delete.
records="$(KILN_BASE="$base" KILN_TOKEN="$token" python3 - <<'PY'
import json, os, time, urllib.request
base, token = os.environ["KILN_BASE"], os.environ["KILN_TOKEN"]
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)
def run(training, release):
    params = {"project": "demo", "release": release, "training_name": training,
              "overrides": {"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu"}}
    rid = call("POST", "/runs", {"workflow": "ultralytics-detect", "params": params})["id"]
    for _ in range(1200):
        status = call("GET", "/runs/" + rid)["status"]
        if status in ("succeeded", "failed", "cancelled"):
            return rid, status
        time.sleep(0.1)
    raise SystemExit(f"run {rid} did not finish")
ok, status = run("st-seed", "demo-release.zip")
assert status == "succeeded", f"the seed run {ok} {status}"
failed, _ = run("st-failed", "missing.zip")
doomed, _ = run("st-doomed", "missing.zip")
model = next(m["id"] for m in call("GET", "/models?project=demo") if m["training_run_id"] == ok)
print(f"export KILN_ST_RUN={ok} KILN_ST_FAILED={failed} KILN_ST_DOOMED={doomed} KILN_ST_MODEL={model}")
PY
)" || { echo "could not create the records Schemathesis needs" >&2; tail -n 30 "$log"; exit 1; }
eval "$records"
echo "records: run $KILN_ST_RUN, failed run $KILN_ST_FAILED, run to delete $KILN_ST_DOOMED, model $KILN_ST_MODEL"

seed_args=(--seed "$seed")
[[ "$seed" == random ]] && seed_args=()
status=0
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks all \
  --max-examples "$examples" \
  "${seed_args[@]}" \
  --workers 2 \
  --request-timeout 60 \
  --no-color "$@" || status=$?
if [[ $status -ne 0 ]]; then
  echo "--- kiln serve log (errors) ---"
  grep -E "ERROR|WARN" "$log" | tail -n 50 || true
  echo "Schemathesis found failures (exit $status)" >&2
fi
exit $status
