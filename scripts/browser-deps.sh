#!/usr/bin/env bash
# What the web monitor's browser test needs (tests/web_monitor.rs): Debian's Chromium (no browser
# is downloaded; installed with apt when /usr/bin/chromium is missing, which needs root) and
# playwright-core at the version of tests/browser/package-lock.json (npm ci). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x "${KILN_CHROMIUM:-/usr/bin/chromium}" ]]; then
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    echo "installing Debian's chromium" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi
want="$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')"
have="$(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version' 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    (cd tests/browser && npm ci --no-audit --no-fund >&2)
fi
