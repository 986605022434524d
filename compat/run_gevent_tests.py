"""Run gevent's own unit tests against coopsock, through a `gevent` package that only renames coopsock's names.

    python compat/run_gevent_tests.py [--loop libev|selectors|pyev] [--gevent] [-k SUBSTRING]
                                      [--timeout S] [--failures] [--json FILE]

gevent ships its tests (gevent/tests/test__*.py) and their harness
(gevent.testing) in its package. The runner copies both into a temporary
directory beside a `gevent` package of its own, the shim: each module holds
coopsock's names under gevent's (SHIM), the names gevent's module takes as is
from the stdlib (the same objects), and no others: any other name raises
NotApplicable, an AttributeError. A test that dies of one, of an import from
the shim, of an attribute a coopsock object lacks (``Greenlet.exc_info``) or
mock.patch finds missing, is not applicable, and the name is tallied; if the
file's import needs a missing name, so are all its tests but those gevent
itself skips here (the file is run against gevent to know them). ``--gevent``
runs the files against the real gevent, no shim: the baseline.

Each file runs in a subprocess of its own, under a time limit: a file that
hangs or crashes is killed, and its tests not finished count as failed. The
parent prints per-file counts, the pass rates over the applicable tests and
over all that ran, and the missing names by the tests each hides. It is a
measurement: exit status 0 unless the runner itself breaks (2).

The harness gets, beyond renames (and tests see): gevent._compat, _util and
_config (its pure-Python helpers, copied); gevent.events.subscribers (a list
nobody notifies); gevent._hub_local.get_hub_if_exists (coopsock's hub) and
get_hub_class (a holder of the SYSTEM_ERROR it sets: coopsock's hub has none,
so an error in a greenlet is printed, where gevent's harness fails the test).
While it imports only, gevent.hub.set_default_hub_class (a no-op),
gevent.core.loop and .callback (the backend's loop class, the hub's callback
class) and gevent.monkey.get_original (the stdlib's object); QuietHub's
ignoring_expected_test_error, on coopsock's Hub. Its copy calls no
``hub.loop.update_now()`` (libev's). An observer on coopsock's
Hub.handle_error notes what greenlets die of, then lets coopsock handle it.
"""

import argparse
import collections
import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

FILES = [f"test__{name}.py" for name in [
    # greenlets and the gevent module's functions
    "greenlet", "greenletset", "joinall", "sleep0", "iwait", "order", "exc_info", "api", "api_timeout",
    "systemerror", "GreenletExit", "issue330", "issue467", "issue607", "issue639", "signal",
    # Timeout; the hub
    "timeout", "hub", "hub_join", "hub_join_timeout", "destroy", "loop_callback",
    # events, queues, locks, pools, greenlet-locals; threads and processes
    "event", "queue", "pool", "semaphore", "lock", "local", "threadpool", "subprocess",
    # sockets and TLS; lookups
    "socket", "socket_close", "socket_errors", "socket_ex", "socket_send_memoryview", "socket_timeout",
    "socketpair", "socket_ssl", "greenio", "makefile_ref", "refcount", "refcount_core", "ssl", "socket_dns",
    "socket_dns6",
    # select, selectors; servers
    "select", "selectors", "server", "server_pywsgi", "pywsgi", "greenness"]]
# The other test__*.py files, left out:
# - gevent's loop and watcher API, its configuration: test__core*, test__close_backend_fd,
#   test__destroy_default_loop, test__nondefaultloop, test__environ, test___config
# - gevent.monkey's API and patch-time behaviour (coopsock.patch is another API): test__monkey*,
#   test___monkey_patching, test__threading*, test__thread, test__issue6, test__issue112, test__issue230,
#   test__issue600, test__issue_728, test__issue2013, test__import_*, test__threadpool_executor_patched
# - modules coopsock has no counterpart of: test__os, test__fileobject, test__contextvars, test__events,
#   test___monitor, test___ident, test__util, test__backdoor, test__ares_*, test__resolver_dnspython,
#   test__subprocess_poll, test__subprocess_interrupted (gevent.subprocess scripts), test__issue1686,
#   test__issues461_471
# - gevent's sources: test__example* (examples/ is not installed), test__doctests, test__all__,
#   test__execmodules, test__compat
# - no subject of coopsock's: test__real_greenlet (greenlet's), test__issue1864 (float flags),
#   test__memleak (debug builds), test__getaddrinfo_import (resolves gevent.org: the network)
NOT_RUN = {"test_refuses_from_port": "binds ('', port), not loopback"}  # {test method: why}
# {test method: the gevent name it needs}: not applicable, known without running it, because here
# it would hang: it reads the name before it kills its never-ending child, and the AttributeError
# then leaves Popen.__exit__ waiting for that child (coopsock's communicate() spawns no greenlets).
NOT_APPLICABLE = {"test_exit_stops_communicating_greenlets_before_closing": "Popen._communicating_greenlets"}

# {gevent module: "name[=coopsock name] ..."}: coopsock's names under gevent's
SHIM = {
    "gevent": "Greenlet GreenletExit Timeout get_hub getcurrent iwait joinall kill killall signal_handler sleep "
              "spawn spawn_later spawn_raw idle wait with_timeout",
    "gevent.greenlet": "Greenlet joinall killall",
    "gevent.hub": "Hub get_hub getcurrent GreenletExit LoopExit sleep kill iwait wait spawn_raw idle "
                  "signal=signal_handler",
    "gevent.util": "wrap_errors",
    "gevent.timeout": "Timeout with_timeout",
    "gevent.exceptions": "LoopExit BlockingSwitchOutError ConcurrentObjectUseError",
    "gevent.event": "Event AsyncResult",
    "gevent.queue": "Queue JoinableQueue=Queue SimpleQueue LifoQueue PriorityQueue Channel ShutDown",  # join too
    "gevent.lock": "Semaphore BoundedSemaphore RLock",
    "gevent.pool": "Group Pool PoolFull",
    "gevent.local": "local",
    "gevent.threadpool": "ThreadPool",
    "gevent.subprocess": " ".join(f"{name}=subprocess.{name}" for name in
                                  ("Popen", "call", "check_call", "check_output", "run", "getoutput", "getstatusoutput")),
    "gevent.socket": "socket socketpair fromfd create_connection create_server getaddrinfo gethostbyname "
                     "gethostbyname_ex gethostbyaddr getnameinfo getfqdn wait_read wait_write wait_readwrite SocketType",
    "gevent.ssl": "SSLContext SSLSocket create_default_context",
    "gevent.select": "select poll",
    "gevent.selectors": "DefaultSelector",
    "gevent.server": "StreamServer DatagramServer",
    "gevent.pywsgi": "WSGIServer",
    "gevent.monkey": "patch_all=patch is_module_patched is_anything_patched",  # patch_all() is coopsock.patch()
    "gevent.core": "", "gevent.events": "", "gevent._hub_local": "",  # the harness's: HARNESS
}
STDLIB = {"gevent.queue": "queue", "gevent.subprocess": "subprocess", "gevent.socket": "socket",
          "gevent.ssl": "ssl", "gevent.select": "select", "gevent.selectors": "selectors"}
HARNESS = {"gevent.events": "subscribers", "gevent._hub_local": "get_hub_class get_hub_if_exists"}  # below


# ---------------------------------------------------------------------------
# What the shim's modules import from this file, and the shim itself


class NotApplicable(AttributeError):
    """A gevent name that coopsock has no counterpart of: the test that needs it does not apply."""

    def __init__(self, gevent_name):
        super().__init__(f"coopsock has no counterpart of {gevent_name} (NotApplicable)")
        self.gevent_name = gevent_name


def missing(module, package=None):
    """Return the module __getattr__ of a shim module: NotApplicable for any name (a package's submodules load)."""
    def __getattr__(name):
        if name.startswith("__") and name not in ("__implements__", "__extensions__", "__imports__", "__target__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")  # what Python itself looks up
        if package and os.path.exists(os.path.join(package, name + ".py")):  # as `import gevent` loads several
            return importlib.import_module(f"{module}.{name}")
        raise NotApplicable(f"{module}.{name}")
    return __getattr__


subscribers: list = []  # gevent.events.subscribers: the harness saves and restores it around each test


class _HubClass:  # errorhandler sets SYSTEM_ERROR on it around each test
    SYSTEM_ERROR = ()


def get_hub_class():
    return _HubClass


def get_hub_if_exists():
    return getattr(sys.modules["coopsock"]._local, "hub", None)


def _write_shim(where):
    """Write the shim package `gevent` in `where`, with gevent's tests and harness copied in."""
    import gevent

    import coopsock
    real, package = os.path.dirname(gevent.__file__), os.path.join(where, "gevent")
    for tree in ("tests", "testing"):
        shutil.copytree(os.path.join(real, tree), os.path.join(package, tree), ignore=shutil.ignore_patterns("*.pyc"))
    for helper in ("_compat.py", "_util.py", "_config.py"):
        shutil.copy(os.path.join(real, helper), package)
    for path in ("testcase.py", "timing.py"):  # libev's clock refresh, before each test and each timed wait
        with open(os.path.join(package, "testing", path)) as f:
            source, edits = re.subn(r"^( *)\S+\.loop\.update_now\(\)$", r"\1pass  # (run_gevent_tests.py)", f.read(),
                                    flags=re.MULTILINE)
        if edits != 1:
            raise SystemExit(f"gevent.testing's {path}: expected one loop.update_now() line, found {edits}")
        with open(os.path.join(package, "testing", path), "w") as f:
            f.write(source)
    for module, spec in SHIM.items():
        theirs = importlib.import_module(module)
        lines = [f'"""{module} for coopsock: its names under gevent\'s, and no others (run_gevent_tests.py)."""',
                 "import coopsock as _c", "import run_gevent_tests as _runner"]
        if module in STDLIB:  # what gevent takes as is from the stdlib, so does coopsock
            std, nothing = importlib.import_module(STDLIB[module]), object()
            lines += [f"import {STDLIB[module]} as _std"] + [
                f"{n} = _std.{n}" for n in dir(theirs) if not n.startswith("__") and getattr(theirs, n) is getattr(std, n, nothing)]
        for item in spec.split():
            name, _, ours = item.partition("=")
            if not hasattr(theirs, name):
                raise SystemExit(f"SHIM names {module}.{name}, which gevent does not have")
            functools.reduce(getattr, (ours or name).split("."), coopsock)  # coopsock has it, or AttributeError
            lines.append(f"{name} = _c.{ours or name}")
        lines += [f"{name} = _runner.{name}" for name in HARNESS.get(module, "").split()]
        lines.append("__getattr__ = _runner.missing(__name__" + (", __path__[0])" if module == "gevent" else ")"))
        with open(os.path.join(package, "__init__.py" if module == "gevent" else module[7:] + ".py"), "w") as f:
            f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# The child: import one test file and run it, writing JSON lines


def _import_harness():
    """Import gevent.testing from the shim, lending it for the while the names it needs at import."""
    import gevent.core
    import gevent.hub
    import gevent.monkey

    import coopsock
    lent = {gevent.hub: {"set_default_hub_class": lambda cls: None},
            gevent.core: {"loop": coopsock._pyev.Loop, "callback": coopsock._Callback},
            gevent.monkey: {"get_original": lambda module, name: getattr(importlib.import_module(module), name)}}
    for module, names in lent.items():
        vars(module).update(names)
    try:
        for name in ("gevent.testing", "gevent.testing.util", "gevent.testing.timing", "gevent.testing.resources"):
            importlib.import_module(name)
    finally:
        for module, names in lent.items():
            for name in names:
                delattr(module, name)
    quiet = sys.modules["gevent.testing.hub"].QuietHub  # its context manager, on the hub coopsock makes
    for name in ("ignoring_expected_test_error", "IGNORE_EXPECTED_TEST_ERROR", "EXPECTED_TEST_ERROR"):
        setattr(coopsock.Hub, name, vars(quiet)[name])


def _observe_hub(reported):
    """Note each exception that reaches coopsock's Hub.handle_error in `reported`, then handle it as coopsock does."""
    import coopsock
    handle_error = coopsock.Hub.handle_error

    @functools.wraps(handle_error)
    def observed(hub, context, type, value, tb):
        reported.append(value)
        return handle_error(hub, context, type, value, tb)
    coopsock.Hub.handle_error = observed


_CANNOT_IMPORT = re.compile(r"cannot import name '(\w+)' from '(gevent(\.\w+)*)'")
_CANNOT_PATCH = re.compile(r"^<(?:module|class) '((?:gevent|coopsock)[\w.<>]*)'.*> does not have the attribute '(\w+)'$")


def _owner(obj):
    """Return the name of the coopsock (or pyev) class or module that `obj` is or belongs to, or None."""
    if type(obj).__name__ == "module":
        return obj.__name__ if obj.__name__.split(".")[0] in ("coopsock", "pyev") else None
    if isinstance(obj, sys.modules["coopsock"]._pyev.Loop):  # _EvLoop, _SelLoop or pyev's
        return "Hub.loop"
    return next((c.__qualname__.rpartition("<locals>.")[2] for c in (obj if isinstance(obj, type) else type(obj)).__mro__
                 if c.__module__ in ("coopsock", "pyev")), None)


def _missing_name(exc):
    """Return the gevent name that `exc`, or an exception in its chain, shows coopsock to lack; or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _CANNOT_IMPORT.search(str(exc)) if isinstance(exc, ImportError) else None
        patch = _CANNOT_PATCH.search(str(exc)) if isinstance(exc, AttributeError) else None
        if hasattr(exc, "gevent_name"):
            return exc.gevent_name
        if found and not found[2].startswith(("gevent.testing", "gevent.tests")):
            return f"{found[2]}.{found[1]}"
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("gevent."):
            return exc.name
        if patch:
            return f"{patch[1] if patch[1].startswith('gevent') else patch[1].rpartition('.')[2]}.{patch[2]}"
        if isinstance(exc, AttributeError) and getattr(exc, "obj", None) is not None and "coopsock" in sys.modules:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            owner = _owner(exc.obj)  # asked for by the test, not by coopsock's own code
            if owner and (tb is None or tb.tb_frame.f_code.co_filename != sys.modules["coopsock"].__file__):
                return f"{owner}.{exc.name}"
        exc = exc.__cause__ or exc.__context__
    return None


class _Recorder(unittest.TestResult):
    """Write one JSON line per finished test (and one as each starts) so a kill loses nothing."""

    def __init__(self, emit, reported):
        super().__init__()
        self.emit, self.reported = emit, reported

    def _outcome(self, test, outcome, err=None, reason=None):
        record = {"id": test.id(), "outcome": outcome}
        if reason is not None:
            record["error"] = str(reason)
        if err is not None:
            record["error"] = "".join(traceback.format_exception(*err))
            # in the test's exception, or in one a greenlet died of during the test
            missing = next(filter(None, map(_missing_name, [err[1], *self.reported])), None)
            if missing:
                record.update(missing=missing, outcome="n/a")
        self.emit(**record)

    def startTest(self, test):
        super().startTest(test)
        self.reported.clear()
        self.emit(start=test.id())

    def addSuccess(self, test):
        self._outcome(test, "passed")

    def addFailure(self, test, err):
        self._outcome(test, "failed", err)

    def addError(self, test, err):  # (the files have no class or module fixtures, no subtests)
        self._outcome(test, "error", err)

    def addSkip(self, test, reason):
        self._outcome(test, "skipped", reason=reason)


def _flatten(suite):
    for test in suite:
        yield from (_flatten(test) if isinstance(test, unittest.TestSuite) else [test])


def child(args):
    """Import one test file (from the shim, or gevent's with --gevent) and run it."""
    import faulthandler
    reported = []
    with open(args.out, "w") as out:
        def emit(**record):
            out.write(json.dumps(record) + "\n")
            out.flush()
        if not args.gevent:
            _import_harness()
            _observe_hub(reported)
        import gevent
        emit(python=sys.version.split()[0],
             backend=f"gevent {gevent.__version__}" if args.gevent else sys.modules["coopsock"].BACKEND)
        faulthandler.dump_traceback_later(max(1, args.timeout - 5), exit=False)  # where a hang hangs
        name = "gevent.tests." + args.child[:-3]
        try:
            module = importlib.import_module(name)
        except BaseException as exc:  # a file may sys.exit() at import
            emit(import_error=traceback.format_exc(), missing=_missing_name(exc))
            return 0
        tests = list(_flatten(unittest.TestLoader().loadTestsFromModule(module)))
        emit(tests=[test.id() for test in tests] or [name])
        if not tests:  # a file without TestCases is a script: its import was the test
            emit(id=name, outcome="passed")
        for test in tests:
            method = test.id().rpartition(".")[2]
            if method in NOT_RUN:
                emit(id=test.id(), outcome="skipped", error=f"not run: {NOT_RUN[method]}")
            elif method in NOT_APPLICABLE and not args.gevent:
                emit(id=test.id(), outcome="n/a", missing=NOT_APPLICABLE[method], error="not run: it would hang")
        left_out = set(NOT_RUN) | (set() if args.gevent else set(NOT_APPLICABLE))
        unittest.TestSuite([t for t in tests if t.id().rpartition(".")[2] not in left_out]).run(_Recorder(emit, reported))
        emit(done=True)
    return 0


# ---------------------------------------------------------------------------
# The parent: one subprocess per file, one at a time


def _spawn(args, file, shim, log_path):
    """Run this file as a child for `file`; return (records, status text, output tail)."""
    fd, out_path = tempfile.mkstemp(prefix="coopsock-gevent-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("GEVENTTEST_USE_RESOURCES", "-network")  # no test that needs the Internet
    if shim:  # (the tests' own subprocesses get the shim too)
        env["PYTHONPATH"] = os.pathsep.join([shim, HERE, REPO, *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.loop:
        env["COOPSOCK_LOOP"] = args.loop
    command = [sys.executable, os.path.abspath(__file__), "--child", file, "--out", out_path,
               "--timeout", str(args.timeout), *["--gevent"] * (not shim)]
    with open(log_path, "w+b") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=tempfile.gettempdir(), start_new_session=True)
        try:
            proc.wait(args.timeout)
            status = "" if proc.returncode == 0 else f"crashed (exit status {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # with what it started
            proc.wait()
            status = f"timeout after {args.timeout:g} s"
        log.seek(0)
        tail = log.read().decode(errors="replace")[-6000:]
    with open(out_path) as out:
        records = [json.loads(line) for line in out if line.endswith("\n")]
    os.unlink(out_path)
    return records, status, tail


def _run_file(args, file, shim, log_dir):
    """Run one test file; return its summary: header, counts, outcomes, status."""
    records, status, tail = _spawn(args, file, shim, os.path.join(log_dir, file + ".log"))
    header = next((r for r in records if "backend" in r), {})
    ids = next((r["tests"] for r in records if "tests" in r), None)
    broken = next((r for r in records if "import_error" in r), None)
    outcomes, running = {}, None
    if broken is not None or ids is None:  # gevent's own run says which tests the file has, which it skips here
        theirs, _, _ = _spawn(args, file, None, os.path.join(log_dir, file + ".gevent.log"))
        ids = next((r["tests"] for r in theirs if "tests" in r), [file])
        error = broken["import_error"] if broken else f"the file {status or 'crashed'} before its tests:\n{tail}"
        missing = broken and broken["missing"]
        outcomes = {r["id"]: r for r in theirs if r.get("outcome") == "skipped"}
        outcomes.update((i, {"id": i, "outcome": "n/a" if missing else "error", "missing": missing, "error": error})
                        for i in ids if i not in outcomes)
        status = status if broken is None else "" if missing else "import failed"
    for record in records:
        running = record.get("start", running)
        if "outcome" in record:
            outcomes.setdefault(record["id"], record)
    for test_id in ids:
        if test_id not in outcomes:
            why = "running when the file" if test_id == running else "not run: the file"
            outcomes[test_id] = {"id": test_id, "outcome": "failed",
                                 "error": f"{why} ended: {status or 'crashed (no result)'}"}
    counts = collections.Counter(dict.fromkeys(("passed", "failed", "error", "n/a", "skipped"), 0))
    counts.update(record["outcome"] for record in outcomes.values())
    counts["failed"] += counts.pop("error")
    return {"file": file, "header": header, "counts": counts, "status": status, "tail": tail if status else "",
            "tests": list(outcomes.values())}


def parent(args):
    """Write the shim (unless --gevent), run each file in a child, print the counts; return the exit status."""
    files = [f for f in FILES if args.k is None or any(k in f for k in args.k)]
    tests = os.path.join(os.path.dirname(importlib.import_module("gevent").__file__), "tests")
    absent = [f for f in files if not os.path.exists(os.path.join(tests, f))]
    if absent:
        print(f"not in this gevent: {', '.join(absent)}", file=sys.stderr)
        return 2
    log_dir = tempfile.mkdtemp(prefix="coopsock-gevent-logs-")
    shim = None if args.gevent else tempfile.mkdtemp(prefix="coopsock-gevent-shim-")
    results = []
    try:
        if shim:
            sys.path.insert(0, REPO)
            _write_shim(shim)
        for number, file in enumerate(files, 1):
            results.append(_run_file(args, file, shim, log_dir))
            c, status = results[-1]["counts"], results[-1]["status"]
            print(f"  [{number}/{len(files)}] {file}: {c['passed']} passed, {c['failed']} failed, {c['n/a']} n/a, "
                  f"{c['skipped']} skipped {status}", file=sys.stderr, flush=True)
    finally:
        if shim:
            shutil.rmtree(shim, ignore_errors=True)
    header = next((r["header"] for r in results if r["header"]), None)
    if header is None:
        print(f"no child got as far as its header; logs in {log_dir}", file=sys.stderr)
        return 2
    against = header["backend"] + " (the baseline)" if args.gevent else f"coopsock, backend {header['backend']}"
    print(f"Python {header['python']}, {against}: gevent's tests, {len(files)} files")
    total, width = collections.Counter(), max(len(f) for f in files)
    print(f"{'file':<{width}}  passed failed    n/a skipped")
    for result in results + [{"file": "total", "counts": total, "status": ""}]:
        c = result["counts"]
        if result["file"] != "total":
            total.update(c)
        note = "  " + result["status"] if result["status"] else ""
        print(f"{result['file']:<{width}}  {c['passed']:>6} {c['failed']:>6} {c['n/a']:>6} {c['skipped']:>7}{note}")
    for label, of in (("applicable", total["passed"] + total["failed"]),
                      ("all run", total["passed"] + total["failed"] + total["n/a"])):
        print(f"{label}: {total['passed']} of {of} pass ({100.0 * total['passed'] / of if of else 0.0:.1f}%)")
    hidden = collections.Counter(t["missing"] for r in results for t in r["tests"] if t["outcome"] == "n/a")
    if hidden:
        print("missing names, by the tests each hides:")
        for name, count in hidden.most_common():
            print(f"  {count:>4}  {name}")
    if any(result["status"] for result in results):
        print(f"logs in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    if args.failures:
        for result in results:
            for record in result["tests"]:
                if record["outcome"] in ("failed", "error"):
                    tail = (record.get("error") or "").strip().splitlines()[-8:]
                    print(f"{record['outcome'].upper()}: {record['id']}\n" + "\n".join("    " + t for t in tail))
            if result["status"]:
                print(f"--- {result['file']} {result['status']}; the end of its output:\n{result['tail'][-3000:]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"header": header, "gevent": args.gevent, "loop": args.loop, "total": total,
                       "missing": dict(hidden.most_common()), "files": results}, out, indent=1)
    return 0


def main(argv=None):
    """Parse the command line; run as the parent, or as a child when told to."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("libev", "selectors", "pyev"),
                        help="the coopsock backend for the children (sets COOPSOCK_LOOP)")
    parser.add_argument("--gevent", action="store_true",
                        help="run the files against the real gevent, no shim: the baseline")
    parser.add_argument("-k", action="append", metavar="SUBSTRING",
                        help="run only the files whose name contains SUBSTRING (repeatable)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a file may run before it is killed (default 300)")
    parser.add_argument("--failures", action="store_true",
                        help="print each failing test id with the tail of its traceback")
    parser.add_argument("--json", metavar="FILE", help="write every outcome and traceback to FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
