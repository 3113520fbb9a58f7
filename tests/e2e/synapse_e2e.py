#!/usr/bin/env python3
"""End-to-end test of synapse-backup against a real Matrix Synapse.

Run by scripts/e2e-synapse.sh with the Python of a virtualenv that has matrix-synapse,
psycopg2-binary, requests and synapse-s3-storage-provider. Scenarios:

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

Prints `E2E-TIMING ...` lines and ends with `N passed, M failed`; exits 1 if any check failed.
"""

import argparse
import hashlib
import hmac
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import zlib

import requests
import yaml

SERVER_NAME = "e2e.test"
PASSPHRASE = "e2e correct horse battery staple"
CHARM_ID = "backup-20240101000000000000"
HEALTH_TIMEOUT = 120
STOP_TIMEOUT = 60
COMMAND_TIMEOUT = 300
HTTP_TIMEOUT = 30

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"

SCENARIOS = ["sqlite", "postgresql", "charm", "debian", "s3provider", "fileprovider"]


# --------------------------------------------------------------------------------------------
# Results


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.timings = []

    def check(self, scenario, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    [{scenario}] {name}")
        else:
            self.failed += 1
            self.failures.append(f"[{scenario}] {name}: {detail}")
            print(f"  FAIL  [{scenario}] {name}: {detail}")
        return ok

    def error(self, scenario, name, exc):
        detail = f"{type(exc).__name__}: {exc}"
        self.failed += 1
        self.failures.append(f"[{scenario}] {name}: {detail}")
        print(f"  FAIL  [{scenario}] {name}: {detail}")
        traceback.print_exc(file=sys.stdout)


RESULTS = Results()


class ScenarioAbort(Exception):
    """A step the rest of the scenario depends on failed (already counted)."""


def require(scenario, name, ok, detail=""):
    if not RESULTS.check(scenario, name, ok, detail):
        raise ScenarioAbort(name)


# --------------------------------------------------------------------------------------------
# Helpers


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(width, height, seed):
    """A valid RGB PNG with gradients, different for each seed, without Pillow."""
    ramp = bytes(range(256)) * (width // 256 + 2)
    red = bytes((x * 255 // max(width - 1, 1) + seed) & 255 for x in range(width))
    rows = []
    for y in range(height):
        row = bytearray(3 * width)
        row[0::3] = red
        row[1::3] = bytes([(y * 255 // max(height - 1, 1)) & 255]) * width
        offset = (y + seed) % 256
        row[2::3] = ramp[offset:offset + width]
        rows.append(b"\x00" + bytes(row))  # filter type 0 (none) for every row
    raw = b"".join(rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def tree_digest(root):
    """{relative path: sha256} of every regular file under root."""
    out = {}
    if not os.path.isdir(root):
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run(cmd, timeout=COMMAND_TIMEOUT, env=None, check=True, cwd=None):
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\nstderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


# --------------------------------------------------------------------------------------------
# PostgreSQL


def psql(sql, dbname="postgres", timeout=60):
    return run(
        ["psql", "-X", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", dbname, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        timeout=timeout,
    ).stdout.decode().strip()


def postgres_available():
    if not shutil.which("psql"):
        return False, "psql is not installed"
    try:
        proc = subprocess.run(
            ["psql", "-X", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", "postgres", "-Atc", "SELECT 1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return False, "psql timed out"
    if proc.returncode != 0 or proc.stdout.strip() != b"1":
        return False, " ".join(proc.stderr.decode(errors="replace").split())
    return True, ""


def create_database(name):
    psql(f'DROP DATABASE IF EXISTS "{name}"')
    psql(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")


def drop_database(name):
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_stale_databases():
    """Drops the databases of earlier runs that were killed before they could clean up."""
    for name in psql("SELECT datname FROM pg_database WHERE datname LIKE 'sb\\_e2e\\_%'").split():
        try:
            pid = int(name.split("_")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            log(f"dropping {name}, left over by an earlier run")
            drop_database(name)


# --------------------------------------------------------------------------------------------
# Synapse


class Synapse:
    def __init__(self, python, directory, port, pids_file, database=None):
        self.python = python
        self.dir = directory
        self.port = port
        self.pids_file = pids_file
        self.database = database  # None for SQLite, else the PostgreSQL database name
        self.config_path = os.path.join(directory, "homeserver.yaml")
        self.base = f"http://127.0.0.1:{port}"
        self.proc = None
        self.secret = "e2e-shared-secret-" + hashlib.sha256(directory.encode()).hexdigest()[:16]

    # -- config

    def generate(self):
        os.makedirs(self.dir, exist_ok=True)
        run(
            [
                self.python, "-m", "synapse.app.homeserver",
                "--server-name", SERVER_NAME,
                "--config-path", self.config_path,
                "--generate-config", "--report-stats=no",
                "--data-directory", self.dir,
            ],
            timeout=120,
            cwd=self.dir,
        )
        with open(self.config_path) as f:
            config = yaml.safe_load(f)
        config["listeners"] = [
            {
                "port": self.port,
                "tls": False,
                "type": "http",
                "x_forwarded": False,
                "bind_addresses": ["127.0.0.1"],
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ]
        # The generated log config names its file relative to the working directory of the
        # generation: keep the log inside the data dir.
        log_config_path = config["log_config"]
        with open(log_config_path) as f:
            log_config = yaml.safe_load(f)
        log_config["handlers"]["file"]["filename"] = os.path.join(self.dir, "homeserver.log")
        with open(log_config_path, "w") as f:
            yaml.safe_dump(log_config, f, sort_keys=False)
        config["registration_shared_secret"] = self.secret
        config["enable_registration"] = False
        config["pid_file"] = os.path.join(self.dir, "homeserver.pid")
        config["report_stats"] = False
        config["trusted_key_servers"] = []
        config["suppress_key_server_warning"] = True
        config["presence"] = {"enabled": False}
        config["federation_domain_whitelist"] = []
        high = {"per_second": 10000, "burst_count": 100000}
        for key in [
            "rc_message", "rc_registration", "rc_admin_redaction", "rc_3pid_validation",
            "rc_media_create", "rc_room_creation", "rc_reports", "rc_delayed_event_mgmt",
            "rc_registration_token_validity", "rc_joins_per_room", "rc_user_directory",
        ]:
            config[key] = dict(high)
        config["rc_login"] = {"address": dict(high), "account": dict(high), "failed_attempts": dict(high)}
        config["rc_joins"] = {"local": dict(high), "remote": dict(high)}
        config["rc_invites"] = {"per_room": dict(high), "per_user": dict(high), "per_issuer": dict(high)}
        config["rc_presence"] = {"per_user": dict(high)}
        config["rc_federation"] = {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 1, "reject_limit": 1000, "concurrent": 100}
        if self.database:
            config["database"] = {
                "name": "psycopg2",
                "args": {
                    "user": PG_USER,
                    "dbname": self.database,
                    "host": PG_HOST,
                    "port": PG_PORT,
                    "cp_min": 1,
                    "cp_max": 5,
                },
            }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return config

    def load_config(self):
        with open(self.config_path) as f:
            return yaml.safe_load(f)

    @property
    def signing_key_path(self):
        return self.load_config()["signing_key_path"]

    @property
    def media_store(self):
        return self.load_config()["media_store_path"]

    @property
    def sqlite_path(self):
        return self.load_config()["database"]["args"]["database"]

    # -- process

    def config_args(self):
        return ["-c", self.config_path]

    def start(self):
        out = open(os.path.join(self.dir, "synapse-stdout.log"), "ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "synapse.app.homeserver", *self.config_args()],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        with open(self.pids_file, "a") as f:
            f.write(f"{self.proc.pid}\n")
        log(f"started Synapse pid {self.proc.pid} on {self.base} ({self.dir})")
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self):
        deadline = time.monotonic() + HEALTH_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                r = requests.get(self.base + "/health", timeout=5)
                if r.status_code == 200 and r.text.strip() == "OK":
                    log(f"Synapse healthy after {HEALTH_TIMEOUT - (deadline - time.monotonic()):.1f}s")
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.3)
        raise RuntimeError(f"Synapse did not answer /health within {HEALTH_TIMEOUT}s (last: {last}):\n{self.log_tail()}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
            clean = True
        except subprocess.TimeoutExpired:
            log(f"Synapse pid {self.proc.pid} ignored SIGTERM for {STOP_TIMEOUT}s; killing it")
            self.proc.kill()
            self.proc.wait(timeout=30)
            clean = False
        log(f"stopped Synapse pid {self.proc.pid} (exit {self.proc.returncode})")
        self.proc = None
        return clean

    def log_tail(self, lines=40):
        text = ""
        for name in ("synapse-stdout.log", "homeserver.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f"--- {path}\n" + "".join(f.readlines()[-lines:])
        return text

    # -- API

    def register(self, username, password, admin=False):
        url = self.base + "/_synapse/admin/v1/register"
        nonce = requests.get(url, timeout=HTTP_TIMEOUT).json()["nonce"]
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, username, password):
            mac.update(part.encode())
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        r = requests.post(
            url,
            json={"nonce": nonce, "username": username, "password": password, "admin": admin, "mac": mac.hexdigest()},
            timeout=HTTP_TIMEOUT,
        )
        r.raise_for_status()
        body = r.json()
        return Client(self.base, body["access_token"], body["user_id"])

    def server_keys(self):
        r = requests.get(self.base + "/_matrix/key/v2/server", timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        return {k: v["key"] for k, v in r.json()["verify_keys"].items()}


class DebianSynapse(Synapse):
    """The Debian package's layout: /etc/matrix-synapse/homeserver.yaml plus conf.d/*.yaml
    (server_name, and here the database, with a YAML merge key), started with two
    --config-paths from its working directory /var/lib/matrix-synapse, which relative paths
    (here media_store_path and the SQLite file) are resolved against."""

    def __init__(self, python, directory, port, pids_file):
        super().__init__(python, os.path.join(directory, "var/lib/matrix-synapse"), port, pids_file)
        self.etc = os.path.join(directory, "etc/matrix-synapse")
        self.conf_d = os.path.join(self.etc, "conf.d")
        self.config_path = os.path.join(self.etc, "homeserver.yaml")

    def generate(self):
        os.makedirs(self.conf_d, exist_ok=True)
        config = super().generate()
        with open(os.path.join(self.conf_d, "server_name.yaml"), "w") as f:
            yaml.safe_dump({"server_name": config.pop("server_name")}, f)
        config.pop("database", None)
        with open(os.path.join(self.conf_d, "database.yaml"), "w") as f:
            f.write("x-sqlite: &sqlite\n  name: sqlite3\n  args:\n    database: homeserver.db\n"
                    "database:\n  <<: *sqlite\n")
        config["media_store_path"] = "media_store"
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return config

    def config_args(self):
        return ["-c", self.config_path, "-c", self.conf_d + "/"]

    def load_config(self):
        merged = {}
        files = [self.config_path] + sorted(
            os.path.join(self.conf_d, n) for n in os.listdir(self.conf_d) if n.endswith(".yaml"))
        for path in files:
            with open(path) as f:
                merged.update(yaml.safe_load(f) or {})
        return merged

    @property
    def signing_key_path(self):
        return os.path.join(self.dir, self.load_config()["signing_key_path"])

    @property
    def media_store(self):
        return os.path.join(self.dir, self.load_config()["media_store_path"])

    @property
    def sqlite_path(self):
        return os.path.join(self.dir, self.load_config()["database"]["args"]["database"])


class Client:
    def __init__(self, base, token, user_id):
        self.base = base
        self.token = token
        self.user_id = user_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.txn = 0
        self.lock = threading.Lock()

    def with_base(self, base):
        return Client(base, self.token, self.user_id)

    def call(self, method, path, **kwargs):
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.request(method, self.base + path, **kwargs)

    def whoami(self):
        return self.call("GET", "/_matrix/client/v3/account/whoami")

    def create_room(self, invite):
        r = self.call("POST", "/_matrix/client/v3/createRoom", json={"preset": "private_chat", "name": "e2e", "invite": invite})
        r.raise_for_status()
        return r.json()["room_id"]

    def join(self, room_id):
        r = self.call("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", json={})
        r.raise_for_status()

    def send(self, room_id, body):
        with self.lock:
            self.txn += 1
            txn = f"{int(time.time() * 1000)}-{self.txn}"
        r = self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{txn}",
            json={"msgtype": "m.text", "body": body},
        )
        r.raise_for_status()
        return r.json()["event_id"]

    def messages(self, room_id):
        """Every m.room.message in the room, newest first, as {event_id: body}."""
        out = {}
        token = None
        for _ in range(100):
            params = {"dir": "b", "limit": 1000}
            if token:
                params["from"] = token
            r = self.call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages", params=params)
            r.raise_for_status()
            body = r.json()
            for event in body.get("chunk", []):
                if event.get("type") == "m.room.message":
                    out[event["event_id"]] = event.get("content", {}).get("body")
            if not body.get("chunk") or not body.get("end") or body.get("end") == token:
                break
            token = body["end"]
        return out

    def upload(self, data, content_type, filename):
        r = self.call(
            "POST",
            "/_matrix/media/v3/upload",
            params={"filename": filename},
            data=data,
            headers={"Content-Type": content_type},
        )
        r.raise_for_status()
        return r.json()["content_uri"]

    def download(self, mxc):
        server, media_id = mxc[len("mxc://"):].split("/", 1)
        return self.call("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")

    def thumbnail(self, mxc, width, height, method):
        server, media_id = mxc[len("mxc://"):].split("/", 1)
        return self.call(
            "GET",
            f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            params={"width": width, "height": height, "method": method},
        )


# --------------------------------------------------------------------------------------------
# synapse-backup


class Tool:
    def __init__(self, binary, work):
        self.binary = binary
        self.store = os.path.join(work, "store")
        self.passphrase_file = os.path.join(work, "passphrase")
        shutil.rmtree(self.store, ignore_errors=True)
        os.makedirs(self.store)
        old = os.umask(0o077)
        try:
            with open(self.passphrase_file, "w") as f:
                f.write(PASSPHRASE + "\n")
        finally:
            os.umask(old)

    def config_for(self, homeserver_yaml, path, synapse_extra=""):
        config = json.dumps(homeserver_yaml)  # a TOML string or array, as JSON writes them
        with open(path, "w") as f:
            f.write(
                f'[synapse]\nconfig = {config}\n{synapse_extra}\n'
                f'[local]\npath = "{self.store}"\n\n'
                f'[backup]\npassphrase-file = "{self.passphrase_file}"\n'
            )
        return path

    def run(self, config, *args, timeout=COMMAND_TIMEOUT):
        cmd = [self.binary, "--config", config, *args]
        log("$ " + " ".join(cmd))
        started = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        elapsed = time.monotonic() - started
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        if err.strip():
            for line in err.strip().splitlines():
                print(f"    | {line}")
        return proc.returncode, out, err, elapsed

    def run_json(self, scenario, name, config, *args, timeout=COMMAND_TIMEOUT):
        code, out, err, elapsed = self.run(config, "--json", *args, timeout=timeout)
        ok = code == 0
        detail = f"exit {code}; stdout: {out.strip()[:2000]}; stderr: {err.strip()[:4000]}"
        require(scenario, name, ok, detail)
        try:
            # --json prints exactly one document on stdout (logs go to stderr).
            value = json.loads(out)
        except (ValueError, IndexError) as e:
            require(scenario, f"{name} prints JSON", False, f"{e}: {out!r}")
        return value, elapsed


# --------------------------------------------------------------------------------------------
# Scenario pieces


class Recorded:
    """What the test remembers of the server before it is destroyed."""

    def __init__(self):
        self.room_id = None
        self.users = {}  # name -> (token, user_id)
        self.messages_before = {}  # event_id -> body, sent before create-backup started
        self.concurrent = []  # (index, event_id, body) sent while create-backup ran, in order
        self.media = {}  # mxc -> bytes
        self.thumbnails = {}  # mxc -> bytes of a thumbnail downloaded before the backup
        self.keys = {}
        self.signing_key = b""
        self.media_tree = {}
        self.concurrent_uploads = []  # (mxc, bytes) uploaded while create-backup may have run


def populate(scenario, hs, rec, messages=40):
    alice = hs.register("alice", "alice-password", admin=True)
    bob = hs.register("bob", "bob-password")
    rec.users = {"alice": alice, "bob": bob}
    rec.room_id = alice.create_room([bob.user_id])
    bob.join(rec.room_id)
    for i in range(messages):
        sender = alice if i % 2 == 0 else bob
        body = f"{scenario} message {i} from {sender.user_id} ✓ ünïcode"
        rec.messages_before[sender.send(rec.room_id, body)] = body
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
        require(
            scenario,
            f"thumbnail {width}x{height} {method} of the 800x600 PNG is served",
            r.status_code == 200 and r.headers.get("Content-Type", "").startswith("image/"),
            f"HTTP {r.status_code} {r.headers.get('Content-Type')} {r.text[:200] if r.status_code != 200 else ''}",
        )
        rec.thumbnails[(big_mxc, width, height, method)] = r.content
    rec.keys = hs.server_keys()
    require(scenario, "server publishes an ed25519 verify key", any(k.startswith("ed25519:") for k in rec.keys), str(rec.keys))
    thumbs = tree_digest(os.path.join(hs.media_store, "local_thumbnails"))
    require(scenario, "thumbnails exist on disk before the backup", len(thumbs) > 0, f"{hs.media_store}/local_thumbnails is empty")
    log(f"populated: {len(rec.messages_before)} messages, {len(rec.media)} media, {len(thumbs)} thumbnail files")


class Writer(threading.Thread):
    """Keeps sending messages (and now and then a small upload) while a backup runs."""

    def __init__(self, scenario, client, room_id):
        super().__init__(daemon=True)
        self.scenario = scenario
        self.client = client
        self.room_id = room_id
        self.stop_event = threading.Event()
        # Uploads after the first wait until the test has recorded the media on disk, so that
        # it never hashes a file Synapse is still writing.
        self.uploads_allowed = threading.Event()
        self.sent = []  # (index, event_id, body, completed_at monotonic)
        self.uploads = []  # (mxc, data, completed_at)
        self.errors = []

    def run(self):
        i = 0
        while not self.stop_event.is_set() and i < 5000:
            try:
                body = f"{self.scenario} concurrent {i}"
                sending = time.monotonic()
                event_id = self.client.send(self.room_id, body)
                self.sent.append((i, event_id, body, sending, time.monotonic()))
                if i == 0 or (i % 5 == 0 and self.uploads_allowed.is_set()):
                    data = png_bytes(40, 30, seed=i)
                    mxc = self.client.upload(data, "image/png", f"c{i}.png")
                    self.uploads.append((mxc, data, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - recorded and reported
                self.errors.append(repr(e))
                if len(self.errors) > 20:
                    return
                time.sleep(0.1)
            i += 1
            time.sleep(0.01)

    def wait_for(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.sent) < count and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)

    def finish(self):
        self.stop_event.set()
        self.join(timeout=60)


def backup_while_writing(scenario, tool, sb_config, hs, rec, extra_args=()):
    """create-backup --json while a thread keeps writing; returns (json, elapsed)."""
    alice = rec.users["alice"]
    writer = Writer(scenario, alice.with_base(hs.base), rec.room_id)
    writer.start()
    writer.wait_for(3)
    # Every file on disk now must be in the backup; files written later may or may not be.
    rec.media_tree = media_tree(hs)
    writer.uploads_allowed.set()
    launched = time.monotonic()
    try:
        result, elapsed = tool.run_json(scenario, "create-backup succeeds on a live Synapse", sb_config, "create-backup", *extra_args)
    finally:
        ended = time.monotonic()
        writer.wait_for(len(writer.sent) + 3, timeout=20)
        writer.finish()
    # Messages in flight while create-backup ran: sent before it ended, answered after it began.
    during = [i for i, _e, _b, start, done in writer.sent if start < ended and done > launched]
    RESULTS.check(
        scenario,
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


def remember_files(hs, rec):
    with open(hs.signing_key_path, "rb") as f:
        rec.signing_key = f.read()


def check_restored_server(scenario, hs, rec):
    """Starts Synapse on the restored config and checks everything through the API."""
    hs.start()
    try:
        alice = rec.users["alice"].with_base(hs.base)
        bob = rec.users["bob"].with_base(hs.base)
        for name, client in (("alice", alice), ("bob", bob)):
            r = client.whoami()
            RESULTS.check(
                scenario,
                f"old access token of {name} still works (whoami)",
                r.status_code == 200 and r.json().get("user_id") == client.user_id,
                f"HTTP {r.status_code} {r.text[:300]}",
            )
        history = alice.messages(rec.room_id)
        missing = {e: b for e, b in rec.messages_before.items() if history.get(e) != b}
        RESULTS.check(
            scenario,
            f"all {len(rec.messages_before)} messages sent before the backup started are in the room history",
            not missing,
            f"{len(missing)} missing, e.g. {list(missing.items())[:3]}; history has {len(history)} messages",
        )
        # The snapshot is one point in time: of the messages sent while the backup ran, the
        # restored history holds a prefix of the sequence, never one with gaps.
        if rec.concurrent:
            flags = [e in history for _i, e, _b in rec.concurrent]
            restored_count = sum(flags)
            RESULTS.check(
                scenario,
                f"messages sent during the backup form a consistent prefix ({restored_count} of {len(rec.concurrent)} restored)",
                flags == [True] * restored_count + [False] * (len(flags) - restored_count),
                "restored: " + "".join("x" if f else "." for f in flags),
            )
        bad_media = []
        for mxc, data in rec.media.items():
            r = alice.download(mxc)
            if r.status_code != 200 or r.content != data:
                bad_media.append(f"{mxc}: HTTP {r.status_code}, {len(r.content)} bytes (expected {len(data)})")
        RESULTS.check(scenario, f"all {len(rec.media)} media download byte-identical", not bad_media, "; ".join(bad_media))
        bad_thumbs = []
        for (mxc, width, height, method), data in rec.thumbnails.items():
            r = alice.thumbnail(mxc, width, height, method)
            if r.status_code != 200 or r.content != data:
                bad_thumbs.append(f"{mxc} {width}x{height} {method}: HTTP {r.status_code}, {len(r.content)} bytes (expected {len(data)})")
        RESULTS.check(scenario, "thumbnails served as before", not bad_thumbs, "; ".join(bad_thumbs))
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
            RESULTS.check(
                scenario,
                f"media uploaded during the backup are whole or absent ({restored_concurrent} of {len(rec.concurrent_uploads)} restored)",
                not bad_concurrent,
                "; ".join(bad_concurrent),
            )
        keys = hs.server_keys()
        RESULTS.check(scenario, "server verify key is the one from before the backup", keys == rec.keys, f"before {rec.keys}, after {keys}")
        try:
            body = f"{scenario} message after restore"
            event_id = bob.send(rec.room_id, body)
            ok = alice.messages(rec.room_id).get(event_id) == body
            RESULTS.check(scenario, "a new message can be sent and read after the restore", ok, "not in history")
        except requests.RequestException as e:
            RESULTS.check(scenario, "a new message can be sent and read after the restore", False, repr(e))
    finally:
        clean = hs.stop()
    RESULTS.check(scenario, "restored Synapse stops cleanly", clean, hs.log_tail())


def check_restored_files(scenario, hs, rec, backup_id, with_config=True):
    with open(hs.signing_key_path, "rb") as f:
        key = f.read()
    RESULTS.check(scenario, "the fresh config's signing key file was replaced by the backed-up one", key == rec.signing_key, f"{hs.signing_key_path} differs")
    tree = tree_digest(os.path.join(hs.media_store, "local_content"))
    tree.update({"thumb/" + k: v for k, v in tree_digest(os.path.join(hs.media_store, "local_thumbnails")).items()})
    missing = {k for k, v in rec.media_tree.items() if tree.get(k) != v}
    RESULTS.check(
        scenario,
        f"all {len(rec.media_tree)} media and thumbnail files on disk when the backup started are restored identical",
        not missing,
        f"missing or different: {sorted(missing)[:5]}",
    )
    if with_config:
        restored_config = os.path.join(os.path.dirname(hs.config_path), f"restored-config-{backup_id}")
        RESULTS.check(
            scenario,
            f"backed-up config is in restored-config-{backup_id}/",
            os.path.isfile(os.path.join(restored_config, "homeserver.yaml")),
            f"{restored_config} holds {os.listdir(restored_config) if os.path.isdir(restored_config) else 'nothing'}",
        )


def media_tree(hs):
    tree = tree_digest(os.path.join(hs.media_store, "local_content"))
    tree.update({"thumb/" + k: v for k, v in tree_digest(os.path.join(hs.media_store, "local_thumbnails")).items()})
    return tree


def sqlite_integrity(scenario, path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    RESULTS.check(scenario, "restored database passes PRAGMA integrity_check", result == [("ok",)], str(result[:5]))


MEDIA_QUERY = "SELECT media_id FROM local_media_repository"
THUMBNAIL_QUERY = (
    "SELECT media_id, thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method"
    " FROM local_media_repository_thumbnails"
)


def media_rows_have_files(scenario, hs, media_rows, thumbnail_rows):
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
    RESULTS.check(
        scenario,
        f"every one of the {len(media_rows)} media and {len(thumbnail_rows)} thumbnail rows of the restored database has its file",
        not missing,
        f"no file {missing[:5]}",
    )


def refuses_while_running(scenario, tool, sb_config, hs, restore_id=None):
    """Backs up the restored server while it runs, then checks that restoring onto the running
    server is refused before anything changes. For PostgreSQL, restore_id names a
    --skip-database backup (a full one is refused first because the database is not empty)."""
    hs.start()
    try:
        again, _ = tool.run_json(scenario, "the restored server can be backed up again while it runs", sb_config, "create-backup")
        restore_id = restore_id or again["backup-id"]
        before = tree_digest(hs.dir)
        code, _out, err, _ = tool.run(sb_config, "restore-backup", restore_id)
        RESULTS.check(
            scenario,
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
        RESULTS.check(
            scenario,
            "restore-backup refuses (exit 6) while pid_file names a live Synapse",
            code == 6 and str(hs.proc.pid) in err,
            f"exit {code}: {err.strip()[:500]}",
        )
        after = tree_digest(hs.dir)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and ".log" not in k and "homeserver.db" not in k)
        RESULTS.check(scenario, "the refused restore changed no file", not changed, f"changed: {changed[:5]}")
    finally:
        hs.stop()


# --------------------------------------------------------------------------------------------
# Scenarios


def second_backup(scenario, tool, sb_config, hs, rec, first_id):
    """New messages and an upload, then a second backup: it must be incremental (taking the
    first backup's media without reading them again). Returns its id: the one restored."""
    alice = rec.users["alice"]
    extra = png_bytes(320, 200, seed=99)
    mxc = alice.upload(extra, "image/png", "after-the-first-backup.png")
    rec.media[mxc] = extra
    for i in range(5):
        body = f"{scenario} message {i} after the first backup"
        rec.messages_before[alice.send(rec.room_id, body)] = body
    rec.media_tree = media_tree(hs)
    second, _ = tool.run_json(scenario, "a second create-backup succeeds", sb_config, "create-backup")
    summary = {k: second.get(k) for k in ("kind", "parent", "reused-files", "reused-bytes", "object-bytes")}
    RESULTS.check(
        scenario,
        "the second backup is incremental, made against the first",
        second.get("kind") == "incremental" and second.get("parent") == first_id,
        json.dumps(summary),
    )
    RESULTS.check(
        scenario,
        "the second backup took the first one's media without storing them again",
        (second.get("reused-files") or 0) >= len(rec.media) - 1,
        json.dumps(summary),
    )
    return second["backup-id"]


def fresh_work_dir(args, scenario):
    work = os.path.join(args.work, scenario)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    return work


def live_scenario(scenario, args, tool, python, port, database=None):
    work = fresh_work_dir(args, scenario)
    rec = Recorded()
    old_db = f"sb_e2e_{os.getpid()}_old" if database else None
    new_db = f"sb_e2e_{os.getpid()}_new" if database else None
    timing = {}
    try:
        if database:
            create_database(old_db)
        hs = Synapse(python, os.path.join(work, "old"), port, args.pids_file, database=old_db)
        hs.generate()
        sb_old = tool.config_for(hs.config_path, os.path.join(work, "sb-old.toml"))
        hs.start()
        try:
            populate(scenario, hs, rec)
            result, _ = backup_while_writing(scenario, tool, sb_old, hs, rec)
            backup_id = result["backup-id"]
            timing["create"] = result["seconds"]
            RESULTS.check(
                scenario,
                "backup says which database it holds",
                (result.get("database") or {}).get("kind") == ("postgresql" if database else "sqlite") and (result.get("database") or {}).get("included") is True,
                json.dumps(result.get("database")),
            )
            backup_id = second_backup(scenario, tool, sb_old, hs, rec, backup_id)
            if database:
                skipped, _ = tool.run_json(scenario, "create-backup --skip-database succeeds", sb_old, "create-backup", "--skip-database")
                timing["create-skip-database"] = skipped["seconds"]
                timing["skip-id"] = skipped["backup-id"]
                started = time.monotonic()
                run(
                    ["sh", "-c", f"pg_dump -h {PG_HOST} -p {PG_PORT} -U {PG_USER} --format=custom --no-owner {old_db} > /dev/null"],
                    timeout=COMMAND_TIMEOUT,
                )
                timing["pg_dump"] = time.monotonic() - started
        finally:
            clean = hs.stop()
        RESULTS.check(scenario, "original Synapse stops cleanly", clean, hs.log_tail())
        remember_files(hs, rec)

        _, _, _, _ = tool.run(sb_old, "list-backups")
        code, _out, err, _ = tool.run(sb_old, "verify-backup", backup_id)
        RESULTS.check(scenario, "verify-backup passes", code == 0, f"exit {code}: {err.strip()[:500]}")

        # Destroy the server.
        shutil.rmtree(hs.dir)
        if database:
            drop_database(old_db)
            create_database(new_db)

        new = Synapse(python, os.path.join(work, "new"), port, args.pids_file, database=new_db)
        new.generate()
        with open(new.signing_key_path, "rb") as f:
            fresh_key = f.read()
        RESULTS.check(scenario, "the fresh config came with a different signing key", fresh_key != rec.signing_key, "same key generated twice?")
        sb_new = tool.config_for(new.config_path, os.path.join(work, "sb-new.toml"))
        restored, _ = tool.run_json(scenario, "restore-backup onto a fresh config in another directory", sb_new, "restore-backup", backup_id)
        timing["restore"] = restored["seconds"]
        check_restored_files(scenario, new, rec, backup_id)
        if database:
            drill = os.path.join(work, "drill-files-only")
            files_only, _ = tool.run_json(scenario, "restore-backup of the --skip-database backup into a drill dir", sb_new, "restore-backup", timing["skip-id"], "--target-dir", drill)
            timing["restore-files-only"] = files_only["seconds"]
            shutil.rmtree(drill, ignore_errors=True)
            tables = int(psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=new_db))
            RESULTS.check(scenario, "restored PostgreSQL database has Synapse's tables", tables > 50, f"{tables} tables")
            media_rows = [tuple(line.split("|")) for line in psql(MEDIA_QUERY, dbname=new_db).splitlines() if line]
            thumbnail_rows = [tuple(line.split("|")) for line in psql(THUMBNAIL_QUERY, dbname=new_db).splitlines() if line]
        else:
            conn = sqlite3.connect(f"file:{new.sqlite_path}?mode=ro", uri=True)
            media_rows = conn.execute(MEDIA_QUERY).fetchall()
            thumbnail_rows = conn.execute(THUMBNAIL_QUERY).fetchall()
            conn.close()
        media_rows_have_files(scenario, new, media_rows, thumbnail_rows)

        check_restored_server(scenario, new, rec)
        if not database:
            sqlite_integrity(scenario, new.sqlite_path)
        refuses_while_running(scenario, tool, sb_new, new, timing.get("skip-id"))
    finally:
        if database:
            for name in (old_db, new_db):
                try:
                    drop_database(name)
                except Exception as e:  # noqa: BLE001
                    log(f"could not drop {name}: {e}")
    line = f"E2E-TIMING {scenario} create={timing.get('create', 0):.2f}s restore={timing.get('restore', 0):.2f}s"
    if database:
        create_db = timing.get("create", 0) - timing.get("create-skip-database", 0)
        restore_db = timing.get("restore", 0) - timing.get("restore-files-only", 0)
        line += (
            f" create-skip-database={timing.get('create-skip-database', 0):.2f}s database-part-of-create~{create_db:.2f}s"
            f" pg_dump-alone={timing.get('pg_dump', 0):.2f}s restore-files-only={timing.get('restore-files-only', 0):.2f}s"
            f" database-part-of-restore~{restore_db:.2f}s"
        )
    RESULTS.timings.append(line)


def charm_scenario(args, tool, python, port):
    scenario = "charm"
    work = fresh_work_dir(args, scenario)
    rec = Recorded()
    hs = Synapse(python, os.path.join(work, "old"), port, args.pids_file)
    hs.generate()
    hs.start()
    try:
        populate(scenario, hs, rec)
    finally:
        clean = hs.stop()
    RESULTS.check(scenario, "original Synapse stops cleanly", clean, hs.log_tail())
    remember_files(hs, rec)
    rec.media_tree = media_tree(hs)

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
    require(scenario, "charm pipeline (tar | gpg --symmetric) wrote a backup", tar_rc == 0 and gpg.returncode == 0, f"tar {tar_rc}, gpg {gpg.returncode}: {gpg_err.decode(errors='replace')}")
    os.rename(target + ".tmp", target)
    shutil.rmtree(hs.dir)
    shutil.rmtree(root)

    new = Synapse(python, os.path.join(work, "new"), port, args.pids_file)
    new.generate()
    sb_new = tool.config_for(new.config_path, os.path.join(work, "sb-new.toml"))
    code, out, err, _ = tool.run(sb_new, "list-backups")
    RESULTS.check(scenario, "list-backups shows the charm backup", code == 0 and CHARM_ID in out, f"exit {code}: {out} {err}")
    restored, _ = tool.run_json(scenario, "restore-backup of a charm backup with --charm-source-root /data", sb_new, "restore-backup", CHARM_ID, "--charm-source-root", "/data")
    RESULTS.check(scenario, "restore reports the charm format", restored.get("charm-format") is True, json.dumps(restored))
    check_restored_files(scenario, new, rec, CHARM_ID, with_config=False)
    check_restored_server(scenario, new, rec)
    sqlite_integrity(scenario, new.sqlite_path)
    RESULTS.timings.append(f"E2E-TIMING charm restore={restored['seconds']:.2f}s")


def debian_scenario(args, tool, python, port):
    scenario = "debian"
    work = fresh_work_dir(args, scenario)
    rec = Recorded()
    hs = DebianSynapse(python, os.path.join(work, "old"), port, args.pids_file)
    hs.generate()
    only_main = tool.config_for(hs.config_path, os.path.join(work, "sb-only-main.toml"))
    sb_old = tool.config_for(
        [hs.config_path, hs.conf_d], os.path.join(work, "sb-old.toml"),
        f'working-dir = "{hs.dir}"')
    hs.start()
    try:
        populate(scenario, hs, rec)
        code, _out, err, _ = tool.run(only_main, "create-backup")
        RESULTS.check(scenario, "with only homeserver.yaml listed, create-backup refuses: server_name is in conf.d",
                      code == 2 and "server_name" in err and "conf.d" in err, f"exit {code}: {err.strip()[:400]}")
        # media_store_path is relative. Resolved beside the config (this test's /etc is not
        # /etc/matrix-synapse) it is wrong: the running Synapse's working directory says so.
        no_working_dir = tool.config_for([hs.config_path, hs.conf_d], os.path.join(work, "sb-no-working-dir.toml"))
        code, _out, err, _ = tool.run(no_working_dir, "create-backup")
        RESULTS.check(scenario, "without working-dir, the running Synapse's own directory is named: exit 2, no backup",
                      code == 2 and f"runs in {hs.dir}" in err and "working-dir" in err, f"exit {code}: {err.strip()[:400]}")
        result, _ = tool.run_json(scenario, "create-backup with [synapse] config = [homeserver.yaml, conf.d]", sb_old, "create-backup")
        backup_id = result["backup-id"]
        checked, _ = tool.run_json(scenario, "check passes on the running Debian layout", sb_old, "check")
        items = {c["check"]: c for c in checked.get("checks", [])}
        synapse_item = items.get("synapse", {})
        installed = importlib.metadata.version("matrix-synapse")  # the Synapse this test runs
        RESULTS.check(scenario, f"check reports the running Synapse's version ({installed})",
                      synapse_item.get("status") == "ok" and installed in synapse_item.get("detail", ""),
                      json.dumps(synapse_item))
        RESULTS.check(scenario, "check's passphrase item opens the backup just made",
                      backup_id in items.get("passphrase", {}).get("detail", ""), json.dumps(items.get("passphrase")))
    finally:
        clean = hs.stop()
    RESULTS.check(scenario, "original Synapse stops cleanly", clean, hs.log_tail())
    remember_files(hs, rec)
    rec.media_tree = media_tree(hs)
    RESULTS.check(scenario, "the relative media store holds media", len(rec.media_tree) > 0, hs.media_store)
    code, _out, err, _ = tool.run(sb_old, "verify-backup", backup_id)
    RESULTS.check(scenario, "verify-backup passes", code == 0, f"exit {code}: {err.strip()[:500]}")
    # Stopped, there is no process to ask: the wrong guess finds no media store and says so.
    code, _out, err, _ = tool.run(no_working_dir, "create-backup")
    RESULTS.check(scenario, "without working-dir and Synapse stopped: exit 2 naming the missing media store",
                  code == 2 and os.path.join(hs.etc, "media_store") in err and "working-dir" in err, f"exit {code}: {err.strip()[:400]}")
    shutil.rmtree(os.path.join(work, "old"))

    new = DebianSynapse(python, os.path.join(work, "new"), port, args.pids_file)
    new.generate()
    sb_new = tool.config_for(
        [new.config_path, new.conf_d], os.path.join(work, "sb-new.toml"),
        f'working-dir = "{new.dir}"')
    restored, _ = tool.run_json(scenario, "restore-backup onto a fresh Debian layout", sb_new, "restore-backup", backup_id)
    check_restored_files(scenario, new, rec, backup_id)
    restored_conf_d = os.path.join(new.etc, f"restored-config-{backup_id}", "conf.d")
    RESULTS.check(scenario, "the conf.d files are backed up and restored beside homeserver.yaml",
                  sorted(os.listdir(restored_conf_d)) == ["database.yaml", "server_name.yaml"] if os.path.isdir(restored_conf_d) else False,
                  restored_conf_d)
    check_restored_server(scenario, new, rec)
    sqlite_integrity(scenario, new.sqlite_path)
    RESULTS.timings.append(f"E2E-TIMING debian create={result['seconds']:.2f}s restore={restored['seconds']:.2f}s")


# --------------------------------------------------------------------------------------------
# Media storage providers (media_storage_providers in homeserver.yaml)

PROVIDER_PREFIX = "offload/"
S3_ENV = ("S3_TEST_ENDPOINT", "S3_TEST_REGION", "S3_TEST_GARAGE_BIN", "S3_TEST_GARAGE_CONFIG")


def media_files(media_store):
    """{path relative to media_store_path: sha256} of the local media and thumbnail files, in the
    layout storage providers mirror (local_content/ab/cd/rest, local_thumbnails/ab/cd/rest/NAME)."""
    out = {}
    for top in ("local_content", "local_thumbnails"):
        for rel, digest in tree_digest(os.path.join(media_store, top)).items():
            out[f"{top}/{rel}"] = digest
    return out


def media_sizes(media_store, rels):
    return {rel: os.path.getsize(os.path.join(media_store, rel)) for rel in rels}


def content_path(mxc):
    media_id = mxc.rsplit("/", 1)[1]
    return f"local_content/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"


def labelled_field(text, label):
    """The last word of the first line starting with LABEL (any case), as in `garage key info`."""
    for line in text.splitlines():
        if line.strip().lower().startswith(label):
            return line.split()[-1]
    return ""


class S3Provider:
    """synapse-s3-storage-provider against the test Garage, with a bucket and a key of its own
    (not the backup store's), objects under PROVIDER_PREFIX."""

    name = "s3provider"

    def __init__(self, work):
        import boto3
        from botocore.config import Config

        self.endpoint = os.environ["S3_TEST_ENDPOINT"]
        self.region = os.environ["S3_TEST_REGION"]
        self.garage = [os.environ["S3_TEST_GARAGE_BIN"], "-c", os.environ["S3_TEST_GARAGE_CONFIG"]]
        self.work = work
        # Garage allows several keys with one name: a name of this run only.
        self.bucket = self.key_name = f"sb-e2e-media-{os.getpid()}-{int(time.time())}"
        self.created_bucket = self.created_key = False
        run([*self.garage, "bucket", "create", self.bucket])
        self.created_bucket = True
        run([*self.garage, "key", "create", self.key_name])
        self.created_key = True
        run([*self.garage, "bucket", "allow", "--read", "--write", "--owner", self.bucket, "--key", self.key_name])
        info = run([*self.garage, "key", "info", self.key_name, "--show-secret"]).stdout.decode()
        self.access_key = labelled_field(info, "key id:")
        self.secret_key = labelled_field(info, "secret key:")
        if not self.access_key.startswith("GK") or len(self.secret_key) != 64:
            raise RuntimeError(f"could not read the key from 'garage key info' ({len(info)} bytes of output)")
        backup_bucket = os.environ.get("S3_TEST_BUCKET")
        if backup_bucket == self.bucket or os.environ.get("S3_TEST_ACCESS_KEY") == self.access_key:
            raise RuntimeError("the provider's bucket or key is the backup store's")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        log(f"provider bucket {self.bucket}, key {self.access_key} (prefix {PROVIDER_PREFIX!r})")

    def where(self):
        return f"bucket {self.bucket} under {PROVIDER_PREFIX}"

    def config(self):
        return {
            "module": "s3_storage_provider.S3StorageProviderBackend",
            "store_local": True,
            "store_remote": True,
            "store_synchronous": True,
            "config": {
                "bucket": self.bucket,
                "endpoint_url": self.endpoint,
                "region_name": self.region,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "prefix": PROVIDER_PREFIX,
            },
        }

    def keys(self):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def objects(self):
        """{path relative to media_store_path: sha256} of the objects under the prefix; an object
        outside it is returned under its whole key with a leading '!'."""
        out = {}
        for key in self.keys():
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            name = key[len(PROVIDER_PREFIX):] if key.startswith(PROVIDER_PREFIX) else "!" + key
            out[name] = hashlib.sha256(body).hexdigest()
        return out

    def delete(self, rel):
        self.s3.delete_object(Bucket=self.bucket, Key=PROVIDER_PREFIX + rel)

    def empty(self):
        keys = self.keys()
        for key in keys:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)

    def offload(self, scenario, hs):
        """The provider's own s3_media_upload: `update` (media not used for 0 s: all of them),
        then `upload --delete`, which uploads what the bucket lacks and deletes local copies.
        Returns the script's output."""
        script = shutil.which("s3_media_upload", path=os.path.dirname(sys.executable))
        require(scenario, "s3_media_upload is installed beside the venv's Python", script is not None,
                "pip install synapse-s3-storage-provider")
        cwd = os.path.join(self.work, "s3_media_upload")
        os.makedirs(cwd, exist_ok=True)
        # database.yaml describes Synapse's database (for SQLite: sqlite3.connect's arguments);
        # cache.db, the script's own list of media, is made beside it.
        with open(os.path.join(cwd, "database.yaml"), "w") as f:
            yaml.safe_dump({"sqlite": {"database": hs.sqlite_path}}, f)
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
        )
        time.sleep(1.1)  # "0s" means last used before now, to the millisecond
        update = run([sys.executable, script, "--no-progress", "update", hs.media_store, "0s"], cwd=cwd, env=env)
        upload = run(
            [
                sys.executable, script, "--no-progress", "upload", hs.media_store, self.bucket,
                "--prefix", PROVIDER_PREFIX, "--storage-class", "STANDARD", "--delete",
                "--endpoint-url", self.endpoint,
            ],
            cwd=cwd,
            env=env,
        )
        output = (update.stdout + upload.stdout).decode(errors="replace")
        for line in output.splitlines():
            print(f"    s3_media_upload| {line}")
        return output

    def close(self):
        try:
            if self.created_bucket:
                self.empty()
                run([*self.garage, "bucket", "delete", "--yes", self.bucket], check=False)
            if self.created_key:
                run([*self.garage, "key", "delete", "--yes", self.key_name], check=False)
        except Exception as e:  # noqa: BLE001 - the Garage is a throwaway one
            log(f"could not remove the provider bucket or key: {e}")


class FileProvider:
    """Synapse's own file-system provider (module `file_system`): a copy of each file under
    `directory`, in the media store's layout."""

    name = "fileprovider"

    def __init__(self, work):
        self.directory = os.path.join(work, "provider-dir")

    def where(self):
        return self.directory

    def config(self):
        return {
            "module": "file_system",
            "store_local": True,
            "store_synchronous": True,
            "config": {"directory": self.directory},
        }

    def objects(self):
        return tree_digest(self.directory)

    def delete(self, rel):
        os.unlink(os.path.join(self.directory, rel))

    def empty(self):
        count = len(tree_digest(self.directory))
        shutil.rmtree(self.directory, ignore_errors=True)
        return count

    def offload(self, scenario, hs):
        """No script offloads for this provider: do what an admin would, delete each local file
        the provider directory holds an identical copy of."""
        held = self.objects()
        removed = 0
        for rel, digest in media_files(hs.media_store).items():
            if held.get(rel) == digest:
                os.unlink(os.path.join(hs.media_store, rel))
                removed += 1
        return f"Deleted {removed} files\n"

    def close(self):
        pass


def generate_with_provider(hs, provider):
    hs.generate()
    config = hs.load_config()
    config["media_storage_providers"] = [provider.config()]
    with open(hs.config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def provider_scenario(args, tool, python, port, provider_class):
    """Media offloaded to a storage provider (local copies deleted) are backed up from the
    provider; the provider is emptied and the data dir destroyed; a restore brings them back
    locally, and one with --media-to-provider puts them back in the provider instead."""
    scenario = provider_class.name
    work = fresh_work_dir(args, scenario)
    provider = provider_class(work)
    timing = {}
    try:
        _provider_scenario(scenario, args, tool, python, port, provider, work, timing)
    finally:
        provider.close()
    RESULTS.timings.append(
        f"E2E-TIMING {scenario} create={timing.get('create', 0):.2f}s restore={timing.get('restore', 0):.2f}s"
        f" restore-to-provider={timing.get('restore-to-provider', 0):.2f}s"
    )


def _provider_scenario(scenario, args, tool, python, port, provider, work, timing):
    rec = Recorded()
    hs = Synapse(python, os.path.join(work, "old"), port, args.pids_file)
    generate_with_provider(hs, provider)
    sb_old = tool.config_for(hs.config_path, os.path.join(work, "sb-old.toml"))
    hs.start()
    try:
        populate(scenario, hs, rec)
        first = media_files(hs.media_store)
        # store_synchronous: each upload (and thumbnail) is in the provider before Synapse
        # answers; allow a moment anyway.
        deadline = time.monotonic() + 15
        while True:
            held = provider.objects()
            unheld = sorted(rel for rel, digest in first.items() if held.get(rel) != digest)
            if not unheld or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        thumbs = [rel for rel in first if rel.startswith("local_thumbnails/")]
        require(
            scenario,
            f"the provider ({provider.where()}) holds each of the {len(first)} local files ({len(thumbs)} thumbnails), identical, at the same relative path",
            not unheld and thumbs,
            f"missing or different: {unheld[:5]}; provider holds {sorted(held)[:10]}",
        )
        outside = sorted(k for k in held if k.startswith("!"))
        RESULTS.check(scenario, "every provider object is under the prefix", not outside, f"{outside[:5]}")

        sizes = media_sizes(hs.media_store, first)
        notes = next(m for m, d in rec.media.items() if d.startswith(b"plain text attachment"))
        if isinstance(provider, S3Provider):
            # Synapse uploaded everything already (store_synchronous): take one object away
            # so that s3_media_upload uploads it itself before deleting the local copy.
            provider.delete(content_path(notes))
        output = provider.offload(scenario, hs)
        if isinstance(provider, S3Provider):
            held = provider.objects()
            unheld = sorted(rel for rel, digest in first.items() if held.get(rel) != digest)
            RESULTS.check(
                scenario,
                f"s3_media_upload uploaded the one object the bucket lacked ({PROVIDER_PREFIX}{content_path(notes)}); the bucket holds all {len(first)} files",
                "Uploaded 1 files" in output.splitlines() and not unheld,
                f"missing or different: {unheld[:5]}",
            )
        left = media_files(hs.media_store)
        offloaded = sorted(set(first) - set(left))
        offloaded_bytes = sum(sizes[rel] for rel in offloaded)
        offloaded_thumbs = [rel for rel in offloaded if rel.startswith("local_thumbnails/")]
        reported = [line for line in output.splitlines() if line.startswith("Deleted") and line.endswith(" files")]
        require(
            scenario,
            f"the offload deleted local copies: {len(offloaded)} of {len(first)} files ({len(offloaded_thumbs)} thumbnails, {offloaded_bytes} bytes) are gone from media_store_path",
            offloaded and reported == [f"Deleted {len(offloaded)} files"],
            f"gone: {offloaded[:5]}; still there: {sorted(left)[:5]}; it said {reported}",
        )

        # New media after the offload: local and in the provider, read locally.
        alice = rec.users["alice"]
        later = [
            (png_bytes(320, 200, seed=42), "image/png", "after-offload.png"),
            (b"a note uploaded after the offload\n" * 50, "text/plain", "after-offload.txt"),
        ]
        for data, ctype, name in later:
            mxc = alice.upload(data, ctype, name)
            rec.media[mxc] = data
            body = f"{scenario} attachment {name} {mxc}"
            rec.messages_before[alice.send(rec.room_id, body)] = body
        local = media_files(hs.media_store)
        RESULTS.check(scenario, "media uploaded after the offload are local", len(local) >= 2, f"{sorted(local)}")
        expected = dict(first)
        expected.update(local)

        result, _ = tool.run_json(scenario, "create-backup succeeds with offloaded media", sb_old, "create-backup")
        backup_id = result["backup-id"]
        timing["create"] = result["seconds"]
        summary = {k: result.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}
        RESULTS.check(
            scenario,
            f"the backup fetched the {len(offloaded)} offloaded files ({offloaded_bytes} bytes) from the provider, none missing",
            result.get("provider-files") == len(offloaded)
            and result.get("provider-bytes") == offloaded_bytes
            and result.get("missing-media") == 0,
            json.dumps(summary),
        )
    finally:
        clean = hs.stop()
    RESULTS.check(scenario, "original Synapse stops cleanly", clean, hs.log_tail())
    remember_files(hs, rec)
    code, _out, err, _ = tool.run(sb_old, "verify-backup", backup_id)
    RESULTS.check(scenario, "verify-backup passes", code == 0, f"exit {code}: {err.strip()[:500]}")

    # Destroy the server and the provider's copies.
    shutil.rmtree(hs.dir)
    provider.empty()
    require(scenario, "the provider is empty", not provider.objects(), provider.where())

    # 1. A default restore puts every file back under media_store_path.
    new = Synapse(python, os.path.join(work, "new"), port, args.pids_file)
    generate_with_provider(new, provider)
    sb_new = tool.config_for(new.config_path, os.path.join(work, "sb-new.toml"))
    restored, _ = tool.run_json(scenario, "restore-backup onto a fresh config", sb_new, "restore-backup", backup_id)
    timing["restore"] = restored["seconds"]
    with open(new.signing_key_path, "rb") as f:
        RESULTS.check(scenario, "the signing key is restored", f.read() == rec.signing_key, new.signing_key_path)
    restored_files = media_files(new.media_store)
    wrong = sorted(rel for rel, digest in expected.items() if restored_files.get(rel) != digest)
    RESULTS.check(
        scenario,
        f"all {len(expected)} media and thumbnail files, the {len(offloaded)} offloaded ones included, are restored identical under media_store_path",
        not wrong,
        f"missing or different: {wrong[:5]}",
    )
    RESULTS.check(scenario, "a default restore writes nothing to the provider", not provider.objects(), f"{sorted(provider.objects())[:5]}")
    check_restored_server(scenario, new, rec)
    sqlite_integrity(scenario, new.sqlite_path)

    # 2. --media-to-provider: the offloaded files go back to the provider, not to the disk.
    shutil.rmtree(new.dir)
    provider.empty()
    require(scenario, "the provider is empty again", not provider.objects(), provider.where())
    again = Synapse(python, os.path.join(work, "new-to-provider"), port, args.pids_file)
    generate_with_provider(again, provider)
    sb_again = tool.config_for(again.config_path, os.path.join(work, "sb-new-to-provider.toml"))
    restored, _ = tool.run_json(
        scenario, "restore-backup --media-to-provider onto a fresh config", sb_again,
        "restore-backup", backup_id, "--media-to-provider")
    timing["restore-to-provider"] = restored["seconds"]
    restored_files = media_files(again.media_store)
    held = provider.objects()
    local_offloaded = [rel for rel in offloaded if rel in restored_files]
    RESULTS.check(
        scenario,
        f"the {len(offloaded)} offloaded files are not under media_store_path",
        not local_offloaded,
        f"restored locally: {local_offloaded[:5]}",
    )
    wrong = [rel for rel in offloaded if held.get(rel) != expected[rel]]
    RESULTS.check(
        scenario,
        f"the {len(offloaded)} offloaded files are back in the provider ({provider.where()}), identical",
        not wrong,
        f"missing or different: {wrong[:5]}; provider holds {sorted(held)[:5]}",
    )
    wrong = [rel for rel in expected if rel not in offloaded and restored_files.get(rel) != expected[rel]]
    RESULTS.check(
        scenario,
        f"the {len(expected) - len(offloaded)} files that were local are restored locally, identical",
        not wrong,
        f"missing or different: {wrong[:5]}",
    )
    check_restored_server(scenario, again, rec)

    # Serving them did not bring them back to the disk: a new backup takes them from the
    # provider again.
    result, _ = tool.run_json(scenario, "create-backup of the --media-to-provider restore succeeds", sb_again, "create-backup")
    RESULTS.check(
        scenario,
        f"it takes the {len(offloaded)} offloaded files from the provider again",
        result.get("provider-files") == len(offloaded) and result.get("missing-media") == 0,
        json.dumps({k: result.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}),
    )

    # 3. A media file in neither place: the backup refuses, naming it, unless allowed.
    victim = content_path(notes)
    media_id = notes.rsplit("/", 1)[1]
    require(scenario, f"{victim} was offloaded", victim in offloaded, f"offloaded: {offloaded}")
    cached = os.path.join(again.media_store, victim)
    if os.path.exists(cached):
        log(f"Synapse cached {victim} locally when it was downloaded; removing that copy")
        os.unlink(cached)
    provider.delete(victim)
    code, _out, err, _ = tool.run(sb_again, "create-backup")
    RESULTS.check(
        scenario,
        "create-backup refuses (exit 6) a media file in neither media_store_path nor the provider, naming it",
        code == 6 and media_id in err,
        f"exit {code}: {err.strip()[:800]}",
    )
    allowed, _ = tool.run_json(
        scenario, "create-backup --allow-missing-media succeeds", sb_again, "create-backup", "--allow-missing-media")
    RESULTS.check(scenario, "it reports the one missing media file", allowed.get("missing-media") == 1,
                  json.dumps({k: allowed.get(k) for k in ("provider-files", "provider-bytes", "missing-media")}))


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the synapse-backup binary")
    parser.add_argument("--work", required=True, help="work directory")
    parser.add_argument("--pids-file", required=True, help="every started Synapse pid is appended here")
    parser.add_argument("--summary-file", help="write the closing `N passed, M failed` line here instead of stdout")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    args = parser.parse_args()

    # SIGTERM (the shell's timeout or trap) unwinds through the finally blocks that stop Synapse.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    python = sys.executable
    tool = Tool(args.bin, args.work)
    port = free_port()
    wanted = args.only or SCENARIOS
    total_started = time.monotonic()

    for scenario in wanted:
        log(f"=== scenario {scenario}")
        started = time.monotonic()
        try:
            if scenario == "sqlite":
                live_scenario("sqlite", args, tool, python, port)
            elif scenario == "postgresql":
                available, why = postgres_available()
                if not available:
                    if os.environ.get("SYNAPSE_BACKUP_REQUIRE_POSTGRES") == "1":
                        RESULTS.check("postgresql", "PostgreSQL answers on 127.0.0.1:5432", False, why)
                    else:
                        print(f"SKIP postgresql: no PostgreSQL server answers on {PG_HOST}:{PG_PORT} as {PG_USER} ({why}); set SYNAPSE_BACKUP_REQUIRE_POSTGRES=1 to fail instead")
                    continue
                for program in ("pg_dump", "pg_restore"):
                    if not shutil.which(program):
                        RESULTS.check("postgresql", f"{program} is installed", False, "apt-get install postgresql-client")
                drop_stale_databases()
                live_scenario("postgresql", args, tool, python, port, database=True)
            elif scenario == "debian":
                debian_scenario(args, tool, python, port)
            elif scenario == "s3provider":
                missing = [name for name in S3_ENV if not os.environ.get(name)]
                if missing:
                    if os.environ.get("SYNAPSE_BACKUP_REQUIRE_S3") == "1":
                        RESULTS.check("s3provider", "a test Garage is exported (S3_TEST_*)", False, f"unset: {' '.join(missing)}")
                    else:
                        print(f"SKIP s3provider: no test Garage ({' '.join(missing)} unset; scripts/s3-test-server.sh start DIR writes them); set SYNAPSE_BACKUP_REQUIRE_S3=1 to fail instead")
                    continue
                provider_scenario(args, tool, python, port, S3Provider)
            elif scenario == "fileprovider":
                provider_scenario(args, tool, python, port, FileProvider)
            else:
                charm_scenario(args, tool, python, port)
        except ScenarioAbort as e:
            log(f"scenario {scenario} stopped after a failed step: {e}")
        except Exception as e:  # noqa: BLE001 - counted as a failure
            RESULTS.error(scenario, "scenario ran to the end", e)
        log(f"=== scenario {scenario} took {time.monotonic() - started:.1f}s")

    print()
    for line in RESULTS.timings:
        print(line)
    print(f"E2E-TIMING total={time.monotonic() - total_started:.1f}s")
    if RESULTS.failures:
        print("\nFailures:")
        for failure in RESULTS.failures:
            print(f"  {failure}")
    summary = f"{RESULTS.passed} passed, {RESULTS.failed} failed"
    if args.summary_file:
        with open(args.summary_file, "w") as f:
            f.write(summary + "\n")
    else:
        print()
        print(summary)
    return 1 if RESULTS.failed else 0


if __name__ == "__main__":
    sys.exit(main())
