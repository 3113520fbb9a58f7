#!/usr/bin/env bash
# s3-test-server.sh — run a real single-node Garage S3 server on loopback for
# synapse-backup's integration tests and benchmarks.
#
# Usage:
#   scripts/s3-test-server.sh start   DIR   # create DIR, start, provision, print DIR/env
#   scripts/s3-test-server.sh restart DIR   # stop + start again with the same data/config/ports
#   scripts/s3-test-server.sh stop    DIR   # stop the server and wait for it to exit
#   scripts/s3-test-server.sh kill    DIR   # SIGKILL the server: requests in flight are cut
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
#   S3_TEST_BUILD_TIMEOUT  seconds to wait for a garage build (default 3600)
#
# DIR also holds garage.toml, garage.log (appended across restarts),
# garage.pid, setup.log (CLI output of provisioning), meta/ and data/.
# Both path-style and virtual-hosted-style requests work (root_domain is
# .s3.garage.localhost, which does not resolve here, so use path style).
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
    # Print the header comment (everything up to the first non-comment line).
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

# Milliseconds since the epoch, for reporting how long start/restart took.
now_ms() {
    local t="${EPOCHREALTIME/[.,]/}"
    printf '%s\n' "$((t / 1000))"
}

# --- garage binary -----------------------------------------------------------

# Wait for a `cargo install garage` that another process already started
# (e.g. a developer's shell or a concurrent test run), instead of racing it
# with a second multi-minute build into the same --root.
wait_for_foreign_build() {
    local waited=0
    # Wait for the process to end even if the binary already exists: cargo
    # may still be writing it or its install metadata.
    while pgrep -f "cargo install garage" >/dev/null 2>&1; do
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

# Fail a start/restart: show the log, and stop the garage this invocation
# launched so a failed start never leaves a half-working server behind.
fail() {
    log "error: $*"
    log_tail
    if [[ -n "${PID:-}" ]] && is_our_garage "$PID"; then
        log "stopping the garage (pid $PID) this command started"
        stop_pid || true
    fi
    exit 1
}

# Is PID a live garage process serving DIR's config? Checking the command
# line guards against the pid having been recycled by an unrelated process
# after garage was killed (tests kill -9 the server on purpose).
is_our_garage() {
    local pid="$1" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # (stderr first: the redirection itself fails once the process is gone)
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ "$cmdline" == *"$CONFIG"*server* ]]
}

# Is PID still a live process? A zombie (state Z) or dying task (X) has
# already closed its sockets and files; it only waits to be reaped by its
# parent, which for a daemonised garage is init and may take a moment.
# (/proc/PID/cmdline is emptied before the sockets are closed, so it is not
# a reliable "has exited" signal.)
pid_alive() {
    local stat
    { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != [ZX] ]]
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
    # Remember where this launch's output starts so startup checks only look
    # at messages from this run of garage.
    LOG_OFFSET=$(stat -c %s "$DIR/garage.log" 2>/dev/null || echo 0)
    printf '\n==== %s: starting garage (%s) ====\n' "$(date -u +%FT%TZ)" "$1" >>"$DIR/garage.log"
    # NO_COLOR keeps ANSI escapes out of garage.log, which we tail on errors.
    NO_COLOR=1 RUST_LOG="${RUST_LOG:-garage=info}" nohup "$GARAGE_BIN" -c "$CONFIG" server \
        </dev/null >>"$DIR/garage.log" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/garage.pid"
    PID="$pid"
}

# Fatal startup messages of the current launch. Garage 2.5.0 does NOT exit
# when its S3 listener fails to bind: it logs
#   "ERROR garage::server: S3 API server exited with error: ... Address already in use"
# and keeps running with RPC up, so the process being alive proves nothing.
# (An RPC port clash is a panic; an admin port clash is not logged at all,
# see wait_listeners.)
launch_errors() {
    tail -c +"$((LOG_OFFSET + 1))" "$DIR/garage.log" 2>/dev/null \
        | grep -E 'ERROR garage::server|Address already in use|panicked' || true
}

# Die (or, with "retry" as $1, return 1 on a port clash) if the current
# launch is dead or has logged a fatal error.
check_launch() {
    local errors
    errors=$(launch_errors)
    if [[ -n "$errors" ]]; then
        if [[ "${1:-}" == retry ]] && grep -q 'Address already in use' <<<"$errors"; then
            return 1
        fi
        fail "garage reported a startup error: $(head -n1 <<<"$errors")"
    fi
    is_our_garage "$PID" || fail "garage (pid $PID) exited during startup"
}

# Poll until garage itself listens on its RPC, S3 and admin ports. This is
# what catches a port held by another process: garage logs "Admin API server
# listening" even when that bind fails, and a foreign HTTP server on the
# port would otherwise answer our probes. Needs ss (iproute2); skipped
# without it. With "retry" as $1, return 1 on a port clash instead of dying.
wait_listeners() {
    local deadline=$((SECONDS + TIMEOUT)) port owners missing
    if ! command -v ss >/dev/null 2>&1; then
        log "ss not found; not checking that garage owns its ports"
        return 0
    fi
    while :; do
        missing=()
        for port in "${PORTS[@]}"; do
            owners=$(ss -Hltnp "sport = :$port" 2>/dev/null || true)
            [[ "$owners" == *"pid=$PID,"* ]] && continue
            if [[ -n "$owners" ]]; then
                [[ "${1:-}" == retry ]] && return 1
                fail "port $port is held by another process: $owners"
            fi
            missing+=("$port")
        done
        ((${#missing[@]} == 0)) && return 0
        check_launch "${1:-}" || return 1
        ((SECONDS < deadline)) || fail "garage did not listen on port(s) ${missing[*]} within ${TIMEOUT}s"
        sleep 0.1
    done
}

# Poll until the daemon is up: it owns its ports and answers `garage status`
# over RPC. With "retry" as $1, return 1 instead of dying when a port we
# picked was already in use.
wait_rpc() {
    local deadline=$((SECONDS + TIMEOUT))
    wait_listeners "${1:-}" || return 1
    until garage_cli status >/dev/null 2>&1; do
        check_launch "${1:-}" || return 1
        ((SECONDS < deadline)) || fail "garage did not answer 'garage status' within ${TIMEOUT}s"
        sleep 0.2
    done
    check_launch "${1:-}" || return 1
}

# Poll until the admin API reports a healthy cluster, i.e. the layout is
# applied and every partition has quorum, so S3 requests will succeed.
wait_healthy() {
    local deadline=$((SECONDS + TIMEOUT)) code
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ADMIN_ENDPOINT/health" || true)
        [[ "$code" == 200 ]] && break
        check_launch
        ((SECONDS < deadline)) || fail "garage not healthy within ${TIMEOUT}s (last /health status: ${code:-none})"
        sleep 0.2
    done
    # The S3 listener is separate from the admin one; make sure it answers
    # HTTP too (an unsigned request gets an S3 error document, which is fine).
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/" || true)
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && break
        check_launch
        ((SECONDS < deadline)) || fail "S3 API at $ENDPOINT did not answer within ${TIMEOUT}s"
        sleep 0.2
    done
    # Whatever answered must be this garage, not another process that owns
    # the port while our listener failed to bind.
    check_launch
}

# Run a garage CLI call, retrying for up to TIMEOUT: right after startup or a
# layout change the metadata tables can briefly report quorum errors. Only
# used for calls that are safe to repeat after a failed attempt.
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
    PORTS=(
        "$(toml_get "" rpc_bind_addr | sed 's/.*://')"
        "${ENDPOINT##*:}"
        "${ADMIN_ENDPOINT##*:}"
    )
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
        if wait_rpc retry; then
            return 0
        fi
        log "a port was taken before garage could bind it; retrying with new ports"
        stop_pid
        # The node key and (empty) metadata of the aborted run are harmless,
        # but start from a clean slate so every attempt is identical.
        rm -rf "$DIR/meta" "$DIR/data"
        mkdir -p "$DIR/meta" "$DIR/data"
    done
    fail "could not start garage after 3 attempts"
}

provision() {
    local node_id key_info
    # `garage node id -q` prints "<64-hex-id>@<addr>"; layout commands want
    # the hex id (a unique prefix would do, the full id is unambiguous).
    node_id=$(garage_cli node id -q 2>/dev/null | grep -oE '^[0-9a-f]{64}' | head -n1) || true
    [[ -n "$node_id" ]] || fail "could not read the node id from 'garage node id -q'"

    # The CLI's chatty output goes to DIR/setup.log (retry_cli shows it on
    # failure) so that callers' stderr stays readable.
    : >"$DIR/setup.log"
    chmod 600 "$DIR/setup.log" # `key create` prints the secret
    retry_cli layout assign -z dc1 -c 1G "$node_id" >>"$DIR/setup.log"
    retry_cli layout apply --version 1 >>"$DIR/setup.log"
    wait_healthy

    {
        retry_cli bucket create "$BUCKET"
        # A bucket the key is NOT allowed on, for access-denied tests.
        retry_cli bucket create "$OTHER_BUCKET"
        retry_cli key create "$KEY_NAME"
        retry_cli bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME"
    } >>"$DIR/setup.log"

    key_info=$(retry_cli key info "$KEY_NAME" --show-secret)
    # Lines look like "Key ID:              GK…" and "Secret key:          …";
    # match the labels case-insensitively and take the last field.
    ACCESS_KEY=$(printf '%s\n' "$key_info" | awk 'tolower($0) ~ /^[ \t]*key id:/ {print $NF; exit}')
    SECRET_KEY=$(printf '%s\n' "$key_info" | awk 'tolower($0) ~ /^[ \t]*secret key:/ {print $NF; exit}')
    [[ "$ACCESS_KEY" =~ ^GK[0-9a-f]+$ ]] || fail "could not parse the key id from 'garage key info': $key_info"
    [[ "$SECRET_KEY" =~ ^[0-9a-f]{64}$ ]] || fail "could not parse the secret key from 'garage key info' (got '${SECRET_KEY}')"
}

cmd_start() {
    local t0
    t0=$(now_ms)
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
    log "garage $GARAGE_VERSION ready at $ENDPOINT (pid $PID, started in $(($(now_ms) - t0)) ms)"
    printf '%s\n' "$DIR/env"
}

stop_pid() {
    local signal="${1:-TERM}" pid deadline
    pid=$(running_pid) || { rm -f "$DIR/garage.pid"; return 0; }
    # SIGTERM lets garage finish the requests in flight; SIGKILL cuts them.
    kill "-$signal" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    # pid_alive rather than kill -0: a zombie counts as gone (see pid_alive).
    while pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "garage (pid $pid) ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            # SIGKILL cannot be ignored; this only waits for the exit itself.
            local kdeadline=$((SECONDS + 10))
            while pid_alive "$pid"; do
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

cmd_kill() {
    stop_pid KILL
    log "killed garage for $DIR"
}

cmd_restart() {
    local t0
    t0=$(now_ms)
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
    log "garage restarted at $ENDPOINT (pid $PID, in $(($(now_ms) - t0)) ms)"
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
        kill) cmd_kill ;;
        restart) cmd_restart ;;
        status) cmd_status ;;
        *) usage ;;
    esac
}

main "$@"
