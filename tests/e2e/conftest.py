"""pytest setup of the end-to-end tests against a real Synapse (test_synapse.py).

Options (scripts/e2e-synapse.sh passes them all):
  --bin PATH           the synapse-backup binary (default: target/release/synapse-backup)
  --work DIR           work directory: the backup store, and a folder per scenario
                       (default: a pytest temp dir)
  --pids-file PATH     every started Synapse's pid is appended here (default: WORK/synapse-pids),
                       so that whoever runs the test can stop them whatever happens to it
  --summary-file PATH  the closing `N passed, M failed` (the checks of the whole run) is
                       written here

The fixtures give each test the binary and its store (`tool`), the port every Synapse listens
on, the Python Synapse runs with, a fresh folder for the scenario and a factory of Synapse
servers, and `checks`: the scenario's named checks. A test fails when one of its checks failed,
with the list of them; the run ends with the E2E-TIMING lines and `N checks passed, M failed`.

SIGTERM (the shell's `timeout`) unwinds through the `finally` blocks that stop Synapse and ends
the run with exit status 143.
"""

import os
import shutil
import signal
import sys
import time

import pytest

from synapse_harness import Checks, Results, ScenarioAbort, Synapse, Tool, free_port, log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = pytest.StashKey[Results]()
SESSION = pytest.StashKey[pytest.Session]()
TERMINATED = pytest.StashKey[bool]()
STARTED = pytest.StashKey[float]()


def pytest_addoption(parser):
    group = parser.getgroup("synapse-e2e", "synapse-backup end-to-end tests")
    group.addoption("--bin", default=os.path.join(REPO, "target", "release", "synapse-backup"),
                    help="the synapse-backup binary (default: %(default)s)")
    group.addoption("--work", help="work directory (default: a pytest temp dir)")
    group.addoption("--pids-file", help="every started Synapse pid is appended here (default: WORK/synapse-pids)")
    group.addoption("--summary-file", help="write the closing `N passed, M failed` of the checks here")


class Terminated(SystemExit):
    """SIGTERM, raised wherever the test was: as SystemExit, no `except Exception` stops it."""

    def __str__(self):
        return "terminated by SIGTERM"


def pytest_configure(config):
    config.stash[RESULTS] = Results()
    config.stash[TERMINATED] = False

    # SIGTERM (the shell's timeout or trap) unwinds through the finally blocks that stop Synapse;
    # the run ends after the current test, with exit status 143 (pytest_sessionfinish).
    def terminate(signum, _frame):
        config.stash[TERMINATED] = True
        if SESSION in config.stash:
            config.stash[SESSION].shouldstop = "terminated by SIGTERM"
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def pytest_sessionstart(session):
    session.config.stash[SESSION] = session
    session.config.stash[STARTED] = time.monotonic()


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def synapse_backup_bin(pytestconfig):
    path = os.path.abspath(pytestconfig.getoption("--bin"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"no synapse-backup binary at {path} (cargo build --release, or --bin PATH)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def work_dir(pytestconfig, tmp_path_factory):
    work = pytestconfig.getoption("--work")
    if not work:
        return str(tmp_path_factory.mktemp("synapse-e2e"))
    os.makedirs(work, exist_ok=True)
    return os.path.abspath(work)


@pytest.fixture(scope="session")
def pids_file(pytestconfig, work_dir):
    return os.path.abspath(pytestconfig.getoption("--pids-file") or os.path.join(work_dir, "synapse-pids"))


@pytest.fixture(scope="session")
def tool(synapse_backup_bin, work_dir):
    """The synapse-backup binary with its local store and passphrase file in the work dir."""
    return Tool(synapse_backup_bin, work_dir)


@pytest.fixture(scope="session")
def port():
    """The port every Synapse of the run listens on (one at a time), on 127.0.0.1."""
    return free_port()


@pytest.fixture(scope="session")
def synapse_python():
    """The Python Synapse (and s3_media_upload) run with: this test's, from the venv."""
    return sys.executable


def scenario_name(item):
    """The scenario a test item runs: its name without `test_`."""
    return item.originalname.removeprefix("test_")


@pytest.fixture
def checks(request):
    """The named checks of the test's scenario (its name without `test_`)."""
    scenario = scenario_name(request.node)
    log(f"=== scenario {scenario}")
    started = time.monotonic()
    yield Checks(request.config.stash[RESULTS], scenario)
    log(f"=== scenario {scenario} took {time.monotonic() - started:.1f}s")


@pytest.fixture
def scenario_dir(request, work_dir):
    """WORK/<scenario>, made empty."""
    path = os.path.join(work_dir, scenario_name(request.node))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


@pytest.fixture
def make_synapse(synapse_python, port, pids_file, scenario_dir):
    """make_synapse(NAME, cls=Synapse, **kwargs): a Synapse (not generated, not started) in
    SCENARIO_DIR/NAME. Any still running when the test ends is stopped."""
    made = []

    def make(name, cls=Synapse, **kwargs):
        hs = cls(synapse_python, os.path.join(scenario_dir, name), port, pids_file, **kwargs)
        made.append(hs)
        return hs

    yield make
    for hs in made:
        hs.stop()


# --------------------------------------------------------------------------------------------
# A failed check fails the test; the run's count of checks


@pytest.hookimpl(wrapper=True, trylast=True)  # inside the output capture's wrapper
def pytest_runtest_call(item):
    """Runs a scenario's test: a step that could not go on (ScenarioAbort) is already counted;
    any other exception is counted as the failed check `scenario ran to the end`. The test fails
    when any check failed, listing them."""
    checks = item.funcargs.get("checks")
    if checks is None:
        return (yield)
    try:
        yield
    except ScenarioAbort as e:
        log(f"scenario {checks.scenario} stopped after a failed step: {e}")
    except pytest.exit.Exception:
        raise
    except (Exception, Terminated) as e:
        checks.error("scenario ran to the end", e)
        if hasattr(e, "add_note"):  # Python 3.11+: pytest shows it under the traceback
            e.add_note(failed_checks(checks))
        raise
    if checks.failures:
        pytest.fail(failed_checks(checks), pytrace=False)


def failed_checks(checks):
    return f"{len(checks.failures)} check(s) failed:\n  " + "\n  ".join(checks.failures)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's setup or teardown that failed (a fixture, no check) counts as a failed check."""
    report = yield
    if report.failed and report.when != "call":
        message = report.longreprtext.strip().splitlines()
        item.config.stash[RESULTS].add_failure(
            f"[{scenario_name(item)}] {report.when}: {message[-1] if message else 'failed'}")
    return report


def pytest_sessionfinish(session, exitstatus):
    results = session.config.stash[RESULTS]
    if session.config.stash[TERMINATED]:
        session.exitstatus = 128 + signal.SIGTERM
    if session.exitstatus != 0 and not results.failed:
        # Nothing was counted, yet the run failed (a test module that does not import, no test
        # selected, an interruption): one failure, so that the summary does not say 0 failed.
        results.add_failure(f"pytest exited with status {int(session.exitstatus)}")
    summary_file = session.config.getoption("--summary-file")
    if summary_file:
        with open(summary_file, "w") as f:
            f.write(f"{results.passed} passed, {results.failed} failed\n")


def pytest_terminal_summary(terminalreporter, config):
    if config.option.collectonly:
        return
    results = config.stash[RESULTS]
    write = terminalreporter.write_line
    write("")
    for line in results.timings:
        write(line)
    if STARTED in config.stash:
        write(f"E2E-TIMING total={time.monotonic() - config.stash[STARTED]:.1f}s")
    if results.failures:
        write("")
        write("Failures:")
        for failure in results.failures:
            write(f"  {failure}")
    write("")
    write(f"{results.passed} checks passed, {results.failed} failed")
