#!/usr/bin/env python3
"""Self-test of scripts/s3-test-server.sh against a real Garage (no mocks).

  python3 scripts/s3_test_server_test.py [-v]

Needs the garage binary the script uses (run `scripts/s3-test-server.sh
install` first); the server tests are skipped without it. Takes ~30 s.
"""

import os
import shlex
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "s3-test-server.sh"
ENV_KEYS = [
    "S3_TEST_ENDPOINT", "S3_TEST_REGION", "S3_TEST_BUCKET", "S3_TEST_ACCESS_KEY",
    "S3_TEST_SECRET_KEY", "S3_TEST_SERVER_PID", "S3_TEST_SERVER_DIR", "S3_TEST_OTHER_BUCKET",
    "S3_TEST_ADMIN_ENDPOINT", "S3_TEST_ADMIN_TOKEN", "S3_TEST_GARAGE_BIN", "S3_TEST_GARAGE_CONFIG",
]


def run(*args, env=None, check=True):
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}: {out.stderr}")
    return out


def garage_bin():
    """The binary the script would use, without building it."""
    tools = os.environ.get("SYNAPSE_BACKUP_TOOLS") or Path.home() / ".cache/synapse-backup-tools"
    path = os.environ.get("S3_TEST_GARAGE_BIN") or Path(tools) / "garage-2.5.0/bin/garage"
    return os.path.isfile(path) and os.access(path, os.X_OK)


def sourced(env_file):
    """The variables the env file sets, as bash sees them after sourcing it."""
    script = f". {shlex.quote(str(env_file))} && env -0"
    raw = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={}).stdout
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if item and "=" in item)


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1] not in "ZX"
    except OSError:
        return False


def s3_status(endpoint):
    """Status and body of an unsigned GET: garage answers with an S3 XML error."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@unittest.skipUnless(garage_bin(), "no garage binary (run scripts/s3-test-server.sh install)")
class ServerLifecycle(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="s3ts-")
        self.dir = Path(self.tmp.name) / "g"
        self.addCleanup(self.tmp.cleanup)
        self.addCleanup(lambda: run("stop", str(self.dir), check=False))

    def start(self, directory=None):
        out = run("start", str(directory or self.dir))
        env_file = out.stdout.splitlines()[-1]
        self.assertEqual(out.stdout.strip(), env_file, "stdout holds only the env path")
        return sourced(env_file)

    def cli(self, env, *args):
        return subprocess.run([env["S3_TEST_GARAGE_BIN"], "-c", env["S3_TEST_GARAGE_CONFIG"], *args],
                              capture_output=True, text=True, check=True).stdout

    def test_start_restart_kill_stop(self):
        env = self.start()
        self.assertEqual(sorted(k for k in env if k.startswith("S3_TEST_")), sorted(ENV_KEYS))
        self.assertEqual(env["S3_TEST_SERVER_DIR"], str(self.dir.resolve()))
        self.assertEqual(oct((self.dir / "env").stat().st_mode & 0o777), "0o600")
        status, body = s3_status(env["S3_TEST_ENDPOINT"])
        self.assertTrue(400 <= status < 500, status)
        self.assertIn(b"<Error>", body)
        run("status", str(self.dir))
        self.assertNotEqual(run("start", str(self.dir), check=False).returncode, 0, "start twice is refused")

        config = (self.dir / "garage.toml").read_text()
        again = sourced(run("restart", str(self.dir)).stdout.splitlines()[-1])
        self.assertNotEqual(again.pop("S3_TEST_SERVER_PID"), env["S3_TEST_SERVER_PID"])
        self.assertFalse(alive(env["S3_TEST_SERVER_PID"]))
        self.assertEqual(again, {k: v for k, v in env.items() if k != "S3_TEST_SERVER_PID"})
        self.assertEqual((self.dir / "garage.toml").read_text(), config)
        self.assertIn(env["S3_TEST_BUCKET"], self.cli(env, "bucket", "list"))

        pid = (self.dir / "garage.pid").read_text().strip()
        run("kill", str(self.dir))
        self.assertFalse(alive(pid))
        self.assertEqual(run("status", str(self.dir), check=False).returncode, 1)

        env = sourced(run("restart", str(self.dir)).stdout.splitlines()[-1])
        pid = env["S3_TEST_SERVER_PID"]
        run("stop", str(self.dir))
        self.assertFalse(alive(pid), "stop returns only once garage has exited")
        self.assertFalse((self.dir / "garage.pid").exists())

    def test_stale_pid_file_is_not_killed(self):
        self.start()
        run("kill", str(self.dir))
        # A pid reused by an unrelated process must be left alone.
        other = subprocess.Popen(["sleep", "60"])
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        (self.dir / "garage.pid").write_text(f"{other.pid}\n")
        self.assertEqual(run("status", str(self.dir), check=False).returncode, 1)
        run("stop", str(self.dir))
        run("kill", str(self.dir))
        self.assertIsNone(other.poll(), "the unrelated process survived stop and kill")
        self.assertFalse((self.dir / "garage.pid").exists())

    def test_parallel_starts_get_distinct_ports(self):
        dirs = [self.dir, Path(self.tmp.name) / "h"]
        self.addCleanup(lambda: run("stop", str(dirs[1]), check=False))
        procs = [subprocess.Popen(["bash", str(SCRIPT), "start", str(d)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for d in dirs]
        envs = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, err)
            envs.append(sourced(out.splitlines()[-1]))
        ports = [e[k].rpartition(":")[2] for e in envs for k in ("S3_TEST_ENDPOINT", "S3_TEST_ADMIN_ENDPOINT")]
        self.assertEqual(len(set(ports)), 4)
        for e in envs:
            self.assertIn(b"<Error>", s3_status(e["S3_TEST_ENDPOINT"])[1])


class ForeignBuild(unittest.TestCase):
    """A garage build by another process (or the old bash script) is waited
    for, never raced, and the build lock is the same flock(1) file."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="s3ts-")
        self.addCleanup(self.tmp.cleanup)
        tools = Path(self.tmp.name)
        # A cargo that only records that it was run: nothing is really built.
        fake_bin = tools / "fakebin"
        fake_bin.mkdir()
        (fake_bin / "cargo").write_text(f"#!/bin/sh\ntouch {tools}/cargo-ran; exit 1\n")
        (fake_bin / "cargo").chmod(0o755)
        self.tools = tools
        self.env = dict(os.environ, SYNAPSE_BACKUP_TOOLS=str(tools), S3_TEST_BUILD_TIMEOUT="2",
                        PATH=f"{fake_bin}:{os.environ['PATH']}")
        self.env.pop("S3_TEST_GARAGE_BIN", None)

    def test_waits_for_a_running_cargo_install(self):
        fake = subprocess.Popen(["bash", "-c", 'exec -a "cargo install garage (fake)" sleep 20'])
        self.addCleanup(fake.wait)
        self.addCleanup(fake.kill)
        time.sleep(0.2)
        out = run("install", env=self.env, check=False)
        self.assertEqual(out.returncode, 1)
        self.assertIn("already running; waiting", out.stderr)
        self.assertIn("timed out", out.stderr)
        self.assertFalse((self.tools / "cargo-ran").exists())

    def test_waits_for_the_build_lock(self):
        lock = self.tools / "garage-2.5.0.lock"
        holder = subprocess.Popen(["flock", str(lock), "sleep", "5"])
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        time.sleep(0.3)
        out = run("install", env=self.env, check=False)
        self.assertEqual(out.returncode, 1)
        self.assertIn("could not take", out.stderr)
        self.assertFalse((self.tools / "cargo-ran").exists())


if __name__ == "__main__":
    unittest.main()
