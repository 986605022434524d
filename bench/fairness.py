"""The hub's longest stall under a burst: coopsock's backends against gevent, in one run, interleaved.

usage: fairness.py [--runs 5] [--cases tls,db] [--libs coopsock-libev,...,gevent] [--budget-off]
The stall is conftest.py's Ticker's: the longest gap between the wake-ups of a
greenlet sleeping 5 ms in a loop, less 5 ms and the time the thread waited for
a CPU. Bursts, every result checked:
  tls  100 `requests` https GETs at once, verified with trustme's CA, against
       conftest.SLOW_SERVERS (another process; it answers after 100 ms)
  db   50 greenlets each opening a PyMySQL connection to a mariadbd of ours and
       running SELECT SLEEP(0.1); PyMySQL builds an ssl context per connect
Each measurement is a fresh process, `fairness.py --child LIB CASE`: coopsock
from the repo root with COOPSOCK_LOOP set, then patch(); or gevent after
monkey.patch_all(). Libraries alternate run by run (A B C D A B C D ...).
--budget-off sets coopsock._PASS_BUDGET = 1e9 after import: the hub before the budget.
"""
import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = "coopsock-libev,coopsock-selectors,coopsock-pyev,gevent"
BURST = {"tls": 100, "db": 50}


def child(lib, case, args):
    """Run one burst under a ticker; print {"stall": s, "wall": s} as JSON."""
    if lib == "gevent":
        from gevent import monkey
        monkey.patch_all()
        from gevent import joinall, sleep, spawn
    else:
        sys.path.insert(0, ROOT)
        import coopsock
        assert coopsock.BACKEND == lib.split("-", 1)[1], coopsock.BACKEND
        if args.budget_off:
            coopsock._PASS_BUDGET = 1e9
        coopsock.patch()
        from coopsock import joinall, sleep, spawn
    import pymysql
    import requests

    def get(i):
        r = requests.get(f"https://127.0.0.1:{args.port}/{i}", verify=args.cafile, timeout=30)
        assert (r.status_code, r.text) == (200, f"/{i}"), (r.status_code, r.text[:200])

    def query(i):
        with pymysql.connect(host="127.0.0.1", port=args.port, user="root") as db, db.cursor() as cursor:
            cursor.execute("SELECT SLEEP(0.1), %s", (i,))
            assert cursor.fetchone() == (0, i)

    def queued():  # seconds this thread has waited for a CPU (Linux; else 0)
        with contextlib.suppress(OSError), open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
        return 0.0

    longest = 0.0  # the ticker's: the longest gap, less the time waiting for a CPU

    def tick():
        nonlocal longest
        last, last_queued = time.monotonic(), queued()
        while True:
            sleep(0.005)
            now, now_queued = time.monotonic(), queued()
            longest = max(longest, now - last - (now_queued - last_queued))
            last, last_queued = now, now_queued

    socket.getaddrinfo("127.0.0.1", args.port)  # gevent starts its resolver's threads here, not in the burst
    ticker = spawn(tick)
    sleep(0.05)
    longest, start = 0.0, time.monotonic()
    tasks = [spawn({"tls": get, "db": query}[case], i) for i in range(BURST[case])]
    joinall(tasks, timeout=60)
    wall = time.monotonic() - start
    ticker.kill()
    for task in tasks:
        task.get(block=False)  # raises what the task died of, or that it did not finish
    print(json.dumps({"stall": longest - 0.005, "wall": wall}))


def start_https(folder, stack):
    """Start the tests' slow servers (conftest.SLOW_SERVERS) in another process; return the https port, the CA."""
    import trustme

    from conftest import SLOW_SERVERS
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{folder}/server.pem")
    ca.cert_pem.write_to_path(f"{folder}/ca.pem")
    server = stack.enter_context(subprocess.Popen([sys.executable, "-c", SLOW_SERVERS, f"{folder}/server.pem"],
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    stack.callback(server.stdin.close)  # runs first: the server's read of stdin ends, it exits
    return ["--port", server.stdout.readline().split()[1], "--cafile", f"{folder}/ca.pem"]


def start_mariadb(folder, stack):
    """Start a mariadbd of our own as test_programs.py's fixture does; return its port once it accepts."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    server = shutil.which("mariadbd", path=path) or shutil.which("mysqld", path=path)
    if not server:
        raise SystemExit("mariadbd is not installed: apt-get install mariadb-server, or --cases tls")
    from conftest import free_port
    port = free_port()
    os.mkdir(f"{folder}/data")
    command = [server, "--no-defaults", f"--datadir={folder}/data", f"--socket={folder}/sock",
               f"--pid-file={folder}/pid", f"--port={port}", "--bind-address=127.0.0.1", "--skip-grant-tables",
               "--skip-log-bin", "--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M"]
    command += ["--user=root"] if os.getuid() == 0 else []  # else it refuses to run as root
    with open(f"{folder}/mariadb.log", "wb") as log:
        process = stack.enter_context(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    stack.callback(process.terminate)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return ["--port", str(port)]
        time.sleep(0.05)
    raise SystemExit(f"mariadbd did not start; see {folder}/mariadb.log")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default="tls,db")
    ap.add_argument("--libs", default=LIBS)
    ap.add_argument("--budget-off", action="store_true", help="coopsock._PASS_BUDGET = 1e9 in the child")
    ap.add_argument("--child", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cafile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args)
    cases, libs = args.cases.split(","), args.libs.split(",")
    sys.path.insert(0, ROOT)  # conftest's helpers
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.runs} runs; "
          f"budget {'off (1e9)' if args.budget_off else 'on (coopsock._PASS_BUDGET)'}")
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        starts = {"tls": start_https, "db": start_mariadb}
        for case in cases:
            target = starts[case](folder, stack)
            stall, wall = {lib: [] for lib in libs}, {lib: [] for lib in libs}
            for _ in range(args.runs):
                for lib in libs:
                    env = dict(os.environ, COOPSOCK_LOOP=lib.split("-", 1)[-1])
                    command = [sys.executable, __file__, "--child", lib, case, *target]
                    proc = subprocess.run(command + ["--budget-off"] * args.budget_off,
                                          env=env, capture_output=True, text=True, timeout=120)
                    if proc.returncode:
                        raise SystemExit(f"{lib} {case} failed:\n{proc.stderr[-3000:]}")
                    result = json.loads(proc.stdout)
                    stall[lib].append(result["stall"] * 1e3)
                    wall[lib].append(result["wall"])
            print(f"\n{f'{case} ({BURST[case]} at once)':<22}{'stall median':>12}{'max':>11}"
                  f"{'burst wall median':>20}{'/ gevent':>14}")
            for lib in libs:
                ratio = statistics.median(stall[lib]) / statistics.median(stall["gevent"]) if "gevent" in libs else 0
                print(f"  {lib:<20} {statistics.median(stall[lib]):8.1f} ms {max(stall[lib]):7.1f} ms"
                      f" {statistics.median(wall[lib]):17.3f} s {ratio:13.2f}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
