#!/usr/bin/env bash
# The main job on the built-in default: generates an example Synapse data dir, backs it up to a
# local folder, lists and verifies the backup, and restores it into a drill directory.
# Usage: scripts/demo.sh [WORKDIR]   (default: ./demo; nothing outside it is touched)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-$root/demo}
mkdir -p "$work"
work=$(cd "$work" && pwd)

cargo build --release --locked -q
bin=$root/target/release/synapse-backup

if [ ! -f "$work/data/homeserver.yaml" ]; then
    python3 scripts/example-datadir.py "$work/data" --size-mib 20
fi
if [ ! -f "$work/passphrase" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$work/passphrase")
fi
cat > "$work/config.toml" <<TOML
[synapse]
config = "$work/data/homeserver.yaml"

[local]
path = "$work/backups"

[backup]
passphrase-file = "$work/passphrase"
TOML

export SYNAPSE_BACKUP_CONFIG=$work/config.toml
id=$("$bin" create-backup)
"$bin" list-backups
"$bin" verify-backup "$id"
rm -rf "$work/drill"
"$bin" restore-backup "$id" --target-dir "$work/drill"
echo
echo "Backup $id is in $work/backups; a restore drill is in $work/drill."
echo "By hand, in an empty folder (README, \"Disaster recovery by hand\"):"
echo "  gpg --batch --passphrase-file $work/passphrase -d $work/backups/$id | tar -x"
echo "  then the loop over volumes/runs.list and the volumes that README shows (store=$work/backups)"
