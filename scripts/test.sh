#!/usr/bin/env bash
# Run the whole test suite: build the plugin components (the integration tests load the real
# wasm), then every crate's tests, which drive the real kiln binary against real SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh --with-test-plugins
tests/fixtures/bin/selftest.sh
cargo test --workspace
