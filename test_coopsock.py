"""The coopsock test suite: flat, in the module's section order, on every backend."""

import contextlib
import errno
import gc
import math
import os
import re
import select
import socket as stdsocket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
import weakref

import greenlet
import pytest

import coopsock
from conftest import BACKENDS, PYEV_FDS_ON_PYPY, PYPY_WITH_PYEV, _unavailable, drain, fill, settled_fd_count
from coopsock import GreenletExit, LoopExit, Timeout, sleep, spawn

HERE = os.path.dirname(os.path.abspath(__file__))
CLOSED_MESSAGE = "File descriptor was closed in another greenlet"
STAND_INS = ("libev", "selectors")  # the ctypes and pure-Python stand-ins for pyev


# ---------------------------------------------------------------------------
# Helpers and fixtures


def run_python(code, loop=None, timeout=60):
    """Run code in a fresh interpreter (warnings as errors), COOPSOCK_LOOP=loop; return the result."""
    env = dict(os.environ, PYTHONPATH=HERE)
    env.pop("COOPSOCK_LOOP", None)
    if loop is not None:
        env["COOPSOCK_LOOP"] = loop
    return subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _ipv6_missing():
    if not stdsocket.has_ipv6:
        return "this Python was built without IPv6"
    try:
        with stdsocket.socket(stdsocket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"the loopback address ::1 cannot be bound here ({exc})"
    return None


IPV6_MISSING = _ipv6_missing()


@pytest.fixture
def short_dir():
    """A directory with a short path: AF_UNIX socket paths are limited to ~107 bytes."""
    path = tempfile.mkdtemp(prefix="cs")
    yield path
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


@pytest.fixture(params=["AF_INET", "AF_INET6", "AF_UNIX"])
def family(request):
    """Each address family that coopsock must support."""
    if request.param == "AF_INET6" and IPV6_MISSING:
        pytest.skip(IPV6_MISSING)
    return getattr(stdsocket, request.param)


@pytest.fixture
def new_address(family, short_dir):
    """Return a function that returns a fresh bindable loopback address of `family`."""
    names = iter(range(1000))

    def make():
        if family == stdsocket.AF_INET:
            return ("127.0.0.1", 0)
        if family == stdsocket.AF_INET6:
            return ("::1", 0)
        return os.path.join(short_dir, f"s{next(names)}")
    return make


@pytest.fixture
def listener():
    """A cooperative TCP socket listening on 127.0.0.1."""
    with coopsock.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@pytest.fixture
def tcp_pair(listener):
    """A connected pair of cooperative TCP sockets (client, server side)."""
    client = coopsock.create_connection(listener.getsockname())
    server, _ = listener.accept()
    with client, server:
        yield client, server


@pytest.fixture
def full_listener():
    """The address of a TCP listener whose accept queue is full: a further connect() hangs."""
    with stdsocket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        address, fillers = sock.getsockname(), []
        try:
            for _ in range(16):
                filler = coopsock.socket()
                fillers.append(filler)
                filler.settimeout(0.1)
                try:
                    filler.connect(address)
                except stdsocket.timeout:
                    break  # the kernel now drops every new SYN
            else:
                pytest.fail("could not fill the listen queue of a loopback TCP socket")
            yield address
        finally:
            for filler in fillers:
                filler.close()


def ticker(events, count=3):
    """Return a function that records count ticks, yielding to the hub between them."""
    def tick():
        for i in range(count):
            events.append(i)
            sleep(0)
    return tick


def outcome(call):
    """Return ("ok", None) or (exception type, errno) for call()."""
    try:
        call()
    except BaseException as exc:  # noqa: B036 (Timeout and friends count as outcomes too)
        return type(exc), getattr(exc, "errno", None)
    return "ok", None


def assert_fd_number_is_reusable(fd):
    """Put a new socket on fd (a number just closed) and check that waiting on it works."""
    fresh, peer = stdsocket.socketpair()
    if peer.fileno() == fd:
        fresh, peer = peer, fresh
    if fresh.fileno() != fd:
        os.dup2(fresh.fileno(), fd)
        fresh.close()
    else:
        fresh.detach()
    with coopsock.socket(fileno=fd) as reused, peer:
        reader = spawn(reused.recv, 5)
        sleep(0)
        peer.sendall(b"fresh")
        assert reader.get(timeout=5) == b"fresh"


# ---------------------------------------------------------------------------
# The loop layer: backend choice


def test_the_example_that_opens_help_runs_as_written(backend):
    doc = coopsock.__doc__
    example = doc[doc.index("Example::") + len("Example::"):doc.index("\nThe file, top to bottom")]
    result = run_python(example, loop=backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "b'hello'\n"


def test_load_backend_returns_its_name_and_a_pyev_like_namespace(backend):
    name, ev = coopsock._load_backend(backend)
    assert name == backend
    for attr in ("Loop", "Io", "Timer", "Async"):
        assert callable(getattr(ev, attr)), attr
    assert issubclass(ev.Error, Exception)
    assert (ev.EV_READ, ev.EV_WRITE, ev.EV_TIMER, ev.EVRUN_NOWAIT, ev.EVRUN_ONCE) == (1, 2, 0x100, 1, 2)


def test_load_backend_without_a_choice_takes_the_first_that_works():
    first = next(name for name in BACKENDS if _unavailable(name) is None)
    assert coopsock._load_backend("")[0] == first


def test_load_backend_rejects_an_unknown_name():
    with pytest.raises(ImportError, match="unset COOPSOCK_LOOP"):
        coopsock._load_backend("epoll")


def test_a_forced_backend_that_cannot_load_names_the_fix(monkeypatch):
    with pytest.raises(ImportError, match="^COOPSOCK_LOOP='epoll' names no loop backend: use pyev, libev or "
                                          "selectors, or unset COOPSOCK_LOOP$"):
        coopsock._load_backend("epoll")
    monkeypatch.setitem(sys.modules, "pyev", None)  # as if pyev were not installed
    with pytest.raises(ImportError, match=r"^COOPSOCK_LOOP=pyev cannot be used \(.*\): build and install pyev, "
                                          r"or unset COOPSOCK_LOOP$"):
        coopsock._load_backend("pyev")


def test_backend_names_the_backend_in_use(backend):
    assert coopsock.BACKEND == backend
    assert coopsock._pyev.__name__ == backend
    hub = coopsock.get_hub()
    assert isinstance(hub.loop, coopsock._pyev.Loop)


def test_coopsock_loop_forces_the_backend(backend):
    result = run_python("import coopsock; print(coopsock.BACKEND)", loop=backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == backend


@pytest.mark.parametrize("value", ["pyev", "nonsense"])
def test_coopsock_loop_that_cannot_load_fails_the_import_with_a_fix(value):
    if value == "pyev" and _unavailable("pyev") is None:
        pytest.skip("pyev is installed here, so forcing it works")
    result = run_python("import coopsock", loop=value)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:"), result.stderr
    assert "unset COOPSOCK_LOOP" in last_line
    if value == "pyev":
        assert "install pyev" in last_line


def test_forced_libev_without_libev_says_what_to_install():
    no_libev = """
        import ctypes, sys
        def no_library(*args, **kwargs):
            raise OSError("no such library")
        ctypes.CDLL = ctypes.PyDLL = no_library
        sys.modules["pyev"] = None  # pyev links libev: a machine without libev has no pyev either
    """
    result = run_python(no_libev + "\n        import coopsock", loop="libev")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:") and "libev4" in last_line and "unset COOPSOCK_LOOP" in last_line
    # Unforced, a machine without libev quietly gets the selectors loop (-W error: no warning).
    result = run_python(no_libev + "\n        import coopsock; print(coopsock.BACKEND)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "selectors"


# ---------------------------------------------------------------------------
# The loop layer: watchers, straight through the pyev-like namespace


@pytest.fixture
def ev():
    return coopsock._pyev


@pytest.fixture
def loop(ev):
    return ev.Loop()


def test_io_watcher_is_level_triggered(ev, loop, pair):
    a, b = pair
    fired = []
    watcher = ev.Io(a.fileno(), ev.EV_READ, loop, lambda w, revents: fired.append(revents))
    watcher.start()
    assert watcher.active
    loop.start(ev.EVRUN_NOWAIT)
    assert fired == []  # nothing to read yet
    b.sendall(b"x")
    loop.start(ev.EVRUN_NOWAIT)
    loop.start(ev.EVRUN_NOWAIT)
    assert fired == [ev.EV_READ, ev.EV_READ]  # still readable: it fires again
    a.recv(1)
    loop.start(ev.EVRUN_NOWAIT)
    assert len(fired) == 2
    watcher.stop()


def test_io_watcher_rejects_a_negative_fd_and_an_illegal_event_mask(ev, loop, pair, backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own checks: real pyev accepts events=0")
    a, _ = pair
    with pytest.raises(ValueError):
        ev.Io(-1, ev.EV_READ, loop, lambda w, revents: None)
    for events in (0, ev.EV_TIMER, ev.EV_READ | 0x400):
        with pytest.raises(ev.Error, match="illegal event mask"):
            ev.Io(a.fileno(), events, loop, lambda w, revents: None)


def test_timer_one_shot_fires_once_and_stops(ev, loop):
    fired = []
    started = time.monotonic()
    loop.update()  # the timer counts from the loop's cached time: now at or after `started`
    timer = ev.Timer(0.01, 0.0, loop, lambda w, revents: fired.append(revents))
    timer.start()
    while not fired and time.monotonic() - started < 5:
        loop.start(ev.EVRUN_ONCE)
    assert time.monotonic() - started >= 0.009
    assert fired == [ev.EV_TIMER]
    assert not timer.active
    timer.stop()  # a no-op on a timer that stopped itself
    timer.set(0.0, 0.0)  # a stopped timer can be set and started again
    timer.start()
    loop.start(ev.EVRUN_ONCE)
    assert fired == [ev.EV_TIMER] * 2


def test_async_sent_from_another_thread_wakes_a_blocked_loop(ev, loop):
    fired = []

    def on_async(watcher, revents):
        fired.append(revents)
        watcher.stop()
        guard.stop()

    def on_guard(watcher, revents):
        fired.append("guard")
        wake.stop()
    wake = ev.Async(loop, on_async)
    guard = ev.Timer(10.0, 0.0, loop, on_guard)
    wake.start()
    guard.start()
    sender = threading.Timer(0.05, wake.send)
    sender.start()
    while not fired:
        loop.start(ev.EVRUN_ONCE)  # blocks in the poll until the other thread sends
    sender.join()
    assert fired == [ev.EV_ASYNC]


def test_set_while_active_raises_the_backend_error(ev, loop, pair, backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own check: the contract only sets stopped watchers")
    a, _ = pair
    timer = ev.Timer(10.0, 0.0, loop, lambda w, revents: None)
    io = ev.Io(a.fileno(), ev.EV_READ, loop, lambda w, revents: None)
    timer.start()
    io.start()
    with pytest.raises(ev.Error, match="active"):
        timer.set(1.0, 0.0)
    with pytest.raises(ev.Error, match="active"):
        io.set(a.fileno(), ev.EV_WRITE)
    timer.stop()
    io.stop()
    timer.set(1.0, 0.0)
    io.set(a.fileno(), ev.EV_WRITE)


def test_callback_replaced_while_active_is_the_one_called(ev, loop, pair):
    a, b = pair
    calls = []
    io = ev.Io(a.fileno(), ev.EV_READ, loop, lambda w, revents: calls.append(("old", revents)))
    io.start()
    io.callback = lambda w, revents: calls.append(("new", revents))
    b.sendall(b"x")
    loop.start(ev.EVRUN_NOWAIT)
    io.stop()
    assert calls == [("new", ev.EV_READ)]


def test_double_start_and_double_stop_are_no_ops(ev, loop, pair):
    a, _ = pair
    watchers = [ev.Timer(10.0, 0.0, loop, lambda w, revents: None),
                ev.Io(a.fileno(), ev.EV_WRITE, loop, lambda w, revents: None),
                ev.Async(loop, lambda w, revents: None)]
    for watcher in watchers:
        watcher.start()
        watcher.start()
        assert watcher.active
        watcher.stop()
        assert not watcher.active
        watcher.stop()
        assert not watcher.active


def test_an_active_watcher_nobody_references_still_fires_on_a_stand_in(backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own behaviour: real pyev frees an active watcher without stopping it")
    result = run_python("""
        import gc, coopsock
        ev = coopsock._pyev
        loop = ev.Loop()
        got = []
        ev.Timer(0.001, 0.0, loop, lambda watcher, revents: got.append(revents)).start()
        gc.collect()
        while not got:
            loop.start(ev.EVRUN_ONCE)
        assert got == [ev.EV_TIMER], got
        print("survived")
    """, loop=backend)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr}"
    assert result.stdout.strip() == "survived"


def test_a_greenlet_switch_inside_a_watcher_callback(ev, loop):
    got = []
    timer = ev.Timer(0.0, 0.0, loop, lambda w, r: got.append(greenlet.greenlet(lambda: "back").switch()))
    timer.start()
    while not got:
        loop.start(ev.EVRUN_ONCE)
    assert got == ["back"]


def test_waiting_on_a_stale_fd_number_never_kills_the_process(backend):
    # The closed socket's number goes to the loop the hub creates next (its
    # epoll fd, with libev): epoll_ctl() refuses it with EINVAL, on which
    # Debian's libev asserts. Whatever wait_read() does then, it must not abort.
    result = run_python("""
        import socket, coopsock
        sock = socket.socket()
        fd = sock.fileno()
        sock.close()
        try:
            coopsock.wait_read(fd, timeout=0.1)
        except Exception:  # an error is fine here; a dead process is not
            pass
        print("survived")
    """, loop=backend)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-300:]}"
    assert result.stdout.strip() == "survived"



class PollLoop(coopsock._SelLoop):
    """The selectors stand-in as it runs where the OS has no epoll (macOS, the BSDs): on poll(2)."""

    _Poller, _IN, _OUT, _PER_SECOND, _ABSENT = coopsock._std_poll, select.POLLIN, select.POLLOUT, 1000, KeyError


@pytest.mark.parametrize("flavour", ["epoll", "poll"])
def test_the_selectors_loop_watches_a_new_file_on_the_number_of_one_closed_while_watched(backend, flavour):
    # epoll's set holds files, not fd numbers: closing an fd takes its file
    # out of the set behind the loop's back, while the loop's record still
    # says the number is watched. (The loop on the selectors module missed
    # the new file: with the same events, its modify() never reached epoll.)
    if backend != "selectors":
        pytest.skip("the selectors stand-in's own registration")
    ev = coopsock._pyev
    loop = ev.Loop() if flavour == "epoll" else PollLoop()
    fired = []
    r, w = os.pipe()
    old = ev.Io(r, ev.EV_READ, loop, lambda watcher, revents: fired.append(watcher))
    old.start()
    new_r, new_w = os.pipe()
    os.dup2(new_r, r)  # the old file closes, the new one takes its number: old is still started
    os.close(new_r)
    new = ev.Io(r, ev.EV_READ, loop, lambda watcher, revents: fired.append(watcher))
    try:
        new.start()  # the same fd number and events as old's: only the kernel knows the file is new
        os.write(new_w, b"x")
        loop.start(ev.EVRUN_NOWAIT)
        assert fired == [old, new]
        new.stop()
        old.stop()
        old.start()  # as the loop's user should have done: stop before close, start after
        loop.start(ev.EVRUN_NOWAIT)
        assert fired == [old, new, old]
        old.stop()
        loop.start(ev.EVRUN_NOWAIT)
        assert fired == [old, new, old]  # and stopped, it is out of the kernel's set: no spurious call
    finally:
        for fd in (r, w, new_w):
            os.close(fd)
        loop._close()


def test_the_selectors_loop_on_poll(backend, monkeypatch):
    # Where the OS has no epoll the stand-in runs on poll(2). CI runs Linux
    # only: this is where that flavour is tested, through the hub and bare.
    if backend != "selectors":
        pytest.skip("the selectors stand-in's own poll flavour")
    monkeypatch.setattr(coopsock._pyev, "Loop", PollLoop)
    coopsock.get_hub().destroy()
    assert type(coopsock.get_hub().loop) is PollLoop
    a, b = coopsock.socketpair()
    with a, b:
        data = os.urandom(1 << 20)  # more than the buffers hold: waits for writing and for reading
        sender = spawn(b.sendall, data)
        got = bytearray()
        while len(got) < len(data):
            got += a.recv(65536)
        sender.join()
        assert got == data
        a.settimeout(0.05)
        started = time.monotonic()
        with pytest.raises(stdsocket.timeout):
            a.recv(1)
        assert time.monotonic() - started >= 0.04
    fd = os.open(__file__, os.O_RDONLY)
    try:
        coopsock.wait_read(fd, timeout=5)  # poll(2) calls a regular file ready, as epoll's refusal does
    finally:
        os.close(fd)
    # Bare: a wake-up from another thread, and a reset (what a forked child does) that keeps the watchers.
    ev, loop, fired = coopsock._pyev, PollLoop(), []
    wakeup = ev.Async(loop, lambda watcher, revents: fired.append(revents))
    wakeup.start()
    sender = threading.Timer(0.05, wakeup.send)
    sender.start()
    while not fired:
        loop.start(ev.EVRUN_ONCE)
    sender.join()
    r, w = os.pipe()
    io = ev.Io(r, ev.EV_READ, loop, lambda watcher, revents: fired.append(revents))
    io.start()
    loop.reset()
    os.write(w, b"x")
    loop.start(ev.EVRUN_ONCE)
    assert fired == [ev.EV_ASYNC, ev.EV_READ]
    io.stop()
    wakeup.stop()
    loop._close()
    os.close(r)
    os.close(w)

def wait_until_exited_unreaped(pid):
    """Return once the child pid has exited, without reaping it (its exit code stays to be read)."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    deadline = time.monotonic() + 10  # PyPy has no os.waitid: Linux shows the unreaped child as a zombie
    with open(f"/proc/{pid}/stat") as stat:
        while stat.read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, f"child {pid} still runs after 10 s"
            time.sleep(0.001)
            stat.seek(0)


def test_popen_wait_gets_the_real_exit_code_while_a_hub_runs():
    sleep(0.001)  # the hub and its loop exist and have polled
    with subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"]) as child:
        wait_until_exited_unreaped(child.pid)  # it exited; nobody reaped it yet
        sleep(0.05)  # run the loop: a SIGCHLD handler of libev's default loop would reap it now
        assert child.wait(timeout=10) == 7


@pytest.mark.skipif(PYPY_WITH_PYEV, reason=PYEV_FDS_ON_PYPY)
def test_a_dropped_loop_and_a_destroyed_hub_close_what_they_opened(ev):
    def use_a_hub():
        sleep(0.001)
        coopsock.get_hub().destroy()
    before = settled_fd_count() if os.path.isdir("/proc/self/fd") else None  # what earlier tests dropped goes first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        loop = ev.Loop()
        del loop
        thread = threading.Thread(target=use_a_hub)  # a hub nothing else holds on to
        thread.start()
        thread.join(10)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    if before is not None:
        assert settled_fd_count() == before


# ---------------------------------------------------------------------------
# The hub


def test_importing_coopsock_creates_no_hub(backend):
    result = run_python("""
        import gc, threading, coopsock
        print(sum(isinstance(o, coopsock.Hub) for o in gc.get_objects()), threading.active_count())
    """, loop=backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1"]


def test_get_hub_is_one_hub_per_thread():
    hub = coopsock.get_hub()
    assert isinstance(hub, coopsock.Hub) and coopsock.get_hub() is hub
    seen = []

    def other_thread():
        seen.append(coopsock.get_hub())
        seen.append(coopsock.get_hub())
        coopsock.get_hub().destroy()
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert seen[0] is seen[1] and seen[0] is not hub


def test_blocking_inside_the_hub_raises_blocking_switch_out_error(pair):
    hub, caught = coopsock.get_hub(), []
    entry = hub._entry(pair[0].fileno())

    def from_the_hub():
        for block in (lambda: hub.wait(entry, coopsock._EV_READ), lambda: sleep(0.01), lambda: sleep(0), hub.switch):
            try:
                block()
            except coopsock.BlockingSwitchOutError as exc:
                caught.append(exc)
    hub.run_callback(from_the_hub)
    sleep(0)
    assert len(caught) == 4
    assert not any(watcher is not None and watcher.active for watcher in entry.watchers)
    assert all(isinstance(exc, AssertionError) and "inside the hub" in str(exc) for exc in caught)


def test_run_callback_runs_in_order_and_stop_cancels():
    hub, calls = coopsock.get_hub(), []
    hub.run_callback(calls.append, 1)
    cancelled = hub.run_callback(calls.append, 2)
    hub.run_callback(calls.append, 3)
    cancelled.stop()
    sleep(0)
    assert calls == [1, 3]


def test_spawn_runs_the_function_and_keeps_its_value():
    def add(x, y=0):
        sleep(0.001)
        return x + y
    g = spawn(add, 1, y=2)
    assert isinstance(g, coopsock.Greenlet)
    assert not g.ready() and not g.dead and not g.successful()
    assert g.value is None and g.exception is None
    assert g.get() == 3
    assert g.ready() and g.dead and g.successful() and g.value == 3 and g.exception is None


def test_spawn_passes_every_arity_and_keyword_as_given():
    # run() calls the usual arities without *args (a C stack frame less per parked greenlet)
    def arguments(*args, **kwargs):
        return args, kwargs
    calls = [(), (1,), (1, 2), (1, 2, 3), ((),), (None, None)]
    for args in calls:
        assert spawn(arguments, *args).get() == (args, {})
    assert spawn(arguments, 1, key=2).get() == ((1,), {"key": 2})
    assert spawn(arguments, key=2).get() == ((), {"key": 2})
    with pytest.raises(TypeError):  # the wrong arity fails in the greenlet, as a direct call would
        spawn(lambda x: x).get()


@pytest.mark.loop_independent
@pytest.mark.skipif(sys.implementation.name == "pypy", reason="PyPy frees nothing but by its collector")
def test_a_killed_greenlet_is_freed_without_the_garbage_collector():
    # Its GreenletExit value kept a traceback holding its frame and so the
    # greenlet: a cycle, so 20,000 killed greenlets waited for collections
    # (and the linear-time test of leaving waiters failed on their cost).
    g = spawn(coopsock.Event().wait)
    sleep(0)
    g.kill()
    sleep(0)  # the hub's pass that calls its links
    assert isinstance(g.value, GreenletExit)
    gone = weakref.ref(g)
    gc.disable()
    try:
        del g
        assert gone() is None, gc.get_referrers(gone())
    finally:
        gc.enable()


def test_get_and_join_with_a_timeout_on_an_unfinished_greenlet():
    g = spawn(sleep, 10)
    with pytest.raises(Timeout):
        g.get(block=False)
    started = time.monotonic()
    with pytest.raises(Timeout):
        g.get(timeout=0.05)
    assert g.join(timeout=0.05) is None
    assert 0.09 <= time.monotonic() - started < 5
    assert not g.ready()
    g.kill()
    assert g.dead and g.ready() and g.successful() and isinstance(g.value, GreenletExit)


def test_get_raises_what_the_greenlet_died_of():
    g = spawn(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        g.get()
    assert g.ready() and g.dead and not g.successful()
    assert isinstance(g.exception, ZeroDivisionError)


def test_spawn_later_starts_after_the_delay():
    order, started = [], time.monotonic()
    late = coopsock.spawn_later(0.05, order.append, "late")
    soon = spawn(order.append, "soon")
    assert coopsock.joinall([late, soon], timeout=5) == [late, soon]
    assert order == ["soon", "late"]
    assert time.monotonic() - started >= 0.045


def test_kill_a_running_greenlet():
    cleaned = []

    def parked():
        try:
            sleep(10)
        finally:
            cleaned.append(True)
    g = spawn(parked)
    sleep(0)
    g.kill()
    assert g.dead and cleaned == [True] and isinstance(g.value, GreenletExit) and g.successful()
    h = spawn(sleep, 10)
    sleep(0)
    h.kill(ValueError("stop"), block=False)
    assert not h.ready()  # not blocking: it is thrown in on the next pass
    h.join(timeout=5)
    assert isinstance(h.exception, ValueError) and not h.successful()

    def stubborn():
        while True:
            try:
                sleep(10)
            except GreenletExit:
                pass
    s = spawn(stubborn)
    sleep(0)
    started = time.monotonic()
    s.kill(timeout=0.05)  # gives up waiting after the timeout
    assert 0.04 <= time.monotonic() - started < 2 and not s.dead
    s.kill(LookupError, block=False)  # (not SystemError: that one is raised in the main greenlet too, as gevent's)
    s.join(timeout=5)
    assert s.dead and isinstance(s.exception, LookupError)


@pytest.mark.parametrize("start", ["spawn", "spawn_later"])
def test_kill_before_the_greenlet_starts(start):
    ran = []
    sleep(0)  # the hub is running
    for _ in range(2):
        g = spawn(ran.append, 1) if start == "spawn" else coopsock.spawn_later(0.01, ran.append, 1)
        g.kill()  # returns at once, to the caller
        assert g.dead and g.ready() and isinstance(g.value, GreenletExit)
    sleep(0.05)
    assert ran == []


def test_module_kill_works_on_greenlets_and_raw_greenlets():
    g = spawn(sleep, 10)
    sleep(0)
    coopsock.kill(g, ValueError)
    assert isinstance(g.exception, ValueError)
    killed = []

    def parked():
        try:
            sleep(10)
        except GreenletExit:
            killed.append(True)
    raw = greenlet.greenlet(parked, parent=coopsock.get_hub())
    coopsock.get_hub().run_callback(raw.switch)
    sleep(0)
    coopsock.kill(raw)
    sleep(0)
    assert raw.dead and killed == [True]


def test_joinall_with_timeout_returns_the_finished_ones():
    fast, slow = spawn(lambda: 1), spawn(sleep, 10)
    started = time.monotonic()
    assert coopsock.joinall([fast, slow], timeout=0.05) == [fast]
    assert 0.04 <= time.monotonic() - started < 5
    slow.kill()
    assert coopsock.joinall([fast, slow]) == [fast, slow]


def test_joinall_with_raise_error_raises_as_soon_as_one_fails():
    def fail():
        sleep(0.001)
        raise ValueError("first failure")
    slow = spawn(sleep, 10)
    with pytest.raises(ValueError, match="first failure"):
        coopsock.joinall([slow, spawn(fail)], raise_error=True)
    assert not slow.ready()
    slow.kill()


def test_sleep_without_argument_and_joinall_of_nothing():
    sleep()
    assert coopsock.joinall([]) == []


def test_sleep_zero_lets_the_other_greenlets_run():
    order = []

    def worker(name):
        for i in range(3):
            order.append((name, i))
            sleep(0)
    coopsock.joinall([spawn(worker, "a"), spawn(worker, "b")])
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_a_sleep_zero_loop_does_not_starve_io(pair):
    a, b = pair
    spinning = []

    def spinner():
        give_up = time.monotonic() + 5
        while not spinning or spinning[-1] != "stop":
            if time.monotonic() > give_up:
                spinning.append("gave up")
                return
            sleep(0)
    spinning_greenlet = spawn(spinner)

    def sender():
        for _ in range(3):
            sleep(0)
        b.sendall(b"data")
    spawn(sender)
    data = a.recv(4)  # the hub must poll I/O although a greenlet always has work
    spinning.append("stop")
    spinning_greenlet.join()
    assert data == b"data" and spinning == ["stop"]


def _burn(seconds):
    """Compute for `seconds` of wall time, as a TLS handshake or a driver's parsing does between waits."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


def _longest_tick_gap_during(burst):
    """Run burst() beside a greenlet sleeping 1 ms in a loop; return (longest gap between its wake-ups, burst's time)."""
    gaps, done = [], []

    def ticker():
        last = time.monotonic()
        while not done:
            sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    ticking = spawn(ticker)
    sleep(0.01)  # ticking
    started = time.monotonic()
    burst()
    elapsed = time.monotonic() - started
    done.append(True)
    ticking.join()
    return max(gaps), elapsed


@pytest.mark.parametrize("woken_by", ["fds", "callbacks"])
def test_a_burst_of_busy_greenlets_lets_timers_in_between(woken_by):
    # 60 greenlets, woken at once (their fds ready together, or spawned
    # together), each computing 3 ms: one pass of the hub used to run them all
    # (180 ms) before a timer could fire; it now lets timers in every 5 ms.
    # The bound is a share of the burst's own time, so a slow machine scales both.
    count, each = 60, 0.003
    pairs = [coopsock.socketpair() for _ in range(count)] if woken_by == "fds" else []

    def busy(i):
        if pairs:
            assert pairs[i][0].recv(1) == b"x"
        _burn(each)
        return i

    def burst():
        if pairs:
            waiting = [spawn(busy, i) for i in range(count)]
            sleep(0)  # each started, and parked on its fd
            assert coopsock.get_hub().stats()["waiting"] >= count
            for _, b in pairs:
                b.send(b"x")
        else:
            waiting = [spawn(busy, i) for i in range(count)]
        assert [g.get(timeout=10) for g in waiting] == list(range(count))
    try:
        longest, elapsed = _longest_tick_gap_during(burst)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert elapsed >= count * each
    assert longest < elapsed / 4, f"a timer waited {longest * 1000:.0f} ms during a {elapsed * 1000:.0f} ms burst"


@pytest.mark.parametrize("woken_by", ["a pass", "fds"])
def test_timers_run_in_deadline_order_even_when_a_pass_runs_out_of_time(woken_by):
    # Ten timers due at once, each computing 2 ms: a pass runs a few, and the
    # rest wait for the next (or for the gap between two fired fds); a timer
    # that falls due meanwhile used to go to the front, ahead of the older ones.
    order, pairs = [], [coopsock.socketpair() for _ in range(8)] if woken_by == "fds" else []

    def due(tag, seconds=0.002):
        _burn(seconds)
        order.append(tag)

    def read(i):
        pairs[i][0].recv(1)
        _burn(0.002)
    try:
        readers = [spawn(read, i) for i in range(len(pairs))]
        sleep(0)  # each parked on its fd
        for i in range(10):
            coopsock.spawn_later(0, due, i)
        coopsock.spawn_later(0.004, due, "late", 0)
        for _, b in pairs:
            b.send(b"x")
        _burn(0.001)  # the ten fall due, not yet "late"
        sleep(0.05)
        coopsock.joinall(readers, timeout=10)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert order == [*range(10), "late"]


def test_an_exception_in_a_greenlet_is_printed_and_kept_and_the_hub_carries_on(capsys):
    def fail():
        raise ZeroDivisionError("oops in a greenlet")
    g = spawn(fail)
    g.join()
    assert isinstance(g.exception, ZeroDivisionError) and not g.successful()
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops in a greenlet" in err
    assert spawn(lambda: "still running").get(timeout=5) == "still running"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_a_greenlet_is_raised_in_the_main_greenlet(exc):
    def interrupted():
        raise exc("from a greenlet")
    g = spawn(interrupted)
    started = time.monotonic()
    with pytest.raises(exc, match="from a greenlet"):
        sleep(5)
    assert time.monotonic() - started < 2
    assert g.dead
    coopsock.get_hub().run_callback(interrupted)  # raised in a hub callback, too
    with pytest.raises(exc, match="from a greenlet"):
        sleep(5)
    assert time.monotonic() - started < 2
    assert spawn(lambda: "still running").get(timeout=5) == "still running"


def test_loop_exit_when_nothing_can_wake_the_main_greenlet():
    with pytest.raises(LoopExit, match="would block forever"):
        coopsock.get_hub().switch()


def test_loop_exit_when_joining_a_greenlet_that_nobody_will_wake():
    forever = spawn(coopsock.get_hub().switch)  # parks with no watcher and no callback
    with pytest.raises(LoopExit, match="would block forever"):
        forever.join()
    forever.kill()
    assert forever.dead


def test_hubs_in_several_threads_at_once():
    count = 3
    barrier, results = threading.Barrier(count, timeout=10), {}

    def work(i):
        try:
            hub = coopsock.get_hub()
            barrier.wait()  # every thread has a live hub at the same time
            a, b = coopsock.socketpair(stdsocket.AF_UNIX)
            with a, b:
                reader = spawn(a.recv, 16)
                sleep(0.01)
                b.sendall(b"thread %d" % i)
                assert coopsock.getaddrinfo("127.0.0.1", i)[0][4] == ("127.0.0.1", i)  # an Async wakes this hub
                results[i] = (hub, coopsock.get_hub(), reader.get(timeout=5))
        except BaseException as exc:  # noqa: B036 (report anything to the main thread)
            results[i] = exc
        finally:
            coopsock.get_hub().destroy()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    sleep(0.01)  # the main thread's hub runs meanwhile
    for thread in threads:
        thread.join(10)
    assert sorted(results) == list(range(count)), results
    hubs = set()
    for i, (hub, same_hub, data) in results.items():
        assert hub is same_hub and data == b"thread %d" % i
        hubs.add(id(hub))
    assert len(hubs) == count and id(coopsock.get_hub()) not in hubs


def test_the_hub_works_in_a_forked_child(pair):
    a, b = pair
    coopsock.getaddrinfo("127.0.0.1", 80)  # the parent's lookup threads exist before the fork
    sleep(0.001)  # and so do its hub and loop
    with warnings.catch_warnings():  # Python 3.12+ warns when forking a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            sleep(0.01)
            x, y = coopsock.socketpair(stdsocket.AF_UNIX)
            with x, y, Timeout(5):
                reader = spawn(x.recv, 5)
                sleep(0)
                y.sendall(b"child")
                code = 0 if reader.get(timeout=5) == b"child" else 2
                if coopsock.getaddrinfo("127.0.0.1", 80)[0][4] != ("127.0.0.1", 80):  # a new worker pool
                    code = 3
        except BaseException:  # noqa: B036
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    reader = spawn(a.recv, 6)  # the parent's loop keeps working too
    sleep(0)
    b.sendall(b"parent")
    assert reader.get(timeout=5) == b"parent"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("target", ["main thread", "other thread", "busy hub"])
def test_sigint_while_the_hub_is_blocked_raises_keyboard_interrupt_in_main(backend, target):
    result = run_python(f"""
        import signal, threading, time, coopsock
        target = {target!r}
        main = threading.main_thread().ident

        def interrupt():
            # "other thread": the signal lands in this thread; only the wakeup fd tells the hub.
            signal.pthread_kill(threading.get_ident() if target == "other thread" else main, signal.SIGINT)

        if target == "busy hub":  # callbacks run all the time: the interrupt can land inside one
            a, b = coopsock.socketpair(coopsock.AF_UNIX)

            def ping(sock):
                while True:
                    sock.sendall(sock.recv(1))
            pingers = [coopsock.spawn(ping, a), coopsock.spawn(ping, b)]
            a.sendall(b"x")
        delays = []
        for _ in range(3):  # never lost, however often
            timer = threading.Timer(0.1, interrupt)
            started = time.monotonic()
            timer.start()
            try:
                coopsock.sleep(10)
            except KeyboardInterrupt:
                delays.append(time.monotonic() - started)
            timer.join()
        if target == "busy hub":
            for g in pingers:
                g.kill()
            a.close()
            b.close()
        print(len(delays), max(delays))
    """, loop=backend)
    assert result.returncode == 0, result.stderr
    count, slowest = result.stdout.split()
    assert count == "3" and float(slowest) < 3


# ---------------------------------------------------------------------------
# Timeout


def test_timeout_is_a_base_exception_that_except_exception_does_not_catch():
    assert issubclass(Timeout, BaseException) and not issubclass(Timeout, Exception)
    with pytest.raises(Timeout), Timeout(0.01):
        try:
            sleep(5)
        except Exception:
            pytest.fail("except Exception caught a Timeout")


def test_timeout_start_raises_the_instance_itself():
    timeout = Timeout(0.02)
    assert timeout.seconds == 0.02 and not timeout.pending
    timeout.start()
    assert timeout.pending
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        sleep(5)
    assert info.value is timeout and not timeout.pending
    assert 0.015 <= time.monotonic() - started < 3


def test_timeout_start_new_cancel_and_close():
    timeout = Timeout.start_new(0.01)
    assert isinstance(timeout, Timeout) and timeout.pending and timeout.seconds == 0.01
    timeout.cancel()
    assert not timeout.pending
    sleep(0.03)  # it would have fired by now
    closed = Timeout.start_new(0.01)
    closed.close()
    assert not closed.pending
    sleep(0.03)
    timeout.cancel()  # cancelling again is harmless


def test_timeout_as_a_context_manager():
    with pytest.raises(Timeout) as info, Timeout(0.01) as timeout:
        sleep(5)
    assert info.value is timeout and not timeout.pending
    with Timeout(5) as timeout:
        sleep(0)
    assert not timeout.pending  # left early: cancelled


def test_silent_timeout_suppresses_only_itself():
    started = time.monotonic()
    with Timeout(0.01, False):
        sleep(5)
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError), Timeout(5, False):
        raise ValueError("not the timeout")
    with pytest.raises(Timeout) as info, Timeout(0.01) as outer, Timeout(5, False):
        sleep(5)
    assert info.value is outer


def test_timeout_exception_may_be_a_class_an_instance_or_a_message():
    with pytest.raises(ValueError), Timeout(0.01, ValueError):
        sleep(5)
    error = ValueError("this one")
    with pytest.raises(ValueError) as info, Timeout(0.01, error):
        sleep(5)
    assert info.value is error
    with pytest.raises(Timeout, match="^0.01 seconds: too slow$") as info, Timeout(0.01, "too slow") as timeout:
        sleep(5)
    assert info.value is timeout


def test_timeout_none_never_fires():
    timeout = Timeout.start_new(None)
    assert not timeout.pending
    sleep(0.02)
    with Timeout(None):
        sleep(0.02)
    assert coopsock.with_timeout(None, lambda: "done") == "done"


def test_timeout_zero_fires_at_the_next_loop_pass():
    with Timeout(0):
        pass  # code that does not yield is not interrupted
    started = time.monotonic()
    with pytest.raises(Timeout), Timeout(0):
        sleep(5)
    assert time.monotonic() - started < 1
    passes = 0
    with pytest.raises(Timeout), Timeout(0):
        while passes < 100_000:
            sleep(0)
            passes += 1
    assert passes < 100_000  # a greenlet that only ever yields with sleep(0) is interrupted too


def test_nested_timeouts_each_raise_their_own():
    with Timeout(5) as outer:
        with pytest.raises(Timeout) as info, Timeout(0.01) as inner:
            sleep(5)
        assert info.value is inner
        assert outer.pending
    with pytest.raises(Timeout) as info, Timeout(0.01) as outer, Timeout(5) as inner:
        sleep(5)
    assert info.value is outer and not inner.pending


def test_restarting_an_active_timeout_says_to_cancel_first():
    timeout = Timeout.start_new(5)
    with pytest.raises(RuntimeError, match="cancel"):
        timeout.start()
    timeout.cancel()
    timeout.start()  # fine once cancelled
    assert timeout.pending
    timeout.cancel()


def test_starting_a_started_timeout_names_it_and_says_to_cancel_it_first():
    timeout = Timeout(5)
    with timeout, pytest.raises(RuntimeError, match=" is already started; cancel it first$") as info:
        timeout.start()
    assert str(info.value).startswith("<Timeout seconds=5 ")  # which one


def test_with_timeout():
    assert coopsock.with_timeout(5, lambda x, y=0: x + y, 1, y=2) == 3
    with pytest.raises(Timeout):
        coopsock.with_timeout(0.01, sleep, 5)
    assert coopsock.with_timeout(0.01, sleep, 5, timeout_value="late") == "late"
    assert coopsock.with_timeout(0.01, sleep, 5, timeout_value=None) is None


def test_timeout_in_a_spawned_greenlet_interrupts_that_greenlet_only():
    g = spawn(coopsock.with_timeout, 0.01, sleep, 5, timeout_value="late")
    sleep(0.05)
    assert g.get(timeout=5) == "late"


def test_timeout_with_ref_false_does_not_keep_the_loop_alive():
    timeout = Timeout.start_new(5, ref=False)
    started = time.monotonic()
    with pytest.raises(LoopExit):
        coopsock.get_hub().switch()
    assert time.monotonic() - started < 3
    timeout.cancel()
    with pytest.raises(Timeout), Timeout(0.01, ref=False):  # it fires while something else keeps the loop alive
        sleep(5)
    with pytest.raises(Timeout), Timeout(0.01):  # ref=True keeps the loop alive on its own
        coopsock.get_hub().switch()


def test_an_expired_ref_false_timeout_leaves_the_loop_reference_count_alone(pair, hang_guard):
    hang_guard.cancel()  # no other timer may be pending: it would hide the miscount
    a, b = pair
    with pytest.raises(Timeout), Timeout(0.01, ref=False):
        a.recv(1)
    sender = threading.Timer(0.1, b.sendall, (b"x",))  # only another thread can end this wait
    sender.start()
    try:
        assert a.recv(1) == b"x"  # not LoopExit: the watcher on a is active and referenced
    finally:
        sender.join()


def test_sleep_lasts_at_least_the_given_time_and_sleepers_wake_in_deadline_order():
    for seconds in (0.001, 0.01, 0.05):
        started = time.monotonic()
        sleep(seconds)
        assert seconds <= time.monotonic() - started < seconds + 1
    woken = []

    def sleeper(seconds):
        sleep(seconds)
        woken.append(seconds)
    coopsock.joinall([spawn(sleeper, seconds) for seconds in (0.03, 0.01, 0.02, 0.0)])
    assert woken == [0.0, 0.01, 0.02, 0.03]


def test_many_cancelled_timeouts_do_not_disturb_the_others(hang_guard):
    hang_guard.cancel()
    timeouts = [Timeout.start_new(0.5 + i / 1000) for i in range(1000)]
    sleep(0)  # the hub has seen them
    for timeout in timeouts:
        timeout.cancel()
    with pytest.raises(Timeout) as info, Timeout(0.02) as survivor:
        sleep(5)
    assert info.value is survivor
    started = time.monotonic()
    with pytest.raises(LoopExit):  # the cancelled ones keep nothing alive
        coopsock.get_hub().switch()
    assert time.monotonic() - started < 0.4


# ---------------------------------------------------------------------------
# The cooperative socket: the API, for every family


def test_stream_socket_api(family, new_address):
    with coopsock.socket(family, stdsocket.SOCK_STREAM) as server:
        assert isinstance(server, stdsocket.socket) and isinstance(server, coopsock.socket)
        assert (server.family, server.type, server.proto) == (family, stdsocket.SOCK_STREAM, 0)
        server.bind(new_address())
        server.listen()
        with coopsock.socket(family, stdsocket.SOCK_STREAM) as client:

            def talk():
                client.connect(server.getsockname())
                client.sendall(b"ping")
                return client.recv(4)
            talker = spawn(talk)
            conn, _ = server.accept()
            with conn:
                assert isinstance(conn, coopsock.socket) and conn.gettimeout() is None
                assert drain(conn, 4) == b"ping"
                conn.send(b"po")
                conn.sendall(b"ng")
                assert talker.get(timeout=5) == b"pong"
                assert conn.getsockname() == client.getpeername()
                if family != stdsocket.AF_UNIX:
                    assert conn.getpeername() == client.getsockname()
                client.sendall(b"into")
                buffer = bytearray(8)
                assert conn.recv_into(buffer) == 4 and buffer[:4] == b"into"
                client.shutdown(stdsocket.SHUT_WR)
                assert conn.recv(1) == b""
            with coopsock.socket(family, stdsocket.SOCK_STREAM) as other:
                assert other.connect_ex(server.getsockname()) == 0
                accepted, _ = server.accept()
                accepted.close()


def test_datagram_socket_api(family, new_address):
    with coopsock.socket(family, stdsocket.SOCK_DGRAM) as receiver, \
            coopsock.socket(family, stdsocket.SOCK_DGRAM) as sender:
        assert receiver.type == stdsocket.SOCK_DGRAM
        receiver.bind(new_address())
        sender.bind(new_address())
        there = receiver.getsockname()
        events = []

        def receive():
            events.append("receiving")
            return receiver.recvfrom(16)
        g = spawn(receive)
        spawn(ticker(events)).join()
        assert sender.sendto(b"hello", there) == 5
        data, address = g.get(timeout=5)
        assert data == b"hello" and address == sender.getsockname()
        assert events == ["receiving", 0, 1, 2]  # it waited, and the others ran meanwhile
        buffer = bytearray(16)
        spawn(sender.sendto, b"into", there)
        assert receiver.recvfrom_into(buffer) == (4, sender.getsockname())
        assert buffer[:4] == b"into"
        sender.connect(there)
        spawn(sender.sendmsg, [b"sc", b"at", b"ter"])
        data, ancillary, _, address = receiver.recvmsg(16)
        assert (data, ancillary, address) == (b"scatter", [], sender.getsockname())
        spawn(sender.send, b"direct")
        assert receiver.recv(16) == b"direct"


def test_recvmsg_and_sendmsg_pass_file_descriptors(pair):
    a, b = pair
    reader, writer = os.pipe()
    try:
        spawn(a.sendmsg, [b"fd"], [(stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS, writer.to_bytes(4, sys.byteorder))])
        data, ancillary, _, _ = b.recvmsg(2, stdsocket.CMSG_SPACE(4))
        assert data == b"fd"
        received = int.from_bytes(ancillary[0][2][:4], sys.byteorder)
        os.write(received, b"!")
        os.close(received)
        assert os.read(reader, 1) == b"!"
        buffer = bytearray(4)
        spawn(a.sendall, b"ok")
        assert b.recvmsg_into([buffer])[0] == 2 and buffer[:2] == b"ok"
    finally:
        os.close(reader)
        os.close(writer)


def test_makefile_reads_and_writes_cooperatively(pair):
    a, b = pair

    def read_line():
        with a.makefile("rb") as f:
            return f.readline()
    reader = spawn(read_line)
    sleep(0)
    with b.makefile("wb") as f:
        f.write(b"hello\n")
        f.flush()
    assert reader.get(timeout=5) == b"hello\n"


def test_sendfile_sends_the_whole_file_cooperatively(tcp_pair, tmp_path):
    client, server = tcp_pair
    data = os.urandom(3 << 20)  # far more than the socket buffers hold
    path = tmp_path / "data"
    path.write_bytes(data)
    receiver = spawn(drain, server, len(data))
    with open(path, "rb") as f:
        assert client.sendfile(f) == len(data)
    assert receiver.get(timeout=10) == data
    receiver = spawn(drain, server, 1000)
    with open(path, "rb") as f:
        assert client.sendfile(f, offset=10, count=1000) == 1000
        assert f.tell() == 1010
    assert receiver.get(timeout=10) == data[10:1010]


def test_dup_detach_fileno_and_fromfd(pair):
    a, b = pair
    a.settimeout(3)
    with a.dup() as duplicate:
        assert isinstance(duplicate, coopsock.socket)
        assert duplicate.fileno() != a.fileno() and duplicate.gettimeout() == 3
        duplicate.sendall(b"dup")
        assert drain(b, 3) == b"dup"
    with coopsock.fromfd(a.fileno(), a.family, a.type) as copy:
        assert isinstance(copy, coopsock.socket) and copy.fileno() != a.fileno()
        spawn(b.sendall, b"copy")
        assert drain(copy, 4) == b"copy"
    fd = a.fileno()
    assert a.detach() == fd and a.fileno() == -1
    with coopsock.socket(fileno=fd) as again:
        assert again.family == stdsocket.AF_UNIX
        spawn(b.sendall, b"again")
        assert drain(again, 5) == b"again"


def test_context_manager_repr_and_options():
    with coopsock.socket() as sock:
        assert repr(sock).startswith(f"<coopsock.socket fd={sock.fileno()},")
        sock.settimeout(2.5)
        assert "timeout=2.5" in repr(sock)
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        assert sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR) != 0
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY) != 0
        assert sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_TYPE) == stdsocket.SOCK_STREAM
    assert sock.fileno() == -1 and "[closed]" in repr(sock)


def test_socketpair_with_the_default_family():
    a, b = coopsock.socketpair()
    with a, b:
        assert isinstance(a, coopsock.socket) and a.family == stdsocket.AF_UNIX
        reader = spawn(b.recv, 4)
        sleep(0)
        a.sendall(b"pair")
        assert reader.get(timeout=5) == b"pair"


def test_create_server_and_create_connection():
    with coopsock.create_server(("127.0.0.1", 0)) as server:
        assert isinstance(server, coopsock.socket)
        acceptor = spawn(server.accept)
        with coopsock.create_connection(server.getsockname(), timeout=5) as client:
            assert isinstance(client, coopsock.socket) and client.gettimeout() == 5
            conn, address = acceptor.get(timeout=5)
            with conn:
                assert address == client.getsockname()
        port = server.getsockname()[1]
        acceptor = spawn(server.accept)
        with coopsock.create_connection(("localhost", port)) as client:  # a host name, resolved
            conn, _ = acceptor.get(timeout=5)
            conn.close()


def test_name_resolution_helpers():
    flags = stdsocket.NI_NUMERICHOST | stdsocket.NI_NUMERICSERV
    assert (coopsock.getaddrinfo("127.0.0.1", 80, stdsocket.AF_INET, stdsocket.SOCK_STREAM)
            == stdsocket.getaddrinfo("127.0.0.1", 80, stdsocket.AF_INET, stdsocket.SOCK_STREAM))
    assert coopsock.gethostbyname("localhost") == stdsocket.gethostbyname("localhost")
    assert coopsock.getnameinfo(("127.0.0.1", 80), flags) == ("127.0.0.1", "80")
    with pytest.raises(coopsock.gaierror):
        coopsock.getaddrinfo("127.0.0.1", "no-such-service-name")


def test_wait_read_wait_write_wait_readwrite(pair):
    a, b = pair
    coopsock.wait_write(a.fileno(), timeout=5)  # writable at once
    coopsock.wait_readwrite(a.fileno(), timeout=5)
    started = time.monotonic()
    with pytest.raises(stdsocket.timeout, match="^timed out$"):
        coopsock.wait_read(a.fileno(), timeout=0.05)
    assert 0.045 <= time.monotonic() - started < 3
    with pytest.raises(ValueError, match="custom"):
        coopsock.wait_read(a.fileno(), timeout=0.01, timeout_exc=ValueError("custom"))
    events = []

    def wait():
        events.append("waiting")
        coopsock.wait_read(a.fileno())
        events.append("readable")
    g = spawn(wait)
    spawn(ticker(events)).join()
    started = time.monotonic()
    b.sendall(b"x")
    g.join(timeout=5)
    assert events == ["waiting", 0, 1, 2, "readable"]
    assert time.monotonic() - started < 1


def test_waiting_on_an_fd_that_is_not_open_raises_ebadf():
    with stdsocket.socket() as sock:
        fd = sock.fileno()
    for wait in (coopsock.wait_read, coopsock.wait_write, coopsock.wait_readwrite):
        with pytest.raises(OSError) as info:  # as select() says, not "ready"
            wait(fd, timeout=1)
        assert info.value.errno == errno.EBADF


def test_the_fast_path_does_not_switch_to_the_hub(pair, listener):
    a, b = pair
    ran = []
    spawn(ran.append, "another greenlet ran")  # it would run at the first switch to the hub
    b.sendall(b"ready")
    assert a.recv(5) == b"ready"
    assert a.send(b"room") == 4
    a.sendall(b"more room")
    with coopsock.create_connection(listener.getsockname()) as client:
        ran.clear()
        spawn(ran.append, "another greenlet ran")
        conn, address = listener.accept()  # the connection is already queued
        conn.close()
        assert address == client.getsockname()
    assert ran == []
    assert drain(b, 13) == b"roommore room"


# ---------------------------------------------------------------------------
# The hard cases: blocking


def test_other_greenlets_run_while_one_waits_in_recv(pair):
    a, b = pair
    events = []

    def receive():
        events.append("receiving")
        events.append(a.recv(8))
    g = spawn(receive)
    spawn(ticker(events)).join()
    b.sendall(b"late")
    g.join(timeout=5)
    assert events == ["receiving", 0, 1, 2, b"late"]


def test_other_greenlets_run_while_one_waits_in_accept(listener):
    events = []

    def accept():
        events.append("accepting")
        conn, _ = listener.accept()
        conn.close()
        events.append("accepted")
    g = spawn(accept)
    spawn(ticker(events)).join()
    with coopsock.create_connection(listener.getsockname()):
        g.join(timeout=5)
    assert events == ["accepting", 0, 1, 2, "accepted"]


def test_other_greenlets_run_while_one_waits_in_connect(full_listener):
    events = []
    with coopsock.socket() as client:
        client.settimeout(0.3)

        def connect():
            events.append("connecting")
            try:
                client.connect(full_listener)
            except stdsocket.timeout:
                events.append("timed out")
        g = spawn(connect)
        spawn(ticker(events)).join()
        g.join(timeout=5)
    assert events == ["connecting", 0, 1, 2, "timed out"]


def test_other_greenlets_run_while_one_waits_in_sendall_with_a_full_buffer(pair):
    a, b = pair
    events, data = [], b"s" * (1 << 20)
    filled = fill(a)

    def send():
        events.append("sending")
        a.sendall(data)
        events.append("sent")
    g = spawn(send)
    spawn(ticker(events)).join()
    assert events == ["sending", 0, 1, 2]
    assert drain(b, filled + len(data)).endswith(data)
    g.join(timeout=5)
    assert events[-1] == "sent"


# ---------------------------------------------------------------------------
# The hard cases: timeouts


def _blocking_call(op, pair, listener):
    """Return (socket, call) where call blocks on socket: it has nothing to read or no room."""
    a, _ = pair
    if op == "accept":
        return listener, listener.accept
    if op in ("send", "sendall"):
        fill(a)
        return a, lambda: getattr(a, op)(b"x" * 65536)
    if op == "recv_into":
        return a, lambda: a.recv_into(bytearray(8))
    return a, lambda: getattr(a, op)(8)


@pytest.mark.parametrize("op", ["recv", "recv_into", "recvfrom", "send", "sendall", "accept"])
def test_settimeout_makes_a_blocking_call_raise_timeout_error(op, pair, listener):
    sock, call = _blocking_call(op, pair, listener)
    sock.settimeout(0.2)
    assert sock.gettimeout() == 0.2 and sock.getblocking()
    started = time.monotonic()
    with pytest.raises(stdsocket.timeout, match="^timed out$") as info:
        call()
    assert 0.18 <= time.monotonic() - started < 2
    assert type(info.value) is stdsocket.timeout
    if op.startswith("recv"):  # the socket still works after a timeout
        spawn(pair[1].sendall, b"after")
        assert pair[0].recv(5) == b"after"


def test_recv_after_a_short_read_still_returns_what_is_there_at_once(pair, tcp_pair):
    # A short read makes the next recv of a blocking stream socket wait before
    # it tries (one system call per round trip instead of two): data that came
    # meanwhile, a timeout set meanwhile, the end of the stream all read as before.
    for a, b in (pair, tcp_pair):
        b.sendall(b"one")
        assert a.recv(10) == b"one"
        b.sendall(b"two")
        assert a.recv(10) == b"two"
        b.sendall(b"three")
        a.settimeout(1e-6)  # data that is there comes first, as from the stdlib's socket: never a timeout
        assert a.recv(10) == b"three"
        a.settimeout(None)
        b.sendall(b"four")
        assert a.recv(4) == b"four"  # a full read: the next recv tries first
        b.sendall(b"x")
        b.shutdown(stdsocket.SHUT_WR)
        assert a.recv(10) == b"x"
        assert a.recv(10) == b""


def test_connect_timeout_is_one_deadline(full_listener):
    with coopsock.socket() as client:
        client.settimeout(0.5)
        started = time.monotonic()
        with pytest.raises(stdsocket.timeout, match="^timed out$"):
            client.connect(full_listener)
        assert 0.45 <= time.monotonic() - started < 1.0


def test_sendall_timeout_bounds_the_whole_call(tcp_pair):
    client, server = tcp_pair
    client.settimeout(0.5)
    server.settimeout(0)
    draining = [True]

    def slow_reader():  # frees room now and then: every wait of sendall is shorter than 0.5 s
        while draining:
            try:
                server.recv(1 << 20)
            except BlockingIOError:
                pass
            sleep(0.05)
    reader = spawn(slow_reader)
    started = time.monotonic()
    try:
        # A timeout per wait would take seconds: the silent Timeout stops it then.
        with Timeout(10, False), pytest.raises(stdsocket.timeout, match="^timed out$"):
            client.sendall(bytes(64 << 20))
    finally:
        draining.clear()
        reader.join(timeout=5)
    assert 0.45 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("op", ["recv", "send", "sendall", "accept"])
def test_settimeout_zero_raises_blocking_io_error_like_a_nonblocking_stdlib_socket(op, pair, listener):
    sock, call = _blocking_call(op, pair, listener)
    sock.settimeout(0)
    assert not sock.getblocking() and sock.gettimeout() == 0.0
    if op == "accept":
        with stdsocket.create_server(("127.0.0.1", 0)) as twin:
            twin.settimeout(0)
            expected = outcome(twin.accept)
    else:
        x, y = stdsocket.socketpair()
        with x, y:
            x.settimeout(0)
            if op == "recv":
                expected = outcome(lambda: x.recv(8))
            else:
                fill(x)
                expected = outcome(lambda: getattr(x, op)(b"x" * 65536))
    assert expected == (BlockingIOError, errno.EAGAIN)
    assert outcome(call) == expected


def test_settimeout_zero_connect_raises_blocking_io_error_like_the_stdlib(listener):
    with coopsock.socket() as sock, stdsocket.socket() as twin:
        sock.settimeout(0)
        twin.settimeout(0)
        expected = outcome(lambda: twin.connect(listener.getsockname()))
        assert expected == (BlockingIOError, errno.EINPROGRESS)
        assert outcome(lambda: sock.connect(listener.getsockname())) == expected


def test_settimeout_none_blocks_until_data_arrives(pair):
    a, b = pair
    a.settimeout(1)
    a.settimeout(None)
    assert a.gettimeout() is None and a.getblocking()
    a.setblocking(False)
    assert a.gettimeout() == 0.0
    a.setblocking(True)
    assert a.gettimeout() is None
    events = []
    g = spawn(lambda: events.append(a.recv(4)))
    spawn(ticker(events)).join()
    b.sendall(b"data")
    g.join(timeout=5)
    assert events == [0, 1, 2, b"data"]


def test_settimeout_none_never_makes_a_shared_listener_blocking_even_for_an_instant(listener):
    # The demo's forked workers share one listener's mode: when one worker's
    # StreamServer set its timeout, the fd was blocking for an instant, and
    # the other's accept() in it blocked that worker's hub (a CI failure). A
    # thread stands in for the other worker here, with a stdlib socket.
    other, stop = stdsocket.socket(fileno=os.dup(listener.fileno())), threading.Event()
    other.setblocking(False)  # (PyPy made the fd blocking, as the default timeout's mode; 0 polls nothing)

    def accept_while_not_stopped():
        while not stop.is_set():
            try:
                return other.accept()[0].close()  # a connection: only the test's own, below
            except BlockingIOError:
                pass
    worker = threading.Thread(target=accept_while_not_stopped)
    worker.start()
    try:
        for _ in range(2000):
            listener.settimeout(None)
            listener.setblocking(True)
            assert listener.gettimeout() is None
    finally:
        stop.set()
        worker.join(1)
        stuck = worker.is_alive()
        if stuck:  # blocked in the kernel's accept: one connection lets it out
            stdsocket.create_connection(listener.getsockname()).close()
            worker.join()
        other.close()
    assert not stuck, "the listener was blocking for an instant: the other worker's accept() blocked"


def test_settimeout_leaves_the_fd_and_its_c_timeout_alone_between_any_two_calls(pair):
    # settimeout(5) set the socket's C timeout to 5, then back to 0: a signal
    # landing between the two calls (CI's signal storm) left it at 5, and the
    # next recv waited inside C, then raised TimeoutError. A profile hook sees
    # the socket after every C call that settimeout and setblocking make.
    a, _ = pair
    seen = []

    def after_each_c_call(frame, event, arg):
        if event == "c_return":
            seen.append((stdsocket.socket.gettimeout(a), os.get_blocking(a.fileno())))
    sys.setprofile(after_each_c_call)
    try:
        for value in (5, None, 0.5, 0):
            a.settimeout(value)
        a.setblocking(True)
        a.setblocking(False)
    finally:
        sys.setprofile(None)
    assert seen and set(seen) == {(0.0, False)}, set(seen)
    assert a.gettimeout() == 0.0


def test_the_default_timeout_comes_from_getdefaulttimeout():
    previous = stdsocket.getdefaulttimeout()
    stdsocket.setdefaulttimeout(0.05)
    try:
        a, b = coopsock.socketpair(stdsocket.AF_UNIX)
        plain = coopsock.socket()
    finally:
        stdsocket.setdefaulttimeout(previous)
    with a, b, plain:
        assert a.gettimeout() == b.gettimeout() == plain.gettimeout() == 0.05
        with pytest.raises(stdsocket.timeout):
            a.recv(1)
    with coopsock.socket() as sock:
        assert sock.gettimeout() == previous


# ---------------------------------------------------------------------------
# The hard cases: closed while another greenlet waits


@pytest.mark.parametrize("op", ["recv", "recv_into", "recvfrom", "send", "sendall", "accept"])
def test_close_while_another_greenlet_waits(op, pair, listener):
    sock, call = _blocking_call(op, pair, listener)
    events = []

    def wait():
        events.append("waiting")
        try:
            call()
        except OSError as exc:
            return exc
    waiter = spawn(wait)
    sleep(0)
    assert events == ["waiting"] and not waiter.ready()
    fd = sock.fileno()
    sock.close()
    error = waiter.get(timeout=5)
    assert isinstance(error, OSError), error
    assert error.errno == errno.EBADF and CLOSED_MESSAGE in str(error)
    with pytest.raises(OSError) as later:
        call()
    assert later.value.errno == errno.EBADF
    assert_fd_number_is_reusable(fd)


@pytest.mark.parametrize("op", ["recv", "sendall", "accept"])
def test_shutdown_while_another_greenlet_waits(op, pair, listener):
    sock, call = _blocking_call(op, pair, listener)

    def wait():
        try:
            return call()
        except OSError as exc:
            return exc
    waiter = spawn(wait)
    sleep(0)
    assert not waiter.ready()
    sock.shutdown(stdsocket.SHUT_RDWR)
    error = waiter.get(timeout=2)
    assert isinstance(error, OSError), f"{op} returned {error!r} after shutdown() in another greenlet"
    assert error.errno == errno.EBADF and CLOSED_MESSAGE in str(error)


def test_close_while_another_greenlet_waits_in_connect(full_listener):
    client = coopsock.socket()
    connector = spawn(outcome, lambda: client.connect(full_listener))
    sleep(0)
    assert not connector.ready()  # the listener's queue is full: connect waits
    client.close()
    assert connector.get(timeout=5) == (OSError, errno.EBADF)


def test_shutdown_wakes_only_the_directions_it_shuts(pair):
    a, b = pair
    filled = fill(a)
    reader, writer = spawn(a.recv, 4), spawn(a.sendall, b"w" * 1000)
    sleep(0)
    a.shutdown(stdsocket.SHUT_WR)  # the writer gets EBADF, the reader keeps waiting
    with pytest.raises(OSError) as info:
        writer.get(timeout=5)
    assert info.value.errno == errno.EBADF
    sleep(0)
    assert not reader.ready()
    b.sendall(b"read")
    assert reader.get(timeout=5) == b"read"
    assert len(drain(b, filled)) == filled


# ---------------------------------------------------------------------------
# The hard cases: two greenlets waiting on one socket


@pytest.mark.parametrize("op, direction", [("recv", "reading"), ("accept", "reading"),
                                           ("sendall", "writing")])
def test_a_second_waiter_gets_concurrent_object_use_error(op, direction, pair, listener):
    sock, call = _blocking_call(op, pair, listener)
    first = spawn(call)
    sleep(0)
    assert not first.ready()
    with pytest.raises(coopsock.ConcurrentObjectUseError) as info:
        call()
    assert isinstance(info.value, AssertionError)
    message = str(info.value)
    assert direction in message and repr(sock) in message and repr(first) in message
    b = pair[1]  # the first waiter is unaffected:
    if op == "recv":
        b.sendall(b"first")
        assert first.get(timeout=5) == b"first"
    elif op == "accept":
        with coopsock.create_connection(listener.getsockname()):
            conn, _ = first.get(timeout=5)
            conn.close()
    else:
        spawn(drain, b, 1 << 30)  # read everything from now on
        first.get(timeout=5)


def test_one_reader_and_one_writer_at_once_is_fine(pair):
    a, b = pair
    filled = fill(a)
    reader = spawn(a.recv, 4)
    writer = spawn(a.sendall, b"w" * 100_000)
    sleep(0)
    assert not reader.ready() and not writer.ready()
    b.sendall(b"read")
    assert reader.get(timeout=5) == b"read"
    assert len(drain(b, filled + 100_000)) == filled + 100_000
    writer.get(timeout=5)


# ---------------------------------------------------------------------------
# Name resolution in a worker thread


@pytest.fixture
def slow_lookup(monkeypatch):
    """Make getaddrinfo slow: "slow.example" is the loopback address, once release is set."""
    release = threading.Event()
    real = stdsocket.getaddrinfo

    def lookup(host, port, family=0, *args, **kwargs):
        if host == "slow.example":
            if not release.wait(10):
                raise RuntimeError("nobody released the lookup: the hub was blocked")
            host = "::1" if family == stdsocket.AF_INET6 else "127.0.0.1"
        return real(host, port, family, *args, **kwargs)
    monkeypatch.setattr(coopsock, "_std_getaddrinfo", lookup)
    return release


def test_getaddrinfo_runs_in_a_thread_and_the_hub_keeps_running(slow_lookup):
    events = []

    def tick_then_release():
        ticker(events)()
        slow_lookup.set()
    spawn(tick_then_release)
    infos = coopsock.getaddrinfo("slow.example", 80, stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    assert events == [0, 1, 2]
    assert infos[0][4] == ("127.0.0.1", 80)


@pytest.mark.parametrize("how", ["connect", "create_connection"])
def test_connecting_to_a_host_name_does_not_block_the_hub(how, slow_lookup, listener):
    events = []

    def tick_then_release():
        ticker(events)()
        slow_lookup.set()
    spawn(tick_then_release)
    port = listener.getsockname()[1]
    acceptor = spawn(listener.accept)
    if how == "connect":
        client = coopsock.socket()
        client.connect(("slow.example", port))
    else:
        client = coopsock.create_connection(("slow.example", port))
    with client:
        conn, _ = acceptor.get(timeout=5)
        conn.close()
        assert client.getpeername() == ("127.0.0.1", port)
    assert events == [0, 1, 2]


def test_connecting_an_ipv6_socket_to_a_host_name(slow_lookup):
    if IPV6_MISSING:
        pytest.skip(IPV6_MISSING)
    slow_lookup.set()
    with coopsock.socket(stdsocket.AF_INET6) as server, coopsock.socket(stdsocket.AF_INET6) as client:
        server.bind(("::1", 0))
        server.listen()
        port = server.getsockname()[1]
        acceptor = spawn(server.accept)
        client.connect(("slow.example", port))
        conn, _ = acceptor.get(timeout=5)
        conn.close()
        assert client.getpeername()[:2] == ("::1", port)


def test_a_lookup_that_finishes_before_the_hub_waits_is_not_lost(monkeypatch):
    # The worker can finish and send() its wake-up through the hub's Async
    # just before the caller parks in the hub (a busy machine, a cached
    # answer). Force that interleaving: the caller's switch to the hub waits
    # until the worker has sent.
    hub, sent = coopsock.get_hub(), threading.Event()
    run_threadsafe, switch = hub._run_threadsafe, hub.switch

    def send_then_flag(*args):
        try:
            return run_threadsafe(*args)
        finally:
            sent.set()

    def switch_once_sent(*args):
        sent.wait(0.2)
        return switch(*args)

    def quick_lookup(*args):
        return [(stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
    monkeypatch.setattr(coopsock, "_std_getaddrinfo", quick_lookup)
    hub._run_threadsafe, hub.switch = send_then_flag, switch_once_sent
    try:
        with Timeout(5):
            infos = coopsock.getaddrinfo("quick.example", 80)
    except Timeout:
        pytest.fail("getaddrinfo() never returned: the worker's wake-up was lost")
    finally:
        del hub._run_threadsafe, hub.switch
    # The worker appends its outcome before it sends: the caller may return
    # while the send is still under way, so wait for it, then check it came.
    assert sent.wait(5), "the worker never sent its wake-up"
    assert infos[0][4] == ("127.0.0.1", 80)


# ---------------------------------------------------------------------------
# Bad input: the same exceptions as the stdlib socket


BAD_CALLS = {
    "recv(-1)": lambda s: s.recv(-1),
    "recv('x')": lambda s: s.recv("x"),
    "recv_into(bytes)": lambda s: s.recv_into(b"read-only"),
    "recv_into(nbytes too big)": lambda s: s.recv_into(bytearray(2), 5),
    "send(1)": lambda s: s.send(1),
    "sendall(1)": lambda s: s.sendall(1),
    "sendall('text')": lambda s: s.sendall("text"),
    "settimeout(-1)": lambda s: s.settimeout(-1),
    "settimeout('x')": lambda s: s.settimeout("x"),
    "settimeout(nan)": lambda s: s.settimeout(math.nan),
    "setblocking(None)": lambda s: s.setblocking(None),
    "setblocking('x')": lambda s: s.setblocking("x"),
    "setblocking(1.5)": lambda s: s.setblocking(1.5),
    "sendall(non-contiguous buffer)": lambda s: s.sendall(memoryview(b"abcdef")[::2]),
    "send(non-contiguous buffer)": lambda s: s.send(memoryview(b"abcdef")[::2]),
    "setsockopt(bad level)": lambda s: s.setsockopt(-1, -1, 1),
    "accept() on a connected socket": lambda s: s.accept(),
    "sendto() on a connected socket": lambda s: s.sendto(b"x", ("127.0.0.1", 9)),
    "recvfrom_into(nbytes too big)": lambda s: s.recvfrom_into(bytearray(2), 5),
}

GOOD_KEYWORD_CALLS = {  # the stdlib accepts these keywords
    "recv_into(buffer=, nbytes=)": lambda s: s.recv_into(buffer=bytearray(8), nbytes=2),
    "recvfrom_into(buffer, nbytes=)": lambda s: s.recvfrom_into(bytearray(8), nbytes=2),
}


@pytest.mark.parametrize("name", [*BAD_CALLS, *GOOD_KEYWORD_CALLS])
def test_bad_input_raises_what_the_stdlib_raises(name, tcp_pair):
    call = {**BAD_CALLS, **GOOD_KEYWORD_CALLS}[name]
    client, server = tcp_pair
    server.sendall(b"pending data")
    with stdsocket.create_server(("127.0.0.1", 0)) as std_listener, \
            stdsocket.create_connection(std_listener.getsockname()) as std_client:
        std_server, _ = std_listener.accept()
        with std_server:
            std_server.sendall(b"pending data")
            expected = outcome(lambda: call(std_client))
            assert outcome(lambda: call(client)) == expected


BAD_ADDRESSES = [("127.0.0.1",), "127.0.0.1", ("127.0.0.1", "x"), ("127.0.0.1", "80"), ("127.0.0.1", -1),
                 ("127.0.0.1", 70000), ("127.0.0.1", 1.5), ("127.0.0.1", None), (None, 80), (1, 2),
                 ("", 1), ("localhost", 1), ("127.0.0.1", 1)]


@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=repr)
@pytest.mark.parametrize("method", ["connect", "connect_ex"])
def test_connect_to_a_bad_address_raises_what_the_stdlib_raises(method, address):
    with coopsock.socket() as sock, stdsocket.socket() as twin:
        expected = outcome(lambda: getattr(twin, method)(address))
        assert outcome(lambda: getattr(sock, method)(address)) == expected


CLOSED_CALLS = {
    "recv": lambda s: s.recv(1), "recv_into": lambda s: s.recv_into(bytearray(1)),
    "recvfrom": lambda s: s.recvfrom(1), "send": lambda s: s.send(b"x"),
    "sendall": lambda s: s.sendall(b"x"), "sendto": lambda s: s.sendto(b"x", ("127.0.0.1", 9)),
    "accept": lambda s: s.accept(), "connect": lambda s: s.connect(("127.0.0.1", 9)),
    "connect_ex": lambda s: s.connect_ex(("127.0.0.1", 9)), "bind": lambda s: s.bind(("127.0.0.1", 0)),
    "listen": lambda s: s.listen(), "getsockname": lambda s: s.getsockname(),
    "getpeername": lambda s: s.getpeername(), "shutdown": lambda s: s.shutdown(stdsocket.SHUT_RDWR),
    "settimeout": lambda s: s.settimeout(1), "setblocking": lambda s: s.setblocking(False),
    "getsockopt": lambda s: s.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ERROR), "dup": lambda s: s.dup(),
    "close": lambda s: s.close(),
}


@pytest.mark.parametrize("timeout", [None, 1.0, 0.0])
@pytest.mark.parametrize("name", CLOSED_CALLS)
def test_calls_on_a_closed_socket_raise_what_the_stdlib_raises(name, timeout):
    sock, twin = coopsock.socket(), stdsocket.socket()
    for s in (sock, twin):
        s.settimeout(timeout)
        s.close()
    expected = outcome(lambda: CLOSED_CALLS[name](twin))
    assert outcome(lambda: CLOSED_CALLS[name](sock)) == expected
    if name in ("recv", "recv_into", "recvfrom", "send", "sendall", "sendto", "accept", "connect"):
        assert expected == (OSError, errno.EBADF)


@pytest.mark.parametrize("seconds", [-1, -0.5, "x", None, math.nan, math.inf, 1e300], ids=repr)
def test_sleep_rejects_what_time_sleep_rejects(seconds):
    expected = outcome(lambda: time.sleep(seconds))
    assert expected[0] is not None and expected[0] != "ok"
    assert outcome(lambda: sleep(seconds)) == expected


# ---------------------------------------------------------------------------
# AF_UNIX connect to a full listen queue


def fill_listen_queue(path):
    """Connect to the listener at path until its queue is full; return the queued clients.

    listen(0) queues one connection on CPython and two on PyPy: count, do not assume.
    """
    queued = []
    for _ in range(64):
        client = stdsocket.socket(stdsocket.AF_UNIX)
        client.setblocking(False)
        err = client.connect_ex(path)
        if err == errno.EAGAIN:  # full: AF_UNIX refuses at once, where TCP would wait
            client.close()
            return queued
        queued.append(client)
        assert err == 0, os.strerror(err)
    raise AssertionError("64 connections fit in a listen(0) queue")


def test_unix_connect_waits_for_room_in_a_full_listen_queue(short_dir):
    path = os.path.join(short_dir, "full")
    with coopsock.socket(stdsocket.AF_UNIX) as server, coopsock.socket(stdsocket.AF_UNIX) as second:
        server.bind(path)
        server.listen(0)
        queued, accepted = fill_listen_queue(path), []

        def connect_and_send():
            second.connect(path)
            second.sendall(b"second")
        try:
            g = spawn(connect_and_send)
            sleep(0)
            sleep(0)
            assert not g.ready(), f"connect() returned while the listen queue was full: {g.exception!r}"
            server.settimeout(2)
            accepted += [server.accept()[0] for _ in queued]  # makes room
            conn2, _ = server.accept()
            with conn2:
                assert drain(conn2, 6) == b"second"
            g.get(timeout=5)
        finally:
            for sock in queued + accepted:
                sock.close()


def test_unix_connect_to_a_full_listen_queue_times_out(short_dir):
    path = os.path.join(short_dir, "full")
    with coopsock.socket(stdsocket.AF_UNIX) as server, coopsock.socket(stdsocket.AF_UNIX) as second:
        server.bind(path)
        server.listen(0)
        queued = fill_listen_queue(path)
        try:
            second.settimeout(0.2)
            with pytest.raises(stdsocket.timeout):
                second.connect(path)
        finally:
            for sock in queued:
                sock.close()


# --- the demo: python -m coopsock, run as a user runs it ------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def _start_demo(backend, *options, host="127.0.0.1"):
    """Start the demo server on a free port in a child process; return (process, port) once it serves on host.

    --port 0 and the port read from its log: a port probed free here could be
    taken by another program before the child binds it.
    """
    # Unbuffered, so its readline takes no more than the line: communicate()
    # reads the pipe itself, not from a buffer in front of it.
    proc = subprocess.Popen([sys.executable, "-m", "coopsock", "--port", "0", "--loop", backend, *options],
                            cwd=HERE, stderr=subprocess.PIPE, bufsize=0)
    watchdog = threading.Timer(20, proc.kill)  # a child that hangs before its first line ends the readline
    watchdog.start()
    try:
        proc.head = proc.stderr.readline().decode()  # "... listening on HOST:PORT ...", or why it could not
    finally:
        watchdog.cancel()
    listening = re.search(r"listening on \S*:(\d+)", proc.head)
    if not listening:
        proc.kill()
        _, rest = proc.communicate()
        raise AssertionError(f"the demo did not start listening: {proc.head}{rest.decode()}")
    port = int(listening.group(1))
    stdsocket.create_connection((host, port), timeout=10).close()  # served: the readiness probe
    return proc, port


def _stop_demo(proc, signum):
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, proc.head + err.decode()


def _echo_once(port, payload, host="127.0.0.1"):
    with stdsocket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            assert chunk, "the demo closed the connection early"
            got += chunk
        return got


@pytest.mark.parametrize("signum", [__import__("signal").SIGINT, __import__("signal").SIGTERM])
def test_demo_echoes_concurrent_clients_and_stops_cleanly(backend, signum):
    proc, port = _start_demo(backend, "-v")
    results = {}

    def client(index):
        payload = os.urandom(1000 + index * 997)
        results[index] = _echo_once(port, payload) == payload
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    code, err = _stop_demo(proc, signum)
    assert results == {i: True for i in range(8)}
    assert code == 0, err
    assert "Traceback" not in err
    assert f"loop backend: {backend}" in err
    assert "served 9 connection(s)" in err  # 8 clients, and the readiness probe


def test_demo_refuses_connections_beyond_max_connections(backend):
    proc, port = _start_demo(backend, "--max-connections", "1")
    try:
        for _ in range(100):  # the readiness probe may still hold the one slot for a moment
            first = stdsocket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                first.sendall(b"x")
                if first.recv(1) == b"x":
                    break  # the first one is being served
            except ConnectionResetError:
                pass
            first.close()
            time.sleep(0.05)  # waiting on another process's bookkeeping: nothing to join
        with first, stdsocket.create_connection(("127.0.0.1", port), timeout=10) as second:
            try:
                assert second.recv(1) == b""  # closed at once...
            except ConnectionResetError:
                pass  # ...or reset: either way it is not served
    finally:
        code, err = _stop_demo(proc, __import__("signal").SIGTERM)
    assert code == 0 and "--max-connections 1 reached" in err


def test_demo_closes_idle_connections(backend):
    proc, port = _start_demo(backend, "--idle-timeout", "0.3")
    try:
        with stdsocket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            started = time.monotonic()
            assert conn.recv(1) == b""
            assert 0.2 < time.monotonic() - started < 8
    finally:
        code, _ = _stop_demo(proc, __import__("signal").SIGTERM)
    assert code == 0


def test_demo_workers_share_the_port(backend):
    proc, port = _start_demo(backend, "--workers", "2")
    try:
        for size in (10, 5000, 70000):
            payload = os.urandom(size)
            assert _echo_once(port, payload) == payload
    finally:
        code, err = _stop_demo(proc, __import__("signal").SIGTERM)
    assert code == 0, err
    assert err.count("echo server listening") == 2 and err.count("served") == 2


def test_demo_workers_stop_once_on_ctrl_c_to_the_process_group(backend):
    proc = subprocess.Popen([sys.executable, "-m", "coopsock", "--port", "0", "--workers", "3", "--loop", backend],
                            cwd=HERE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()  # the others may still be starting: they stop all the same
        os.killpg(proc.pid, __import__("signal").SIGINT)  # and the parent sends them SIGTERM too
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, __import__("signal").SIGKILL)
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, first + err
    assert (first + err).count("served") == 3, first + err


# The demo, with os.fork failing at the third call, as when the processes
# run out (as root RLIMIT_NPROC does not bind): it must stop the two forked.
_FORK_FAILS = """
import os, sys
import coopsock
real_fork, forked = os.fork, []

def fork():
    if len(forked) == 2:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    pid = real_fork()
    forked.extend([pid] if pid else [])
    return pid
os.fork = fork
status = coopsock.main(sys.argv[1:])
for pid in forked:
    try:
        os.waitpid(pid, os.WNOHANG)
        sys.exit(f"worker {pid} was left behind")
    except ChildProcessError:
        pass  # stopped, and waited for, by the demo
sys.exit(status)
"""


def test_demo_says_in_one_line_that_a_fork_failed_and_stops_the_workers_forked(backend):
    proc = subprocess.Popen([sys.executable, "-c", _FORK_FAILS, "--port", "0", "--workers", "5", "--loop", backend],
                            cwd=HERE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=30)
    finally:  # workers left serving would hold stderr open for ever
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, __import__("signal").SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "worker 4 of --workers 5: fork() failed: Resource temporarily unavailable; use fewer --workers" in err


def test_demo_says_in_one_line_that_the_port_is_busy(backend):
    with stdsocket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "coopsock", "--port", str(port), "--loop", backend],
                              check=False, cwd=HERE, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Address already in use" in proc.stderr and "--port" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


_BAD_VALUES = [("--host", "a..b"), ("--port", "70000"), ("--port", "65536"), ("--port", "-1"), ("--port", "1.5"),
               ("--port", "x"), ("--backlog", "100000000000000000000"), ("--backlog", "-1"),
               ("--max-connections", "0"), ("--max-connections", "-1"), ("--max-connections", "x"),
               ("--idle-timeout", "-1"), ("--idle-timeout", "nan"), ("--idle-timeout", "inf"),
               ("--idle-timeout", "-inf"), ("--idle-timeout", "1e300"), ("--idle-timeout", "x"),
               ("--workers", "-2"), ("--workers", "0"), ("--workers", "x"), ("--loop", "x")]


@pytest.mark.parametrize("option, value", _BAD_VALUES)
def test_demo_refuses_a_bad_value_in_one_line_with_status_2(option, value, capsys):
    with pytest.raises(SystemExit) as exited:
        coopsock.main([f"{option}={value}"])  # with "=", as "-inf" is no negative number to argparse
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(err.splitlines()) == 1, err
    assert f"argument {option}: " in err and repr(value) in err and ("use " in err or "choose " in err), err


def test_demo_covers_every_option_with_values_in_the_bad_value_tests(monkeypatch):
    options = []
    monkeypatch.setattr(__import__("argparse").ArgumentParser, "parse_args",
                        lambda parser, argv: options.extend(a.option_strings[-1] for a in parser._actions
                                                            if a.nargs is None) or sys.exit(0))
    with pytest.raises(SystemExit):
        coopsock.main([])
    assert set(options) == {option for option, _ in _BAD_VALUES}


def test_demo_bad_values_from_the_command_line_print_no_traceback(backend):
    for option, value in [("--port", "70000"), ("--port", "-1"), ("--idle-timeout", "nan"), ("--host", "a..b")]:
        proc = subprocess.run([sys.executable, "-m", "coopsock", "--loop", backend, option, value],
                              check=False, cwd=HERE, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_demo_prints_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "coopsock", "--version"], check=True, cwd=HERE,
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout == f"coopsock {coopsock.__version__}\n"


def _has_ipv6_loopback():
    try:
        with stdsocket.socket(stdsocket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@needs_ipv6
def test_demo_listens_on_ipv6(backend):
    proc, port = _start_demo(backend, "--host", "::1", host="::1")
    try:
        assert _echo_once(port, b"over IPv6", host="::1") == b"over IPv6"
    finally:
        code, err = _stop_demo(proc, __import__("signal").SIGTERM)
    assert code == 0, err
    assert "listening on [::1]:" in err


@needs_ipv6
@pytest.mark.skipif(not stdsocket.has_dualstack_ipv6(), reason="this OS cannot listen on IPv4 and IPv6 at once")
def test_demo_listens_on_ipv4_too_for_the_ipv6_any_address(backend):
    proc, port = _start_demo(backend, "--host", "::")
    try:
        for host in ("127.0.0.1", "::1"):
            assert _echo_once(port, host.encode(), host=host) == host.encode()
    finally:
        code, err = _stop_demo(proc, __import__("signal").SIGTERM)
    assert code == 0, err
    assert "listening on [::]:" in err and " and IPv4 " in err


# The demo, once it listens, left room for exactly two connections (fds are
# numbered lowest free first, and RLIMIT_NOFILE caps the number).
_OUT_OF_FDS = """
import os, resource, sys
import coopsock

def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

def leave_two_fds():
    free = [fd for fd in range(10000) if not is_open(fd)][:2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (free[-1] + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
coopsock.spawn(leave_two_fds)  # runs once main() waits for connections
sys.exit(coopsock.main(sys.argv[1:]))
"""


def test_demo_out_of_fds_backs_off_and_logs_once(backend):
    proc = subprocess.Popen([sys.executable, "-c", _OUT_OF_FDS, "--port", "0", "-v"], cwd=HERE, text=True,
                            stderr=subprocess.PIPE, env={**os.environ, "COOPSOCK_LOOP": backend})
    lines, seen = __import__("queue").Queue(), []
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()

    def wait_for(text):
        while True:
            seen.append(lines.get(timeout=20))
            if text in seen[-1]:
                return seen[-1]
    try:
        port = int(wait_for("listening on").split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        first, second = (_echo_client(port) for _ in range(2))
        with first, second, stdsocket.create_connection(("127.0.0.1", port), timeout=10) as third:
            third.sendall(b"3")
            assert "Too many open files" in wait_for("accept() on")
            time.sleep(0.5)  # out of fds for a while: the point is how often it logs meanwhile
            first.close()  # which frees an fd in the demo
            assert third.recv(1) == b"3"
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=20)
        proc.stderr.close()
    seen.extend(lines.queue)
    assert proc.returncode == 0, seen
    assert not any("Traceback" in line for line in seen), seen
    # Logged once in the half second out of fds, which ends when the first
    # connection's fd is closed (then the third takes it: there may be another).
    freed = next(i for i, line in enumerate(seen) if "closed (closed by peer)" in line)
    assert sum("accept() on" in line for line in seen[:freed]) == 1, "".join(seen)


def _echo_client(port):
    conn = stdsocket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    return conn


def test_import_leaves_no_loop_for_a_later_collection_to_close(backend):
    # The libev probe's scratch loop was kept by a cycle until some later
    # collection, whose __del__ then swallowed a signal handler's exception:
    # a demo worker missed its Ctrl-C (CI, 3.10). Refcounting frees it now.
    if backend != "libev":
        pytest.skip("the ctypes backend's import-time probe")
    if sys.implementation.name == "pypy":
        pytest.skip("PyPy frees every object at a collection of its own choosing: no refcounting to free it at once")
    proc = run_python("""
        import gc
        gc.disable()
        import coopsock
        print(sorted(type(o).__name__ for o in gc.get_objects() if type(o).__name__ in ("_EvLoop", "_EvTimer")))
    """, backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[]"


def test_import_leaves_subprocess_and_ctypes_util_unimported_so_patch_reaches_them(backend):
    # find_library() imports subprocess, whose selector patch() must reach
    # before anything binds it: it runs only when the usual sonames fail.
    proc = run_python("""
        import sys
        import coopsock
        coopsock.get_hub()
        print(sorted(name for name in ("subprocess", "ctypes.util") if name in sys.modules))
    """, backend)
    assert proc.returncode == 0, proc.stderr
    # (PyPy's libev stand-in builds its callback with cffi, whose C parser imports subprocess.)
    expected = "['subprocess']" if backend == "libev" and sys.implementation.name == "pypy" else "[]"
    assert proc.stdout.split("\n")[0] == expected
