#!/usr/bin/env python3
"""physical.py — PostgreSQL's two modes compared on a Synapse-shaped database of a few GB.

Usage: scripts/bench/physical.py [--db-gib N] [--growth-pct P] [--workdir DIR]
  (also `scripts/bench.sh --only physical [...]`)

A private cluster (the installed initdb/pg_ctl, as the postgres user, its own port and folder;
run as root) archives its WAL through `synapse-backup wal-push` into a local-folder store. A
small example data dir (scripts/example-datadir.py) points its homeserver.yaml at the cluster's
database `synapse`, which is filled with bulk rows shaped like Synapse's largest tables
(events, event_json, state_groups_state, with their indexes) up to --db-gib. Then, in one run:

  - logical full:     create-backup, [postgres] mode = "logical" (pg_dump)
  - physical full:    create-backup, mode = "physical" (pg_basebackup into wal/base-<id>)
  - --growth-pct more rows in every table; the WAL that generates (pg_wal_lsn_diff)
  - logical nightly:  create-backup (the whole dump again)
  - physical nightly: create-backup (a restore point; its WAL was archived as it came)
  - logical restore:  restore-backup of the logical nightly into an empty database (pg_restore)
  - physical restore: restore-backup of the physical nightly in place (base + WAL replay,
                      through [postgres] stop-command/start-command), until promoted

Each: wall seconds and the bytes it added to the store (the physical nightly's include the WAL
objects archived since the physical full). Targets (issue 24): the physical nightly stores
≤ 1.5× the WAL generated; the physical restore takes ≤ 0.5× the logical restore's time.

Prints a Markdown section and puts it in docs/benchmarks.md between `<!-- physical:begin -->`
and `<!-- physical:end -->` (a default run of bench.py keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from wal import Cluster, as_postgres, chown_pg, free_port, git_commit, run, server_bin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "bench passphrase for the physical mode"


def log(msg: str) -> None:
    print(f"physical-bench: {msg}", file=sys.stderr, flush=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool(binary: Path, config: Path, *args: str) -> tuple[dict, float]:
    started = time.monotonic()
    out = subprocess.run([str(binary), "--config", str(config), "--json", *args], text=True, capture_output=True)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"physical-bench: {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout), seconds


FILL = [
    # events: one row per event, with its indexes.
    "INSERT INTO events SELECT n, '$' || md5(n::text) || ':example.org', '!room' || (n % 500) || ':example.org', "
    "'m.room.message', '@user' || (n % 3000) || ':example.org', 1700000000000 + n FROM generate_series({a}, {b}) n",
    # event_json: the event's JSON, partly random.
    "INSERT INTO event_json SELECT '$' || md5(n::text) || ':example.org', '!room' || (n % 500) || ':example.org', "
    "json_build_object('type', 'm.room.message', 'content', json_build_object('body', "
    "md5(random()::text) || ' ' || repeat(md5(n::text), 3), 'msgtype', 'm.text'), 'origin_server_ts', "
    "1700000000000 + n)::text FROM generate_series({a}, {b}) n",
    # state_groups_state: several state rows per event.
    "INSERT INTO state_groups_state SELECT n / 4, '!room' || (n % 500) || ':example.org', 'm.room.member', "
    "'@user' || (n % 3000) || ':example.org', '$' || md5((n * 7)::text) || ':example.org' "
    "FROM generate_series({a} * 4, {b} * 4 + 3) n",
]

SCHEMA = [
    "CREATE TABLE events (stream_ordering bigint PRIMARY KEY, event_id text UNIQUE, room_id text, type text, "
    "sender text, origin_server_ts bigint)",
    "CREATE INDEX events_room_stream ON events (room_id, stream_ordering)",
    "CREATE TABLE event_json (event_id text PRIMARY KEY, room_id text, json text)",
    "CREATE TABLE state_groups_state (state_group bigint, room_id text, type text, state_key text, event_id text)",
    "CREATE INDEX state_groups_state_type_idx ON state_groups_state (state_group, type, state_key)",
    "CREATE TABLE e2e_one_time_keys_json (user_id text, key_id text, key_json text)",
    "CREATE TABLE local_media_repository (media_id text, url_cache text, media_length bigint)",
    "CREATE TABLE local_media_repository_thumbnails (media_id text, thumbnail_width int, "
    "thumbnail_height int, thumbnail_type text, thumbnail_method text)",
]


def fill(cluster: Cluster, start: int, rows: int, batch: int = 100_000) -> int:
    end = start + rows
    while start < end:
        b = min(start + batch, end) - 1
        for sql in FILL:
            cluster.sql_in("synapse", sql.format(a=start, b=b))
        start = b + 1
    return start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db-gib", type=float, default=2.0)
    ap.add_argument("--growth-pct", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "synapse-backup-bench-physical")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("physical-bench: run as root (the cluster runs as the postgres user)")
    bin_dir = server_bin()
    if not os.environ.get("BENCH_NO_BUILD"):
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "synapse-backup"], cwd=ROOT, check=True)
    binary = ROOT / "target/release/synapse-backup"
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)

    store, temp = work / "store", work / "temp"
    for d in (store, temp):
        d.mkdir()
        chown_pg(d)
    passphrase = work / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    chown_pg(passphrase)
    data = work / "synapse"
    run([sys.executable, str(ROOT / "scripts/example-datadir.py"), str(data), "--size-mib", "4"])

    pgdata = work / "pgdata"
    pgdata.mkdir(mode=0o700)
    chown_pg(pgdata)
    as_postgres([str(bin_dir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--no-locale", "--no-sync"])
    cluster = Cluster(bin_dir, pgdata, free_port())
    log_file = work / "pgdata.log"
    log_file.write_text("")
    chown_pg(log_file)
    configs = {}
    for mode in ("logical", "physical"):
        path = work / f"{mode}.toml"
        path.write_text(
            f'[synapse]\nconfig = "{data}/homeserver.yaml"\n[local]\npath = "{store}"\n'
            f'[backup]\npassphrase-file = "{passphrase}"\ntemp-dir = "{temp}"\n'
            f'[postgres]\nmode = "{mode}"\narchive-timeout-secs = 1800\nrecovery-timeout-secs = 7200\n'
            f'data-dir = "{pgdata}"\n'
            f'stop-command = "runuser -u postgres -- {bin_dir}/pg_ctl -D {pgdata} -m fast -w stop"\n'
            f'start-command = "runuser -u postgres -- {bin_dir}/pg_ctl -D {pgdata} -l {log_file} -w -t 3600 start"\n')
        chown_pg(path)
        configs[mode] = path
    cluster.configure(
        f"listen_addresses = ''\nwal_level = replica\narchive_mode = on\nmax_wal_size = '4GB'\n"
        f"archive_command = '{binary} --config {configs['physical']} wal-push %p'\n")
    cluster.ctl("start")
    cluster.sql("CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    yaml_path = data / "homeserver.yaml"
    yaml = yaml_path.read_text()
    database = (f"database:\n  name: psycopg2\n  args:\n    user: postgres\n    dbname: synapse\n"
                f"    host: {cluster.sock}\n    port: {cluster.port}\n")
    yaml_path.write_text(re.sub(r"(?ms)^database:\n(?:[ \t]+.*\n)+", database, yaml, count=1))
    for sql in SCHEMA:
        cluster.sql_in("synapse", sql)

    log(f"filling the database to {args.db_gib} GiB")
    target = int(args.db_gib * (1 << 30))
    rows = 0
    while int(cluster.sql("SELECT pg_database_size('synapse')")) < target:
        rows = fill(cluster, rows, 200_000)
    db_bytes = int(cluster.sql("SELECT pg_database_size('synapse')"))
    log(f"database: {db_bytes / 1e9:.2f} GB, {rows} events; waiting for the archive to catch up")
    wait_archived(cluster)

    results = {}

    def backup(name: str, mode: str, *extra: str) -> dict:
        before = dir_bytes(store)
        doc, seconds = tool(binary, configs[mode], "create-backup", *extra)
        results[name] = {"seconds": seconds, "stored": dir_bytes(store) - before, "id": doc["backup-id"]}
        log(f"{name}: {seconds:.1f} s, {results[name]['stored'] / 1e6:.1f} MB")
        return results[name]

    backup("logical full", "logical")
    backup("physical full", "physical")
    lsn = cluster.sql("SELECT pg_current_wal_lsn()")
    wal_before = dir_bytes(store / "wal")
    grow = max(1, int(rows * args.growth_pct / 100))
    fill(cluster, rows, grow)
    wal_generated = int(cluster.sql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')"))
    backup("logical nightly", "logical")
    store_before = dir_bytes(store) - (dir_bytes(store / "wal") - wal_before)
    nightly = backup("physical nightly", "physical")
    # Its WAL was archived as it came, before the backup started: counted with it.
    nightly["stored"] = dir_bytes(store) - store_before
    log(f"physical nightly with its WAL: {nightly['stored'] / 1e6:.1f} MB for {wal_generated / 1e6:.1f} MB of WAL")

    # Logical restore: into an empty database the homeserver.yaml now names.
    cluster.sql("CREATE DATABASE synapse_logical ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    yaml_path.write_text(yaml_path.read_text().replace("dbname: synapse\n", "dbname: synapse_logical\n"))
    _, seconds = tool(binary, configs["logical"], "restore-backup", results["logical nightly"]["id"], "--remove-previous")
    results["logical restore"] = {"seconds": seconds}
    log(f"logical restore: {seconds:.1f} s")
    yaml_path.write_text(yaml_path.read_text().replace("dbname: synapse_logical\n", "dbname: synapse\n"))
    cluster.sql("DROP DATABASE synapse_logical")
    _, seconds = tool(binary, configs["physical"], "restore-backup", nightly["id"], "--remove-previous")
    results["physical restore"] = {"seconds": seconds}
    log(f"physical restore: {seconds:.1f} s")
    restored_rows = int(cluster.sql_in("synapse", "SELECT count(*) FROM events"))
    if restored_rows != rows + grow:
        sys.exit(f"physical-bench: the physical restore has {restored_rows} events, not {rows + grow}")
    cluster.ctl("-m", "fast", "stop")

    section = render(results, db_bytes, wal_generated, args)
    print(section)
    doc = ROOT / "docs/benchmarks.md"
    doc.write_text(report.splice_block(doc.read_text() if doc.is_file() else "", section, "physical"))
    shutil.rmtree(work, ignore_errors=True)


def wait_archived(cluster: Cluster) -> None:
    last = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    cluster.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 3600
    while cluster.sql(f"SELECT coalesce(last_archived_wal >= '{last}', false) FROM pg_stat_archiver") != "t":
        if time.monotonic() > deadline:
            sys.exit("physical-bench: the archive did not catch up within an hour")
        time.sleep(0.2)


def render(results: dict, db_bytes: int, wal_generated: int, args) -> str:
    def row(name: str) -> str:
        r = results[name]
        stored = f"{r['stored'] / 1e6:,.1f} MB" if "stored" in r else ""
        return f"| {name} | {r['seconds']:.1f} s | {stored} |"

    nightly_ratio = results["physical nightly"]["stored"] / max(wal_generated, 1)
    restore_ratio = results["physical restore"]["seconds"] / results["logical restore"]["seconds"]
    lines = [
        "## PostgreSQL: logical (pg_dump) against physical (base + WAL)",
        "",
        f"`scripts/bench.sh --only physical --db-gib {args.db_gib:g} --growth-pct {args.growth_pct:g}` "
        f"(commit {git_commit()}, {time.strftime('%Y-%m-%d')}): a {db_bytes / 1e9:.2f} GB database "
        "(events, event_json, state_groups_state with their indexes) on a private cluster archiving through "
        "wal-push into a local folder; one run, every figure from the same machine.",
        "",
        "| step | wall | stored |",
        "| --- | --- | --- |",
        *(row(n) for n in ("logical full", "physical full", "logical nightly", "physical nightly",
                          "logical restore", "physical restore")),
        "",
        f"- WAL generated by {args.growth_pct:g} % more rows: {wal_generated / 1e6:,.1f} MB; the physical nightly "
        f"stored {nightly_ratio:.2f}× that (its WAL objects and the backup; target ≤ 1.5×).",
        f"- Physical restore (base + replay, in place) took {restore_ratio:.2f}× the logical restore's time "
        "(pg_restore into an empty database; target ≤ 0.5×).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
