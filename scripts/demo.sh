#!/usr/bin/env bash
# Train a real (tiny) YOLO detector through Kiln on CPU, end to end, on a fresh machine:
# installs ultralytics into .venv when no `yolo` is found, builds kiln and its plugins, runs
# workflows/ultralytics-detect.yaml on the shipped demo release, and lists the registered model.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v yolo >/dev/null 2>&1 && [[ ! -x .venv/bin/yolo ]]; then
  echo "== no yolo found: installing ultralytics into .venv (about 100 s, 6 GB)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check ultralytics
fi

echo "== building kiln and its plugins"
cargo build -p kiln
scripts/build-plugins.sh

mkdir -p projects/demo/releases
cp workflows/data/demo-release.zip projects/demo/releases/demo-release.zip

training="demo-$(date +%Y%m%d-%H%M%S)"
echo "== training $training (2 epochs at 64 px on CPU)"
# Developer mode because `workers` is not among the user-mode keys; 0 keeps the demo in one process.
./target/debug/kiln run workflows/ultralytics-detect.yaml \
  --param project=demo \
  --param release=demo-release.zip \
  --param training_name="$training" \
  --param mode=developer \
  --param overrides='{epochs: 2, imgsz: 64, batch: 4, device: cpu, workers: 0}'

echo "== registered models"
./target/debug/kiln models list --project demo
