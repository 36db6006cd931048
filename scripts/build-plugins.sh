#!/usr/bin/env bash
# Build the plugin components (wasm32-wasip2) and install them into the workspace's plugin dir.
# usage: scripts/build-plugins.sh [--with-test-plugins]
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
packages=(-p kiln-plugin-ultralytics -p kiln-plugin-mmdetection)
[[ "${1:-}" == "--with-test-plugins" ]] && packages+=(-p kiln-test-hostile)
cargo build --target wasm32-wasip2 --profile plugin "${packages[@]}"
dest="${KILN_PLUGINS_DIR:-.kiln/plugins}"
mkdir -p "$dest"
cp target/wasm32-wasip2/plugin/kiln_plugin_ultralytics.wasm "$dest/ultralytics.wasm"
cp target/wasm32-wasip2/plugin/kiln_plugin_mmdetection.wasm "$dest/mmdetection.wasm"
echo "installed plugins in $dest: $(ls "$dest" | tr '\n' ' ')"
