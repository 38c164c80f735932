#!/usr/bin/env bash
# Runs every test of provisioner: the README's test command, and what .ci/run calls.
#
# The store's contract suite runs against SQLite (a temporary file) and PostgreSQL; a
# throwaway PostgreSQL server is started for it unless TEST_DATABASE_URL names one (see
# scripts/with-postgres.sh). The console's browser test needs Chromium and ChromeDriver,
# installed here from Debian's packages when missing. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v git >/dev/null || { echo "scripts/test.sh: git is required (catalog tests use it)" >&2; exit 2; }

# The console's browser test drives Debian's Chromium through ChromeDriver; install both when
# they are missing and this user can (CI runs as root). Without them the test is skipped
# outside CI and fails in CI.
if ! command -v chromedriver >/dev/null && [ ! -x /usr/lib/chromium/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q chromium chromium-driver
    else
        echo "scripts/test.sh: chromium and chromium-driver are not installed; the browser test will be skipped" >&2
    fi
fi

bash scripts/with-postgres.sh cargo test --locked "$@"
