#!/usr/bin/env bash
# Run the whole test suite: build the plugin components (the integration tests load the real
# wasm), then every crate's tests, which drive the real kiln binary against real SQLite, and
# against PostgreSQL too when one can be started (KILN_TEST_POSTGRES=off skips it; an existing
# server is used when KILN_TEST_POSTGRES_URL is set), and the mmdetection plugin's config
# resolution against a real MMEngine (scripts/mmdet-venv.sh), and the web monitor in headless
# Chromium (scripts/browser-deps.sh installs Debian's chromium and playwright-core;
# KILN_TEST_BROWSER=0 skips it); then Schemathesis against a real `kiln serve`
# (scripts/schemathesis.sh; it installs Schemathesis from PyPI into target/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh --with-test-plugins
tests/fixtures/bin/selftest.sh
if [[ -z "${KILN_TEST_POSTGRES_URL:-}" && "${KILN_TEST_POSTGRES:-auto}" != off ]]; then
  if url="$(scripts/start-postgres.sh)"; then
    export KILN_TEST_POSTGRES_URL="$url"
    echo "PostgreSQL tests against $url"
  else
    echo "PostgreSQL could not be started: its test variants are skipped"
  fi
fi
# Trainings as Slurm jobs: a one-node cluster on 127.0.0.1 (KILN_TEST_SLURM=off skips it; an
# existing one is used when KILN_TEST_SLURM_CONF names its slurm.conf).
if [[ -z "${KILN_TEST_SLURM_CONF:-}" && "${KILN_TEST_SLURM:-auto}" != off ]]; then
  if conf="$(scripts/start-slurm.sh)"; then
    export KILN_TEST_SLURM_CONF="$conf"
    echo "Slurm tests against $conf"
  else
    echo "Slurm could not be started: its tests are skipped"
  fi
fi
if [[ -z "${KILN_TEST_MMDET_PYTHON:-}" ]]; then
  KILN_TEST_MMDET_PYTHON="$(scripts/mmdet-venv.sh)"
  export KILN_TEST_MMDET_PYTHON
fi
# The web monitor's browser test: Debian's Chromium and playwright-core (scripts/browser-deps.sh).
if [[ "${KILN_TEST_BROWSER:-1}" != 0 ]]; then
  scripts/browser-deps.sh
  export KILN_TEST_BROWSER=1
else
  unset KILN_TEST_BROWSER
fi
cargo test --workspace
scripts/schemathesis.sh
