#!/usr/bin/env bash
# A Python with MMEngine and MMDetection's configs, for the tests of the mmdetection plugin's
# resolve-config (MMEngine resolves the configs; neither torch nor mmcv is needed for that, so
# mmdet is installed without its dependencies). Prints the python's path. Idempotent.
# usage: scripts/mmdet-venv.sh            (about 20 s the first time; needs PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="target/mmdet-venv"
if ! "$venv/bin/python" -c 'import mmengine.config, importlib.util as u; assert u.find_spec("mmdet")' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    # The pins of the real MMDetection 3.3.0 install (../shared/realclient/mmdetection/REPORT.md):
    # numpy 1 and an opencv built for it.
    "$venv/bin/pip" install -q --disable-pip-version-check mmengine==0.10.7 "numpy<2" "opencv-python-headless<4.11" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps mmdet==3.3.0 >&2
fi
echo "$PWD/$venv/bin/python"
