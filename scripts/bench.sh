#!/usr/bin/env bash
# bench.sh — benchmark synapse-backup against the Synapse charm's pipeline, restic and the
# machine's own limits, on the same data and the same kind of S3 server, in one run.
#
# Usage:
#   scripts/bench.sh [--size GIB] [--runs N] [--only media-heavy|many-small] [--workdir DIR] [--keep]
#
#   --size GIB    scale of the data sets (default 1): media-heavy is GIB GiB of media, many-small
#                 is 50,000 × GIB files of 2–60 KiB (at least 1,000). Fractions work (0.05).
#   --runs N      how many times each measurement is repeated (default 3); median and spread
#   --only NAME   only one data set: media-heavy or many-small
#   --workdir DIR where data, servers and restores go
#                 (default ${TMPDIR:-/tmp}/synapse-backup-bench; needs about 5 × GIB GiB free)
#   --keep        keep the work dir (generated data is reused by the next run with --keep)
#   --allow-load  run even when the machine is busy at the start (1-minute load average above
#                 0.5 per core); the report then says its ratios are not comparable. Without it
#                 such a start waits up to BENCH_QUIET_WAIT seconds (default 300) for the load to
#                 fall, then refuses: gpg's single-threaded ZLIB makes the charm's pipeline look
#                 slower on a loaded machine than it is, which flatters our ratios.
#
# What it does: builds the tool, installs restic (apt) and awscli (apt or pip) if missing,
# generates seeded Synapse-like data dirs with scripts/example-datadir.py, then per run and data
# set measures
#   limits:  reading the data (tar -c | cat > /dev/null), OpenPGP encryption on one core in memory
#            (crates/core/examples/crypto_throughput.rs), S3 ingest of a pre-made object of the
#            same size (aws s3 cp FILE) and, for context, S3 egress (aws s3 cp OBJECT - | cat) and
#            the server's own limits: one plain PUT and one plain GET of that object (curl)
#   ours:    synapse-backup create-backup, verify-backup, restore-backup --target-dir; then the
#            incremental steps: a second create-backup with nothing changed, then 1% new media
#            and a changed database and a third one, and the restore of that incremental backup
#            (the bytes each stored are recorded from --json)
#   charm:   tar -c | gpg --batch --symmetric --passphrase-file F | aws s3 cp --expected-size=N -
#            and aws s3 cp - | gpg -d | tar -x
#   restic:  restic backup into a fresh repository (a "first backup"), restic restore, and
#            restic's second and third backups after the same (no) changes
# each against a fresh Garage S3 server on loopback (scripts/s3-test-server.sh), recording wall
# time, MB/s, CPU seconds (all processes of a pipeline) and peak RSS (largest process) with
# /usr/bin/time. It prints a Markdown report (tables, ratios, targets) on stdout and writes it
# to docs/benchmarks.md. Progress goes to stderr.
#
# Environment knobs:
#   BENCH_NO_BUILD=1        use target/release/synapse-backup and the crypto_throughput example
#                           as they are (no cargo build)
#   SYNAPSE_BACKUP_BIN=FILE  measure this synapse-backup binary (with BENCH_NO_BUILD=1)
#   BENCH_CMD_TIMEOUT=SECS  bound on each measured command (default 900 + 600 per GiB)
#   BENCH_DOC=FILE          where the report goes (default docs/benchmarks.md)
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
helpers=$root/scripts/bench
started_epoch=$EPOCHREALTIME
orig_cmd="scripts/bench.sh${*:+ $*}"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

# --- arguments ---------------------------------------------------------------

size=1
runs=3
only=""
work=""
keep=0
allow_load=0
while (($#)); do
    case "$1" in
        --size) size=${2:?--size needs a value}; shift 2 ;;
        --size=*) size=${1#*=}; shift ;;
        --runs) runs=${2:?--runs needs a value}; shift 2 ;;
        --runs=*) runs=${1#*=}; shift ;;
        --only) only=${2:?--only needs a value}; shift 2 ;;
        --only=*) only=${1#*=}; shift ;;
        --workdir) work=${2:?--workdir needs a value}; shift 2 ;;
        --workdir=*) work=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        --allow-load) allow_load=1; shift ;;
        -h | --help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
if ! [[ "$size" =~ ^([0-9]+(\.[0-9]*)?|\.[0-9]+)$ ]] || ! awk -v s="$size" 'BEGIN { exit !(s > 0) }'; then
    die "--size must be a positive number of GiB (got '$size')"
fi
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer (got '$runs')"
case "$only" in
    "") datasets=(media-heavy many-small) ;;
    media-heavy | many-small) datasets=("$only") ;;
    *) die "--only must be media-heavy or many-small (got '$only')" ;;
esac

work=${work:-${TMPDIR:-/tmp}/synapse-backup-bench}
created_work=0
[[ -e "$work" ]] || created_work=1
mkdir -p "$work"
work=$(cd "$work" && pwd -P)
# Paths go into TOML strings and the Garage config unescaped.
[[ "$work" != *[\"\\\'$'\n']* ]] || die "--workdir must not contain quotes, backslashes or newlines"

media_mib=$(awk -v s="$size" 'BEGIN { printf "%.2f", s * 1024 }')
small_files=$(awk -v s="$size" 'BEGIN { n = int(s * 50000 + 0.5); if (n < 1000) n = 1000; print n }')
cmd_timeout=${BENCH_CMD_TIMEOUT:-$(awk -v s="$size" 'BEGIN { printf "%d", 900 + 600 * s }')}
doc=${BENCH_DOC:-$root/docs/benchmarks.md}

# One benchmark per work dir at a time.
exec 8>"$work/.lock"
flock -n 8 || die "another bench.sh is running in $work"

# Everything this run creates lives in these (removed on exit unless --keep).
logs=$work/logs
secrets=$work/secrets
servers=$work/servers
restores=$work/restores
scratch=$work/scratch
results=$work/results.tsv
failures=$work/failures.tsv
meta=$work/meta.env

current_server=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$current_server" ]]; then
        "$root/scripts/s3-test-server.sh" stop "$current_server" 2>/dev/null || true
    fi
    if [[ -d "$secrets/gnupg" ]]; then
        gpgconf --homedir "$secrets/gnupg" --kill gpg-agent 2>/dev/null || true
    fi
    if ((keep)); then
        log "kept $work"
    else
        rm -rf "$servers" "$restores" "$scratch" "$secrets" "$work/data" "$work/ingest" 2>/dev/null || true
        if ((rc != 0)); then
            # Keep what explains the failure: logs and the measurements so far (small).
            log "failed (exit $rc); logs and partial results kept in $work"
        elif ((created_work)); then
            rm -rf "$work" 2>/dev/null || true
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------

apt_updated=0
apt_install() {
    if ((!apt_updated)); then
        log "apt-get update"
        timeout 600 apt-get update -qq >"$work/apt.log" 2>&1 || die "apt-get update failed (see $work/apt.log)"
        apt_updated=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >>"$work/apt.log" 2>&1 \
        || die "apt-get install $* failed (see $work/apt.log)"
}

ensure_tools() {
    local missing=()
    command -v restic >/dev/null 2>&1 || missing+=(restic)
    command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
    if ! command -v aws >/dev/null 2>&1; then
        apt_install awscli || true
        if ! command -v aws >/dev/null 2>&1; then
            log "awscli not available from apt; installing it with pip"
            timeout 900 python3 -m pip install -q awscli >>"$work/apt.log" 2>&1 || die "pip install awscli failed"
        fi
    fi
    command -v aws >/dev/null 2>&1 || die "aws not on PATH after installing awscli"
    command -v restic >/dev/null 2>&1 || die "restic not on PATH after installing it"
}

build_tool() {
    bin=${SYNAPSE_BACKUP_BIN:-$root/target/release/synapse-backup}
    crypto_bin=$root/target/release/examples/crypto_throughput
    if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
        log "cargo build --release (synapse-backup and the crypto_throughput example)"
        (cd "$root" && timeout 3600 cargo build --release --locked -q -p synapse-backup --bin synapse-backup \
            && timeout 3600 cargo build --release --locked -q -p synapse-backup-core --example crypto_throughput) \
            >"$logs/build.log" 2>&1 || { tail -n 30 "$logs/build.log" >&2; die "cargo build failed"; }
    fi
    [[ -x "$bin" ]] || die "$bin is missing"
    [[ -x "$crypto_bin" ]] || die "$crypto_bin is missing"
}

# --- data --------------------------------------------------------------------

# The paths every tool backs up, relative to the data dir: what the charm's pipeline archives
# (signing key, SQLite database, local media and thumbnails). synapse-backup finds the same
# files through homeserver.yaml (it also stores homeserver.yaml and the log config, a few KiB).
backup_paths() {
    local data=$1 p
    local -a found=()
    shopt -s nullglob
    for p in "$data"/*.signing.key "$data"/homeserver.db "$data"/homeserver.db-wal; do
        [[ -f "$p" ]] && found+=("${p#"$data"/}")
    done
    shopt -u nullglob
    for p in media_store/local_content media_store/local_thumbnails; do
        [[ -d "$data/$p" ]] && found+=("$p")
    done
    printf '%s\n' "${found[@]}"
}

generate() {
    local ds=$1 data=$work/data/$1 params
    case "$ds" in
        media-heavy) params=(--profile media-heavy --size-mib "$media_mib" --seed 1) ;;
        many-small) params=(--profile many-small --files "$small_files" --seed 2) ;;
    esac
    if [[ -f "$data/.bench-params" && "$(<"$data/.bench-params")" == "${params[*]}" ]]; then
        log "$ds: reusing $data (${params[*]})"
        return 0
    fi
    rm -rf "$data"
    log "$ds: generating $data (${params[*]})"
    timeout "$cmd_timeout" python3 "$root/scripts/example-datadir.py" "$data" "${params[@]}" \
        2>"$logs/generate-$ds.log" || { cat "$logs/generate-$ds.log" >&2; die "generating $ds failed"; }
    printf '%s\n' "${params[*]}" >"$data/.bench-params"
}

# A pre-made object of the data set's size, of random bytes (Garage deduplicates identical
# blocks, so zeros would not measure ingest).
make_ingest_file() {
    local ds=$1 bytes=$2 f=$work/ingest/$1.bin
    mkdir -p "$work/ingest"
    if [[ -f "$f" && "$(stat -c %s "$f")" == "$bytes" ]]; then
        return 0
    fi
    log "$ds: writing a $bytes-byte object for the S3 ingest limit"
    head -c "$bytes" /dev/urandom >"$f.tmp"
    mv "$f.tmp" "$f"
}

# --- S3 server ---------------------------------------------------------------

# Start a fresh server in a new directory. On a busy machine another process can grab a port
# between its choice and garage's bind more often than s3-test-server.sh's own retries cover,
# so a failed start is retried (3 attempts) in a new directory.
server_seq=0
server_start() {
    local dir env_file="" attempt
    for attempt in 1 2 3; do
        server_seq=$((server_seq + 1))
        dir=$servers/s$server_seq
        current_server=$dir
        if env_file=$(timeout 600 "$root/scripts/s3-test-server.sh" start "$dir" 2>>"$logs/s3-server.log" | tail -n1) \
            && [[ -f "$env_file" ]]; then
            break
        fi
        log "the S3 test server did not start (attempt $attempt of 3); its log is in $logs/garage-s$server_seq.log"
        cp "$dir/garage.log" "$logs/garage-s$server_seq.log" 2>/dev/null || true
        timeout 300 "$root/scripts/s3-test-server.sh" stop "$dir" 2>>"$logs/s3-server.log" || true
        rm -rf "$dir"
        current_server=""
        env_file=""
        sleep 2
    done
    if [[ -z "$env_file" ]]; then
        tail -n 20 "$logs/s3-server.log" >&2
        die "could not start the S3 test server"
    fi
    # shellcheck source=/dev/null
    . "$env_file"
    # Every client reads its credentials from the environment or a file, never argv.
    export AWS_ACCESS_KEY_ID=$S3_TEST_ACCESS_KEY
    export AWS_SECRET_ACCESS_KEY=$S3_TEST_SECRET_KEY
    export AWS_DEFAULT_REGION=$S3_TEST_REGION
    (umask 077 && printf '%s\n' "$S3_TEST_SECRET_KEY" >"$secrets/s3-secret")
    aws_s3=(aws --endpoint-url "$S3_TEST_ENDPOINT" s3)
    (umask 077 && printf 'user = "%s:%s"\n' "$S3_TEST_ACCESS_KEY" "$S3_TEST_SECRET_KEY" >"$secrets/curl-config")
}

server_stop() {
    [[ -n "$current_server" ]] || return 0
    timeout 300 "$root/scripts/s3-test-server.sh" stop "$current_server" 2>>"$logs/s3-server.log" || true
    rm -rf "$current_server"
    current_server=""
}

# CPU seconds the server has used so far (utime + stime).
clk_tck=$(getconf CLK_TCK)
server_cpu() {
    local stat
    { stat=$(<"/proc/$S3_TEST_SERVER_PID/stat"); } 2>/dev/null || { echo 0; return; }
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    awk -v u="${f[11]}" -v s="${f[12]}" -v t="$clk_tck" 'BEGIN { printf "%.2f", (u + s) / t }'
}


# --- measuring ---------------------------------------------------------------

# Inside a measured function, run one process (or one pipeline stage) under /usr/bin/time,
# bounded by timeout. Each stage writes "wall user sys maxrss_kb" to its own file.
stage() {
    local name=$1
    shift
    /usr/bin/time -f '%e %U %S %M' -o "$stage_dir/$name" timeout -k 10 "$cmd_timeout" "$@"
}

# measure DATASET TOOL OP RUN BYTES FUNCTION [ARGS...]
# Runs FUNCTION (which uses `stage` for every process), times it on the wall clock, sums the
# CPU seconds of all stages, keeps the largest peak RSS and appends a row to results.tsv.
# FUNCTION's stdout goes to $last_out, its stderr to a log. A failure is recorded in
# failures.tsv (and shown in the report) and returns 1, so one failed run does not lose the rest.
measure() {
    local ds=$1 tool=$2 op=$3 run=$4 bytes=$5 fn=$6
    shift 6
    local t0 t1 cpu0 cpu1 errlog=$logs/$ds-$tool-$op-$run.err
    stage_dir=$scratch/stages
    rm -rf "$stage_dir"
    mkdir -p "$stage_dir"
    last_out=$scratch/last.out
    log "$ds run $run/$runs: $tool $op"
    cpu0=$(server_cpu_or_zero)
    t0=$EPOCHREALTIME
    if ! "$fn" "$@" >"$last_out" 2>"$errlog"; then
        measure_mbs=""
        tail -n 20 "$errlog" >&2
        log "  FAILED after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s; see $errlog"
        record_failure "$ds" "$tool" "$op" "$run" "$(first_error "$errlog")"
        sync
        return 1
    fi
    t1=$EPOCHREALTIME
    cpu1=$(server_cpu_or_zero)
    local f cpu=0 rss=0 line
    for f in "$stage_dir"/*; do
        line=$(tail -n1 "$f")
        read -r _ u s m <<<"$line"
        cpu=$(awk -v c="$cpu" -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", c + u + s }')
        if ((m > rss)); then rss=$m; fi
    done
    local wall mbs
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    mbs=${measure_mbs:-}
    measure_mbs=""
    [[ -n "$mbs" ]] || mbs=$(awk -v b="$bytes" -v w="$wall" 'BEGIN { printf "%.1f", b / 1e6 / w }')
    local server=-
    if [[ "$cpu0" != - ]]; then
        server=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$op" "$run" "$bytes" "$wall" "$mbs" \
        "$cpu" "$rss" "$server" >>"$results"
    log "  ${wall}s, ${mbs} MB/s, CPU ${cpu}s, peak RSS $((rss / 1024)) MiB"
    # Let writeback of whatever this step wrote finish before the next one is timed.
    sync
}

# The first line of a log that names an error, else its last line; one line, at most 400 chars.
first_error() {
    local line
    line=$(grep -m1 -i -E 'error|fail|fatal|panic' "$1" 2>/dev/null || tail -n1 "$1" 2>/dev/null || true)
    line=${line//$'\t'/ }
    printf '%s' "${line:0:400}"
}

record_failure() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-failed}" >>"$failures"
}

server_cpu_or_zero() {
    if [[ -n "$current_server" ]]; then server_cpu; else echo -; fi
}

# Checks (untimed) that a restore produced at least the files and bytes of the source media.
check_restore() {
    local what=$1 dir=$2 want_files=$3 want_bytes=$4 got_files got_bytes
    read -r got_files got_bytes < <(python3 "$helpers/dirstat.py" "$dir")
    if ((got_files < want_files || got_bytes < want_bytes)); then
        log "  INCOMPLETE: $what restored $got_files files / $got_bytes bytes, expected at least $want_files / $want_bytes"
        record_failure "$ds" "$what" "restore check" "$run" \
            "restored $got_files files / $got_bytes bytes, expected at least $want_files / $want_bytes"
        return 1
    fi
}

# --- the measured operations -------------------------------------------------

op_read() { stage tar tar -c -C "$data" "${paths[@]}" | stage cat cat >/dev/null; }
op_crypto() { stage crypto "$crypto_bin" "$crypto_mib"; }
op_ingest() { stage aws "${aws_s3[@]}" cp --only-show-errors "$work/ingest/$ds.bin" "s3://$S3_TEST_BUCKET/ingest/run$run"; }
# For context: one plain PUT of the same file (no multipart, no client-side hashing), the
# closest to what the server alone can take.
op_ingest_put() {
    stage curl curl -sS -f -o /dev/null -K "$secrets/curl-config" --aws-sigv4 "aws:amz:$S3_TEST_REGION:s3" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T "$work/ingest/$ds.bin" \
        "$S3_TEST_ENDPOINT/$S3_TEST_BUCKET/ingest-put/run$run"
}
# And one plain GET of that object: what the server alone gives a single reader.
op_egress_get() {
    stage curl curl -sS -f -o /dev/null -K "$secrets/curl-config" --aws-sigv4 "aws:amz:$S3_TEST_REGION:s3" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3_TEST_ENDPOINT/$S3_TEST_BUCKET/ingest-put/run$run"
}
op_egress() { stage aws "${aws_s3[@]}" cp --only-show-errors "s3://$S3_TEST_BUCKET/ingest/run$run" - | stage cat cat >/dev/null; }

op_ours_create() { stage create "$bin" --config "$ours_config" create-backup; }
op_ours_create_json() { stage create "$bin" --config "$ours_config" --json create-backup; }
op_ours_restore_incr() { stage restore "$bin" --config "$ours_config" restore-backup "$ours_incr_id" --target-dir "$restore_dir"; }
op_ours_verify() { stage verify "$bin" --config "$ours_config" verify-backup "$ours_id"; }
op_ours_restore() { stage restore "$bin" --config "$ours_config" restore-backup "$ours_id" --target-dir "$restore_dir"; }

op_charm_backup() {
    stage tar tar -c -C "$data" "${paths[@]}" \
        | stage gpg gpg --batch --symmetric --passphrase-file "$secrets/passphrase" \
        | stage aws "${aws_s3[@]}" cp --only-show-errors --expected-size="$bytes" - "s3://$S3_TEST_BUCKET/charm/run$run"
}
op_charm_restore() {
    stage aws "${aws_s3[@]}" cp --only-show-errors "s3://$S3_TEST_BUCKET/charm/run$run" - \
        | stage gpg gpg --batch --passphrase-file "$secrets/passphrase" -d \
        | stage tar tar -x -C "$restore_dir"
}

op_restic_backup() { (cd "$data" && stage restic restic "${restic_args[@]}" backup --quiet --host bench "${paths[@]}"); }
op_restic_restore() { stage restic restic "${restic_args[@]}" restore latest --quiet --target "$restore_dir"; }

# The change between two nightly backups: new media of 1% of the media bytes (random, seeded,
# the same for every tool and run) and a changed database (rows added and updated). Undone by
# undo_change, so that every run and tool sees the same data.
apply_change() {
    cp -p "$data/homeserver.db" "$scratch/homeserver.db.before"
    python3 - "$data" "$media_bytes" <<'PY'
import os, random, sqlite3, sys
data, media_bytes = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
target, written, n = media_bytes // 100, 0, 0
while written < target:
    size = min(rng.randint(20 * 1024, 2 * 1024 * 1024), target - written)
    path = os.path.join(data, "media_store/local_content/00", f"{n % 100:02d}", f"benchnew{n:06d}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
    written, n = written + size, n + 1
db = sqlite3.connect(os.path.join(data, "homeserver.db"))
db.execute("CREATE TABLE IF NOT EXISTS bench_nightly (id INTEGER PRIMARY KEY, body TEXT)")
db.executemany("INSERT INTO bench_nightly (body) VALUES (?)", [(f"message {i} " * 8,) for i in range(2000)])
db.commit()
db.close()
PY
}
undo_change() {
    rm -rf "$data/media_store/local_content/00"
    cp -p "$scratch/homeserver.db.before" "$data/homeserver.db"
}
# The stored bytes a create-backup --json reported.
object_bytes() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["object-bytes"])' "$last_out"; }

fresh_restore_dir() {
    rm -rf "$restore_dir"
    sync
    mkdir -p "$restore_dir"
}

tool_ours() {
    server_start
    ours_config=$scratch/ours.toml
    cat >"$ours_config" <<TOML
[synapse]
config = "$data/homeserver.yaml"

[s3]
endpoint = "$S3_TEST_ENDPOINT"
bucket = "$S3_TEST_BUCKET"
path = "ours/run$run"
region = "$S3_TEST_REGION"
s3-uri-style = "path"
access-key = "$S3_TEST_ACCESS_KEY"
secret-key-file = "$secrets/s3-secret"

[backup]
passphrase-file = "$secrets/passphrase"
temp-dir = "$scratch/tmp"
TOML
    mkdir -p "$scratch/tmp"
    if measure "$ds" ours create "$run" "$bytes" op_ours_create; then
        ours_id=$(tail -n1 "$last_out")
        if [[ "$ours_id" =~ ^backup-[0-9]+$ ]]; then
            measure "$ds" ours verify "$run" "$bytes" op_ours_verify || true
            rm -rf "$restore_dir"
            sync
            if measure "$ds" ours restore "$run" "$bytes" op_ours_restore; then
                check_restore ours "$restore_dir" "$media_files" "$media_bytes" || true
            fi
            rm -rf "$restore_dir"
            ours_incremental
        else
            record_failure "$ds" ours create "$run" "create-backup printed '${ours_id:0:100}', not a backup id"
        fi
    fi
    server_stop
}

# After a full backup: one with nothing changed, one after the nightly change, and the restore
# of that one. Rows: create-same, create-incr, restore-incr; stored bytes go to incremental.tsv.
ours_incremental() {
    if measure "$ds" ours create-same "$run" "$bytes" op_ours_create_json; then
        printf '%s\tsame\t%s\t%s\t0\n' "$ds" "$run" "$(object_bytes)" >>"$work/incremental.tsv"
    fi
    apply_change
    local new_bytes
    new_bytes=$(du -sb "$data/media_store/local_content/00" | cut -f1)
    if measure "$ds" ours create-incr "$run" "$bytes" op_ours_create_json; then
        printf '%s\tincr\t%s\t%s\t%s\t%s\n' "$ds" "$run" "$(object_bytes)" "$new_bytes" "$(stat -c %s "$data/homeserver.db")" >>"$work/incremental.tsv"
        ours_incr_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["backup-id"])' "$last_out")
        rm -rf "$restore_dir"
        sync
        if measure "$ds" ours restore-incr "$run" "$bytes" op_ours_restore_incr; then
            check_restore ours "$restore_dir" "$((media_files + 1))" "$((media_bytes + new_bytes))" || true
        fi
        rm -rf "$restore_dir"
    fi
    undo_change
}

tool_charm() {
    server_start
    if measure "$ds" charm backup "$run" "$bytes" op_charm_backup; then
        fresh_restore_dir
        if measure "$ds" charm restore "$run" "$bytes" op_charm_restore; then
            check_restore charm "$restore_dir" "$media_files" "$media_bytes" || true
        fi
        rm -rf "$restore_dir"
    fi
    server_stop
}

tool_restic() {
    server_start
    # A new repository (new server, new prefix, new cache) each run: a "first backup".
    rm -rf "$scratch/restic-cache"
    restic_args=(-r "s3:$S3_TEST_ENDPOINT/$S3_TEST_BUCKET/restic/run$run" --cache-dir "$scratch/restic-cache")
    export RESTIC_PASSWORD_FILE=$secrets/passphrase
    if ! timeout 300 restic "${restic_args[@]}" init >"$logs/restic-init.log" 2>&1; then
        cat "$logs/restic-init.log" >&2
        record_failure "$ds" restic init "$run" "$(first_error "$logs/restic-init.log")"
    elif measure "$ds" restic backup "$run" "$bytes" op_restic_backup; then
        fresh_restore_dir
        if measure "$ds" restic restore "$run" "$bytes" op_restic_restore; then
            check_restore restic "$restore_dir" "$media_files" "$media_bytes" || true
        fi
        rm -rf "$restore_dir"
        # restic's second and third backups, as the reference for ours.
        measure "$ds" restic backup-same "$run" "$bytes" op_restic_backup || true
        apply_change
        measure "$ds" restic backup-incr "$run" "$bytes" op_restic_backup || true
        undo_change
    fi
    server_stop
}

limits() {
    measure "$ds" limit read "$run" "$bytes" op_read || true
    if measure "$ds" limit encrypt "$run" "$bytes" op_crypto_measured; then
        # The same program's decryption rate (in memory, one core), for context on restores;
        # its time and memory are those of the whole program, so they are not repeated here.
        printf '%s\tlimit\tdecrypt\t%s\t%s\t-\t%s\t-\t-\t-\n' "$ds" "$run" "$bytes" "$decrypt_rate" >>"$results"
    fi
    server_start
    if measure "$ds" limit s3-ingest "$run" "$bytes" op_ingest; then
        measure "$ds" limit s3-egress "$run" "$bytes" op_egress || true
    fi
    server_stop
    server_start
    if measure "$ds" limit s3-put "$run" "$bytes" op_ingest_put; then
        measure "$ds" limit s3-get "$run" "$bytes" op_egress_get || true
    fi
    server_stop
}

# The example prints its own rate (encryption alone, in memory); use that as MB/s.
op_crypto_measured() {
    op_crypto
    local rate
    rate=$(sed -n 's/^encrypt_mb_s=//p' "$last_out")
    [[ -n "$rate" ]] || { echo "crypto_throughput printed no encrypt_mb_s" >&2; return 1; }
    measure_mbs=$rate
    decrypt_rate=$(sed -n 's/^decrypt_mb_s=//p' "$last_out")
    [[ -n "$decrypt_rate" ]] || decrypt_rate=-
}

# --- main --------------------------------------------------------------------

mkdir -p "$logs" "$servers" "$restores" "$scratch" "$work/data"
rm -rf "${servers:?}"/* "${restores:?}"/* "${scratch:?}"/*
: >"$results"
: >"$work/incremental.tsv"
: >"$failures"
(umask 077 && mkdir -p "$secrets" "$secrets/gnupg")
chmod 700 "$secrets" "$secrets/gnupg"
export GNUPGHOME=$secrets/gnupg
(umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$secrets/passphrase")
chmod 600 "$secrets/passphrase"
# aws: path-style requests (Garage's virtual-host domain does not resolve here), no user config.
printf '[default]\ns3 =\n    addressing_style = path\n' >"$scratch/aws-config"
export AWS_CONFIG_FILE=$scratch/aws-config
export AWS_SHARED_CREDENTIALS_FILE=/dev/null

log "size ${size} GiB (media-heavy ${media_mib} MiB, many-small ${small_files} files), ${runs} run(s), work dir $work"
ensure_tools
build_tool
garage_bin=$(timeout 600 "$root/scripts/s3-test-server.sh" install 2>>"$logs/s3-server.log" | tail -n1) \
    || die "could not install garage (see $logs/s3-server.log)"

# Space check. The data sets stay for the whole run; while one data set is measured the disk
# also holds its pre-made ingest object, one server's copy and one restore (about 3 × its size).
# media-heavy is about 1.0 GiB and many-small about 0.85 GiB per --size unit.
need_kib=0
max_kib=0
for ds in "${datasets[@]}"; do
    case "$ds" in media-heavy) per=1.05 ;; many-small) per=0.85 ;; esac
    est=$(awk -v s="$size" -v p="$per" 'BEGIN { printf "%d", s * p * 1048576 }')
    [[ -f "$work/data/$ds/.bench-params" ]] || need_kib=$((need_kib + est))
    ((3 * est > max_kib)) && max_kib=$((3 * est))
done
need_kib=$((need_kib + max_kib + 1048576))
avail_kib=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
((avail_kib > need_kib)) || die "$work has $((avail_kib / 1024)) MiB free; this size needs about $((need_kib / 1024)) MiB"

# A busy machine skews the ratios (the tools use different numbers of cores): wait for quiet,
# or record that the run was loaded.
load_busy() { awk -v n="$(nproc)" '{ exit !($1 > 0.5 * n) }' /proc/loadavg; }
loaded=0
if load_busy; then
    if ((allow_load)); then
        loaded=1
        log "warning: load average $(cut -d' ' -f1 /proc/loadavg) is above 0.5 per core; the report will say so"
    else
        quiet_wait=${BENCH_QUIET_WAIT:-300}
        log "load average $(cut -d' ' -f1 /proc/loadavg) is above 0.5 per core; waiting up to ${quiet_wait}s for it to fall"
        deadline=$((SECONDS + quiet_wait))
        while load_busy && ((SECONDS < deadline)); do sleep 10; done
        load_busy && die "the machine stays busy (load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores): ratios taken now are not comparable; stop what runs, or pass --allow-load to record a marked run"
    fi
fi
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
{
    printf 'loaded=%q\n' "$loaded"
    printf 'size_gib=%q\nruns=%q\ncommand=%q\nmedia_mib=%q\nsmall_files=%q\n' "$size" "$runs" "$orig_cmd" "$media_mib" "$small_files"
    printf 'date=%q\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'nproc=%q\n' "$(nproc)"
    printf 'cpu_model=%q\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'mem_total=%q\n' "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    printf 'kernel=%q\n' "$(uname -r)"
    printf 'fs=%q\n' "$(df -PT "$work" | awk 'NR == 2 { print $2 }')"
    printf 'fs_opts=%q\n' "$(findmnt -n -o OPTIONS -T "$work" 2>/dev/null || true)"
    printf 'commit=%q\n' "$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes in crates/')"
    printf 'v_ours=%q\n' "$("$bin" --version 2>&1 | head -n1)"
    printf 'v_gpg=%q\n' "$(gpg --version | head -n1)"
    printf 'v_aws=%q\n' "$(aws --version 2>&1 | head -n1)"
    printf 'v_restic=%q\n' "$(restic version | head -n1)"
    printf 'v_tar=%q\n' "$(tar --version | head -n1)"
    printf 'v_garage=%q\n' "$("$garage_bin" --version 2>/dev/null | head -n1 | cut -d' ' -f1-2)"
    printf 'load_start=%q\n' "$load_start"
} >"$meta"

for ds in "${datasets[@]}"; do
    generate "$ds"
done

for ds in "${datasets[@]}"; do
    data=$work/data/$ds
    mapfile -t paths < <(backup_paths "$data")
    read -r files bytes < <(cd "$data" && python3 "$helpers/dirstat.py" "${paths[@]}")
    read -r media_files media_bytes < <(cd "$data" && python3 "$helpers/dirstat.py" media_store/local_content media_store/local_thumbnails)
    printf 'files_%s=%q\nbytes_%s=%q\n' "${ds//-/_}" "$files" "${ds//-/_}" "$bytes" >>"$meta"
    crypto_mib=$(awk -v b="$bytes" 'BEGIN { m = int(b / 1048576); if (m < 64) m = 64; if (m > 512) m = 512; print m }')
    make_ingest_file "$ds" "$bytes"
    restore_dir=$restores/$ds
    log "$ds: $files files, $bytes bytes; warming the page cache (untimed read)"
    tar -c -C "$data" "${paths[@]}" | cat >/dev/null
    order=(ours charm restic)
    for ((run = 1; run <= runs; run++)); do
        limits
        # Rotate the tools' order from run to run so none always goes first.
        for ((i = 0; i < 3; i++)); do
            "tool_${order[(i + run - 1) % 3]}"
        done
    done
    ((keep)) || rm -f "$work/ingest/$ds.bin"
done

printf 'load_end=%q\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$meta"
printf 'elapsed_s=%q\n' "$(awk -v a="$started_epoch" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }')" >>"$meta"
mkdir -p "$(dirname "$doc")"
python3 "$helpers/report.py" --results "$results" --failures "$failures" --meta "$meta" --incremental "$work/incremental.tsv" --out "$doc"
log "report written to $doc (total $(awk -v a="$started_epoch" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }') s)"
