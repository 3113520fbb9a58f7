#!/usr/bin/env python3
"""Turns the measurements of scripts/bench.py into a Markdown report.

Input: --results, a TSV without header, one row per successful measurement:
    dataset tool op run bytes wall_s mb_s cpu_s peak_rss_kib server_cpu_s
('-' where a figure does not apply); --failures, a TSV of the measurements that failed:
    dataset tool op run message
and --meta, the KEY=VALUE lines (shell-quoted) bench.py
wrote about the machine and the run. Output: the report on stdout and in --out.
bench.py calls render_files; run alone, this renders the files a --keep run left.

The scale section (bench.py --only scale) is rendered by render_scale_files from the same files
plus --stored, a TSV of the bytes each backup stored:
    dataset tool op run bytes
and lives in the doc between SCALE_BEGIN and SCALE_END (splice_scale, keep_scale).
"""

import argparse
import shlex
import statistics
import sys

DATASETS = ("media-heavy", "media-small", "many-small")

# (tool, op) in the order the tables show them, with a label.
ROWS = [
    ("ours", "create", "synapse-backup create-backup"),
    ("ours", "verify", "synapse-backup verify-backup"),
    ("ours", "restore", "synapse-backup restore-backup --target-dir"),
    ("charm", "backup", "charm: tar -c | gpg --symmetric | aws s3 cp -"),
    ("charm", "restore", "charm: aws s3 cp - | gpg -d | tar -x"),
    ("restic", "backup", "restic backup (first, new repository)"),
    ("restic", "restore", "restic restore"),
    ("ours", "create-same", "synapse-backup create-backup, nothing changed (incremental)"),
    ("ours", "create-incr", "synapse-backup create-backup after 1% new media + database change"),
    ("ours", "restore-incr", "synapse-backup restore-backup of that incremental backup"),
    ("restic", "backup-same", "restic backup, nothing changed (second)"),
    ("restic", "backup-incr", "restic backup after 1% new media + database change"),
    ("limit", "read", "limit: read the data (tar -c | cat > /dev/null)"),
    ("limit", "encrypt", "limit: OpenPGP encryption, 1 core, in memory"),
    ("limit", "decrypt", "(context) OpenPGP decryption, 1 core, in memory"),
    ("limit", "s3-ingest", "limit: S3 ingest (aws s3 cp FILE)"),
    ("limit", "s3-put", "(context) S3 ingest, one PUT (curl -T FILE)"),
    ("limit", "s3-egress", "(context) S3 egress (aws s3 cp OBJECT - | cat)"),
    ("limit", "s3-get", "(context) S3 egress, one GET (curl -o /dev/null)"),
]
CREATE_LIMITS = (("read", "read"), ("encrypt", "encrypt"), ("s3-ingest", "S3 ingest"))
RSS_TARGET_MIB = 64

SCALE_BEGIN = "<!-- scale:begin -->"
SCALE_END = "<!-- scale:end -->"
# (tool, op) of the scale section's table, with a label and whether it stores bytes.
SCALE_ROWS = [
    ("ours", "create", "full backup (create-backup)", True),
    ("ours", "create-same", "second backup, nothing changed", True),
    ("ours", "create-incr", "third backup, after 1% new media files", True),
    ("ours", "restore-incr", "restore of the third backup (restore-backup --target-dir)", False),
    ("ours", "verify-incr", "verify of the third backup (verify-backup)", False),
    ("ours", "list", "list-backups (three backups)", False),
    ("ours", "delete", "delete-backup of the second backup", False),
    ("ours", "prune", "prune-backups --keep-last 1 (deletes the first)", False),
    ("restic", "backup", "(reference) restic backup, first", True),
    ("restic", "backup-same", "(reference) restic backup, nothing changed", True),
    ("tar", "create", "(reference) tar -c of the third backup's files into a local file", True),
    ("tar", "extract", "(reference) tar -x of that file into an empty dir", False),
]
# The scale targets: a nothing-changed backup stores at most this much, and takes at most this
# share of the full backup's time; peak RSS caps; what a full backup stores per media file beyond
# the media bytes; restore speed as a share of tar -x's.
SCALE_SAME_BASE, SCALE_SAME_PER_FILE = 2 * 1024 * 1024, 2
SCALE_SAME_TIME = 0.10
SCALE_RSS_CAP_MIB, SCALE_RSS_GROWTH = 96, 1.5
SCALE_FULL_PER_FILE = 1024
SCALE_RESTORE_VS_TAR = 0.5


def num(value):
    return None if value in ("-", "", None) else float(value)


def load_results(path):
    data = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            ds, tool, op, run, size, wall, mbs, cpu, rss, server = line.split("\t")
            data.setdefault((ds, tool, op), []).append(
                {
                    "run": int(run),
                    "bytes": int(size),
                    "wall": num(wall),
                    "mbs": num(mbs),
                    "cpu": num(cpu),
                    "rss_mib": None if num(rss) is None else num(rss) / 1024,
                    "server": num(server),
                }
            )
    return data


def load_failures(path):
    failures = []
    if not path:
        return failures
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                ds, tool, op, run, message = (line.split("\t", 4) + [""] * 5)[:5]
                failures.append((ds, tool, op, run, message))
    return failures


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            meta[key] = " ".join(shlex.split(value)) if value else ""
    return meta


def values(rows, key):
    return [r[key] for r in rows if r[key] is not None]


def median(rows, key):
    v = values(rows, key)
    return statistics.median(v) if v else None


def best(rows, key):
    v = values(rows, key)
    return max(v) if v else None


def fmt(x, digits=1):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def spread(rows, key, digits=1):
    """median (min–max)"""
    v = values(rows, key)
    if not v:
        return "–"
    if len(v) == 1:
        return fmt(v[0], digits)
    return f"{fmt(statistics.median(v), digits)} ({fmt(min(v), digits)}–{fmt(max(v), digits)})"


def load_incremental(path):
    """(dataset, kind) → list of dicts: stored bytes of a create-backup, and for "incr" the new
    media bytes and the database's size."""
    out = {}
    if not path:
        return out
    try:
        f = open(path)
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                continue
            ds, kind, run, stored = fields[:4]
            row = {"run": int(run), "stored": int(stored)}
            if kind == "incr" and len(fields) >= 6:
                row["new"] = int(fields[4])
                row["db"] = int(fields[5])
            out.setdefault((ds, kind), []).append(row)
    return out


class Report:
    def __init__(self, data, meta, failures=(), incremental=None):
        self.incremental = incremental or {}
        self.data = data
        self.meta = meta
        self.failures = list(failures)
        self.lines = []
        try:
            self.runs = int(meta.get("runs", "0"))
        except ValueError:
            self.runs = 0

    def count_note(self, ds, tool, op):
        n = len(self.rows(ds, tool, op))
        return f" ({n} of {self.runs} runs)" if self.runs and 0 < n < self.runs else ""

    def out(self, text=""):
        self.lines.append(text)

    def rows(self, ds, tool, op):
        return self.data.get((ds, tool, op), [])

    def mbs(self, ds, tool, op):
        return median(self.rows(ds, tool, op), "mbs")

    def best_mbs(self, ds, tool, op):
        return best(self.rows(ds, tool, op), "mbs")

    def has(self, ds):
        return any(key[0] == ds for key in self.data)

    def create_limit(self, ds):
        found = [(self.mbs(ds, "limit", op), label) for op, label in CREATE_LIMITS]
        found = [(v, label) for v, label in found if v is not None]
        return min(found) if found else (None, None)

    def restore_limit(self, ds):
        found = [(self.mbs(ds, "limit", op), label) for op, label in (("s3-egress", "S3 egress"), ("decrypt", "decrypt"))]
        found = [(v, label) for v, label in found if v is not None]
        return min(found) if found else (None, None)

    def ours_peak_rss(self, ds):
        v = [r["rss_mib"] for op in ("create", "verify", "restore") for r in self.rows(ds, "ours", op) if r["rss_mib"] is not None]
        return max(v) if v else None

    # --- sections ---

    def header(self):
        m = self.meta
        self.out("# Benchmarks")
        self.out()
        self.out(
            f"Written by `{m.get('command', 'scripts/bench.py')}` on {m.get('date', '?')} "
            f"({self.minutes(m.get('elapsed_s'))}). Do not edit by hand: run the script again. "
            "The method, and what the figures do and do not say, are at the end."
        )
        self.out()
        self.out("| machine | |")
        self.out("| --- | --- |")
        self.out(f"| CPUs (nproc) | {m.get('nproc', '?')} |")
        self.out(f"| CPU model | {m.get('cpu_model', '?')} |")
        self.out(f"| RAM | {m.get('mem_total', '?')} |")
        fs = m.get("fs", "?")
        if m.get("fs_opts"):
            fs += f" ({m['fs_opts']})"
        self.out(f"| kernel, file system of the work dir | {m.get('kernel', '?')}, {fs} |")
        self.out(f"| load average (1, 5, 15 min) at start / end | {m.get('load_start', '?')} / {m.get('load_end', '?')} |")
        if m.get("loaded") == "1":
            self.out()
            self.out(
                "**This run started on a busy machine** (load average above 0.5 per core, `--allow-load`): its ratios "
                "are not comparable with other runs'."
            )
        self.out(f"| synapse-backup | {m.get('v_ours', '?')}, commit {m.get('commit', '?')} |")
        self.out(
            f"| others | {m.get('v_gpg', '?')}; {m.get('v_aws', '?')}; {m.get('v_restic', '?')}; "
            f"{m.get('v_tar', '?')}; {m.get('v_garage', '?') or 'garage'} (S3 server) |"
        )
        self.out()

    @staticmethod
    def minutes(seconds):
        if not seconds:
            return "run time unknown"
        s = int(float(seconds))
        return f"the whole run took {s // 60} min {s % 60:02d} s"

    def dataset_title(self, ds):
        key = ds.replace("-", "_")
        files = self.meta.get(f"files_{key}")
        size = self.meta.get(f"bytes_{key}")
        if ds == "media-heavy":
            what = f"media-heavy, {self.meta.get('media_mib', '?')} MiB of media asked for"
        elif ds == "media-small":
            what = f"media-small, media-heavy's shape at {self.meta.get('media_small_mib', '?')} MiB of media asked for"
        else:
            what = f"many-small, {self.meta.get('small_files', '?')} media files of 2–60 KiB asked for"
        extra = ""
        if files and size:
            extra = f": {int(files):,} files, {int(size) / 1e6:,.1f} MB backed up"
        return f"{what}{extra}"

    def targets(self):
        self.out("## Targets")
        self.out()
        self.out(
            "Ratios of medians of MB/s (higher is faster), and beside them the ratio of the best runs (best of "
            f"{self.runs or '?'}: the least disturbed run of each); reported against the targets, not as pass/fail "
            "of the script. \"met?\" judges the medians."
        )
        self.out()
        self.out("| target | measured (medians) | ratio of medians | ratio of bests | met? |")
        self.out("| --- | --- | --- | --- | --- |")
        mh = "media-heavy"

        def row(label, ours, other, want, other_label, note="", bests=(None, None)):
            if ours is None or other is None:
                self.out(f"| {label} | not measured | – | – | – |")
                return
            ratio = ours / other
            best_ours, best_other = bests
            best_ratio = f"{best_ours / best_other:.2f}×" if best_ours and best_other else "–"
            met = "met" if ratio >= want else "**not met**"
            self.out(f"| {label} | {fmt(ours)} vs {other_label} {fmt(other)} MB/s{note} | {ratio:.2f}× | {best_ratio} | {met} |")

        def bests(ours, other):
            return (self.best_mbs(*ours), self.best_mbs(*other))

        ours_c = self.mbs(mh, "ours", "create")
        note_c = self.count_note(mh, "ours", "create")
        oc = (mh, "ours", "create")
        row(
            "create-backup ≥ 4× charm backup (media-heavy)", ours_c, self.mbs(mh, "charm", "backup"), 4, "charm", note_c,
            bests(oc, (mh, "charm", "backup")),
        )
        row(
            "create-backup ≥ 2× restic first backup (media-heavy)", ours_c, self.mbs(mh, "restic", "backup"), 2, "restic",
            note_c, bests(oc, (mh, "restic", "backup")),
        )
        limit, which = self.create_limit(mh)
        row(
            "create-backup ≥ 80% of the limit, the slowest of read, encrypt and S3 ingest (media-heavy)",
            ours_c,
            limit,
            0.8,
            f"limit ({which})",
            note_c,
            (self.best_mbs(*oc), None),
        )
        for ds in DATASETS:
            ours_r = self.mbs(ds, "ours", "restore")
            note_r = self.count_note(ds, "ours", "restore")
            orr = (ds, "ours", "restore")
            row(
                f"restore-backup ≥ 1.5× charm restore ({ds})", ours_r, self.mbs(ds, "charm", "restore"), 1.5, "charm",
                note_r, bests(orr, (ds, "charm", "restore")),
            )
            row(
                f"restore-backup ≥ 1.2× restic restore ({ds})", ours_r, self.mbs(ds, "restic", "restore"), 1.2, "restic",
                note_r, bests(orr, (ds, "restic", "restore")),
            )
        row(
            "many-small create-backup MB/s ≥ 50% of media-heavy's",
            self.mbs("many-small", "ours", "create"),
            ours_c,
            0.5,
            "media-heavy",
            self.count_note("many-small", "ours", "create") or note_c,
            bests(("many-small", "ours", "create"), oc),
        )
        size = self.meta.get("size_gib", "?")
        for ds in DATASETS:
            peak = self.ours_peak_rss(ds)
            label = f"peak RSS ≤ {RSS_TARGET_MIB} MiB (create, verify, restore; {ds}, --size {size})"
            if peak is None:
                self.out(f"| {label} | not measured | – | – | – |")
            else:
                met = "met" if peak <= RSS_TARGET_MIB else "**not met**"
                self.out(f"| {label} | largest of all runs {peak:.1f} MiB | {peak / RSS_TARGET_MIB:.2f}× the cap | – | {met} |")
        self.out()
        self.out(
            f"The RSS target holds \"for 1 GiB and 10 GiB alike\": this run measured {size} GiB; "
            "`scripts/bench.py --size 10` measures the other end."
        )
        self.out()
        if self.failures:
            self.out("### Failed measurements")
            self.out()
            self.out("Left out of the medians above and below.")
            self.out()
            self.out("| data set | run | tool | step | error (first line) |")
            self.out("| --- | ---: | --- | --- | --- |")
            for ds, tool, op, run, message in self.failures:
                message = message.replace("|", "\\|")
                self.out(f"| {ds} | {run} | {tool} | {op} | {message} |")
            self.out()

    def tables(self):
        for ds in DATASETS:
            if not self.has(ds):
                continue
            self.out(f"## Results: {self.dataset_title(ds)}")
            self.out()
            self.out("Median (min–max) over the runs. CPU is user + system seconds of every process of the command or")
            self.out("pipeline; peak RSS is the largest process's, the highest of all runs; server CPU is Garage's.")
            self.out()
            self.out("| what | MB/s | wall s | CPU s | peak RSS MiB | server CPU s | runs |")
            self.out("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for tool, op, label in ROWS:
                rows = self.rows(ds, tool, op)
                if not rows:
                    if any(f[:3] == (ds, tool, op) for f in self.failures):
                        label = label.replace("|", "\\|")
                        self.out(f"| {label} | failed | – | – | – | – | 0/{self.runs or '?'} |")
                    continue
                rss = values(rows, "rss_mib")
                note = ""
                if (tool, op) == ("limit", "encrypt"):
                    note = " ¹"
                label = label.replace("|", "\\|")
                self.out(
                    f"| {label}{note} | {spread(rows, 'mbs')} | {spread(rows, 'wall', 2)} | {spread(rows, 'cpu', 2)} "
                    f"| {fmt(max(rss)) if rss else '–'} | {spread(rows, 'server', 2)} | {len(rows)}/{self.runs or '?'} |"
                )
            self.out()
            self.out(
                "¹ MB/s as the example program reports it for encryption alone; its wall time, CPU and RSS are the "
                "whole program's (it also encrypts and decrypts a second message in memory)."
            )
            self.out()

    def ratios(self):
        present = [ds for ds in DATASETS if self.has(ds)]
        if not present:
            return
        self.out("## Ratios")
        self.out()
        self.out("| ratio of medians of MB/s | " + " | ".join(present) + " |")
        self.out("| --- |" + " ---: |" * len(present))

        def line(label, fn):
            cells = []
            for ds in present:
                a, b = fn(ds)
                cells.append("–" if a is None or b is None else f"{a / b:.2f}×")
            self.out(f"| {label} | " + " | ".join(cells) + " |")

        line("create-backup / charm backup", lambda ds: (self.mbs(ds, "ours", "create"), self.mbs(ds, "charm", "backup")))
        line("create-backup / restic first backup", lambda ds: (self.mbs(ds, "ours", "create"), self.mbs(ds, "restic", "backup")))
        for op, label in CREATE_LIMITS:
            line(f"create-backup / {label} limit", lambda ds, op=op: (self.mbs(ds, "ours", "create"), self.mbs(ds, "limit", op)))
        line("create-backup / limit (slowest of the three)", lambda ds: (self.mbs(ds, "ours", "create"), self.create_limit(ds)[0]))
        line("restore-backup / charm restore", lambda ds: (self.mbs(ds, "ours", "restore"), self.mbs(ds, "charm", "restore")))
        line("restore-backup / restic restore", lambda ds: (self.mbs(ds, "ours", "restore"), self.mbs(ds, "restic", "restore")))
        line(
            "restore-backup / slowest of S3 egress and decrypt (context)",
            lambda ds: (self.mbs(ds, "ours", "restore"), self.restore_limit(ds)[0]),
        )
        line(
            "verify-backup / slowest of S3 egress and decrypt (context)",
            lambda ds: (self.mbs(ds, "ours", "verify"), self.restore_limit(ds)[0]),
        )
        line("verify-backup / charm restore (context)", lambda ds: (self.mbs(ds, "ours", "verify"), self.mbs(ds, "charm", "restore")))
        self.out()
        limits = []
        for ds in present:
            v, which = self.create_limit(ds)
            if v is not None:
                limits.append(f"{ds}: {which}, {fmt(v)} MB/s")
        if limits:
            self.out("The create limit (slowest of read, encrypt, S3 ingest) is " + "; ".join(limits) + ".")
            self.out()

    def method(self):
        m = self.meta
        runs = m.get("runs", "?")
        self.out("## Method")
        self.out()
        for text in [
            f"One run of `scripts/bench.py` does everything on this machine: it generates the data sets with "
            f"`scripts/example-datadir.py` (fixed seeds: media-heavy `--profile media-heavy --size-mib "
            f"{m.get('media_mib', '?')} --seed 1`, media-small `--profile media-heavy --size-mib "
            f"{m.get('media_small_mib', '?')} --seed 3` (one or two media volumes, so a restore has few to spread "
            f"over threads), many-small `--profile many-small --files {m.get('small_files', '?')} "
            f"--seed 2`; random media bytes, as real JPEG/MP4 do not compress), then repeats every measurement "
            f"{runs} time(s) and reports the median and the range.",
            "All tools back up the same files: the signing key, `homeserver.db` and `media_store/local_content` and "
            "`local_thumbnails` (what the charm's pipeline archives; synapse-backup finds them through "
            "homeserver.yaml and adds the config files, a few KiB, and takes the database through SQLite's backup "
            "API). MB/s is that data's size (10⁶ bytes) divided by the wall time, the same size for every tool.",
            "S3 is a single-node Garage (`scripts/s3-test-server.sh`, as the tests use) on loopback. Each tool gets "
            "a fresh, empty server in each run (the limits one too), so no tool finds another's objects or "
            "leftover blocks and the disk holds one copy at a time; starting it is not timed. Garage stores what "
            "it is sent on the same disk, compresses blocks with zstd and hashes them, so the server's CPU "
            "(last column) competes with the client's for the 2 cores.",
            "synapse-backup: `create-backup`, then `verify-backup ID`, then `restore-backup ID --target-dir DIR` "
            "into an empty directory, with its default settings (4 multipart uploads in flight, 8 MiB parts).",
            "The charm's pipeline: `tar -c … | gpg --batch --symmetric --passphrase-file F | aws s3 cp "
            "--expected-size=N - s3://…` and `aws s3 cp s3://… - | gpg --batch --passphrase-file F -d | tar -x`, "
            "gpg with its defaults as the charm runs it (so ZLIB compression of incompressible media).",
            "restic: a new repository (new server, new prefix, empty cache) in each run, so `restic backup` is "
            "always a first backup; restic's defaults (repository version 2, compression `auto`); then "
            "`restic restore latest --target DIR`.",
            "Limits, measured in the same run on the same data: reading it (`tar -c … | cat > /dev/null`, since "
            "GNU tar skips reading file data when its output is /dev/null), OpenPGP encryption on one core in "
            "memory (`crates/core/examples/crypto_throughput.rs`, the tool's own encryption code, at most "
            "512 MiB), and the server's ingest of one pre-made object of the data set's size (`aws s3 cp FILE`, "
            "awscli's default 10 threads and 8 MiB parts). That limit includes awscli's own CPU, which "
            "competes with Garage for the 2 cores, so it is a lower bound of what the server can take; for "
            "context the tables also show one plain PUT of the same file with curl (unsigned payload, no "
            "client-side hashing) and one plain GET of it (curl), the server's own limits, S3 egress "
            "(`aws s3 cp s3://… - | cat`) and the example's decryption rate. A run whose load average at "
            "the start is above 0.5 per core waits for quiet or is refused (`--allow-load` records it, "
            "marked); the targets show the ratio of the best runs beside the ratio of medians.",
            "Wall time is taken around the whole command or pipeline; every process (each pipeline stage) runs "
            "under `/usr/bin/time`, whose user + system seconds are summed and whose largest maximum RSS is "
            "reported.",
            "Nothing is dropped from the page cache (that needs root): the data set is read once before the "
            "first run, so it is warm in the cache for all tools alike, and the figures are those of a "
            "backup of recently used data, not of cold disk reads. After each measurement the script runs "
            "`sync` (untimed), and each restore target is emptied before its run; restores are checked "
            "(untimed) to hold at least every media file and byte. Deleting restores and servers between "
            "measurements is not timed either (on a file system mounted with `discard` it takes minutes for "
            "50,000 files, which makes the whole run much longer than the sum of the timings).",
            "Tools' order rotates from run to run (synapse-backup, charm, restic; then charm, restic, "
            "synapse-backup; …) so that none always runs first. The machine may have been running other "
            "work: see the load averages above, and the spread in the tables.",
        ]:
            self.out(f"- {text}")
        self.out()

    def wall(self, ds, tool, op):
        return median(self.rows(ds, tool, op), "wall")

    def incremental_section(self):
        present = [ds for ds in DATASETS if self.rows(ds, "ours", "create-incr") or self.rows(ds, "ours", "create-same")]
        if not present:
            return
        self.out("## Incremental backups")
        self.out()
        self.out(
            "After the full backup of each run: a second create-backup with nothing changed, then new media of 1% of the "
            "media bytes plus 2,000 rows added to the database, and a third create-backup, whose backup is then restored. "
            "restic's second and third backups (same changes, same repository as its first) are the reference. "
            "Wall times are medians over the runs; stored bytes are what create-backup --json reported."
        )
        self.out()
        self.out("| target | measured (medians) | ratio | met? |")
        self.out("| --- | --- | --- | --- |")
        for ds in present:
            full = self.wall(ds, "ours", "create")
            same = self.wall(ds, "ours", "create-same")
            incr = self.wall(ds, "ours", "create-incr")
            restore_full = self.wall(ds, "ours", "restore")
            restore_incr = self.wall(ds, "ours", "restore-incr")

            def line(label, a, b, want, lower_is_better=True, unit="s"):
                if a is None or b is None or b == 0:
                    self.out(f"| {label} ({ds}) | not measured | – | – |")
                    return
                ratio = a / b
                ok = ratio <= want if lower_is_better else ratio >= want
                self.out(f"| {label} ({ds}) | {fmt(a, 2)} {unit} vs {fmt(b, 2)} {unit} | {ratio:.3f}× | {'met' if ok else '**not met**'} |")

            line("second backup, nothing changed: ≤ 5% of the full backup's time", same, full, 0.05)
            line("after 1% new media + database: ≤ 10% of the full backup's time", incr, full, 0.10)
            rows = self.incremental.get((ds, "incr"), [])
            if rows:
                stored = statistics.median(r["stored"] for r in rows)
                allowed = statistics.median((r["new"] + r["db"]) * 1.01 for r in rows)
                self.out(
                    f"| after 1% new media + database: stores ≤ new media + database + 1% ({ds}) | "
                    f"{stored / 1e6:,.1f} MB vs {allowed / 1e6:,.1f} MB | {stored / allowed:.3f}× | "
                    f"{'met' if stored <= allowed else '**not met**'} |"
                )
            same_rows = self.incremental.get((ds, "same"), [])
            if same_rows:
                self.out(
                    f"| nothing changed: bytes stored (the database and config, written in full each time) ({ds}) | "
                    f"{statistics.median(r['stored'] for r in same_rows) / 1e6:,.1f} MB | – | – |"
                )
            line("restore of the incremental ≤ 1.1× the full backup's restore time", restore_incr, restore_full, 1.1)
            restic_incr = self.wall(ds, "restic", "backup-incr")
            restic_same = self.wall(ds, "restic", "backup-same")
            if restic_incr is not None and incr is not None:
                self.out(
                    f"| (reference) restic's backup after the same change ({ds}) | ours {fmt(incr, 2)} s, restic {fmt(restic_incr, 2)} s | "
                    f"{incr / restic_incr:.2f}× restic's time | – |"
                )
            if restic_same is not None and same is not None:
                self.out(
                    f"| (reference) restic's backup with nothing changed ({ds}) | ours {fmt(same, 2)} s, restic {fmt(restic_same, 2)} s | "
                    f"{same / restic_same:.2f}× restic's time | – |"
                )
            peak = max(
                (r["rss_mib"] for op in ("create-same", "create-incr", "restore-incr") for r in self.rows(ds, "ours", op) if r["rss_mib"] is not None),
                default=None,
            )
            if peak is not None:
                self.out(
                    f"| peak RSS ≤ {RSS_TARGET_MIB} MiB in the incremental steps ({ds}) | {peak:.1f} MiB | {peak / RSS_TARGET_MIB:.2f}× the cap | "
                    f"{'met' if peak <= RSS_TARGET_MIB else '**not met**'} |"
                )
        self.out()

    def render(self):
        self.header()
        self.targets()
        self.incremental_section()
        self.tables()
        self.ratios()
        self.method()
        return "\n".join(self.lines).rstrip() + "\n"


def load_stored(path):
    """(dataset, tool, op) → the bytes stored, one value per run (stored.tsv of --only scale)."""
    out = {}
    try:
        f = open(path)
    except (FileNotFoundError, TypeError):
        return out
    with f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 5:
                ds, tool, op, _run, size = fields
                out.setdefault((ds, tool, op), []).append(int(size))
    return out


def size_text(n):
    """Bytes as a reader takes them in: MB from 1 MB up, then kB, then B."""
    if n is None:
        return "–"
    if abs(n) >= 1e6:
        return f"{n / 1e6:,.2f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:,.1f} kB"
    return f"{n:,.0f} B"


def and_list(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class ScaleReport(Report):
    """The scale section (bench.py --only scale): what a full, a nothing-changed and a 1%-new
    backup and a restore cost at each number of tiny media files, with restic and tar beside."""

    OURS_OPS = [(op, label) for tool, op, label, _ in SCALE_ROWS if tool == "ours"]

    def __init__(self, data, meta, failures, stored):
        super().__init__(data, meta, failures)
        self.stored = stored
        self.sizes = [int(n) for n in meta.get("scale_files", "").split(",") if n]

    @staticmethod
    def ds(n):
        return f"scale-{n}"

    def fact(self, n, what):
        value = self.meta.get(f"scale_{n}_{what}")
        return int(value) if value else None

    def stored_bytes(self, n, tool, op):
        v = self.stored.get((self.ds(n), tool, op), [])
        return statistics.median(v) if v else None

    def wall_s(self, n, tool, op):
        return median(self.rows(self.ds(n), tool, op), "wall")

    def rss(self, n, tool, op):
        v = values(self.rows(self.ds(n), tool, op), "rss_mib")
        return max(v) if v else None

    def target(self, label, measured, ratio, ok):
        """A row of the targets table; measured None is "not measured"."""
        if measured is None:
            self.out(f"| {label} | not measured | – | – |")
        else:
            met = "–" if ok is None else ("met" if ok else "**not met**")
            self.out(f"| {label} | {measured} | {ratio} | {met} |")

    # --- parts ---

    def scale_header(self):
        m = self.meta
        self.out(f"## Scale: per-file costs at {and_list([f'{n:,}' for n in self.sizes])} tiny media files")
        self.out()
        self.out(
            f"Written by `{m.get('command', 'scripts/bench.py --only scale')}` on {m.get('date', '?')} "
            f"({self.minutes(m.get('elapsed_s'))}), in a run of its own: `--only scale` rewrites this section "
            "alone, and a default run keeps it. Do not edit by hand: run the script again."
        )
        self.out()
        fs = m.get("fs", "?") + (f" ({m['fs_opts']})" if m.get("fs_opts") else "")
        self.out("| machine | |")
        self.out("| --- | --- |")
        self.out(f"| CPUs (nproc), model, RAM | {m.get('nproc', '?')}, {m.get('cpu_model', '?')}, {m.get('mem_total', '?')} |")
        self.out(f"| kernel, file system of the work dir | {m.get('kernel', '?')}, {fs} |")
        self.out(f"| load average (1, 5, 15 min) at start / end | {m.get('load_start', '?')} / {m.get('load_end', '?')} |")
        self.out(f"| synapse-backup | {m.get('v_ours', '?')}, commit {m.get('commit', '?')} |")
        self.out(f"| others | {m.get('v_restic', '?')}; {m.get('v_tar', '?')} |")
        self.out()
        if m.get("loaded") == "1":
            self.out(
                "**This run started on a busy machine** (load average above 0.5 per core, `--allow-load`): its "
                "times are not comparable with other runs'."
            )
            self.out()

    def scale_data_sets(self):
        self.out("| data set | media files | media bytes (mean per file) | database | backed up by every tool | 1% new |")
        self.out("| --- | ---: | ---: | ---: | ---: | ---: |")
        for n in self.sizes:
            media, media_bytes = self.fact(n, "media_files"), self.fact(n, "media_bytes")
            if not media:
                self.out(f"| {n:,} files | not generated | – | – | – | – |")
                continue
            files, size, new = self.fact(n, "files"), self.fact(n, "bytes"), self.fact(n, "new_files")
            self.out(
                f"| {n:,} files | {media:,} | {size_text(media_bytes)} ({media_bytes / media:,.0f} B) | "
                f"{size_text(self.fact(n, 'db_bytes'))} | {files:,} files, {size_text(size)} | {new:,} files |"
            )
        self.out()

    def scale_cells(self, n, tool, op, stores):
        rows = self.rows(self.ds(n), tool, op)
        if not rows:
            failed = any(f[:3] == (self.ds(n), tool, op) for f in self.failures)
            return ["failed" if failed else "–", "–", "–"]
        rss = self.rss(n, tool, op)
        stored = size_text(self.stored_bytes(n, tool, op)) if stores else "–"
        return [spread(rows, "wall", 2), fmt(rss), stored]

    def scale_table(self):
        self.out(
            "Wall seconds (median, and the range over the runs), peak RSS (largest process, highest of all runs) "
            "and what each backup added to its store (median)."
        )
        self.out()
        self.out("| step |" + "".join(f" {n:,} files: wall s | peak RSS MiB | stored |" for n in self.sizes))
        self.out("| --- |" + " ---: | ---: | ---: |" * len(self.sizes))
        for tool, op, label, stores in SCALE_ROWS:
            cells = [cell for n in self.sizes for cell in self.scale_cells(n, tool, op, stores)]
            self.out(f"| {label} | " + " | ".join(cells) + " |")
        self.out()

    def same_targets(self, n):
        files = self.fact(n, "media_files")
        stored = self.stored_bytes(n, "ours", "create-same")
        allowed = SCALE_SAME_BASE + SCALE_SAME_PER_FILE * (files or 0)
        label = f"nothing changed: stores ≤ 2 MiB + {SCALE_SAME_PER_FILE} bytes per media file ({n:,} files)"
        measured = None if stored is None or not files else f"{size_text(stored)} vs {size_text(allowed)} allowed"
        self.target(label, measured, measured and f"{stored / allowed:.2f}×", measured and stored <= allowed)
        same, full = self.wall_s(n, "ours", "create-same"), self.wall_s(n, "ours", "create")
        label = f"nothing changed: takes ≤ {SCALE_SAME_TIME:.0%} of the full backup's time ({n:,} files)"
        measured = None if same is None or not full else f"{same:.2f} s vs {full:.2f} s"
        self.target(label, measured, measured and f"{same / full:.1%}", measured and same / full <= SCALE_SAME_TIME)

    def full_target(self, n):
        files, media = self.fact(n, "media_files"), self.fact(n, "media_bytes")
        stored = self.stored_bytes(n, "ours", "create")
        label = f"full backup: stores ≤ 1 KiB per media file beyond the media bytes ({n:,} files)"
        if stored is None or not files:
            self.target(label, None, None, None)
            return
        per_file = (stored - media) / files
        measured = f"{per_file:,.0f} B per file ({size_text(stored)} stored, {size_text(media)} of media)"
        self.target(label, measured, f"{per_file / SCALE_FULL_PER_FILE:.2f}×", per_file <= SCALE_FULL_PER_FILE)

    def restore_target(self, n):
        ours, tar = self.wall_s(n, "ours", "restore-incr"), self.wall_s(n, "tar", "extract")
        label = f"restore of the third backup runs at ≥ {SCALE_RESTORE_VS_TAR:.0%} of `tar -x`'s speed ({n:,} files)"
        measured = None if ours is None or tar is None else f"restore {ours:.2f} s, tar -x {tar:.2f} s"
        self.target(label, measured, measured and f"{tar / ours:.2f}×", measured and tar / ours >= SCALE_RESTORE_VS_TAR)

    def rss_targets(self, n, base):
        peaks = [(self.rss(n, "ours", op), label) for op, label in self.OURS_OPS]
        peaks = [(v, label) for v, label in peaks if v is not None]
        label = f"peak RSS ≤ {SCALE_RSS_CAP_MIB} MiB in every step ({n:,} files)"
        peak, which = max(peaks) if peaks else (None, None)
        measured = peak and f"largest {peak:.1f} MiB ({which})"
        self.target(label, measured, measured and f"{peak / SCALE_RSS_CAP_MIB:.2f}× the cap", measured and peak <= SCALE_RSS_CAP_MIB)
        if base is None:
            return
        for op, step in self.OURS_OPS:
            big, small = self.rss(n, "ours", op), self.rss(base, "ours", op)
            label = f"peak RSS at {n:,} files ≤ {SCALE_RSS_GROWTH}× at {base:,}: {step}"
            measured = None if big is None or not small else f"{big:.1f} MiB vs {small:.1f} MiB"
            self.target(label, measured, measured and f"{big / small:.2f}×", measured and big / small <= SCALE_RSS_GROWTH)

    def restic_reference(self, n):
        ours, restic = self.wall_s(n, "ours", "create-same"), self.wall_s(n, "restic", "backup-same")
        label = f"(reference) restic's nothing-changed backup ({n:,} files)"
        measured = None
        if ours is not None and restic:
            measured = (
                f"ours {size_text(self.stored_bytes(n, 'ours', 'create-same'))} in {ours:.2f} s, "
                f"{fmt(self.rss(n, 'ours', 'create-same'))} MiB; restic "
                f"{size_text(self.stored_bytes(n, 'restic', 'backup-same'))} in {restic:.2f} s, "
                f"{fmt(self.rss(n, 'restic', 'backup-same'))} MiB"
            )
        self.target(label, measured, measured and f"{ours / restic:.2f}× restic's time", None)

    def scale_targets(self):
        self.out("### Targets at scale")
        self.out()
        self.out("Reported against the targets, not as pass/fail of the script; \"met?\" judges the medians.")
        self.out()
        self.out("| target | measured | ratio | met? |")
        self.out("| --- | --- | --- | --- |")
        base = self.sizes[0] if self.sizes else None
        for n in self.sizes:
            self.same_targets(n)
            self.full_target(n)
            self.restore_target(n)
            self.rss_targets(n, base if n != base else None)
            self.restic_reference(n)
        self.out()

    def scale_failures(self):
        failed = [f for f in self.failures if f[0].startswith("scale-")]
        if not failed:
            return
        self.out("### Failed measurements")
        self.out()
        self.out("| data set | run | tool | step | error (first line) |")
        self.out("| --- | ---: | --- | --- | --- |")
        for ds, tool, op, run, message in failed:
            message = message.replace("|", "\\|")
            self.out(f"| {ds} | {run} | {tool} | {op} | {message} |")
        self.out()

    def scale_method(self):
        files = ", ".join(f"`--files {n - n // 5}`" for n in self.sizes)
        self.out("### Method")
        self.out()
        for text in [
            "Data: `scripts/example-datadir.py --profile scale --seed 4 --no-media-rows` with "
            f"{files}: media files of 64–640 bytes (log-uniform, random bytes) in Synapse's sharded layout "
            "(`local_content/ab/cd/rest`, `local_thumbnails/ab/cd/rest/32-32-image-jpeg-scale`), one thumbnail per "
            "four originals. The same seed makes the smaller set's files the first of the larger one's, and the "
            "database (2,000 event rows, media tables left empty) is the same at every size, so the sets differ "
            "only in the number of media files.",
            "synapse-backup (release build) with a local folder on the same disk as its store (`[local] path`), "
            "a fresh one in each run, defaults otherwise: `create-backup --json` (full), again with nothing "
            "changed, then 1% new media files (new random ids over all shards, as uploads land; every fifth a "
            "thumbnail; the database unchanged) and a third `create-backup --json`, then `restore-backup ID "
            "--target-dir DIR` of that third (incremental) backup into an empty dir; then, on the same store, "
            "`verify-backup` of the third backup, `list-backups`, `delete-backup` of the second and "
            "`prune-backups --keep-last 1` (which deletes the first). \"stored\" is the "
            "`object-bytes` that create-backup reported.",
            "References in the same run: `tar -c` of the files the third backup holds (the signing key, "
            "`homeserver.db`, `local_content`, `local_thumbnails`) into a local file and `tar -x` of it into an "
            "empty dir (no fsync, unlike restore-backup); restic `backup` twice of the original files into a "
            "new local repository (defaults: repository version 2, compression `auto`). \"stored\" is what "
            "the repository's files grew by for restic, and the archive's size for tar.",
            "Wall time is taken around each command; peak RSS is the largest maximum RSS `/usr/bin/time` "
            "reported for it. Each data set is read once (`tar -c | cat`) before it is measured, so every "
            "tool finds it in the page cache; `sync` runs (untimed) after each step; restores are "
            "checked (untimed) to hold every media file after.",
            "Each restore and each `tar -x` goes into a new dir, and the data sets and restores are removed "
            "only after the last timed step: an ext4 without a journal (as the work dir's was when this was "
            "written) passes over inodes freed in the last 1–6 minutes when it allocates new ones, which made "
            "a `tar -x` of 20,000 files right after the removal of a restore 6× slower.",
            "Targets: the nothing-changed backup stores at most 2 MiB + 2 bytes per media file and takes at "
            "most 10% of the full backup's time; every peak RSS is at most 96 MiB and at most 1.5× its "
            "figure at the smallest size; a full backup stores at most 1 KiB per media file beyond the media "
            "bytes ((stored − media bytes) / media files); the restore runs at ≥ 50% of `tar -x`'s speed "
            "(tar -x's wall time / the restore's).",
        ]:
            self.out(f"- {text}")
        self.out()

    def render(self):
        self.scale_header()
        self.scale_data_sets()
        self.scale_table()
        self.scale_targets()
        self.scale_failures()
        self.scale_method()
        return "\n".join(self.lines).rstrip() + "\n"


def block_span(doc, name):
    """(start, end) of the `name` block in doc, its markers included, or None."""
    begin, finish = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start = doc.find(begin)
    end = doc.find(finish, start) if start >= 0 else -1
    return (start, end + len(finish)) if end >= 0 else None


def splice_block(doc, section, name):
    """doc with its `name` block replaced by section (or section appended as one), the rest as it was."""
    block = f"<!-- {name}:begin -->\n\n{section.strip()}\n\n<!-- {name}:end -->"
    span = block_span(doc, name)
    if span:
        return doc[: span[0]] + block + doc[span[1]:]
    if not doc:
        return block + "\n"
    return doc + ("" if doc.endswith("\n") else "\n") + "\n" + block + "\n"


# Sections written by runs of their own (`--only scale`, `wal`, `physical`), kept by a default run.
OWN_RUN_BLOCKS = ("scale", "wal", "physical")


def scale_span(doc):
    """(start, end) of the scale block in doc, its markers included, or None."""
    return block_span(doc, "scale")


def splice_scale(doc, section):
    """doc with its scale block replaced by section (or section appended as one), the rest as it was."""
    return splice_block(doc, section, "scale")


def keep_scale(old_doc, new_doc):
    """A default run's new_doc, followed by the blocks of their own runs old_doc had (if any)."""
    for name in OWN_RUN_BLOCKS:
        span = block_span(old_doc, name)
        if span:
            new_doc = new_doc.rstrip("\n") + "\n\n" + old_doc[span[0]: span[1]] + "\n"
    return new_doc


def render_scale_files(results, failures, meta, stored):
    """The scale section of the files a run of bench.py --only scale wrote."""
    return ScaleReport(load_results(results), load_meta(meta), load_failures(failures), load_stored(stored)).render()


def render_files(results, failures, meta, incremental):
    """The report of the files a run of bench.py wrote (failures and incremental may be None)."""
    return Report(load_results(results), load_meta(meta), load_failures(failures), load_incremental(incremental)).render()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True)
    p.add_argument("--failures")
    p.add_argument("--meta", required=True)
    p.add_argument("--incremental", help="incremental.tsv: bytes stored by the incremental create-backups")
    p.add_argument("--stored", help="stored.tsv of an --only scale run: renders the scale section instead")
    p.add_argument("--out")
    args = p.parse_args()
    if args.stored:
        text = render_scale_files(args.results, args.failures, args.meta, args.stored)
    else:
        text = render_files(args.results, args.failures, args.meta, args.incremental)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
