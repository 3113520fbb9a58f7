#!/usr/bin/env bash
# s3-test-server.sh — run a real single-node Garage S3 server on loopback for
# synapse-backup's integration tests and benchmarks.
#
# Usage:
#   scripts/s3-test-server.sh start   DIR   # create DIR, start, provision, print DIR/env
#   scripts/s3-test-server.sh restart DIR   # stop + start again with the same data/config/ports
#   scripts/s3-test-server.sh stop    DIR   # stop the server and wait for it to exit
#   scripts/s3-test-server.sh status  DIR   # exit 0 if the server in DIR is running
#   scripts/s3-test-server.sh install       # only make sure the garage binary exists
#
# `start` and `restart` print the path of DIR/env as the LAST line on stdout;
# everything else (progress, build output) goes to stderr so callers can do
#   env_file=$(scripts/s3-test-server.sh start "$dir" | tail -n1); . "$env_file"
#
# DIR/env holds `export` lines:
#   S3_TEST_ENDPOINT S3_TEST_REGION S3_TEST_BUCKET S3_TEST_ACCESS_KEY
#   S3_TEST_SECRET_KEY S3_TEST_SERVER_PID S3_TEST_SERVER_DIR
# plus S3_TEST_OTHER_BUCKET (a bucket the key may NOT access),
# S3_TEST_ADMIN_ENDPOINT / S3_TEST_ADMIN_TOKEN (Garage admin API) and
# S3_TEST_GARAGE_BIN / S3_TEST_GARAGE_CONFIG (to drive the garage CLI).
#
# Environment knobs:
#   SYNAPSE_BACKUP_TOOLS   cache root for the garage build
#                          (default $HOME/.cache/synapse-backup-tools)
#   S3_TEST_GARAGE_BIN     use this garage binary instead of the cached build
#   S3_TEST_TIMEOUT        seconds each wait loop may take (default 60)
set -euo pipefail

readonly GARAGE_VERSION=2.5.0
readonly TOOLS_DIR="${SYNAPSE_BACKUP_TOOLS:-$HOME/.cache/synapse-backup-tools}"
readonly GARAGE_ROOT="$TOOLS_DIR/garage-$GARAGE_VERSION"
GARAGE_BIN="${S3_TEST_GARAGE_BIN:-$GARAGE_ROOT/bin/garage}"
readonly TIMEOUT="${S3_TEST_TIMEOUT:-60}"
# Building garage from source takes ~10 min on a 2-core machine; allow a
# generous bound when waiting on somebody else's build.
readonly BUILD_TIMEOUT="${S3_TEST_BUILD_TIMEOUT:-3600}"

readonly BUCKET=synapse-backups
readonly OTHER_BUCKET=other-bucket
readonly KEY_NAME=synapse-backup-test
readonly REGION=garage

log() { printf 's3-test-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- garage binary -----------------------------------------------------------

# Wait for a `cargo install garage` that another process already started
# (e.g. a developer's shell or a concurrent test run), instead of racing it
# with a second multi-minute build into the same --root.
wait_for_foreign_build() {
    local waited=0
    while pgrep -f "cargo install garage" >/dev/null 2>&1; do
        if [[ -x "$GARAGE_BIN" ]]; then
            return 0
        fi
        if ((waited == 0)); then
            log "a 'cargo install garage' is already running; waiting for it (up to ${BUILD_TIMEOUT}s)"
        fi
        if ((waited >= BUILD_TIMEOUT)); then
            die "timed out after ${BUILD_TIMEOUT}s waiting for the running 'cargo install garage'"
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

ensure_garage() {
    if [[ -x "$GARAGE_BIN" ]]; then
        return 0
    fi
    if [[ -n "${S3_TEST_GARAGE_BIN:-}" ]]; then
        die "S3_TEST_GARAGE_BIN=$S3_TEST_GARAGE_BIN is not an executable file"
    fi
    wait_for_foreign_build
    if [[ -x "$GARAGE_BIN" ]]; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "garage is not installed at $GARAGE_BIN and cargo is not on PATH"
    mkdir -p "$TOOLS_DIR"
    # flock serialises concurrent invocations of this script on a fresh
    # machine, so only one of them builds and the others reuse the result.
    local lock="$TOOLS_DIR/garage-$GARAGE_VERSION.lock"
    exec 9>"$lock"
    log "waiting for build lock $lock"
    flock -w "$BUILD_TIMEOUT" 9 || die "could not take $lock within ${BUILD_TIMEOUT}s"
    if [[ ! -x "$GARAGE_BIN" ]]; then
        log "building garage $GARAGE_VERSION with cargo (takes ~10 min on 2 cores; cached in $GARAGE_ROOT)"
        # stdout must stay clean for the env-file path, so cargo talks to stderr.
        cargo install garage --locked --version "$GARAGE_VERSION" --root "$GARAGE_ROOT" >&2 \
            || die "cargo install garage $GARAGE_VERSION failed"
    fi
    flock -u 9
    exec 9>&-
    [[ -x "$GARAGE_BIN" ]] || die "cargo install finished but $GARAGE_BIN is missing"
}

# --- helpers -----------------------------------------------------------------

# Garage reads the config path from -c; all CLI calls talk RPC to the daemon.
garage_cli() {
    "$GARAGE_BIN" -c "$CONFIG" "$@"
}

# Print N distinct free TCP ports on 127.0.0.1. All sockets are held open
# until every port is chosen so the N ports are distinct; there is still a
# small window before garage binds them, which start() covers by retrying.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

random_hex32() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
    else
        python3 -c 'import secrets; print(secrets.token_hex(32))'
    fi
}

log_tail() {
    if [[ -f "$DIR/garage.log" ]]; then
        log "---- last 40 lines of $DIR/garage.log ----"
        tail -n 40 "$DIR/garage.log" >&2 || true
        log "------------------------------------------"
    fi
}

fail() {
    log "error: $*"
    log_tail
    exit 1
}

# Is PID a live garage process serving DIR's config? Checking the command
# line guards against the pid having been recycled by an unrelated process
# after garage was killed (tests kill -9 the server on purpose).
is_our_garage() {
    local pid="$1" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"$CONFIG"*server* ]]
}

running_pid() {
    local pid
    [[ -f "$DIR/garage.pid" ]] || return 1
    pid=$(<"$DIR/garage.pid")
    is_our_garage "$pid" || return 1
    printf '%s\n' "$pid"
}

# Read a `key = value` setting from the [section] of garage.toml that this
# script wrote (flat layout, one setting per line, values quoted).
toml_get() {
    local section="$1" key="$2"
    awk -v want_section="$section" -v want_key="$key" '
        /^\[/ { gsub(/[][ \t]/, ""); section = $0; next }
        section == want_section {
            line = $0
            if (match(line, "^[ \t]*" want_key "[ \t]*=")) {
                val = substr(line, RLENGTH + 1)
                gsub(/^[ \t]*"?|"?[ \t]*$/, "", val)
                print val
                exit
            }
        }' "$CONFIG"
}

# Launch the daemon detached from our stdio: a caller that captures our
# stdout (e.g. `$(... start dir)` or a Rust Command) would otherwise never see
# EOF while garage lives.
launch() {
    local pid
    printf '\n==== %s: starting garage (%s) ====\n' "$(date -u +%FT%TZ)" "$1" >>"$DIR/garage.log"
    RUST_LOG="${RUST_LOG:-garage=info}" nohup "$GARAGE_BIN" -c "$CONFIG" server \
        </dev/null >>"$DIR/garage.log" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/garage.pid"
    PID="$pid"
}

# Poll until the daemon answers `garage status` over RPC.
wait_rpc() {
    local deadline=$((SECONDS + TIMEOUT))
    until garage_cli status >/dev/null 2>&1; do
        is_our_garage "$PID" || fail "garage (pid $PID) exited during startup"
        ((SECONDS < deadline)) || fail "garage did not answer 'garage status' within ${TIMEOUT}s"
        sleep 0.2
    done
}

# Poll until the admin API reports a healthy cluster, i.e. the layout is
# applied and every partition has quorum, so S3 requests will succeed.
wait_healthy() {
    local deadline=$((SECONDS + TIMEOUT)) code
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ADMIN_ENDPOINT/health" || true)
        [[ "$code" == 200 ]] && break
        is_our_garage "$PID" || fail "garage (pid $PID) exited while waiting for it to become healthy"
        ((SECONDS < deadline)) || fail "garage not healthy within ${TIMEOUT}s (last /health status: ${code:-none})"
        sleep 0.2
    done
    # The S3 listener is separate from the admin one; make sure it answers
    # HTTP too (an unsigned request gets an S3 error document, which is fine).
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/" || true)
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && break
        ((SECONDS < deadline)) || fail "S3 API at $ENDPOINT did not answer within ${TIMEOUT}s"
        sleep 0.2
    done
}

# Retry a garage CLI call: right after the layout is applied, the metadata
# tables can briefly report quorum errors.
retry_cli() {
    local deadline=$((SECONDS + TIMEOUT)) out
    while :; do
        if out=$(garage_cli "$@" 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "'garage $*' kept failing for ${TIMEOUT}s; last output:"
            printf '%s\n' "$out" >&2
            fail "garage $* failed"
        fi
        sleep 0.5
    done
}

write_env() {
    local tmp="$DIR/env.tmp"
    {
        echo "# Generated by scripts/s3-test-server.sh; source it: . $DIR/env"
        printf 'export S3_TEST_ENDPOINT=%q\n' "$ENDPOINT"
        printf 'export S3_TEST_REGION=%q\n' "$REGION"
        printf 'export S3_TEST_BUCKET=%q\n' "$BUCKET"
        printf 'export S3_TEST_ACCESS_KEY=%q\n' "$ACCESS_KEY"
        printf 'export S3_TEST_SECRET_KEY=%q\n' "$SECRET_KEY"
        printf 'export S3_TEST_SERVER_PID=%q\n' "$PID"
        printf 'export S3_TEST_SERVER_DIR=%q\n' "$DIR"
        printf 'export S3_TEST_OTHER_BUCKET=%q\n' "$OTHER_BUCKET"
        printf 'export S3_TEST_ADMIN_ENDPOINT=%q\n' "$ADMIN_ENDPOINT"
        printf 'export S3_TEST_ADMIN_TOKEN=%q\n' "$ADMIN_TOKEN"
        printf 'export S3_TEST_GARAGE_BIN=%q\n' "$GARAGE_BIN"
        printf 'export S3_TEST_GARAGE_CONFIG=%q\n' "$CONFIG"
    } >"$tmp"
    chmod 600 "$tmp"
    # rename is atomic, so a test never sources a half-written file.
    mv -f "$tmp" "$DIR/env"
}

# Load endpoint/token from the config (the source of truth for ports).
load_config() {
    [[ -f "$CONFIG" ]] || die "$CONFIG does not exist; run '$0 start $DIR' first"
    ENDPOINT="http://$(toml_get s3_api api_bind_addr)"
    ADMIN_ENDPOINT="http://$(toml_get admin api_bind_addr)"
    ADMIN_TOKEN=$(toml_get admin admin_token)
}

# --- commands ----------------------------------------------------------------

write_config() {
    local rpc_port="$1" s3_port="$2" admin_port="$3"
    # replication_factor = 1 and sqlite: a single node, and a metadata engine
    # that needs no tuning (LMDB wants a large map and dislikes some FSes).
    cat >"$CONFIG" <<EOF
# Generated by scripts/s3-test-server.sh — single-node Garage for tests.
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex32)"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$REGION"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(random_hex32)"
metrics_token = "$(random_hex32)"
EOF
    # The file holds secrets; garage itself does not require this but there
    # is no reason to leave them world-readable.
    chmod 600 "$CONFIG"
}

# Start a fresh server; retry with new ports if a port we picked was taken
# by someone else between choosing and binding it.
start_fresh() {
    local attempt ports
    for attempt in 1 2 3; do
        read -r -a ports <<<"$(free_ports 3)"
        write_config "${ports[0]}" "${ports[1]}" "${ports[2]}"
        load_config
        launch "fresh, attempt $attempt"
        if wait_rpc_or_bind_error; then
            return 0
        fi
        log "a port was taken before garage could bind it; retrying with new ports"
        stop_pid
    done
    fail "could not start garage after 3 attempts"
}

# Like wait_rpc, but returns 1 (instead of dying) when garage failed to bind
# one of its ports, so start_fresh can retry.
wait_rpc_or_bind_error() {
    local deadline=$((SECONDS + TIMEOUT))
    until garage_cli status >/dev/null 2>&1; do
        if ! is_our_garage "$PID"; then
            if tail -n 20 "$DIR/garage.log" | grep -qi 'address already in use'; then
                return 1
            fi
            fail "garage (pid $PID) exited during startup"
        fi
        ((SECONDS < deadline)) || fail "garage did not answer 'garage status' within ${TIMEOUT}s"
        sleep 0.2
    done
}

provision() {
    local node_id key_info
    # `garage node id -q` prints "<64-hex-id>@<addr>"; layout commands want
    # the hex id (a unique prefix would do, the full id is unambiguous).
    node_id=$(garage_cli node id -q 2>/dev/null | grep -oE '^[0-9a-f]{64}' | head -n1) || true
    [[ -n "$node_id" ]] || fail "could not read the node id from 'garage node id -q'"

    garage_cli layout assign -z dc1 -c 1G "$node_id" >&2 || fail "garage layout assign failed"
    garage_cli layout apply --version 1 >&2 || fail "garage layout apply failed"
    wait_healthy

    retry_cli bucket create "$BUCKET" >&2
    retry_cli bucket create "$OTHER_BUCKET" >&2
    retry_cli key create "$KEY_NAME" >&2
    retry_cli bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >&2

    key_info=$(retry_cli key info "$KEY_NAME" --show-secret)
    # Lines look like "Key ID:              GK…" and "Secret key:          …";
    # match the labels case-insensitively and take the last field.
    ACCESS_KEY=$(printf '%s\n' "$key_info" | awk 'tolower($0) ~ /^[ \t]*key id:/ {print $NF; exit}')
    SECRET_KEY=$(printf '%s\n' "$key_info" | awk 'tolower($0) ~ /^[ \t]*secret key:/ {print $NF; exit}')
    [[ "$ACCESS_KEY" =~ ^GK[0-9a-f]+$ ]] || fail "could not parse the key id from 'garage key info': $key_info"
    [[ "$SECRET_KEY" =~ ^[0-9a-f]{64}$ ]] || fail "could not parse the secret key from 'garage key info' (got '${SECRET_KEY}')"
}

cmd_start() {
    local t0=$SECONDS
    if [[ -e "$CONFIG" ]]; then
        if running_pid >/dev/null; then
            die "a server is already running for $DIR (pid $(<"$DIR/garage.pid")); use 'stop' or 'restart'"
        fi
        die "$DIR already holds a server ($CONFIG exists); use '$0 restart $DIR' to bring it back, or remove $DIR"
    fi
    ensure_garage
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to pick free ports"
    command -v curl >/dev/null 2>&1 || die "curl is needed to probe the server"
    mkdir -p "$DIR/meta" "$DIR/data"

    start_fresh
    provision
    write_env
    log "garage $GARAGE_VERSION ready at $ENDPOINT (pid $PID, started in $((SECONDS - t0))s)"
    printf '%s\n' "$DIR/env"
}

stop_pid() {
    local pid deadline
    pid=$(running_pid) || { rm -f "$DIR/garage.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "garage (pid $pid) ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            # After SIGKILL the kernel reaps it promptly (init adopts it).
            local kdeadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null; do
                ((SECONDS < kdeadline)) || die "garage (pid $pid) survived SIGKILL"
                sleep 0.1
            done
            break
        fi
        sleep 0.1
    done
    rm -f "$DIR/garage.pid"
}

cmd_stop() {
    stop_pid
    log "stopped garage for $DIR"
}

cmd_restart() {
    local t0=$SECONDS
    [[ -f "$DIR/env" ]] || die "$DIR/env does not exist; run '$0 start $DIR' first"
    ensure_garage
    load_config
    stop_pid
    # Credentials live in the server's metadata; reuse what start recorded.
    # shellcheck source=/dev/null
    ACCESS_KEY=$(. "$DIR/env" && printf '%s' "$S3_TEST_ACCESS_KEY")
    # shellcheck source=/dev/null
    SECRET_KEY=$(. "$DIR/env" && printf '%s' "$S3_TEST_SECRET_KEY")
    launch restart
    wait_rpc
    wait_healthy
    write_env
    log "garage restarted at $ENDPOINT (pid $PID, in $((SECONDS - t0))s)"
    printf '%s\n' "$DIR/env"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        log "running (pid $pid)"
    else
        log "not running"
        return 1
    fi
}

main() {
    (($# >= 1)) || usage
    local cmd="$1"
    if [[ "$cmd" == install ]]; then
        ensure_garage
        printf '%s\n' "$GARAGE_BIN"
        return 0
    fi
    (($# == 2)) || usage
    # Absolute paths: garage resolves metadata_dir/data_dir against its cwd,
    # and the pid check matches the config path in /proc/PID/cmdline.
    if [[ "$cmd" == start ]]; then
        mkdir -p "$2"
    fi
    [[ -d "$2" ]] || die "$2 does not exist; run '$0 start $2' first"
    DIR=$(cd "$2" && pwd -P)
    # The path is embedded in TOML strings and shell lines unescaped.
    [[ "$DIR" != *[\"\\]* ]] || die "DIR must not contain '\"' or '\\'"
    CONFIG="$DIR/garage.toml"
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_restart ;;
        status) cmd_status ;;
        *) usage ;;
    esac
}

main "$@"
