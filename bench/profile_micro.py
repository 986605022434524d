"""cProfile of the micro-cost loops (bench/micro.py's operations) on coopsock: calls and own time per operation.

    python bench/profile_micro.py                      # the working tree's coopsock.py, COOPSOCK_LOOP backend
    python bench/profile_micro.py bench/out/coopsock-snapshot

cProfile charges time across greenlet switches oddly (a switch's own time
includes the other greenlet's), so read calls/op as exact and us/op as rough.
"""
import cProfile
import io
import os
import pstats
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.dirname(HERE))
import coopsock as c  # noqa: E402

N = 100_000


def pinger(n):
    for _ in range(n):
        c.sleep(0)


def switches():
    c.joinall([c.spawn(pinger, N // 2), c.spawn(pinger, N // 2)])


a, b = socket.socketpair()
b.send(b"x")  # a stays readable


def waits():
    for _ in range(N):
        c.wait_read(a.fileno())


def empty():
    pass


def spawns():
    for _ in range(N):
        c.spawn(empty).join()


def timeouts():
    for _ in range(N):
        with c.Timeout(10):
            pass


print(f"coopsock {c.__file__}, backend {c.BACKEND}")
for name, f in [("sleep(0), 2 greenlets", switches), ("wait_read, readable", waits),
                ("spawn+join", spawns), ("with Timeout(10)", timeouts)]:
    f()  # warm up
    pr = cProfile.Profile()
    pr.enable()
    f()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    print(f"\n=== {name}: calls and own time per operation")
    for func, (cc, nc, tt, ct, callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:14]:
        where = f"{os.path.basename(func[0])}:{func[1]}" if func[0] != "~" else ""
        print(f"  {func[2][:42]:42} {where:18} {nc / N:6.2f}/op {tt / N * 1e6:6.2f} us")
