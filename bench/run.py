"""Benchmark coopsock side by side with gevent, eventlet, asyncio, uvloop and threads.

    python bench/run.py              # the full run (~20 min on 2 cores): RESULTS.md, results.png
    python bench/run.py --quick      # shorter measurements, 1 repeat, 2,000 idle connections
    python bench/run.py --smoke      # a few seconds: one short case per coopsock backend (CI)
    python bench/run.py --cases pp64-100,micro --servers coopsock-libev,gevent
    python bench/run.py --cases pp64-100 --servers coopsock-selectors-pypy,coopsock-libev-pypy --pypy PATH

Each echo server (bench/servers/) runs in its own process pinned to CPU 0; the C
load generator (bench/loadgen.c, compiled on first use) runs on CPU 1. For each
case the servers are interleaved (A B C A B C ...) over the repeats, each
measurement on a freshly started server that first serves a throw-away warm-up
run. Figures are medians over the repeats with min-max, and ratios to gevent
(the gevent.socket accept loop + spawn server) measured in the same run: the
machines are shared and noisy, so only ratios from one run compare.

A full run writes bench/RESULTS.md, bench/results.png and bench/results.json; a
partial or --quick run writes the same files under bench/out/. --render
rebuilds the report from a results.json without measuring.

The servers named *-pypy are the same coopsock servers run by PyPy (--pypy, or
$COOPSOCK_BENCH_PYPY, or pypy3 on PATH) in the same run as gevent on CPython;
they run only when named in --servers or when --pypy is given.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen")
SERVERS_DIR = os.path.join(HERE, "servers")
C_SERVER = os.path.join(SERVERS_DIR, "c_epoll_server")
OUT_PARTIAL = os.path.join(HERE, "out")
BASELINE = "gevent"
IDLE_CONNS = 10_000

# name: (script and arguments, extra environment, module that must import, label)
SERVERS = {
    "coopsock-libev": (["coopsock_server.py"], {"COOPSOCK_LOOP": "libev"}, None,
                       "coopsock, libev (accept loop + spawn)"),
    "coopsock-libev-timeout": (["coopsock_server.py", "timeout"], {"COOPSOCK_LOOP": "libev"}, None,
                               "coopsock, libev, conn.settimeout(300) in the handler"),
    "coopsock-selectors": (["coopsock_server.py"], {"COOPSOCK_LOOP": "selectors"}, None,
                           "coopsock, selectors (accept loop + spawn)"),
    "coopsock-pyev": (["coopsock_server.py"], {"COOPSOCK_LOOP": "pyev"}, None,
                      "coopsock, pyev (accept loop + spawn)"),
    "coopsock-pyev-timeout": (["coopsock_server.py", "timeout"], {"COOPSOCK_LOOP": "pyev"}, None,
                              "coopsock, pyev, conn.settimeout(300) in the handler"),
    "gevent": (["gevent_server.py", "spawn"], {}, "gevent", "gevent (gevent.socket accept loop + spawn)"),
    "gevent-timeout": (["gevent_server.py", "spawn", "timeout"], {}, "gevent",
                       "gevent (accept loop + spawn), conn.settimeout(300) in the handler"),
    "gevent-StreamServer": (["gevent_server.py", "streamserver"], {}, "gevent", "gevent StreamServer"),
    "eventlet": (["eventlet_server.py"], {}, "eventlet", "eventlet (listen + spawn)"),
    "asyncio-streams": (["asyncio_server.py", "streams"], {}, None, "asyncio streams"),
    "asyncio-protocol": (["asyncio_server.py", "protocol"], {}, None, "asyncio Protocol"),
    "uvloop-streams": (["asyncio_server.py", "streams", "uvloop"], {}, "uvloop", "uvloop streams"),
    "uvloop-protocol": (["asyncio_server.py", "protocol", "uvloop"], {}, "uvloop", "uvloop Protocol"),
    "greenlet-ref": (["greenlet_ref_server.py"], {}, "greenlet",
                     "reference, a minimal greenlet server on select.epoll (try-first recv/send, "
                     "one EPOLLIN registration per socket)"),
    "threads": (["threads_server.py"], {}, None, "a thread per connection (stdlib sockets)"),
    "c-epoll": (["c_epoll_server"], {}, None,
                "reference, not a library: a C epoll echo server, the floor this machine and load generator allow"),
}
COOPSOCK_BACKENDS = ("libev", "selectors", "pyev")
PYPY = "-pypy"  # suffix of the servers that PyPy runs; the interpreter is chosen in main()
for _backend in COOPSOCK_BACKENDS:
    SERVERS[f"coopsock-{_backend}{PYPY}"] = (["coopsock_server.py"], {"COOPSOCK_LOOP": _backend}, None,
                                             f"coopsock on PyPy, {_backend} (accept loop + spawn)")
PYTHONS = {"cpython": sys.executable, "pypy": None}  # the interpreter of each kind of server


def python_of(name):
    """The interpreter that runs server (or micro library) `name`: PyPy for *-pypy, else this one."""
    return PYTHONS["pypy" if name.endswith(PYPY) else "cpython"]

# name: (kind, connections, message size, title)
CASES = {
    "pp64-1": ("pingpong", 1, 64, "64-byte ping-pong, 1 connection"),
    "pp64-100": ("pingpong", 100, 64, "64-byte ping-pong, 100 connections"),
    "pp64-1000": ("pingpong", 1000, 64, "64-byte ping-pong, 1,000 connections"),
    "pp16k-10": ("pingpong", 10, 16384, "16 KiB ping-pong, 10 connections"),
    "bulk-4": ("bulk", 4, 65536, "bulk streaming, 4 connections"),
    "memory": ("memory", IDLE_CONNS, 1, "memory per idle connection"),
    "micro": ("micro", 0, 0, "micro-costs"),
}
MICRO_LIBS = {  # name: (library argument of micro.py, environment)
    "coopsock-libev": ("coopsock", {"COOPSOCK_LOOP": "libev"}),
    "coopsock-selectors": ("coopsock", {"COOPSOCK_LOOP": "selectors"}),
    "coopsock-pyev": ("coopsock", {"COOPSOCK_LOOP": "pyev"}),
    **{f"coopsock-{b}{PYPY}": ("coopsock", {"COOPSOCK_LOOP": b}) for b in COOPSOCK_BACKENDS},
    "gevent": ("gevent", {}),
    "eventlet": ("eventlet", {}),
}
MICRO_OPS = (  # key, label, unit, True if higher is better
    ("timeout_us", "`with Timeout(10): pass`", "us", False),
    ("switch_per_s", "`sleep(0)` ping-pong between 2 greenlets", "switches/s", True),
    ("spawn_us", "`spawn(f).join()`, empty f", "us", False),
    ("wait_us", "`wait_read` on an already-readable socket", "us", False),
)


class BenchError(Exception):
    """A measurement failed: the server died, the load generator saw errors..."""


# ---------------------------------------------------------------------------
# Setup


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build(binary):
    """Compile binary.c with the system cc if the binary is missing or stale."""
    source = binary + ".c"
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(source):
        return
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise SystemExit(f"bench: no C compiler (cc) found: install gcc or clang to build {source}")
    cmd = [cc, "-O2", "-Wall", "-o", binary, source]
    log("bench: building:", " ".join(cmd))
    subprocess.run(cmd, check=True)


def ensure_peers():
    """pip-install bench/requirements.txt into this environment if a peer is missing."""
    wanted = ("gevent", "eventlet", "matplotlib") + (("uvloop",) if sys.platform != "win32" else ())
    missing = [m for m in wanted if not module_imports(m)]
    if missing:
        req = os.path.join(HERE, "requirements.txt")
        log(f"bench: installing {', '.join(missing)} from {req}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", req], check=False)


def module_imports(name, env=None):
    code = f"import warnings; warnings.simplefilter('ignore'); import {name}"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True).returncode == 0


def coopsock_backend_ok(backend, python=None):
    env = dict(os.environ, COOPSOCK_LOOP=backend)
    code = ("import os, sys; sys.path.insert(0, os.environ.get('COOPSOCK_PATH', '.')); import coopsock; "
            "sys.exit(coopsock.BACKEND != sys.argv[1])")
    return subprocess.run([python or sys.executable, "-c", code, backend], env=env, cwd=REPO,
                          capture_output=True).returncode == 0


def find_pypy(path):
    """Resolve --pypy, else $COOPSOCK_BENCH_PYPY, else pypy3 on PATH; None if none is given or found."""
    given = path or os.environ.get("COOPSOCK_BENCH_PYPY")
    found = shutil.which(given or "pypy3")
    if given and not found:
        raise SystemExit(f"bench: PyPy {given!r} is not an executable: pass --pypy PATH of a PyPy python")
    return found


def available_servers(wanted):
    """The servers of `wanted` that can run here."""
    names = []
    for name, (_, env, module, _) in SERVERS.items():
        if name not in wanted:
            continue
        if name.endswith(PYPY) and PYTHONS["pypy"] is None:
            log(f"bench: skipping {name}: no PyPy found: pass --pypy PATH or set COOPSOCK_BENCH_PYPY")
            continue
        if name.startswith("coopsock-"):
            ok = coopsock_backend_ok(env["COOPSOCK_LOOP"], python_of(name))
        elif name == "c-epoll":
            try:
                build(C_SERVER)
                ok = True
            except subprocess.CalledProcessError:
                ok = False
        else:
            ok = module is None or module_imports(module)
        if ok:
            names.append(name)
        else:
            log(f"bench: skipping {name}: {'its backend' if module is None else module} is not available")
    return names


def snapshot_coopsock():
    """Copy coopsock.py aside so that the whole run measures one version of it.

    The servers and micro.py import coopsock from COOPSOCK_PATH. Returns the
    commit, whether coopsock.py differs from it, and the copy's sha256 prefix.
    """
    snapdir = os.path.join(OUT_PARTIAL, "coopsock-snapshot")
    os.makedirs(snapdir, exist_ok=True)
    with open(os.path.join(REPO, "coopsock.py"), "rb") as f:
        source = f.read()
    with open(os.path.join(snapdir, "coopsock.py"), "wb") as f:
        f.write(source)
    os.environ["COOPSOCK_PATH"] = snapdir
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "coopsock_dirty": bool(git("status", "--porcelain", "--", "coopsock.py")),
            "coopsock_sha256": hashlib.sha256(source).hexdigest()[:12]}


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            need = hard
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class Pinning:
    """taskset prefixes: the server on CPU 0, the load generator on CPU 1."""

    def __init__(self, enabled):
        ncpu = os.cpu_count() or 1
        self.enabled = enabled and ncpu >= 2 and shutil.which("taskset") is not None
        self.note = ("server on CPU 0, load generator on CPU 1 (taskset)" if self.enabled else
                     "not pinned (taskset missing, fewer than 2 CPUs, or --no-pin)")
        if self.enabled:
            try:
                os.sched_setaffinity(0, {1})  # this harness stays off the server's CPU
            except (AttributeError, OSError):
                pass

    def server(self):
        return ["taskset", "-c", "0"] if self.enabled else []

    def client(self):
        return ["taskset", "-c", "1"] if self.enabled else []


# ---------------------------------------------------------------------------
# Processes


def proc_stat(pid):
    """Return (cpu seconds, minor page faults) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[7])


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def user_cpu_by_pid():
    """{pid: cpu seconds} of every user-space process (kernel threads left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry == "2" or fields[1] == "2":  # kthreadd and its children
            continue
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


class Quiet:
    """Noise control on a shared machine: CPU used by processes that are not ours.

    wait() holds off until other processes use less than `limit` cores;
    foreign() tells how many cores they used between two snapshots. Waiting and
    re-measuring share one budget of seconds for the whole run; once it is
    spent, the run goes on and marks noisy measurements in the report.
    """

    def __init__(self, limit, budget):
        self.limit, self.budget, self.waited = limit, budget, 0.0
        self.own = {os.getpid()}

    def foreign(self, before, after, seconds, exclude=()):
        skip = self.own | set(exclude)
        used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in skip)
        return max(used, 0.0) / max(seconds, 1e-3)

    def wait(self):
        said = False
        while self.waited < self.budget:
            before, t = user_cpu_by_pid(), time.monotonic()
            time.sleep(0.5)
            if self.foreign(before, user_cpu_by_pid(), time.monotonic() - t) < self.limit:
                return
            if not said:
                log(f"bench: other processes are busy; waiting for a quiet machine "
                    f"({self.budget - self.waited:.0f} s of waiting left in this run)")
                said = True
            time.sleep(1.5)
            self.waited += 2.0


class Server:
    """One echo server in a subprocess; start() waits for its "PORT n" line."""

    def __init__(self, name, pin, logdir, tag):
        self.name = name
        script, env, _, _ = SERVERS[name]
        path = os.path.join(SERVERS_DIR, script[0])
        self.argv = pin.server() + ([python_of(name), path] if path.endswith(".py") else [path]) + script[1:]
        self.env = dict(os.environ, PYTHONWARNINGS="ignore", **env)
        self.logpath = os.path.join(logdir, f"{tag}.log")
        self.proc = None
        self.port = None
        self.info = ""

    def start(self, timeout=30.0):
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise BenchError(f"{self.name} did not start: {line!r}; see {self.logpath}: {self.log_tail()}")
        _, port, *info = line.split()
        self.port, self.info = int(port), " ".join(info)
        return self

    def check(self):
        """Raise BenchError if the server died or printed a traceback."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            text = f.read()
        if "Traceback" in text or "Exception ignored" in text:
            raise BenchError(f"{self.name} reported errors: {self.log_tail()}")

    def log_tail(self, n=600):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()[-n:].strip()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_loadgen(pin, port, mode, conns, size, warmup, duration, busy_poll=False):
    cmd = pin.client() + [LOADGEN, "-p", str(port), "-m", mode, "-c", str(conns), "-s", str(size),
                          "-w", str(warmup), "-d", str(duration), "-T", "60"] + (["-b"] if busy_poll else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + duration + 120)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError(f"loadgen printed no result (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    if result.get("errors"):
        raise BenchError(f"loadgen: {result['errors']} errors, first: {result.get('first_error')}")
    return result


# ---------------------------------------------------------------------------
# The cases


def with_retries(measure, args, quiet, tag):
    """Run measure() -> (result, cores other processes used); retry a noisy one."""
    for attempt in range(args.retries + 1):
        quiet.wait()
        t = time.monotonic()
        result, foreign = measure()
        result["foreign_cores"], result["attempts"] = round(foreign, 3), attempt + 1
        if foreign <= args.noise_limit:
            break
        again = attempt < args.retries and quiet.waited < quiet.budget
        log(f"bench: {tag}: other processes used {foreign:.2f} cores meanwhile"
            + ("; measuring again" if again else "; kept, marked noisy"))
        if not again:
            break
        quiet.waited += time.monotonic() - t  # a re-measurement spends the same budget as waiting
    return result


def measure_pingpong(server_name, case, args, pin, logdir, tag, quiet):
    kind, conns, size, _ = CASES[case]
    mode = "bulk" if kind == "bulk" else "pingpong"

    def measure():
        with Server(server_name, pin, logdir, tag) as server:
            # A throw-away run first, on its own connections: the server's code
            # paths, its allocator and the kernel's socket caches warm up, and
            # one-off start-up states (e.g. glibc's mmap threshold) settle.
            if args.warmup > 0:
                run_loadgen(pin, server.port, mode, conns, size, 0, args.warmup, args.busy_poll)
            others0, t0 = user_cpu_by_pid(), time.monotonic()
            cpu0, faults0 = proc_stat(server.proc.pid)
            result = run_loadgen(pin, server.port, mode, conns, size, 0, args.duration, args.busy_poll)
            cpu1, faults1 = proc_stat(server.proc.pid)
            foreign = quiet.foreign(others0, user_cpu_by_pid(), time.monotonic() - t0, {server.proc.pid})
            server.check()
        rt = max(result["round_trips"], 1)
        return {
            "rps": result["rps"], "p50_us": result["p50_us"], "p99_us": result["p99_us"],
            "mb_per_s": result["mb_per_s"], "server_cpu": (cpu1 - cpu0) / result["duration_s"],
            "cpu_us_per_rt": (cpu1 - cpu0) / rt * 1e6 if mode == "pingpong" else None,
            "faults_per_rt": (faults1 - faults0) / rt if mode == "pingpong" else None,
            "info": server.info,
        }, foreign
    return with_retries(measure, args, quiet, tag)


def measure_memory(server_name, case, args, pin, logdir, tag):
    conns = args.idle_conns
    with Server(server_name, pin, logdir, tag) as server:
        run_loadgen(pin, server.port, "pingpong", 1, 64, 0, 0.2)  # one connection served and closed
        time.sleep(0.5)
        rss0 = proc_rss_kib(server.proc.pid)
        cmd = pin.client() + [LOADGEN, "-p", str(server.port), "-m", "idle", "-c", str(conns),
                              "-t", "300", "-T", "120"]
        client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            ready, _, _ = select.select([client.stdout], [], [], 180)
            line = client.stdout.readline() if ready else ""
            try:
                result = json.loads(line)
            except ValueError:
                raise BenchError(f"loadgen idle printed {line!r}") from None
            if result.get("errors") or not result.get("ready"):
                raise BenchError(f"loadgen idle: {result.get('errors')} errors, first: {result.get('first_error')}")
            time.sleep(1.0)
            rss1 = proc_rss_kib(server.proc.pid)
            server.check()
        finally:
            client.stdin.close()
            try:
                client.wait(60)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
    return {"kib_per_conn": (rss1 - rss0) / conns, "rss0_kib": rss0, "rss1_kib": rss1,
            "setup_s": result.get("setup_s"), "info": server.info}


def measure_micro(lib_name, args, pin, logdir, quiet=None):
    lib, env = MICRO_LIBS[lib_name]
    cmd = pin.server() + [python_of(lib_name), os.path.join(HERE, "micro.py"), lib, "--time", str(args.micro_time)]

    def measure():
        others0, t0 = user_cpu_by_pid(), time.monotonic()
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONWARNINGS="ignore", **env), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        foreign = quiet.foreign(others0, user_cpu_by_pid(), time.monotonic() - t0) if quiet else 0.0
        if proc.returncode != 0:
            raise BenchError(f"micro.py {lib} failed: {proc.stderr.strip()[-600:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), foreign
    return with_retries(measure, args, quiet, f"micro-{lib_name}") if quiet else measure()[0]


def run_cases(args, servers, pin, logdir, quiet):
    """Measure every case; return {case: {server: [result or {"error": msg}]}}."""
    results = {}
    for case in args.cases:
        kind = CASES[case][0]
        names = ([n for n in MICRO_LIBS if n in args.micro_libs] if kind == "micro" else servers)
        results[case] = {name: [] for name in names}
        for rep in range(args.repeats):
            for name in names:
                tag = f"{case}-{name}-{rep}"
                t = time.monotonic()
                try:
                    if kind == "micro":
                        r = measure_micro(name, args, pin, logdir, quiet)
                    elif kind == "memory":
                        quiet.wait()
                        r = measure_memory(name, case, args, pin, logdir, tag)
                    else:
                        r = measure_pingpong(name, case, args, pin, logdir, tag, quiet)
                except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                    r = {"error": str(exc)}
                results[case][name].append(r)
                log(f"bench: {case:10} {name:20} #{rep + 1} {time.monotonic() - t:5.1f}s  {summarize(case, r)}")
    return results


def summarize(case, r):
    if "error" in r:
        return "ERROR " + r["error"][:300]
    kind = CASES[case][0]
    if kind == "pingpong":
        return f"{r['rps']:10.0f} rt/s  p50 {r['p50_us']:8.1f} us  cpu {r['cpu_us_per_rt']:.1f} us/rt"
    if kind == "bulk":
        return f"{r['mb_per_s']:10.1f} MB/s"
    if kind == "memory":
        return f"{r['kib_per_conn']:8.2f} KiB/conn"
    return "  ".join(f"{k} {r[k]:.4g}" for k, *_ in MICRO_OPS if k in r)


# ---------------------------------------------------------------------------
# The report


def values(runs, key):
    return [r[key] for r in runs if "error" not in r and r.get(key) is not None]


def stats(runs, key):
    """(median, min, max) of key over the successful runs, or None."""
    v = values(runs, key)
    return (statistics.median(v), min(v), max(v)) if v else None


def fmt(x, digits=3):
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"


def ratio(case_results, name, key):
    mine, base = stats(case_results.get(name, []), key), stats(case_results.get(BASELINE, []), key)
    if not mine or not base or not base[0]:
        return None
    return mine[0] / base[0]


def cell(case_results, name, key, digits=3):
    s = stats(case_results.get(name, []), key)
    if not s:
        return "-", "-", "-"
    r = ratio(case_results, name, key)
    return fmt(s[0], digits), f"{fmt(s[1], digits)}-{fmt(s[2], digits)}", (f"{r:.2f}x" if r is not None else "-")


def errors_of(runs):
    return [r["error"] for r in runs if "error" in r]


def machine_info(servers, snapshot):
    info = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "nproc": os.cpu_count(), "kernel": platform.release(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        info["cpu"] = platform.processor() or "?"
    code = """
import json, os, sys, warnings
warnings.simplefilter("ignore")
v = {}
def grab(name, f):
    try: v[name] = f()
    except Exception as exc: v[name] = None
import greenlet; v["greenlet"] = greenlet.__version__
grab("gevent", lambda: __import__("gevent").__version__ + " (loop " + __import__("gevent").config.loop.__module__ + ")")
grab("eventlet", lambda: __import__("eventlet").__version__)
grab("uvloop", lambda: __import__("uvloop").__version__)
grab("matplotlib", lambda: __import__("matplotlib").__version__)
sys.path.insert(0, os.environ.get("COOPSOCK_PATH", "."))
import coopsock; v["coopsock"] = coopsock.__version__ + " (default backend " + coopsock.BACKEND + ")"
grab("libev", lambda: "%d.%d" % coopsock._load_backend("libev")[1].version())
print(json.dumps(v))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    try:
        info["versions"] = json.loads(proc.stdout)
    except ValueError:
        info["versions"] = {"error": proc.stderr[-300:]}
    if any(name.endswith(PYPY) for name in servers):
        code = ("import sys, greenlet; v = sys.pypy_version_info; "
                "print('PyPy %d.%d.%d (Python %s), greenlet %s' % (v[:3] + (sys.version.split()[0], "
                "greenlet.__version__)))")
        proc = subprocess.run([PYTHONS["pypy"], "-c", code], check=False, cwd=REPO, capture_output=True, text=True)
        info["pypy"] = f"{(proc.stdout.strip() or proc.stderr.strip()[-200:])}, run as {PYTHONS['pypy']}"
    info.update(snapshot)
    info["servers"] = {name: SERVERS[name][3] for name in servers}
    return info


def pypy_lines(results):
    """Rows for each *-pypy server: round trips/s and server CPU per round trip, as ratios to gevent and to
    the same loop on CPython."""
    pp = [c for c in ("pp64-1", "pp64-100", "pp64-1000") if c in results]
    names = list(dict.fromkeys(n for c in pp for n in results[c] if n.endswith(PYPY)))
    if not names:
        return []

    def pair(per_server, mine, theirs):
        out = []
        for key in ("rps", "cpu_us_per_rt"):
            a, b = stats(per_server.get(mine, []), key), stats(per_server.get(theirs, []), key)
            out.append(f"{a[0] / b[0]:.2f}x" if a and b and b[0] else "-")
        return " / ".join(out)
    conns = [f"{CASES[c][1]:,} conn" for c in pp]
    lines = ["| server | " + " | ".join(f"x gevent, {c}" for c in conns) + " | "
             + " | ".join(f"x same loop on CPython, {c}" for c in conns) + " |",
             "|---|" + "---:|" * (2 * len(pp))]
    for name in names:
        cells = [pair(results[c], name, BASELINE) for c in pp] + [pair(results[c], name, name[:-len(PYPY)]) for c in pp]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def target_checker(lines):
    """check(label, value, goal, ...) appends a row: the measured figure, met / missed by how much."""
    def check(label, value, goal, higher_is_better=True, unit="x"):
        if value is None:
            lines.append(f"| {label} | {'>=' if higher_is_better else '<='} {goal:g}{unit} | not measured | - |")
            return
        met = value >= goal if higher_is_better else value <= goal
        if met:
            verdict = "**met**"
        elif higher_is_better:
            verdict = f"missed: {value / goal:.0%} of the goal (needs {goal / value:.2f}x more)"
        else:
            verdict = f"missed: {value / goal:.2f}x the limit (needs {value / goal:.2f}x less)"
        lines.append(f"| {label} | {'>=' if higher_is_better else '<='} {goal:g}{unit} | {value:.2f}{unit} | {verdict} |")
    return check


def median_ratio(per_server, mine, theirs, key):
    """The ratio of two servers' medians of key in one case (None if either is missing)."""
    a, b = stats(per_server.get(mine, []), key), stats(per_server.get(theirs, []), key)
    return a[0] / b[0] if a and b and b[0] else None


def targets_issue16(results):
    """Issue 16's targets (the hub's one-switch park): ratios of medians between two servers in this run."""
    lines = []
    check = target_checker(lines)
    pp = ("pp64-1", "pp64-100", "pp64-1000")

    vs = median_ratio
    for case in pp:
        check(f"coopsock-libev rt/s vs greenlet-ref, {CASES[case][1]:,} conn",
              vs(results.get(case, {}), "coopsock-libev", "greenlet-ref", "rps"), 0.9)
    for case in ("pp64-100", "pp64-1000"):
        check(f"coopsock-libev rt/s vs gevent, {CASES[case][1]:,} conn",
              vs(results.get(case, {}), "coopsock-libev", BASELINE, "rps"), 1.3)
    memory = results.get("memory", {})
    mine, ref = (stats(memory.get(n, []), "kib_per_conn") for n in ("coopsock-libev", "greenlet-ref"))
    check("coopsock-libev memory per idle connection vs greenlet-ref"
          + (f" ({mine[0]:.2f} vs {ref[0]:.2f} KiB)" if mine and ref else ""),
          mine[0] / ref[0] if mine and ref and ref[0] else None, 1.0, False)
    return lines


def targets_issue8(results):
    """Issue 8's targets: ratios of medians between two servers in this run."""
    lines = []
    check = target_checker(lines)
    pp = ("pp64-1", "pp64-100", "pp64-1000")

    vs = median_ratio
    for mine, theirs, goal in (("coopsock-libev", "gevent", 1.3), ("coopsock-libev-timeout", "gevent-timeout", 1.3),
                               ("coopsock-libev", "greenlet-ref", 0.9), ("coopsock-pyev", "gevent", 1.5)):
        if mine == "coopsock-pyev" and not any(mine in results.get(case, {}) for case in pp):
            continue  # pyev absent
        for case in pp:
            check(f"{mine} rt/s vs {theirs}, {CASES[case][1]} conn", vs(results.get(case, {}), mine, theirs, "rps"),
                  goal)
    micro = results.get("micro", {})
    check("coopsock-libev sleep(0) switches/s vs gevent", vs(micro, "coopsock-libev", BASELINE, "switch_per_s"), 1.0)
    for key, what, goal in (("spawn_us", "spawn+join", 1.0), ("timeout_us", "Timeout enter+exit", 1.0),
                            ("wait_us", "wait_read on a ready fd", 1.5)):
        check(f"coopsock-libev {what} cost vs gevent", vs(micro, "coopsock-libev", BASELINE, key), goal, False)
    s = stats(results.get("memory", {}).get("coopsock-libev", []), "kib_per_conn")
    check("coopsock-libev memory per idle connection", s[0] if s else None, 6.0, False, " KiB")
    return lines


def target_lines(results):
    """Issue 4's targets, each with the measured figure and met / missed by how much."""
    lines = []
    check = target_checker(lines)
    for case in ("pp64-1", "pp64-100", "pp64-1000"):
        cr = results.get(case, {})
        conns = CASES[case][1]
        check(f"coopsock-libev rt/s vs gevent, {conns} conn", ratio(cr, "coopsock-libev", "rps"), 2.0)
        for peer in ("asyncio-streams", "uvloop-streams", "threads"):
            mine, theirs = stats(cr.get("coopsock-libev", []), "rps"), stats(cr.get(peer, []), "rps")
            check(f"coopsock-libev rt/s vs {peer}, {conns} conn",
                  mine[0] / theirs[0] if mine and theirs else None, 1.0)
    for case in ("pp64-1", "pp64-100", "pp64-1000"):
        check(f"coopsock-selectors rt/s vs gevent, {CASES[case][1]} conn",
              ratio(results.get(case, {}), "coopsock-selectors", "rps"), 1.5)
    for name in ("coopsock-libev", "coopsock-selectors"):
        check(f"{name} p50 latency vs gevent, 1 conn", ratio(results.get("pp64-1", {}), name, "p50_us"), 0.7,
              higher_is_better=False)
    for name in ("coopsock-libev", "coopsock-selectors"):
        s = stats(results.get("memory", {}).get(name, []), "kib_per_conn")
        check(f"{name} memory per idle connection", s[0] if s else None, 6.0, higher_is_better=False,
              unit=" KiB")
    micro = results.get("micro", {})
    for name in ("coopsock-libev", "coopsock-selectors"):
        check(f"{name} Timeout enter+exit vs gevent", ratio(micro, name, "timeout_us"), 0.5, False)
        check(f"{name} spawn+join vs gevent", ratio(micro, name, "spawn_us"), 0.5, False)
        check(f"{name} sleep(0) switches/s vs gevent", ratio(micro, name, "switch_per_s"), 1.0)
    return lines


def write_report(data, outdir):
    results, meta = data["results"], data["meta"]
    info = meta["machine"]
    md = ["# coopsock benchmark results", "",
          f"Generated by `{meta['command']}` on {info['date']}"
          f" ({meta['elapsed_s'] / 60:.1f} min). Only ratios from one run compare: the machine is shared.", "",
          "## Machine and method", "",
          f"- CPUs (`nproc`): {info['nproc']}; CPU: {info['cpu']}; kernel {info['kernel']}; Python {info['python']}",
          "- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
          *([f"- The `*{PYPY}` servers: {info['pypy']}; the others and the harness: CPython {info['python']}"]
            if info.get("pypy") else []),
          f"- coopsock.py at commit {info['commit']}{' with uncommitted changes' if info['coopsock_dirty'] else ''}"
          f" (sha256 {info.get('coopsock_sha256', '?')}..., copied aside when the run began)",
          f"- Pinning: {meta['pinning']}",
          f"- Each measurement: a fresh server process, a {meta['warmup']:g} s warm-up run on throw-away "
          f"connections, then {meta['duration']:g} s measured; {meta['repeats']} repeats, servers interleaved "
          f"(A B C A B C ...). Figures: median, min-max over the repeats, and the median as a ratio to "
          f"`{BASELINE}` in this run (for latency, memory and costs: lower is better).",
          "- Load: bench/loadgen (C, epoll), ping-pong of S bytes per connection (send, wait for the whole "
          "echo, repeat), checked byte for byte; bulk: 4 connections streaming 64 KiB writes with 1 MiB in flight. "
          "Servers read up to 64 KiB and send it all back (asyncio/uvloop Protocols read what the transport "
          "hands them); each sets TCP_NODELAY on accepted connections (asyncio and uvloop do it themselves).",
          f"- Memory: server VmRSS with {meta['idle_conns']:,} idle connections (each served one 1-byte round trip) "
          "minus VmRSS after serving one connection, divided by the connection count.",
          "- Server CPU us/rt: the server process's user+system CPU time during the measured run per round trip.",
          "", "Servers:", ""]
    md += [f"- `{name}`: {label}" for name, label in info["servers"].items()]
    limit = meta.get("noise_limit")
    if limit is not None:
        runs = [r for per in results.values() for rs in per.values() for r in rs if "foreign_cores" in r]
        noisy = [r for r in runs if r["foreign_cores"] > limit]
        again = sum(r["attempts"] > 1 for r in runs)
        md += ["", f"Noise: before each measurement the harness waits for other processes to use less than "
               f"{limit / 2:g} cores (it waited {meta.get('quiet_waited_s', 0):.0f} s in all), and measures "
               f"again when they used more than {limit:g} cores meanwhile ({again} of {len(runs)} measurements "
               f"were repeated). {len(noisy)} measurements stayed noisy after the retries"
               + ("; their servers are marked * in the tables." if noisy else ".")]

    pypy = pypy_lines(results)
    if pypy:
        md += ["", "## coopsock on PyPy", "",
               (f"The `*{PYPY}` servers are coopsock's own server run by PyPy, in the same interleaved run as "
                "gevent on CPython; their JIT warms up during the warm-up run before each measurement. "
                "Each cell: the ratio of the medians of round trips/s (higher is better) / of server CPU "
                "per round trip (lower is better; the steadier figure when the machine is busy):"), ""] + pypy
    head = ["| target | goal | measured | verdict |", "|---|---|---|---|"]
    md += ["", "## Targets (issue 16)", ""] + head + targets_issue16(results)
    md += ["", "## Targets (issue 8)", ""] + head + targets_issue8(results)
    md += ["", "## Earlier targets (issue 4)", ""] + head + target_lines(results)

    for case, per_server in results.items():
        kind, conns, size, title = CASES[case]
        md += ["", f"## {title} (`{case}`)", ""]

        def shown(name):
            noisy = limit is not None and any(r.get("foreign_cores", 0) > limit for r in per_server[name])
            return name + (" *" if noisy else "")
        if kind == "pingpong":
            md += ["| server | round trips/s | min-max | x gevent | p50 us | x gevent | p99 us "
                   "| server CPU us/rt | x gevent |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, runs in per_server.items():
                med, rng, rat = cell(per_server, name, "rps")
                p50, _, p50r = cell(per_server, name, "p50_us")
                p99 = cell(per_server, name, "p99_us")[0]
                cpu, _, cpur = cell(per_server, name, "cpu_us_per_rt")
                md.append(f"| {shown(name)} | {med} | {rng} | {rat} | {p50} | {p50r} | {p99} | {cpu} | {cpur} |")
            floor = stats(per_server.get("c-epoll", []), "p50_us")
            if case == "pp64-1" and floor:
                md += ["", f"At one connection the C reference server's p50 is {fmt(floor[0])} us: most of each "
                       "round trip is the two processes waking up (on a VM, a halted vCPU is slow to wake), which "
                       "no server code avoids. Server CPU us/rt shows what each server itself spends."]
        elif kind == "bulk":
            md += ["| server | MB/s echoed | min-max | x gevent | server CPU (cores) |", "|---|---:|---:|---:|---:|"]
            for name in per_server:
                med, rng, rat = cell(per_server, name, "mb_per_s")
                md.append(f"| {shown(name)} | {med} | {rng} | {rat} | {cell(per_server, name, 'server_cpu')[0]} |")
        elif kind == "memory":
            md += ["| server | KiB per idle connection | min-max | x gevent | RSS before, MiB | RSS with conns, MiB |",
                   "|---|---:|---:|---:|---:|---:|"]
            for name, runs in per_server.items():
                med, rng, rat = cell(per_server, name, "kib_per_conn")
                r0, r1 = stats(runs, "rss0_kib"), stats(runs, "rss1_kib")
                md.append(f"| {shown(name)} | {med} | {rng} | {rat} | {fmt(r0[0] / 1024) if r0 else '-'} | "
                          f"{fmt(r1[0] / 1024) if r1 else '-'} |")
        else:
            md += ["| operation | library | median | min-max | x gevent |", "|---|---|---:|---:|---:|"]
            for key, label, unit, _ in MICRO_OPS:
                for name in per_server:
                    med, rng, rat = cell(per_server, name, key)
                    md.append(f"| {label} ({unit}) | {shown(name)} | {med} | {rng} | {rat} |")
        errs = [(name, e) for name, runs in per_server.items() for e in errors_of(runs)]
        if errs:
            md += ["", "Failed measurements:", ""] + [f"- {name}: {e[:300]}" for name, e in errs]
    if os.path.exists(os.path.join(outdir, "results.png")):
        md += ["", "## Chart", "", "![round trips/s by library and connection count](results.png)"]
    md.append("")
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write("\n".join(md))


def write_chart(data, outdir):
    """Bar chart: 64-byte round trips/s by server, grouped by connection count."""
    results = data["results"]
    cases = [c for c in ("pp64-1", "pp64-100", "pp64-1000") if c in results]
    if not cases:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("bench: matplotlib is missing: no chart")
        return
    names = list(dict.fromkeys(n for c in cases for n in results[c]))
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        meds, lo, hi = [], [], []
        for c in cases:
            s = stats(results[c].get(name, []), "rps")
            meds.append(s[0] if s else 0)
            lo.append(s[0] - s[1] if s else 0)
            hi.append(s[2] - s[0] if s else 0)
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cases))]
        bold = name.startswith("coopsock") or name == BASELINE
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2,
               label=name + (" (reference)" if name in ("c-epoll", "greenlet-ref") else ""),
               color="lightgrey" if name == "c-epoll" else cmap(i % 20), hatch="//" if name == "c-epoll" else None,
               edgecolor="black" if bold else "grey" if name == "c-epoll" else None, linewidth=1.2 if bold else 0.5)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{CASES[c][1]:,} connection{'s' if CASES[c][1] > 1 else ''}" for c in cases])
    ax.set_ylabel("round trips/s (median, min-max)")
    ax.set_title(f"64-byte echo ping-pong, server on 1 core ({data['meta']['machine']['date']})")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "results.png"), dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Smoke


def smoke(args, pin, logdir):
    """One short ping-pong and the micro-costs per coopsock backend; True if all passed."""
    ok = True
    for backend in COOPSOCK_BACKENDS:
        name = f"coopsock-{backend}"
        if not coopsock_backend_ok(backend):
            log(f"smoke: {name}: backend absent here, skipped")
            if backend == "selectors":
                log("smoke: FAIL: the selectors backend must always load")
                ok = False
            continue
        try:
            with Server(name, pin, logdir, f"smoke-{name}") as server:
                r = run_loadgen(pin, server.port, "pingpong", 20, 64, 0.2, 0.5)
                if not r["round_trips"]:
                    raise BenchError("no round trip completed")
                b = run_loadgen(pin, server.port, "bulk", 2, 65536, 0, 0.3)
                if not b["bytes"]:
                    raise BenchError("bulk: nothing echoed")
                time.sleep(0.1)
                server.check()
                if server.info != backend:
                    raise BenchError(f"server ran on backend {server.info!r}, not {backend}")
            m = measure_micro(name, argparse.Namespace(micro_time=0.05), pin, logdir)
            log(f"smoke: {name}: ok: {r['rps']:.0f} rt/s at 20 conns, p50 {r['p50_us']:.0f} us; "
                f"bulk {b['mb_per_s']:.0f} MB/s; " + summarize("micro", m))
        except (BenchError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            log(f"smoke: {name}: FAIL: {exc}")
            ok = False
    return ok


# ---------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--smoke", action="store_true", help="a few seconds: one short case per coopsock backend; "
                    "exits non-zero on any error")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 0.5 s warm-up, 1.5 s runs, 2,000 idle connections")
    ap.add_argument("--cases", help=f"comma-separated, from: {', '.join(CASES)} (default: all)")
    ap.add_argument("--servers", help=f"comma-separated, from: {', '.join(SERVERS)} (default: all present); "
                    "gevent is always added as the baseline")
    ap.add_argument("--repeats", type=int, help="repeats per measurement (default 3)")
    ap.add_argument("--duration", type=float, help="seconds measured per run (default 3)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up run before each measurement (default 1)")
    ap.add_argument("--idle-conns", type=int, help=f"connections for the memory case (default {IDLE_CONNS:,})")
    ap.add_argument("--micro-time", type=float, default=0.5, help="seconds per micro-cost figure (default 0.5)")
    ap.add_argument("--out", help="directory for RESULTS.md, results.png, results.json "
                    "(default: bench/ for a full run, bench/out/ otherwise)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--busy-poll", action="store_true", help="the load generator polls epoll without sleeping")
    ap.add_argument("--noise-limit", type=float, default=0.2,
                    help="re-measure when other processes used more than this many cores meanwhile (default 0.2)")
    ap.add_argument("--retries", type=int, default=2, help="re-measurements of a noisy measurement (default 2)")
    ap.add_argument("--quiet-budget", type=float, default=600,
                    help="seconds the whole run may wait for other processes to calm down (default 600)")
    ap.add_argument("--pypy", metavar="PATH", help=f"the PyPy python that runs the *{PYPY} servers (default: "
                    "$COOPSOCK_BENCH_PYPY, else pypy3 on PATH); given, they join the default servers")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install missing peers")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="rebuild RESULTS.md and the chart from a results.json")
    args = ap.parse_args(argv)
    args.full = not (args.quick or args.cases or args.servers or args.repeats or args.duration or args.warmup
                     or args.idle_conns)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.duration = args.duration or (1.5 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.idle_conns = args.idle_conns or (2000 if args.quick else IDLE_CONNS)
    if args.quick:
        args.micro_time = min(args.micro_time, 0.25)
    args.cases = args.cases.split(",") if args.cases else list(CASES)
    for case in args.cases:
        if case not in CASES:
            ap.error(f"unknown case {case!r}: choose from {', '.join(CASES)}")
    if args.servers:
        args.servers = args.servers.split(",")
        for name in args.servers:
            if name not in SERVERS:
                ap.error(f"unknown server {name!r}: choose from {', '.join(SERVERS)}")
        if BASELINE not in args.servers:
            args.servers.insert(0, BASELINE)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    outdir = args.out or (os.path.dirname(os.path.abspath(args.render)) if args.render else
                          HERE if args.full else OUT_PARTIAL)
    os.makedirs(outdir, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        write_chart(data, outdir)
        write_report(data, outdir)
        log(f"bench: wrote {outdir}/RESULTS.md and results.png")
        return 0

    logdir = os.path.join(OUT_PARTIAL, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    build(LOADGEN)
    snapshot = snapshot_coopsock()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the running server
    raise_nofile(2 * max(args.idle_conns, 1000) + 256)
    pin = Pinning(not args.no_pin)

    if args.smoke:
        t = time.monotonic()
        ok = smoke(args, pin, logdir)
        log(f"smoke: {'passed' if ok else 'FAILED'} in {time.monotonic() - t:.1f}s")
        return 0 if ok else 1

    if not args.no_install:
        ensure_peers()
    PYTHONS["pypy"] = find_pypy(args.pypy)
    servers = available_servers(args.servers or [n for n in SERVERS if args.pypy or not n.endswith(PYPY)])
    if args.servers:
        servers = [s for s in args.servers if s in servers]
    args.micro_libs = [n for n in MICRO_LIBS if n in servers or (n == "gevent" and module_imports("gevent"))
                       or (n == "eventlet" and "eventlet" in servers)]
    if BASELINE not in servers:
        log(f"bench: warning: the baseline {BASELINE} is not available: no ratios")
    command = "python bench/run.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log(f"bench: {command}: cases {', '.join(args.cases)}; servers {', '.join(servers)}; "
        f"{args.repeats} repeats of {args.warmup:g}+{args.duration:g} s; {pin.note}")
    t = time.monotonic()
    quiet = Quiet(args.noise_limit / 2, args.quiet_budget)
    results = run_cases(args, servers, pin, logdir, quiet)
    meta = {"command": command, "elapsed_s": time.monotonic() - t, "pinning": pin.note,
            "noise_limit": args.noise_limit, "quiet_waited_s": quiet.waited,
            "repeats": args.repeats, "duration": args.duration, "warmup": args.warmup,
            "idle_conns": args.idle_conns, "machine": machine_info(servers, snapshot)}
    data = {"meta": meta, "results": results}
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    write_chart(data, outdir)
    write_report(data, outdir)
    failures = sum(len(errors_of(runs)) for per in results.values() for runs in per.values())
    log(f"bench: wrote {outdir}/RESULTS.md, results.png, results.json in {meta['elapsed_s'] / 60:.1f} min"
        + (f"; {failures} measurements FAILED (see the report)" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
