"""The threads layer: locks that park greenlets and block threads, threading.local per
greenlet, Thread.join, ThreadPool, and cooperative subprocesses (patch(threading=True,
subprocess=True), and coopsock.subprocess without it)."""

import _thread
import gc
import math
import os
import queue
import subprocess
import sys
import threading
import time
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coopsock
from conftest import Ticker, _assert_clean_exit, _run_child, load_example, thread_clock
from coopsock import getcurrent, sleep, spawn


@pytest.fixture
def threading_patched():
    coopsock.patch(socket=False, ssl=False, select=False, selectors=False, time=False, threading=True,
                   subprocess=False)
    try:
        yield
    finally:
        coopsock.unpatch()


def parked(*greenlets):
    """Let the spawned greenlets run until they park."""
    sleep(0)
    assert all(g and not g.dead for g in greenlets)


class Beat:
    """A greenlet that counts its 2 ms sleeps: the hub kept running while someone waited."""

    def __enter__(self):
        self.beats = 0
        self.greenlet = spawn(self._run)
        return self

    def _run(self):
        while True:
            sleep(0.002)
            self.beats += 1

    def __exit__(self, *exc):
        self.greenlet.kill()


class Waited:
    """Time the block took that this thread spent neither on a CPU nor waiting for one: the overlapped waits.

    (Starting children costs the parent CPU: a fork of PyPy, with no vfork, ~30 ms each; and a loaded
    machine keeps the thread waiting for a CPU: neither says whether the waits overlapped.)
    """

    def __enter__(self):
        self.started, self.clock = time.monotonic(), thread_clock()
        return self

    def __exit__(self, *exc):
        ran, queued = (now - then for now, then in zip(thread_clock(), self.clock))
        self.elapsed = time.monotonic() - self.started
        self.seconds = self.elapsed - ran - queued


def in_thread(func, *args):
    """Start func(*args) in a real thread; return the thread."""
    thread = threading.Thread(target=func, args=args, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# Locks shared by greenlets and threads

def test_a_thread_releasing_a_lock_wakes_the_greenlet_parked_on_it_and_the_hub_runs_meanwhile():
    lock = coopsock._ThreadLock()
    lock.acquire()
    release = in_thread(lambda: (time.sleep(0.1), lock.release()))
    with Beat() as beat:
        started = time.monotonic()
        waiter = spawn(lock.acquire)
        assert waiter.get(timeout=5) is True
        assert time.monotonic() - started < 1.0
    assert beat.beats > 10, "the hub did not run while the greenlet waited for the thread"
    assert lock.locked()
    release.join(5)
    lock.release()


def test_a_thread_waiting_for_a_lock_a_greenlet_holds_blocks_only_itself():
    lock, taken = coopsock._ThreadLock(), []
    lock.acquire()
    thread = in_thread(lambda: taken.append(lock.acquire(True, 5)) or lock.release())
    with Beat() as beat:
        sleep(0.1)  # holding the lock, the greenlet waits; the thread is blocked, the hub is not
    assert beat.beats > 10 and not taken
    lock.release()
    thread.join(5)
    assert taken == [True] and not lock.locked()


def test_greenlets_take_turns_on_a_lock_and_each_waiter_gets_it():
    lock, inside, most = coopsock._ThreadLock(), [0], [0]

    def work(i):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            sleep(0.001)
            inside[0] -= 1
        return i
    greenlets = [spawn(work, i) for i in range(50)]
    assert [g.get(timeout=10) for g in greenlets] == list(range(50))
    assert most[0] == 1 and not lock.locked() and not lock._line


def test_a_lock_released_to_a_waiter_that_was_killed_goes_to_the_next_one():
    lock = coopsock._ThreadLock()
    lock.acquire()
    first, second = spawn(lock.acquire), spawn(lock.acquire)
    parked(first, second)
    first.kill(block=False)  # lands before the wake-up the release sends it
    lock.release()
    assert second.get(timeout=2) is True
    assert first.dead and lock.locked() and not lock._line


def test_a_lock_acquire_interrupted_by_timeout_leaves_the_lock_usable():
    lock = coopsock._ThreadLock()
    lock.acquire()
    with pytest.raises(coopsock.Timeout), coopsock.Timeout(0.05):
        lock.acquire()
    assert lock.acquire(timeout=0.05) is False and not lock._line
    waiter = spawn(lock.acquire)
    parked(waiter)
    lock.release()
    assert waiter.get(timeout=2) is True


_BLOCKING = st.sampled_from([True, False, 1, 0, 2, None, "x", 1.5])
_TIMEOUT = st.one_of(st.sampled_from([-1, -1.0, -2, 0, 0.0, 1e-9, math.nan, math.inf, -math.inf, 1e300, 2**70,
                                      "x", None, 1j]), st.floats(-3, 3), st.integers(-3, 3))


def _outcome(call):
    try:
        return ("returned", call())
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.loop_independent  # (its waits are all refusals or zero timeouts)
@settings(max_examples=200, deadline=None)
@given(blocking=_BLOCKING, timeout=_TIMEOUT, held=st.booleans(), kind=st.sampled_from(["lock", "rlock"]))
def test_lock_acquire_answers_as_threadings_lock(blocking, timeout, held, kind):
    if held and blocking and not (isinstance(timeout, (int, float)) and timeout == -1 or timeout is None):
        timeout = 0.0 if isinstance(timeout, (int, float)) and timeout > 0 else timeout  # no long waits
    ours = coopsock._ThreadLock() if kind == "lock" else coopsock._ThreadRLock()
    theirs = _thread.allocate_lock() if kind == "lock" else threading.RLock()
    if held:  # held by another thread: both must refuse or time out, or check first
        if blocking and timeout in (-1, -1.0, None) and not isinstance(timeout, str):
            return  # it would wait for ever
        for lock in (ours, theirs):
            thread = threading.Thread(target=lock.acquire)
            thread.start()
            thread.join()
    assert _outcome(lambda: ours.acquire(blocking, timeout)) == _outcome(lambda: theirs.acquire(blocking, timeout))


def test_releasing_an_unheld_lock_raises_threadings_error():
    for ours, theirs in ((coopsock._ThreadLock(), _thread.allocate_lock()),
                         (coopsock._ThreadRLock(), threading.RLock())):
        assert _outcome(ours.release) == _outcome(theirs.release)
        assert _outcome(ours.release)[0] is RuntimeError


def test_rlock_is_reentrant_per_greenlet_and_excludes_the_others_of_the_thread():
    rlock, order = coopsock._ThreadRLock(), []
    rlock.acquire()
    assert rlock.acquire(False) is True  # again, by its holder

    def other():
        with rlock:
            order.append("other")
    g = spawn(other)
    parked(g)
    with pytest.raises(RuntimeError, match="un-acquired"):
        spawn(rlock.release).get(timeout=1)  # not the holder
    order.append("holder")
    rlock.release()
    assert not order[1:]  # still held once
    rlock.release()
    g.get(timeout=1)
    assert order == ["holder", "other"] and not rlock.locked()


def test_the_hub_refuses_to_wait_for_a_lock_a_greenlet_of_its_thread_holds():
    lock, seen = coopsock._ThreadLock(), []
    holder = spawn(lambda: lock.acquire() and sleep(5))
    parked(holder)
    hub = coopsock.get_hub()

    def in_hub():
        with pytest.raises(coopsock.BlockingSwitchOutError,
                           match="take the lock in a spawned greenlet, not in a hub callback"):
            lock.acquire()
        seen.append("refused")
    hub.run_callback(in_hub)
    sleep(0.01)
    assert seen == ["refused"]
    holder.kill()


def test_the_hub_blocks_for_a_lock_another_thread_holds():
    lock, seen, holding = coopsock._ThreadLock(), [], _thread.allocate_lock()
    holding.acquire()

    def hold():
        with lock:
            holding.release()
            time.sleep(0.05)
    thread = in_thread(hold)
    holding.acquire()  # the thread holds the lock now
    coopsock.get_hub().run_callback(lambda: seen.append(lock.acquire(True, 5)) or lock.release())
    sleep(0.01)
    assert seen == [True]
    thread.join(5)


# ---------------------------------------------------------------------------
# What threading and queue build on the locks, after patch(threading=True)

def test_patched_threading_objects_are_the_cooperative_ones(threading_patched):
    assert type(threading.Lock()) is coopsock._ThreadLock
    assert type(_thread.allocate_lock()) is not coopsock._ThreadLock  # importlib's module locks stay the stdlib's
    assert type(threading.RLock()) is coopsock._ThreadRLock
    assert type(threading.Condition()) is coopsock._ThreadCondition
    assert type(threading.Event()._cond) is coopsock._ThreadCondition
    assert type(queue.Queue().mutex) is coopsock._ThreadLock
    assert isinstance(threading.local(), coopsock.local)
    assert type(queue.SimpleQueue()) is queue._PySimpleQueue


def test_a_condition_notify_given_to_a_waiter_killed_meanwhile_goes_to_the_next(threading_patched):
    cond, woken = threading.Condition(), []

    def wait(name):
        with cond:
            while True:
                cond.wait()
                woken.append(name)
    first, second = spawn(wait, "first"), spawn(wait, "second")
    parked(first, second)
    first.kill(block=False)  # lands before the wake-up notify() sends it
    with cond:
        cond.notify()
    sleep(0.01)
    assert woken == ["second"] and first.dead
    second.kill()
    assert not cond._waiters and not cond._lock.locked()


def test_a_timeout_landing_as_condition_wait_takes_its_lock_back_waits_for_the_lock(threading_patched):
    # (review of the threads layer: the Timeout left wait() without the lock, and `with cond:` then
    # released the lock its notifier still held)
    for cond in (threading.Condition(threading.Lock()), threading.Condition()):
        inside = []

        def waiter(cond=cond, inside=inside):
            with pytest.raises(coopsock.Timeout), coopsock.Timeout(0.05), cond:
                cond.wait()
                inside.append("woke")

        def notifier(cond=cond, inside=inside):
            with cond:
                cond.notify()
                sleep(0.2)  # holds the lock: the waiter's Timeout fires as it takes the lock back
                inside.append(spawn(cond._lock.acquire, False).get())  # nobody else may take it meanwhile
        w = spawn(waiter)
        parked(w)
        n = spawn(notifier)
        w.get(timeout=2)
        n.get(timeout=2)
        assert inside == [False] and not cond._lock.locked()


def test_killing_one_waiter_does_not_wake_another_as_if_notified(threading_patched):
    # (review: a kill passed a notify() on that nobody had sent: Event.wait() returned True unset)
    import concurrent.futures

    event, future = threading.Event(), concurrent.futures.Future()
    for wait in (event.wait, future.result):
        killed, other = spawn(wait), spawn(wait)
        parked(killed, other)
        killed.kill()
        sleep(0.02)
        assert not other.dead, f"{wait.__qualname__} returned without being set"
        other.kill()
    event.set()
    future.set_result(7)
    assert spawn(event.wait).get(timeout=1) is True and spawn(future.result).get(timeout=1) == 7


def test_a_waiter_whose_thread_ended_does_not_take_a_release_from_a_live_one():
    # (review: the dead thread's entry in the line took the wake-up; the live waiter stayed parked)
    lock = coopsock._ThreadLock()
    lock.acquire()

    def thread_with_a_waiter():
        spawn(lock.acquire)
        sleep(0.02)  # the thread ends while its greenlet waits
    in_thread(thread_with_a_waiter).join(5)
    waiter = spawn(lock.acquire)
    parked(waiter)
    lock.release()
    assert waiter.get(timeout=2) is True and not lock._line


def test_the_hub_blocks_for_a_lock_another_thread_just_took_from_its_own():
    # (review: a thread that had taken the lock, not yet noted as its holder, left the hub's
    # thread as the holder: the hub refused instead of waiting for that thread)
    lock, seen = coopsock._ThreadLock(), []
    spawn(lambda: lock.acquire() and lock.release()).join()  # this thread held it last
    lock._lock.acquire()  # another thread takes it, and is about to note itself as the holder

    def later():
        time.sleep(0.05)
        lock._lock.release()
    thread = in_thread(later)
    coopsock.get_hub().run_callback(lambda: seen.append(lock.acquire(True, 5)) or lock.release())
    sleep(0.01)
    assert seen == [True]
    thread.join(5)


def test_the_hub_may_wait_for_a_condition_another_thread_ends(threading_patched):
    # (review: the condition's waiter lock looked held by the hub's own thread: BlockingSwitchOutError)
    event, seen = threading.Event(), []

    def in_hub():
        thread = threading.Thread(target=lambda: (time.sleep(0.02), event.set()))
        thread.start()
        seen.append(event.wait(5))
        thread.join()
    coopsock.get_hub().run_callback(in_hub)
    sleep(0.01)
    assert seen == [True]


def test_pool_spawn_that_cannot_start_a_thread_leaves_the_hub_able_to_see_a_deadlock(monkeypatch):
    # (review: the job stayed counted: a wait nothing could end hung instead of LoopExit)
    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError):
        coopsock.ThreadPool(2).spawn(abs, -1)
    monkeypatch.undo()
    with pytest.raises(coopsock.LoopExit):
        coopsock.Event().wait()


def test_condition_wait_timeout_and_wait_for(threading_patched):
    cond = threading.Condition()
    with cond:
        started = time.monotonic()
        assert cond.wait(0.05) is False
        assert 0.04 < time.monotonic() - started < 1
        assert cond.wait(0) is False and cond.wait(-1) is False
        assert cond.wait_for(lambda: 0, 0.01) == 0
    with pytest.raises(RuntimeError, match="cannot wait on un-acquired lock"):
        cond.wait(0.01)
    with pytest.raises(RuntimeError, match="cannot notify on un-acquired lock"):
        cond.notify()
    items = []
    getter = spawn(lambda: cond.acquire() and (cond.wait_for(lambda: items, 5), cond.release())[0])
    parked(getter)
    with cond:
        items.append(1)
        cond.notify_all()
    assert getter.get(timeout=2) == [1]


def test_event_semaphore_barrier_and_queue_shared_with_a_thread_both_ways(threading_patched):
    event, sem, barrier, jobs, answers = (threading.Event(), threading.Semaphore(0), threading.Barrier(2),
                                          queue.Queue(maxsize=1), queue.Queue())

    def worker():
        event.wait(5)
        sem.release()
        barrier.wait(5)
        while (job := jobs.get(timeout=5)) is not None:
            answers.put(job * 2)
    thread = threading.Thread(target=worker)
    thread.start()
    with Beat() as beat:
        spawn(lambda: (sleep(0.02), event.set()))
        assert sem.acquire(timeout=5) is True
        assert barrier.wait(5) in (0, 1)
        for i in range(20):
            jobs.put(i, timeout=5)  # maxsize 1: the greenlet parks until the thread takes each
        assert [answers.get(timeout=5) for _ in range(20)] == [i * 2 for i in range(20)]
        jobs.put(None)
        thread.join(5)
    assert not thread.is_alive() and beat.beats > 0


def test_thread_join_parks_the_greenlet_and_checks_as_threadings(threading_patched):
    thread = threading.Thread(target=time.sleep, args=(0.1,))
    with pytest.raises(RuntimeError, match="before it is started"):
        thread.join()
    thread.start()
    with Beat() as beat:
        thread.join(0.01)
        assert thread.is_alive()
        thread.join()
    assert not thread.is_alive() and beat.beats > 10
    with pytest.raises(RuntimeError, match="current thread"):
        threading.current_thread().join()


def test_concurrent_futures_wait_from_many_greenlets(threading_patched):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as executor, Beat() as beat:
        started = time.monotonic()
        greenlets = [spawn(lambda i: executor.submit(lambda: time.sleep(0.05) or i * 3).result(), i) for i in range(20)]
        assert [g.get(timeout=10) for g in greenlets] == [i * 3 for i in range(20)]
        elapsed = time.monotonic() - started
    assert elapsed < 20 * 0.05 / 2, f"{elapsed:.2f} s: the futures were waited for one after another"
    assert beat.beats > 10


def test_patch_first_objects_made_before_stay_the_stdlibs():
    std_lock, before = threading.Lock, threading.Lock()
    coopsock.patch(threading=True)
    try:
        after = threading.Lock()
    finally:
        coopsock.unpatch()
    assert type(before) is not coopsock._ThreadLock and type(after) is coopsock._ThreadLock
    assert threading.Lock is std_lock and type(threading.Lock()) is not coopsock._ThreadLock


# ---------------------------------------------------------------------------
# threading.local per greenlet

def test_local_attributes_are_each_greenlets_own():
    shared = coopsock.local()
    shared.x = "main"

    def visit(i):
        assert not hasattr(shared, "x")
        shared.x = i
        sleep(0.001)
        return shared.x, dict(shared.__dict__)
    assert [g.get(timeout=2) for g in [spawn(visit, i) for i in range(5)]] == [(i, {"x": i}) for i in range(5)]
    assert shared.x == "main"
    del shared.x
    with pytest.raises(AttributeError):
        del shared.x
    with pytest.raises(AttributeError, match="has no attribute 'x'"):
        shared.x  # noqa: B018


def test_local_subclass_init_runs_in_each_greenlet_and_class_attributes_work():
    class Counter(coopsock.local):
        kind = "counter"

        def __init__(self, start):
            self.value = start

        @property
        def doubled(self):
            return self.value * 2

        def bump(self):
            self.value += 1
            return self.value

    counter = Counter(10)
    counter.bump()
    assert spawn(lambda: (counter.bump(), counter.doubled, counter.kind)).get(timeout=1) == (11, 22, "counter")
    assert counter.value == 11
    with pytest.raises(TypeError, match="not supported"):
        coopsock.local(1)


def test_a_greenlets_local_values_go_with_it():
    class Value:
        pass
    shared, refs = coopsock.local(), []

    def keep():
        value = Value()
        refs.append(weakref.ref(value))
        shared.value = value
    greenlet = spawn(keep)
    greenlet.join()
    assert refs[0]() is not None  # (as a thread's, while its Greenlet object lives)
    del greenlet
    for _ in range(3 if sys.implementation.name == "pypy" else 1):  # PyPy calls weakref callbacks a
        sleep(0.001)  # collection later; the hub's frame holds its last callback until its next pass
        gc.collect()
    assert refs[0]() is None and not shared._local__dicts.keys() - {id(getcurrent())}


# ---------------------------------------------------------------------------
# ThreadPool

def test_thread_pool_runs_calls_in_threads_while_the_greenlet_parks():
    pool = coopsock.ThreadPool(3)
    main_thread = threading.get_ident()
    assert pool.apply(threading.get_ident) != main_thread
    assert pool.apply(divmod, (7, 2)) == (3, 1) and pool.apply(dict, kwds={"a": 1}) == {"a": 1}
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))
    assert pool.map(abs, range(-5, 0)) == [5, 4, 3, 2, 1]
    assert list(pool.imap(pow, [2, 3], [3, 2])) == [8, 9]
    assert sorted(pool.imap_unordered(abs, [-3, -1, -2])) == [1, 2, 3]
    result = pool.spawn(time.sleep, 0.02)
    assert result.get(timeout=2) is None and result.successful()  # nothing else keeps the hub: no LoopExit
    with pytest.raises(TypeError, match="callable"):
        pool.spawn(42)
    with pytest.raises(ValueError, match="positive"):
        coopsock.ThreadPool(0)


def test_thread_pool_runs_at_most_maxsize_at_once_and_idle_threads_exit():
    pool, inside, most, lock = coopsock.ThreadPool(2, idle=0.05), [0], [0], _thread.allocate_lock()

    def work(i):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= 1
        return i
    with Beat() as beat:
        assert pool.map(work, range(10)) == list(range(10))
    assert most[0] == 2 and beat.beats > 10
    assert pool.join(1) is True
    deadline = time.monotonic() + 5
    while pool.size and time.monotonic() < deadline:
        sleep(0.01)
    assert pool.size == 0
    assert pool.apply(work, (7,)) == 7  # and come back


def test_thread_pool_kill_drops_the_jobs_not_started():
    pool, gate = coopsock.ThreadPool(1), threading.Event()
    running = pool.spawn(gate.wait, 5)
    waiting = [pool.spawn(abs, -i) for i in range(3)]
    sleep(0.01)
    pool.kill()
    gate.set()
    assert running.get(timeout=2) is True
    for result in waiting:
        with pytest.raises(coopsock.GreenletExit):
            result.get(timeout=2)
    assert pool.join(1) is True and pool.apply(abs, (-1,)) == 1


def test_the_resolver_uses_the_hubs_thread_pool():
    assert coopsock.get_hub().threadpool is coopsock._resolver
    assert coopsock.getaddrinfo("localhost", 80, coopsock.AF_INET)[0][4] == ("127.0.0.1", 80)


def test_thread_pool_works_in_a_forked_child():
    code = """
    pool = coopsock.ThreadPool(2)
    assert pool.apply(abs, (-1,)) == 1
    pid = os.fork()
    if pid == 0:
        os._exit(0 if pool.map(abs, [-1, -2]) == [1, 2] and coopsock.getaddrinfo("localhost", 1)[0] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_a_program_that_made_a_logging_handler_after_patch_exits_without_a_word():
    # At exit logging's weakref callback takes its lock, one of coopsock's,
    # when greenlet is being finalized: getcurrent() raises there.
    code = """
    coopsock.patch()
    import logging  # after patch(), as a program's own imports: its lock is one of coopsock's
    handler = logging.Handler()
    coopsock.sleep(0.001)  # a hub
    print("OK")
    """
    proc = _run_child(code, coopsock.BACKEND)
    _assert_clean_exit(proc)
    assert proc.stderr == ""


# ---------------------------------------------------------------------------
# Subprocesses

def _child(i, seconds=0.2):
    return ["sh", "-c", f"sleep {seconds}; echo {i}"]  # (a Python child's start-up would cost more than its wait)


def test_coopsock_subprocess_runs_children_at_once_without_patch():
    cosub = coopsock.subprocess
    assert cosub.PIPE is subprocess.PIPE and issubclass(cosub.Popen, subprocess.Popen)
    assert subprocess.Popen is not cosub.Popen  # without patch() the stdlib's is untouched
    with Beat() as beat, Waited() as waited:
        outputs = [spawn(cosub.check_output, _child(i)) for i in range(10)]
        runs = [spawn(cosub.run, _child(i), capture_output=True, text=True) for i in range(10)]
        assert [g.get(timeout=30) for g in outputs] == [b"%d\n" % i for i in range(10)]
        assert [g.get(timeout=30).stdout for g in runs] == [f"{i}\n" for i in range(10)]
    assert waited.seconds < 20 * 0.2 / 2, f"{waited.elapsed:.2f} s: the children ran one after another"
    assert beat.beats > 20


def test_communicate_with_one_pipe_parks_and_passes_input():
    cosub = coopsock.subprocess
    with Beat() as beat:
        cat = cosub.Popen(["sh", "-c", "sleep 0.1; cat"], stdin=cosub.PIPE)  # only stdin: the stdlib writes blocking
        assert cat.communicate(b"x" * 300000) == (None, None)
        reader = cosub.Popen(_child(7, 0.1), stdout=cosub.PIPE)  # only stdout: the stdlib reads blocking
        assert reader.communicate() == (b"7\n", None)
    assert cat.returncode == 0 and reader.returncode == 0 and beat.beats > 20


@pytest.mark.parametrize("mode", ["bytes", "text", "unbuffered"])
def test_a_greenlet_reading_a_childs_pipe_parks_and_the_hub_runs_on(mode):
    options = {"bytes": {}, "text": {"text": True}, "unbuffered": {"bufsize": 0}}[mode]
    sp = coopsock.subprocess
    with sp.Popen(["sh", "-c", "read line; echo got $line; sleep 0.05; echo done"], stdin=sp.PIPE,
                  stdout=sp.PIPE, **options) as child:
        reader = coopsock.spawn(child.stdout.read)
        for _ in range(5):
            coopsock.sleep(0.01)  # it used to block here, in the reader's read, until the child ended
        assert not reader.ready()
        child.stdin.write("x\n" if mode == "text" else b"x\n")
        child.stdin.flush()
        out = reader.get(timeout=10)
        assert out == ("got x\ndone\n" if mode == "text" else b"got x\ndone\n")
    assert child.returncode == 0


def test_subprocess_timeouts_raise_timeout_expired_and_leave_no_zombie(tmp_path):
    cosub = coopsock.subprocess
    process = cosub.Popen(_child(0, 5))
    with pytest.raises(subprocess.TimeoutExpired) as ours:
        process.wait(0.05)
    std = subprocess.Popen(_child(0, 5))
    with pytest.raises(subprocess.TimeoutExpired) as theirs:
        std.wait(0.05)
    assert str(ours.value).replace(str(process.args), "") == str(theirs.value).replace(str(std.args), "")
    for p in (process, std):
        p.kill()
        assert p.wait(5) == -9
    with pytest.raises(subprocess.TimeoutExpired):
        cosub.run(_child(0, 5), timeout=0.1, capture_output=True)
    with open(tmp_path / "pid", "w+") as pid_file:
        code = "import os, time; print(os.getpid(), flush=True); time.sleep(5)"
        runner = spawn(cosub.run, [sys.executable, "-c", code], stdout=pid_file)
        while not pid_file.seek(0) and not pid_file.read():
            sleep(0.01)
        runner.kill()  # run() kills its child and waits for it
        pid_file.seek(0)
        with pytest.raises(ChildProcessError):
            os.waitpid(int(pid_file.read()), os.WNOHANG)  # reaped: no zombie left


def test_popen_wait_with_no_time_left_looks_once_as_the_stdlibs():
    # (review: a timeout below zero raised ValueError; communicate() can pass one when its deadline passes)
    done = coopsock.subprocess.Popen(["true"])
    while done.poll() is None:
        sleep(0.01)
    assert done.wait(-1) == 0
    running = coopsock.subprocess.Popen(["sleep", "5"])
    with pytest.raises(subprocess.TimeoutExpired):
        running.wait(-1)
    running.kill()
    assert running.wait() == -9


def test_subprocess_from_the_hub_blocks_it_as_a_thread_is_blocked():
    # (review: call() blocked the hub while run(capture_output=True) raised: the hub cannot park)
    seen = []

    def in_hub():
        seen.append(coopsock.subprocess.call(["true"]))
        seen.append(coopsock.subprocess.check_output(["echo", "x"]))
    coopsock.get_hub().run_callback(in_hub)
    sleep(0.01)
    assert seen == [0, b"x\n"]


def test_a_forked_child_joins_a_thread_its_parent_was_joining():
    # (review: the child waited for the parent's helper join, which the fork left behind)
    code = """
    coopsock.patch(subprocess=False)
    thread = threading.Thread(target=time.sleep, args=(3,), daemon=True)
    thread.start()
    coopsock.spawn(thread.join)
    coopsock.sleep(0.05)  # a greenlet is joining it, through a helper thread
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        joiner = coopsock.spawn(thread.join)
        joiner.join(timeout=2)
        os._exit(0 if joiner.dead and time.monotonic() - started < 1 and coopsock.get_hub()._lent == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    print("OK")
    """
    _assert_clean_exit(_run_child(code, coopsock.BACKEND))


def test_patched_subprocess_module_is_cooperative():
    coopsock.patch(socket=False, ssl=False, select=False, selectors=False, time=False, threading=False,
                   subprocess=True)
    try:
        assert subprocess.Popen is coopsock.subprocess.Popen
        with Beat() as beat:
            results = [spawn(subprocess.run, _child(i), stdout=subprocess.PIPE) for i in range(5)]
            assert [g.get(timeout=30).stdout for g in results] == [b"%d\n" % i for i in range(5)]
        assert beat.beats > 20
    finally:
        coopsock.unpatch()
    assert subprocess.Popen is not coopsock.subprocess.Popen


# ---------------------------------------------------------------------------
# The examples

def test_example_processes_run_at_once_and_report_failures():
    processes = load_example("processes")
    commands = [f"sleep 0.2; echo {i}" for i in range(10)] + ["exit 3"]
    with Beat() as beat, Waited() as waited:
        outputs = processes.run_all(commands)
    assert [outputs[command] for command in commands[:10]] == [f"{i}\n" for i in range(10)]
    assert isinstance(outputs["exit 3"], subprocess.CalledProcessError) and outputs["exit 3"].returncode == 3
    assert waited.seconds < 10 * 0.2 / 2 and beat.beats > 20


def test_example_threadpool_hashes_files_off_the_hub(tmp_path):
    import hashlib

    threadpool = load_example("threadpool")
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"file{i}"))
        with open(paths[-1], "wb") as file:
            file.write(os.urandom(1 << 20) * (i + 1))
    with Beat() as beat:
        digests = threadpool.hash_files(paths, threads=3)
    for path in paths:
        with open(path, "rb") as file:
            assert digests[path] == hashlib.sha256(file.read()).hexdigest()
    assert beat.beats > 0


def test_wait_and_iwait_take_a_popen_as_gevents_do():
    # gevent's Popen is waitable (test__subprocess's test_wait): wait([popen]),
    # iwait() in the order the children exit, rawlink/unlink; the hub runs meanwhile.
    slow, fast = (coopsock.subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s}); raise SystemExit({code})"])
                  for s, code in ((0.5, 11), (0.05, 12)))
    with Ticker() as ticker:
        assert [p.returncode for p in coopsock.iwait([slow, fast])] == [12, 11]
    assert ticker.ticks >= 20 and ticker.longest < 0.25, (ticker.ticks, ticker.longest)
    assert coopsock.wait([slow], timeout=5) == [slow] and slow.poll() == 11  # exited already: at once
    linked, unlinked = [], []
    child = coopsock.subprocess.Popen([sys.executable, "-c", "raise SystemExit(13)"])
    child.rawlink(linked.append)
    child.rawlink(unlinked.append)
    child.unlink(unlinked.append)
    assert coopsock.wait([child], timeout=10) == [child] and child.returncode == 13
    assert linked == [child] and unlinked == []
    with pytest.raises(TypeError):
        child.rawlink(42)
