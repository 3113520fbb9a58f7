"""End-to-end tests of synapse-backup against a real Matrix Synapse, one pytest test a scenario.

Run by scripts/e2e-synapse.sh with the Python of a virtualenv that has matrix-synapse,
psycopg2-binary, requests, synapse-s3-storage-provider and pytest (`scripts/e2e-synapse.sh
WORKDIR -k sqlite` runs one scenario). Scenarios:

  sqlite      a live SQLite homeserver is backed up while messages keep arriving, destroyed,
              restored onto a freshly generated config in another directory, and checked
              through the client API (old token, messages, media, signing key, new message)
  postgresql  the same with the database on the PostgreSQL server at 127.0.0.1:5432 (skipped
              when none answers, unless SYNAPSE_BACKUP_REQUIRE_POSTGRES=1)
  charm       a backup made the Synapse charm's way (tar | gpg --symmetric) of a stopped
              SQLite homeserver is restored with --charm-source-root /data and checked the same way
  debian      the Debian package's layout (homeserver.yaml plus conf.d/, relative paths)
  s3provider  media offloaded to synapse-s3-storage-provider (loopback Garage, the provider's own
              bucket and key) by its s3_media_upload script are backed up from the bucket; the
              data dir is destroyed and the bucket emptied; a restore brings every file back
              locally, one with --media-to-provider back into the bucket; a media file in neither
              place makes create-backup refuse unless --allow-missing-media (skipped without
              S3_TEST_* unless SYNAPSE_BACKUP_REQUIRE_S3=1)
  fileprovider  the same with Synapse's file-system provider (local copies deleted by the test)
  drill       `synapse-backup drill` while a live SQLite homeserver keeps serving: a good backup
              passes every check, --keep leaves a folder whose Synapse starts by the printed
              command, a backup of another server's data fails `identity`, a backup whose media
              volume was swapped for another backup's fails `restore`; the live server is
              unchanged (the PostgreSQL scenario drills its backup too)

A scenario makes many named checks (`checks.check`, and `checks.require` for one the rest
depends on); each is printed as `ok` or `FAIL`, and any failed check fails the scenario's test.
conftest.py holds the fixtures and prints the `E2E-TIMING` lines and `N checks passed, M failed`.
"""

import contextlib
import importlib.metadata
import json
import os
import shutil
import sqlite3
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from synapse_harness import (
    CHARM_ID,
    COMMAND_TIMEOUT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    PROVIDER_PREFIX,
    S3_ENV,
    SERVER_NAME,
    DebianSynapse,
    FileProvider,
    Recorded,
    S3Provider,
    Writer,
    content_path,
    create_database,
    drop_database,
    drop_stale_databases,
    generate_with_provider,
    log,
    media_files,
    media_sizes,
    media_tree,
    png_bytes,
    postgres_available,
    psql,
    run,
    tree_digest,
)

# --------------------------------------------------------------------------------------------
# The scenarios


def test_sqlite(checks, tool, make_synapse, scenario_dir):
    """A live SQLite homeserver, backed up twice while messages keep arriving, destroyed,
    restored onto a fresh config in another directory and checked through the client API."""
    rec, timing = Recorded(), {}
    old = make_synapse("old")
    old.generate()
    sb_old = tool.config_for(old.config_path, os.path.join(scenario_dir, "sb-old.toml"))
    with running(checks, old):
        backup_id = back_up_live_server_twice(checks, tool, sb_old, old, rec, timing, "sqlite")
    remember_files(old, rec)
    tool.run(sb_old, "list-backups")
    check_verify_backup_passes(checks, tool, sb_old, backup_id)

    shutil.rmtree(old.dir)  # the server is destroyed
    new, sb_new = restore_onto_fresh_server(checks, tool, make_synapse, scenario_dir, rec, backup_id, timing)
    check_media_rows_have_files(checks, new, *sqlite_media_rows(new))
    check_restored_server(checks, new, rec)
    check_sqlite_integrity(checks, new.sqlite_path)
    check_restore_refused_while_running(checks, tool, sb_new, new)
    checks.timing(live_timing_line("sqlite", timing))


def test_postgresql(checks, tool, make_synapse, scenario_dir):
    """The same with the database on the PostgreSQL server at 127.0.0.1:5432, plus a
    --skip-database backup (skipped when no server answers)."""
    require_postgres(checks)
    drop_stale_databases()
    old_db, new_db = f"sb_e2e_{os.getpid()}_old", f"sb_e2e_{os.getpid()}_new"
    rec, timing = Recorded(), {}
    try:
        create_database(old_db)
        old = make_synapse("old", database=old_db)
        old.generate()
        sb_old = tool.config_for(old.config_path, os.path.join(scenario_dir, "sb-old.toml"))
        with running(checks, old):
            backup_id = back_up_live_server_twice(checks, tool, sb_old, old, rec, timing, "postgresql")
            back_up_without_database(checks, tool, sb_old, old_db, timing)
        remember_files(old, rec)
        tool.run(sb_old, "list-backups")
        check_verify_backup_passes(checks, tool, sb_old, backup_id)

        shutil.rmtree(old.dir)  # the server is destroyed, its database too
        drop_database(old_db)
        create_database(new_db)
        new, sb_new = restore_onto_fresh_server(
            checks, tool, make_synapse, scenario_dir, rec, backup_id, timing, database=new_db)
        restore_files_only_into_drill_dir(checks, tool, sb_new, scenario_dir, timing)
        check_restored_database_has_synapse_tables(checks, new_db)
        check_media_rows_have_files(checks, new, *postgres_media_rows(new_db))
        check_restored_server(checks, new, rec)
        check_restore_refused_while_running(checks, tool, sb_new, new, timing["skip-id"])
        drill_postgres_backup(checks, tool, new, scenario_dir, backup_id, timing)
    finally:
        for name in (old_db, new_db):
            try:
                drop_database(name)
            except Exception as e:  # noqa: BLE001
                log(f"could not drop {name}: {e}")
    checks.timing(live_timing_line("postgresql", timing, database=True))


def test_drill(checks, tool, make_synapse, scenario_dir):
    """drill: a good backup boots (every check passes) while the live server keeps serving and
    stays unchanged; --keep leaves a folder Synapse starts on again; another server's data and a
    swapped media volume fail, naming the check."""
    timing = {}
    other_id = back_up_another_server(checks, tool, make_synapse, scenario_dir)
    rec = Recorded()
    live = make_synapse("live")
    live.generate()
    textfiles = os.path.join(scenario_dir, "textfiles")
    os.makedirs(textfiles)
    sb_live = tool.config_for(live.config_path, os.path.join(scenario_dir, "sb-live.toml"), drill_extra(scenario_dir, textfiles))
    with running(checks, live):
        populate(checks, live, rec)
        first, _ = tool.run_json(checks, "create-backup of the live server", sb_live, "create-backup")
        swapped = back_up_with_swapped_volume(checks, tool, sb_live, live, rec, first["backup-id"])
        before = live_state(live)
        with HealthWatch(live.base) as watch:
            report, elapsed = tool.run_json(checks, "drill of a good backup passes", sb_live, "drill", first["backup-id"], timeout=DRILL_TIMEOUT)
            timing["drill"] = elapsed
            check_drill_passed(checks, report, scenario_dir)
            check_drill_metric(checks, textfiles)
            check_kept_drill_starts(checks, tool, sb_live, scenario_dir, first["backup-id"], timing)
            check_drill_fails(checks, tool, sb_live, other_id, "identity", "a backup of another server's data")
            check_drill_fails(checks, tool, sb_live, swapped, "restore", "a backup whose media volume is another backup's")
        checks.check("the live Synapse answered /health all through the drills", watch.failures == [] and watch.polls > 0,
                     f"{watch.polls} polls, failures: {watch.failures[:5]}")
        check_live_unchanged(checks, live, before)
    checks.timing(f"E2E-TIMING drill: drill of a {len(rec.media)}-media SQLite homeserver took {timing['drill']:.1f}s (--keep {timing['keep']:.1f}s)")


def test_charm(checks, tool, make_synapse, scenario_dir):
    """A backup made the Synapse charm's way (tar | gpg --symmetric) of a stopped SQLite
    homeserver, restored with --charm-source-root /data."""
    rec = Recorded()
    old = make_synapse("old")
    old.generate()
    with running(checks, old):
        populate(checks, old, rec)
    remember_files(old, rec)
    rec.media_tree = media_tree(old)
    write_charm_backup(checks, tool, old, scenario_dir)
    shutil.rmtree(old.dir)

    new = make_synapse("new")
    new.generate()
    sb_new = tool.config_for(new.config_path, os.path.join(scenario_dir, "sb-new.toml"))
    code, out, err, _ = tool.run(sb_new, "list-backups")
    checks.check("list-backups shows the charm backup", code == 0 and CHARM_ID in out, f"exit {code}: {out} {err}")
    restored, _ = tool.run_json(checks, "restore-backup of a charm backup with --charm-source-root /data", sb_new, "restore-backup", CHARM_ID, "--charm-source-root", "/data")
    checks.check("restore reports the charm format", restored.get("charm-format") is True, json.dumps(restored))
    check_restored_files(checks, new, rec, CHARM_ID, with_config=False)
    check_restored_server(checks, new, rec)
    check_sqlite_integrity(checks, new.sqlite_path)
    checks.timing(f"E2E-TIMING charm restore={restored['seconds']:.2f}s")


def test_debian(checks, tool, make_synapse, scenario_dir):
    """The Debian package's layout: homeserver.yaml plus conf.d/, paths relative to the
    working directory /var/lib/matrix-synapse."""
    rec = Recorded()
    old = make_synapse("old", DebianSynapse)
    old.generate()
    only_main = tool.config_for(old.config_path, os.path.join(scenario_dir, "sb-only-main.toml"))
    no_working_dir = tool.config_for([old.config_path, old.conf_d], os.path.join(scenario_dir, "sb-no-working-dir.toml"))
    sb_old = tool.config_for([old.config_path, old.conf_d], os.path.join(scenario_dir, "sb-old.toml"), f'working-dir = "{old.dir}"')
    with running(checks, old):
        populate(checks, old, rec)
        check_refused_without_conf_d(checks, tool, only_main)
        check_refused_without_working_dir_while_running(checks, tool, no_working_dir, old)
        result, _ = tool.run_json(checks, "create-backup with [synapse] config = [homeserver.yaml, conf.d]", sb_old, "create-backup")
        backup_id = result["backup-id"]
        check_check_command_on_debian_layout(checks, tool, sb_old, backup_id)
    remember_files(old, rec)
    rec.media_tree = media_tree(old)
    checks.check("the relative media store holds media", len(rec.media_tree) > 0, old.media_store)
    check_verify_backup_passes(checks, tool, sb_old, backup_id)
    check_refused_without_working_dir_when_stopped(checks, tool, no_working_dir, old)
    shutil.rmtree(os.path.join(scenario_dir, "old"))

    new = make_synapse("new", DebianSynapse)
    new.generate()
    sb_new = tool.config_for([new.config_path, new.conf_d], os.path.join(scenario_dir, "sb-new.toml"), f'working-dir = "{new.dir}"')
    restored, _ = tool.run_json(checks, "restore-backup onto a fresh Debian layout", sb_new, "restore-backup", backup_id)
    check_restored_files(checks, new, rec, backup_id)
    check_conf_d_restored_beside_homeserver_yaml(checks, new, backup_id)
    check_restored_server(checks, new, rec)
    check_sqlite_integrity(checks, new.sqlite_path)
    checks.timing(f"E2E-TIMING debian create={result['seconds']:.2f}s restore={restored['seconds']:.2f}s")


def test_s3provider(checks, tool, make_synapse, scenario_dir):
    """Media offloaded to synapse-s3-storage-provider on the test Garage (skipped without
    S3_TEST_*): see provider_scenario."""
    require_s3_garage(checks)
    provider = S3Provider(scenario_dir)
    try:
        timing = provider_scenario(checks, tool, make_synapse, scenario_dir, provider)
    finally:
        provider.close()
    checks.timing(provider_timing_line(checks.scenario, timing))


def test_fileprovider(checks, tool, make_synapse, scenario_dir):
    """Media offloaded to Synapse's file-system provider: see provider_scenario."""
    provider = FileProvider(scenario_dir)
    try:
        timing = provider_scenario(checks, tool, make_synapse, scenario_dir, provider)
    finally:
        provider.close()
    checks.timing(provider_timing_line(checks.scenario, timing))


# --------------------------------------------------------------------------------------------
# Drills

DRILL_TIMEOUT = 900
DRILL_CHECKS = ["restore", "identity", "database", "isolation", "health", "signing-key", "admin-user", "media", "client-api"]


def drill_extra(scenario_dir, textfiles=None, synapse_command=None):
    """[drill] and [monitoring] settings for a tool config (after [synapse])."""
    text = f'\n[drill]\nwork-dir = "{os.path.join(scenario_dir, "drills")}"\nmedia-sample = 5\n'
    if synapse_command:
        text += f'synapse-command = "{synapse_command}"\n'
    if textfiles:
        text += f'\n[monitoring]\ntextfile-dir = "{textfiles}"\n'
    return text


def back_up_another_server(checks, tool, make_synapse, scenario_dir):
    """A server with the same name but its own key and data, backed up into the same store."""
    other = make_synapse("other")
    other.generate()
    sb_other = tool.config_for(other.config_path, os.path.join(scenario_dir, "sb-other.toml"))
    with running(checks, other, "the other server stops cleanly"):
        other.register("mallory", "mallory-password")
        result, _ = tool.run_json(checks, "create-backup of another server", sb_other, "create-backup")
    return result["backup-id"]


def drill_postgres_backup(checks, tool, hs, scenario_dir, backup_id, timing):
    """The PostgreSQL backup drilled into a throwaway database on the same server, dropped after."""
    sb_drill = tool.config_for(hs.config_path, os.path.join(scenario_dir, "sb-drill.toml"),
                               drill_extra(scenario_dir, synapse_command=f"{sys.executable} -m synapse.app.homeserver"))
    report, elapsed = tool.run_json(checks, "drill of the PostgreSQL backup passes", sb_drill, "drill", backup_id, timeout=DRILL_TIMEOUT)
    checks.timing(f"E2E-TIMING postgresql-drill: the drill of the PostgreSQL backup took {elapsed:.1f}s")
    check_drill_passed(checks, report, scenario_dir)
    leftover = psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'synapse_drill_%'").strip()
    checks.check("the drill dropped its throwaway database", leftover == "0", f"{leftover} synapse_drill_ databases remain")


def live_state(hs):
    """What a drill must not change: the media, the key, the config files, the users."""
    with open(hs.config_path, "rb") as f:
        config = f.read()
    with open(hs.signing_key_path, "rb") as f:
        key = f.read()
    db = sqlite3.connect(f"file:{hs.sqlite_path}?mode=ro", uri=True)
    try:
        users = sorted(row[0] for row in db.execute("SELECT name FROM users"))
    finally:
        db.close()
    return {"media": media_tree(hs), "config": config, "key": key, "users": users}


def check_live_unchanged(checks, hs, before):
    after = live_state(hs)
    for what in ("media", "config", "key", "users"):
        checks.check(f"the live server's {what} are unchanged by the drills", after[what] == before[what],
                     f"before {str(before[what])[:300]}, after {str(after[what])[:300]}")


class HealthWatch:
    """Polls the live server's /health in a thread while the block runs."""

    def __init__(self, base):
        self.base = base
        self.polls = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                r = requests.get(self.base + "/health", timeout=10)
                if r.status_code != 200:
                    self.failures.append(f"HTTP {r.status_code}")
            except requests.RequestException as e:
                self.failures.append(str(e))
            self.polls += 1
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        return False


def check_drill_passed(checks, report, scenario_dir):
    """Every named check passed (the database one too: the backup recorded its row counts), and
    nothing is left in the drills' work dir."""
    statuses = {c["name"]: c["status"] for c in report.get("checks", [])}
    checks.check("the drill reports ok", report.get("ok") is True, json.dumps(report)[:2000])
    for name in DRILL_CHECKS:
        detail = next((c["detail"] for c in report["checks"] if c["name"] == name), "not run")
        checks.check(f"drill check {name} passed", statuses.get(name) == "passed", f"{statuses.get(name)}: {detail}")
    drills = os.path.join(scenario_dir, "drills")
    leftovers = os.listdir(drills) if os.path.isdir(drills) else []
    checks.check("the drill removed its scratch folder", leftovers == [], str(leftovers))


def check_drill_metric(checks, textfiles):
    path = os.path.join(textfiles, "synapse_backup_drill.prom")
    text = open(path).read() if os.path.exists(path) else ""
    checks.check("the drill wrote synapse_backup_last_drill_success_timestamp_seconds",
                 "synapse_backup_last_drill_success_timestamp_seconds{" in text and "synapse_backup_last_drill_duration_seconds{" in text,
                 text[:1000])


def check_kept_drill_starts(checks, tool, sb_config, scenario_dir, backup_id, timing):
    """drill --keep: the folder stays, and Synapse starts on it again by the printed command."""
    report, elapsed = tool.run_json(checks, "drill --keep passes", sb_config, "drill", backup_id, "--keep", timeout=DRILL_TIMEOUT)
    timing["keep"] = elapsed
    kept = report.get("kept") or {}
    folder, command = kept.get("folder"), kept.get("start-command")
    checks.require("drill --keep names the folder and the command", bool(folder) and bool(command), json.dumps(report)[:1000])
    with open(os.path.join(folder, "homeserver-drill.yaml")) as f:
        port = yaml.safe_load(f)["listeners"][0]["port"]
    out = open(os.path.join(folder, "started-by-hand.log"), "ab")
    proc = subprocess.Popen(["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    try:
        healthy, last = False, ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if r.status_code == 200 and r.text.strip() == "OK":
                    healthy = True
                    break
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.3)
        checks.check("Synapse starts on the kept drill folder by the printed command", healthy, f"exit {proc.poll()}; {last}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    shutil.rmtree(folder)


def check_drill_fails(checks, tool, sb_config, backup_id, check_name, what):
    code, out, err, _ = tool.run(sb_config, "--json", "drill", backup_id, timeout=DRILL_TIMEOUT)
    try:
        report = json.loads(out)
    except ValueError:
        report = {}
    failed = [c["name"] for c in report.get("checks", []) if c["status"] == "failed"]
    checks.check(f"the drill of {what} exits 5", code == 5, f"exit {code}; {err[-2000:]}")
    checks.check(f"the drill of {what} names the failed check {check_name}", failed[:1] == [check_name] and check_name in err,
                 f"failed checks {failed}; stderr {err[-1000:]}")


def back_up_with_swapped_volume(checks, tool, sb_config, hs, rec, first_id):
    """A full backup whose media volume is replaced by the first backup's (same passphrase):
    every object opens, but the media are not the ones its lists name."""
    alice = rec.users["alice"]
    alice.upload(png_bytes(120, 90, seed=99), "image/png", "late.png")
    result, _ = tool.run_json(checks, "create-backup --full for the swapped-volume case", sb_config, "create-backup", "--full")
    second = result["backup-id"]
    volumes = os.path.join(tool.store, "volumes")
    mine = sorted(n for n in os.listdir(volumes) if n.startswith(second + "-") and not n.endswith("-files"))
    theirs = sorted(n for n in os.listdir(volumes) if n.startswith(first_id + "-") and not n.endswith("-files"))
    checks.require("both backups have a media volume", bool(mine) and bool(theirs), f"{mine} {theirs}")
    shutil.copyfile(os.path.join(volumes, theirs[0]), os.path.join(volumes, mine[0]))
    return second


# --------------------------------------------------------------------------------------------
# What is needed besides Synapse


def restore_onto_fresh_server(checks, tool, make_synapse, scenario_dir, rec, backup_id, timing, database=None):
    """A new server (its own, different signing key) in another directory, the backup restored
    onto it and its files checked; the server and its synapse-backup config."""
    new = make_synapse("new", database=database)
    new.generate()
    check_fresh_signing_key_differs(checks, new, rec)
    sb_new = tool.config_for(new.config_path, os.path.join(scenario_dir, "sb-new.toml"))
    restored, _ = tool.run_json(checks, "restore-backup onto a fresh config in another directory", sb_new, "restore-backup", backup_id)
    timing["restore"] = restored["seconds"]
    check_restored_files(checks, new, rec, backup_id)
    return new, sb_new


def require_postgres(checks):
    """Skips the test when no PostgreSQL answers (fails it under SYNAPSE_BACKUP_REQUIRE_POSTGRES=1)."""
    available, why = postgres_available()
    if not available:
        if os.environ.get("SYNAPSE_BACKUP_REQUIRE_POSTGRES") == "1":
            checks.require("PostgreSQL answers on 127.0.0.1:5432", False, why)
        pytest.skip(
            f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT} as {PG_USER} ({why});"
            " set SYNAPSE_BACKUP_REQUIRE_POSTGRES=1 to fail instead")
    for program in ("pg_dump", "pg_restore"):
        if not shutil.which(program):
            checks.check(f"{program} is installed", False, "apt-get install postgresql-client")


def require_s3_garage(checks):
    """Skips the test without a test Garage in S3_TEST_* (fails it under SYNAPSE_BACKUP_REQUIRE_S3=1)."""
    missing = [name for name in S3_ENV if not os.environ.get(name)]
    if missing:
        if os.environ.get("SYNAPSE_BACKUP_REQUIRE_S3") == "1":
            checks.require("a test Garage is exported (S3_TEST_*)", False, f"unset: {' '.join(missing)}")
        pytest.skip(
            f"no test Garage ({' '.join(missing)} unset; scripts/s3-test-server.sh start DIR writes them);"
            " set SYNAPSE_BACKUP_REQUIRE_S3=1 to fail instead")


# --------------------------------------------------------------------------------------------
# A server before the backup


@contextlib.contextmanager
def running(checks, hs, stopped_check="original Synapse stops cleanly"):
    """Synapse HS runs inside the block; stopped after it, with the check that it stopped cleanly
    (not made when the block raised)."""
    hs.start()
    try:
        yield hs
    finally:
        clean = hs.stop()
    checks.check(stopped_check, clean, hs.log_tail())


def populate(checks, hs, rec, messages=40):
    """Two accounts talking in a room, three media with two thumbnails: what the backup holds."""
    start_conversation(hs, rec, checks.scenario, messages)
    upload_media_with_thumbnails(checks, rec)
    check_key_and_thumbnails_before_the_backup(checks, hs, rec)


def start_conversation(hs, rec, scenario, messages):
    alice = hs.register("alice", "alice-password", admin=True)
    bob = hs.register("bob", "bob-password")
    rec.users = {"alice": alice, "bob": bob}
    rec.room_id = alice.create_room([bob.user_id])
    bob.join(rec.room_id)
    for i in range(messages):
        sender = alice if i % 2 == 0 else bob
        body = f"{scenario} message {i} from {sender.user_id} ✓ ünïcode"
        rec.messages_before[sender.send(rec.room_id, body)] = body


def upload_media_with_thumbnails(checks, rec):
    scenario = checks.scenario
    alice = rec.users["alice"]
    big = png_bytes(800, 600, seed=len(scenario))
    small = png_bytes(64, 48, seed=7)
    text = f"plain text attachment for {scenario}\n".encode() * 100
    for data, ctype, name in ((big, "image/png", "big.png"), (small, "image/png", "small.png"), (text, "text/plain", "notes.txt")):
        mxc = alice.upload(data, ctype, name)
        rec.media[mxc] = data
        rec.messages_before[alice.send(rec.room_id, f"{scenario} attachment {name} {mxc}")] = f"{scenario} attachment {name} {mxc}"
    big_mxc = next(m for m, d in rec.media.items() if d == big)
    for width, height, method in ((96, 96, "crop"), (320, 240, "scale")):
        r = alice.thumbnail(big_mxc, width, height, method)
        checks.require(
            f"thumbnail {width}x{height} {method} of the 800x600 PNG is served",
            r.status_code == 200 and r.headers.get("Content-Type", "").startswith("image/"),
            f"HTTP {r.status_code} {r.headers.get('Content-Type')} {r.text[:200] if r.status_code != 200 else ''}",
        )
        rec.thumbnails[(big_mxc, width, height, method)] = r.content


def check_key_and_thumbnails_before_the_backup(checks, hs, rec):
    rec.keys = hs.server_keys()
    checks.require("server publishes an ed25519 verify key", any(k.startswith("ed25519:") for k in rec.keys), str(rec.keys))
    thumbs = tree_digest(os.path.join(hs.media_store, "local_thumbnails"))
    checks.require("thumbnails exist on disk before the backup", len(thumbs) > 0, f"{hs.media_store}/local_thumbnails is empty")
    log(f"populated: {len(rec.messages_before)} messages, {len(rec.media)} media, {len(thumbs)} thumbnail files")


def remember_files(hs, rec):
    with open(hs.signing_key_path, "rb") as f:
        rec.signing_key = f.read()


# --------------------------------------------------------------------------------------------
# Backing up


def back_up_live_server_twice(checks, tool, sb_config, hs, rec, timing, database_kind):
    """Populates the running server, backs it up while messages keep arriving, then again
    (incrementally) after more messages and an upload. Returns the second backup's id."""
    populate(checks, hs, rec)
    result, _ = backup_while_writing(checks, tool, sb_config, hs, rec)
    timing["create"] = result["seconds"]
    check_backup_names_its_database(checks, result, database_kind)
    return second_backup(checks, tool, sb_config, hs, rec, result["backup-id"])


def backup_while_writing(checks, tool, sb_config, hs, rec, extra_args=()):
    """create-backup --json while a thread keeps writing; returns (json, elapsed)."""
    alice = rec.users["alice"]
    writer = Writer(checks.scenario, alice.with_base(hs.base), rec.room_id)
    writer.start()
    writer.wait_for(3)
    # Every file on disk now must be in the backup; files written later may or may not be.
    rec.media_tree = media_tree(hs)
    writer.uploads_allowed.set()
    launched = time.monotonic()
    try:
        result, elapsed = tool.run_json(checks, "create-backup succeeds on a live Synapse", sb_config, "create-backup", *extra_args)
    finally:
        ended = time.monotonic()
        writer.wait_for(len(writer.sent) + 3, timeout=20)
        writer.finish()
    # Messages in flight while create-backup ran: sent before it ended, answered after it began.
    during = [i for i, _e, _b, start, done in writer.sent if start < ended and done > launched]
    checks.check(
        f"messages kept arriving while create-backup ran ({len(during)} in flight during its {ended - launched:.2f}s)",
        not writer.errors and during,
        f"sent {len(writer.sent)}, errors {writer.errors[:3]}",
    )
    for _i, event_id, body, _start, done in writer.sent:
        if done < launched:
            rec.messages_before[event_id] = body
    rec.concurrent = [(i, e, b) for i, e, b, _s, _d in writer.sent]
    rec.concurrent_uploads = [(m, d) for m, d, _t in writer.uploads]
    return result, elapsed


def check_backup_names_its_database(checks, result, database_kind):
    checks.check(
        "backup says which database it holds",
        (result.get("database") or {}).get("kind") == database_kind and (result.get("database") or {}).get("included") is True,
        json.dumps(result.get("database")),
    )


def second_backup(checks, tool, sb_config, hs, rec, first_id):
    """New messages and an upload, then a second backup: it must be incremental (taking the
    first backup's media without reading them again). Returns its id: the one restored."""
    alice = rec.users["alice"]
    extra = png_bytes(320, 200, seed=99)
    mxc = alice.upload(extra, "image/png", "after-the-first-backup.png")
    rec.media[mxc] = extra
    for i in range(5):
        body = f"{checks.scenario} message {i} after the first backup"
        rec.messages_before[alice.send(rec.room_id, body)] = body
    rec.media_tree = media_tree(hs)
    second, _ = tool.run_json(checks, "a second create-backup succeeds", sb_config, "create-backup")
    summary = {k: second.get(k) for k in ("kind", "parent", "reused-files", "reused-bytes", "object-bytes")}
    checks.check(
        "the second backup is incremental, made against the first",
        second.get("kind") == "incremental" and second.get("parent") == first_id,
        json.dumps(summary),
    )
    checks.check(
        "the second backup took the first one's media without storing them again",
        (second.get("reused-files") or 0) >= len(rec.media) - 1,
        json.dumps(summary),
    )
    return second["backup-id"]


def back_up_without_database(checks, tool, sb_config, database, timing):
    """A --skip-database backup (restored into a drill dir later), and pg_dump alone timed, to
    tell the database's part of the create time."""
    skipped, _ = tool.run_json(checks, "create-backup --skip-database succeeds", sb_config, "create-backup", "--skip-database")
    timing["create-skip-database"] = skipped["seconds"]
    timing["skip-id"] = skipped["backup-id"]
    started = time.monotonic()
    run(
        ["sh", "-c", f"pg_dump -h {PG_HOST} -p {PG_PORT} -U {PG_USER} --format=custom --no-owner {database} > /dev/null"],
        timeout=COMMAND_TIMEOUT,
    )
    timing["pg_dump"] = time.monotonic() - started


def check_verify_backup_passes(checks, tool, sb_config, backup_id):
    code, _out, err, _ = tool.run(sb_config, "verify-backup", backup_id)
    checks.check("verify-backup passes", code == 0, f"exit {code}: {err.strip()[:500]}")


def write_charm_backup(checks, tool, hs, work):
    """A backup the way the Synapse charm makes them, into the store: the data dir (as /data)
    through tar | gpg --symmetric with the store's passphrase."""
    # The charm's data dir is /data: copy this one there (symlinks followed, none kept).
    root = os.path.join(work, "charm-root")
    shutil.copytree(hs.dir, os.path.join(root, "data"), symlinks=False)
    members = [f"data/{SERVER_NAME}.signing.key", "data/homeserver.db"]
    if os.path.exists(os.path.join(root, "data", "homeserver.db-wal")):
        members.append("data/homeserver.db-wal")
    members += ["data/media_store/local_content", "data/media_store/local_thumbnails"]
    gnupghome = os.path.join(work, "gnupg")
    os.makedirs(gnupghome, mode=0o700)
    env = dict(os.environ, GNUPGHOME=gnupghome)
    target = os.path.join(tool.store, CHARM_ID)
    tar = subprocess.Popen(["tar", "-c", "-C", root, *members], stdout=subprocess.PIPE)
    with open(target + ".tmp", "wb") as out:
        gpg = subprocess.Popen(
            ["gpg", "--batch", "--symmetric", "--passphrase-file", tool.passphrase_file],
            stdin=tar.stdout,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
        )
        tar.stdout.close()
        _, gpg_err = gpg.communicate(timeout=COMMAND_TIMEOUT)
    tar_rc = tar.wait(timeout=COMMAND_TIMEOUT)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    checks.require("charm pipeline (tar | gpg --symmetric) wrote a backup", tar_rc == 0 and gpg.returncode == 0, f"tar {tar_rc}, gpg {gpg.returncode}: {gpg_err.decode(errors='replace')}")
    os.rename(target + ".tmp", target)
    shutil.rmtree(root)


# --------------------------------------------------------------------------------------------
# The Debian layout's configuration


def check_refused_without_conf_d(checks, tool, only_main):
    code, _out, err, _ = tool.run(only_main, "create-backup")
    checks.check("with only homeserver.yaml listed, create-backup refuses: server_name is in conf.d",
                 code == 2 and "server_name" in err and "conf.d" in err, f"exit {code}: {err.strip()[:400]}")


def check_refused_without_working_dir_while_running(checks, tool, no_working_dir, hs):
    # media_store_path is relative. Resolved beside the config (this test's /etc is not
    # /etc/matrix-synapse) it is wrong: the running Synapse's working directory says so.
    code, _out, err, _ = tool.run(no_working_dir, "create-backup")
    checks.check("without working-dir, the running Synapse's own directory is named: exit 2, no backup",
                 code == 2 and f"runs in {hs.dir}" in err and "working-dir" in err, f"exit {code}: {err.strip()[:400]}")


def check_refused_without_working_dir_when_stopped(checks, tool, no_working_dir, hs):
    # Stopped, there is no process to ask: the wrong guess finds no media store and says so.
    code, _out, err, _ = tool.run(no_working_dir, "create-backup")
    checks.check("without working-dir and Synapse stopped: exit 2 naming the missing media store",
                 code == 2 and os.path.join(hs.etc, "media_store") in err and "working-dir" in err, f"exit {code}: {err.strip()[:400]}")


def check_check_command_on_debian_layout(checks, tool, sb_config, backup_id):
    checked, _ = tool.run_json(checks, "check passes on the running Debian layout", sb_config, "check")
    items = {c["check"]: c for c in checked.get("checks", [])}
    synapse_item = items.get("synapse", {})
    installed = importlib.metadata.version("matrix-synapse")  # the Synapse this test runs
    checks.check(f"check reports the running Synapse's version ({installed})",
                 synapse_item.get("status") == "ok" and installed in synapse_item.get("detail", ""),
                 json.dumps(synapse_item))
    checks.check("check's passphrase item opens the backup just made",
                 backup_id in items.get("passphrase", {}).get("detail", ""), json.dumps(items.get("passphrase")))


def check_conf_d_restored_beside_homeserver_yaml(checks, hs, backup_id):
    restored_conf_d = os.path.join(hs.etc, f"restored-config-{backup_id}", "conf.d")
    checks.check("the conf.d files are backed up and restored beside homeserver.yaml",
                 sorted(os.listdir(restored_conf_d)) == ["database.yaml", "server_name.yaml"] if os.path.isdir(restored_conf_d) else False,
                 restored_conf_d)


# --------------------------------------------------------------------------------------------
# The restored server's files


def check_fresh_signing_key_differs(checks, hs, rec):
    with open(hs.signing_key_path, "rb") as f:
        fresh_key = f.read()
    checks.check("the fresh config came with a different signing key", fresh_key != rec.signing_key, "same key generated twice?")


def check_restored_files(checks, hs, rec, backup_id, with_config=True):
    with open(hs.signing_key_path, "rb") as f:
        key = f.read()
    checks.check("the fresh config's signing key file was replaced by the backed-up one", key == rec.signing_key, f"{hs.signing_key_path} differs")
    tree = media_tree(hs)
    missing = {k for k, v in rec.media_tree.items() if tree.get(k) != v}
    checks.check(
        f"all {len(rec.media_tree)} media and thumbnail files on disk when the backup started are restored identical",
        not missing,
        f"missing or different: {sorted(missing)[:5]}",
    )
    if with_config:
        restored_config = os.path.join(os.path.dirname(hs.config_path), f"restored-config-{backup_id}")
        checks.check(
            f"backed-up config is in restored-config-{backup_id}/",
            os.path.isfile(os.path.join(restored_config, "homeserver.yaml")),
            f"{restored_config} holds {os.listdir(restored_config) if os.path.isdir(restored_config) else 'nothing'}",
        )


def restore_files_only_into_drill_dir(checks, tool, sb_config, work, timing):
    """The --skip-database backup restored into a drill dir: the files alone, timed."""
    drill = os.path.join(work, "drill-files-only")
    files_only, _ = tool.run_json(checks, "restore-backup of the --skip-database backup into a drill dir", sb_config, "restore-backup", timing["skip-id"], "--target-dir", drill)
    timing["restore-files-only"] = files_only["seconds"]
    shutil.rmtree(drill, ignore_errors=True)


def check_restored_database_has_synapse_tables(checks, database):
    tables = int(psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=database))
    checks.check("restored PostgreSQL database has Synapse's tables", tables > 50, f"{tables} tables")


def check_sqlite_integrity(checks, path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    checks.check("restored database passes PRAGMA integrity_check", result == [("ok",)], str(result[:5]))


MEDIA_QUERY = "SELECT media_id FROM local_media_repository"
THUMBNAIL_QUERY = (
    "SELECT media_id, thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method"
    " FROM local_media_repository_thumbnails"
)


def sqlite_media_rows(hs):
    """(media rows, thumbnail rows) of the restored SQLite database."""
    conn = sqlite3.connect(f"file:{hs.sqlite_path}?mode=ro", uri=True)
    media_rows = conn.execute(MEDIA_QUERY).fetchall()
    thumbnail_rows = conn.execute(THUMBNAIL_QUERY).fetchall()
    conn.close()
    return media_rows, thumbnail_rows


def postgres_media_rows(database):
    """(media rows, thumbnail rows) of the restored PostgreSQL database."""
    media_rows = [tuple(line.split("|")) for line in psql(MEDIA_QUERY, dbname=database).splitlines() if line]
    thumbnail_rows = [tuple(line.split("|")) for line in psql(THUMBNAIL_QUERY, dbname=database).splitlines() if line]
    return media_rows, thumbnail_rows


def check_media_rows_have_files(checks, hs, media_rows, thumbnail_rows):
    """Every local media and thumbnail row of the restored database has its file: the database
    snapshot is taken before the media are listed."""
    missing = []
    for (media_id,) in media_rows:
        path = os.path.join(hs.media_store, "local_content", media_id[:2], media_id[2:4], media_id[4:])
        if not os.path.isfile(path):
            missing.append(path)
    for media_id, width, height, ctype, method in thumbnail_rows:
        name = f"{int(width)}-{int(height)}-{ctype.replace('/', '-')}-{method}"
        path = os.path.join(hs.media_store, "local_thumbnails", media_id[:2], media_id[2:4], media_id[4:], name)
        if not os.path.isfile(path):
            missing.append(path)
    checks.check(
        f"every one of the {len(media_rows)} media and {len(thumbnail_rows)} thumbnail rows of the restored database has its file",
        not missing,
        f"no file {missing[:5]}",
    )


# --------------------------------------------------------------------------------------------
# The restored server, running


def check_restored_server(checks, hs, rec):
    """Starts Synapse on the restored config and checks everything through the API."""
    with running(checks, hs, "restored Synapse stops cleanly"):
        alice = rec.users["alice"].with_base(hs.base)
        bob = rec.users["bob"].with_base(hs.base)
        check_old_access_tokens_work(checks, alice, bob)
        check_history_restored(checks, alice, rec)
        check_media_restored(checks, alice, rec)
        keys = hs.server_keys()
        checks.check("server verify key is the one from before the backup", keys == rec.keys, f"before {rec.keys}, after {keys}")
        check_new_message_after_restore(checks, alice, bob, rec)


def check_old_access_tokens_work(checks, alice, bob):
    for name, client in (("alice", alice), ("bob", bob)):
        r = client.whoami()
        checks.check(
            f"old access token of {name} still works (whoami)",
            r.status_code == 200 and r.json().get("user_id") == client.user_id,
            f"HTTP {r.status_code} {r.text[:300]}",
        )


def check_history_restored(checks, alice, rec):
    history = alice.messages(rec.room_id)
    missing = {e: b for e, b in rec.messages_before.items() if history.get(e) != b}
    checks.check(
        f"all {len(rec.messages_before)} messages sent before the backup started are in the room history",
        not missing,
        f"{len(missing)} missing, e.g. {list(missing.items())[:3]}; history has {len(history)} messages",
    )
    # The snapshot is one point in time: of the messages sent while the backup ran, the
    # restored history holds a prefix of the sequence, never one with gaps.
    if rec.concurrent:
        flags = [e in history for _i, e, _b in rec.concurrent]
        restored_count = sum(flags)
        checks.check(
            f"messages sent during the backup form a consistent prefix ({restored_count} of {len(rec.concurrent)} restored)",
            flags == [True] * restored_count + [False] * (len(flags) - restored_count),
            "restored: " + "".join("x" if f else "." for f in flags),
        )


def check_media_restored(checks, alice, rec):
    bad_media = []
    for mxc, data in rec.media.items():
        r = alice.download(mxc)
        if r.status_code != 200 or r.content != data:
            bad_media.append(f"{mxc}: HTTP {r.status_code}, {len(r.content)} bytes (expected {len(data)})")
    checks.check(f"all {len(rec.media)} media download byte-identical", not bad_media, "; ".join(bad_media))
    bad_thumbs = []
    for (mxc, width, height, method), data in rec.thumbnails.items():
        r = alice.thumbnail(mxc, width, height, method)
        if r.status_code != 200 or r.content != data:
            bad_thumbs.append(f"{mxc} {width}x{height} {method}: HTTP {r.status_code}, {len(r.content)} bytes (expected {len(data)})")
    checks.check("thumbnails served as before", not bad_thumbs, "; ".join(bad_thumbs))
    # Media uploaded while the backup ran: each is either wholly there or wholly absent.
    bad_concurrent = []
    restored_concurrent = 0
    for mxc, data in rec.concurrent_uploads:
        r = alice.download(mxc)
        if r.status_code == 200 and r.content == data:
            restored_concurrent += 1
        elif r.status_code != 404:
            bad_concurrent.append(f"{mxc}: HTTP {r.status_code} {len(r.content)} bytes")
    if rec.concurrent_uploads:
        checks.check(
            f"media uploaded during the backup are whole or absent ({restored_concurrent} of {len(rec.concurrent_uploads)} restored)",
            not bad_concurrent,
            "; ".join(bad_concurrent),
        )


def check_new_message_after_restore(checks, alice, bob, rec):
    try:
        body = f"{checks.scenario} message after restore"
        event_id = bob.send(rec.room_id, body)
        ok = alice.messages(rec.room_id).get(event_id) == body
        checks.check("a new message can be sent and read after the restore", ok, "not in history")
    except requests.RequestException as e:
        checks.check("a new message can be sent and read after the restore", False, repr(e))


def check_restore_refused_while_running(checks, tool, sb_config, hs, restore_id=None):
    """Backs up the restored server while it runs, then checks that restoring onto the running
    server is refused before anything changes. For PostgreSQL, restore_id names a
    --skip-database backup (a full one is refused first because the database is not empty)."""
    hs.start()
    try:
        again, _ = tool.run_json(checks, "the restored server can be backed up again while it runs", sb_config, "create-backup")
        restore_id = restore_id or again["backup-id"]
        before = tree_digest(hs.dir)
        code, _out, err, _ = tool.run(sb_config, "restore-backup", restore_id)
        checks.check(
            "restore-backup refuses (exit 6) while Synapse's listener answers",
            code == 6 and "running" in err,
            f"exit {code}: {err.strip()[:500]}",
        )
        # Synapse writes pid_file only when it daemonizes: write it as a daemonized one would.
        pid_file = hs.load_config()["pid_file"]
        with open(pid_file, "w") as f:
            f.write(f"{hs.proc.pid}\n")
        code, _out, err, _ = tool.run(sb_config, "restore-backup", restore_id)
        os.unlink(pid_file)
        checks.check(
            "restore-backup refuses (exit 6) while pid_file names a live Synapse",
            code == 6 and str(hs.proc.pid) in err,
            f"exit {code}: {err.strip()[:500]}",
        )
        after = tree_digest(hs.dir)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and ".log" not in k and "homeserver.db" not in k)
        checks.check("the refused restore changed no file", not changed, f"changed: {changed[:5]}")
    finally:
        hs.stop()


def live_timing_line(scenario, timing, database=False):
    line = f"E2E-TIMING {scenario} create={timing.get('create', 0):.2f}s restore={timing.get('restore', 0):.2f}s"
    if database:
        create_db = timing.get("create", 0) - timing.get("create-skip-database", 0)
        restore_db = timing.get("restore", 0) - timing.get("restore-files-only", 0)
        line += (
            f" create-skip-database={timing.get('create-skip-database', 0):.2f}s database-part-of-create~{create_db:.2f}s"
            f" pg_dump-alone={timing.get('pg_dump', 0):.2f}s restore-files-only={timing.get('restore-files-only', 0):.2f}s"
            f" database-part-of-restore~{restore_db:.2f}s"
        )
    return line


# --------------------------------------------------------------------------------------------
# Media storage providers (media_storage_providers in homeserver.yaml)


class Offloaded:
    """The media files of the original server, and which of them the offload took off its disk
    (paths relative to media_store_path)."""

    def __init__(self):
        self.first = {}  # path -> sha256 of every local file before the offload
        self.files = []  # the offloaded paths, sorted
        self.bytes = 0
        self.notes_mxc = None  # the text attachment, the file made to go missing at the end
        self.expected = {}  # path -> sha256 of every file a restore must bring back


def provider_scenario(checks, tool, make_synapse, work, provider):
    """Media offloaded to a storage provider (local copies deleted) are backed up from the
    provider; the provider is emptied and the data dir destroyed; a restore brings them back
    locally, and one with --media-to-provider puts them back in the provider instead.
    Returns the timings."""
    rec, timing, media = Recorded(), {}, Offloaded()
    old = make_synapse("old")
    generate_with_provider(old, provider)
    sb_old = tool.config_for(old.config_path, os.path.join(work, "sb-old.toml"))
    with running(checks, old):
        populate(checks, old, rec)
        check_provider_holds_every_local_file(checks, old, provider, media)
        offload_local_copies(checks, old, provider, rec, media)
        upload_after_the_offload(checks, old, rec, media)
        backup_id = back_up_offloaded_media(checks, tool, sb_old, media, timing)
    remember_files(old, rec)
    check_verify_backup_passes(checks, tool, sb_old, backup_id)

    # Destroy the server and the provider's copies.
    shutil.rmtree(old.dir)
    provider.empty()
    checks.require("the provider is empty", not provider.objects(), provider.where())

    new = check_default_restore_brings_media_back_locally(checks, tool, make_synapse, work, provider, rec, media, backup_id, timing)
    shutil.rmtree(new.dir)
    provider.empty()
    checks.require("the provider is empty again", not provider.objects(), provider.where())
    again, sb_again = check_restore_to_provider(checks, tool, make_synapse, work, provider, rec, media, backup_id, timing)
    check_backup_refuses_media_in_neither_place(checks, tool, sb_again, again, provider, media)
    return timing


def check_provider_holds_every_local_file(checks, hs, provider, media):
    media.first = media_files(hs.media_store)
    # store_synchronous: each upload (and thumbnail) is in the provider before Synapse
    # answers; allow a moment anyway.
    deadline = time.monotonic() + 15
    while True:
        held = provider.objects()
        unheld = sorted(rel for rel, digest in media.first.items() if held.get(rel) != digest)
        if not unheld or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    thumbs = [rel for rel in media.first if rel.startswith("local_thumbnails/")]
    checks.require(
        f"the provider ({provider.where()}) holds each of the {len(media.first)} local files ({len(thumbs)} thumbnails), identical, at the same relative path",
        not unheld and thumbs,
        f"missing or different: {unheld[:5]}; provider holds {sorted(held)[:10]}",
    )
    outside = sorted(k for k in held if k.startswith("!"))
    checks.check("every provider object is under the prefix", not outside, f"{outside[:5]}")


def offload_local_copies(checks, hs, provider, rec, media):
    """The provider's offload (s3_media_upload, or deleting the copies by hand) takes the local
    copies off the disk."""
    first = media.first
    sizes = media_sizes(hs.media_store, first)
    media.notes_mxc = notes = next(m for m, d in rec.media.items() if d.startswith(b"plain text attachment"))
    if isinstance(provider, S3Provider):
        # Synapse uploaded everything already (store_synchronous): take one object away
        # so that s3_media_upload uploads it itself before deleting the local copy.
        provider.delete(content_path(notes))
    output = provider.offload(checks, hs)
    if isinstance(provider, S3Provider):
        held = provider.objects()
        unheld = sorted(rel for rel, digest in first.items() if held.get(rel) != digest)
        checks.check(
            f"s3_media_upload uploaded the one object the bucket lacked ({PROVIDER_PREFIX}{content_path(notes)}); the bucket holds all {len(first)} files",
            "Uploaded 1 files" in output.splitlines() and not unheld,
            f"missing or different: {unheld[:5]}",
        )
    left = media_files(hs.media_store)
    media.files = offloaded = sorted(set(first) - set(left))
    media.bytes = sum(sizes[rel] for rel in offloaded)
    offloaded_thumbs = [rel for rel in offloaded if rel.startswith("local_thumbnails/")]
    reported = [line for line in output.splitlines() if line.startswith("Deleted") and line.endswith(" files")]
    checks.require(
        f"the offload deleted local copies: {len(offloaded)} of {len(first)} files ({len(offloaded_thumbs)} thumbnails, {media.bytes} bytes) are gone from media_store_path",
        offloaded and reported == [f"Deleted {len(offloaded)} files"],
        f"gone: {offloaded[:5]}; still there: {sorted(left)[:5]}; it said {reported}",
    )


def upload_after_the_offload(checks, hs, rec, media):
    """New media after the offload: local and in the provider, read locally."""
    alice = rec.users["alice"]
    later = [
        (png_bytes(320, 200, seed=42), "image/png", "after-offload.png"),
        (b"a note uploaded after the offload\n" * 50, "text/plain", "after-offload.txt"),
    ]
    for data, ctype, name in later:
        mxc = alice.upload(data, ctype, name)
        rec.media[mxc] = data
        body = f"{checks.scenario} attachment {name} {mxc}"
        rec.messages_before[alice.send(rec.room_id, body)] = body
    local = media_files(hs.media_store)
    checks.check("media uploaded after the offload are local", len(local) >= 2, f"{sorted(local)}")
    media.expected = dict(media.first)
    media.expected.update(local)


def back_up_offloaded_media(checks, tool, sb_config, media, timing):
    result, _ = tool.run_json(checks, "create-backup succeeds with offloaded media", sb_config, "create-backup")
    timing["create"] = result["seconds"]
    summary = {k: result.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}
    checks.check(
        f"the backup fetched the {len(media.files)} offloaded files ({media.bytes} bytes) from the provider, none missing",
        result.get("provider-files") == len(media.files)
        and result.get("provider-bytes") == media.bytes
        and result.get("missing-media") == 0,
        json.dumps(summary),
    )
    return result["backup-id"]


def check_default_restore_brings_media_back_locally(checks, tool, make_synapse, work, provider, rec, media, backup_id, timing):
    """A default restore puts every file back under media_store_path. Returns the new server."""
    new = make_synapse("new")
    generate_with_provider(new, provider)
    sb_new = tool.config_for(new.config_path, os.path.join(work, "sb-new.toml"))
    restored, _ = tool.run_json(checks, "restore-backup onto a fresh config", sb_new, "restore-backup", backup_id)
    timing["restore"] = restored["seconds"]
    with open(new.signing_key_path, "rb") as f:
        checks.check("the signing key is restored", f.read() == rec.signing_key, new.signing_key_path)
    restored_files = media_files(new.media_store)
    wrong = sorted(rel for rel, digest in media.expected.items() if restored_files.get(rel) != digest)
    checks.check(
        f"all {len(media.expected)} media and thumbnail files, the {len(media.files)} offloaded ones included, are restored identical under media_store_path",
        not wrong,
        f"missing or different: {wrong[:5]}",
    )
    checks.check("a default restore writes nothing to the provider", not provider.objects(), f"{sorted(provider.objects())[:5]}")
    check_restored_server(checks, new, rec)
    check_sqlite_integrity(checks, new.sqlite_path)
    return new


def check_restore_to_provider(checks, tool, make_synapse, work, provider, rec, media, backup_id, timing):
    """--media-to-provider: the offloaded files go back to the provider, not to the disk; serving
    them does not bring them back to the disk, so a new backup takes them from the provider
    again. Returns the server and its synapse-backup config."""
    offloaded, expected = media.files, media.expected
    again = make_synapse("new-to-provider")
    generate_with_provider(again, provider)
    sb_again = tool.config_for(again.config_path, os.path.join(work, "sb-new-to-provider.toml"))
    restored, _ = tool.run_json(
        checks, "restore-backup --media-to-provider onto a fresh config", sb_again,
        "restore-backup", backup_id, "--media-to-provider")
    timing["restore-to-provider"] = restored["seconds"]
    restored_files = media_files(again.media_store)
    held = provider.objects()
    local_offloaded = [rel for rel in offloaded if rel in restored_files]
    checks.check(
        f"the {len(offloaded)} offloaded files are not under media_store_path",
        not local_offloaded,
        f"restored locally: {local_offloaded[:5]}",
    )
    wrong = [rel for rel in offloaded if held.get(rel) != expected[rel]]
    checks.check(
        f"the {len(offloaded)} offloaded files are back in the provider ({provider.where()}), identical",
        not wrong,
        f"missing or different: {wrong[:5]}; provider holds {sorted(held)[:5]}",
    )
    wrong = [rel for rel in expected if rel not in offloaded and restored_files.get(rel) != expected[rel]]
    checks.check(
        f"the {len(expected) - len(offloaded)} files that were local are restored locally, identical",
        not wrong,
        f"missing or different: {wrong[:5]}",
    )
    check_restored_server(checks, again, rec)

    result, _ = tool.run_json(checks, "create-backup of the --media-to-provider restore succeeds", sb_again, "create-backup")
    checks.check(
        f"it takes the {len(offloaded)} offloaded files from the provider again",
        result.get("provider-files") == len(offloaded) and result.get("missing-media") == 0,
        json.dumps({k: result.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}),
    )
    return again, sb_again


def check_backup_refuses_media_in_neither_place(checks, tool, sb_config, hs, provider, media):
    """A media file in neither place: the backup refuses, naming it, unless allowed."""
    victim = content_path(media.notes_mxc)
    media_id = media.notes_mxc.rsplit("/", 1)[1]
    checks.require(f"{victim} was offloaded", victim in media.files, f"offloaded: {media.files}")
    cached = os.path.join(hs.media_store, victim)
    if os.path.exists(cached):
        log(f"Synapse cached {victim} locally when it was downloaded; removing that copy")
        os.unlink(cached)
    provider.delete(victim)
    code, _out, err, _ = tool.run(sb_config, "create-backup")
    checks.check(
        "create-backup refuses (exit 6) a media file in neither media_store_path nor the provider, naming it",
        code == 6 and media_id in err,
        f"exit {code}: {err.strip()[:800]}",
    )
    allowed, _ = tool.run_json(
        checks, "create-backup --allow-missing-media succeeds", sb_config, "create-backup", "--allow-missing-media")
    checks.check("it reports the one missing media file", allowed.get("missing-media") == 1,
                 json.dumps({k: allowed.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}))


def provider_timing_line(scenario, timing):
    return (
        f"E2E-TIMING {scenario} create={timing.get('create', 0):.2f}s restore={timing.get('restore', 0):.2f}s"
        f" restore-to-provider={timing.get('restore-to-provider', 0):.2f}s"
    )
