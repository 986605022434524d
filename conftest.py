"""Fixtures every test file shares: each test runs on every loop backend present."""

import gc
import importlib.util
import os
import socket as stdsocket
import sys

import pytest

import coopsock

BACKENDS = ("pyev", "libev", "selectors")


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
