#!/usr/bin/env python3
"""wal.py — how fast PostgreSQL's own archiver gets WAL into the store through `wal-push`.

Usage: scripts/bench/wal.py [--wal-mib N] [--workdir DIR] [--no-garage]
  (also `scripts/bench.sh --only wal [...]`)

A private cluster (the installed initdb/pg_ctl, as the postgres user, its own port and folder;
run as root) builds a backlog of real WAL with archiving paused (archive_mode = on and an empty
archive_command keep every segment `.ready`): bulk rows shaped like Synapse's event_json (JSON
text, partly random). The stopped cluster is copied once per archive command measured; each
copy is started with that archive_command, and the time from the reload until
pg_stat_archiver.last_archived_wal reaches the last ready segment is the archiver's time. So
every figure is PostgreSQL's own one-file-at-a-time archiver calling the command, as in
production, in the same run:

  - synapse-backup wal-push to the loopback Garage (scripts/s3-test-server.sh), and to a local
    folder;
  - reference: `cp %p DIR/%f` (no encryption, no upload: the ceiling of any archive command);
  - reference: `gpg --symmetric` of each segment into a local folder (the charm's encryption,
    per segment, with no upload).

Then recovery: a base backup taken (pg_basebackup -X stream) before the backlog is recovered to
the end of the archive with `wal-fetch` (read-ahead on) from the local folder as its
restore_command, beside `cp` from a plain folder: from the server's start until it promoted.

Prints a Markdown section (MB/s of WAL, seconds, stored bytes, peak RSS of one wal-fetch, the
ratio to the 64 MB/s target) and puts it in docs/benchmarks.md between `<!-- wal:begin -->` and
`<!-- wal:end -->` (a default run of bench.py keeps it). Needs root, the postgres user, gpg and
GNU time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (the doc's blocks: splice_block)

ROOT = Path(__file__).resolve().parents[2]
TARGET_MBS = 64.0
PASSPHRASE = "bench passphrase for wal archiving"


def log(msg: str) -> None:
    print(f"wal-bench: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def as_postgres(cmd: list[str]) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", "postgres", "--", *cmd])


def server_bin() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    candidates = [Path(out.stdout.strip())] if out.returncode == 0 else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "initdb").exists():
            return c
    sys.exit("wal-bench: no initdb found (install the postgresql server package)")


def chown_pg(path: Path) -> None:
    run(["chown", "-R", "postgres:postgres", str(path)])


class Cluster:
    def __init__(self, bin_dir: Path, data: Path, port: int):
        self.bin, self.data, self.port = bin_dir, data, port
        self.sock = data.parent / f"{data.name}-sock"
        self.sock.mkdir(exist_ok=True)
        chown_pg(self.sock)

    def ctl(self, *args: str) -> None:
        as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                     str(self.data.parent / f"{self.data.name}.log"), "-w", "-t", "300", *args])

    def sql(self, sql: str) -> str:
        return self.sql_in("postgres", sql)

    def sql_in(self, database: str, sql: str) -> str:
        return run([str(self.bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres",
                    "-h", str(self.sock), "-p", str(self.port), "-d", database, "-c", sql]).stdout.strip()

    def configure(self, settings: str) -> None:
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write(f"\nport = {self.port}\nunix_socket_directories = '{self.sock}'\n{settings}\n")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_backlog(bin_dir: Path, work: Path, wal_mib: int) -> tuple[Path, list[str]]:
    """A stopped cluster whose pg_wal holds at least wal_mib MiB of .ready segments."""
    data = work / "backlog"
    data.mkdir(mode=0o700)
    chown_pg(data)
    as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    cluster = Cluster(bin_dir, data, free_port())
    cluster.configure("listen_addresses = ''\nwal_level = replica\narchive_mode = on\narchive_command = ''\n"
                      "max_wal_size = '64GB'\ncheckpoint_timeout = '1h'\nsynchronous_commit = off\n")
    cluster.ctl("start")
    cluster.sql("CREATE TABLE event_json (event_id text PRIMARY KEY, room_id text, json text)")
    base = work / "base"
    base.mkdir(mode=0o700)
    chown_pg(base)
    as_postgres([str(bin_dir / "pg_basebackup"), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres",
                 "-D", str(base), "-X", "stream", "-c", "fast", "--no-sync"])  # -X none would wait for the paused archive
    batch = 0
    while True:
        # Rows like Synapse's event_json: ids, a room, a JSON body with a random part.
        cluster.sql(
            "INSERT INTO event_json SELECT '$' || md5(random()::text) || ':example.org', "
            "'!room' || (g % 50) || ':example.org', "
            "json_build_object('type', 'm.room.message', 'content', json_build_object("
            "'body', repeat(md5(g::text), 4) || ' hello from the benchmark', 'msgtype', 'm.text'), "
            "'origin_server_ts', 1700000000000 + g, 'sender', '@user' || (g % 300) || ':example.org')::text "
            f"FROM generate_series({batch * 200000}, {batch * 200000 + 199999}) g")
        batch += 1
        ready = sorted(p.name[:-6] for p in (data / "pg_wal/archive_status").glob("*.ready"))
        if len(ready) * 16 >= wal_mib:
            break
    cluster.sql("SELECT pg_switch_wal()")
    cluster.ctl("-m", "fast", "stop")
    ready = sorted(p.name[:-6] for p in (data / "pg_wal/archive_status").glob("*.ready") if len(p.name) == 30)
    log(f"backlog: {len(ready)} segments ({len(ready) * 16} MiB) of .ready WAL")
    return data, ready


def measure(bin_dir: Path, backlog: Path, ready: list[str], work: Path, name: str, command: str) -> dict:
    data = work / f"run-{name}"
    shutil.copytree(backlog, data, symlinks=True)
    chown_pg(data)
    cluster = Cluster(bin_dir, data, free_port())
    cluster.configure("archive_command = ''\n")
    cluster.ctl("start")
    last = ready[-1]
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
    start = time.monotonic()
    cluster.sql("SELECT pg_reload_conf()")
    deadline = start + 1800
    while True:
        row = cluster.sql("SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver")
        archived, failed = row.split("|")
        if archived >= last:
            break
        if int(failed) > 0:
            sys.exit(f"wal-bench: {name}: archive_command failed; see {data.parent / (data.name + '.log')}")
        if time.monotonic() > deadline:
            sys.exit(f"wal-bench: {name}: not done within 30 min")
        time.sleep(0.05)
    seconds = time.monotonic() - start
    cluster.ctl("-m", "immediate", "stop")
    shutil.rmtree(data)
    mib = len(ready) * 16
    return {"name": name, "seconds": seconds, "mbs": mib * 1048576 / 1e6 / seconds}


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def measure_recovery(bin_dir: Path, work: Path, name: str, restore_command: str, index: int) -> dict:
    """A copy of the base backup taken before the backlog, recovered to the end of the archive."""
    data = work / f"recovery-{index}"
    shutil.copytree(work / "base", data, symlinks=True)
    (data / "recovery.signal").write_text("")
    chown_pg(data)
    os.chmod(data, 0o700)
    cluster = Cluster(bin_dir, data, free_port())
    cluster.configure(f"listen_addresses = ''\narchive_mode = off\nrestore_command = '{restore_command}'\n")
    start = time.monotonic()
    cluster.ctl("start")
    deadline = start + 1800
    while cluster.sql("SELECT pg_is_in_recovery()") != "f":
        if time.monotonic() > deadline:
            sys.exit(f"wal-bench: recovery {name} not done within 30 min")
        time.sleep(0.05)
    seconds = time.monotonic() - start
    rows = cluster.sql("SELECT count(*) FROM event_json")
    cluster.ctl("-m", "immediate", "stop")
    shutil.rmtree(data)
    return {"name": name, "seconds": seconds, "rows": rows}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wal-mib", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "synapse-backup-bench-wal")
    ap.add_argument("--no-garage", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("wal-bench: run as root (the cluster runs as the postgres user)")
    binary = Path(os.environ.get("SYNAPSE_BACKUP_BIN", ROOT / "target/release/synapse-backup"))
    if os.environ.get("BENCH_NO_BUILD") != "1":
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "synapse-backup"], check=True, cwd=ROOT)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    bin_dir = server_bin()
    tool = work / "synapse-backup"
    shutil.copy(binary, tool)
    os.chmod(tool, 0o755)
    (work / "passphrase").write_text(PASSPHRASE + "\n")
    for d in ("store", "cp", "gpg", "scratch", "gnupg"):
        (work / d).mkdir()
    os.chmod(work / "gnupg", 0o700)

    configs = {"local": f'[local]\npath = "{work / "store"}"\n'}
    garage = None
    if not args.no_garage:
        env_file = run([str(ROOT / "scripts/s3-test-server.sh"), "start", str(work / "garage")]).stdout.strip().splitlines()[-1]
        garage = dict(line.split("=", 1) for line in Path(env_file).read_text().split()
                      if "=" in line and line.startswith("S3_TEST_"))
        garage = {k: v.strip("'\"") for k, v in garage.items()}
        (work / "s3-secret").write_text(garage["S3_TEST_SECRET_KEY"])
        configs["garage"] = (
            f'[s3]\nendpoint = "{garage["S3_TEST_ENDPOINT"]}"\nbucket = "{garage["S3_TEST_BUCKET"]}"\n'
            f'path = "wal-bench-{os.getpid()}"\nregion = "{garage["S3_TEST_REGION"]}"\ns3-uri-style = "path"\n'
            f'access-key = "{garage["S3_TEST_ACCESS_KEY"]}"\nsecret-key-file = "{work / "s3-secret"}"\n')
    for name, section in configs.items():
        (work / f"{name}.toml").write_text(
            f'{section}[backup]\npassphrase-file = "{work / "passphrase"}"\ntemp-dir = "{work / "scratch"}"\n')
    chown_pg(work)

    backlog, ready = build_backlog(bin_dir, work, args.wal_mib)
    commands = {}
    if garage:
        commands["wal-push → Garage"] = f"{tool} --config {work / 'garage.toml'} wal-push %p"
    commands["wal-push → local folder"] = f"{tool} --config {work / 'local.toml'} wal-push %p"
    commands["(reference) cp to a local folder"] = f"cp %p {work / 'cp'}/%f"
    commands["(reference) gpg --symmetric to a local folder"] = (
        f"gpg --homedir {work / 'gnupg'} --batch --quiet --symmetric --cipher-algo AES256 "
        f"--passphrase-file {work / 'passphrase'} -o {work / 'gpg'}/%f.gpg %p")
    results = []
    for i, (name, command) in enumerate(commands.items()):
        log(f"measuring {name}")
        r = measure(bin_dir, backlog, ready, work, f"m{i}", command)
        r["name"] = name
        results.append(r)
    recoveries = []
    for index, (name, command) in enumerate({
        "wal-fetch (local folder), with read-ahead": f"{tool} --config {work / 'local.toml'} wal-fetch %f %p",
        "(reference) cp from a local folder": f"cp {work / 'cp'}/%f %p",
    }.items()):
        log(f"measuring recovery: {name}")
        recoveries.append(measure_recovery(bin_dir, work, name, command, index))
    stored_local = dir_bytes(work / "store" / "wal")
    stored_gpg = dir_bytes(work / "gpg")
    # One call's peak RSS: a segment pushed again by hand, with its look-ahead.
    seg = backlog / "pg_wal" / ready[0]
    rss = subprocess.run(["/usr/bin/time", "-f", "%M", str(tool), "--config", str(work / "local.toml"),
                          "wal-fetch", ready[0], str(work / "fetched")], capture_output=True, text=True)
    fetch_kib = rss.stderr.strip().splitlines()[-1] if rss.returncode == 0 else "?"
    wal_bytes = len(ready) * 16 * 1048576
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## WAL archiving: PostgreSQL's archiver through wal-push",
        "",
        f"Written by `scripts/bench.sh --only wal --wal-mib {args.wal_mib}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({os.cpu_count()} CPUs, load average at the end "
        f"{load}; commit {git_commit()}), in a run of its own: a default run keeps this section. Do not edit by "
        "hand: run the script again.",
        "",
        f"A backlog of {len(ready)} WAL segments ({wal_bytes / 1e6:,.0f} MB; rows shaped like Synapse's event_json) "
        "archived by PostgreSQL's own archiver, one file at a time, with each archive_command; the time from the "
        "reload that set it until pg_stat_archiver's last archived file is the last segment.",
        "",
        "| archive_command | seconds | MB/s of WAL | vs the 64 MB/s target |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {r['mbs']:.1f} | {r['mbs'] / TARGET_MBS:.2f}× |")
    same = (work / "fetched").read_bytes() == seg.read_bytes()
    lines += [
        "",
        "Recovery of a base backup taken before the backlog, replaying all of it (restore_command, no target: to the "
        "end of the archive), from the start of the server until it promoted:",
        "",
        "| restore_command | seconds | MB/s of WAL replayed | rows recovered |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in recoveries:
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {wal_bytes / 1e6 / r['seconds']:.1f} | {int(r['rows']):,} |")
    lines += [
        "",
        f"Stored: wal-push {stored_local / 1e6:,.0f} MB ({stored_local / wal_bytes:.2f}× the WAL), "
        f"gpg --symmetric {stored_gpg / 1e6:,.0f} MB ({stored_gpg / wal_bytes:.2f}×). Peak RSS of one wal-fetch: "
        f"{fetch_kib} KiB; segment {seg.name} fetched back {'identical' if same else 'DIFFERENT'}.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    doc = ROOT / "docs/benchmarks.md"
    doc.write_text(report.splice_block(doc.read_text() if doc.is_file() else "", section, "wal"))
    log(f"section written to {doc}")
    if garage:
        run([str(ROOT / "scripts/s3-test-server.sh"), "stop", str(work / "garage")])


if __name__ == "__main__":
    main()
