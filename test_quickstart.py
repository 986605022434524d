"""The README's Quick start and `pip install .`, run on a fresh clone as a user runs them.

Not in tox.ini's testpaths: it installs from the package index, so CI runs it
once (.ci/run, with COOPSOCK_QUICKSTART=required) instead of once per
interpreter. `python -m pytest -q test_quickstart.py` runs it by hand; without
git, python3-venv (and no way to install it) or the network, it skips and says
why, except under COOPSOCK_QUICKSTART=required, where it fails.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
REQUIRED = os.environ.get("COOPSOCK_QUICKSTART") == "required"
SETUP_LIMIT = 100  # seconds for apt, a venv and pip from a cold cache; about 15 s warm
NETWORK_DOWN = re.compile(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable"
                          r"|Could not find a version that satisfies")
WHERE = "import coopsock, importlib.metadata as m, sys; print(m.version('coopsock'), coopsock.__file__.startswith(sys.prefix))"


@pytest.fixture
def backend():
    """Run once, not once per loop backend: the Quick start runs in processes of its own."""


def _cannot(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (COOPSOCK_QUICKSTART=required: CI must run this test)")
    pytest.skip(reason)


def _user_env():
    """The environment of a user's shell: nothing of this test run's venv or pytest."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "COOPSOCK_LOOP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args, timeout=60, **kwargs):
    """Run args as a user would; return the CompletedProcess, whatever its exit status."""
    return subprocess.run(args, check=False, env=_user_env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def _quick_start():
    """The Quick start's three commands, in the README's order: set up and run, a client, the tests."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert len(blocks) == 3, f"the Quick start has {len(blocks)} sh blocks, not 3 (setup, client, tests)"
    return blocks


@pytest.fixture
def clone(tmp_path):
    """A fresh clone of this checkout, with the tracked files as they are in the work tree now."""
    if not shutil.which("git") or _run(["git", "-C", ROOT, "rev-parse"]).returncode:
        _cannot("needs git and a git checkout to clone")
    # git stash create commits the work tree's tracked changes without touching
    # anything (it prints nothing when there are none); a local clone copies
    # that commit's objects too.
    sha = subprocess.run(["git", "-C", ROOT, "stash", "create"], capture_output=True, text=True,
                         check=True).stdout.strip() or "HEAD"
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", sha], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = tmp_path / "coopsock"
    subprocess.run(["git", "clone", "-q", "--no-checkout", ROOT, str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", "--detach", sha], check=True)
    yield dest
    shutil.rmtree(dest, ignore_errors=True)  # a venv's worth of files


def _check_can_make_venvs():
    if _run(["python3", "-c", "import ensurepip"]).returncode == 0:
        return
    if os.getuid() != 0 and not shutil.which("sudo"):
        _cannot("python3-venv is missing and cannot be installed here (not root, no sudo)")


def _read_until(proc, pattern, limit):
    """Read proc's output in a thread; return (match or None, the thread, the lines) by limit s."""
    lines, found = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if re.search(pattern, line):
                found.set()
        found.set()  # EOF
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(limit)
    return re.search(pattern, "".join(lines)), reader, lines


def _talk_to_the_demo(demo, setup, client, clone):
    banner, reader, lines = _read_until(demo, r"listening on \S+:(\d+)", SETUP_LIMIT)
    if not banner:
        demo.kill()
        demo.wait()
        reader.join(5)
        output = "".join(lines)
        if NETWORK_DOWN.search(output):
            _cannot("no network: pip cannot reach the package index")
        pytest.fail(f"{setup!r} did not start the demo within {SETUP_LIMIT} s "
                    f"(exit status {demo.returncode}):\n{output}")
    assert "8000" in client
    talk = _run(client.replace("8000", banner.group(1)), shell=True, cwd=clone, input="hello, coopsock\n")
    assert (talk.returncode, talk.stdout, talk.stderr) == (0, "hello, coopsock\n", "")
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=30) == 0
    reader.join(5)
    assert "Traceback" not in "".join(lines)


def test_quick_start_on_a_fresh_clone(clone):
    """./quickstart.sh sets up and serves, the README's python -c client gets its echo, the tests collect."""
    setup, client, tests = _quick_start()
    _check_can_make_venvs()
    assert not (clone / ".venv").exists()
    # --port 0: the README's port 8000 may be taken on a CI machine
    with subprocess.Popen(shlex.split(setup) + ["--port", "0"], cwd=clone, env=_user_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as demo:
        try:
            _talk_to_the_demo(demo, setup, client, clone)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    # The tests command: every test file imports in the venv the setup made
    # (running the whole suite is CI's own step).
    collected = _run(shlex.split(tests) + ["--collect-only"], timeout=120, cwd=clone)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert re.search(r"^\d+ tests collected", collected.stdout, re.MULTILINE), collected.stdout


def test_pip_install_into_a_fresh_venv(clone, tmp_path):
    """pip install . gives `python -m coopsock --version` the version in coopsock.py, greenlet included."""
    _check_can_make_venvs()
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, env=_user_env(), timeout=120)
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "."],
               timeout=SETUP_LIMIT, cwd=clone)
    if pip.returncode and NETWORK_DOWN.search(pip.stdout + pip.stderr):
        _cannot("no network: pip cannot reach the package index")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    with open(clone / "coopsock.py") as f:
        version = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.MULTILINE).group(1)
    # from tmp_path, so that the clone's coopsock.py cannot be the one imported
    run = _run([str(venv / "bin" / "python"), "-m", "coopsock", "--version"], cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"coopsock {version}\n", "")
    where = _run([str(venv / "bin" / "python"), "-c", WHERE], cwd=tmp_path)
    assert where.stdout == f"{version} True\n", where.stdout + where.stderr
    shutil.rmtree(venv, ignore_errors=True)
