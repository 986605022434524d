"""Profile the coopsock echo server under ping-pong load: where each round trip's time goes.

    python bench/profile_server.py                       # libev backend, 100 connections, 64 bytes
    python bench/profile_server.py --backend selectors --conns 1000 --duration 8

Runs bench/servers/coopsock_server.py (the benchmark's own server, on the
working tree's coopsock.py) pinned to CPU 0, with bench/loadgen on CPU 1, in
two passes:

1. Counting, under cProfile, with every libev function that coopsock calls
   through ctypes wrapped so that it shows up as its own entry ("<ctypes>").
   Prints calls per round trip of each function (exact counts; cProfile slows
   the server, so the loop batches a little more than it does unprofiled) and
   each one's own time.
2. Sampling, unprofiled, with py-spy (if installed: pip install py-spy): the
   share of samples by innermost Python function and by coopsock function
   including callees; and, with perf (if it works here), the CPU share by
   library (kernel, libpython, libffi/_ctypes, libev...) and symbol; and,
   with strace, system calls per round trip.

Also prints the unprofiled server's CPU time per round trip, the figure that
RESULTS.md reports as "server CPU us/rt".
"""
import argparse
import collections
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen")
SERVER = os.path.join(HERE, "servers", "coopsock_server.py")
COOPSOCK_DIR = None  # --coopsock: the directory of the coopsock.py to profile


# ---------------------------------------------------------------------------
# The server side (profile_server.py --serve MODE OUTFILE)


def wrap_ctypes(coopsock):
    """Replace each ctypes function coopsock can reach with a counting Python wrapper.

    The wrapper's code is named after the C function, with file name
    "<ctypes>", so that cProfile lists every libev call as its own entry.
    Looks in the CDLL, in class attributes (as staticmethods: a ctypes function
    is not a descriptor) and in function defaults and closures.
    """
    import ctypes
    funcptr = ctypes._CFuncPtr
    wrapped = {}

    def wrapper(fn):
        if id(fn) not in wrapped:
            name = getattr(fn, "__name__", "cfunc")
            ns = {"_fn": fn}
            exec(compile(f"def {name}(*args):\n    return _fn(*args)\n", "<ctypes>", "exec"), ns)
            wrapped[id(fn)] = ns[name]
        return wrapped[id(fn)]

    lib = getattr(coopsock, "_ev_lib", None)
    if lib is not None:
        for name in list(vars(lib)):
            if isinstance(getattr(lib, name), funcptr):
                setattr(lib, name, wrapper(getattr(lib, name)))
        for name in getattr(coopsock, "_EV_SIGNATURES", {}):  # not looked up yet
            if hasattr(lib, name) and isinstance(getattr(lib, name), funcptr):
                setattr(lib, name, wrapper(getattr(lib, name)))

    def patch_function(f):
        if f.__defaults__:
            f.__defaults__ = tuple(wrapper(d) if isinstance(d, funcptr) else d for d in f.__defaults__)
        if f.__kwdefaults__:
            f.__kwdefaults__ = {k: wrapper(d) if isinstance(d, funcptr) else d for k, d in f.__kwdefaults__.items()}
        for cell in f.__closure__ or ():
            try:
                if isinstance(cell.cell_contents, funcptr):
                    cell.cell_contents = wrapper(cell.cell_contents)
            except ValueError:
                pass

    import types
    for value in list(vars(coopsock).values()):
        if isinstance(value, types.FunctionType):
            patch_function(value)
        elif isinstance(value, type) and value.__module__ == coopsock.__name__:
            for cls in value.__mro__:
                for k, v in list(vars(cls).items()):
                    if isinstance(v, funcptr):
                        setattr(cls, k, staticmethod(wrapper(v)))
                    elif isinstance(v, (staticmethod, classmethod)) and isinstance(v.__func__, types.FunctionType):
                        patch_function(v.__func__)
                    elif isinstance(v, types.FunctionType):
                        patch_function(v)
                    elif isinstance(v, property):
                        for f in (v.fget, v.fset):
                            if isinstance(f, types.FunctionType):
                                patch_function(f)
    return len(wrapped)


def serve(mode, outfile):
    sys.path.insert(0, os.path.dirname(SERVER))
    import coopsock_server  # inserts the repository into sys.path
    import coopsock

    if mode == "cprofile":
        import cProfile
        wrap_ctypes(coopsock)
        profiler = cProfile.Profile()

        def on_start(signum, frame):
            profiler.enable()

        def on_stop(signum, frame):
            profiler.disable()
            profiler.dump_stats(outfile)
            os._exit(0)
        signal.signal(signal.SIGUSR1, on_start)
        signal.signal(signal.SIGUSR2, on_stop)
    coopsock_server.main()


# ---------------------------------------------------------------------------
# The driver


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def start_server(mode, backend, outfile):
    env = dict(os.environ, COOPSOCK_LOOP=backend, PYTHONWARNINGS="ignore")
    env.pop("COOPSOCK_PATH", None)  # the working tree's coopsock.py, unless --coopsock says otherwise
    if COOPSOCK_DIR:
        env["COOPSOCK_PATH"] = COOPSOCK_DIR
    proc = subprocess.Popen(pin(0) + [sys.executable, os.path.abspath(__file__), "--serve", mode, outfile],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"profile: the server did not start: {line!r}")
    return proc, int(line.split()[1])


def loadgen(port, conns, size, duration):
    out = subprocess.run(pin(1) + [LOADGEN, "-p", str(port), "-c", str(conns), "-s", str(size), "-w", "0",
                                   "-d", str(duration)], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"profile: the load generator saw errors: {result['first_error']}")
    return result


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        proc.wait(5)


def short(func):
    """pstats key (file, line, name) -> a readable label."""
    filename, line, name = func
    if filename == "<ctypes>":
        return f"ctypes {name}"
    if filename == "~":
        return name
    return f"{os.path.basename(filename)}:{line}({name})"


def counting_pass(args, tmp):
    outfile = os.path.join(tmp, "server.prof")
    proc, port = start_server("cprofile", args.backend, outfile)
    try:
        loadgen(port, args.conns, args.size, 1.0)  # warm-up, unprofiled
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        result = loadgen(port, args.conns, args.size, args.duration)
        proc.send_signal(signal.SIGUSR2)
        proc.wait(30)
    finally:
        stop(proc)
    # The profiler ran a little longer than the load generator measured
    # (about 0.1 s before, a few ms after); round trips are counted on the
    # client, so per-round-trip figures are slightly high for an idle margin.
    rts = result["round_trips"]
    st = pstats.Stats(outfile)
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)
    print(f"\n## Counting pass (cProfile; libev calls wrapped): {rts:,} round trips, "
          f"{result['rps']:,.0f} rt/s under the profiler\n")
    print("Own time (tottime) and calls per round trip, by own time:\n")
    print(f"{'function':60} {'calls/rt':>9} {'own us/rt':>10} {'own %':>6}")
    for func, (cc, nc, tt, ct, callers) in rows[:args.top]:
        print(f"{short(func)[:60]:60} {nc / rts:9.3f} {tt / rts * 1e6:10.2f} {tt / total * 100:6.1f}")
    ctypes_rows = [(func, v) for func, v in st.stats.items() if func[0] == "<ctypes>"]
    if ctypes_rows:
        print("\nlibev calls through ctypes, per round trip:\n")
        for func, (cc, nc, tt, ct, callers) in sorted(ctypes_rows, key=lambda kv: -kv[1][1]):
            who = ", ".join(f"{short(c)} {n / rts:.2f}" for c, (_, n, _, _) in
                            sorted(callers.items(), key=lambda kv: -kv[1][1])[:4])
            print(f"  {func[2]:22} {nc / rts:7.3f}/rt  {tt / rts * 1e6:6.2f} us/rt   from {who}")
    print("\nCalls per round trip of selected builtins:\n")
    for func, (cc, nc, tt, ct, callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][1]):
        if func[0] == "~" and nc / rts >= 0.2:
            print(f"  {func[2][:70]:70} {nc / rts:7.3f}/rt  {tt / rts * 1e6:6.2f} us/rt")


def parse_pyspy_raw(path):
    """py-spy --format raw: 'frame;frame;... count' per line; return [(frames, count)]."""
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def frame_label(frame, line=False):
    # "name (path/file.py:123)" -> "name (file.py)" or "name (file.py:123)"; native frames have no path
    name, _, where = frame.partition(" (")
    where = os.path.basename(where.rstrip(")"))
    return f"{name} ({where if line else where.split(':')[0]})" if where else name


def perf_split(pid, port, args, tmp):
    """perf record -e cpu-clock on the server: CPU share by library and by symbol (kernel included)."""
    data = os.path.join(tmp, "perf.data")
    seconds = min(args.duration, 4.0)
    rec = subprocess.Popen(pin(1) + ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-p", str(pid),
                                     "-o", data, "--", "sleep", str(seconds)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    result = loadgen(port, args.conns, args.size, seconds + 0.5)
    _, err = rec.communicate(timeout=60)
    if rec.returncode != 0:
        print(f"\n(perf record failed: {err.strip()[-300:]})")
        return

    def report(sort, top):
        out = subprocess.run(["perf", "report", "-i", data, "--sort", sort, "--stdio", "-q"],
                             capture_output=True, text=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")][:top]
    print(f"\nCPU by library (perf record -e cpu-clock, {result['rps']:,.0f} rt/s meanwhile):\n")
    for line in report("dso", 12):
        print("  " + line)
    print("\nCPU by symbol:\n")
    for line in report("dso,sym", args.top):
        print("  " + line)


def syscall_counts(pid, port, args, tmp):
    """strace -c on the running server: system calls per round trip (strace slows it down)."""
    out = os.path.join(tmp, "strace.txt")
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    result = loadgen(port, args.conns, args.size, min(args.duration, 3.0))
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    rts = result["round_trips"]
    print(f"\nSystem calls per round trip (strace -c, {rts:,} round trips at {result['rps']:,.0f} rt/s "
          f"under strace; the slower server batches more per epoll_wait):\n")
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls, errors = int(parts[3]), int(parts[4]) if len(parts) == 6 else 0
                if calls / rts >= 0.01:
                    print(f"  {parts[-1]:16} {calls / rts:7.3f}/rt" + (f"  ({errors / rts:.3f}/rt failed)" if errors else ""))


def sampling_pass(args, tmp):
    pyspy = shutil.which("py-spy")
    proc, port = start_server("plain", args.backend, "")
    try:
        loadgen(port, args.conns, args.size, 1.0)  # warm-up
        (user0, sys0) = cpu_seconds(proc.pid)
        plain = loadgen(port, args.conns, args.size, args.duration)
        (user1, sys1) = cpu_seconds(proc.pid)
        rts = plain["round_trips"]
        print(f"\n## Unprofiled: {plain['rps']:,.0f} rt/s, p50 {plain['p50_us']:.0f} us, server CPU "
              f"{(user1 - user0 + sys1 - sys0) / rts * 1e6:.2f} us per round trip: user "
              f"{(user1 - user0) / rts * 1e6:.2f}, system (kernel) {(sys1 - sys0) / rts * 1e6:.2f}")
        if shutil.which("perf") and "perf" not in args.skip:
            perf_split(proc.pid, port, args, tmp)
        if shutil.which("strace") and "syscalls" not in args.skip:
            syscall_counts(proc.pid, port, args, tmp)
        if not pyspy:
            print("\n(py-spy is not installed: pip install py-spy for the sampling pass)")
            return
        raw = os.path.join(tmp, "pyspy.txt")
        cmd = [pyspy, "record", "--pid", str(proc.pid), "--rate", str(args.rate), "--duration",
               str(int(args.duration)), "--format", "raw", "--output", raw]
        cmd += ["--native"] if args.native else ["--nonblocking"]
        spy = subprocess.Popen(pin(1) + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        sampled = loadgen(port, args.conns, args.size, args.duration + 0.5)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not os.path.exists(raw):
            print(f"\n(py-spy failed: {err.strip()[-400:]})")
            return
    finally:
        stop(proc)
    stacks = parse_pyspy_raw(raw)
    total = sum(c for _, c in stacks)
    print(f"\n## Sampling pass (py-spy{' --native' if args.native else ''}, {args.rate} Hz): {total:,} samples "
          f"at {sampled['rps']:,.0f} rt/s\n")
    leaf = collections.Counter()
    inclusive = collections.Counter()
    for frames, count in stacks:
        labels = [frame_label(f) for f in frames if not f.startswith(("process ", "thread "))]
        if not labels:
            continue
        leaf[labels[-1]] += count
        for label in set(labels):
            inclusive[label] += count
    print("Innermost frame (own time), share of samples:\n")
    for label, count in leaf.most_common(args.top):
        print(f"  {count / total * 100:5.1f}%  {label}")
    lines = collections.Counter()
    for frames, count in stacks:
        py = [f for f in frames if ".py:" in f]
        if py:
            lines[frame_label(py[-1], line=True)] += count
    print("\nInnermost Python line (the C calls it makes included), share of samples:\n")
    for label, count in lines.most_common(args.top):
        print(f"  {count / total * 100:5.1f}%  {label}")
    print("\ncoopsock functions including callees, share of samples:\n")
    for label, count in inclusive.most_common():
        if "coopsock" in label and count / total >= 0.01:
            print(f"  {count / total * 100:5.1f}%  {label}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="libev")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true",
                    help="py-spy --native: keep C frames (it pauses the server, which skews the shares)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--coopsock", metavar="DIR", help="profile DIR/coopsock.py (e.g. bench/out/coopsock-snapshot, "
                    "the copy the last run.py measured) instead of the working tree's")
    ap.add_argument("--skip", default="", help="comma-separated passes to skip: counting, sampling, perf, syscalls")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import run
    run.build(LOADGEN)
    run.raise_nofile(4 * args.conns + 256)
    global COOPSOCK_DIR
    COOPSOCK_DIR = os.path.abspath(args.coopsock) if args.coopsock else None
    import hashlib
    with open(os.path.join(COOPSOCK_DIR or REPO, "coopsock.py"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()[:12]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# coopsock server profile: backend {args.backend}, {args.conns} connections, {args.size}-byte "
          f"ping-pong, {args.duration:g} s per pass; coopsock.py sha256 {sha}... (HEAD {commit})")
    with tempfile.TemporaryDirectory() as tmp:
        if "counting" not in args.skip:
            counting_pass(args, tmp)
        if "sampling" not in args.skip:
            sampling_pass(args, tmp)


if __name__ == "__main__":
    main()
