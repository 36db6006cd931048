#!/usr/bin/env bash
# Install a CPU MMDetection 3.3.0 into a Python virtual environment, from PyPI only: the recipe
# the real trainer was run with (torch 2.1.2, mmengine 0.10.7, mmcv 2.1.0 compiled with its CPU
# ops, mmdet 3.3.0). The workspace's `.venv/bin/python` is what the mmdetection plugin launches,
# so point the workspace's .venv at it (or install into .venv itself if it holds nothing else:
# Ultralytics wants a newer torch, so keep the two apart).
#
# usage: scripts/install-mmdetection.sh [VENV_DIR] [WHEEL_DIR]
#   VENV_DIR   default .venv-mmdet (idempotent: an install that already works is kept)
#   WHEEL_DIR  default ${XDG_CACHE_HOME:-~/.cache}/kiln/wheels, outside the checkout: the mmcv
#              wheel compiled once (~13 min on 2 cores) is reused by the next install (~2 min)
# then, e.g. for a workspace without Ultralytics:  ln -s .venv-mmdet .venv
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-mmdet}"
wheels="${2:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/kiln/wheels}"
check='import mmdet, mmcv, mmengine, torch; print("mmdet", mmdet.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "torch", torch.__version__)'
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    exit 0
fi
# What the recipe needs from the machine, said up front rather than after minutes of pip.
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 11) else 1)' || {
    echo "install-mmdetection.sh: torch 2.1.2 has wheels for Python 3.8-3.11 only; $("$py" --version 2>&1) found (set PYTHON=python3.11)" >&2
    exit 1
}
command -v g++ >/dev/null || { echo "install-mmdetection.sh: mmcv's ops are compiled: install g++ (Debian: build-essential)" >&2; exit 1; }
"$py" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' || {
    echo "install-mmdetection.sh: Python's headers are missing (Debian: python3-dev)" >&2
    exit 1
}
"$py" -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("GL") else 1)' || {
    echo "install-mmdetection.sh: OpenCV (which mmcv imports) needs libGL (Debian: libgl1)" >&2
    exit 1
}
"$py" -m venv "$venv"
venv="$(cd "$venv" && pwd)"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# torch 2.1's ABI is what mmcv is compiled against; numpy 2 breaks torch 2.1, and an
# opencv-python >= 4.11 would pull numpy 2 in.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'numpy<2\nopencv-python<4.11\ntorch==2.1.2\ntorchvision==0.16.2\n' > "$constraints"
"${pip[@]}" install -c "$constraints" torch==2.1.2 torchvision==0.16.2 "numpy<2"
"${pip[@]}" install -c "$constraints" mmengine==0.10.7 "opencv-python<4.11" setuptools wheel ninja psutil pycocotools
mkdir -p "$wheels"
tag="$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
if ! ls "$wheels"/mmcv-2.1.0-"$tag"-*.whl >/dev/null 2>&1; then
    # mmcv's setup.py imports torch (no build isolation) and defaults to 4 jobs.
    # The venv's bin first: torch's extension builder looks for ninja (installed there) on PATH.
    PATH="$venv/bin:$PATH" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
        CFLAGS="${MMCV_CFLAGS:--O1 -g0}" \
        "${pip[@]}" wheel --no-build-isolation --no-deps mmcv==2.1.0 -w "$wheels"
fi
"${pip[@]}" install -c "$constraints" "$wheels"/mmcv-2.1.0-"$tag"-*.whl mmdet==3.3.0
"$venv/bin/python" -c "$check"
