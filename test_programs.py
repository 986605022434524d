"""Whole programs after patch(): bounded pools, thread pools, subprocesses and logging, cooperatively.

Each program runs 50 greenlets at once (logging: 100), each waiting 100-200
ms for a server the test starts on loopback, a child process or a real
thread; run_concurrently (conftest.py) checks every result, that the waits
overlapped and that the hub never stalled meanwhile. Then the
synchronisation objects one at a time: shared with a real thread both ways,
and interrupted by kill() and Timeout in every kind of wait.

What a test uses is created inside it, after patch() (the `patched`
fixture): objects made before patch() stay the stdlib's.
"""

import collections
import contextlib
import gc
import json
import logging
import logging.handlers
import os
import queue
import shutil
import signal
import socket as stdsocket
import subprocess
import sys
import threading
import time

import pytest

import coopsock
from conftest import Ticker, free_port, run_concurrently, wait_for_port

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])  # daemons, for non-root too


@contextlib.contextmanager
def thread_alarm(seconds):
    """Fail the test if it is still inside after `seconds`, even when a wait blocks its whole thread.

    conftest's hang_guard is a timer of the hub's, which cannot fire while a
    wait blocks the thread in a real lock (a library's Event.wait(), say).
    A signal interrupts such a wait (a lock's acquire, waitpid, poll) when
    its handler raises; it comes again every 5 s for a wait that blocks anew.
    """
    def expire(signum, frame):
        raise AssertionError(f"still running after {seconds} s: a wait blocked the whole thread (a real lock?)")

    previous = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds, 5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001), interval)


@pytest.fixture(autouse=True)
def blocked_thread_guard():
    """Turn a test whose thread is blocked for good (a deadlock in a real lock) into a failure."""
    with thread_alarm(30):
        yield


def stop(process):
    """Terminate a server of ours and reap it (killed if it takes more than 30 s)."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------
# Bounded pools: 50 greenlets share 4 or 5 connections, each task holding
# one for 100 ms. One after another: 5 s; cooperatively, 10-13 rounds.

@pytest.fixture(scope="module")
def mariadb_port(tmp_path_factory):
    """The port of a MariaDB server of our own on loopback, stopped after the module's tests.

    It starts on an empty data directory (InnoDB creates its files, ~1 s)
    without grant tables: any user connects, no password.
    """
    server = shutil.which("mariadbd", path=SBIN_PATH) or shutil.which("mysqld", path=SBIN_PATH)
    if not server:
        pytest.skip("mariadbd is not installed: apt-get install mariadb-server")
    folder = tmp_path_factory.mktemp("mariadb")
    (folder / "data").mkdir()
    port, log = free_port(), folder / "log"
    args = [server, "--no-defaults", f"--datadir={folder / 'data'}", f"--socket={folder / 'sock'}",
            f"--pid-file={folder / 'pid'}", f"--port={port}", "--bind-address=127.0.0.1", "--skip-grant-tables",
            "--skip-log-bin", "--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M"]
    if os.getuid() == 0:
        args.append("--user=root")  # else it refuses to run as root
    with open(log, "wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(process, port, log, "mariadbd")
        yield port
    finally:
        stop(process)
        shutil.rmtree(folder / "data", ignore_errors=True)  # InnoDB's 30 MB


def test_sqlalchemy_queue_pool_with_pymysql(patched, mariadb_port):
    import sqlalchemy
    from sqlalchemy.pool import QueuePool

    engine = sqlalchemy.create_engine(f"mysql+pymysql://root@127.0.0.1:{mariadb_port}/", poolclass=QueuePool,
                                      pool_size=5, max_overflow=0, pool_timeout=10,
                                      connect_args={"connect_timeout": 10, "read_timeout": 10, "write_timeout": 10})
    query = sqlalchemy.text("SELECT SLEEP(0.1), :i")

    def select(i):
        with engine.connect() as conn:
            return tuple(conn.execute(query, {"i": i}).one())
    try:
        # The first connection initialises the dialect and the first query compiles, and each PyMySQL connect
        # builds an SSL context (~30 ms of CPU): runs of one greenlet that no scheduler cuts short (28-57 ms
        # measured with the hub's budget; 0.13-0.27 s before it, when a pass ran every check-out at once).
        run_concurrently(select, lambda i: (0, i), count=50, width=5, stall_limit=0.25)
    finally:
        engine.dispose()


def test_redis_blocking_connection_pool(patched, redis_port):
    import redis

    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=redis_port, max_connections=5, timeout=10,
                                        socket_timeout=10)
    client = redis.Redis(connection_pool=pool)

    def wait_then_set_and_get(i):
        popped = client.blpop([f"programs:empty:{i}"], timeout=0.1)  # blocks its connection only, 100 ms
        client.set(f"programs:{i}", f"value {i * 7}")
        return popped, client.get(f"programs:{i}")
    try:
        run_concurrently(wait_then_set_and_get, lambda i: (None, f"value {i * 7}".encode()), count=50, width=5)
    finally:
        pool.disconnect()


def test_urllib3_pool_manager_that_blocks(patched, slow_servers):
    import urllib3

    manager = urllib3.PoolManager(maxsize=4, block=True, timeout=10, retries=False)
    url = f"http://127.0.0.1:{slow_servers['http']}/urllib3/"

    def get(i):
        response = manager.request("GET", f"{url}{i}", pool_timeout=10)  # none: a lost wake-up waits for ever
        return response.status, response.data
    try:
        run_concurrently(get, lambda i: (200, f"/urllib3/{i}".encode()), count=50, width=4)
    finally:
        manager.clear()


def test_httpx_client_with_limits(patched, slow_servers):
    import httpx

    url = f"http://127.0.0.1:{slow_servers['http']}/httpx/"
    with httpx.Client(limits=httpx.Limits(max_connections=5), timeout=10) as client:
        def get(i):
            response = client.get(f"{url}{i}")
            return response.status_code, response.content
        # httpx costs ~5 ms of CPU a request: replies arriving together once ran back to back in one pass
        # (52 ms once in CI); the hub's 5 ms budget lets the ticker in between (11-13 ms measured).
        run_concurrently(get, lambda i: (200, f"/httpx/{i}".encode()), count=50, width=5)


def test_thread_pool_executor_results_in_greenlets(patched):
    import concurrent.futures

    def work(i):  # in a worker thread: the patched sleep parks it on the thread's own hub
        time.sleep(0.1)
        return i * i, threading.get_native_id()

    threads = set()  # the OS threads the work ran in

    def submit(i):
        square, thread = executor.submit(work, i).result(timeout=10)
        threads.add(thread)
        return square
    executor = concurrent.futures.ThreadPoolExecutor(4)
    try:
        run_concurrently(submit, lambda i: i * i, count=50, width=4)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    assert threading.get_native_id() not in threads and 1 <= len(threads) <= 4  # real threads, not greenlets


# ---------------------------------------------------------------------------
# Subprocesses: 50 children at once, each waiting 200 ms. One after another: 10 s.

CHILD = ["/bin/sh", "-c", 'sleep 0.2; echo "$(($1 * 3)) $1"', "sh"]  # then the argument i: it prints 3i and i


@pytest.mark.parametrize("call", ["run", "check_output", "communicate"])
def test_subprocess_50_children_at_once(patched, call):
    def child(i):
        args = [*CHILD, str(i)]
        if call == "run":
            done = subprocess.run(args, capture_output=True, timeout=10, check=False)
            return done.stdout, done.stderr, done.returncode
        if call == "check_output":
            return subprocess.check_output(args, stderr=subprocess.PIPE, timeout=10), b"", 0
        with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            out, err = process.communicate(b"", timeout=10)
            return out, err, process.returncode
    # Creating a process blocks until the child execs (vfork suspends the
    # parent, or the stdlib reads its error pipe): 1-5 ms each, more under
    # load. 5 ms apart, each costs a pass of its own; all 50 in one pass
    # would block the hub 20-150 ms. (With PyPy's slower fork, 15-70 ms even
    # so, unless the error pipe is read cooperatively, as gevent does.)
    # Where there is no vfork (3.9, PyPy), fork copies the page tables: 10-25 ms of CPU each in CI, in one
    # greenlet's run that no budget can cut. Started 5 ms apart, the forks fall behind their timers, which
    # run in deadline order: a ticker due after them waits for the backlog (3.9 in CI: 0.33-0.66 s).
    vfork = sys.implementation.name == "cpython" and sys.version_info >= (3, 10)
    run_concurrently(child, lambda i: (f"{3 * i} {i}\n".encode(), b"", 0), count=50, seconds=0.2, stagger=0.005,
                     stall_limit=0.25 if vfork else 1.0)


# ---------------------------------------------------------------------------
# logging: one SocketHandler, 100 greenlets, 100 records each

LOG_RECEIVER = r'''
import json, logging, pickle, socket, socketserver, struct, sys, threading, time

records, changed = [], threading.Condition()
open_connections, garbled = [0], [0]

class Records(socketserver.StreamRequestHandler):
    """What logging.handlers.SocketHandler sends: a 4-byte big-endian length, then a pickled dict."""

    def handle(self):
        with changed:
            open_connections[0] += 1
        try:
            while True:
                head = self.rfile.read(4)
                if len(head) < 4:
                    break
                size = struct.unpack(">L", head)[0]
                try:
                    if size > 1 << 20:
                        raise ValueError(f"a record of {size} bytes")
                    record = logging.makeLogRecord(pickle.loads(self.rfile.read(size)))
                except Exception:  # two writers at once garbled the stream: the rest is lost
                    with changed:
                        garbled[0] += 1
                    break
                with changed:
                    records.append([record.name, record.levelname, record.getMessage(),
                                    getattr(record, "task", None), getattr(record, "n", None)])
                    if len(records) % 20 == 0:  # slower than the greenlets log: the handler's sendall must wait
                        time.sleep(0.001)
        finally:
            with changed:
                open_connections[0] -= 1
                changed.notify_all()

class Report(socketserver.StreamRequestHandler):
    """Once every connection of the log's has closed, answer the records as JSON, and forget them."""

    def handle(self):
        with changed:
            changed.wait_for(lambda: not open_connections[0], timeout=5)
            report = {"records": records, "open": open_connections[0], "garbled": garbled[0]}
            self.wfile.write(json.dumps(report).encode())
            records.clear()
            garbled[0] = 0

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True
    request_queue_size = 256

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # what it accepts inherits it
        super().server_bind()

log_server, report_server = Server(("127.0.0.1", 0), Records), Server(("127.0.0.1", 0), Report)
for server in (log_server, report_server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(log_server.server_address[1], report_server.server_address[1], flush=True)
sys.stdin.read()
'''


@pytest.fixture(scope="module")
def log_receiver():
    """Ports of a receiver of SocketHandler records in another process: (records, report)."""
    process = subprocess.Popen([sys.executable, "-c", LOG_RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        yield tuple(map(int, process.stdout.readline().split()))
    finally:
        process.stdin.close()
        process.wait(10)
        process.stdout.close()


def receiver_report(report_port):
    """Return what the receiver got since the last call, once every connection has closed (or 5 s have passed).

    A dict: the records, and the counts of connections still open and of streams garbled.
    """
    gc.collect()  # a socket dropped unclosed (PyPy) closes its connection
    with stdsocket.create_connection(("127.0.0.1", report_port), timeout=30) as conn:
        answer = b"".join(iter(lambda: conn.recv(1 << 16), b""))
    return json.loads(answer)


PADDING = "." * 1000  # 10 MB in all: more than the socket buffers hold


def test_logging_socket_handler_from_100_greenlets(patched, log_receiver, capsys, backend):
    records_port, report_port = log_receiver
    logger = logging.getLogger(f"coopsock.test_programs.{backend}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.handlers.SocketHandler("127.0.0.1", records_port)
    logger.addHandler(handler)
    logger.info("started", extra={"task": -1, "n": 0})  # connects, as a program logs as it starts

    def log(i):
        for n in range(100):
            logger.info("greenlet %d record %d %s", i, n, PADDING, extra={"task": i, "n": n})
            coopsock.sleep(0)  # as between the I/O of a real program: the 100 take turns
    try:
        with Ticker() as ticker:
            greenlets = [coopsock.spawn(log, i) for i in range(100)]
            coopsock.joinall(greenlets, timeout=30)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert all(g.successful() for g in greenlets), [g for g in greenlets if not g.successful()][:3]
    report = receiver_report(report_port)
    records = report["records"]
    errors = capsys.readouterr().err  # what logging's handleError printed for each record it dropped
    expected = [[logger.name, "INFO", "started", -1, 0]]
    expected += [[logger.name, "INFO", f"greenlet {i} record {n} {PADDING}", i, n] for i in range(100) for n in range(100)]
    assert len(records) == len(expected), (
        f"{len(expected) - len(records)} of {len(expected)} records lost, {report['garbled']} streams garbled; "
        f"logging reported {errors.count('--- Logging error ---')} errors, the first:\n{errors[:3000]}")
    assert sorted(records, key=lambda r: (r[3], r[4])) == expected  # each intact, none twice
    assert not report["open"], f"{report['open']} connections to the receiver still open 5 s after close()"
    by_task = collections.defaultdict(list)
    for _, _, _, task, n in records:
        by_task[task].append(n)
    assert all(ns == sorted(ns) for ns in by_task.values()), "a greenlet's records arrived out of order"
    assert ticker.blocked < 0.05, f"the hub was blocked {ticker.blocked:.3f} s"  # CPU-bound: only blocking counts


# ---------------------------------------------------------------------------
# socketserver: shutdown() from a greenlet while serve_forever() runs in another

def test_socketserver_shutdown_from_a_greenlet(patched):
    import socketserver

    class Upper(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline().upper())

    with socketserver.TCPServer(("127.0.0.1", 0), Upper) as server, Ticker() as ticker, thread_alarm(5):
        serving = coopsock.spawn(server.serve_forever, 0.05)
        with stdsocket.create_connection(server.server_address, timeout=5) as conn:
            conn.sendall(b"served\n")
            assert conn.makefile("rb").readline() == b"SERVED\n"
        start = time.monotonic()
        stopper = coopsock.spawn(server.shutdown)  # waits on a threading.Event that serve_forever sets
        stopper.get(timeout=5)
        assert serving.get(timeout=5) is None
        assert time.monotonic() - start < 1.0  # a poll interval or two: 50 ms each
    assert ticker.blocked < 0.05, f"the hub was blocked {ticker.blocked:.3f} s"


# ---------------------------------------------------------------------------
# One object, a greenlet and a real thread, each side waking the other

class Shared:
    """How to wait on a kind of object, and how to let one waiter go."""

    def __init__(self, make, hold, wait, release, expected):
        self.make, self.hold, self.wait, self.release, self.expected = make, hold, wait, release, expected


SHARED = {
    "lock": Shared(lambda: threading.Lock(), lambda lock: lock.acquire(), lambda lock: lock.acquire(timeout=5),
                   lambda lock: lock.release(), True),
    "event": Shared(lambda: threading.Event(), lambda event: None, lambda event: event.wait(5),
                    lambda event: event.set(), True),
    "queue.get": Shared(lambda: queue.Queue(), lambda q: None, lambda q: q.get(timeout=5),
                        lambda q: q.put("item"), "item"),
    "queue.put": Shared(lambda: queue.Queue(maxsize=1), lambda q: q.put("first"),
                        lambda q: q.put("second", timeout=5), lambda q: q.get(timeout=5), None),
}


@pytest.mark.parametrize("kind", SHARED)
def test_a_thread_wakes_a_parked_greenlet(patched, kind):
    case = SHARED[kind]
    shared = case.make()
    case.hold(shared)  # a Lock may be released by any thread
    released = []

    def releaser():
        time.sleep(0.1)
        released.append(time.monotonic())
        case.release(shared)

    def waiter():
        value = case.wait(shared)
        return value, time.monotonic()
    thread = threading.Thread(target=releaser, daemon=True)
    with Ticker() as ticker:
        parked = coopsock.spawn(waiter)
        thread.start()
        value, woke = parked.get(timeout=10)
    thread.join(5)
    assert value == case.expected
    assert released and woke - released[0] < 0.1, "the greenlet woke late: the thread's wake-up went unseen"
    assert ticker.ticks >= 3, f"the hub ran only {ticker.ticks} passes of its ticker meanwhile"
    assert ticker.blocked < 0.05, f"the hub was blocked {ticker.blocked:.3f} s meanwhile"


@pytest.mark.parametrize("kind", SHARED)
def test_a_greenlet_wakes_a_waiting_thread_and_the_hub_runs_meanwhile(patched, kind):
    case = SHARED[kind]
    shared = case.make()
    case.hold(shared)  # by this greenlet: the thread must wait for it
    waiting, woke = [], []

    def waiter():
        waiting.append(time.monotonic())
        woke.append((case.wait(shared), time.monotonic()))
    thread = threading.Thread(target=waiter, daemon=True)
    with Ticker() as ticker:
        thread.start()
        coopsock.sleep(0.1)  # the thread waits; this thread's hub runs on
        assert waiting and not woke, "the thread did not wait"
        released = time.monotonic()
        case.release(shared)
        deadline = time.monotonic() + 5
        while not woke and time.monotonic() < deadline:
            coopsock.sleep(0.001)
    thread.join(5)
    assert woke, "the thread never woke up"
    assert woke[0][0] == case.expected and woke[0][1] - released < 0.1, "the thread woke late"
    assert ticker.ticks >= 3, f"the hub ran only {ticker.ticks} passes of its ticker meanwhile"
    assert ticker.blocked < 0.05, f"the hub was blocked {ticker.blocked:.3f} s meanwhile"
    if kind == "queue.put":
        assert shared.get_nowait() == "second" and shared.empty()


# ---------------------------------------------------------------------------
# kill() and Timeout landing on every kind of wait: the waiter gets the
# exception, and the object still works (no waiter left behind).

class Wait:
    """A wait that blocks until release(); wait(n) returns expected(n) then; close() frees what it used.

    wait(0), the one interrupted, has no timeout: the waits kill and Timeout
    are for. wait(1), the next, gives up after 1 s.
    """

    def __init__(self, wait, release, expected, check=lambda: None, close=lambda: None):
        self.wait, self.release, self.expected, self.check, self.close = wait, release, expected, check, close


def _seconds(n, forever=None):
    return 1 if n else forever


def _lock():
    lock = threading.Lock()
    lock.acquire()
    return Wait(lambda n: lock.acquire(timeout=_seconds(n, -1)), lock.release, lambda n: True, check=lambda: lock.locked())


def _rlock():
    rlock = threading.RLock()
    rlock.acquire()  # by this greenlet: re-entrant for it only
    return Wait(lambda n: rlock.acquire(timeout=_seconds(n, -1)), rlock.release, lambda n: True)


def _condition():
    condition = threading.Condition()

    def wait(n):
        with condition:
            return condition.wait(_seconds(n))

    def notify():
        with condition:
            condition.notify()  # one waiter: a left-behind one would take it
    return Wait(wait, notify, lambda n: True, check=lambda: condition.acquire(blocking=False))


def _event():
    event = threading.Event()
    return Wait(lambda n: event.wait(_seconds(n)), event.set, lambda n: True)


def _semaphore():
    semaphore = threading.Semaphore(0)
    return Wait(lambda n: semaphore.acquire(timeout=_seconds(n)), semaphore.release, lambda n: True,
                check=lambda: not semaphore.acquire(blocking=False))  # its one permit went to the second waiter


def _queue_get():
    q = queue.Queue()
    return Wait(lambda n: q.get(timeout=_seconds(n)), lambda: q.put("item"), lambda n: "item", check=q.empty)


def _queue_put():
    q = queue.Queue(maxsize=1)
    q.put("first")
    return Wait(lambda n: q.put(f"item {n}", timeout=_seconds(n)), lambda: q.get(timeout=1), lambda n: None,
                check=lambda: q.get_nowait() == "item 1" and q.empty())  # the interrupted put left nothing


def _simple_queue():
    q = queue.SimpleQueue()
    return Wait(lambda n: q.get(timeout=_seconds(n)), lambda: q.put("item"), lambda n: "item", check=q.empty)


def _barrier():
    barrier = threading.Barrier(2)
    return Wait(lambda n: barrier.wait(_seconds(n)), lambda: barrier.wait(1), lambda n: 0,
                check=lambda: not barrier.broken and barrier.n_waiting == 0)


def _future():
    import concurrent.futures

    executor, (r, w) = concurrent.futures.ThreadPoolExecutor(1), os.pipe()
    future = executor.submit(os.read, r, 1)  # the worker thread completes it once w is written

    def close():
        os.write(w, b"x")  # frees the worker if the test failed first
        executor.shutdown(wait=True)
        os.close(r)
        os.close(w)
    return Wait(lambda n: future.result(_seconds(n)), lambda: os.write(w, b"x"), lambda n: b"x", close=close)


def _thread_join():
    r, w = os.pipe()
    thread = threading.Thread(target=os.read, args=(r, 1), daemon=True)
    thread.start()

    def join(n):
        thread.join(_seconds(n))
        return thread.is_alive()

    def close():
        os.write(w, b"x")
        thread.join(5)
        os.close(r)
        os.close(w)
    return Wait(join, lambda: os.write(w, b"x"), lambda n: False, close=close)


def _popen_wait():
    process = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def reaped():  # no zombie: the second wait reaped it
        with pytest.raises(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)
        return True

    def close():
        if process.returncode is None:
            process.kill()
            process.wait(5)
        process.stdin.close()
    return Wait(lambda n: process.wait(_seconds(n)), process.stdin.close, lambda n: 0, check=reaped, close=close)


WAITS = {"Lock.acquire": _lock, "RLock.acquire": _rlock, "Condition.wait": _condition, "Event.wait": _event,
         "Semaphore.acquire": _semaphore, "Queue.get": _queue_get, "Queue.put": _queue_put,
         "SimpleQueue.get": _simple_queue, "Barrier.wait": _barrier, "Future.result": _future,
         "Thread.join": _thread_join, "Popen.wait": _popen_wait}


def _outcome(g):
    if not g.ready():
        return "is still waiting"
    return f"raised {g.exception!r}" if g.exception is not None else f"returned {g.value!r}"


@pytest.mark.parametrize("interrupt", ["kill", "Timeout"])
@pytest.mark.parametrize("wait", WAITS)
def test_kill_and_timeout_land_on_every_wait_and_leave_it_usable(patched, wait, interrupt):
    case = WAITS[wait]()
    try:
        with Ticker() as ticker, thread_alarm(2):
            start = time.monotonic()
            if interrupt == "kill":
                waiter = coopsock.spawn(case.wait, 0)
                coopsock.sleep(0.05)
                assert not waiter.ready(), f"the wait did not park: it {_outcome(waiter)} after {time.monotonic() - start:.2f} s"
                waiter.kill(block=True, timeout=2)
                assert isinstance(waiter.value, coopsock.GreenletExit), f"the killed wait {_outcome(waiter)}"
            else:
                timeout = coopsock.Timeout(0.05)

                def timed():
                    with timeout:
                        return case.wait(0)
                waiter = coopsock.spawn(timed)
                waiter.join(timeout=2)
                assert waiter.exception is timeout, f"the wait under a 50 ms Timeout {_outcome(waiter)}"
            took = time.monotonic() - start
            assert took < 0.5, f"the {interrupt} landed after {took:.2f} s: the wait had blocked the thread"
            second = coopsock.spawn(case.wait, 1)  # the object still works: the next waiter gets the release
            coopsock.sleep(0.01)
            case.release()
            second.join(timeout=2)
            assert second.successful() and second.value == case.expected(1), f"the next wait {_outcome(second)}"
        assert case.check() is not False
        assert ticker.blocked < 0.05, f"the hub was blocked {ticker.blocked:.3f} s"
    finally:
        case.close()


# ---------------------------------------------------------------------------
# paramiko: one SSH connection to an sshd of our own, 50 channels at once.
# Its transport thread reads the socket and wakes the greenlets through
# threading.Event and Condition; the greenlets write to the socket.

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
HostKey {folder}/host
PidFile none
AuthorizedKeysFile {folder}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 100
MaxStartups 100
LogLevel ERROR
# bash, run by sshd, reads ~/.bashrc unless SHLVL says it is not the first shell: a slow one (a pyenv
# init) would cost every command 0.2 s of CPU
SetEnv SHLVL=1
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd of our own on loopback, taking a key made for the test; a dict of connect()'s arguments."""
    import pwd

    server, keygen = shutil.which("sshd", path=SBIN_PATH), shutil.which("ssh-keygen")
    if not server or not keygen:
        pytest.skip("sshd is not installed: apt-get install openssh-server")
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host", "client"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_bytes((folder / "client.pub").read_bytes())
    (folder / "config").write_text(SSHD_CONFIG.format(folder=folder))
    port, log = free_port(), folder / "log"
    host_key = (folder / "host.pub").read_text().split()[:2]
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory (Debian's service makes it)
    with open(log, "wb") as output:
        process = subprocess.Popen([server, "-D", "-e", "-f", str(folder / "config"), "-p", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(process, port, log, "sshd")
        yield {"hostname": "127.0.0.1", "port": port, "username": pwd.getpwuid(os.getuid()).pw_name,
               "key_filename": str(folder / "client"), "known_hosts": str(folder / "known_hosts")}
    finally:
        stop(process)


def test_paramiko_50_commands_over_one_connection(patched, sshd):
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(sshd["known_hosts"])  # and the default policy rejects any other
    client.connect(sshd["hostname"], sshd["port"], username=sshd["username"], key_filename=sshd["key_filename"],
                   look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10,
                   channel_timeout=10)

    def run(i):  # exec_command's, but without its stdin file, which sends EOF when collected: maybe after CLOSE
        with client.get_transport().open_session(timeout=10) as channel:
            channel.settimeout(10)
            channel.exec_command(f"sleep 0.1; echo {i * 7}")
            return channel.makefile("rb").read(), channel.makefile_stderr("rb").read(), channel.recv_exit_status()
    try:
        # One command: 100 ms of sleep, and ~45 ms to open its channel (measured, one after another).
        run_concurrently(run, lambda i: (f"{i * 7}\n".encode(), b"", 0), count=50, seconds=0.15)
    finally:
        client.close()
