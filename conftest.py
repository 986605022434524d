"""Fixtures every test file shares: each test runs on every loop backend present."""

import gc
import importlib.util
import os
import signal
import socket as stdsocket
import subprocess
import sys
import textwrap
import time

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


# Real programs after patch(): servers of our own on loopback, and many
# greenlets at once against them, with a ticker watching the hub.

@pytest.fixture
def patched():
    """coopsock.patch() for the test, unpatch() after; create what the test uses inside it (patch first)."""
    coopsock.patch()
    try:
        yield
    finally:
        coopsock.unpatch()


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with stdsocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(process, port, log, what):
    """Return once something accepts on port; fail with the log's end if process exits first (30 s at most)."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with stdsocket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    status = "is still starting after 30 s" if process.poll() is None else f"exited with status {process.poll()}"
    pytest.fail(f"{what} {status}; its log ends with:\n{log.read_text(errors='replace')[-3000:]}")


def thread_clock():
    """Return the seconds this thread spent on a CPU, and waiting for one (Linux; else 0)."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            ran, queued = stats.read().split()[:2]
        return int(ran) / 1e9, int(queued) / 1e9
    except OSError:
        return time.thread_time(), 0.0


def other_threads_clock():
    """Return {thread id: seconds on a CPU and waiting for one} for this process's other threads (Linux; else {})."""
    clocks = {}
    try:
        tids, me = os.listdir("/proc/self/task"), os.readlink("/proc/thread-self").rsplit("/", 1)[-1]
    except OSError:
        return clocks
    for tid in tids:
        try:
            if tid != me:
                with open(f"/proc/self/task/{tid}/schedstat") as stats:
                    ran, queued = stats.read().split()[:2]
                clocks[tid] = (int(ran) + int(queued)) / 1e9
        except OSError:  # it ended
            pass
    return clocks


def processes_clock(pids):
    """Return the seconds the processes pids spent on a CPU or waiting for one, all threads (Linux; else 0)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:  # ended, or not Linux
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stats:
                    total += sum(int(n) for n in stats.read().split()[:2])
            except OSError:
                pass
    return total / 1e9


class Ticker:
    """A greenlet waking every 5 ms that records the longest gap: how long the hub stalled.

    Time the OS kept the thread waiting for a CPU (a loaded machine) is left
    out. `blocked` is the part of a gap the thread slept (a blocking call),
    as opposed to greenlets running Python or OpenSSL, which no cooperative
    scheduler interrupts, and to the process's other threads running (or
    waiting for a CPU) meanwhile: this one may have slept waiting for the GIL.
    """

    def __enter__(self):
        self.longest = self.blocked = self.starved = 0.0
        self.ticks = 0
        self.greenlet = coopsock.spawn(self._run)
        return self

    def _run(self):
        last, (last_ran, last_queued), last_others = time.monotonic(), thread_clock(), other_threads_clock()
        while True:
            coopsock.sleep(0.005)
            now, (ran, queued), others = time.monotonic(), thread_clock(), other_threads_clock()
            gap, starved = now - last - (queued - last_queued), queued - last_queued
            busy = sum(others[tid] - last_others[tid] for tid in others.keys() & last_others.keys())
            self.longest = max(self.longest, gap)
            self.blocked = max(self.blocked, gap - (ran - last_ran) - busy)
            self.starved += starved
            last, last_ran, last_queued, last_others, self.ticks = now, ran, queued, others, self.ticks + 1

    def __exit__(self, *exc):
        self.greenlet.kill()


def run_concurrently(task, expected, count=100, seconds=0.1, width=None, stagger=0.0, stall_limit=0.05,
                     servers=lambda: ()):
    """Run task(i) for i in range(count) in as many greenlets at once; check every result, the time and the hub.

    seconds: how long one task waits (for a server, a child, a thread); width:
    how many can wait at once (a pool's size; None: all). The time neither
    computing nor waiting for a CPU must stay within 0.9 s of the ideal
    (count / width rounds of `seconds`) and under a third of the serial time.
    stagger: task i starts i * stagger seconds after the first, so that what
    the hub cannot pass over (creating a process waits for the child's exec,
    1-10 ms) costs one pass each, not one pass for all.

    servers: a function giving the pids of the local servers the tasks call
    (a gunicorn worker): what they compute, or wait for a CPU, is left out
    of the time too, as this thread's own.

    stall_limit: the longest the ticker may wait. The hub lets timers in once
    a pass has run greenlets for 5 ms, but cannot cut one greenlet's run
    short: a task that computes longer without waiting (SQLAlchemy's first
    connection) needs a higher limit. (Measured here with the budget: TLS
    clients, requests, httpx, redis-py 7-17 ms; without it 60-290 ms.)

    A task that starts far behind its time, by more than the CPU this thread
    ran and waited for since the start explains (a wait that blocked the whole
    thread, say for a pool's timeout), fails at once: one such wait then costs
    one timeout, not one per greenlet.
    """
    rounds = -(-count // (width or count))
    limit = min(count * seconds / 3, rounds * seconds + stagger * count + 0.9)
    give_up = limit + 2.0

    def started(i):
        late = time.monotonic() - start - i * stagger
        if late > give_up:
            ran_since, queued_since = (now - then for now, then in zip(thread_clock(), clock_at_start))
            if late - ran_since - queued_since > give_up:  # (50 forks of PyPy: 2 s of CPU, measured in CI)
                raise AssertionError(f"began {late:.1f} s late, {ran_since:.1f} s of it on a CPU and "
                                     f"{queued_since:.1f} s waiting for one: the hub was blocked")
        return task(i)

    gc.collect()
    freeze = getattr(gc, "freeze", lambda: None)  # PyPy has none: its major collections are incremental
    freeze()  # late in a long run, a full collection of the suite's garbage would stall the hub itself
    try:
        with Ticker() as ticker:
            start, clock_at_start, served = time.monotonic(), thread_clock(), processes_clock(servers())
            ran = clock_at_start[0]
            # At once, as a user starts them (spawn); staggered, by timers, which run in deadline order,
            # so that a ticker due later waits for all that fell due before it.
            greenlets = [coopsock.spawn_later(i * stagger, started, i) if stagger else coopsock.spawn(started, i)
                         for i in range(count)]
            coopsock.joinall(greenlets, timeout=30)
            elapsed, ran = time.monotonic() - start, thread_clock()[0] - ran
            served = processes_clock(servers()) - served
    finally:
        getattr(gc, "unfreeze", lambda: None)()
    timing = (f"elapsed {elapsed:.3f} s (on a CPU {ran:.3f} s, waiting for one {ticker.starved:.3f} s, the servers "
              f"{served:.3f} s), longest stall {ticker.longest:.3f} s, blocked {ticker.blocked:.3f} s")
    failures = {}  # {kind of failure: [what happened to task i]}
    for i, g in enumerate(greenlets):
        if not g.ready():
            failures.setdefault("unfinished", []).append(f"task {i} did not finish in 30 s")
            g.kill(block=False)
        elif g.exception is not None:
            failures.setdefault(type(g.exception).__name__, []).append(f"task {i}: {str(g.exception)[:300]}")
    if failures:
        pytest.fail(f"{sum(map(len, failures.values()))} of {count} tasks failed ({timing}): " + "; ".join(
            f"{len(seen)} x {kind}, first {seen[0]}" for kind, seen in failures.items()))
    assert [g.value for g in greenlets] == [expected(i) for i in range(count)]
    print(f"\n{task.__qualname__}: {timing}")
    # One after another they would wait count * seconds; overlapped, the time
    # neither computing nor waiting for a CPU is about `rounds` waits.
    assert elapsed - ticker.starved - ran - served < limit, f"{count} tasks did not overlap (limit {limit:.2f} s): {timing}"
    assert ticker.blocked < 0.05, f"the hub was blocked: {timing}"
    # PyPy's JIT compiles a loop in the greenlet that first runs it hot: tens of ms of CPU in one run.
    assert sys.implementation.name == "pypy" or ticker.longest < stall_limit, f"the hub stalled: {timing}"
    return elapsed


@pytest.fixture(scope="module")
def ca():
    """A certificate authority of our own (trustme)."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca):
    """A server certificate for localhost and 127.0.0.1, signed by ca."""
    return ca.issue_cert("localhost", "127.0.0.1")


SLOW_SERVERS = r'''

import http.server, socketserver, ssl, sys, threading, time

class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else the body, sent after the headers, waits 40 ms for the client's delayed ACK

    def do_GET(self):
        time.sleep(0.1)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Smtp(socketserver.StreamRequestHandler):
    def handle(self):
        write = self.wfile.write
        write(b"220 slow smtp ready\r\n")
        for line in self.rfile:
            verb = line[:4].upper()
            if verb == b"DATA":
                write(b"354 go on\r\n")
                lines = []
                for line in self.rfile:
                    if line == b".\r\n":
                        break
                    lines.append(line)
                time.sleep(0.1)
                write(b"250 " + lines[0].strip() + b"\r\n")
            elif verb == b"QUIT":
                write(b"221 bye\r\n")
                return
            else:
                write(b"250 ok\r\n")

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True
    request_queue_size = 256

http_server = Server(("127.0.0.1", 0), Http)
https_server = Server(("127.0.0.1", 0), Http)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[1])
https_server.socket = context.wrap_socket(https_server.socket, server_side=True, do_handshake_on_connect=False)
smtp_server = Server(("127.0.0.1", 0), Smtp)
for server in (http_server, https_server, smtp_server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(*(server.server_address[1] for server in (http_server, https_server, smtp_server)), flush=True)
sys.stdin.read()
'''


@pytest.fixture(scope="module")
def slow_servers(cert, ca, tmp_path_factory):
    """Ports of an HTTP, an HTTPS and an SMTP server in another process; the CA file."""
    folder = tmp_path_factory.mktemp("certs")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVERS, str(folder / "server.pem")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        http_port, https_port, smtp_port = map(int, process.stdout.readline().split())
        yield {"http": http_port, "https": https_port, "smtp": smtp_port, "cafile": str(folder / "ca.pem")}
    finally:
        process.stdin.close()
        process.wait(10)
        process.stdout.close()


@pytest.fixture(scope="module")
def redis_port():
    """The port of a redis-server of our own on loopback, stopped after the module's tests."""
    import shutil

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    # --hz 100: a blocking command's timeout is checked hz times a second (at 10, BLPOP 0.1 takes up to 0.2 s)
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--hz", "100"], stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail(f"redis-server exited with status {process.wait()}")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
