"""Micro-costs of the greenlet libraries, measured in one process.

usage: micro.py coopsock|gevent|eventlet [--time SECONDS] [--ops timeout,switch,spawn,wait,lock]

For coopsock the backend comes from COOPSOCK_LOOP. Prints one JSON line:
  timeout_us   `with Timeout(10): pass`, enter + exit, in microseconds
  switch_per_s `sleep(0)` calls per second, two greenlets taking turns
  spawn_us     `spawn(f).join()` of an empty function, in microseconds
  wait_us      one `wait_read` on a socket that is already readable, in microseconds
  lock_us      `with lock:` on a free lock of the library's patched threading.Lock
               (coopsock: patch(threading=True); gevent: monkey.patch_thread's), and
  rlock_us     the same for RLock; std_lock_us and std_rlock_us: the stdlib's, in the
               same process (logging takes an RLock per record)
Each figure is the median of 5 batches, each sized to take about --time / 5
seconds after a calibration run.
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def load(lib):
    """Return {name: callable} for the library's equivalents, and a version string."""
    if lib == "coopsock":
        sys.path.insert(0, os.environ.get("COOPSOCK_PATH") or os.path.dirname(HERE))
        import coopsock as m
        return dict(Timeout=m.Timeout, sleep=m.sleep, spawn=m.spawn,
                    join=lambda g: g.join(), joinall=m.joinall,
                    wait_read=m.wait_read, Lock=m._ThreadLock, RLock=m._ThreadRLock), f"{m.__version__} ({m.BACKEND})"
    if lib == "gevent":
        import gevent
        import gevent.lock
        import gevent.socket
        import gevent.thread
        return dict(Timeout=gevent.Timeout, sleep=gevent.sleep, spawn=gevent.spawn,
                    join=lambda g: g.join(), joinall=gevent.joinall,
                    wait_read=gevent.socket.wait_read, Lock=gevent.thread.allocate_lock,
                    RLock=gevent.lock.RLock), gevent.__version__
    if lib == "eventlet":
        warnings.simplefilter("ignore")
        import eventlet
        import eventlet.hubs

        def joinall(threads):
            for t in threads:
                t.wait()
        return dict(Timeout=eventlet.Timeout, sleep=eventlet.sleep, spawn=eventlet.spawn,
                    join=lambda g: g.wait(), joinall=joinall,
                    wait_read=lambda fd: eventlet.hubs.trampoline(fd, read=True)), eventlet.__version__
    raise SystemExit(f"unknown library {lib!r}")


def per_op(run, budget):
    """Time run(n) (which does n operations); return the median seconds per operation."""
    n = 200
    while True:  # calibrate: grow n until one batch takes a measurable time
        t = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t
        if dt > 0.02 or n >= 10_000_000:
            break
        n *= 4
    n = max(1, int(n * (budget / 5) / max(dt, 1e-9)))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        run(n)
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--time", type=float, default=0.5, help="seconds per figure (default 0.5)")
    ap.add_argument("--ops", default="timeout,switch,spawn,wait,lock")
    args = ap.parse_args()
    api, version = load(args.lib)
    Timeout, sleep, spawn, join, joinall, wait_read = (
        api[k] for k in ("Timeout", "sleep", "spawn", "join", "joinall", "wait_read"))
    out = {"lib": args.lib, "version": version}
    ops = args.ops.split(",")

    if "timeout" in ops:
        def timeouts(n):
            for _ in range(n):
                with Timeout(10):
                    pass
        out["timeout_us"] = per_op(timeouts, args.time) * 1e6

    if "switch" in ops:
        def pinger(n):
            for _ in range(n):
                sleep(0)

        def switches(n):  # n sleep(0) calls in all, two greenlets taking turns
            joinall([spawn(pinger, n // 2), spawn(pinger, n - n // 2)])
        out["switch_per_s"] = 1.0 / per_op(switches, args.time)

    if "spawn" in ops:
        def empty():
            pass

        def spawns(n):
            for _ in range(n):
                join(spawn(empty))
        out["spawn_us"] = per_op(spawns, args.time) * 1e6

    if "wait" in ops:
        a, b = socket.socketpair()
        b.send(b"x")  # never read: a stays readable
        fd = a.fileno()

        def waits(n):
            for _ in range(n):
                wait_read(fd)
        out["wait_us"] = per_op(waits, args.time) * 1e6
        a.close()
        b.close()

    if "lock" in ops and "Lock" in api:
        import _thread
        import threading

        def with_lock(lock):
            def run(n):
                for _ in range(n):
                    with lock:
                        pass
            return run
        for key, lock in (("lock_us", api["Lock"]()), ("rlock_us", api["RLock"]()),
                          ("std_lock_us", _thread.allocate_lock()), ("std_rlock_us", threading.RLock())):
            out[key] = per_op(with_lock(lock), args.time) * 1e6

    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
