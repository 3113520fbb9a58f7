#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (gpg, a Garage S3
# server built from crates.io and cached), starts Garage on loopback, then runs formatting and
# lint checks, every test with the S3 and PostgreSQL tests required (a missing server fails,
# never skips), the end-to-end test against a real Synapse, and the Debian package's install test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gpg >/dev/null || need_apt+=(gnupg)
command -v tar >/dev/null || need_apt+=(tar)
command -v pg_dump >/dev/null || need_apt+=(postgresql-client)
# The monitoring test has the real node_exporter parse the textfile.
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
# The packaging test runs systemd-analyze verify on the units.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The package test looks the man page up with man -w.
command -v man >/dev/null || need_apt+=(man-db)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export SYNAPSE_BACKUP_REQUIRE_NODE_EXPORTER=1 SYNAPSE_BACKUP_REQUIRE_SYSTEMD=1

# The machine's PostgreSQL (started before the session on this kind of machine; start it if it
# stopped). The PostgreSQL tests use it through PG* or 127.0.0.1:5432 as user postgres.
if ! pg_isready -q -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
fi
export SYNAPSE_BACKUP_REQUIRE_POSTGRES=1

work=$(mktemp -d)
cleanup() {
    scripts/s3-test-server.sh stop "$work/garage" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

env_file=$(scripts/s3-test-server.sh start "$work/garage" | tail -n1)
# shellcheck disable=SC1090
. "$env_file"
export SYNAPSE_BACKUP_REQUIRE_S3=1

# The library's modules never import each other in a cycle (docs/design.md, "Where things live").
python3 scripts/check-module-cycles.py
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked

# End to end against a real Synapse from PyPI (SQLite and PostgreSQL, and a charm backup).
bash scripts/e2e-synapse.sh

# The Debian package, built with cargo-deb and installed, run and purged with dpkg.
bash scripts/package-test.sh
