"""The loop layer and the hub stay consistent whatever the caller does: a regression test per fault.

Every test runs on each loop backend present, real pyev included (the autouse
``backend`` fixture of test_coopsock). What could crash the interpreter runs
in a child interpreter, and the test checks how the child ended.
"""

import ast
import errno
import gc
import os
import re
import select
import selectors
import signal
import socket as stdsocket
import sys
import threading
import time

import pytest

import coopsock
from conftest import _assert_clean_exit, _run_child
from coopsock import sleep, spawn

STAND_INS = ("libev", "selectors")


class Alarm(Exception):
    """What the tests' SIGALRM handler raises."""


def _raise_alarm(signum, frame):
    raise Alarm("the alarm went off")


@pytest.fixture
def alarm():
    """Install the SIGALRM handler that raises Alarm; return a function that sets the timer."""
    previous = signal.signal(signal.SIGALRM, _raise_alarm)
    yield lambda seconds, interval=0.0: signal.setitimer(signal.ITIMER_REAL, seconds, interval)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------
# Thread wake-ups: name lookups abandoned, hubs gone


def test_a_lookup_abandoned_before_its_hub_ends_touches_nothing_after():
    # The worker finishes after its hub (and thread) are gone: it must neither
    # call into the dead loop nor write into an fd number the loop once had.
    code = """
    release, handed_over = threading.Event(), threading.Semaphore(0)
    def slow_lookup(*args):  # it answers once both hubs are gone
        release.wait(10)
        return [(stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
    coopsock._std_getaddrinfo = slow_lookup
    real_run_threadsafe = coopsock.Hub._run_threadsafe
    def run_threadsafe(hub, *args):  # what a worker does with its answer
        try:
            return real_run_threadsafe(hub, *args)
        finally:
            handed_over.release()
    coopsock.Hub._run_threadsafe = run_threadsafe

    def abandon(destroy):
        try:
            with Timeout(0.1):
                coopsock.getaddrinfo("example.invalid", 80)
        except Timeout:
            pass
        if destroy:
            coopsock.get_hub().destroy()
    for destroy in (False, True):
        t = threading.Thread(target=abandon, args=(destroy,))
        t.start()
        t.join()
    pairs = [stdsocket.socketpair() for _ in range(8)]  # take the fd numbers the dead loops had
    release.set()
    assert handed_over.acquire(timeout=10) and handed_over.acquire(timeout=10)  # both workers are done
    for a, b in pairs:
        for s in (a, b):
            try:
                data = s.recv(10, stdsocket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            raise AssertionError(f"a worker wrote {data!r} into an unrelated socket")
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_with_pyev_imported_libev_never_allocates_without_the_gil():
    # pyev's import makes libev's process-wide allocator PyMem_Realloc; the
    # debug allocator turns any call of it without the GIL into a fatal error
    # (before the fix: the ctypes binding's first ev_loop_new).
    pytest.importorskip("pyev", reason="without pyev nothing makes libev's allocator need the GIL")
    code = """
    import pyev
    def echo_and_lookup():
        a, b = coopsock.socketpair()
        echo = spawn(lambda: b.sendall(b.recv(10)))
        a.sendall(b"ping")
        assert a.recv(10) == b"ping"
        echo.get(timeout=10)
        assert coopsock.getaddrinfo("127.0.0.1", 80)
        coopsock.get_hub().destroy()
    threads = [threading.Thread(target=echo_and_lookup) for _ in range(4)]
    for t in threads:
        t.start()
    echo_and_lookup()
    for t in threads:
        t.join()
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND, PYTHONMALLOC="debug"))


def test_lookups_that_finish_at_once_leave_nothing_that_keeps_the_hub_alive():
    code = """
    coopsock._std_getaddrinfo = lambda *args: [(stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))]
    for _ in range(200):
        assert coopsock.getaddrinfo("quick.invalid", 80)[0][4] == ("10.0.0.1", 80)
    try:
        coopsock.get_hub().switch()
    except coopsock.LoopExit:
        print("LoopExit")
    hub = coopsock.get_hub()
    hub.destroy()
    del hub
    gc.collect()
    print("OK")
    """
    proc = _run_child(code, coopsock.BACKEND)
    _assert_clean_exit(proc)
    assert "LoopExit" in proc.stdout


def test_a_waiter_on_a_lookup_wakes_when_the_worker_finishes_first():
    finished = threading.Event()

    def lookup(*args):
        finished.set()
        return 42
    for _ in range(50):
        finished.clear()
        assert coopsock._run_in_thread(lookup) == 42
        assert finished.is_set()
    assert coopsock.get_hub().stats()["waiting"] == 0


# ---------------------------------------------------------------------------
# fd exhaustion


def test_out_of_fds_a_new_hub_and_a_lookup_fail_with_emfile_and_nothing_spins():
    code = """
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    results = []
    def in_a_thread():  # a thread's first use makes its hub (and its loop)
        results.append(outcome(coopsock.getaddrinfo, "127.0.0.1", 80))
    t = threading.Thread(target=in_a_thread)
    started = time.monotonic()
    t.start()
    t.join(10)
    assert not t.is_alive(), "the lookup spins"
    assert isinstance(results[0], OSError) and results[0].errno == errno.EMFILE, results
    assert isinstance(outcome(coopsock.socketpair), OSError)
    for fd in held[:8]:
        os.close(fd)
    assert coopsock.getaddrinfo("127.0.0.1", 80)[0][4][0] == "127.0.0.1"  # and it recovers
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND, timeout=30))


def test_accept_out_of_fds_raises_emfile_and_the_listener_still_works():
    code = """
    import resource
    listener = coopsock.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [stdsocket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, 4096))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    for _ in range(3):
        exc = outcome(listener.accept)
        assert isinstance(exc, OSError) and exc.errno == errno.EMFILE, exc
    os.close(held.pop())
    conn, _ = listener.accept()
    conn.close()
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND, timeout=30))


# ---------------------------------------------------------------------------
# Signals


def test_an_exception_from_a_signal_handler_interrupts_a_timed_recv(pair, alarm):
    a, _ = pair
    a.settimeout(5)
    alarm(0.2)
    started = time.monotonic()
    with pytest.raises(Alarm):
        a.recv(10)
    assert time.monotonic() - started < 2.5


def test_an_exception_from_a_signal_handler_interrupts_a_recv_without_timeout(pair, alarm):
    alarm(0.2)
    with pytest.raises(Alarm):
        pair[0].recv(10)


def test_an_exception_from_a_signal_handler_reaches_the_main_greenlet_in_sleep(alarm, hang_guard):
    hang_guard.cancel()  # no other timer may be pending: it would hide the sleep's
    alarm(0.1)
    with pytest.raises(Alarm):
        sleep(5)
    assert coopsock.get_hub().stats()["timers"] == 0


_STORM = """
import random, greenlet
class Alarm(Exception):
    pass
armed = False
def in_echoer(frame):  # PyPy's getcurrent() lags a switch its own Python code makes: ask the stack
    while frame is not None and frame.f_code is not echo.__code__:
        frame = frame.f_back
    return frame is not None
def tick(signum, frame):
    # Only while the main greenlet is inside its try, and not in the echo
    # greenlet: it lands in the main greenlet, or in the hub, which defers it.
    # Once per trip: a deferred one runs later, and two would meet in the except.
    global armed
    if armed and greenlet.getcurrent() is not echoer and not in_echoer(frame):
        armed = False
        raise Alarm
a, b = coopsock.socketpair()
def echo():
    with b:
        while True:
            data = b.recv(100)
            if not data:
                return
            b.sendall(data)
echoer = SIGNAL.start_echo()
SIGNAL.setup()
# The garbage of the imports so far (the backend probe's loop; patch()'s and
# importlib's module locks, which PyPy frees late): a signal landing in its
# __del__ or weakref callback is Python's to print, not the hub's to handle.
gc.collect()
def receive_until(marker):
    # A function, not a loop in the try itself: CPython 3.11-3.13 can look up
    # a signal's exception at a loop's jump back outside the try (gh-108214).
    global received
    while marker not in received:  # an interrupted trip's echo may come first
        received += a.recv(100)
rng, alarms, trips, received = random.Random(8), 0, 0, b""
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    marker = b"<%d>" % (alarms + trips)
    after = rng.uniform(5e-5, 3e-4 if sys.implementation.name != "pypy" else 3e-3)  # (PyPy's trips are slower)
    try:
        SIGNAL.fire(after)
        armed = True
        a.settimeout(rng.choice([None, 5]))
        a.sendall(marker)
        receive_until(marker)
        sleep(rng.choice([0, 0.0001]))
        SIGNAL.settle()
        armed = False
        received, trips = b"", trips + 1
    except SIGNAL.raises:
        armed = False
        alarms += 1
SIGNAL.stop()
a.settimeout(5)
a.sendall(b"<end>")
while not received.endswith(b"<end>"):
    received += a.recv(100)
for _ in range(100):
    a.sendall(b"x" * 64)
    got = b""
    while len(got) < 64:
        got += a.recv(64 - len(got))
    assert got == b"x" * 64
a.close()
echoer.join(5)
assert echoer.successful(), "the echo side never saw the close"
stats = coopsock.get_hub().stats()
assert stats["waiting"] == 0 and stats["fds"] == 0 and stats["timers"] == 0, stats
try:
    coopsock.get_hub().switch()
    raise AssertionError("no LoopExit")
except coopsock.LoopExit:
    pass
print("OK", alarms, trips)
"""
_STORM_PARTS = _STORM.split("SIGNAL.setup()\n", 1)

_ALARMS_DEFERRED = """
class SIGNAL:  # a raising SIGALRM handler, installed after patch(signal=True)
    raises = Alarm
    def start_echo():
        return spawn(echo)
    def settle():
        pass
    def setup():
        coopsock.patch(signal=True)
        signal.signal(signal.SIGALRM, tick)
    def fire(after):
        signal.setitimer(signal.ITIMER_REAL, after)
    def stop():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
"""

_CTRL_C = """
class SIGNAL:  # Ctrl-C with Python's default handler, which the hub defers when it lands in the hub
    raises = KeyboardInterrupt
    def start_echo():  # in a thread: Ctrl-C lands in the main thread, here in the main greenlet or the hub
        plain = stdsocket.socket(fileno=b.detach())
        plain.setblocking(True)  # (coopsock's fds are non-blocking)
        def serve():
            with plain:
                while data := plain.recv(100):
                    plain.sendall(data)
        thread = threading.Thread(target=serve)
        thread.start()
        thread.successful = lambda: thread.join(5) or not thread.is_alive()
        return thread
    # Pipes, not queues: a Ctrl-C landing in a queue's Python code (PyPy's) can leave its lock held.
    orders, acks, trip = os.pipe(), os.pipe(), 0
    def send():  # one thread for every signal: a thread each would leave garbage for the signals to land in
        while True:
            number, after = struct.unpack("id", os.read(SIGNAL.orders[0], 16))
            time.sleep(after)
            os.kill(os.getpid(), signal.SIGINT)
            os.write(SIGNAL.acks[1], struct.pack("i", number))  # after the signal: it lands before settle() returns
    def setup():
        threading.Thread(target=SIGNAL.send, daemon=True).start()
    def fire(after):
        SIGNAL.trip += 1
        SIGNAL.firing = rng.random() < 0.5  # the other trips run undisturbed, to completion
        if SIGNAL.firing:
            os.write(SIGNAL.orders[1], struct.pack("id", SIGNAL.trip, after))
    def settle():  # inside the try: this trip's signal lands here at the latest, not after it
        if SIGNAL.firing:
            while struct.unpack("i", os.read(SIGNAL.acks[0], 4))[0] != SIGNAL.trip:
                pass  # an interrupted trip's
            until = time.monotonic() + 2  # sent: its KeyboardInterrupt comes (PyPy's a little later)
            while time.monotonic() < until:
                sleep(0.0001)
    def stop():
        pass
"""


@pytest.mark.parametrize("sender", ["alarm_deferred", "ctrl_c"])
def test_signals_landing_anywhere_in_the_wait_path_leave_the_hub_consistent(backend, sender):
    # A signal every 50-300 us lands between any two bytecodes of the wait
    # path, in the main greenlet and in the hub. One landing in the hub is
    # deferred to the hub's next step and raised in the main greenlet;
    # afterwards the hub must work as if nothing had happened: no waiter,
    # deadline or timer lost or left behind.
    prelude = _ALARMS_DEFERRED if sender == "alarm_deferred" else _CTRL_C
    storm = _STORM_PARTS[0].replace("a, b = coopsock.socketpair()", prelude + "a, b = coopsock.socketpair()") + \
        "SIGNAL.setup()\n" + _STORM_PARTS[1]
    proc = _run_child(storm, coopsock.BACKEND, timeout=60)
    _assert_clean_exit(proc)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    alarms, trips = map(int, proc.stdout.split()[-2:])
    assert alarms > 50 and trips > 50, proc.stdout  # the signals did land, and trips did complete


def test_ctrl_c_landing_in_the_hubs_own_code_reaches_the_main_greenlet_after_the_hubs_step():
    code = """
    hub = coopsock.get_hub()
    ran = []
    hub.run_callback(signal.raise_signal, signal.SIGINT)  # Python runs the handler in the hub
    hub.run_callback(ran.append, "the next callback of the same pass")
    try:
        sleep(5)
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
    assert ran == ["the next callback of the same pass"], ran  # the hub's step was not cut short
    assert hub.stats()["timers"] == 0 and not hub._parked, (hub.stats(), hub._parked)
    hub.destroy()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the hub gives SIGINT back
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_a_sigint_handler_the_program_installed_is_left_alone():
    code = """
    def mine(signum, frame):
        raise RuntimeError("mine")
    signal.signal(signal.SIGINT, mine)
    coopsock.get_hub()
    assert signal.getsignal(signal.SIGINT) is mine
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_a_ctrl_c_as_the_hub_looks_at_sigint_goes_to_the_programs_handler():
    # The hub installs its handler to learn the one before, and puts the
    # program's back: a Ctrl-C in between ran the hub's (a demo worker died of
    # it in CI). It must reach the program's.
    code = """
    calls = []
    def mine(signum, frame):
        calls.append(signum)
    signal.signal(signal.SIGINT, mine)
    real = signal.signal
    def signal_then_ctrl_c(signum, handler):
        previous = real(signum, handler)
        if handler is coopsock._interrupt:
            signal.raise_signal(signal.SIGINT)
        return previous
    signal.signal = signal_then_ctrl_c
    coopsock.get_hub()
    signal.signal = real
    assert calls == [signal.SIGINT], calls
    assert signal.getsignal(signal.SIGINT) is mine
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_patch_signal_defers_a_handler_that_lands_in_the_hub_and_hides_its_wrapper(alarm):
    hub, calls = coopsock.get_hub(), []

    def handler(signum, frame):
        calls.append(coopsock.getcurrent())
        raise Alarm
    coopsock.patch(signal=True)
    try:
        assert signal.signal(signal.SIGUSR1, handler) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGUSR1) is handler
        hub.run_callback(signal.raise_signal, signal.SIGUSR1)
        with pytest.raises(Alarm):
            sleep(5)
        assert calls == [hub]  # run by the hub, at its next step, and raised here
        assert signal.signal(signal.SIGUSR1, signal.SIG_DFL) is handler
    finally:
        coopsock.unpatch()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert signal.signal is coopsock._originals.get((signal, "signal"), signal.signal)


def test_the_park_primitive_wrapped_in_a_pass_through_keeps_timeouts_and_the_one_reader_rule(pair, monkeypatch):
    # A tracer, a test double or a refactor may wrap it: nothing may depend on its frame.
    for name in ("park", "wait"):
        real = getattr(coopsock.Hub, name)
        monkeypatch.setattr(coopsock.Hub, name, lambda self, *args, real=real: real(self, *args))
    a, _ = pair
    a.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(stdsocket.timeout):
        a.recv(1)
    assert time.monotonic() - started < 2
    a.settimeout(None)
    first = spawn(a.recv, 1)
    sleep(0)
    with pytest.raises(coopsock.ConcurrentObjectUseError):
        a.recv(1)
    first.kill()
    with pytest.raises(coopsock.Timeout), coopsock.Timeout(0.05):
        sleep(5)


def test_a_chaining_unraisablehook_installed_later_sees_each_error_once():
    code = """
    import sys
    seen = []
    previous = sys.unraisablehook
    def hook(unraisable):
        seen.append(unraisable.exc_value)
        if len(seen) > 5:
            raise SystemExit("recursion")
        previous(unraisable)
    a, b = coopsock.socketpair()
    spawn(b.sendall, b"x")
    a.recv(1)
    sys.unraisablehook = hook
    spawn(b.sendall, b"y")
    a.recv(1)
    class Dies:
        def __del__(self):
            raise ZeroDivisionError("in __del__")
    Dies()
    gc.collect()  # PyPy runs __del__ only when its GC does; CPython at once
    sleep(0.01)
    assert len(seen) == 1 and isinstance(seen[0], ZeroDivisionError), seen
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


# ---------------------------------------------------------------------------
# Misuse: each message says what went wrong and what to do

# coopsock's own exceptions (no stdlib call raises them, so their words are
# ours to choose): the fix each message names (what follows its last ": " or
# "; ") must be in the match= of a test that provokes it.
_OWN_ERRORS = {"BlockingSwitchOutError", "ConcurrentObjectUseError", "LoopExit", "RuntimeError", "_EvError",
               "_SelError"}
_NO_FIX = {"libev: …"}  # a failed system call that libev reports: no misuse, nothing for the caller to do


def _texts(node):
    """Yield the possible texts of a message's AST node, with "…" for each f-string hole."""
    if isinstance(node, ast.IfExp):
        yield from _texts(node.body)
        yield from _texts(node.orelse)
    elif isinstance(node, ast.Name):
        yield getattr(coopsock, node.id)
    elif isinstance(node, ast.JoinedStr):
        yield "".join(part.value if isinstance(part, ast.Constant) else "…" for part in node.values)
    elif isinstance(node, ast.Constant):
        yield node.value
    else:
        raise TypeError(f"teach _texts to read {ast.dump(node)}")


def test_every_misuse_message_names_a_fix_that_a_test_checks():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(coopsock.__file__) as source:
        tree = ast.parse(source.read())
    messages = {text for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
                and getattr(node.func, "id", None) in _OWN_ERRORS for text in _texts(node.args[0])} - _NO_FIX
    patterns = []
    for name in os.listdir(here):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(here, name)) as test_file:
                found = re.finditer(r'match=((?:r?"[^"]*"\s*)+)', test_file.read())  # "a" "b" too
                patterns += [re.sub(r"\\(.)", r"\1", ast.literal_eval(f"({m[1]})")) for m in found]  # unescaped
    assert len(messages) >= 8  # the parse found them
    untested = [text for text in messages if not any(re.split("[:;] ", text)[-1] in p for p in patterns)]
    assert not untested, "add a test with pytest.raises(..., match=<the fix>) for each of these"


def test_blocking_from_the_hub_says_to_call_from_a_spawned_greenlet(pair):
    caught, done = [], coopsock.Event()
    attempts = [lambda: pair[0].recv(1), lambda: coopsock.wait_read(pair[0]), coopsock.Event().wait,
                coopsock.get_hub().switch, lambda: sleep(0)]

    def from_the_hub():
        for attempt in attempts:
            try:
                attempt()
            except coopsock.BlockingSwitchOutError as exc:
                caught.append(exc)
        done.set()
    coopsock.get_hub().run_callback(from_the_hub)
    done.wait(5)
    assert len(caught) == len(attempts)
    for exc in caught[:-1]:
        with pytest.raises(coopsock.BlockingSwitchOutError, match="inside the hub: call blocking functions from a "
                                                                  "spawned greenlet, not a hub callback"):
            raise exc
    with pytest.raises(coopsock.BlockingSwitchOutError, match="cannot sleep inside the hub: sleep in a spawned greenlet$"):
        raise caught[-1]


def test_waiting_for_what_nothing_can_wake_says_to_spawn_the_waker_or_use_a_timeout():
    with pytest.raises(coopsock.LoopExit, match="; spawn the greenlet that is to wake it before waiting, or wait "
                                                "with a timeout$"):
        coopsock.Event().wait()
    assert coopsock.Event().wait(0.01) is False  # the fix it names


def test_a_second_waiter_is_told_to_use_one_greenlet_per_direction_or_a_lock(pair):
    a, _ = pair
    first = spawn(a.recv, 1)
    sleep(0)
    with pytest.raises(coopsock.ConcurrentObjectUseError, match=r"^This socket is already used by another greenlet "
                                                                r"for reading: .*; use one greenlet per direction, or a lock$"):
        a.recv(1)
    first.kill()


def test_any_number_of_greenlets_wait_on_one_raw_fd_and_beside_a_socket_call(pair):
    # As select(2), the stdlib and gevent allow: the one-waiter rule is a socket call's own.
    a, b = pair
    def polling():
        poller = coopsock.poll()
        poller.register(a, select.POLLIN)
        return poller.poll(5000)

    def selecting_with_a_selector():
        with coopsock.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ)
            return [key.fileobj for key, _ in selector.select(5)]
    reader = spawn(a.recv, 1)
    raw = [spawn(coopsock.wait_read, a.fileno()) for _ in range(3)]
    selecting = [spawn(coopsock.select, [a], [], [], 5) for _ in range(2)]
    polls = [spawn(polling), spawn(selecting_with_a_selector)]
    sleep(0)
    assert coopsock.select([a], [], [], 0.05) == ([], [], [])
    b.sendall(b"xy")  # the reader takes one byte, the other keeps the fd readable for the rest
    assert reader.get(timeout=5) == b"x"
    assert coopsock.joinall(raw + selecting + polls, timeout=5) == raw + selecting + polls
    assert all(g.successful() for g in raw) and [g.value for g in selecting] == [([a], [], [])] * 2
    assert polls[0].value == [(a.fileno(), select.POLLIN)] and polls[1].value == [a]
    assert coopsock.get_hub().stats()["waiting"] == 0


def test_a_destroyed_hubs_loop_says_to_use_get_hub_for_a_new_one(backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own behaviour: real pyev has no Loop._close, its loop outlives the hub")
    hub = coopsock.get_hub()
    hub.destroy()
    for use in (lambda: hub.loop.start(coopsock._EVRUN_NOWAIT), hub.loop.update, hub._wakeup.send,
                lambda: hub.ev.Timer(0.0, 0.0, hub.loop, print).start()):
        with pytest.raises(hub.ev.Error, match=r"^this loop is closed \(its hub was destroyed\): use get_hub\(\) "
                                               r"for a new hub and loop$"):
            use()
    assert coopsock.get_hub() is not hub and coopsock.get_hub().loop is not hub.loop


def test_the_stand_ins_misused_say_what_to_do(backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own checks: real pyev does not check (libev aborts)")
    ev, loop = coopsock._pyev, coopsock.get_hub().loop
    with pytest.raises(ev.Error, match=r"^this Async is stopped: start\(\) it before send\(\)$"):
        ev.Async(loop, print).send()
    with pytest.raises(ValueError, match=r"one-shot: use after >= 0 and repeat 0.0, not \(1.0, 1.0\)"):
        ev.Timer(1.0, 1.0, loop, print)
    timer = ev.Timer(10.0, 0.0, loop, print)
    timer.start()
    with pytest.raises(ev.Error, match="cannot set a watcher while it is active: stop it first"):
        timer.set(1.0, 0.0)
    timer.stop()
    with pytest.raises(ev.Error, match="illegal event mask: use EV_READ, EV_WRITE or both"):
        ev.Io(0, 4, loop, print)


def test_libev_with_no_backend_it_can_use_says_to_unset_libev_flags(backend, monkeypatch):
    if backend != "libev":
        pytest.skip("the ctypes stand-in's own check (pyev raises its own Error; selectors has no LIBEV_FLAGS)")
    monkeypatch.setenv("LIBEV_FLAGS", "8")  # kqueue only, which Linux has not
    with pytest.raises(coopsock._pyev.Error, match="; unset LIBEV_FLAGS, or set COOPSOCK_LOOP=selectors$"):
        coopsock._pyev.Loop()


# ---------------------------------------------------------------------------
# destroy()


def test_destroy_from_a_spawned_greenlet_with_watchers_active(pair, capfd):
    a = pair[0]
    reader = spawn(a.recv, 10)
    sleep(0)
    old = coopsock.get_hub()
    spawn(old.destroy).join()
    assert coopsock.get_hub() is not old  # a new hub on next use
    c, d = coopsock.socketpair()
    with c, d:
        spawn(d.sendall, b"after")
        assert c.recv(10) == b"after"
    assert not reader.ready()  # parked on the old hub for good, as documented
    assert "Traceback" not in capfd.readouterr().err


def test_waiting_on_a_destroyed_hub_raises_the_backends_error(pair):
    old = coopsock.get_hub()
    old.destroy()
    with pytest.raises(old.ev.Error, match="use get_hub"):
        old.switch()
    with pytest.raises(old.ev.Error, match="use get_hub"):
        old.wait(old._entry(pair[0].fileno()), coopsock._EV_READ)
    assert coopsock.get_hub() is not old and old.stats()["waiting"] == 0


def test_every_stand_in_method_on_a_destroyed_loop_raises_the_backends_error(backend):
    if backend not in STAND_INS:
        pytest.skip("the stand-ins' own behaviour: real pyev has no Loop._close")
    code = """
    r, w = os.pipe()
    loop = P.Loop()
    timer, io, wakeup = P.Timer(0.1, 0.0, loop, print), P.Io(r, P.EV_READ, loop, print), P.Async(loop, print)
    for watcher in (timer, io, wakeup):
        watcher.start()
    loop._close()
    for call in (loop.start, loop.update, loop.reset, timer.start, io.start, wakeup.send, wakeup.start,
                 lambda: P.Timer(0.1, 0.0, loop, print).start(), lambda: P.Async(loop, print).send()):
        try:
            call()
        except P.Error:
            continue
        raise AssertionError(f"{call!r} did not raise")
    for watcher in (timer, io, wakeup):
        watcher.stop()  # a no-op, as on a stopped watcher
        assert not watcher.active
    hub = coopsock.get_hub()
    hub.destroy()
    outcome(hub.loop.start)
    print("OK")
    """
    _assert_clean_exit(_run_child(code, backend))


def test_a_selectors_watcher_whose_start_a_signal_cut_short_leaves_no_registration(backend):
    if backend != "selectors":
        pytest.skip("the selectors stand-in's own registration")
    code = """
    hub = coopsock.get_hub()
    real_add, shots = coopsock._SelIo._add, [1]
    def add_then_signal(self):  # as a signal landing as start() returns: the watcher is started
        real_add(self)
        if shots[0]:
            shots[0] -= 1
            raise KeyboardInterrupt
    coopsock._SelIo._add = add_then_signal
    a, b = coopsock.socketpair()
    try:
        a.recv(1)
    except KeyboardInterrupt:
        pass
    fd = a.fileno()
    a.close()
    b.close()
    assert fd not in hub.loop._ios, hub.loop._ios  # else a later file on that fd number is never watched
    c, d = coopsock.socketpair()
    c.settimeout(5)
    spawn(d.sendall, b"x")
    assert c.recv(1) == b"x"
    print("OK")
    """
    _assert_clean_exit(_run_child(code, backend))


def test_a_libev_loop_whose_making_a_signal_cut_short_is_collected_quietly(backend, monkeypatch):
    if backend != "libev":
        pytest.skip("the ctypes stand-in's own construction")
    def interrupted(*args):  # as a Ctrl-C landing in _EvLoop.__init__
        raise KeyboardInterrupt
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    for where in ("_ev_recorder", "ev_loop_new"):  # after ev_loop_new, and before its result is stored
        with monkeypatch.context() as patch:
            patch.setattr(coopsock._ev_lib if where == "ev_loop_new" else coopsock, where, interrupted)
            with pytest.raises(KeyboardInterrupt):
                coopsock._pyev.Loop()
        gc.collect()
        assert seen == [], where  # __del__ met the half-made loop without an error


def test_a_hub_destroyed_in_its_thread_with_watchers_active_is_collected_safely():
    code = """
    def serve():
        a, b = coopsock.socketpair()
        spawn(a.recv, 1)
        spawn(b.recv, 1)
        coopsock.wait_read(os.open(os.devnull, os.O_RDONLY), 0.001) if False else None
        sleep(0.01)
        coopsock.get_hub().destroy()
    for _ in range(20):
        t = threading.Thread(target=serve)
        t.start()
        t.join()
        gc.collect()
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


# ---------------------------------------------------------------------------
# Closing fds under waiters


def test_closing_a_socket_from_another_thread_wakes_its_waiter_with_ebadf(pair):
    a = pair[0]
    timer = threading.Timer(0.1, a.close)
    timer.start()
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        a.recv(10)
    timer.join()
    assert info.value.errno == errno.EBADF
    assert time.monotonic() - started < 2


def test_closing_a_socket_wakes_a_raw_wait_read_on_its_fd(pair):
    a, _ = pair
    waiter = spawn(coopsock.wait_read, a.fileno())
    sleep(0)
    a.close()
    waiter.join(2)
    assert isinstance(waiter.exception, OSError) and waiter.exception.errno == errno.EBADF
    assert coopsock._CLOSED_WHILE_WAITING in str(waiter.exception)


def test_wait_read_on_a_closed_or_epoll_fd_raises_instead_of_aborting():
    code = """
    r, w = os.pipe()
    os.close(r); os.close(w)
    for wait in (coopsock.wait_read, coopsock.wait_write):
        exc = outcome(wait, r, 0.1)
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF, exc
    import select
    ep = select.epoll()
    exc = outcome(coopsock.wait_read, ep.fileno(), 0.1)
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL, exc
    exc = outcome(coopsock.wait_read, 10 ** 6, 0.1)
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF, exc
    a, b = coopsock.socketpair()
    spawn(b.sendall, b"!")
    coopsock.wait_read(a.fileno(), 2)
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_a_socket_dropped_unclosed_while_its_watcher_is_started_is_safe():
    code = """
    import warnings
    warnings.simplefilter("ignore", ResourceWarning)
    for _ in range(200):
        a, b = coopsock.socketpair()
        spawn(b.sendall, b"x")
        a.recv(1)       # leaves a's read watcher started
        del a, b        # closed by the garbage collector, behind the hub's back
        gc.collect()
        c, d = coopsock.socketpair()  # may take the same fd numbers
        spawn(d.sendall, b"y")
        assert c.recv(1) == b"y"
        c.close(); d.close()
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


# ---------------------------------------------------------------------------
# The hot path keeps its watchers


def test_a_sockets_watcher_stays_started_between_waits_and_stops_at_close(pair):
    a, b = pair
    hub, fd = coopsock.get_hub(), a.fileno()
    started = []
    for _ in range(3):
        spawn(b.sendall, b"x")
        assert a.recv(1) == b"x"
        started.append(hub._fds[fd].watchers[0])
    assert started[0].active and started.count(started[0]) == 3  # one watcher, started once
    a.close()
    assert not started[0].active and fd not in hub._fds


def test_an_idle_socket_does_not_keep_the_hub_alive(pair):
    a, b = pair
    spawn(b.sendall, b"x")
    assert a.recv(1) == b"x"
    with pytest.raises(coopsock.LoopExit):
        coopsock.get_hub().switch()


def test_a_socket_timeout_costs_no_timeout_object_and_no_timer_after_the_wait(pair, hang_guard):
    hang_guard.cancel()  # no other timer may be pending: it would hide the socket's
    a, b = pair
    a.settimeout(5)
    spawn(b.sendall, b"x")
    assert a.recv(1) == b"x"
    assert coopsock.get_hub().stats()["timers"] == 0


def test_a_raw_wait_leaves_no_watcher_behind(pair):
    a, b = pair
    spawn(b.sendall, b"ready")
    coopsock.wait_read(a.fileno(), 2)
    assert select.select([a], [], [], 0)[0] == [a]
    assert coopsock.get_hub().stats()["fds"] == 0  # nothing says when a raw fd closes


@pytest.mark.loop_independent
def test_a_loop_closer_whose_init_a_signal_cut_short_is_dropped_quietly(monkeypatch):
    # A demo worker got SIGINT inside get_hub(), between _LoopCloser's
    # allocation and its __init__'s store: its __del__ printed an
    # AttributeError traceback (CI, 3.10 with pyev, once).
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    half_made = coopsock._LoopCloser.__new__(coopsock._LoopCloser)
    del half_made
    gc.collect()
    assert unraisable == []


def test_only_its_own_thread_closes_a_hubs_loop():
    # When the thread-local that holds a hub goes (at interpreter exit, in the
    # main thread), the loop of a thread still running it must be left alone.
    code = """
    stop, ticks = [], []
    def tick():
        while not stop:
            sleep(0.0005)
            ticks.append(1)
        ticks.append("done")
    thread = threading.Thread(target=tick)
    thread.start()
    while len(ticks) < 10:
        time.sleep(0.01)
    coopsock._local = threading.local()  # the old one goes: its closers run here, in the main thread
    before = len(ticks)
    while len(ticks) < before + 10 and thread.is_alive():
        time.sleep(0.01)
    stop.append(True)
    thread.join(10)
    assert ticks[-1] == "done", "the thread's hub stopped working"
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_a_fork_leaves_the_parents_other_hubs_watching_their_fds():
    # The child frees the hub of a thread that did not survive the fork; that
    # hub shares its epoll instance with the parent's, which must keep its fds.
    code = """
    ready = []
    def serve():
        listener = coopsock.create_server(("127.0.0.1", 0))
        ready.append(listener)
        def echo(conn):
            while True:
                data = conn.recv(100)
                if not data:
                    return
                conn.sendall(data)
        while True:
            try:
                spawn(echo, listener.accept()[0])
            except OSError:  # closed by the main thread: done
                return
    server = threading.Thread(target=serve)  # joined: a daemon thread in a greenlet can crash at exit
    server.start()
    while not ready:
        time.sleep(0.01)
    clients = [coopsock.create_connection(ready[0].getsockname(), timeout=5) for _ in range(5)]
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        for c in clients:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
    ready[0].close()
    server.join(10)
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


class _HookedPoller:
    """A selectors loop's poller that runs hooks[name]() once, right after its next call of name, as a signal may."""

    def __init__(self, poller):
        self.poller, self.hooks, self.polls, self.failed = poller, {}, 0, []

    def __getattr__(self, name):
        call = getattr(self.poller, name)

        def hooked(*args):
            try:
                return call(*args)
            except OSError as exc:
                self.failed.append((name, exc.errno))
                raise
            finally:  # whether the call returned or raised
                self.polls += name == "poll"
                hook = self.hooks.pop(name, None)
                if hook is not None:
                    hook()
        return hooked


def test_a_signal_next_to_any_kernel_call_of_the_selectors_loop_loses_no_wake_up_and_spins_not(backend, monkeypatch):
    # The kernel holds the only copy of what the selectors loop watches. A
    # signal landing right after any epoll_ctl() of a start or a stop, or
    # before the one of a stop, must leave the fd watched as its started
    # watchers want: a wait wakes, and an interest that no watcher has is
    # dropped when it fires instead of waking the poll for ever.
    if backend != "selectors":
        pytest.skip("the selectors stand-in's own registration")
    loop = coopsock.get_hub().loop
    loop._poller = poller = _HookedPoller(loop._poller)

    def signal():
        raise KeyboardInterrupt

    def still_watched_as_wanted(a, b):
        b.sendall(b"x")  # a is readable and nobody waits: at most a few polls
        polls = poller.polls
        sleep(0.05)
        assert poller.polls - polls < 20, "the loop spun on an interest no watcher has"
        assert a.recv(1) == b"x"
        spawn(b.sendall, b"y")
        assert a.recv(1) == b"y"  # a wait wakes
        polls = poller.polls
        sleep(0.05)
        assert poller.polls - polls < 20

    for call in ("modify", "register"):  # a start: the MOD that fails with ENOENT, then the ADD
        a, b = coopsock.socketpair()
        with a, b:
            a.settimeout(5)
            poller.hooks[call] = signal
            with pytest.raises(KeyboardInterrupt):
                a.recv(1)
            assert not poller.hooks, f"no {call}() was made"
            still_watched_as_wanted(a, b)
    real_apply = coopsock._SelLoop._apply
    for where in ("after", "before"):  # a stop: the hub stops a watcher that fires with nobody waiting
        a, b = coopsock.socketpair()
        with a, b:
            a.settimeout(5)
            spawn(b.sendall, b"0")
            assert a.recv(1) == b"0"  # its watcher stays started
            if where == "after":
                poller.hooks["unregister"] = signal
            else:
                monkeypatch.setattr(coopsock._SelLoop, "_apply", lambda loop, fd, extra=0: signal())
            b.sendall(b"1")
            with pytest.raises(KeyboardInterrupt):
                sleep(1)
            monkeypatch.setattr(coopsock._SelLoop, "_apply", real_apply)
            assert not poller.hooks
            assert a.recv(1) == b"1"
            still_watched_as_wanted(a, b)
    if isinstance(poller.poller, getattr(select, "epoll", ())):
        # In the kernel's set though no watcher is started (a start cut short
        # left it), and added there between the failed MOD and the ADD.
        c, d = coopsock.socketpair()
        e, f = coopsock.socketpair()
        with c, d, e, f:
            c.settimeout(5)
            e.settimeout(5)
            poller.poller.register(c.fileno(), select.EPOLLIN)
            spawn(d.sendall, b"w")
            assert c.recv(1) == b"w"
            poller.hooks["modify"] = lambda: poller.poller.register(e.fileno(), select.EPOLLIN)
            spawn(f.sendall, b"v")
            assert e.recv(1) == b"v"
            assert poller.failed[-2:] == [("modify", errno.ENOENT), ("register", errno.EEXIST)]
