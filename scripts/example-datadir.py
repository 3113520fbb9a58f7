#!/usr/bin/env python3
"""Generates a Synapse-like data directory for demos, tests and benchmarks.

The layout follows what `python -m synapse.app.homeserver --generate-config` and a running
server produce: homeserver.yaml with absolute paths, a signing key, a SQLite database in WAL
mode with event-like rows, media_store/local_content/<aa>/<bb>/<rest>, thumbnails under
local_thumbnails/<aa>/<bb>/<rest>/<w>-<h>-<type>-<method>, and a remote media cache.
The "scale" profile is the per-file-cost shape of scripts/bench.py --only scale: tiny media
(64–640 bytes) with one thumbnail per four originals; with --no-media-rows its database is the
same whatever --files is.

Media bytes are random (real JPEG/MP4 do not compress either). Everything depends on --seed.
"""

import argparse
import os
import random
import sqlite3
import string
import sys

PROFILES = {
    # name: (image sizes in bytes as (min, max), share of videos, thumbnails per image (a
    # fraction: 0.25 is one thumbnail for every fourth image))
    "tiny": ((2_000, 60_000), 0.0, 2),
    "media-heavy": ((20 * 1024, 8 * 1024 * 1024), 0.02, 4),
    "many-small": ((2 * 1024, 60 * 1024), 0.0, 0),
    "scale": ((64, 640), 0.0, 0.25),
}


def media_id(rng):
    return "".join(rng.choice(string.ascii_letters) for _ in range(24))


def write_random(path, size, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 1 << 20)
            f.write(rng.randbytes(n))
            remaining -= n


def media_path(root, folder, mid):
    return os.path.join(root, folder, mid[0:2], mid[2:4], mid[4:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datadir")
    p.add_argument("--server-name", default="example.test")
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--size-mib", type=float, default=5, help="approximate size of local media")
    p.add_argument("--files", type=int, default=0,
                   help="number of media files, thumbnails not counted (many-small, scale); overrides --size-mib")
    p.add_argument("--no-media-rows", action="store_true",
                   help="leave the media tables empty, so that the database does not grow with --files")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--db-rows", type=int, default=2000)
    p.add_argument("--port", type=int, default=0, help="listener port written to homeserver.yaml (0: a closed port)")
    args = p.parse_args()

    rng = random.Random(args.seed)
    data = os.path.abspath(args.datadir)
    os.makedirs(data, exist_ok=True)
    media = os.path.join(data, "media_store")
    name = args.server_name
    port = args.port or 1  # port 1 is never answered on loopback: "Synapse is not running"

    with open(os.path.join(data, "homeserver.yaml"), "w") as f:
        f.write(f"""server_name: "{name}"
pid_file: {data}/homeserver.pid
listeners:
  - port: {port}
    tls: false
    type: http
    x_forwarded: true
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client, federation]
        compress: false
database:
  name: sqlite3
  args:
    database: {data}/homeserver.db
log_config: "{data}/{name}.log.config"
media_store_path: {data}/media_store
signing_key_path: "{data}/{name}.signing.key"
report_stats: false
""")
    with open(os.path.join(data, f"{name}.log.config"), "w") as f:
        f.write("version: 1\nroot:\n  level: INFO\n")
    key = "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(43))
    key_path = os.path.join(data, f"{name}.signing.key")
    with open(key_path, "w") as f:
        f.write(f"ed25519 a_{media_id(rng)[:4]} {key}\n")
    os.chmod(key_path, 0o600)

    db = sqlite3.connect(os.path.join(data, "homeserver.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS events (stream_ordering INTEGER PRIMARY KEY, event_id TEXT, room_id TEXT, json TEXT)")
    # The columns of Synapse's own tables that a backup reads to find media kept in storage
    # providers (crates/core/src/database/media_rows.rs).
    db.execute("CREATE TABLE IF NOT EXISTS local_media_repository (media_id TEXT PRIMARY KEY, media_length INTEGER, url_cache TEXT)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS local_media_repository_thumbnails (media_id TEXT, thumbnail_width INTEGER,"
        " thumbnail_height INTEGER, thumbnail_type TEXT, thumbnail_method TEXT, thumbnail_length INTEGER)"
    )
    # Synapse's users and rooms, counted into a backup's header for drills.
    db.execute("CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE IF NOT EXISTS rooms (room_id TEXT PRIMARY KEY)")
    db.executemany("INSERT OR IGNORE INTO users (name) VALUES (?)", [(f"@user{i}:{name}",) for i in range(3)])
    db.executemany("INSERT OR IGNORE INTO rooms (room_id) VALUES (?)", [(f"!room{i}:{name}",) for i in range(17)])
    rows = [(f"${media_id(rng)}", f"!room{i % 17}:{name}", '{"body":"' + "x" * rng.randint(20, 400) + '"}') for i in range(args.db_rows)]
    db.executemany("INSERT INTO events (event_id, room_id, json) VALUES (?, ?, ?)", rows)
    db.commit()

    (lo, hi), video_share, thumbs = PROFILES[args.profile]
    target = int(args.size_mib * 1024 * 1024)
    made = 0
    count = 0
    while (args.files and count < args.files) or (not args.files and made < target):
        mid = media_id(rng)
        if rng.random() < video_share:
            size = rng.randint(30 * 1024 * 1024, 60 * 1024 * 1024)
        else:
            # Photos cluster at the small end: log-uniform between lo and hi.
            size = int(lo * (hi / lo) ** rng.random())
        if not args.files:
            size = min(size, max(lo, target - made))
        write_random(media_path(media, "local_content", mid), size, rng)
        if not args.no_media_rows:
            db.execute("INSERT INTO local_media_repository (media_id, media_length) VALUES (?, ?)", (mid, size))
        made += size
        count += 1
        # int(thumbs) per image, or for a fraction one on every 1/thumbs-th image.
        for t in range(int(count * thumbs) - int((count - 1) * thumbs)):
            w = (32, 96, 320, 640)[t % 4]
            tsize = max(min(512, lo), min(size // (8 >> (t % 4)), 200 * 1024))
            thumb = os.path.join(media_path(media, "local_thumbnails", mid), f"{w}-{w}-image-jpeg-scale")
            write_random(thumb, tsize, rng)
            if not args.no_media_rows:
                db.execute(
                    "INSERT INTO local_media_repository_thumbnails VALUES (?, ?, ?, 'image/jpeg', 'scale', ?)",
                    (mid, w, w, tsize),
                )
    db.commit()
    db.close()
    # The remote cache and URL previews are skipped by default.
    for i in range(5):
        write_random(media_path(media, "remote_content", f"other.server/{media_id(rng)}"), 10_000, rng)
        write_random(media_path(media, "url_cache", media_id(rng)), 4_000, rng)
    print(f"{data}: {count} media files, {made} bytes of local media", file=sys.stderr)


if __name__ == "__main__":
    main()
