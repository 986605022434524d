"""Fixtures every test file shares: each test runs on every loop backend present."""

import gc
import importlib.util
import os
import signal
import socket as stdsocket
import subprocess
import sys
import textwrap

import pytest

import coopsock

BACKENDS = ("pyev", "libev", "selectors")
HERE = os.path.dirname(os.path.abspath(__file__))


def _unavailable(name):
    try:
        coopsock._load_backend(name)
    except ImportError as exc:
        return str(exc)
    return None


def _first_present():
    return next(name for name in BACKENDS if not _unavailable(name))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Report every skip for an absent backend from _unavailable, so that -rs folds them into one line."""
    report = (yield).get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and "backend is absent here" in report.longrepr[2]:
        report.longrepr = (__file__, _unavailable.__code__.co_firstlineno, report.longrepr[2])


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    """Run every test on each loop backend present on this machine."""
    reason = _unavailable(request.param)
    if reason:
        pytest.skip(f"the {request.param} backend is absent here: {reason}")
    if request.node.get_closest_marker("loop_independent") and request.param != _first_present():
        pytest.skip("independent of the loop: it runs on the first backend present only")
    coopsock._use_backend(request.param)
    yield request.param
    coopsock.get_hub().destroy()


@pytest.fixture(autouse=True)
def hang_guard(backend):
    """Turn a main greenlet parked for good (a lost wake-up) into a failure, not a stuck run."""
    guard = coopsock.Timeout.start_new(60, AssertionError("the main greenlet waited 60 s: a lost wake-up?"),
                                       ref=False)
    yield guard
    guard.cancel()


@pytest.fixture
def pair():
    """A connected pair of cooperative AF_UNIX stream sockets."""
    a, b = coopsock.socketpair(stdsocket.AF_UNIX)
    with a, b:
        yield a, b


# Socket buffers, as trio's test_io fills and drains them.

def fill(sock):
    """Send on sock until its buffers are full (send would block); return the byte count."""
    timeout, total = sock.gettimeout(), 0
    sock.settimeout(0)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    total += sock.send(b"f" * size)
                except BlockingIOError:
                    break
    finally:
        sock.settimeout(timeout)
    return total


def drain(sock, count):
    """Receive exactly count bytes from sock (cooperatively); return them."""
    chunks, left = [], count
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        assert chunk, f"the peer closed with {left} bytes still expected"
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# fd-count tests cannot hold on PyPy once real pyev is imported, for this reason.
PYPY_WITH_PYEV = sys.implementation.name == "pypy" and importlib.util.find_spec("pyev") is not None
PYEV_FDS_ON_PYPY = ("PyPy's cpyext frees a dropped real-pyev Loop (its epoll fd and eventfd; pyev has no close) "
                    "at a collection of its own choosing, not at gc.collect(): open-fd counts drift by 2")


def settled_fd_count():
    """Collect garbage until the count of this process's open fds stops changing; return it.

    CPython's refcounting closes a dropped socket or loop at once; PyPy's GC
    (cpyext's for real pyev's Loop) only when it runs, and what one collection
    finalizes can free more at the next.
    """
    count = None
    for _ in range(10):
        gc.collect()
        count, last = len(os.listdir("/proc/self/fd")), count
        if count == last:
            break
    return count


# Child interpreters: what could crash the interpreter, or needs a fresh one, runs in one.

def _child_env(loop):
    path = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, COOPSOCK_LOOP=loop, PYTHONPATH=path, PYTHONFAULTHANDLER="1")


_CHILD_PRELUDE = """\
import errno, gc, os, signal, socket as stdsocket, struct, sys, threading, time
import coopsock
from coopsock import Timeout, sleep, spawn
P = coopsock._pyev

def outcome(func, *args):
    try:
        return func(*args)
    except Exception as exc:
        return exc

def coop(sock):
    return coopsock.socket(fileno=sock.detach())

def stats():
    counts = coopsock.get_hub().stats()
    return {key: counts.get(key) for key in ("fds", "waiting", "timers", "callbacks")}

"""


def _run_child(code, loop, timeout=60, **env):
    """Run code in a new interpreter on the `loop` backend, faulthandler on; return the CompletedProcess."""
    source = _CHILD_PRELUDE + textwrap.dedent(code)
    try:
        return subprocess.run([sys.executable, "-X", "faulthandler", "-c", source], cwd=HERE,
                              env=dict(_child_env(loop), **env),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"the child hung (killed after {timeout} s); its output ended with:\n{out[-3000:]}")


def _describe_status(code):
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _assert_clean_exit(proc, expect="OK"):
    assert proc.returncode == 0 and expect in proc.stdout, (
        f"the child ended with {_describe_status(proc.returncode)}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")


def load_example(name):
    """Import examples/<name>.py as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(HERE, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
