#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while (default 60 s each). A crash leaves its input in
# fuzz/artifacts/<target>/; turn it into a regression test before fixing it.
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]   (targets: manifest archive decrypt_untar)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest archive decrypt_untar)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly flags (sanitizers); the stable toolchain allows them this way.
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/decrypt_untar
# Seed the decrypt target with a real encrypted archive so it starts past the OpenPGP header,
# with the cheapest S2K so each run does not spend its time hashing the passphrase: simple
# salted S2K (mode 1); gpg 2.2 takes the iteration count from gpg-agent, ignoring --s2k-count.
if [ ! -s fuzz/corpus/decrypt_untar/seed ]; then
    tmp=$(mktemp -d)
    mkdir -p "$tmp/keys"
    echo '{"format_version":1}' > "$tmp/manifest.json"
    echo key > "$tmp/keys/a.signing.key"
    echo fuzz > "$tmp/pass"
    tar -c -C "$tmp" manifest.json keys | gpg --batch --no-symkey-cache --passphrase-file "$tmp/pass" \
        --pinentry-mode loopback --compress-algo none --s2k-mode 1 --symmetric \
        > fuzz/corpus/decrypt_untar/seed
    rm -rf "$tmp"
fi
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=1024
done
