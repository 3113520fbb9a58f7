"""End-to-end: a real Synapse on PostgreSQL in physical mode (`[postgres] mode = "physical"`).

  physical    Synapse runs on a private PostgreSQL cluster (initdb/pg_ctl of the installed
              server, as the postgres user, its own port and socket folder) whose
              archive_command is `synapse-backup wal-push`. A nightly backup is made; messages
              are sent after it; the moment is noted; one more message is sent; the database is
              then lost (DROP DATABASE). `restore-backup --to-time` brings it back in place:
              Synapse starts on it, and every message up to that moment is there, the later
              one is not, and the old data directory is kept aside. Before the failure, a
              drill of the nightly backup recovers it on a private server and boots Synapse.

Skipped when no private cluster can be made here (not root, no postgres user, no initdb),
unless SYNAPSE_BACKUP_REQUIRE_POSTGRES=1.
"""

import datetime
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from synapse_harness import COMMAND_TIMEOUT, Recorded, Tool, log, run

from test_synapse import DRILL_TIMEOUT, check_drill_passed, drill_extra, populate, running


def server_bin():
    """The installed server's programs (pg_config --bindir, else the newest under
    /usr/lib/postgresql)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        if os.path.exists(os.path.join(out.stdout.strip(), "initdb")):
            return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def give_to_postgres(path):
    shutil.chown(path, "postgres", "postgres")


class Cluster:
    """A private cluster in DIR/pgdata, as the postgres user, on a socket in DIR/pgsocket."""

    def __init__(self, bindir, directory, archive_command):
        self.bindir = bindir
        self.data = os.path.join(directory, "pgdata")
        self.socket = os.path.join(directory, "pgsocket")
        self.log = os.path.join(directory, "pgsocket", "postgres.log")
        self.port = free_port()
        for path in (self.data, self.socket):
            os.makedirs(path, mode=0o700)
            give_to_postgres(path)
        self.as_postgres("initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--no-locale", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = ''\n"
                    f"unix_socket_directories = '{self.socket}'\nfsync = off\n"
                    f"wal_level = replica\narchive_mode = on\n"
                    f"archive_command = '{archive_command}'\n")

    def command(self, program, *args):
        return ["runuser", "-u", "postgres", "--", os.path.join(self.bindir, program), *args]

    def as_postgres(self, program, *args):
        return run(self.command(program, *args), timeout=COMMAND_TIMEOUT)

    def start_command(self):
        return " ".join(self.command("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start"))

    def stop_command(self):
        return " ".join(self.command("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"))

    def start(self):
        run(["sh", "-c", self.start_command()], timeout=COMMAND_TIMEOUT)

    def stop(self):
        run(["sh", "-c", self.stop_command()], timeout=COMMAND_TIMEOUT, check=False)

    def sql(self, sql, dbname="postgres"):
        proc = run([os.path.join(self.bindir, "psql"), "-X", "-h", self.socket, "-p", str(self.port),
                   "-U", "postgres", "-d", dbname, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        return proc.stdout.decode().strip()

    def wait_archived(self):
        """Switches the WAL segment and waits until the archiver has stored it."""
        last = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.sql(f"SELECT coalesce(last_archived_wal >= '{last}', false) FROM pg_stat_archiver") == "t":
                return
            time.sleep(0.1)
        raise AssertionError(f"{last} was not archived: {open(self.log).read()[-3000:]}")


def available():
    root = os.geteuid() == 0
    try:
        import pwd
        pwd.getpwnam("postgres")
        user = True
    except KeyError:
        user = False
    bindir = server_bin()
    if root and user and bindir:
        return bindir
    why = f"root: {root}, a postgres user: {user}, initdb: {bindir}"
    if os.environ.get("SYNAPSE_BACKUP_REQUIRE_POSTGRES") == "1":
        raise AssertionError(f"SYNAPSE_BACKUP_REQUIRE_POSTGRES=1 but no private cluster can be made ({why})")
    pytest.skip(f"no private PostgreSQL cluster can be made here ({why})")


def test_physical(checks, synapse_backup_bin, make_synapse, scenario_dir):
    bindir = available()
    # The postgres user runs wal-push and wal-fetch: it reads the config and the passphrase,
    # writes the store and a temp dir of its own.
    for path in (scenario_dir, os.path.dirname(scenario_dir)):
        os.chmod(path, 0o755)
    tool = Tool(synapse_backup_bin, scenario_dir)
    temp = os.path.join(scenario_dir, "sb-temp")
    os.makedirs(temp)
    for path in (tool.store, tool.passphrase_file, temp):
        give_to_postgres(path)
    sb = os.path.join(scenario_dir, "sb.toml")
    cluster = Cluster(bindir, scenario_dir, f"{synapse_backup_bin} --config {sb} wal-push %p")
    hs = make_synapse("hs")
    config = hs.generate()
    config["database"] = {"name": "psycopg2", "args": {
        "user": "postgres", "dbname": "synapse", "host": cluster.socket, "port": cluster.port,
        "cp_min": 1, "cp_max": 5}}
    with open(hs.config_path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    tool.config_for(hs.config_path, sb)
    with open(sb, "a") as f:
        f.write(f'temp-dir = "{temp}"\n\n[postgres]\nmode = "physical"\n'
                f'data-dir = "{cluster.data}"\nstop-command = "{cluster.stop_command()}"\n'
                f'start-command = "{cluster.start_command()}"\n')
        # The drill runs while the live Synapse is stopped: it is told which Synapse to boot.
        f.write(drill_extra(scenario_dir, synapse_command=f"{sys.executable} -m synapse.app.homeserver"))
    give_to_postgres(sb)
    cluster.start()
    try:
        cluster.sql("CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        run_scenario(checks, tool, sb, hs, cluster)
    finally:
        hs.stop()
        cluster.stop()


def run_scenario(checks, tool, sb, hs, cluster):
    rec = Recorded()
    with running(checks, hs):
        populate(checks, hs, rec, messages=10)
        # A one-time key that a restore must not bring back (Synapse's backup documentation).
        uploaded = rec.users["alice"].call("POST", "/_matrix/client/v3/keys/upload", json={
            "one_time_keys": {"curve25519:AAAAAQ": "dGhpcyBpcyBhIHRlc3Qga2V5"}})
        checks.require("a one-time key is uploaded", uploaded.status_code == 200, uploaded.text)
        keys = cluster.sql("SELECT count(*) FROM e2e_one_time_keys_json", dbname="synapse")
        checks.require("the database holds the one-time key", keys == "1", keys)
        nightly, _ = tool.run_json(checks, "create-backup in physical mode takes a base backup", sb, "create-backup")
        alice = rec.users["alice"]
        after = [alice.send(rec.room_id, f"after the nightly backup {i}") for i in range(5)]
        moment = datetime.datetime.now(datetime.timezone.utc)
        late = alice.send(rec.room_id, "after the moment restored to")
        cluster.wait_archived()
        before = alice.messages(rec.room_id)
    checks.require("the messages after the backup are on the server before the failure",
                   all(e in before for e in after) and late in before, f"{len(before)} messages")
    listed, _ = tool.run_json(checks, "list-backups", sb, "list-backups")
    row = next(b for b in listed["backups"] if b["backup-id"] == nightly["backup-id"])
    checks.check("list-backups shows a physical backup that took its base",
                 row["database"].get("mode") == "physical" and row["database"]["physical"]["took-base"] is True,
                 json.dumps(row["database"]))
    tool.run_json(checks, "verify-backup reads the base and the WAL to the restore point", sb,
                  "verify-backup", nightly["backup-id"])
    # The drill recovers the base on a private server in its scratch folder and boots Synapse.
    drill, elapsed = tool.run_json(checks, "drill of the physical backup", sb, "drill", nightly["backup-id"],
                                   timeout=DRILL_TIMEOUT)
    check_drill_passed(checks, drill, os.path.dirname(sb))
    database = next((c["detail"] for c in drill.get("checks", []) if c["name"] == "database"), "")
    checks.check("the drill's database recovered to the backup's restore point",
                 f"restore point {nightly['backup-id']}" in database, database)
    checks.timing(f"E2E-TIMING physical: drill of a physical backup took {elapsed:.1f}s")

    # The failure: the database is gone.
    cluster.sql("DROP DATABASE synapse WITH (FORCE)")
    at = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    restored, elapsed = tool.run_json(checks, "restore-backup --to-time recovers the database in place", sb,
                                      "restore-backup", "--to-time", at)
    log(f"restore-backup --to-time took {elapsed:.1f}s")
    notes = " ".join(restored.get("notes", []))
    checks.check("the restore reports the media rows it compared", "media files the restored database names" in notes, notes)
    checks.check("the previous data directory is kept aside",
                 os.path.isdir(f"{cluster.data}.pre-restore-{nightly['backup-id']}"), notes)
    with running(checks, hs, "restored Synapse stops cleanly"):
        messages = rec.users["alice"].messages(rec.room_id)
        checks.check("every message up to the moment restored to is there",
                     all(e in messages for e in after), f"{len(messages)} messages")
        checks.check("the message after that moment is not", late not in messages, f"{len(messages)} messages")
        checks.check("every message of the nightly backup is there",
                     all(e in messages for e in rec.messages_before),
                     f"{len(messages)} of {len(rec.messages_before)}")
        checks.check("e2e_one_time_keys_json was emptied",
                     cluster.sql("SELECT count(*) FROM e2e_one_time_keys_json", dbname="synapse") == "0")
    checks.timing(f"E2E-TIMING physical: restore-backup --to-time of a {len(rec.messages_before)}-message homeserver took {elapsed:.1f}s")
