#!/usr/bin/env bash
# The Debian package, installed for real: builds it (scripts/build-deb.sh), checks what it holds,
# installs it with dpkg on this machine, runs the installed program, its man page, its bash
# completion and its units, checks that an admin's edit of the config survives a reinstall, then
# removes and purges it and checks nothing is left. Needs root (dpkg). Refuses to run over a
# synapse-backup package that this test did not install.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[package-test] $*" >&2; }
fail() { echo "[package-test] FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root: it installs the package with dpkg (CI runs as root)"
if dpkg-query -W -f '${Status}' synapse-backup 2>/dev/null | grep -q 'installed'; then
    fail "a synapse-backup package is already installed here; this test installs and purges its own"
fi

# The release build's target dir is kept with the other cached tools, so that CI, which starts
# from a clean clone, recompiles only this project's crates rather than every dependency.
tools=${SYNAPSE_BACKUP_TOOLS:-$HOME/.cache/synapse-backup-tools}
export CARGO_TARGET_DIR=${SYNAPSE_BACKUP_DEB_TARGET:-$tools/deb-target}
deb=$(bash scripts/build-deb.sh | tail -n1)
[ -f "$deb" ] || fail "build-deb.sh printed no package: $deb"
log "built $deb ($(du -h "$deb" | cut -f1))"

purge() { dpkg --purge synapse-backup >/dev/null 2>&1 || true; }
trap purge EXIT

# What the package holds, before installing it.
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/synapse-backup ./etc/synapse-backup/config.toml \
    ./usr/lib/systemd/system/synapse-backup.service ./usr/lib/systemd/system/synapse-backup.timer \
    ./usr/lib/systemd/system/synapse-backup-verify.service ./usr/lib/systemd/system/synapse-backup-verify.timer \
    ./usr/lib/systemd/system/synapse-backup-drill.service ./usr/lib/systemd/system/synapse-backup-drill.timer \
    ./usr/share/bash-completion/completions/synapse-backup ./usr/share/zsh/vendor-completions/_synapse-backup \
    ./usr/share/fish/vendor_completions.d/synapse-backup.fish ./usr/share/doc/synapse-backup/README.md; do
    grep -qF " $path" <<<"$contents" || fail "the package lacks $path"
done
grep -qE ' \./usr/share/man/man1/synapse-backup\.1(\.gz)?$' <<<"$contents" || fail "the package lacks the man page"
grep -qE ' \./usr/share/man/man1/synapse-backup-create-backup\.1(\.gz)?$' <<<"$contents" \
    || fail "the package lacks the create-backup man page"
grep -E ' \./etc/synapse-backup/config.toml$' <<<"$contents" | grep -q '^-rw-------' \
    || fail "config.toml is not mode 0600 in the package"
control=$(mktemp -d)
dpkg-deb --control "$deb" "$control"
grep -qx /etc/synapse-backup/config.toml "$control/conffiles" || fail "config.toml is not a conffile"
[ "$(sort "$control/conffiles" | uniq -d)" = "" ] || fail "a conffile is listed twice"
rm -rf "$control"

log "installing with dpkg"
dpkg -i "$deb" >/dev/null
version=$(/usr/bin/synapse-backup --version)
[ "$version" = "synapse-backup $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')" ] \
    || fail "--version says '$version'"
log "$version"
man_page=$(man -w synapse-backup) || fail "man -w synapse-backup found nothing"
man -w synapse-backup-restore-backup >/dev/null || fail "no man page for restore-backup"
# The page renders and documents the commands.
MANWIDTH=100 man synapse-backup 2>/dev/null | grep -q "create-backup" || fail "the man page does not render"
log "man page $man_page"
[ "$(stat -c %a /etc/synapse-backup/config.toml)" = 600 ] || fail "installed config.toml is not 0600"
# The example config is valid as shipped.
/usr/bin/synapse-backup --config /etc/synapse-backup/config.toml config show >/dev/null \
    || fail "the shipped config.toml does not load"
# bash completes the commands.
words=$(bash -c 'source /usr/share/bash-completion/completions/synapse-backup
COMP_WORDS=(synapse-backup res); COMP_CWORD=1; COMP_LINE="synapse-backup res"; COMP_POINT=${#COMP_LINE}
complete_fn=$(complete -p synapse-backup | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
"$complete_fn" synapse-backup res synapse-backup; printf "%s\n" "${COMPREPLY[@]}"')
grep -qx restore-backup <<<"$words" || fail "bash completion of 'res' gave: $words"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/synapse-backup{,-verify,-drill}.{service,timer} \
        || fail "systemd-analyze verify rejects the installed units"
fi

# An admin's edit of the config survives a reinstall (dpkg keeps a changed conffile).
echo "# edited by the admin" >>/etc/synapse-backup/config.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q "edited by the admin" /etc/synapse-backup/config.toml || fail "a reinstall overwrote the edited config"

log "removing"
dpkg -r synapse-backup >/dev/null
[ ! -e /usr/bin/synapse-backup ] || fail "dpkg -r left /usr/bin/synapse-backup"
[ ! -e /usr/lib/systemd/system/synapse-backup.service ] || fail "dpkg -r left the units"
[ -e /etc/synapse-backup/config.toml ] || fail "dpkg -r removed the config (only --purge should)"
dpkg --purge synapse-backup >/dev/null
[ ! -e /etc/synapse-backup/config.toml ] || fail "dpkg --purge left the config"
man -w synapse-backup >/dev/null 2>&1 && fail "the man page is still found after purge"
if dpkg-query -W -f '${Status}' synapse-backup 2>/dev/null | grep -q 'installed'; then
    fail "dpkg still lists synapse-backup after purge"
fi
log "ok: built, installed, ran, reinstalled over an edited config, removed and purged"
