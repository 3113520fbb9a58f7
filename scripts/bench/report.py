#!/usr/bin/env python3
"""Turns the measurements of scripts/bench.py into a Markdown report.

Input: --results, a TSV without header, one row per successful measurement:
    dataset tool op run bytes wall_s mb_s cpu_s peak_rss_kib server_cpu_s
('-' where a figure does not apply); --failures, a TSV of the measurements that failed:
    dataset tool op run message
and --meta, the KEY=VALUE lines (shell-quoted) bench.py
wrote about the machine and the run. Output: the report on stdout and in --out.
bench.py calls render_files; run alone, this renders the files a --keep run left.
"""

import argparse
import shlex
import statistics
import sys

DATASETS = ("media-heavy", "many-small")

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
            label = f"peak RSS ≤ {RSS_TARGET_MIB} MiB (create, verify, restore; {ds}, {size} GiB)"
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
            f"{m.get('media_mib', '?')} --seed 1`, many-small `--profile many-small --files {m.get('small_files', '?')} "
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


def render_files(results, failures, meta, incremental):
    """The report of the files a run of bench.py wrote (failures and incremental may be None)."""
    return Report(load_results(results), load_meta(meta), load_failures(failures), load_incremental(incremental)).render()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True)
    p.add_argument("--failures")
    p.add_argument("--meta", required=True)
    p.add_argument("--incremental", help="incremental.tsv: bytes stored by the incremental create-backups")
    p.add_argument("--out")
    args = p.parse_args()
    text = render_files(args.results, args.failures, args.meta, args.incremental)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
