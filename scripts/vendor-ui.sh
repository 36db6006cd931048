#!/usr/bin/env bash
# Refresh the web monitor's vendored libraries (engine/server/ui/vendor/) from the npm registry,
# at the exact versions of engine/server/ui-vendor/package-lock.json. The files are committed:
# building kiln needs neither Node.js nor npm; run this only to change a library's version
# (edit package.json, run `npm install` there, then this script) or to check the committed files
# (`scripts/vendor-ui.sh --check` fails when they differ from what the lock file names).
set -euo pipefail
cd "$(dirname "$0")/.."
src=engine/server/ui-vendor
out=engine/server/ui/vendor
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$src/package.json" "$src/package-lock.json" "$tmp/"
(cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts >&2)
mkdir -p "$tmp/vendor"
cp "$tmp/node_modules/uplot/dist/uPlot.esm.js" "$tmp/vendor/uplot.mjs"
cp "$tmp/node_modules/uplot/dist/uPlot.min.css" "$tmp/vendor/uplot.css"
cp "$tmp/node_modules/uplot/LICENSE" "$tmp/vendor/uplot.LICENSE"
cp "$tmp/node_modules/cytoscape/dist/cytoscape.esm.min.mjs" "$tmp/vendor/cytoscape.mjs"
cp "$tmp/node_modules/cytoscape/LICENSE" "$tmp/vendor/cytoscape.LICENSE"
if [[ "${1:-}" == --check ]]; then
    diff -r "$tmp/vendor" "$out" && echo "engine/server/ui/vendor matches package-lock.json"
else
    rm -rf "$out" && mkdir -p "$(dirname "$out")"
    cp -r "$tmp/vendor" "$out"
    echo "vendored into $out:" && ls -l "$out"
fi
