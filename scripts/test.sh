#!/usr/bin/env bash
# Runs every test of provisioner. This is the test command of README.md and of .ci/run.
#
# Everything a test needs is started here: today the catalog tests need nothing but Rust and
# git; the store's PostgreSQL server will be started by this script too when it arrives.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v git >/dev/null || { echo "scripts/test.sh: git is required (catalog tests use it)" >&2; exit 2; }

cargo test --locked "$@"
