"""The coopsock test suite: flat, in the module's section order, on every backend."""

import pytest

import coopsock

BACKENDS = ("pyev", "libev", "selectors")


def _unavailable(name):
    try:
        coopsock._load_backend(name)
    except ImportError as exc:
        return str(exc)
    return None


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    """Run every test on each loop backend present on this machine."""
    reason = _unavailable(request.param)
    if reason:
        pytest.skip(f"the {request.param} backend is absent here: {reason}")
    coopsock._use_backend(request.param)
    yield request.param
    coopsock.get_hub().destroy()
