#!/usr/bin/env bash
# providers.sh — create-backup throughput when 90% of the media live only in an S3 storage
# provider bucket (synapse-s3-storage-provider's layout), against the same media kept locally,
# in the same run, on the same loopback Garage.
#
# Usage: scripts/bench/providers.sh [--size-mib N] [--runs N] [--workdir DIR]
#   --size-mib N  media to generate (media-heavy profile; default 1024)
#   --runs N      runs of each measurement; the median is reported (default 3)
#   --workdir DIR where data, the store and Garage go (default ${TMPDIR:-/tmp}/synapse-backup-bench-providers)
# Environment: SYNAPSE_BACKUP_BIN (default target/release/synapse-backup, built unless
# BENCH_NO_BUILD=1). Needs `aws` (awscli) to offload the media, as scripts/bench.py installs it.
#
# Both backups go to the same S3 store (the Garage test bucket, its own prefix per run) and are
# full (--full), so the only difference is where 90% of the media are read from: local disk, or
# the provider bucket (downloaded `[backup] provider-downloads` at once, default 8). Prints a
# Markdown table on stdout: MB/s of media backed up, wall seconds, peak RSS, and the ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
size_mib=1024
runs=3
work=${TMPDIR:-/tmp}/synapse-backup-bench-providers
while (($#)); do
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --workdir) work=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
log() { echo "providers-bench: $*" >&2; }
bin=${SYNAPSE_BACKUP_BIN:-$root/target/release/synapse-backup}
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release"
    cargo build --release --locked -q -p synapse-backup --bin synapse-backup
fi
command -v aws >/dev/null || { log "aws (awscli) is needed: apt-get install awscli or pip install awscli"; exit 1; }
[[ -x /usr/bin/time ]] || { log "/usr/bin/time is needed: apt-get install time"; exit 1; }

rm -rf "$work"
mkdir -p "$work"
garage=$work/garage
cleanup() { scripts/s3-test-server.sh stop "$garage" >/dev/null 2>&1 || true; }
trap cleanup EXIT
env_file=$(scripts/s3-test-server.sh start "$garage" | tail -n1)
# shellcheck disable=SC1090
. "$env_file"
export AWS_ACCESS_KEY_ID=$S3_TEST_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_TEST_SECRET_KEY
export AWS_DEFAULT_REGION=$S3_TEST_REGION AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

data=$work/data
log "generating $size_mib MiB of media"
python3 scripts/example-datadir.py "$data" --profile media-heavy --size-mib "$size_mib" >&2
printf 'bench-passphrase\n' > "$work/passphrase"
chmod 600 "$work/passphrase"
printf '%s' "$S3_TEST_SECRET_KEY" > "$work/s3-secret"
chmod 600 "$work/s3-secret"
config_for() { # $1: the store's prefix
    cat > "$work/config.toml" <<TOML
[synapse]
config = "$data/homeserver.yaml"
[s3]
endpoint = "$S3_TEST_ENDPOINT"
bucket = "$S3_TEST_BUCKET"
path = "$1"
region = "$S3_TEST_REGION"
s3-uri-style = "path"
access-key = "$S3_TEST_ACCESS_KEY"
secret-key-file = "$work/s3-secret"
[backup]
passphrase-file = "$work/passphrase"
temp-dir = "$work"
TOML
}

# One full backup: "seconds bytes provider_files peak_rss_kib" on stdout.
measure() { # $1: label, $2: run
    config_for "bench-$1-$2"
    /usr/bin/time -f "%M" -o "$work/rss" "$bin" --config "$work/config.toml" --json create-backup --full \
        > "$work/out.json" 2> "$work/err.log" || { cat "$work/err.log" >&2; exit 1; }
    python3 - "$work/out.json" "$(cat "$work/rss")" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
print(out["seconds"], out["bytes"], out["provider-files"], sys.argv[2])
PY
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A results
for run in $(seq 1 "$runs"); do
    log "run $run: all media local"
    results[local,$run]=$(measure local "$run")
done

log "offloading 90% of the media files to s3://$S3_TEST_BUCKET/offload/ and deleting the local copies"
offload=$work/offload
python3 - "$data/media_store" "$offload" <<'PY'
import os, sys, shutil
store, out = sys.argv[1], sys.argv[2]
files = []
for top in ("local_content", "local_thumbnails"):
    for dirpath, _, names in os.walk(os.path.join(store, top)):
        files += [os.path.join(dirpath, n) for n in names]
files.sort()
for i, path in enumerate(files):
    if i % 10:
        dest = os.path.join(out, os.path.relpath(path, store))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(path, dest)
print(f"{sum(1 for i in range(len(files)) if i % 10)} of {len(files)} files offloaded", file=sys.stderr)
PY
aws --endpoint-url "$S3_TEST_ENDPOINT" s3 cp --recursive --only-show-errors "$offload" "s3://$S3_TEST_BUCKET/offload/"
cat >> "$data/homeserver.yaml" <<YAML
media_storage_providers:
- module: s3_storage_provider.S3StorageProviderBackend
  store_local: True
  config:
    bucket: $S3_TEST_BUCKET
    endpoint_url: $S3_TEST_ENDPOINT
    region_name: $S3_TEST_REGION
    access_key_id: $S3_TEST_ACCESS_KEY
    secret_access_key: $S3_TEST_SECRET_KEY
    prefix: offload/
YAML
for run in $(seq 1 "$runs"); do
    log "run $run: 90% of the media in the provider bucket"
    results[provider,$run]=$(measure provider "$run")
done

report() { # $1: label → "mbps seconds rss_mib provider_files"
    local secs=() line
    for run in $(seq 1 "$runs"); do secs+=("${results[$1,$run]}"); done
    printf '%s\n' "${secs[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
secs = statistics.median(float(r[0]) for r in rows)
mbps = statistics.median(int(r[1]) / 1e6 / float(r[0]) for r in rows)
rss = max(int(r[3]) for r in rows) / 1024
print(f"{mbps:.1f} {secs:.2f} {rss:.1f} {rows[0][2]} {min(float(r[0]) for r in rows):.2f} {max(float(r[0]) for r in rows):.2f}")'
}
read -r l_mbps l_secs l_rss l_files l_min l_max <<<"$(report local)"
read -r p_mbps p_secs p_rss p_files p_min p_max <<<"$(report provider)"
ratio=$(python3 -c "print(f'{$p_mbps / $l_mbps:.2f}')")
cat <<MD
### Media in an S3 storage provider ($size_mib MiB media-heavy, $runs runs, medians)

| media read from | MB/s | wall s (min–max) | peak RSS | files from the provider |
| --- | --- | --- | --- | --- |
| all local (reference, same run) | $l_mbps | $l_secs ($l_min–$l_max) | $l_rss MiB | $l_files |
| 90% from the provider bucket | $p_mbps | $p_secs ($p_min–$p_max) | $p_rss MiB | $p_files |

Ratio provider / local: **${ratio}×** (\`scripts/bench/providers.sh --size-mib $size_mib --runs $runs\`, $(date -u +%F), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg) at the end).
MD
