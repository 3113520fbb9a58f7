#!/usr/bin/env bash
# End-to-end test against a real Matrix Synapse: back up a live homeserver (SQLite, then
# PostgreSQL when a server answers on 127.0.0.1:5432), destroy it, restore onto a fresh config
# in another directory, start Synapse again and check through the client API that accounts,
# messages, media and the signing key survived. Also restores a backup made the way the Synapse
# charm makes them (tar | gpg --symmetric).
#
# Media storage providers (Synapse's media_storage_providers): the real synapse-s3-storage-provider
# from PyPI against a loopback Garage (its own bucket and key), with its s3_media_upload script
# offloading local copies, and Synapse's file-system provider.
#
# The scenarios are pytest tests (tests/e2e/test_synapse.py, fixtures in tests/e2e/conftest.py:
# test_sqlite, test_postgresql, test_charm, test_debian, test_s3provider, test_fileprovider), run
# with the venv's Python; each makes many named checks, counted over the run.
#
# Usage: scripts/e2e-synapse.sh [WORKDIR] [PYTEST-ARGS...]
#   WORKDIR        default: a new temp dir, removed on success (an argument starting with `-`
#                  is not a WORKDIR: it and the rest go to pytest)
#   PYTEST-ARGS    passed on to pytest, e.g. `-k sqlite` to run one scenario:
#                      scripts/e2e-synapse.sh /tmp/e2e -k sqlite
#                      scripts/e2e-synapse.sh -k 'debian or charm'
# Prints pytest's output, the E2E-TIMING lines, and ends with `N passed, M failed` (the checks);
# exits non-zero when any check, or pytest, failed.
# Environment:
#   SYNAPSE_BACKUP_TOOLS            cache dir (default ~/.cache/synapse-backup-tools); the Synapse
#                                   virtualenv (with pytest) is kept in its synapse-venv/
#   SYNAPSE_BACKUP_REQUIRE_POSTGRES=1  fail instead of skipping when no PostgreSQL answers
#   S3_TEST_*                       a running test Garage (scripts/s3-test-server.sh's env file)
#                                   for the S3 provider scenario; without one, this script starts
#                                   its own when the garage binary is already built (or
#                                   SYNAPSE_BACKUP_REQUIRE_S3=1, which builds it), else that
#                                   scenario is skipped
#   SYNAPSE_BACKUP_REQUIRE_S3=1     fail instead of skipping when no Garage is available
#   SYNAPSE_E2E_KEEP=1              keep the work dir even on success
#   SYNAPSE_E2E_TIMEOUT             bound on the scenarios in seconds (default 1800)
#   SYNAPSE_E2E_SYNAPSE             pip requirement for Synapse when the venv is made
#                                   (default matrix-synapse, the newest)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools=${SYNAPSE_BACKUP_TOOLS:-$HOME/.cache/synapse-backup-tools}
venv=$tools/synapse-venv
started=$(date +%s)

log() { echo "e2e-synapse: $*" >&2; }

if [ -n "${1:-}" ] && [ "${1#-}" = "$1" ]; then
    work=$1
    shift
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    remove_work=0
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/synapse-e2e.XXXXXX")
    remove_work=1
fi
[ "${SYNAPSE_E2E_KEEP:-0}" = 1 ] && remove_work=0
pytest_args=("$@")
# Every Synapse is started (and stopped) by the Python test; it writes each pid it starts into
# this file, so that whatever happens to the test, the trap below stops them all.
pids_file=$work/synapse-pids
: > "$pids_file"
rm -f "$work/summary"
test_pid=
own_garage=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$test_pid" ] && kill -0 "$test_pid" 2>/dev/null; then
        kill -TERM "$test_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$test_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$test_pid" 2>/dev/null || true
    fi
    if [ -s "$pids_file" ]; then
        while read -r pid; do
            [ -n "$pid" ] || continue
            if kill -0 "$pid" 2>/dev/null; then
                log "stopping Synapse pid $pid"
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done < "$pids_file"
    fi
    if [ -n "$own_garage" ]; then
        scripts/s3-test-server.sh stop "$own_garage" >/dev/null 2>&1 || log "could not stop the Garage in $own_garage"
    fi
    # The closing line counts the scenario checks (written by the test; one failure if the
    # run ended before the test could count).
    local summary="0 passed, 1 failed"
    if [ -s "$work/summary" ]; then
        summary=$(cat "$work/summary")
    fi
    case $summary in *" 0 failed") ;; *) [ "$rc" != 0 ] || rc=1 ;; esac
    if [ "$rc" = 0 ] && [ "$remove_work" = 1 ]; then
        rm -rf "$work"
    else
        log "work dir kept: $work"
    fi
    log "total $(( $(date +%s) - started ))s"
    echo
    echo "$summary"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The Synapse virtualenv, cached.
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import synapse, psycopg2, requests' 2>/dev/null; then
    log "reusing $venv ($("$venv/bin/python" -c 'import synapse; print(synapse.__version__)'))"
else
    log "creating $venv (matrix-synapse, psycopg2-binary from PyPI)"
    t0=$(date +%s)
    mkdir -p "$tools"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "${SYNAPSE_E2E_SYNAPSE:-matrix-synapse}" psycopg2-binary requests
    "$venv/bin/python" -c 'import synapse, psycopg2, requests'
    log "venv ready in $(( $(date +%s) - t0 ))s"
fi
# The S3 storage provider (with boto3 and its s3_media_upload script) in the same venv; a venv
# cached by an earlier version of this script lacks it.
if "$venv/bin/python" -c 'import s3_storage_provider, boto3' 2>/dev/null && [ -x "$venv/bin/s3_media_upload" ]; then
    log "reusing synapse-s3-storage-provider $("$venv/bin/pip" show synapse-s3-storage-provider 2>/dev/null | sed -n 's/^Version: //p')"
else
    log "installing synapse-s3-storage-provider from PyPI into $venv"
    # Its requirements first, but not its psycopg2: that is the source distribution (a C build
    # against libpq), and psycopg2-binary, already here, provides the same module.
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'boto3>=1.36.0,<2.0' 'botocore>=1.36.0,<2.0' 'humanize>=4.0,<5.0' 'tqdm>=4.26.0,<5.0'
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps synapse-s3-storage-provider
    "$venv/bin/python" -c 'import s3_storage_provider, boto3'
    [ -x "$venv/bin/s3_media_upload" ] || { log "synapse-s3-storage-provider installed no s3_media_upload script"; exit 1; }
fi

# pytest, which runs the scenarios, in the same venv; a venv cached by an earlier version of this
# script lacks it.
if "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
    log "reusing pytest $("$venv/bin/python" -c 'import pytest; print(pytest.__version__)')"
else
    log "installing pytest from PyPI into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check pytest
    "$venv/bin/python" -c 'import pytest'
fi

# Tools the test needs besides the venv.
for program in gpg tar; do
    command -v "$program" >/dev/null || { log "missing $program (apt-get install gnupg tar)"; exit 1; }
done

# A Garage for the S3 provider scenario, unless one is exported (scripts/test.sh starts one).
if [ -z "${S3_TEST_GARAGE_CONFIG:-}" ] || [ -z "${S3_TEST_ENDPOINT:-}" ]; then
    garage_bin=$(python3 -B -c 'import sys; sys.path.insert(0, "scripts"); import s3_test_server; print(s3_test_server.GARAGE_BIN)')
    if [ -x "$garage_bin" ] || [ "${SYNAPSE_BACKUP_REQUIRE_S3:-0}" = 1 ]; then
        own_garage=$work/garage
        log "starting a loopback Garage in $own_garage"
        env_file=$(scripts/s3-test-server.sh start "$own_garage" | tail -n1)
        # shellcheck disable=SC1090
        . "$env_file"
    else
        log "no Garage exported and none built ($garage_bin): the s3provider scenario will be skipped"
    fi
fi

# 2. The release binary.
log "cargo build --release --locked"
cargo build --release --locked -q
bin=$root/target/release/synapse-backup

# 3. The scenarios. A hard bound on the whole run: a hung Synapse must not hang CI. -s shows
# each check as it is made; -rs the reason of a skipped scenario; -B and no cacheprovider leave
# no __pycache__ or .pytest_cache in the tree.
timeout -s TERM "${SYNAPSE_E2E_TIMEOUT:-1800}" "$venv/bin/python" -u -B -m pytest -p no:cacheprovider -q -s -rs \
    tests/e2e --bin "$bin" --work "$work" --pids-file "$pids_file" --summary-file "$work/summary" \
    ${pytest_args[@]+"${pytest_args[@]}"} &
test_pid=$!
set +e
wait "$test_pid"
rc=$?
set -e
test_pid=
exit "$rc"
