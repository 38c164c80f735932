#!/usr/bin/env bash
# Runs every test of provisioner: the README's test command, and what .ci/run calls.
#
# The store's contract suite runs against SQLite (a temporary file) and PostgreSQL; a
# throwaway PostgreSQL server is started for it unless TEST_DATABASE_URL names one (see
# scripts/with-postgres.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v git >/dev/null || { echo "scripts/test.sh: git is required (catalog tests use it)" >&2; exit 2; }

bash scripts/with-postgres.sh cargo test --locked "$@"
