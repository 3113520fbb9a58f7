#!/usr/bin/env bash
# End-to-end test against a real Matrix Synapse: back up a live homeserver (SQLite, then
# PostgreSQL when a server answers on 127.0.0.1:5432), destroy it, restore onto a fresh config
# in another directory, start Synapse again and check through the client API that accounts,
# messages, media and the signing key survived. Also restores a backup made the way the Synapse
# charm makes them (tar | gpg --symmetric).
#
# Usage: scripts/e2e-synapse.sh [WORKDIR]   (default: a new temp dir, removed on success)
# Environment:
#   SYNAPSE_BACKUP_TOOLS            cache dir (default ~/.cache/synapse-backup-tools); the Synapse
#                                   virtualenv is kept in its synapse-venv/
#   SYNAPSE_BACKUP_REQUIRE_POSTGRES=1  fail instead of skipping when no PostgreSQL answers
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

if [ -n "${1:-}" ]; then
    work=$1
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    remove_work=0
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/synapse-e2e.XXXXXX")
    remove_work=1
fi
[ "${SYNAPSE_E2E_KEEP:-0}" = 1 ] && remove_work=0
# Every Synapse is started (and stopped) by the Python test; it writes each pid it starts into
# this file, so that whatever happens to the test, the trap below stops them all.
pids_file=$work/synapse-pids
: > "$pids_file"
rm -f "$work/summary"
test_pid=

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

# Tools the test needs besides the venv.
for program in gpg tar; do
    command -v "$program" >/dev/null || { log "missing $program (apt-get install gnupg tar)"; exit 1; }
done

# 2. The release binary.
log "cargo build --release --locked"
cargo build --release --locked -q
bin=$root/target/release/synapse-backup

# 3. The scenarios. A hard bound on the whole run: a hung Synapse must not hang CI.
timeout -s TERM "${SYNAPSE_E2E_TIMEOUT:-1800}" "$venv/bin/python" -u "$root/tests/e2e/synapse_e2e.py" \
    --bin "$bin" --work "$work" --pids-file "$pids_file" --summary-file "$work/summary" &
test_pid=$!
set +e
wait "$test_pid"
rc=$?
set -e
test_pid=
exit "$rc"
