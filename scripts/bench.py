#!/usr/bin/env python3
"""bench.py — benchmark synapse-backup against the Synapse charm's pipeline, restic and the
machine's own limits, on the same data and the same kind of S3 server, in one run.

Usage:
  scripts/bench.py [--size GIB] [--runs N] [--only media-heavy|media-small|many-small] [--workdir DIR] [--keep]
                   [--allow-load]
  scripts/bench.py --only scale [--scale-files N,N,...] [--runs N] [--workdir DIR] [--keep] [--allow-load]
  (scripts/bench.sh runs this program with the same arguments.)

  --size GIB    scale of the data sets (default 1): media-heavy is GIB GiB of media, media-small
                the same shape at 0.32 × GIB GiB (one or two volumes: a restore's least parallel
                case), many-small is 50,000 × GIB files of 2–60 KiB (at least 1,000). Fractions
                work (0.05).
  --runs N      how many times each measurement is repeated (default 3); median and spread
  --only NAME   only one data set: media-heavy, media-small or many-small; or `scale`, which is not part of the
                default run: per-file costs at several numbers of tiny media files (below)
  --scale-files N,N,...
                with --only scale: the numbers of media files, one data set each (default
                20000,200000; at least 100 each; the disk needs about 14 KiB per file for
                each set and twice that per run for its restores)
  --workdir DIR where data, servers and restores go
                (default ${TMPDIR:-/tmp}/synapse-backup-bench; needs about 5 × GIB GiB free)
  --keep        keep the work dir (generated data is reused by the next run with --keep)
  --allow-load  run even when the machine is busy at the start (1-minute load average above
                0.5 per core); the report then says its ratios are not comparable. Without it
                such a start waits up to BENCH_QUIET_WAIT seconds (default 300) for the load to
                fall, then refuses: gpg's single-threaded ZLIB makes the charm's pipeline look
                slower on a loaded machine than it is, which flatters our ratios.

What it does: builds the tool, installs restic (apt) and awscli (apt or pip) if missing,
generates seeded Synapse-like data dirs with scripts/example-datadir.py, then per run and data
set measures
  limits:  reading the data (tar -c | cat > /dev/null), OpenPGP encryption on one core in memory
           (crates/core/examples/crypto_throughput.rs), S3 ingest of a pre-made object of the
           same size (aws s3 cp FILE) and, for context, S3 egress (aws s3 cp OBJECT - | cat) and
           the server's own limits: one plain PUT and one plain GET of that object (curl)
  ours:    synapse-backup create-backup, verify-backup, restore-backup --target-dir; then the
           incremental steps: a second create-backup with nothing changed, then 1% new media
           and a changed database and a third one, and the restore of that incremental backup
           (the bytes each stored are recorded from --json)
  charm:   tar -c | gpg --batch --symmetric --passphrase-file F | aws s3 cp --expected-size=N -
           and aws s3 cp - | gpg -d | tar -x
  restic:  restic backup into a fresh repository (a "first backup"), restic restore, and
           restic's second and third backups after the same (no) changes
each against a fresh Garage S3 server on loopback (scripts/s3-test-server.sh), recording wall
time, MB/s, CPU seconds (all processes of a pipeline) and peak RSS (largest process) with
/usr/bin/time. It prints a Markdown report (tables, ratios, targets; rendered by
scripts/bench/report.py) on stdout and writes it to docs/benchmarks.md. Progress goes to stderr.

--only scale measures what grows with the number of files instead: per --scale-files N a data dir
of N tiny media files (64–640 bytes, Synapse's sharded layout, one thumbnail per four originals;
`example-datadir.py --profile scale`, the same database at every N) backed up to a local folder:
a full create-backup, one with nothing changed, one after 1% new media files, and the restore of
that third one; wall time, peak RSS and bytes stored (create-backup --json's object-bytes) of
each. References in the same run: restic's first and nothing-changed backups of the same files
into a local repository (bytes: what the repository grew by), and tar -c of the files the third
backup holds into a local file, then tar -x of it into an empty dir. Its report is one section,
written into docs/benchmarks.md between <!-- scale:begin --> and <!-- scale:end --> (replacing an
earlier one, appended at the end if there is none); the rest of the file is left as it is, and
a default run keeps that section when it rewrites the file.

Environment knobs:
  BENCH_NO_BUILD=1        use target/release/synapse-backup and the crypto_throughput example
                          as they are (no cargo build)
  SYNAPSE_BACKUP_BIN=FILE  measure this synapse-backup binary (with BENCH_NO_BUILD=1)
  BENCH_CMD_TIMEOUT=SECS  bound on each measured command (default 900 + 600 per GiB; with --only
                          scale 900 + 1 per 200 files of the largest set)
  BENCH_DOC=FILE          where the report goes (default docs/benchmarks.md)
  BENCH_QUIET_WAIT=SECS   how long a busy start waits for the load to fall (default 300)

Each step is a function of its own, to be read and run one at a time; from a Python prompt in
scripts/: `import bench; b = bench.Bench.from_args(bench.parse_args(["--size", "0.02"]))`,
`bench.prepare_work_dir(b)`, then e.g. `bench.generate(b, "many-small")`.
"""

import argparse
import datetime
import fcntl
import functools
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

ROOT = Path(os.path.abspath(__file__)).parent.parent
HELPERS = ROOT / "scripts" / "bench"
S3_SERVER = ROOT / "scripts" / "s3-test-server.sh"
sys.path.insert(0, str(HELPERS))
sys.dont_write_bytecode = True  # no __pycache__ left in the work tree
import dirstat  # noqa: E402  (scripts/bench/dirstat.py)
import report  # noqa: E402  (scripts/bench/report.py)

DATASETS = ("media-heavy", "media-small", "many-small")
# media-small: media-heavy's shape at this share of its size (about 400 MB at --size 1): a backup
# of one or two 256 MiB volumes, where a restore has the fewest volumes to spread over threads.
MEDIA_SMALL_SHARE = 0.32
# Disk use per --size unit, in GiB: what the space check budgets for each data set.
DISK_PER_GIB = {"media-heavy": 1.05, "media-small": 1.05 * MEDIA_SMALL_SHARE, "many-small": 0.85}
# Where the nightly change puts its new media (media ids are letters, so no generated file is there).
NEW_MEDIA = "media_store/local_content/00"
# --only scale: the data sets' name prefix, the default numbers of media files, and the disk one
# tiny media file takes in a data dir or a restore (its block, its shard folders, its share of a tar).
SCALE = "scale"
SCALE_FILES = "20000,200000"
SCALE_KIB_PER_FILE = 14
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def die(message: str):
    log(f"error: {message}")
    raise SystemExit(1)


# --- the run -------------------------------------------------------------------


@dataclass
class Bench:
    """The whole run: its options, where things go, the tools, and the S3 server of the moment."""

    size: str  # as given: the report quotes it
    runs: int
    datasets: tuple[str, ...]
    work: Path
    keep: bool
    allow_load: bool
    created_work: bool
    command: str
    cmd_timeout: str
    doc: Path
    scale_files: tuple[int, ...] = ()  # --only scale: the media files of each data set
    bin: Path = ROOT / "target/release/synapse-backup"
    crypto_bin: Path = ROOT / "target/release/examples/crypto_throughput"
    garage_bin: str = ""
    apt_updated: bool = False
    server: Path | None = None  # the running server's directory
    server_seq: int = 0
    s3: dict[str, str] = field(default_factory=dict)  # what the server's env file exports
    started: float = field(default_factory=time.monotonic)
    lock: object = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Bench":
        work = Path(args.workdir or f"{os.environ.get('TMPDIR') or '/tmp'}/synapse-backup-bench")
        created = not os.path.lexists(work)
        work.mkdir(parents=True, exist_ok=True)
        work = Path(os.path.realpath(work))
        # Paths go into TOML strings and the Garage config unescaped.
        if any(c in str(work) for c in "\"\\'\n"):
            die("--workdir must not contain quotes, backslashes or newlines")
        size = float(args.size)
        scale_files = tuple(sorted({int(n) for n in (args.scale_files or SCALE_FILES).split(",")}))
        timeout = int(900 + 600 * size)
        if args.only == SCALE:
            timeout = 900 + max(scale_files) // 200  # a second per 200 files, well above any step today
        return cls(
            size=args.size,
            runs=int(args.runs),
            datasets=(args.only,) if args.only else DATASETS,
            work=work,
            keep=args.keep,
            allow_load=args.allow_load,
            created_work=created,
            command=" ".join(["scripts/bench.py", *args.argv]),
            cmd_timeout=os.environ.get("BENCH_CMD_TIMEOUT") or str(timeout),
            doc=Path(os.environ.get("BENCH_DOC") or ROOT / "docs/benchmarks.md"),
            scale_files=scale_files if args.only == SCALE else (),
        )

    @property
    def scale_only(self) -> bool:
        return self.datasets == (SCALE,)

    @property
    def media_mib(self) -> str:
        return f"{float(self.size) * 1024:.2f}"

    @property
    def media_small_mib(self) -> str:
        return f"{float(self.size) * 1024 * MEDIA_SMALL_SHARE:.2f}"

    @property
    def small_files(self) -> int:
        return max(1000, int(float(self.size) * 50000 + 0.5))

    # Everything the run creates lives under these (removed on exit unless --keep).
    logs = property(lambda self: self.work / "logs")
    secret_dir = property(lambda self: self.work / "secrets")
    servers = property(lambda self: self.work / "servers")
    restores = property(lambda self: self.work / "restores")
    scratch = property(lambda self: self.work / "scratch")
    results = property(lambda self: self.work / "results.tsv")
    failures = property(lambda self: self.work / "failures.tsv")
    incremental = property(lambda self: self.work / "incremental.tsv")
    stored = property(lambda self: self.work / "stored.tsv")  # --only scale: bytes each backup stored
    meta = property(lambda self: self.work / "meta.env")
    last_out = property(lambda self: self.scratch / "last.out")
    passphrase = property(lambda self: self.secret_dir / "passphrase")


@dataclass
class DataSet:
    """A generated data dir and what every tool backs up from it."""

    name: str
    data: Path
    paths: list[str]  # relative to data
    files: int
    bytes: int
    media_files: int
    media_bytes: int
    restore_dir: Path
    crypto_mib: int


@dataclass
class Step:
    """One data set in one run: what every measured operation needs."""

    bench: Bench
    ds: DataSet
    run: int


@dataclass
class Measurement:
    """One row of results.tsv, as scripts/bench/report.py reads it (None is written as '-')."""

    dataset: str
    tool: str
    op: str
    run: int
    bytes: int
    wall_s: str | None
    mb_s: str | None
    cpu_s: str | None
    peak_rss_kib: int | None
    server_cpu_s: str | None

    def tsv(self) -> str:
        fields = [self.dataset, self.tool, self.op, self.run, self.bytes, self.wall_s, self.mb_s,
                  self.cpu_s, self.peak_rss_kib, self.server_cpu_s]
        return "\t".join("-" if f is None else str(f) for f in fields) + "\n"


@dataclass
class Stored:
    """One row of stored.tsv (--only scale): the bytes one backup added to its store, as
    scripts/bench/report.py reads them. synapse-backup's are what create-backup --json reported as
    object-bytes, restic's what its repository's files grew by, tar's the size of its archive."""

    dataset: str
    tool: str
    op: str
    run: int
    bytes: int

    def tsv(self) -> str:
        return f"{self.dataset}\t{self.tool}\t{self.op}\t{self.run}\t{self.bytes}\n"


@dataclass
class NewMedia:
    """The media files the scale set's 1% step added to a data dir, and the folders made for
    them (the topmost new one of each path), so that undo leaves the dir as it was."""

    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    bytes: int = 0

    def add(self, path: Path, data: bytes) -> None:
        top, parent = None, path.parent
        while not parent.exists():
            top, parent = parent, parent.parent
        if top is not None:
            self.dirs.append(top)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(path)
        self.bytes += len(data)

    def undo(self) -> None:
        for path in self.files:
            remove(path)
        for path in reversed(self.dirs):
            remove(path)


# --- small helpers -------------------------------------------------------------


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remove(path: Path) -> None:
    """rm -rf"""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def remove_wide(path: Path, depth: int = 4, workers: int = 16) -> None:
    """rm -rf of a tree of very many small files, its subtrees `depth` levels down (in the work
    dir's data/ or restores/: the media shards) removed in parallel. On a file system mounted
    with `discard` each freed block waits for the device (about 3 ms a file or folder here), and
    those waits overlap. Untimed, like every removal."""
    subtrees: list[str] = []

    def collect(folder: str, level: int) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if level == depth:
                    subtrees.append(entry.path)
                else:
                    collect(entry.path, level + 1)

    if os.path.isdir(path) and not os.path.islink(path):
        collect(str(path), 1)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(functools.partial(shutil.rmtree, ignore_errors=True), subtrees))
    remove(path)


def show_tail(path: Path, lines: int | None = None) -> None:
    """Copies the last lines of a log (all of it without lines) to stderr."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return
    sys.stderr.write("".join(text.splitlines(keepends=True)[-lines if lines else 0:]))
    sys.stderr.flush()


def last_line(path: Path) -> str:
    lines = Path(path).read_text(errors="replace").splitlines()
    return lines[-1] if lines else ""


def first_line(argv: list[str], stderr=None) -> str:
    """The first line a command prints ('' if it cannot run): a version or a fact for the report."""
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT).stdout
    except OSError:
        return ""
    return out.decode(errors="replace").split("\n", 1)[0]


def first_error(path: Path) -> str:
    """The first line of a log that names an error, else its last line; at most 400 bytes."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError:
        return ""
    hits = [line for line in lines if re.search(rb"error|fail|fatal|panic", line, re.IGNORECASE)]
    line = hits[0] if hits else (lines[-1] if lines else b"")
    return line.replace(b"\t", b" ")[:400].decode(errors="replace")


def record_failure(t: Step, tool: str, op: str, message: str) -> None:
    append(t.bench.failures, f"{t.ds.name}\t{tool}\t{op}\t{t.run}\t{message or 'failed'}\n")


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def load_average() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# --- processes -------------------------------------------------------------------


def stage_children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop_stage(proc: subprocess.Popen) -> None:
    """Ends a stage of an interrupted pipeline. Its child is `timeout`, which runs in a process
    group of its own (so a terminal's Ctrl-C misses it) and passes SIGTERM on to the command."""
    if proc.poll() is not None:
        return
    children = stage_children(proc.pid)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not children:
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pipeline(argvs: list[list[str]], stdout=None, stderr=None, cwd=None) -> bool:
    """Runs the commands connected by pipes, like `a | b | c` under `set -o pipefail`:
    True only if every one exits 0."""
    procs: list[subprocess.Popen] = []
    try:
        for i, argv in enumerate(argvs):
            stdin = procs[-1].stdout if procs else None
            last = i == len(argvs) - 1
            procs.append(subprocess.Popen(
                argv, stdin=stdin, stdout=stdout if last else subprocess.PIPE, stderr=stderr, cwd=cwd))
            if stdin is not None:
                # Only the next stage may hold the read end, so a writer gets SIGPIPE if it exits.
                stdin.close()
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            stop_stage(p)
        raise
    return all(code == 0 for code in codes)


@dataclass
class Stages:
    """The processes of one measured operation. Each runs under /usr/bin/time, which writes
    "wall user sys maxrss_kib" to a file of its own, and under `timeout`; all share the
    operation's stdout and stderr files."""

    dir: Path
    timeout: str
    out: BinaryIO
    err: BinaryIO
    mb_s: str | None = None  # set by an operation that reports its own rate

    def timed(self, name: str, argv: list[str]) -> list[str]:
        return ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(self.dir / name),
                "timeout", "-k", "10", self.timeout, *map(str, argv)]

    def run(self, *stages: tuple[str, list], stdout=None, cwd=None) -> bool:
        """Runs (name, argv) stages as one pipeline; the last one writes to stdout (default: the
        operation's stdout)."""
        argvs = [self.timed(name, argv) for name, argv in stages]
        return pipeline(argvs, stdout=self.out if stdout is None else stdout, stderr=self.err, cwd=cwd)

    def output(self) -> str:
        return Path(self.out.name).read_text(errors="replace")

    def totals(self) -> tuple[str, int]:
        """CPU seconds summed over all stages (as "%.2f") and the largest peak RSS in KiB."""
        cpu, rss = 0.0, 0
        for f in sorted(self.dir.iterdir()):
            _wall, user, system, max_rss = last_line(f).split()
            cpu = float(f"{cpu + float(user) + float(system):.2f}")
            rss = max(rss, int(max_rss))
        return f"{cpu:.2f}", rss


Operation = Callable[[Step, Stages], bool]


# --- measuring -------------------------------------------------------------------


def measure(t: Step, tool: str, op: str, operation: Operation) -> bool:
    """Runs operation (every process of it a stage), times it on the wall clock and appends a
    Measurement to results.tsv. A failure goes to failures.tsv (the report shows it) and
    returns False, so that one failed run does not lose the rest."""
    b = t.bench
    stage_dir = b.scratch / "stages"
    remove(stage_dir)
    stage_dir.mkdir(parents=True)
    errlog = b.logs / f"{t.ds.name}-{tool}-{op}-{t.run}.err"
    log(f"{t.ds.name} run {t.run}/{b.runs}: {tool} {op}")
    with open(b.last_out, "wb") as out, open(errlog, "wb") as err:
        stages = Stages(stage_dir, b.cmd_timeout, out, err)
        cpu0 = server_cpu(b)
        t0 = time.monotonic()
        ok = operation(t, stages)
        wall = time.monotonic() - t0
        cpu1 = server_cpu(b)
    if not ok:
        show_tail(errlog, 20)
        log(f"  FAILED after {wall:.1f}s; see {errlog}")
        record_failure(t, tool, op, first_error(errlog))
        os.sync()
        return False
    m = measurement(t, tool, op, stages, f"{wall:.3f}", cpu0, cpu1)
    append(b.results, m.tsv())
    log(f"  {m.wall_s}s, {m.mb_s} MB/s, CPU {m.cpu_s}s, peak RSS {m.peak_rss_kib // 1024} MiB")
    # Let writeback of whatever this step wrote finish before the next one is timed.
    os.sync()
    return True


def measurement(t: Step, tool: str, op: str, stages: Stages, wall: str, cpu0: str, cpu1: str) -> Measurement:
    cpu, rss = stages.totals()
    # MB/s is the data set's size over the wall time as written (in ms), the same size for every tool.
    mb_s = stages.mb_s or f"{t.ds.bytes / 1e6 / max(float(wall), 0.001):.1f}"
    server = None if cpu0 == "-" else f"{float(cpu1) - float(cpu0):.2f}"
    return Measurement(t.ds.name, tool, op, t.run, t.ds.bytes, wall, mb_s, cpu, rss, server)


def check_restore(t: Step, what: str, want_files: int, want_bytes: int) -> bool:
    """Checks (untimed) that a restore produced at least the files and bytes of the source media."""
    got_files, got_bytes = dirstat.count([t.ds.restore_dir])
    if got_files >= want_files and got_bytes >= want_bytes:
        return True
    message = f"restored {got_files} files / {got_bytes} bytes, expected at least {want_files} / {want_bytes}"
    log(f"  INCOMPLETE: {what} {message}")
    record_failure(t, what, "restore check", message)
    return False


def fresh_restore_dir(t: Step) -> None:
    remove(t.ds.restore_dir)
    os.sync()
    t.ds.restore_dir.mkdir(parents=True)


# --- the measured operations -------------------------------------------------------


def tar_create(ds: DataSet) -> list:
    return ["tar", "-c", "-C", ds.data, *ds.paths]


def aws_s3(b: Bench) -> list:
    return ["aws", "--endpoint-url", b.s3["S3_TEST_ENDPOINT"], "s3"]


def s3_url(b: Bench, key: str) -> str:
    return f"s3://{b.s3['S3_TEST_BUCKET']}/{key}"


def curl_s3(b: Bench) -> list:
    """curl signing its request itself, with the key from a file and no payload hashing."""
    return ["curl", "-sS", "-f", "-o", "/dev/null", "-K", b.secret_dir / "curl-config",
            "--aws-sigv4", f"aws:amz:{b.s3['S3_TEST_REGION']}:s3", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]


def put_url(t: Step) -> str:
    return f"{t.bench.s3['S3_TEST_ENDPOINT']}/{t.bench.s3['S3_TEST_BUCKET']}/ingest-put/run{t.run}"


def ingest_file(b: Bench, ds: DataSet) -> Path:
    return b.work / "ingest" / f"{ds.name}.bin"


def op_read(t: Step, s: Stages) -> bool:
    # GNU tar skips reading file data when its output is /dev/null, hence cat.
    return s.run(("tar", tar_create(t.ds)), ("cat", ["cat"]), stdout=subprocess.DEVNULL)


def op_encrypt(t: Step, s: Stages) -> bool:
    """The example prints its own rate (encryption alone, in memory); that is the MB/s."""
    if not s.run(("crypto", [t.bench.crypto_bin, t.ds.crypto_mib])):
        return False
    s.mb_s = printed_value(s.output(), "encrypt_mb_s")
    if not s.mb_s:
        s.err.write(b"crypto_throughput printed no encrypt_mb_s\n")
        return False
    return True


def printed_value(text: str, key: str) -> str:
    """VALUE of the first KEY=VALUE line, or ''."""
    return next((line[len(key) + 1:] for line in text.splitlines() if line.startswith(key + "=")), "")


def op_ingest(t: Step, s: Stages) -> bool:
    b = t.bench
    return s.run(("aws", [*aws_s3(b), "cp", "--only-show-errors", ingest_file(b, t.ds), s3_url(b, f"ingest/run{t.run}")]))


def op_egress(t: Step, s: Stages) -> bool:
    b = t.bench
    return s.run(("aws", [*aws_s3(b), "cp", "--only-show-errors", s3_url(b, f"ingest/run{t.run}"), "-"]),
                 ("cat", ["cat"]), stdout=subprocess.DEVNULL)


def op_put(t: Step, s: Stages) -> bool:
    """For context: one plain PUT of the ingest file (no multipart, no client-side hashing), the
    closest to what the server alone can take."""
    return s.run(("curl", [*curl_s3(t.bench), "-T", ingest_file(t.bench, t.ds), put_url(t)]))


def op_get(t: Step, s: Stages) -> bool:
    """And one plain GET of that object: what the server alone gives a single reader."""
    return s.run(("curl", [*curl_s3(t.bench), put_url(t)]))


def ours(b: Bench, *args) -> list:
    return [b.bin, "--config", b.scratch / "ours.toml", *args]


def op_ours_create(t: Step, s: Stages) -> bool:
    return s.run(("create", ours(t.bench, "create-backup")))


def op_ours_create_json(t: Step, s: Stages) -> bool:
    return s.run(("create", ours(t.bench, "--json", "create-backup")))


def op_ours_verify(t: Step, s: Stages, backup_id: str) -> bool:
    return s.run(("verify", ours(t.bench, "verify-backup", backup_id)))


def op_ours_restore(t: Step, s: Stages, backup_id: str) -> bool:
    return s.run(("restore", ours(t.bench, "restore-backup", backup_id, "--target-dir", t.ds.restore_dir)))


def op_charm_backup(t: Step, s: Stages) -> bool:
    b = t.bench
    return s.run(
        ("tar", tar_create(t.ds)),
        ("gpg", ["gpg", "--batch", "--symmetric", "--passphrase-file", b.passphrase]),
        ("aws", [*aws_s3(b), "cp", "--only-show-errors", f"--expected-size={t.ds.bytes}", "-",
                 s3_url(b, f"charm/run{t.run}")]),
    )


def op_charm_restore(t: Step, s: Stages) -> bool:
    b = t.bench
    return s.run(
        ("aws", [*aws_s3(b), "cp", "--only-show-errors", s3_url(b, f"charm/run{t.run}"), "-"]),
        ("gpg", ["gpg", "--batch", "--passphrase-file", b.passphrase, "-d"]),
        ("tar", ["tar", "-x", "-C", t.ds.restore_dir]),
    )


def restic_repo(t: Step) -> list:
    """On the S3 server of the moment; for the scale sets, in a local folder like ours."""
    b = t.bench
    if is_scale(t.ds.name):
        repo = str(scale_restic_repo(b))
    else:
        repo = f"s3:{b.s3['S3_TEST_ENDPOINT']}/{b.s3['S3_TEST_BUCKET']}/restic/run{t.run}"
    return ["-r", repo, "--cache-dir", b.scratch / "restic-cache"]


def op_restic_backup(t: Step, s: Stages) -> bool:
    argv = ["restic", *restic_repo(t), "backup", "--quiet", "--host", "bench", *t.ds.paths]
    return s.run(("restic", argv), cwd=t.ds.data)


def op_restic_restore(t: Step, s: Stages) -> bool:
    return s.run(("restic", ["restic", *restic_repo(t), "restore", "latest", "--quiet", "--target", t.ds.restore_dir]))


# --- the nightly change ---------------------------------------------------------------


def apply_change(b: Bench, ds: DataSet) -> None:
    """The change between two nightly backups: new media of 1% of the media bytes (random,
    seeded: the same for every tool and run) and rows added to the database. undo_change undoes
    it, so that every run and tool sees the same data."""
    shutil.copy2(ds.data / "homeserver.db", b.scratch / "homeserver.db.before")
    add_new_media(ds.data, ds.media_bytes // 100)
    add_database_rows(ds.data / "homeserver.db")


def add_new_media(data: Path, target: int) -> None:
    rng = random.Random(42)
    written, n = 0, 0
    while written < target:
        size = min(rng.randint(20 * 1024, 2 * 1024 * 1024), target - written)
        path = data / NEW_MEDIA / f"{n % 100:02d}" / f"benchnew{n:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        written, n = written + size, n + 1


def add_database_rows(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS bench_nightly (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO bench_nightly (body) VALUES (?)", [(f"message {i} " * 8,) for i in range(2000)])
    db.commit()
    db.close()


def undo_change(b: Bench, ds: DataSet) -> None:
    remove(ds.data / NEW_MEDIA)
    shutil.copy2(b.scratch / "homeserver.db.before", ds.data / "homeserver.db")


def apparent_bytes(path: Path) -> int:
    """du -sb: files and directories, as the incremental target counts the new media."""
    return int(subprocess.run(["du", "-sb", path], check=True, stdout=subprocess.PIPE, text=True).stdout.split()[0])


def reported(t: Step, op: str, key: str) -> str | None:
    """KEY of the JSON document a create-backup --json printed, or None (recorded as a failure)."""
    try:
        return str(json.loads(t.bench.last_out.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        record_failure(t, "ours", op, f"create-backup --json printed no {key}")
        return None


# --- the tools -------------------------------------------------------------------------


def write_ours_config(t: Step) -> None:
    b, s3 = t.bench, t.bench.s3
    (b.scratch / "ours.toml").write_text(f"""[synapse]
config = "{t.ds.data}/homeserver.yaml"

[s3]
endpoint = "{s3['S3_TEST_ENDPOINT']}"
bucket = "{s3['S3_TEST_BUCKET']}"
path = "ours/run{t.run}"
region = "{s3['S3_TEST_REGION']}"
s3-uri-style = "path"
access-key = "{s3['S3_TEST_ACCESS_KEY']}"
secret-key-file = "{b.secret_dir}/s3-secret"

[backup]
passphrase-file = "{b.passphrase}"
temp-dir = "{b.scratch}/tmp"
""")
    (b.scratch / "tmp").mkdir(parents=True, exist_ok=True)


def tool_ours(t: Step) -> None:
    server_start(t.bench)
    write_ours_config(t)
    if measure(t, "ours", "create", op_ours_create):
        backup_id = last_line(t.bench.last_out)
        if re.fullmatch(r"backup-[0-9]+", backup_id):
            measure(t, "ours", "verify", functools.partial(op_ours_verify, backup_id=backup_id))
            remove(t.ds.restore_dir)
            os.sync()
            if measure(t, "ours", "restore", functools.partial(op_ours_restore, backup_id=backup_id)):
                check_restore(t, "ours", t.ds.media_files, t.ds.media_bytes)
            remove(t.ds.restore_dir)
            ours_incremental(t)
        else:
            record_failure(t, "ours", "create", f"create-backup printed '{backup_id[:100]}', not a backup id")
    server_stop(t.bench)


def ours_incremental(t: Step) -> None:
    """After a full backup: one with nothing changed, one after the nightly change, and the
    restore of that one. Rows: create-same, create-incr, restore-incr; stored bytes go to
    incremental.tsv."""
    b, ds = t.bench, t.ds
    if measure(t, "ours", "create-same", op_ours_create_json):
        stored = reported(t, "create-same", "object-bytes")
        if stored is not None:
            append(b.incremental, f"{ds.name}\tsame\t{t.run}\t{stored}\t0\n")
    apply_change(b, ds)
    try:
        new_bytes = apparent_bytes(ds.data / NEW_MEDIA)
        if measure(t, "ours", "create-incr", op_ours_create_json):
            stored = reported(t, "create-incr", "object-bytes")
            incr_id = reported(t, "create-incr", "backup-id")
            if stored is not None:
                db_bytes = (ds.data / "homeserver.db").stat().st_size
                append(b.incremental, f"{ds.name}\tincr\t{t.run}\t{stored}\t{new_bytes}\t{db_bytes}\n")
            if incr_id is not None:
                restore_incremental(t, incr_id, new_bytes)
    finally:
        undo_change(b, ds)


def restore_incremental(t: Step, backup_id: str, new_bytes: int) -> None:
    remove(t.ds.restore_dir)
    os.sync()
    if measure(t, "ours", "restore-incr", functools.partial(op_ours_restore, backup_id=backup_id)):
        # The new media are at least one more file.
        check_restore(t, "ours", t.ds.media_files + 1, t.ds.media_bytes + new_bytes)
    remove(t.ds.restore_dir)


def tool_charm(t: Step) -> None:
    server_start(t.bench)
    if measure(t, "charm", "backup", op_charm_backup):
        fresh_restore_dir(t)
        if measure(t, "charm", "restore", op_charm_restore):
            check_restore(t, "charm", t.ds.media_files, t.ds.media_bytes)
        remove(t.ds.restore_dir)
    server_stop(t.bench)


def restic_init(t: Step) -> bool:
    init_log = t.bench.logs / "restic-init.log"
    with open(init_log, "wb") as f:
        ok = subprocess.run(["timeout", "300", "restic", *map(str, restic_repo(t)), "init"],
                            stdout=f, stderr=subprocess.STDOUT).returncode == 0
    if not ok:
        show_tail(init_log)
        record_failure(t, "restic", "init", first_error(init_log))
    return ok


def tool_restic(t: Step) -> None:
    b = t.bench
    server_start(b)
    # A new repository (new server, new prefix, new cache) each run: a "first backup".
    remove(b.scratch / "restic-cache")
    os.environ["RESTIC_PASSWORD_FILE"] = str(b.passphrase)
    if restic_init(t) and measure(t, "restic", "backup", op_restic_backup):
        fresh_restore_dir(t)
        if measure(t, "restic", "restore", op_restic_restore):
            check_restore(t, "restic", t.ds.media_files, t.ds.media_bytes)
        remove(t.ds.restore_dir)
        # restic's second and third backups, as the reference for ours.
        measure(t, "restic", "backup-same", op_restic_backup)
        apply_change(b, t.ds)
        try:
            measure(t, "restic", "backup-incr", op_restic_backup)
        finally:
            undo_change(b, t.ds)
    server_stop(b)


def tool_limits(t: Step) -> None:
    b, ds = t.bench, t.ds
    measure(t, "limit", "read", op_read)
    if measure(t, "limit", "encrypt", op_encrypt):
        # The same program's decryption rate (in memory, one core), for context on restores;
        # its time and memory are those of the whole program, so they are not repeated here.
        rate = printed_value(b.last_out.read_text(errors="replace"), "decrypt_mb_s") or None
        append(b.results, Measurement(ds.name, "limit", "decrypt", t.run, ds.bytes, None, rate, None, None, None).tsv())
    server_start(b)
    if measure(t, "limit", "s3-ingest", op_ingest):
        measure(t, "limit", "s3-egress", op_egress)
    server_stop(b)
    server_start(b)
    if measure(t, "limit", "s3-put", op_put):
        measure(t, "limit", "s3-get", op_get)
    server_stop(b)


# --- the scale sets (--only scale) --------------------------------------------------------


def is_scale(name: str) -> bool:
    return name.startswith(SCALE + "-")


def scale_name(files: int) -> str:
    return f"{SCALE}-{files}"


def scale_store(b: Bench) -> Path:
    return b.scratch / "store"


def scale_restic_repo(b: Bench) -> Path:
    return b.scratch / "restic-repo"


def scale_tar_file(b: Bench) -> Path:
    return b.scratch / "scale.tar"


def restoring_into(t: Step, who: str) -> Step:
    """t with a restore dir of its own for who and this run. The scale sets' restores are only
    removed once every step has been timed: an ext4 without a journal (this machine's work dir is
    on one) passes over inodes freed in the last 1–6 minutes when it allocates new ones (the
    kernel's recently_deleted()), which made a tar -x of 20,000 files right after the removal of
    a restore 6× slower."""
    return replace(t, ds=replace(t.ds, restore_dir=t.bench.restores / f"{t.ds.name}-run{t.run}-{who}"))


def write_scale_config(t: Step) -> None:
    """synapse-backup's config for a scale set: a local folder as the store, defaults otherwise."""
    b = t.bench
    (b.scratch / "ours.toml").write_text(f"""[synapse]
config = "{t.ds.data}/homeserver.yaml"

[local]
path = "{scale_store(b)}"

[backup]
passphrase-file = "{b.passphrase}"
temp-dir = "{b.scratch}/tmp"
""")
    (b.scratch / "tmp").mkdir(parents=True, exist_ok=True)


def add_scale_media(data: Path, count: int) -> NewMedia:
    """The scale set's nightly change: count new tiny media files (seeded), as uploads land:
    random ids spread over all shards, every fifth file a thumbnail of the upload before it."""
    rng = random.Random(43)
    new, mid = NewMedia(), ""
    for i in range(count):
        if i % 5 == 4:
            path = data / "media_store/local_thumbnails" / mid[:2] / mid[2:4] / mid[4:] / "32-32-image-jpeg-scale"
        else:
            mid = "".join(rng.choice(string.ascii_letters) for _ in range(24))
            path = data / "media_store/local_content" / mid[:2] / mid[2:4] / mid[4:]
        new.add(path, rng.randbytes(int(64 * 10 ** rng.random())))  # 64–640 bytes, log-uniform
    return new


def record_stored(t: Step, tool: str, op: str, stored: int | str | None) -> bool:
    if stored is None:
        return False
    append(t.bench.stored, Stored(t.ds.name, tool, op, t.run, int(stored)).tsv())
    return True


def scale_ours_create(t: Step, op: str) -> str | None:
    """One create-backup --json: records what it stored and returns its backup id."""
    if not measure(t, "ours", op, op_ours_create_json):
        return None
    if not record_stored(t, "ours", op, reported(t, op, "object-bytes")):
        return None
    return reported(t, op, "backup-id")


def scale_ours(t: Step) -> None:
    """On a fresh store: the full backup, one with nothing changed, then 1% new media files, the
    third backup and its restore; tar's reference while the new files are there."""
    b = t.bench
    remove(scale_store(b))
    write_scale_config(t)
    if scale_ours_create(t, "create") is None or (same_id := scale_ours_create(t, "create-same")) is None:
        remove(scale_store(b))
        return
    new = add_scale_media(t.ds.data, max(1, t.ds.media_files // 100))
    try:
        incr_id = scale_ours_create(t, "create-incr")
        if incr_id is not None:
            scale_restore(restoring_into(t, "ours"), incr_id, new)
            scale_maintenance(t, incr_id, same_id)
        remove(scale_store(b))
        scale_tar(restoring_into(t, "tar"), new)
    finally:
        new.undo()


def scale_restore(t: Step, backup_id: str, new: NewMedia) -> None:
    """restore-backup --target-dir of the third backup into a new dir (see restoring_into)."""
    if measure(t, "ours", "restore-incr", functools.partial(op_ours_restore, backup_id=backup_id)):
        check_restore(t, "ours", t.ds.media_files + len(new.files), t.ds.media_bytes + new.bytes)


def scale_maintenance(t: Step, incr_id: str, same_id: str) -> None:
    """What an admin runs besides create and restore, on the store of the three backups: verify
    the third, list, delete the second, then prune down to the newest (deleting the first)."""
    b = t.bench
    measure(t, "ours", "verify-incr", functools.partial(op_ours_verify, backup_id=incr_id))
    measure(t, "ours", "list", lambda t, s: s.run(("list", ours(b, "list-backups"))))
    measure(t, "ours", "delete", lambda t, s: s.run(("delete", ours(b, "delete-backup", same_id))))
    measure(t, "ours", "prune", lambda t, s: s.run(("prune", ours(b, "prune-backups", "--keep-last", "1"))))


def op_tar_create(t: Step, s: Stages) -> bool:
    return s.run(("tar", ["tar", "-c", "-f", scale_tar_file(t.bench), "-C", t.ds.data, *t.ds.paths]))


def op_tar_extract(t: Step, s: Stages) -> bool:
    return s.run(("tar", ["tar", "-x", "-f", scale_tar_file(t.bench), "-C", t.ds.restore_dir]))


def scale_tar(t: Step, new: NewMedia) -> None:
    """The restore's reference: the same files in a local tar, extracted into an empty dir."""
    tar = scale_tar_file(t.bench)
    if measure(t, "tar", "create", op_tar_create):
        record_stored(t, "tar", "create", tar.stat().st_size)
        fresh_restore_dir(t)
        if measure(t, "tar", "extract", op_tar_extract):
            check_restore(t, "tar", t.ds.media_files + len(new.files), t.ds.media_bytes + new.bytes)
    remove(tar)


def scale_restic(t: Step) -> None:
    """restic's first and nothing-changed backups of the same files into a new local repository;
    what each added is the growth of the repository's files."""
    b = t.bench
    repo = scale_restic_repo(b)
    remove(repo)
    remove(b.scratch / "restic-cache")
    os.environ["RESTIC_PASSWORD_FILE"] = str(b.passphrase)
    if restic_init(t):
        for op in ("backup", "backup-same"):
            before = dirstat.count([repo])[1]
            if not measure(t, "restic", op, op_restic_backup):
                break
            record_stored(t, "restic", op, dirstat.count([repo])[1] - before)
    remove(repo)
    remove(b.scratch / "restic-cache")


def bench_scale(b: Bench, files: int) -> None:
    ds = load_dataset(b, scale_name(files))
    db_bytes = dirstat.count([ds.data / "homeserver.db", ds.data / "homeserver.db-wal"])[1]
    key = f"scale_{files}"
    write_meta(b.meta, {f"{key}_files": ds.files, f"{key}_bytes": ds.bytes, f"{key}_media_files": ds.media_files,
                        f"{key}_media_bytes": ds.media_bytes, f"{key}_db_bytes": db_bytes,
                        f"{key}_new_files": max(1, ds.media_files // 100)})
    log(f"{ds.name}: {ds.media_files} media files, {ds.bytes} bytes; warming the page cache (untimed read)")
    if not pipeline([tar_create(ds), ["cat"]], stdout=subprocess.DEVNULL):
        die(f"reading {ds.data} failed")
    tools = (scale_ours, scale_restic)
    for run in range(1, b.runs + 1):
        step = Step(b, ds, run)
        # Alternate which tool goes first from run to run.
        for i in range(2):
            tools[(i + run - 1) % 2](step)


# --- S3 server -------------------------------------------------------------------------


def s3_server(b: Bench, *args, timeout: int) -> subprocess.CompletedProcess:
    with open(b.logs / "s3-server.log", "ab") as server_log:
        return subprocess.run(["timeout", str(timeout), S3_SERVER, *map(str, args)],
                              stdout=subprocess.PIPE, stderr=server_log, text=True)


def start_garage(b: Bench, directory: Path) -> Path | None:
    """The env file of a server started in directory, or None."""
    done = s3_server(b, "start", directory, timeout=600)
    lines = done.stdout.splitlines()
    env_file = Path(lines[-1]) if lines else None
    return env_file if done.returncode == 0 and env_file and env_file.is_file() else None


def server_start(b: Bench) -> None:
    """Starts a fresh server in a new directory. On a busy machine another process can grab a
    port between its choice and garage's bind more often than s3-test-server.sh's own retries
    cover, so a failed start is retried (3 attempts) in a new directory."""
    for attempt in (1, 2, 3):
        b.server_seq += 1
        b.server = b.servers / f"s{b.server_seq}"
        env_file = start_garage(b, b.server)
        if env_file:
            use_server(b, read_env(env_file))
            return
        log(f"the S3 test server did not start (attempt {attempt} of 3); its log is in {b.logs}/garage-s{b.server_seq}.log")
        try:
            shutil.copy(b.server / "garage.log", b.logs / f"garage-s{b.server_seq}.log")
        except OSError:
            pass
        s3_server(b, "stop", b.server, timeout=300)
        remove(b.server)
        b.server = None
        time.sleep(2)
    show_tail(b.logs / "s3-server.log", 20)
    die("could not start the S3 test server")


def read_env(env_file: Path) -> dict[str, str]:
    """The variables an env file of s3-test-server.sh exports (`export K=quoted` lines)."""
    env = {}
    for line in env_file.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def use_server(b: Bench, env: dict[str, str]) -> None:
    """Exports the server's variables, as sourcing its env file would. Every client reads its
    credentials from the environment or a file, never argv."""
    b.s3 = env
    os.environ.update(env)
    os.environ["AWS_ACCESS_KEY_ID"] = env["S3_TEST_ACCESS_KEY"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = env["S3_TEST_SECRET_KEY"]
    os.environ["AWS_DEFAULT_REGION"] = env["S3_TEST_REGION"]
    write_private(b.secret_dir / "s3-secret", env["S3_TEST_SECRET_KEY"] + "\n")
    write_private(b.secret_dir / "curl-config", f'user = "{env["S3_TEST_ACCESS_KEY"]}:{env["S3_TEST_SECRET_KEY"]}"\n')


def server_stop(b: Bench) -> None:
    if b.server is None:
        return
    s3_server(b, "stop", b.server, timeout=300)
    remove(b.server)
    b.server = None


def server_cpu(b: Bench) -> str:
    """CPU seconds the server has used so far (utime + stime), '-' without a server."""
    if b.server is None:
        return "-"
    try:
        stat = Path(f"/proc/{b.s3['S3_TEST_SERVER_PID']}/stat").read_text()
    except (OSError, KeyError):
        return "0"
    fields = stat.rsplit(") ", 1)[1].split()
    return f"{(int(fields[11]) + int(fields[12])) / CLK_TCK:.2f}"


# --- tools, build, data ------------------------------------------------------------------


def apt_install(b: Bench, packages: list[str]) -> bool:
    with open(b.work / "apt.log", "ab") as apt_log:
        if not b.apt_updated:
            log("apt-get update")
            if subprocess.run(["timeout", "600", "apt-get", "update", "-qq"], stdout=apt_log, stderr=apt_log).returncode:
                die(f"apt-get update failed (see {b.work}/apt.log)")
            b.apt_updated = True
        log(f"apt-get install -y {' '.join(packages)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        argv = ["timeout", "900", "apt-get", "install", "-y", "-qq", *packages]
        return subprocess.run(argv, stdout=apt_log, stderr=apt_log, env=env).returncode == 0


def ensure_tools(b: Bench) -> None:
    present = {
        "restic": shutil.which("restic"),
        "gnupg": shutil.which("gpg"),
        "time": os.access("/usr/bin/time", os.X_OK),
        "curl": shutil.which("curl"),
        "util-linux": shutil.which("findmnt"),
    }
    missing = [package for package, found in present.items() if not found]
    if missing and not apt_install(b, missing):
        die(f"apt-get install {' '.join(missing)} failed (see {b.work}/apt.log)")
    if not shutil.which("aws") and not (apt_install(b, ["awscli"]) and shutil.which("aws")):
        log("awscli not available from apt; installing it with pip")
        with open(b.work / "apt.log", "ab") as apt_log:
            argv = ["timeout", "900", "python3", "-m", "pip", "install", "-q", "awscli"]
            if subprocess.run(argv, stdout=apt_log, stderr=apt_log).returncode:
                die("pip install awscli failed")
    if not shutil.which("aws"):
        die("aws not on PATH after installing awscli")
    if not shutil.which("restic"):
        die("restic not on PATH after installing it")


def build_tool(b: Bench) -> None:
    b.bin = Path(os.environ.get("SYNAPSE_BACKUP_BIN") or ROOT / "target/release/synapse-backup")
    if os.environ.get("BENCH_NO_BUILD", "0") != "1":
        log("cargo build --release (synapse-backup and the crypto_throughput example)")
        build = ["timeout", "3600", "cargo", "build", "--release", "--locked", "-q"]
        with open(b.logs / "build.log", "wb") as build_log:
            ok = all(
                subprocess.run([*build, *target], cwd=ROOT, stdout=build_log, stderr=build_log).returncode == 0
                for target in (["-p", "synapse-backup", "--bin", "synapse-backup"],
                               ["-p", "synapse-backup-core", "--example", "crypto_throughput"]))
        if not ok:
            show_tail(b.logs / "build.log", 30)
            die("cargo build failed")
    for path in (b.bin, b.crypto_bin):
        if not os.access(path, os.X_OK):
            die(f"{path} is missing")


def install_garage(b: Bench) -> None:
    done = s3_server(b, "install", timeout=600)
    if done.returncode != 0:
        die(f"could not install garage (see {b.logs}/s3-server.log)")
    b.garage_bin = (done.stdout.splitlines() or [""])[-1]


def generate(b: Bench, name: str) -> None:
    """Generates a data set with scripts/example-datadir.py, unless the dir holds one made with
    the same parameters (kept by --keep)."""
    params = generation_params(b, name)
    data, stamp = b.work / "data" / name, b.work / "data" / name / ".bench-params"
    if stamp.is_file() and stamp.read_text().rstrip("\n") == " ".join(params):
        log(f"{name}: reusing {data} ({' '.join(params)})")
        return
    remove(data)
    log(f"{name}: generating {data} ({' '.join(params)})")
    argv = ["timeout", b.cmd_timeout, "python3", ROOT / "scripts/example-datadir.py", data, *params]
    with open(b.logs / f"generate-{name}.log", "wb") as gen_log:
        if subprocess.run(argv, stderr=gen_log).returncode:
            show_tail(b.logs / f"generate-{name}.log")
            die(f"generating {name} failed")
    stamp.write_text(" ".join(params) + "\n")


def generation_params(b: Bench, name: str) -> list[str]:
    """example-datadir.py's arguments for a data set. A scale set of N media files has 4/5 N
    originals and one thumbnail per four of them; the same seed makes a smaller set's files the
    first of a larger one's, and without media rows the database is the same at every N."""
    if name == "media-heavy":
        return ["--profile", "media-heavy", "--size-mib", b.media_mib, "--seed", "1"]
    if name == "media-small":
        return ["--profile", "media-heavy", "--size-mib", b.media_small_mib, "--seed", "3"]
    if name == "many-small":
        return ["--profile", "many-small", "--files", str(b.small_files), "--seed", "2"]
    files = int(name[len(SCALE) + 1:])
    return ["--profile", "scale", "--files", str(files - files // 5), "--seed", "4", "--no-media-rows"]


def backup_paths(data: Path) -> list[str]:
    """The paths every tool backs up, relative to the data dir: what the charm's pipeline archives
    (signing key, SQLite database, local media and thumbnails). synapse-backup finds the same
    files through homeserver.yaml (it also stores homeserver.yaml and the log config, a few KiB)."""
    files = sorted(p.name for p in data.glob("*.signing.key")) + ["homeserver.db", "homeserver.db-wal"]
    dirs = ["media_store/local_content", "media_store/local_thumbnails"]
    return [p for p in files if (data / p).is_file()] + [p for p in dirs if (data / p).is_dir()]


def load_dataset(b: Bench, name: str) -> DataSet:
    data = b.work / "data" / name
    paths = backup_paths(data)
    files, size = dirstat.count([data / p for p in paths])
    media_files, media_bytes = dirstat.count([data / "media_store/local_content", data / "media_store/local_thumbnails"])
    crypto_mib = min(512, max(64, size // 1048576))
    return DataSet(name, data, paths, files, size, media_files, media_bytes, b.restores / name, crypto_mib)


def make_ingest_file(b: Bench, ds: DataSet) -> None:
    """A pre-made object of the data set's size, of random bytes (Garage deduplicates identical
    blocks, so zeros would not measure ingest)."""
    path = ingest_file(b, ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size == ds.bytes:
        return
    log(f"{ds.name}: writing a {ds.bytes}-byte object for the S3 ingest limit")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        left = ds.bytes
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)
    os.replace(tmp, path)


# --- the machine -------------------------------------------------------------------------


def check_space(b: Bench) -> None:
    """The data sets stay for the whole run; while one data set is measured the disk also holds
    its pre-made ingest object, one server's copy and one restore (about 3 × its size).
    media-heavy is about 1.0 GiB, media-small a third of that and many-small about 0.85 GiB per
    --size unit."""
    need_kib, max_kib = 0, 0
    for name in b.datasets:
        estimate = int(float(b.size) * DISK_PER_GIB[name] * 1048576)
        if not (b.work / "data" / name / ".bench-params").is_file():
            need_kib += estimate
        max_kib = max(max_kib, 3 * estimate)
    need_kib += max_kib + 1048576
    st = os.statvfs(b.work)
    avail_kib = st.f_bavail * st.f_frsize // 1024
    if avail_kib <= need_kib:
        die(f"{b.work} has {avail_kib // 1024} MiB free; this size needs about {need_kib // 1024} MiB")


def check_scale_space(b: Bench) -> None:
    """Every scale set and its restores (two a run: ours and tar's) stay until the last step has
    been timed (see restoring_into)."""
    missing = [n for n in b.scale_files if not (b.work / "data" / scale_name(n) / ".bench-params").is_file()]
    need_kib = (sum(missing) + 2 * b.runs * sum(b.scale_files)) * SCALE_KIB_PER_FILE + 1048576
    st = os.statvfs(b.work)
    avail_kib = st.f_bavail * st.f_frsize // 1024
    if avail_kib <= need_kib:
        die(f"{b.work} has {avail_kib // 1024} MiB free; these scale sets need about {need_kib // 1024} MiB")


def load_busy() -> bool:
    return float(load_average()[0]) > 0.5 * nproc()


def wait_for_quiet(b: Bench) -> bool:
    """A busy machine skews the ratios (the tools use different numbers of cores): wait for
    quiet, or (--allow-load) go on and record that the run was loaded. True if it was."""
    if not load_busy():
        return False
    if b.allow_load:
        log(f"warning: load average {load_average()[0]} is above 0.5 per core; the report will say so")
        return True
    try:
        quiet_wait = int(os.environ.get("BENCH_QUIET_WAIT") or 300)
    except ValueError:
        die(f"BENCH_QUIET_WAIT must be a number of seconds (got '{os.environ['BENCH_QUIET_WAIT']}')")
    log(f"load average {load_average()[0]} is above 0.5 per core; waiting up to {quiet_wait}s for it to fall")
    deadline = time.monotonic() + quiet_wait
    while load_busy() and time.monotonic() < deadline:
        time.sleep(10)
    if load_busy():
        die(f"the machine stays busy (load average {' '.join(load_average())}, {nproc()} cores): ratios taken now "
            "are not comparable; stop what runs, or pass --allow-load to record a marked run")
    return False


def machine_facts(b: Bench) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(": ")[1] for line in cpuinfo if line.startswith("model name") and ": " in line), "")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    df = subprocess.run(["df", "-PT", b.work], stdout=subprocess.PIPE, text=True).stdout.splitlines()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(nproc()),
        "cpu_model": model,
        "mem_total": f"{mem_kib / 1048576:.1f} GiB",
        "kernel": os.uname().release,
        "fs": df[1].split()[1] if len(df) > 1 else "",
        "fs_opts": first_line(["findmnt", "-n", "-o", "OPTIONS", "-T", str(b.work)], stderr=subprocess.DEVNULL),
    }


def commit() -> str:
    short = first_line(["git", "rev-parse", "--short", "HEAD"], stderr=subprocess.DEVNULL) or "unknown"
    clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "crates"], cwd=ROOT,
                           stderr=subprocess.DEVNULL).returncode == 0
    return short + ("" if clean else " + uncommitted changes in crates/")


def versions(b: Bench) -> dict[str, str]:
    garage = first_line([b.garage_bin, "--version"], stderr=subprocess.DEVNULL)
    return {
        "commit": commit(),
        "v_ours": first_line([str(b.bin), "--version"], stderr=subprocess.STDOUT),
        "v_gpg": first_line(["gpg", "--version"]),
        "v_aws": first_line(["aws", "--version"], stderr=subprocess.STDOUT),
        "v_restic": first_line(["restic", "version"]),
        "v_tar": first_line(["tar", "--version"]),
        "v_garage": " ".join(garage.split(" ")[:2]),
    }


def write_meta(path: Path, values: dict[str, str], mode: str = "a") -> None:
    """KEY=VALUE lines, shell-quoted, as scripts/bench/report.py reads them."""
    with open(path, mode) as f:
        f.writelines(f"{key}={shlex.quote(str(value))}\n" for key, value in values.items())


def write_run_meta(b: Bench, loaded: bool) -> None:
    values = {"loaded": "1" if loaded else "0", "size_gib": b.size, "runs": str(b.runs), "command": b.command,
              "media_mib": b.media_mib, "media_small_mib": b.media_small_mib, "small_files": str(b.small_files)}
    values.update(machine_facts(b))
    values.update(versions(b))
    values["load_start"] = " ".join(load_average())
    write_meta(b.meta, values, mode="w")


# --- main ------------------------------------------------------------------------------


def prepare_work_dir(b: Bench) -> None:
    for d in (b.logs, b.servers, b.restores, b.scratch, b.work / "data"):
        d.mkdir(parents=True, exist_ok=True)
    for d in (b.servers, b.restores, b.scratch):
        for entry in d.iterdir():
            remove(entry)
    for f in (b.results, b.incremental, b.failures):
        f.write_text("")
    for d in (b.secret_dir, b.secret_dir / "gnupg"):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
    os.environ["GNUPGHOME"] = str(b.secret_dir / "gnupg")
    write_private(b.passphrase, secrets.token_urlsafe(24) + "\n")
    b.passphrase.chmod(0o600)
    # aws: path-style requests (Garage's virtual-host domain does not resolve here), no user config.
    (b.scratch / "aws-config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    os.environ["AWS_CONFIG_FILE"] = str(b.scratch / "aws-config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"


def bench_dataset(b: Bench, name: str) -> None:
    ds = load_dataset(b, name)
    key = name.replace("-", "_")
    write_meta(b.meta, {f"files_{key}": ds.files, f"bytes_{key}": ds.bytes})
    make_ingest_file(b, ds)
    log(f"{name}: {ds.files} files, {ds.bytes} bytes; warming the page cache (untimed read)")
    if not pipeline([tar_create(ds), ["cat"]], stdout=subprocess.DEVNULL):
        die(f"reading {ds.data} failed")
    tools = (tool_ours, tool_charm, tool_restic)
    for run in range(1, b.runs + 1):
        step = Step(b, ds, run)
        tool_limits(step)
        # Rotate the tools' order from run to run so none always goes first.
        for i in range(3):
            tools[(i + run - 1) % 3](step)
    if not b.keep:
        remove(ingest_file(b, ds))


def write_report(b: Bench) -> None:
    elapsed = int(time.monotonic() - b.started)
    write_meta(b.meta, {"load_end": " ".join(load_average()), "elapsed_s": str(elapsed)})
    text = report.render_files(b.results, b.failures, b.meta, b.incremental)
    # The scale section comes from runs of its own (--only scale): keep it.
    publish(b, text, lambda earlier: report.keep_scale(earlier, text), "report")


def write_scale_report(b: Bench) -> None:
    """Only the scale section, put in place of the earlier one in the doc (or at its end)."""
    write_meta(b.meta, {"elapsed_s": str(int(time.monotonic() - b.started))})
    section = report.render_scale_files(b.results, b.failures, b.meta, b.stored)
    publish(b, section, lambda earlier: report.splice_scale(earlier, section), "scale section")


def publish(b: Bench, text: str, merge, what: str) -> None:
    """Writes the doc as `merge` makes it from the doc's earlier text, and `text` on stdout."""
    b.doc.parent.mkdir(parents=True, exist_ok=True)
    b.doc.write_text(merge(b.doc.read_text() if b.doc.is_file() else ""))
    sys.stdout.write(text)
    sys.stdout.flush()
    log(f"{what} written to {b.doc} (total {int(time.monotonic() - b.started)} s)")


def ensure_scale_tools(b: Bench) -> None:
    present = {"restic": shutil.which("restic"), "time": os.access("/usr/bin/time", os.X_OK),
               "tar": shutil.which("tar"), "util-linux": shutil.which("findmnt")}
    missing = [package for package, found in present.items() if not found]
    if missing and not apt_install(b, missing):
        die(f"apt-get install {' '.join(missing)} failed (see {b.work}/apt.log)")


def run_scale(b: Bench) -> None:
    """--only scale: no S3 server, no charm, no limits; a local folder as the store."""
    b.stored.write_text("")
    log(f"scale sets of {', '.join(map(str, b.scale_files))} media files, {b.runs} run(s), work dir {b.work}")
    ensure_scale_tools(b)
    build_tool(b)
    check_scale_space(b)
    write_run_meta(b, wait_for_quiet(b))
    write_meta(b.meta, {"scale_files": ",".join(map(str, b.scale_files))})
    for files in b.scale_files:
        generate(b, scale_name(files))
    for files in b.scale_files:
        bench_scale(b, files)
    # The load after the last timed step: during the removals below many threads wait for the disk.
    write_meta(b.meta, {"load_end": " ".join(load_average())})
    log("removing the restores (untimed)")
    remove_wide(b.restores)
    write_scale_report(b)


def run(b: Bench) -> None:
    prepare_work_dir(b)
    if b.scale_only:
        run_scale(b)
        return
    log(f"size {b.size} GiB (media-heavy {b.media_mib} MiB, media-small {b.media_small_mib} MiB, "
        f"many-small {b.small_files} files), "
        f"{b.runs} run(s), work dir {b.work}")
    ensure_tools(b)
    build_tool(b)
    install_garage(b)
    check_space(b)
    write_run_meta(b, wait_for_quiet(b))
    for name in b.datasets:
        generate(b, name)
    for name in b.datasets:
        bench_dataset(b, name)
    write_report(b)


def clean_up(b: Bench, rc: int) -> None:
    """On every exit: stop the server, the gpg agent, and remove what the run made (with a
    failure, the logs and measurements so far stay: they explain it, and are small)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if b.server is not None:
        subprocess.run([S3_SERVER, "stop", b.server], stderr=subprocess.DEVNULL)
    if (b.secret_dir / "gnupg").is_dir():
        subprocess.run(["gpgconf", "--homedir", b.secret_dir / "gnupg", "--kill", "gpg-agent"], stderr=subprocess.DEVNULL)
    if b.keep:
        log(f"kept {b.work}")
        return
    # The scale sets' data dirs and restores hold up to hundreds of thousands of folders.
    remove_tree = remove_wide if b.scale_only else remove
    for path in (b.servers, b.restores, b.scratch, b.secret_dir, b.work / "data", b.work / "ingest"):
        remove_tree(path)
    if rc != 0:
        log(f"failed (exit {rc}); logs and partial results kept in {b.work}")
    elif b.created_work:
        remove(b.work)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__, usage=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    for option, default in (("--size", "1"), ("--runs", "3"), ("--only", ""), ("--workdir", ""), ("--scale-files", "")):
        p.add_argument(option, default=default, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allow-load", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = argv
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", args.size) or not float(args.size) > 0:
        die(f"--size must be a positive number of GiB (got '{args.size}')")
    if not re.fullmatch(r"[1-9][0-9]*", args.runs):
        die(f"--runs must be a positive integer (got '{args.runs}')")
    if args.only not in ("", *DATASETS, SCALE):
        die(f"--only must be media-heavy, media-small, many-small or scale (got '{args.only}')")
    if args.scale_files and args.only != SCALE:
        die("--scale-files goes with --only scale")
    if args.scale_files and not re.fullmatch(r"[0-9]+(,[0-9]+)*", args.scale_files):
        die(f"--scale-files must be numbers of files separated by commas (got '{args.scale_files}')")
    if any(int(n) < 100 for n in (args.scale_files or SCALE_FILES).split(",")):
        die(f"--scale-files: each data set needs at least 100 files (got '{args.scale_files}')")
    return args


def lock_work_dir(b: Bench) -> None:
    """One benchmark per work dir at a time."""
    b.lock = open(b.work / ".lock", "w")
    try:
        fcntl.flock(b.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        die(f"another benchmark is running in {b.work}")


def on_sigterm(_signum, _frame):
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    os.environ["LC_ALL"] = "C"
    b = Bench.from_args(parse_args(argv))
    lock_work_dir(b)
    signal.signal(signal.SIGTERM, on_sigterm)
    rc = 0
    try:
        run(b)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        rc = 130
    except BaseException:
        traceback.print_exc()
        rc = 1
    clean_up(b, rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
