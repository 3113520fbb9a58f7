#!/usr/bin/env python3
"""Thirty nights of incremental backups, with the real synapse-backup, to see what the store
holds in the end.

Each night: new media of 1% of the media bytes, 0.2% of the media files deleted (a retention
job or an admin purge), rows added to the database, then `create-backup`. Then the retention
policy `--keep-daily 7 --keep-weekly 4` is applied with night N standing for day N (backup
ids carry the wall clock, so the script decides which backups the policy drops, as
prune-backups would for those dates, and deletes them with the real `delete-backup`, whose
sweep condemns and frees volumes; the grace period is 0 so that a volume condemned one night
is freed the next). Printed at the end: stored bytes / live media bytes, the objects in the
store, and the same figures night by night.

Usage: simulate.py --bin target/release/synapse-backup --work DIR [--nights 30] [--size-mib 256]
"""

import argparse
import datetime
import json
import os
import random
import sqlite3
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tree_bytes(path):
    total, count = 0, 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(folder, name))
            count += 1
    return total, count


def media_files(data):
    out = []
    for sub in ("local_content", "local_thumbnails"):
        for folder, _dirs, files in os.walk(os.path.join(data, "media_store", sub)):
            out.extend(os.path.join(folder, f) for f in files)
    return sorted(out)


def kept_nights(nights, daily, weekly):
    """The nights the policy keeps, newest first, as prune-backups' rules do for those days."""
    start = datetime.date(2026, 1, 1)
    kept = set()
    newest_first = sorted(nights, reverse=True)
    for rule, count, period in (
        ("daily", daily, lambda d: (d.year, d.timetuple().tm_yday)),
        ("weekly", weekly, lambda d: d.isocalendar()[:2]),
    ):
        seen = []
        for night in newest_first:
            p = period(start + datetime.timedelta(days=night))
            if p in seen:
                continue
            if len(seen) == count:
                break
            seen.append(p)
            kept.add(night)
    kept.add(newest_first[0])
    return kept


def run(bin_path, config, *args):
    out = subprocess.run([bin_path, "--config", config, "--json", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--nights", type=int, default=30)
    p.add_argument("--size-mib", type=float, default=256)
    args = p.parse_args()
    work = os.path.abspath(args.work)
    data, store = os.path.join(work, "data"), os.path.join(work, "store")
    if os.path.exists(work):
        subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(work)
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts/example-datadir.py"), data, "--profile", "media-heavy",
         "--size-mib", str(args.size_mib), "--seed", "3"],
        check=True, stderr=subprocess.DEVNULL,
    )
    passphrase = os.path.join(work, "passphrase")
    with open(passphrase, "w") as f:
        f.write("simulation passphrase\n")
    os.chmod(passphrase, 0o600)
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(
            f'[synapse]\nconfig = "{data}/homeserver.yaml"\n[local]\npath = "{store}"\n'
            f'[backup]\npassphrase-file = "{passphrase}"\nvolume-size = "32MiB"\n'
            "[retention]\ndelete-grace-secs = 0\n"
        )
    rng = random.Random(11)
    backups = {}  # night → backup id
    rows = []
    for night in range(1, args.nights + 1):
        if night > 1:
            live, _ = tree_bytes(os.path.join(data, "media_store"))
            files = media_files(data)
            for victim in rng.sample(files, max(1, len(files) * 2 // 1000)):
                os.remove(victim)
            target, written, n = live // 100, 0, 0
            while written < target:
                size = min(rng.randint(50 * 1024, 4 * 1024 * 1024), target - written)
                path = os.path.join(data, "media_store/local_content/00", f"{night:02d}", f"night{night:02d}n{n:05d}")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(rng.randbytes(size))
                written, n = written + size, n + 1
            db = sqlite3.connect(os.path.join(data, "homeserver.db"))
            db.execute("CREATE TABLE IF NOT EXISTS nightly (id INTEGER PRIMARY KEY, body TEXT)")
            db.executemany("INSERT INTO nightly (body) VALUES (?)", [(f"night {night} row {i}",) for i in range(500)])
            db.commit()
            db.close()
        created = run(args.bin, config, "create-backup")
        backups[night] = created["backup-id"]
        keep = kept_nights(list(backups), 7, 4)
        for gone in sorted(set(backups) - keep):
            run(args.bin, config, "delete-backup", backups.pop(gone))
        stored, objects = tree_bytes(store)
        live, _ = tree_bytes(os.path.join(data, "media_store"))
        rows.append((night, created["kind"], created["object-bytes"], len(backups), live, stored, objects))
        print(
            f"night {night:2d}: {created['kind']:11s} stored {created['object-bytes'] / 1e6:8.1f} MB; "
            f"{len(backups):2d} backups kept; live media {live / 1e6:7.1f} MB; store {stored / 1e6:7.1f} MB "
            f"({stored / live:.2f}×), {objects} objects",
            file=sys.stderr,
        )
    night, _kind, _added, kept, live, stored, objects = rows[-1]
    print(json.dumps({
        "nights": night,
        "backups-kept": kept,
        "live-media-bytes": live,
        "stored-bytes": stored,
        "stored-over-live": round(stored / live, 3),
        "max-stored-over-live": round(max(r[5] / r[4] for r in rows), 3),
        "objects": objects,
    }))


if __name__ == "__main__":
    main()
