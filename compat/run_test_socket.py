"""Run the interpreter's own test.test_socket with coopsock in place of the stdlib socket.

    python compat/run_test_socket.py [--loop libev|selectors|pyev] [-k SUBSTRING]
                                     [--jobs N] [--timeout S] [--failures] [--json FILE]

Each TestCase class runs in a subprocess of its own, under a time limit: a
class that hangs or crashes is killed, and its tests that had not finished
count as failed, with the reason. The parent prints per-class counts and the
pass rate, passed / (tests not skipped). Exit status 0 only if nothing failed.

coopsock goes in before test.test_socket is imported: ``coopsock.patch(socket=True,
...)`` if coopsock has one, else by hand, ``socket.socket`` and each module
function coopsock defines under a stdlib name. test_socket's client threads
each get a hub of their own, as any thread does.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODULE = "test.test_socket"


# ---------------------------------------------------------------------------
# The child: put coopsock in place, then list or run one class


def _install_coopsock(where, leave=()):
    """Import coopsock from `where` and put it in place of the stdlib socket; return what was replaced.

    By hand, the names in `leave` stay the stdlib's.
    """
    sys.path.insert(0, where)
    import socket

    import coopsock
    if hasattr(coopsock, "patch"):
        coopsock.patch(socket=True, ssl=False, select=False, selectors=False, time=False)
        return ["coopsock.patch(socket=True)"]
    replaced = []
    for name in sorted(vars(coopsock)):
        ours, theirs = getattr(coopsock, name), getattr(socket, name, None)
        if (theirs is not None and ours is not theirs and callable(ours) and name not in leave
                and getattr(ours, "__module__", None) == coopsock.__name__):
            setattr(socket, name, ours)
            replaced.append(name)
    return replaced


def _test_classes(module):
    """Return {class name: [test ids]} in the order unittest's module loader finds them."""
    classes = {}

    def walk(suite):
        for test in suite:
            if isinstance(test, unittest.TestSuite):
                walk(test)
            elif type(test).__module__ == module.__name__:  # not loader errors
                classes.setdefault(type(test).__name__, []).append(test.id())
    walk(unittest.TestLoader().loadTestsFromModule(module))
    return classes


class _Recorder(unittest.TestResult):
    """Write one JSON line per finished test (and one as each starts) so a kill loses nothing."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.failed_subtests = set()

    def _emit(self, **record):
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def _outcome(self, test, outcome, err=None, reason=None):
        record = {"id": test.id(), "outcome": outcome}
        if err is not None:
            record["error"] = "".join(traceback.format_exception(*err))
        if reason is not None:
            record["error"] = str(reason)
        self._emit(**record)

    def startTest(self, test):
        super().startTest(test)
        self._emit(start=test.id(), time=time.time())

    def addSuccess(self, test):
        self._outcome(test, "passed")

    def addFailure(self, test, err):
        self._outcome(test, "failed", err)

    def addError(self, test, err):
        # A class or module fixture failing comes as an _ErrorHolder, not a TestCase.
        self._outcome(test, "error" if isinstance(test, unittest.TestCase) else "fixture", err)

    def addSkip(self, test, reason):
        self._outcome(test, "skipped", reason=reason)

    def addExpectedFailure(self, test, err):
        self._outcome(test, "passed", reason="expected failure")

    def addUnexpectedSuccess(self, test):
        self._outcome(test, "failed", reason="unexpected success")

    def addSubTest(self, test, subtest, err):
        # The first failing subtest decides the test's outcome; unittest then
        # reports neither success nor failure for the test itself.
        if err is not None and test.id() not in self.failed_subtests:
            self.failed_subtests.add(test.id())
            failure = issubclass(err[0], test.failureException)
            record = {"id": test.id(), "outcome": "failed" if failure else "error",
                      "error": f"{subtest.id()}: " + "".join(traceback.format_exception(*err))}
            self._emit(**record)


def _dump_greenlets():
    # faulthandler shows each thread's running frame, which in a hang is the
    # hub's loop; the greenlets parked under it tell what they wait for.
    import gc

    from greenlet import greenlet
    for thing in gc.get_objects():
        if isinstance(thing, greenlet) and thing.gr_frame is not None:
            stack = "".join(traceback.format_stack(thing.gr_frame))
            print(f"--- parked {thing!r}\n{stack}", file=sys.stderr, flush=True)


def child(args):
    """List the test classes, or run one, writing JSON lines to args.out."""
    import faulthandler
    with open(args.out, "w") as out:
        try:
            if args.stdlib:
                replaced, backend = ["nothing (--stdlib)"], "none"
            else:
                replaced = _install_coopsock(args.coopsock, args.leave or ())
                backend = sys.modules["coopsock"].BACKEND
            out.write(json.dumps({"replaced": replaced, "backend": backend,
                                  "python": sys.version.split()[0]}) + "\n")
            module = __import__(MODULE, fromlist=["*"])
        except BaseException:
            out.write(json.dumps({"crash": traceback.format_exc()}) + "\n")
            return 1
        classes = _test_classes(module)
        if args.child_list:
            out.write(json.dumps({"classes": classes}) + "\n")
            return 0
        if args.timeout:  # every greenlet's and thread's stack on stderr shortly before the parent kills us
            dumper = threading.Timer(max(1, args.timeout - 8), _dump_greenlets)
            dumper.daemon = True
            dumper.start()
            faulthandler.dump_traceback_later(max(1, args.timeout - 5), exit=False)
        suite = unittest.TestLoader().loadTestsFromTestCase(getattr(module, args.child))
        unittest.TestSuite([suite]).run(_Recorder(out))  # the outer suite runs the module fixtures
        out.write(json.dumps({"done": True}) + "\n")
    return 0


# ---------------------------------------------------------------------------
# The parent: one subprocess per class, at most --jobs at a time


def _spawn(args, extra, log_path):
    """Run this file as a child with `extra` arguments; return (records, status text, stderr tail)."""
    fd, out_path = tempfile.mkstemp(prefix="coopsock-compat-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # --coopsock may name a tree that is not ours
    if args.loop:
        env["COOPSOCK_LOOP"] = args.loop
    leave = [f"--leave={name}" for name in args.leave or ()] + ["--stdlib"] * args.stdlib
    command = [sys.executable, os.path.abspath(__file__), "--out", out_path, *leave,
               "--coopsock", args.coopsock, "--timeout", str(args.timeout), *extra]
    with open(log_path, "w+b") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=tempfile.gettempdir(), start_new_session=True)
        try:
            proc.wait(args.timeout)
            status = "" if proc.returncode == 0 else f"crashed (exit status {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # test_socket forks children of its own
            proc.wait()
            status = f"timed out after {args.timeout:g} s"
        log.seek(0)
        tail = log.read().decode(errors="replace")[-6000:]
    with open(out_path) as out:
        records = [json.loads(line) for line in out if line.endswith("\n")]
    os.unlink(out_path)
    return records, status, tail


def _run_class(args, name, ids, log_dir):
    """Run one class; return its summary: counts, failures, status."""
    records, status, tail = _spawn(args, ["--child", name], os.path.join(log_dir, name + ".log"))
    outcomes, fixtures, running = {}, [], None
    for record in records:
        if "start" in record:
            running = record["start"]
        elif record.get("outcome") == "fixture":
            fixtures.append(record)
        elif "outcome" in record:
            outcomes.setdefault(record["id"], record)
        elif "crash" in record:
            status = status or "crashed"
            tail = record["crash"]
    if not any("done" in record for record in records) and not status:
        status = "crashed (no result)"
    for test_id in ids:
        if test_id not in outcomes:
            if status:
                why = "running when the class " + status if test_id == running else "not run: the class " + status
            else:
                why = "not run (a class or module fixture failed)"
            outcomes[test_id] = {"id": test_id, "outcome": "failed" if status else "error", "error": why}
    counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    for record in outcomes.values():
        counts[record["outcome"]] += 1
    return {"class": name, "counts": counts, "status": status, "tail": tail if status else "",
            "tests": [outcomes[i] for i in ids] + [o for i, o in outcomes.items() if i not in ids],
            "fixtures": fixtures}


def _first_line(error):
    """Return the line of a traceback that names the exception, or the first line of a message."""
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(" ") and not line.startswith("Traceback"):
            return line.strip()
    return lines[0].strip() if lines else ""


def parent(args):
    """List the classes in a child, run each in its own, print the counts; return the exit status."""
    log_dir = args.logs or tempfile.mkdtemp(prefix="coopsock-compat-logs-")
    os.makedirs(log_dir, exist_ok=True)
    records, status, tail = _spawn(args, ["--child-list"], os.path.join(log_dir, "_list.log"))
    header = next((r for r in records if "replaced" in r), None)
    classes = next((r["classes"] for r in records if "classes" in r), None)
    if classes is None:
        print(f"could not list {MODULE} ({status or 'no listing'}):\n{tail}", file=sys.stderr)
        for record in records:
            if "crash" in record:
                print(record["crash"], file=sys.stderr)
        return 2
    names = [name for name in classes if args.k is None or any(k in name for k in args.k)]
    print(f"Python {header['python']}, coopsock backend {header['backend']}, {MODULE}: "
          f"{len(names)} of {len(classes)} classes; replaced: {', '.join(header['replaced'])}")
    results, lock = {}, threading.Lock()

    def one(name):
        result = _run_class(args, name, classes[name], log_dir)
        with lock:
            results[name] = result
            c = result["counts"]
            print(f"  [{len(results)}/{len(names)}] {name}: {c['passed']} passed, {c['failed']} failed, "
                  f"{c['error']} errors, {c['skipped']} skipped {result['status']}", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, names))

    total = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    width = max((len(name) for name in names), default=10)
    print(f"{'class':<{width}}  passed failed errors skipped")
    for name in names:
        result = results[name]
        c = result["counts"]
        for key in total:
            total[key] += c[key]
        note = "  " + result["status"] if result["status"] else ""
        note += f"  ({len(result['fixtures'])} fixture errors)" if result["fixtures"] else ""
        print(f"{name:<{width}}  {c['passed']:>6} {c['failed']:>6} {c['error']:>6} {c['skipped']:>7}{note}")
    ran = total["passed"] + total["failed"] + total["error"]
    rate = 100.0 * total["passed"] / ran if ran else 0.0
    print(f"{'total':<{width}}  {total['passed']:>6} {total['failed']:>6} {total['error']:>6} "
          f"{total['skipped']:>7}")
    kept = args.logs or any(results[name]["status"] for name in names)
    if not kept:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"pass rate: {total['passed']} of {ran} not skipped = {rate:.1f}%  (loop {header['backend']}"
          + (f"; logs in {log_dir})" if kept else ")"))

    if args.failures:
        for name in names:
            result = results[name]
            for record in result["tests"] + result["fixtures"]:
                if record["outcome"] in ("failed", "error", "fixture"):
                    print(f"{record['outcome'].upper()}: {record['id']}: {_first_line(record.get('error'))}")
            if result["status"]:
                print(f"--- {name} {result['status']}; the end of its output:\n{result['tail'][-3000:]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"python": header["python"], "backend": header["backend"], "replaced": header["replaced"],
                       "total": total, "pass_rate": rate, "classes": [results[n] for n in names]}, out, indent=1)
    return 0 if total["failed"] == total["error"] == 0 else 1


def main(argv=None):
    """Parse the command line; run as the parent, or as a child when told to."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("libev", "selectors", "pyev"),
                        help="the coopsock backend for the children (sets COOPSOCK_LOOP)")
    parser.add_argument("-k", action="append", metavar="SUBSTRING",
                        help="run only the classes whose name contains SUBSTRING (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="classes run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a class may run before it is killed (default 120)")
    parser.add_argument("--failures", action="store_true",
                        help="print each failing test id with the last line of its error")
    parser.add_argument("--json", metavar="FILE", help="write every outcome and traceback to FILE")
    parser.add_argument("--logs", metavar="DIR", help="keep each class's output in DIR (default: a temp dir)")
    parser.add_argument("--coopsock", metavar="DIR", default=REPO,
                        help="the directory coopsock.py is imported from (default: this repository)")
    parser.add_argument("--leave", action="append", metavar="NAME",
                        help="without coopsock.patch: leave the stdlib's socket.NAME in place (repeatable)")
    parser.add_argument("--stdlib", action="store_true",
                        help="run with the stdlib socket, no coopsock: the baseline of this machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-list", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.coopsock = os.path.abspath(args.coopsock)
    if args.child or args.child_list:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
