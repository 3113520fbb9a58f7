#!/usr/bin/env python3
"""s3-test-server — run a real single-node Garage S3 server on loopback for
synapse-backup's integration tests and benchmarks.

Usage:
  scripts/s3-test-server.sh start   DIR   # create DIR, start, provision, print DIR/env
  scripts/s3-test-server.sh restart DIR   # stop + start again with the same data/config/ports
  scripts/s3-test-server.sh stop    DIR   # stop the server and wait for it to exit
  scripts/s3-test-server.sh kill    DIR   # SIGKILL the server: requests in flight are cut
  scripts/s3-test-server.sh status  DIR   # exit 0 if the server in DIR is running
  scripts/s3-test-server.sh install       # only make sure the garage binary exists
(scripts/s3-test-server.sh only runs this program, scripts/s3_test_server.py.)

`start` and `restart` print the path of DIR/env as the LAST line on stdout;
everything else (progress, build output) goes to stderr so callers can do
  env_file=$(scripts/s3-test-server.sh start "$dir" | tail -n1); . "$env_file"

DIR/env holds `export` lines:
  S3_TEST_ENDPOINT S3_TEST_REGION S3_TEST_BUCKET S3_TEST_ACCESS_KEY
  S3_TEST_SECRET_KEY S3_TEST_SERVER_PID S3_TEST_SERVER_DIR
plus S3_TEST_OTHER_BUCKET (a bucket the key may NOT access),
S3_TEST_ADMIN_ENDPOINT / S3_TEST_ADMIN_TOKEN (Garage admin API) and
S3_TEST_GARAGE_BIN / S3_TEST_GARAGE_CONFIG (to drive the garage CLI).

Environment knobs:
  SYNAPSE_BACKUP_TOOLS   cache root for the garage build
                         (default $HOME/.cache/synapse-backup-tools)
  S3_TEST_GARAGE_BIN     use this garage binary instead of the cached build
  S3_TEST_TIMEOUT        seconds each wait loop may take (default 60)
  S3_TEST_BUILD_TIMEOUT  seconds to wait for a garage build (default 3600)

DIR also holds garage.toml, garage.log (appended across restarts),
garage.pid, setup.log (CLI output of provisioning), meta/ and data/.
Both path-style and virtual-hosted-style requests work (root_domain is
.s3.garage.localhost, which does not resolve here, so use path style).
"""

import fcntl
import http.client
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import traceback
from pathlib import Path

GARAGE_VERSION = "2.5.0"
TOOLS_DIR = Path(os.environ.get("SYNAPSE_BACKUP_TOOLS") or Path.home() / ".cache/synapse-backup-tools")
GARAGE_ROOT = TOOLS_DIR / f"garage-{GARAGE_VERSION}"
# Kept as the caller spelled it: it is written back verbatim into DIR/env.
GARAGE_BIN = os.environ.get("S3_TEST_GARAGE_BIN") or str(GARAGE_ROOT / "bin/garage")
TIMEOUT = float(os.environ.get("S3_TEST_TIMEOUT") or 60)
# Building garage from source takes ~10 min on a 2-core machine; allow a
# generous bound when waiting on somebody else's build.
BUILD_TIMEOUT = float(os.environ.get("S3_TEST_BUILD_TIMEOUT") or 3600)

BUCKET = "synapse-backups"
OTHER_BUCKET = "other-bucket"
KEY_NAME = "synapse-backup-test"
REGION = "garage"

# What humans run; named in hints such as "run '... start DIR' first".
PROG = os.path.join(os.path.dirname(sys.argv[0]), "s3-test-server.sh")

# Fatal startup messages. Garage 2.5.0 does NOT exit when its S3 listener
# fails to bind: it logs
#   "ERROR garage::server: S3 API server exited with error: ... Address already in use"
# and keeps running with RPC up, so the process being alive proves nothing.
# (An RPC port clash is a panic; an admin port clash is not logged at all,
# see Server.wait_listeners.)
FATAL_LOG = re.compile(r"ERROR garage::server|Address already in use|panicked")
PORT_CLASH = "Address already in use"


def log(msg: str) -> None:
    print(f"s3-test-server: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(1)


def usage() -> None:
    sys.stderr.write(__doc__.lstrip("\n"))
    sys.exit(2)


def seconds(n: float) -> str:
    return f"{n:g}s"


# --- garage binary -----------------------------------------------------------


def is_executable(path: str | Path) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def foreign_build_running() -> bool:
    """Is a `cargo install garage` running anywhere (what `pgrep -f` saw)?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"cargo install garage" in cmdline.replace(b"\0", b" "):
            return True
    return False


def wait_for_foreign_build() -> None:
    """Wait for a `cargo install garage` that another process already started
    (a developer's shell, a concurrent test run, or the old bash version of
    this script) instead of racing it with a second multi-minute build into
    the same --root. Wait for the process to end even if the binary already
    exists: cargo may still be writing it or its install metadata."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    first = True
    while foreign_build_running():
        if first:
            log(f"a 'cargo install garage' is already running; waiting for it (up to {seconds(BUILD_TIMEOUT)})")
            first = False
        if time.monotonic() >= deadline:
            die(f"timed out after {seconds(BUILD_TIMEOUT)} waiting for the running 'cargo install garage'")
        time.sleep(5)


def ensure_garage() -> None:
    if is_executable(GARAGE_BIN):
        return
    if os.environ.get("S3_TEST_GARAGE_BIN"):
        die(f"S3_TEST_GARAGE_BIN={GARAGE_BIN} is not an executable file")
    wait_for_foreign_build()
    if is_executable(GARAGE_BIN):
        return
    if not shutil.which("cargo"):
        die(f"garage is not installed at {GARAGE_BIN} and cargo is not on PATH")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    # The same lock file the bash version took with flock(1) (also flock(2)),
    # so concurrent invocations of either version on a fresh machine build
    # once and the others reuse the result.
    lock_path = TOOLS_DIR / f"garage-{GARAGE_VERSION}.lock"
    with open(lock_path, "w") as lock:
        log(f"waiting for build lock {lock_path}")
        deadline = time.monotonic() + BUILD_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    die(f"could not take {lock_path} within {seconds(BUILD_TIMEOUT)}")
                time.sleep(1)
        if not is_executable(GARAGE_BIN):
            log(f"building garage {GARAGE_VERSION} with cargo (takes ~10 min on 2 cores; cached in {GARAGE_ROOT})")
            # stdout must stay clean for the env-file path, so cargo talks to stderr.
            build = ["cargo", "install", "garage", "--locked", "--version", GARAGE_VERSION, "--root", str(GARAGE_ROOT)]
            if subprocess.run(build, stdout=sys.stderr).returncode != 0:
                die(f"cargo install garage {GARAGE_VERSION} failed")
    if not is_executable(GARAGE_BIN):
        die(f"cargo install finished but {GARAGE_BIN} is missing")


# --- processes and ports -----------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Is PID still a live process? A zombie (state Z) or dying task (X) has
    already closed its sockets and files; it only waits to be reaped by its
    parent, which for a daemonised garage is init and may take a moment.
    (/proc/PID/cmdline is emptied before the sockets are closed, so it is not
    a reliable "has exited" signal.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(") ")[2][:1] not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def free_ports(n: int) -> list[int]:
    """N distinct free TCP ports on 127.0.0.1. All sockets are held open until
    every port is chosen so the N ports are distinct; there is still a small
    window before garage binds them, which start covers by retrying."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_sockets(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on PORT (any address, v4 or v6),
    read from /proc/net like `ss -ltn 'sport = :PORT'`, without needing ss."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rpartition(":")[2], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    return inodes


def sockets_of(pid: int) -> set[str]:
    """Inodes of the sockets PID has open."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def http_status(url: str) -> int | None:
    """HTTP status of a plain GET (no redirects, no proxy), None if nothing answered."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=2)
    try:
        conn.request("GET", "/" + rest)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def as_background_job() -> None:
    """Signal dispositions the bash version gave garage: `nohup` ignored
    SIGHUP, and bash without job control started `&` jobs with SIGINT and
    SIGQUIT ignored. Garage stays in the caller's process group so that e.g.
    `timeout` reaching a hung start still takes it down."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)


class PortClash(Exception):
    """A port we picked was taken before garage could bind it: pick new ones."""


# --- the server in DIR ---------------------------------------------------------


class Server:
    def __init__(self, directory: Path):
        self.dir = directory
        self.config = directory / "garage.toml"
        self.log_file = directory / "garage.log"
        self.pid_file = directory / "garage.pid"
        self.env_file = directory / "env"
        self.pid: int | None = None  # the garage this invocation launched
        self.log_offset = 0
        self.endpoint = self.admin_endpoint = self.admin_token = ""
        self.ports: list[int] = []
        self.access_key = self.secret_key = ""

    # -- failing ----------------------------------------------------------------

    def log_tail(self) -> None:
        if self.log_file.is_file():
            log(f"---- last 40 lines of {self.log_file} ----")
            lines = self.log_file.read_text(errors="replace").splitlines()[-40:]
            sys.stderr.write("".join(line + "\n" for line in lines))
            log("------------------------------------------")

    def fail(self, msg: str) -> None:
        """Fail a start/restart: show the log, and stop the garage this
        invocation launched so a failed start never leaves a half-working
        server behind."""
        log(f"error: {msg}")
        self.log_tail()
        if self.pid is not None and self.is_ours(self.pid):
            log(f"stopping the garage (pid {self.pid}) this command started")
            self.stop()
        sys.exit(1)

    # -- which process is ours --------------------------------------------------

    def is_ours(self, pid: int) -> bool:
        """Is PID a live garage process serving this DIR's config? Checking the
        command line guards against the pid having been recycled by an
        unrelated process after garage was killed (tests kill -9 the server
        on purpose)."""
        try:
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, OverflowError):  # gone, not ours, or not a pid at all
            return False
        return re.search(re.escape(str(self.config)) + ".*server", cmdline) is not None

    def running_pid(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and self.is_ours(int(text)) else None

    # -- config and env ---------------------------------------------------------

    def write_config(self, rpc_port: int, s3_port: int, admin_port: int) -> None:
        # replication_factor = 1 and sqlite: a single node, and a metadata engine
        # that needs no tuning (LMDB wants a large map and dislikes some FSes).
        text = f"""\
# Generated by scripts/s3-test-server.sh — single-node Garage for tests.
metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3_port}"
s3_region = "{REGION}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{secrets.token_hex(32)}"
metrics_token = "{secrets.token_hex(32)}"
"""
        # The file holds secrets; garage itself does not require this but there
        # is no reason to leave them world-readable, even for a moment.
        write_private(self.config, text)

    def load_config(self) -> None:
        """Endpoints, token and ports from garage.toml, the source of truth."""
        if not self.config.is_file():
            die(f"{self.config} does not exist; run '{PROG} start {self.dir}' first")
        with open(self.config, "rb") as f:
            cfg = tomllib.load(f)
        self.endpoint = "http://" + cfg["s3_api"]["api_bind_addr"]
        self.admin_endpoint = "http://" + cfg["admin"]["api_bind_addr"]
        self.admin_token = cfg["admin"]["admin_token"]
        self.ports = [
            int(addr.rpartition(":")[2])
            for addr in (cfg["rpc_bind_addr"], cfg["s3_api"]["api_bind_addr"], cfg["admin"]["api_bind_addr"])
        ]

    def write_env(self) -> None:
        values = {
            "S3_TEST_ENDPOINT": self.endpoint,
            "S3_TEST_REGION": REGION,
            "S3_TEST_BUCKET": BUCKET,
            "S3_TEST_ACCESS_KEY": self.access_key,
            "S3_TEST_SECRET_KEY": self.secret_key,
            "S3_TEST_SERVER_PID": str(self.pid),
            "S3_TEST_SERVER_DIR": str(self.dir),
            "S3_TEST_OTHER_BUCKET": OTHER_BUCKET,
            "S3_TEST_ADMIN_ENDPOINT": self.admin_endpoint,
            "S3_TEST_ADMIN_TOKEN": self.admin_token,
            "S3_TEST_GARAGE_BIN": GARAGE_BIN,
            "S3_TEST_GARAGE_CONFIG": str(self.config),
        }
        text = f"# Generated by scripts/s3-test-server.sh; source it: . {self.env_file}\n"
        text += "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
        tmp = self.dir / "env.tmp"
        write_private(tmp, text)
        # rename is atomic, so a test never sources a half-written file.
        os.replace(tmp, self.env_file)

    def read_env(self) -> dict[str, str]:
        """The variables DIR/env exports (a file we wrote: `export K=quoted`)."""
        env = {}
        for line in self.env_file.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, _, value = words[1].partition("=")
                env[key] = value
        return env

    # -- running garage ---------------------------------------------------------

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run the garage CLI, which talks RPC to the daemon."""
        try:
            return subprocess.run([GARAGE_BIN, "-c", str(self.config), *args], timeout=TIMEOUT, **kwargs)
        except subprocess.TimeoutExpired as e:
            # A hung CLI call counts as a failed one (and is retried like one).
            return subprocess.CompletedProcess(e.cmd, 124, "", "")

    def launch(self, reason: str) -> None:
        """Launch the daemon detached from our stdio: a caller that captures our
        stdout (e.g. `$(... start dir)` or a Rust Command) would otherwise never
        see EOF while garage lives."""
        # Startup checks only look at the messages of this run of garage.
        self.log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(self.log_file, "a") as out:
            out.write(f"\n==== {stamp}: starting garage ({reason}) ====\n")
            out.flush()
            # NO_COLOR keeps ANSI escapes out of garage.log, which we tail on errors.
            env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG") or "garage=info")
            proc = subprocess.Popen(
                [GARAGE_BIN, "-c", str(self.config), "server"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=as_background_job,
            )
        self.pid = proc.pid
        self.pid_file.write_text(f"{proc.pid}\n")

    def launch_errors(self) -> list[str]:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if FATAL_LOG.search(line)]

    def check_launch(self, retry: bool = False) -> None:
        """Fail if the current launch is dead or has logged a fatal error; with
        RETRY, a port clash raises PortClash instead."""
        errors = self.launch_errors()
        if errors:
            if retry and any(PORT_CLASH in e for e in errors):
                raise PortClash
            self.fail(f"garage reported a startup error: {errors[0]}")
        if not self.is_ours(self.pid):
            self.fail(f"garage (pid {self.pid}) exited during startup")

    def wait_listeners(self, retry: bool = False) -> None:
        """Poll until garage itself listens on its RPC, S3 and admin ports. This
        is what catches a port held by another process: garage logs "Admin
        API server listening" even when that bind fails, and a foreign HTTP
        server on the port would otherwise answer our probes."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            listeners_by_port = {port: listening_sockets(port) for port in self.ports}
            # Read after the listeners: a socket garage binds in between is then
            # only "missing" this round, never mistaken for a foreign one.
            ours = sockets_of(self.pid)
            missing = []
            for port, listeners in listeners_by_port.items():
                if listeners & ours:
                    continue
                if listeners:
                    if retry:
                        raise PortClash
                    self.fail(f"port {port} is held by another process (see: ss -ltnp 'sport = :{port}')")
                missing.append(port)
            if not missing:
                return
            self.check_launch(retry)
            if time.monotonic() >= deadline:
                self.fail(f"garage did not listen on port(s) {' '.join(map(str, missing))} within {seconds(TIMEOUT)}")
            time.sleep(0.1)

    def wait_rpc(self, retry: bool = False) -> None:
        """Poll until the daemon owns its ports and answers `garage status`."""
        deadline = time.monotonic() + TIMEOUT
        self.wait_listeners(retry)
        while self.cli("status", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            self.check_launch(retry)
            if time.monotonic() >= deadline:
                self.fail(f"garage did not answer 'garage status' within {seconds(TIMEOUT)}")
            time.sleep(0.2)
        self.check_launch(retry)

    def wait_healthy(self) -> None:
        """Poll until the admin API reports a healthy cluster, i.e. the layout
        is applied and every partition has quorum, so S3 requests will
        succeed."""
        deadline = time.monotonic() + TIMEOUT
        while (code := http_status(f"{self.admin_endpoint}/health")) != 200:
            self.check_launch()
            if time.monotonic() >= deadline:
                self.fail(f"garage not healthy within {seconds(TIMEOUT)} (last /health status: {code or 'none'})")
            time.sleep(0.2)
        # The S3 listener is separate from the admin one; make sure it answers
        # HTTP too (an unsigned request gets an S3 error document, which is fine).
        while http_status(f"{self.endpoint}/") is None:
            self.check_launch()
            if time.monotonic() >= deadline:
                self.fail(f"S3 API at {self.endpoint} did not answer within {seconds(TIMEOUT)}")
            time.sleep(0.2)
        # Whatever answered must be this garage, not another process that owns
        # the port while our listener failed to bind.
        self.check_launch()

    def retry_cli(self, *args: str) -> str:
        """Run a garage CLI call, retrying for up to TIMEOUT: right after startup
        or a layout change the metadata tables can briefly report quorum
        errors. Only for calls that are safe to repeat after a failed attempt."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            run = self.cli(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = run.stdout.rstrip("\n") + "\n"
            if run.returncode == 0:
                return out
            if time.monotonic() >= deadline:
                log(f"'garage {' '.join(args)}' kept failing for {seconds(TIMEOUT)}; last output:")
                sys.stderr.write(out)
                self.fail(f"garage {' '.join(args)} failed")
            time.sleep(0.5)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the server (SIGTERM lets garage finish the requests in flight;
        SIGKILL cuts them) and wait until it has exited. A pid file whose
        process is not our garage is only removed."""
        pid = self.running_pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            # pid_alive rather than kill(0): a zombie counts as gone.
            if not wait_gone(pid, TIMEOUT):
                log(f"garage (pid {pid}) ignored {sig.name} for {seconds(TIMEOUT)}; sending SIGKILL")
                os.kill(pid, signal.SIGKILL)
                # SIGKILL cannot be ignored; this only waits for the exit itself.
                if not wait_gone(pid, 10):
                    die(f"garage (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    # -- commands -----------------------------------------------------------------

    def start_fresh(self) -> None:
        """Start a new server; retry with new ports if a port we picked was
        taken by someone else between choosing and binding it."""
        for attempt in (1, 2, 3):
            self.write_config(*free_ports(3))
            self.load_config()
            self.launch(f"fresh, attempt {attempt}")
            try:
                self.wait_rpc(retry=True)
                return
            except PortClash:
                log("a port was taken before garage could bind it; retrying with new ports")
            self.stop()
            # The node key and (empty) metadata of the aborted run are harmless,
            # but start from a clean slate so every attempt is identical.
            for sub in ("meta", "data"):
                shutil.rmtree(self.dir / sub, ignore_errors=True)
                (self.dir / sub).mkdir()
        self.fail("could not start garage after 3 attempts")

    def provision(self) -> None:
        # `garage node id -q` prints "<64-hex-id>@<addr>"; layout commands want
        # the hex id (a unique prefix would do, the full id is unambiguous).
        out = self.cli("node", "id", "-q", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        node_id = re.search(r"^[0-9a-f]{64}", out or "", re.MULTILINE)
        if not node_id:
            self.fail("could not read the node id from 'garage node id -q'")

        # The CLI's chatty output goes to DIR/setup.log (retry_cli shows it on
        # failure) so that callers' stderr stays readable. `key create` prints
        # the secret, hence private.
        setup_log = self.dir / "setup.log"
        write_private(setup_log, "")
        with open(setup_log, "a") as setup:
            setup.write(self.retry_cli("layout", "assign", "-z", "dc1", "-c", "1G", node_id[0]))
            setup.write(self.retry_cli("layout", "apply", "--version", "1"))
            setup.flush()
            self.wait_healthy()
            setup.write(self.retry_cli("bucket", "create", BUCKET))
            # A bucket the key is NOT allowed on, for access-denied tests.
            setup.write(self.retry_cli("bucket", "create", OTHER_BUCKET))
            setup.write(self.retry_cli("key", "create", KEY_NAME))
            setup.write(self.retry_cli("bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME))

        key_info = self.retry_cli("key", "info", KEY_NAME, "--show-secret")
        self.access_key = labelled_field(key_info, "key id:")
        self.secret_key = labelled_field(key_info, "secret key:")
        if not re.fullmatch(r"GK[0-9a-f]+", self.access_key):
            self.fail(f"could not parse the key id from 'garage key info': {key_info}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.secret_key):
            self.fail(f"could not parse the secret key from 'garage key info' (got '{self.secret_key}')")

    def start(self) -> None:
        t0 = time.monotonic()
        if self.config.exists():
            if (pid := self.running_pid()) is not None:
                die(f"a server is already running for {self.dir} (pid {pid}); use 'stop' or 'restart'")
            die(f"{self.dir} already holds a server ({self.config} exists); use '{PROG} restart {self.dir}' to bring it back, or remove {self.dir}")
        ensure_garage()
        for sub in ("meta", "data"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.start_fresh()
        self.provision()
        self.write_env()
        log(f"garage {GARAGE_VERSION} ready at {self.endpoint} (pid {self.pid}, started in {ms_since(t0)} ms)")
        print(self.env_file)

    def restart(self) -> None:
        """Stop (if running) and start again on the same config, data and ports."""
        t0 = time.monotonic()
        if not self.env_file.is_file():
            die(f"{self.env_file} does not exist; run '{PROG} start {self.dir}' first")
        ensure_garage()
        self.load_config()
        self.stop()
        # Credentials live in the server's metadata; reuse what start recorded.
        env = self.read_env()
        self.access_key = env.get("S3_TEST_ACCESS_KEY", "")
        self.secret_key = env.get("S3_TEST_SECRET_KEY", "")
        self.launch("restart")
        self.wait_rpc()
        self.wait_healthy()
        self.write_env()
        log(f"garage restarted at {self.endpoint} (pid {self.pid}, in {ms_since(t0)} ms)")
        print(self.env_file)

    def stop_command(self) -> None:
        self.stop()
        log(f"stopped garage for {self.dir}")

    def kill_command(self) -> None:
        self.stop(signal.SIGKILL)
        log(f"killed garage for {self.dir}")

    def status(self) -> None:
        if (pid := self.running_pid()) is not None:
            log(f"running (pid {pid})")
        else:
            log("not running")
            sys.exit(1)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def labelled_field(text: str, label: str) -> str:
    """The last word of the first line starting with LABEL (any case), as in
    `garage key info`'s "Key ID:              GK…" and "Secret key:    …"."""
    for line in text.splitlines():
        if line.strip().lower().startswith(label):
            return line.split()[-1]
    return ""


def ms_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


COMMANDS = {
    "start": Server.start,
    "restart": Server.restart,
    "stop": Server.stop_command,
    "kill": Server.kill_command,
    "status": Server.status,
}


def main(argv: list[str]) -> None:
    if not argv:
        usage()
    if argv[0] == "install":
        ensure_garage()
        print(GARAGE_BIN)
        return
    if len(argv) != 2 or argv[0] not in COMMANDS:
        usage()
    cmd, arg = argv
    if cmd == "start":
        os.makedirs(arg, exist_ok=True)
    if not os.path.isdir(arg):
        die(f"{arg} does not exist; run '{PROG} start {arg}' first")
    # Absolute, symlink-free paths: garage resolves metadata_dir/data_dir
    # against its cwd, and the pid check matches the config path in
    # /proc/PID/cmdline.
    directory = Path(os.path.realpath(arg))
    # The path is embedded in TOML strings unescaped.
    if '"' in str(directory) or "\\" in str(directory):
        die("DIR must not contain '\"' or '\\'")
    server = Server(directory)
    try:
        COMMANDS[cmd](server)
    except Exception:
        # A bug here must not leave a half-started garage behind either.
        traceback.print_exc()
        server.fail(f"unexpected error in '{cmd}'")


if __name__ == "__main__":
    main(sys.argv[1:])
