"""Fixtures every test file shares: each test runs on every loop backend present."""

import socket as stdsocket

import pytest

import coopsock

BACKENDS = ("pyev", "libev", "selectors")


def _unavailable(name):
    try:
        coopsock._load_backend(name)
    except ImportError as exc:
        return str(exc)
    return None


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
    coopsock._use_backend(request.param)
    yield request.param
    coopsock.get_hub().destroy()


@pytest.fixture
def pair():
    """A connected pair of cooperative AF_UNIX stream sockets."""
    a, b = coopsock.socketpair(stdsocket.AF_UNIX)
    with a, b:
        yield a, b
