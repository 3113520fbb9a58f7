#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (gpg, a Garage S3
# server built from crates.io and cached), starts Garage on loopback, then runs formatting and
# lint checks and every test with the S3 tests required (a missing server fails, never skips).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gpg >/dev/null || need_apt+=(gnupg)
command -v tar >/dev/null || need_apt+=(tar)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

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

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked
