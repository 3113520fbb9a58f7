#!/usr/bin/env bash
# Builds the Debian package: the release binary, the man pages and shell completions that
# binary generates (`synapse-backup generate`), the systemd units and the example config, put
# together by cargo-deb (installed and cached when missing). Prints the .deb's path last.
#
#   SYNAPSE_BACKUP_TOOLS       cache dir for cargo-deb (default ~/.cache/synapse-backup-tools)
#   CARGO_TARGET_DIR           cargo's target dir as usual (default ./target); the package is
#                              written to its debian/ folder
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.6.2
tools=${SYNAPSE_BACKUP_TOOLS:-$HOME/.cache/synapse-backup-tools}
log() { echo "[build-deb] $*" >&2; }

cargo_deb_root=$tools/cargo-deb-$CARGO_DEB_VERSION
if ! [ -x "$cargo_deb_root/bin/cargo-deb" ]; then
    log "installing cargo-deb $CARGO_DEB_VERSION into $cargo_deb_root (a few minutes, once)"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$cargo_deb_root" --quiet
fi
export PATH="$cargo_deb_root/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

log "building the release binary (target dir $CARGO_TARGET_DIR)"
cargo build --release --locked -p synapse-backup
# cargo-deb reads the generated files from target/release/assets (Cargo.toml's asset list).
assets=$CARGO_TARGET_DIR/release/assets
rm -rf "$assets"
"$CARGO_TARGET_DIR/release/synapse-backup" generate \
    --man-dir "$assets/man" --completions-dir "$assets/completions" >/dev/null
# Debian installs man pages compressed (-n: no name or time inside, so the build is repeatable).
gzip -9n "$assets"/man/*.1

out=$CARGO_TARGET_DIR/debian
rm -f "$out"/synapse-backup_*.deb "$out"/synapse-backup-dbgsym_*.ddeb
# The release profile keeps debug info (for backtraces while benchmarking); the package gets a
# stripped binary and the symbols go to a separate -dbgsym package, as Debian does it.
cargo deb -p synapse-backup --no-build --locked --dbgsym --output "$out" >&2
ls "$out"/synapse-backup_*.deb
