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


def pytest_collection_modifyitems(items):
    """Mark the tests of an absent backend skipped: -rs then says why in one line per file, not per test."""
    reasons = {name: _unavailable(name) for name in BACKENDS}
    for item in items:
        name = item.callspec.params.get("backend") if hasattr(item, "callspec") else None
        if reasons.get(name):
            item.add_marker(pytest.mark.skip(reason=f"the {name} backend is absent here: {reasons[name]}"))


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
