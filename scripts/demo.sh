#!/usr/bin/env bash
# Train a real tiny detector through Kiln on CPU, end to end, on a fresh machine, and list the
# registered model.
#
#   scripts/demo.sh               Ultralytics YOLO: installs ultralytics into .venv when no `yolo`
#                                 is found (about 100 s, 6 GB), runs workflows/ultralytics-detect.yaml
#                                 on the shipped YOLO release.
#   scripts/demo.sh mmdetection   MMDetection 3.3.0: installs it into .venv-mmdet
#                                 (scripts/install-mmdetection.sh: ~17 min the first time, most of it
#                                 compiling mmcv, whose wheel is cached in ~/.cache/kiln/wheels), runs
#                                 workflows/mmdetection-detect.yaml on the shipped COCO release in the
#                                 workspace target/demo-mmdetection/ (its .venv is .venv-mmdet: the
#                                 two frameworks want different torch versions).
set -euo pipefail
cd "$(dirname "$0")/.."
framework="${1:-ultralytics}"

case "$framework" in
ultralytics)
  if ! command -v yolo >/dev/null 2>&1 && [[ ! -x .venv/bin/yolo ]]; then
    echo "== no yolo found: installing ultralytics into .venv (about 100 s, 6 GB)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check ultralytics
  fi
  ;;
mmdetection)
  echo "== installing MMDetection into .venv-mmdet (kept when it already works)"
  scripts/install-mmdetection.sh .venv-mmdet
  ;;
*)
  echo "usage: scripts/demo.sh [ultralytics|mmdetection]" >&2
  exit 2
  ;;
esac

echo "== building kiln and its plugins"
cargo build -p kiln
scripts/build-plugins.sh

training="demo-$(date +%Y%m%d-%H%M%S)"
if [[ "$framework" == ultralytics ]]; then
  mkdir -p projects/demo/releases
  cp workflows/data/demo-release.zip projects/demo/releases/demo-release.zip
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
else
  ws=target/demo-mmdetection
  mkdir -p "$ws/projects/demo/releases" "$ws/configs"
  rm -rf "$ws/configs/mmdetection"
  cp -r configs/mmdetection "$ws/configs/"
  cp configs/plugins.yaml "$ws/configs/"
  cp workflows/data/demo-coco-release.zip "$ws/projects/demo/releases/"
  ln -sfn "$PWD/.venv-mmdet" "$ws/.venv"
  export KILN_PLUGINS_DIR="$PWD/.kiln/plugins"
  echo "== training $training (the tiny RetinaNet, 2 epochs on CPU) in $ws"
  ./target/debug/kiln --workspace "$ws" run workflows/mmdetection-detect.yaml \
    --param project=demo \
    --param release=demo-coco-release.zip \
    --param training_name="$training" \
    --param overrides='{epochs: 2, device: cpu}'
  echo "== registered models"
  ./target/debug/kiln --workspace "$ws" models list --project demo
fi
