# coopsock: cooperative greenlet sockets over libev, in one file.
#
# Copyright (c) 2026 the coopsock authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in
# all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""Write blocking-style socket code; run thousands of connections in one thread.

coopsock is a miniature gevent in one file: copy it into your project, keep
the licence header, ``pip install greenlet``, and you are done. Example::

    from coopsock import StreamServer, Timeout, create_connection

    def echo(conn, address):  # one greenlet per connection
        while data := conn.recv(65536):
            conn.sendall(data)

    server = StreamServer(("127.0.0.1", 0), echo)
    server.start()
    with create_connection(server.address) as client, Timeout(5):
        client.sendall(b"hello")
        print(client.recv(100))  # b'hello'
    server.stop()

The file, top to bottom (``grep -A1 '^# ----' coopsock.py`` lists the
sections): imports, exceptions, argument checks, the loop layer (real pyev, or
libev through ctypes, or a pure-Python loop on epoll or poll), the hub,
Timeout, greenlets, coordination (Event, Queue, locks, Pool), threads (locks
that park greenlets and block threads, ThreadPool), the cooperative socket,
the module-level helpers (create_connection, getaddrinfo, wait_read...), the
servers (StreamServer, DatagramServer, WSGIServer, signal_handler), TLS,
select, subprocess, patch(), the gunicorn worker, the demo (``python -m
coopsock``).

The invariants a reader must hold:

* One hub per thread (``get_hub()``): a greenlet that runs the event loop.
  It is created on first use, never at import.
* A blocking call (``sock.recv``, ``sleep``, ``Greenlet.join``...) tries the
  operation, and if it would block, parks the calling greenlet in the hub until
  its fd is ready. ``Hub.park(request)`` is the one primitive that parks a
  greenlet: one switch carrying the request, which only the hub records and
  clears, so a signal handler's exception in a greenlet leaves the hub
  consistent; the hub keeps the table of the fds it waits on, and a socket
  tells it before its fd closes. Never block from inside the hub itself
  (``BlockingSwitchOutError``).
* The loop speaks pyev's API. The backend is chosen once at import: the real
  ``pyev`` module if it imports, else libev (``libev.so.4``) bound with ctypes,
  else a pure-Python loop on ``select.epoll`` or ``poll`` (backend "selectors").
  ``COOPSOCK_LOOP=pyev|libev|selectors``
  forces one; ``coopsock.BACKEND`` names the one in use.
"""

from __future__ import annotations as _annotations  # hints stay strings: typing is never imported

__version__ = "0.3.0"

__all__ = [
    # the hub and greenlets
    "get_hub", "Hub", "Greenlet", "GreenletExit", "spawn", "spawn_later", "spawn_raw",
    "sleep", "idle", "joinall", "kill", "killall", "getcurrent", "wrap_errors", "BACKEND",
    # timeouts
    "Timeout", "with_timeout",
    # coordination
    "Event", "AsyncResult", "wait", "iwait", "Queue", "SimpleQueue", "LifoQueue", "PriorityQueue", "Channel",
    "ShutDown", "Semaphore", "BoundedSemaphore", "Lock", "RLock", "Group", "Pool", "PoolFull",
    # serving
    "StreamServer", "DatagramServer", "WSGIServer", "GunicornWorker",  # noqa: F822 (GunicornWorker: __getattr__)
    "signal_handler",
    # threads and processes
    "ThreadPool", "local", "subprocess",  # noqa: F822 (subprocess: built on first use, __getattr__)
    # sockets
    "socket", "socketpair", "create_connection", "create_server", "fromfd",
    "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getfqdn", "Resolver",
    "wait_read", "wait_write", "wait_readwrite",
    # TLS and the stdlib patch
    "SSLContext", "SSLSocket", "create_default_context",  # noqa: F822 (built on first use: __getattr__)
    "select", "poll", "DefaultSelector",
    "patch", "unpatch", "is_module_patched", "is_anything_patched",
    # errors
    "LoopExit", "BlockingSwitchOutError", "ConcurrentObjectUseError",
    # the demo server
    "main",
    # and every other public name of the stdlib socket module: see the imports
]

# ---------------------------------------------------------------------------
# Imports

import sys as _sys

_PYPY = _sys.implementation.name == "pypy"  # whose stdlib takes some arguments CPython's rejects

if __name__ == "__main__":  # python -m coopsock: let `import coopsock` find this very module
    _sys.modules.setdefault("coopsock", _sys.modules[__name__])

import _socket
import errno as _errno
import os as _os
import reprlib as _reprlib
import select as _select
import selectors as _selectors
import socket as _stdsocket
import stat as _stat
import threading as _threading
import time as _time
import traceback as _traceback
import warnings as _warnings
from _thread import allocate_lock as _allocate_lock
from _thread import get_ident as _get_ident
from collections import deque as _deque
from heapq import heapify as _heapify
from heapq import heappop as _heappop
from heapq import heappush as _heappush
from itertools import count as _count
from operator import index as _index
from queue import Empty as _Empty
from queue import Full as _Full
from types import GenericAlias as _GenericAlias
from weakref import WeakSet as _WeakSet
from weakref import ref as _weakref

from greenlet import GreenletExit, getcurrent
from greenlet import greenlet as _greenlet

TYPE_CHECKING = False  # type checkers read the block as true; the module never imports typing
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, Literal, Protocol, TypeVar, Union

    _T = TypeVar("_T")
    _Greenlet = TypeVar("_Greenlet", bound="Greenlet")
    _Timeout = TypeVar("_Timeout", bound="Timeout")
    _AnyServer = TypeVar("_AnyServer", bound="_Server")

    class _Buffer(Protocol):  # bytes, bytearray, memoryview, array, mmap...
        def __buffer__(self, flags: int, /) -> memoryview: ...

    class _HasFileno(Protocol):
        def fileno(self) -> int: ...

    _FileDescriptorLike = Union[int, _HasFileno]

    class _Linkable(Protocol):  # a Greenlet, an Event, an AsyncResult
        def rawlink(self, callback: Callable[[Any], object], /) -> None: ...
        def unlink(self, callback: Callable[[Any], object], /) -> None: ...

    _Waitable = TypeVar("_Waitable", bound=_Linkable)
del TYPE_CHECKING

# `import coopsock as socket` is the stdlib module, cooperative: every public
# name of the running Python's socket module, the very same objects except
# those that would block, which coopsock defines below. The stdlib functions
# coopsock calls are the originals, taken now: once patch() puts coopsock's
# into the socket module, calling them through it would recurse.
_COOPERATIVE = ("socket", "socketpair", "fromfd", "create_server", "create_connection", "getaddrinfo",
                "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getfqdn")
_STDLIB_NAMES = [name for name in dict.fromkeys(
    [*_stdsocket.__all__, "AddressFamily", "SocketKind", "MsgFlag", "AddressInfo", "SocketType", "timeout"])
    if hasattr(_stdsocket, name) and name not in _COOPERATIVE]
globals().update((name, getattr(_stdsocket, name)) for name in _STDLIB_NAMES)
__all__.extend(_STDLIB_NAMES)
error, timeout, gaierror, herror = OSError, _stdsocket.timeout, _stdsocket.gaierror, _stdsocket.herror
_std_create_server, _std_getaddrinfo = _stdsocket.create_server, _stdsocket.getaddrinfo
_DEFAULT_TIMEOUT: Any = _stdsocket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]  # private: not in typeshed
_timed_out = _stdsocket.timeout  # TimeoutError on 3.10+; on 3.9 an OSError of its own
_monotonic = _time.monotonic
_MSG_DONTWAIT = getattr(_socket, "MSG_DONTWAIT", 0) | getattr(_socket, "MSG_ERRQUEUE", 0)  # flags that never wait


# ---------------------------------------------------------------------------
# Exceptions


class LoopExit(Exception):
    """Raised in the main greenlet when it waits and nothing can ever wake it."""


class BlockingSwitchOutError(AssertionError):
    """Raised when a blocking function is called from inside the hub itself."""


class ConcurrentObjectUseError(AssertionError):
    """Raised when a second greenlet waits for the same event on the same object."""


def _raisable(exc):
    """exc if it is an exception or an exception class, else the TypeError raising it would give (greenlet's words)."""
    if isinstance(exc, BaseException) or isinstance(exc, type) and issubclass(exc, BaseException):
        return exc
    return TypeError(f"exceptions must be classes, or instances, not {type(exc).__name__}")


class PoolFull(_Full):
    """Raised by Pool.add(g, blocking=False) on a full pool, or past its timeout (gevent's)."""


try:
    from queue import ShutDown  # type: ignore[attr-defined,unused-ignore]  # (3.13+)
except ImportError:  # before 3.13
    class ShutDown(Exception):  # type: ignore[no-redef]
        """Raised by put() on a queue shut down, and by get() once it is empty too (3.13's queue.ShutDown)."""


# ---------------------------------------------------------------------------
# Argument checks
#
# Each raises what the stdlib raises for the same argument, asking the stdlib
# object itself where a probe costs nothing (a free threading.Lock), else
# following its rule; an interpreter's variant is chosen where it differs.

def _seconds_int(value):
    """An int of a seconds argument that is not a float, as time.sleep() and select() take it."""
    try:
        return _index(value)
    except TypeError:
        if _sys.version_info >= (3, 10) or not hasattr(type(value), "__int__"):
            raise
    result = int(value)  # 3.9 still takes __int__ (a Decimal), deprecated; PyPy 3.9's without a word
    if _PYPY:
        return result
    import warnings
    warnings.warn(f"an integer is required (got type {type(value).__name__}).  Implicit conversion to integers "
                  "using __int__ is deprecated, and may be removed in a future version of Python.",
                  DeprecationWarning, stacklevel=3)
    return result


def _seconds(seconds):
    """Return seconds as a number >= 0; TypeError and ValueError as socket.settimeout() has them."""
    if type(seconds) in (int, float) and seconds >= 0:  # the common case (NaN fails >=)
        return seconds
    if not isinstance(seconds, float):
        seconds = _seconds_int(seconds)
    elif seconds != seconds:
        raise ValueError("Invalid value NaN (not a number)")
    return max(seconds, 0.0)


def _asked_timeout(method, value):
    """Return the timeout that a stdlib socket's method(value) sets, raising what it raises for value.

    Asked of a socket without an fd: it checks value and notes the timeout,
    then fails to set the fd's mode (EBADF), which is the caller's to keep.
    """
    unopened = _socket.socket.__new__(_socket.socket)
    try:
        method(unopened, value)
    except OSError:
        pass
    return _socket.socket.gettimeout(unopened)


def _lock_timeout(blocking, timeout):
    """Return threading.Lock.acquire's timeout as Semaphore.acquire takes it (None: no limit).

    Raises what threading's raises for the same arguments, by asking it: a
    fresh lock, free, so acquire() checks them and returns at once.
    """
    if blocking.__class__ is not bool or timeout.__class__ is not int or timeout != -1:  # else: the defaults
        _allocate_lock().acquire(blocking, timeout)
    return None if timeout == -1 else timeout


def _check_timeout(block, timeout):
    """queue.Queue's check; a Timeout (an exception: gevent's habit) passes, for the wait to start."""
    if block and timeout is not None and not isinstance(timeout, BaseException) and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _pypy_seconds(value):
    """A timeout as PyPy's select takes it: a float, or any type with __float__ (a Fraction too)."""
    if isinstance(value, float):
        return value
    if not hasattr(type(value), "__float__"):
        raise TypeError(f"must be real number, not {type(value).__name__}")  # PyPy's words
    return float(value)  # OverflowError for a huge int, as PyPy's


def _select_timeout(timeout, name="a float"):
    if isinstance(timeout, float) and timeout != timeout:
        raise ValueError("Invalid value NaN (not a number)")
    if timeout is None or isinstance(timeout, float):
        return timeout
    try:
        return _seconds_int(timeout)
    except TypeError:
        raise TypeError(f"timeout must be {name} or None") from None


def _check_callable(func, what="func"):
    """Raise TypeError at the call, not when the hub calls func later (gevent's habit too)."""
    if not callable(func):
        raise TypeError(f"{what} must be callable, not {type(func).__name__}")


# ---------------------------------------------------------------------------
# The loop layer: pyev, or a stand-in with the same names
#
# The contract. The hub uses these pyev names and nothing else, with pyev's
# semantics, so that a user's real pyev drops in; each stand-in implements
# exactly these:
#
#   Loop()                         a new loop of its own (the default loop reaps children)
#   loop.start(EVRUN_ONCE)         one pass: block until a watcher fires, call its callback
#   loop.start(EVRUN_NOWAIT)       one pass without blocking
#   loop.update()                  refresh the cached time that timers count from
#   loop.reset()                   in a forked child, before the loop is used again
#   Io(fd, EV_READ or EV_WRITE, loop, callback)       fd: an int the hub has checked
#   Timer(after, 0.0, loop, callback), timer.set(after, 0.0)   one-shot; set while stopped
#   Async(loop, callback), async.send()               send() from any thread wakes the loop
#   w.start(), w.stop()            both idempotent; w.active; w.data (the hub's)
#   callback(watcher, revents)     the hub's is the C builtin dict.__setitem__, see the hub
#   Error                          the backend's exception
#
# What real pyev does that the hub must allow for: it has no Loop.close (a
# loop's fds go when it is collected); it frees an active watcher without
# stopping it (libev then walks freed memory); it checks nothing (a closed fd
# or an epoll fd makes libev abort, a failed system call is a fatal error).
# So the hub checks every fd, keeps each started watcher referenced until it
# is stopped, stops it before its fd closes, and never lets libev run out of
# fds. A stand-in may add a private _close() that frees the loop's fds at once.

_EV_READ, _EV_WRITE, _EV__IOFDSET, _EV_TIMER, _EV_ASYNC = 0x01, 0x02, 0x80, 0x100, 0x80000
_EVRUN_NOWAIT, _EVRUN_ONCE = 1, 2


class _Namespace:
    """A stand-in for the pyev module: the contract's names, as attributes."""

    def __init__(self, name, **names):
        self.__name__ = name
        self.__dict__.update(names, EV_READ=_EV_READ, EV_WRITE=_EV_WRITE, EV_TIMER=_EV_TIMER,
                             EV_ASYNC=_EV_ASYNC, EVRUN_NOWAIT=_EVRUN_NOWAIT, EVRUN_ONCE=_EVRUN_ONCE)


_LOOP_CLOSED = "this loop is closed (its hub was destroyed): use get_hub() for a new hub and loop"
_ASYNC_STOPPED = "this Async is stopped: start() it before send()"


def _check_set(watcher, error, fd=0, events=_EV_READ, after=0.0, repeat=0.0):
    """Check what a stand-in's set() gets as pyev would (libev itself would abort)."""
    if watcher.active:
        raise error("cannot set a watcher while it is active: stop it first")
    if _index(fd) < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    if events not in (_EV_READ, _EV_WRITE, _EV_READ | _EV_WRITE):
        raise error("illegal event mask: use EV_READ, EV_WRITE or both")
    if not (repeat == 0.0 and after >= 0.0):  # NaN fails too
        raise ValueError(f"the stand-ins' timers are one-shot: use after >= 0 and repeat 0.0, not ({after}, {repeat})")


def _check_fd(fd):
    """Return fd as an int if a loop may watch it; else raise as select() does."""
    if not isinstance(fd, int):
        if not hasattr(fd, "fileno"):
            raise TypeError(f"argument must be an int, or have a fileno() method, not {type(fd).__name__}")
        fd = fd.fileno()
    fd = _index(fd)
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    if not _stat.S_IFMT(_os.fstat(fd).st_mode) and _is_epoll(fd):  # fstat: OSError(EBADF) if not open
        raise OSError(_errno.EINVAL, f"cannot wait on fd {fd}: it is an epoll instance, which no loop can watch")
    return fd


def _is_epoll(fd):
    try:
        return "eventpoll" in _os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False


def _nonblocking_pipe():
    pipe = _os.pipe()
    for fd in pipe:
        _os.set_blocking(fd, False)
    return pipe


def _drain(fd):
    try:
        while _os.read(fd, 4096):
            pass
    except OSError:
        pass


# ---------------------------------------------------------------------------
# libev through ctypes
#
# libev's watchers are C structs the caller owns, and libev keeps pointers to
# them while they are active: each stays in its loop's _active dict from just
# before it starts until just after it stops. libev calls back through a
# ctypes thunk made of a C builtin, the bound list.insert of the loop's
# _fired list, so that no Python code, and so no Python signal handler, runs
# inside ev_run: a callback cannot lose an exception there. The thunk is
# declared with libev's first two arguments, (loop, watcher), and ignores the
# third (revents), which every C calling convention allows: insert(loop
# address, watcher address) appends the watcher, the index being past the
# end. start() then calls each fired watcher's callback in Python. (On PyPy
# the thunk is cffi's, not ctypes': see _ev_recorder.)
#
# libev's allocator is process-wide, and importing pyev makes it
# PyMem_Realloc, which needs the GIL. So libev runs with the GIL held, as
# under pyev (a PyDLL), and lets go of it only while it polls: the loop's
# release and acquire hooks are PyEval_SaveThread and PyGILState_Ensure,
# which take no argument and so ignore the loop pointer; start() gives each
# Ensure its Release. (PyPy has neither pyev nor pythonapi: a plain CDLL.)

import ctypes as _ct

_ev_lib = None      # the PyDLL, once loaded
_ev_gil_hooks = ()  # (release hook, acquire hook) addresses, and PyGILState_Release
_ev_errors: dict[int, str] = {}  # {thread id: message} from libev's syserr callback


class _ev_watcher(_ct.Structure):  # libev 4's EV_WATCHER with priorities and "void *data"
    _fields_ = [("active", _ct.c_int), ("pending", _ct.c_int), ("priority", _ct.c_int),
                ("data", _ct.c_void_p), ("cb", _ct.c_void_p)]


class _ev_io(_ev_watcher):
    _fields_ = [("next", _ct.c_void_p), ("fd", _ct.c_int), ("events", _ct.c_int)]


class _ev_timer(_ev_watcher):
    _fields_ = [("at", _ct.c_double), ("repeat", _ct.c_double)]


class _ev_async(_ev_watcher):
    _fields_ = [("sent", _ct.c_int)]


_EV_RECORD = _ct.CFUNCTYPE(None, _ct.c_ssize_t, _ct.c_void_p)


def _ev_recorder(fired):
    """Return (the thunk to keep alive, its address): a C callback doing fired.insert(loop, watcher)."""
    if _PYPY:
        # PyPy's ctypes thunks run a trampoline written in Python: a signal
        # handler can run in it, and PyPy prints and drops what it raises
        # there (a lost Ctrl-C). cffi's (built into PyPy) calls the builtin
        # straight from C, as CPython's ctypes does.
        import cffi
        ffi = cffi.FFI()
        thunk = ffi.callback("void(intptr_t, intptr_t)", fired.insert)
        return thunk, int(ffi.cast("intptr_t", thunk))
    thunk = _EV_RECORD(fired.insert)
    return thunk, _ct.cast(thunk, _ct.c_void_p).value


@_ct.CFUNCTYPE(None, _ct.c_char_p)
def _ev_syserr(message):
    # Without this hook libev aborts on a failed system call; start() raises it.
    _ev_errors[_threading.get_ident()] = message.decode(errors="replace")


_EV_SIGNATURES = {  # name: (restype, argtypes); "p" a pointer, "i" an int, "u" unsigned
    "ev_version_major": (_ct.c_int, ""), "ev_loop_new": (_ct.c_void_p, "u"),
    "ev_loop_destroy": (None, "p"), "ev_loop_fork": (None, "p"), "ev_run": (_ct.c_int, "pi"),
    "ev_now_update": (None, "p"), "ev_set_syserr_cb": (None, "p"), "ev_async_send": (None, "pp"),
    "ev_set_loop_release_cb": (None, "ppp"), "ev_iteration": (_ct.c_uint, "p"),
    **{f"ev_{kind}_{verb}": (None, "pp") for kind in ("io", "timer", "async") for verb in ("start", "stop")},
}


def _load_libev():
    """Bind the system libev with ctypes; return the stand-in pyev namespace."""
    global _ev_lib, _ev_gil_hooks
    if _ev_lib is None:
        # The usual sonames first; only then find_library(), which costs ~30 ms,
        # finds nothing on musl and imports subprocess (which patch() must
        # reach before anything binds its selector). The macOS paths are not
        # tested in CI.
        load = _ct.PyDLL if hasattr(_ct, "pythonapi") else _ct.CDLL
        lib = None
        for name in ("libev.so.4", "libev.4.dylib", "/opt/homebrew/lib/libev.4.dylib",
                     "/usr/local/lib/libev.4.dylib", None):
            if name is None:
                from ctypes.util import find_library
                name = find_library("ev")
            try:
                lib = load(name)
                break
            except (OSError, TypeError):
                continue
        if lib is None:
            raise ImportError("libev is not installed: install libev4 (Debian/Ubuntu) or libev (Homebrew)")
        kinds = {"p": _ct.c_void_p, "i": _ct.c_int, "u": _ct.c_uint}
        for fname, (restype, args) in _EV_SIGNATURES.items():
            func = getattr(lib, fname, None)
            if func is None:
                raise ImportError(f"{lib._name} lacks {fname}: it is not libev 4")
            func.restype, func.argtypes = restype, [kinds[a] for a in args]
        if lib.ev_version_major() != 4:
            raise ImportError(f"{lib._name} is libev {lib.ev_version_major()}, not libev 4")
        for cls, kind in ((_EvIo, "io"), (_EvTimer, "timer"), (_EvAsync, "async")):
            cls._start, cls._stop = getattr(lib, f"ev_{kind}_start"), getattr(lib, f"ev_{kind}_stop")
        lib.ev_set_syserr_cb(_ct.cast(_ev_syserr, _ct.c_void_p))
        if hasattr(_ct, "pythonapi"):
            api = _ct.pythonapi
            api.PyGILState_Release.argtypes, api.PyGILState_Release.restype = [_ct.c_int], None
            _ev_gil_hooks = (_ct.cast(api.PyEval_SaveThread, _ct.c_void_p),
                             _ct.cast(api.PyGILState_Ensure, _ct.c_void_p), api.PyGILState_Release)
        _ev_lib = lib
        _probe_libev()
    return _Namespace("libev", Loop=_EvLoop, Io=_EvIo, Timer=_EvTimer, Async=_EvAsync, Error=_EvError)


def _probe_libev():
    """Check the struct layout and the callback on a scratch loop, touching no fd."""
    loop, fired = _EvLoop(), []
    timer = _EvTimer(0.0, 0.0, loop, lambda watcher, revents: fired.append(watcher))
    timer.start()
    layout_ok = timer._struct.active > 0 and timer._struct.cb == loop._cb
    loop.start(_EVRUN_NOWAIT)
    loop._close()
    works = layout_ok and fired == [timer]
    fired.clear()  # (a cycle through the callback: the loop's __del__ would run at some later collection,
    # where a signal handler's exception is lost: a demo worker missed its Ctrl-C in CI)
    if not works:
        raise ImportError("libev's struct layout is not the one coopsock knows")


class _EvError(Exception):
    """pyev.Error: a libev call failed or a watcher was misused."""


def _ev_closed():
    raise _EvError(_LOOP_CLOSED)


class _EvLoop:
    """pyev.Loop on a loop of its own (ev_loop_new)."""

    _ptr = None  # until ev_loop_new's: __del__ runs on a loop whose __init__ a signal cut short

    def __init__(self):
        self._active = {}  # {struct address: watcher} for every watcher libev may point at
        self._ptr = _ev_lib.ev_loop_new(0)
        if not self._ptr:
            raise _EvError("ev_loop_new() failed: libev found no backend it can use; unset LIBEV_FLAGS, "
                           "or set COOPSOCK_LOOP=selectors")
        self._fired = []   # addresses of the watchers libev called back in this pass
        self._record, self._cb = _ev_recorder(self._fired)
        self._run, self._polls = _ev_lib.ev_run, 0
        if _ev_gil_hooks:
            _ev_lib.ev_set_loop_release_cb(self._ptr, *_ev_gil_hooks[:2])

    def start(self, flags=0):
        alive = self._run(self._ptr or _ev_closed(), flags)
        if _ev_gil_hooks:  # one PyGILState_Ensure per poll, each poll counted by ev_iteration
            polls, self._polls = self._polls, _ev_lib.ev_iteration(self._ptr)
            for _ in range(self._polls - polls & 0xFFFFFFFF):
                _ev_gil_hooks[2](0)  # PyGILState_LOCKED: only the thread's count goes down
        if _ev_errors:
            message = _ev_errors.pop(_threading.get_ident(), None)
            if message:
                raise _EvError(f"libev: {message}")
        fired = self._fired
        if fired:
            active = self._active  # it keeps what libev stopped itself (a fired timer) until stop()
            for address in fired:  # an interrupted pass leaves the rest for the next: a spurious wake-up
                watcher = active.get(address)
                if watcher is not None:
                    watcher.callback(watcher, watcher._revents)
            fired.clear()
        return bool(alive)

    def update(self):
        _ev_lib.ev_now_update(self._ptr or _ev_closed())

    def reset(self):
        _ev_lib.ev_loop_fork(self._ptr or _ev_closed())

    def _close(self):
        """Destroy the libev loop now, closing its fds; its watchers become inactive."""
        if self._ptr:
            for watcher in self._active.values():
                watcher._struct.active = watcher._struct.pending = 0
            self._active.clear()
            _ev_lib.ev_loop_destroy(self._ptr)
            self._ptr = None

    __del__ = _close


class _EvWatcher:
    """start, stop, active, data: what every watcher of the contract has."""

    __slots__ = ("_struct", "_address", "loop", "callback", "data", "_revents")
    _start = _stop = None  # the libev functions, set on each subclass

    def __init__(self, loop, callback):
        if not isinstance(loop, _EvLoop):
            raise TypeError(f"loop must be a Loop, not {type(loop).__name__}")
        self._struct = self._Struct(cb=loop._cb)
        self._address = _ct.addressof(self._struct)
        self.loop, self.callback, self.data = loop, callback, None

    def start(self):
        if not self._struct.active:
            loop = self.loop
            loop._active[self._address] = self  # first: libev holds the struct from the next call on
            self._start(loop._ptr or _ev_closed(), self._address)

    def stop(self):
        if self._struct.active:  # inactive on a closed loop
            self._stop(self.loop._ptr, self._address)
        self.loop._active.pop(self._address, None)

    active = property(lambda self: bool(self._struct.active))


class _EvIo(_EvWatcher):
    """pyev.Io: fires while fd is readable (EV_READ) or writable (EV_WRITE)."""

    __slots__ = ()
    _Struct = _ev_io

    def __init__(self, fd, events, loop, callback):
        super().__init__(loop, callback)
        self.set(fd, events)

    def set(self, fd, events):
        _check_set(self, _EvError, fd, events)
        self._struct.fd, self._struct.events, self._revents = fd, events | _EV__IOFDSET, events  # as ev_io_set


class _EvTimer(_EvWatcher):
    """pyev.Timer, one-shot: fires `after` seconds from the loop's cached time."""

    __slots__ = ()
    _Struct, _revents = _ev_timer, _EV_TIMER

    def __init__(self, after, repeat, loop, callback):
        super().__init__(loop, callback)
        self.set(after, repeat)

    def set(self, after, repeat):
        _check_set(self, _EvError, after=after, repeat=repeat)
        self._struct.at, self._struct.repeat = after, repeat  # as ev_timer_set does


class _EvAsync(_EvWatcher):
    """pyev.Async: send() from any thread wakes the loop and fires the callback."""

    __slots__ = ()
    _Struct, _revents = _ev_async, _EV_ASYNC

    def __init__(self, loop, callback):
        super().__init__(loop, callback)

    def send(self):
        if not self._struct.active:  # libev asserts: before the first start it has no wake-up fd
            raise _EvError(_LOOP_CLOSED if not self.loop._ptr else _ASYNC_STOPPED)
        _ev_lib.ev_async_send(self.loop._ptr, self._address)


# ---------------------------------------------------------------------------
# The pure-Python stand-in on epoll or poll ("selectors")
#
# For machines where libev will not load: the same semantics (level-triggered
# io, one-shot timers counted from the cached loop time, an Async that other
# threads wake through a pipe) on select.epoll, or select.poll where the OS
# has no epoll. The backend keeps the name of the stdlib module it once sat
# on: users write COOPSOCK_LOOP=selectors. What it gives up is kqueue: on
# macOS and the BSDs it uses poll(2), fine for sockets and pipes, not for ttys
# and devices. CI runs Linux only, and tests the poll flavour there
# (test_the_selectors_loop_on_poll): never on macOS.
#
# The kernel holds the only copy of what an fd is watched for: each change
# recomputes the fd's interest from its started Io watchers and hands it over
# whole (_apply), so applying it again is always right. A watcher is active
# exactly while the loop holds it, added after the kernel was told and
# removed before; a pass keeps what fired until it called them all. So a
# signal handler raising between any two bytecodes leaves at worst a
# spurious wake-up, never a lost one.



class _SelError(Exception):
    """pyev.Error for the pure-Python stand-in."""


def _sel_closed():
    raise _SelError(_LOOP_CLOSED)


class _SelLoop:
    """pyev.Loop in pure Python, on epoll or poll."""

    # The poller, its read and write bits, its timeout's units per second, and
    # what its unregister() raises for an fd it lacks (epoll: ENOENT, EBADF
    # once closed, EPERM if refused), taken now: patch() replaces select.poll.
    _Poller, _IN, _OUT, _PER_SECOND, _ABSENT = (
        (_select.epoll, _select.EPOLLIN, _select.EPOLLOUT, 1, OSError) if hasattr(_select, "epoll")
        else (_select.poll, _select.POLLIN, _select.POLLOUT, 1000, KeyError))
    _poller = None  # until _open()'s: __del__ runs on a loop whose __init__ a signal cut short

    def __init__(self):
        self._ios = {}      # {fd: {started io watcher: None}}
        self._timers = []   # a heap of (when, sequence, watcher), live while it is the watcher's _entry
        self._asyncs = {}   # {started async watcher: None}
        self._always_ready = set()  # fds epoll refuses (EPERM: regular files, some ttys); poll(2) says ready
        self._fired = []    # the watchers this pass calls back; one cut short leaves them to the next
        self._sequence, self._now = _count(), _monotonic()
        self._open()

    def _open(self):
        poller = self._Poller()  # closed when collected, should pipe() fail
        self._wake_r, self._wake_w = _nonblocking_pipe()
        poller.register(self._wake_r, self._IN)
        self._poller = poller

    def start(self, flags=0):
        poller = self._poller or _sel_closed()
        fired, timers, ios = self._fired, self._timers, self._ios
        timeout = -1  # for ever (PyPy's epoll takes no None)
        if flags & _EVRUN_NOWAIT or fired or self._always_ready or any(w._sent for w in self._asyncs):
            timeout = 0
        elif timers:  # at most a day: epoll_wait() and poll() take an int of ms, which overflows at 24.8 days
            timeout = min(max(0.0, timers[0][0] - _monotonic()), 86400.0) * self._PER_SECOND
        ready = poller.poll(timeout) + [(fd, self._IN | self._OUT) for fd in self._always_ready]
        self._now = now = _monotonic()
        for fd, event in ready:
            if fd == self._wake_r:
                _drain(fd)
                continue
            # As libev: any bit but OUT (IN, an error, a hang-up) is readable, any bit but IN writable.
            mask = (event & ~self._OUT and _EV_READ) | (event & ~self._IN and _EV_WRITE)
            woken = [w for w in ios.get(fd, ()) if w._revents & mask]
            if woken:
                fired += woken
            else:  # an interest that no started watcher has, left by a start or stop a signal cut short
                self._apply(fd)
        for watcher in self._asyncs:  # even if the pipe was drained by a pass a signal cut short
            if watcher._sent:
                fired.append(watcher)  # first: a signal here leaves a second call, not none
                watcher._sent = False
        while timers and timers[0][0] <= now:
            watcher = timers[0][2]
            if watcher._entry is timers[0]:  # else stopped since (or started again)
                fired.append(watcher)
                watcher._entry = None  # one-shot: it stops as it fires
            _heappop(timers)
        for watcher in fired:  # cut short, the next pass calls them all (again): spurious, never lost
            watcher.callback(watcher, watcher._revents)
        fired.clear()
        return True

    def _apply(self, fd, extra=0):
        """Hand the kernel the events that fd's started watchers want, and extra."""
        events = extra
        for watcher in self._ios.get(fd, ()):
            events |= watcher._revents
        if not events:
            self._always_ready.discard(fd)
            try:
                self._poller.unregister(fd)
            except self._ABSENT:
                pass
            return
        # epoll's set holds open files, not fd numbers, and a file leaves it
        # when its last fd closes: only the kernel knows if fd is in it. So
        # ask by doing, as trio does: MOD; on ENOENT (a new fd, or a number
        # closed and reused) ADD; on EEXIST then (a signal handler started a
        # watcher in between) MOD again. poll's modify() and register() act
        # alike, without EEXIST. Anything else (EBADF) is the caller's.
        interest = (events & _EV_READ and self._IN) | (events & _EV_WRITE and self._OUT)
        try:
            self._poller.modify(fd, interest)
        except FileNotFoundError:
            try:
                self._poller.register(fd, interest)
            except FileExistsError:
                self._poller.modify(fd, interest)
        except PermissionError:  # EPERM, even to MOD: epoll refuses files that are always ready, so they are
            self._always_ready.add(fd)
            return
        self._always_ready.discard(fd)

    def update(self):
        self._poller or _sel_closed()
        self._now = _monotonic()

    def reset(self):
        """In a forked child: a poller and wake-up pipe of its own, watching the same fds."""
        parents = self._poller or _sel_closed(), self._wake_r, self._wake_w
        self._open()
        self._close_fds(*parents)  # without unregistering: the parent's epoll set would lose them
        for fd in list(self._ios):
            try:
                self._apply(fd)
            except OSError:  # closed since: nothing to watch
                pass

    def _close(self):
        """Close the poller and the wake-up pipe now; every watcher becomes inactive."""
        poller = self._poller
        if poller is not None:
            self._poller = None  # first: a close a signal cut short leaks, and never closes twice
            for entry in self._timers:
                entry[2]._entry = None
            self._ios, self._asyncs, self._timers, self._always_ready = {}, {}, [], set()
            self._close_fds(poller, self._wake_r, self._wake_w)

    __del__ = _close

    @staticmethod
    def _close_fds(poller, wake_r, wake_w):
        if hasattr(poller, "close"):  # epoll's fd; a poll object holds none
            poller.close()
        _os.close(wake_r)
        _os.close(wake_w)


class _SelWatcher:
    __slots__ = ("loop", "callback", "data", "_revents")

    def __init__(self, loop, callback):
        if not isinstance(loop, _SelLoop):
            raise TypeError(f"loop must be a Loop, not {type(loop).__name__}")
        self.loop, self.callback, self.data = loop, callback, None

    def start(self):
        if not self.active:
            self.loop._poller or _sel_closed()
            self._add()

    def stop(self):
        if self.active:
            self._remove()


class _SelIo(_SelWatcher):
    __slots__ = ("_fd",)
    __doc__ = _EvIo.__doc__

    def __init__(self, fd, events, loop, callback):
        super().__init__(loop, callback)
        self._fd = None
        self.set(fd, events)

    def set(self, fd, events):
        _check_set(self, _SelError, fd, events)
        self._fd, self._revents = fd, events

    active = property(lambda self: self in self.loop._ios.get(self._fd, ()))

    def _add(self):
        self.loop._apply(self._fd, self._revents)  # OSError(EBADF) for a closed fd, as it should
        self.loop._ios.setdefault(self._fd, {})[self] = None

    def _remove(self):
        watchers = self.loop._ios[self._fd]
        del watchers[self]
        if not watchers:
            del self.loop._ios[self._fd]
        try:
            self.loop._apply(self._fd)
        except OSError:  # closed: out of the kernel's set already
            pass


class _SelTimer(_SelWatcher):
    __slots__ = ("_after", "_entry")
    __doc__ = _EvTimer.__doc__

    def __init__(self, after, repeat, loop, callback):
        super().__init__(loop, callback)
        self._revents, self._entry = _EV_TIMER, None
        self.set(after, repeat)

    def set(self, after, repeat):
        _check_set(self, _SelError, after=after, repeat=repeat)
        self._after = after

    active = property(lambda self: self._entry is not None)

    def _add(self):
        loop = self.loop
        entry = (loop._now + self._after, next(loop._sequence), self)
        _heappush(loop._timers, entry)
        self._entry = entry
        if len(loop._timers) > 1024:  # stopped timers' entries wait in the heap until due: drop them
            live = [e for e in loop._timers if e[2]._entry is e]
            _heapify(live)
            loop._timers = live

    def _remove(self): self._entry = None  # its heap entry is dead


class _SelAsync(_SelWatcher):
    __slots__ = ("_sent",)
    __doc__ = _EvAsync.__doc__

    def __init__(self, loop, callback):
        super().__init__(loop, callback)
        self._revents, self._sent = _EV_ASYNC, False

    active = property(lambda self: self in self.loop._asyncs)

    def _add(self): self.loop._asyncs[self] = None
    def _remove(self): del self.loop._asyncs[self]

    def send(self):
        if not self.active:
            raise _SelError(_LOOP_CLOSED if self.loop._poller is None else _ASYNC_STOPPED)
        self._sent = True  # first: the loop, woken, looks for it
        try:
            _os.write(self.loop._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending anyway


def _load_selectors():
    return _Namespace("selectors", Loop=_SelLoop, Io=_SelIo, Timer=_SelTimer, Async=_SelAsync, Error=_SelError)


# ---------------------------------------------------------------------------
# Choosing the backend

_local = _threading.local()  # this thread's hub (the hub's section below), which _use_backend ends


def _load_pyev():
    import pyev
    return pyev


_LOADERS = {"pyev": _load_pyev, "libev": _load_libev, "selectors": _load_selectors}


def _load_backend(forced):
    """Return (name, pyev-like namespace): the forced backend, or the first that works."""
    if forced and forced not in _LOADERS:
        raise ImportError(f"COOPSOCK_LOOP={forced!r} names no loop backend: "
                          f"use pyev, libev or selectors, or unset COOPSOCK_LOOP")
    for name in [forced] if forced else _LOADERS:
        try:
            return name, _LOADERS[name]()
        except ImportError as exc:
            if forced:
                fix = {"pyev": "build and install pyev", "libev": "install libev4 (apt) or libev (brew)"}
                raise ImportError(f"COOPSOCK_LOOP={forced} cannot be used ({exc}): "
                                  f"{fix.get(forced, 'report a bug')}, or unset COOPSOCK_LOOP") from exc
            if name == "libev" and _ev_lib is None and "not installed" not in str(exc):
                import warnings
                warnings.warn(f"coopsock: not using libev ({exc}); falling back to selectors", RuntimeWarning)
    raise AssertionError("unreachable: the selectors backend always loads")


BACKEND, _pyev = _load_backend(_os.environ.get("COOPSOCK_LOOP", "").strip())


def _use_backend(name):
    """Switch this process to another backend (for tests and --loop); ends this thread's hub."""
    global BACKEND, _pyev
    BACKEND, _pyev = _load_backend(name)
    hub = getattr(_local, "hub", None)
    if hub is not None:
        hub.destroy()


# ---------------------------------------------------------------------------
# The hub
#
# What the hub keeps true, and how:
# 1. Only the hub greenlet changes what a wait, a sleep or a pass changes: the
#    table of fds ({fd: _Fd}), the parked greenlets ({greenlet: request}),
#    their deadlines and the callbacks. A greenlet parks with one switch that
#    carries its request (Hub.park); the hub records it as the switch
#    arrives, and whoever wakes a parked greenlet (its fd, its deadline, a
#    call, a kill, Ctrl-C) is the hub, which clears the record first and
#    wakes it only if the record was there. An exception a signal handler
#    raises in a greenlet so finds either nothing recorded (before its
#    switch) or nothing left (after it): no cleanup needs to be interrupt-safe.
#    The one step a greenlet takes itself is _notify_closing, which must come
#    before its fd closes; it is idempotent, and the fd stays open if it is cut
#    short. A greenlet's timers (Timeout, run_later) are one heap push each.
# 2. Watcher callbacks run inside the loop (inside C), where switching is
#    slow and an exception cannot propagate. So every watcher's callback is
#    the C builtin `_fired.__setitem__`: no Python code, so no signal handler,
#    runs inside the loop, and what a handler raises comes out of loop.start(),
#    which the hub throws into the main greenlet. Back in its own code, the
#    hub wakes the waiters of each fired watcher.
# 3. Every started watcher is in the table and stopped before its fd closes
#    (trio's close protocol: stop watching, wake the waiters with EBADF, then
#    close). A socket's watchers stay started between waits; one that fires
#    with nobody waiting is stopped. The fds of watchers started since the
#    last poll are checked before it (_check_started): an os.close() behind
#    the socket's back gets its waiters EBADF, not a libev abort.
# 4. No Python signal handler raises inside the hub's own code: SIGINT's
#    default handler is replaced, while the main thread's hub lives, by one
#    that defers the interrupt to the hub's next step when it lands in the
#    hub, and patch(signal=True) does the same for every handler.
# 5. LoopExit exactly when no greenlet is parked on an fd or a thread, no
#    ref timer and no callback is pending.

_CLOSED_WHILE_WAITING = "File descriptor was closed in another greenlet"
_NOT_FROM_HUB = "cannot block inside the hub: call blocking functions from a spawned greenlet, not a hub callback"
_PARK = object()        # the first item of every request a greenlet parks with
_TIMED_OUT = object()   # what a parked greenlet is woken with when its deadline passes
_THREAD = object()      # a request's target while a worker thread works for the greenlet
_DIRECTIONS: tuple[Any, ...] = (None, (0,), (1,), (0, 1))  # indexed by events: _EV_READ, _EV_WRITE, both
_SWEEP_AT = 1024        # cancelled timers are swept from the heap once it outgrows this and twice its last size
_SPARE_IOS = 16         # stopped io watchers kept, per direction, for the next raw-fd wait
_POLL_EVERY = 5e-5      # a run of callbacks (a sleep(0) loop) lets I/O in at least this often, in seconds
_PASS_BUDGET = 0.005    # a pass that has run greenlets this long lets timers and I/O in (gevent: the switch interval)


def get_hub() -> Hub:
    """Return this thread's hub, creating it (and its loop) on first use."""
    try:
        return _local.hub
    except AttributeError:
        _local.hub = hub = Hub()
        _local.closer = _LoopCloser(hub)
        return hub


class _LoopCloser:
    """Sits beside the hub in the thread-local: when the thread ends, it closes the loop.

    (The hub itself lives on in a reference cycle with its suspended frame.)
    """

    __slots__ = ("hub",)

    def __init__(self, hub):
        self.hub = hub

    def __del__(self):
        try:
            hub = self.hub  # (absent if a signal cut __init__ short: nothing to close then)
            if hub._thread != _threading.get_ident() and hub._runner.is_alive():
                return  # a daemon thread at interpreter exit, still in its loop: leave that to the OS
            hub._close_loop()
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to release
            pass


class _Fd:
    """What a hub knows of one fd: per direction, its watcher and the greenlets parked on it."""

    __slots__ = ("fd", "owner", "watchers", "waiters", "users")

    def __init__(self, fd, owner):
        self.fd, self.owner = fd, owner  # owner: a weak reference to the socket, None for a raw fd
        self.watchers = [None, None]     # [reading, writing]
        self.waiters = ([], [])          # greenlets parked on it in select, poll, wait_read: any number
        self.users = [None, None]        # the greenlet parked on it in a socket call: one at most


class _Callback:
    """The handle of a callback or timer: stop() cancels it (one store, so a signal cannot cut it in two)."""

    __slots__ = ("func", "args", "ref")

    def __init__(self, func, args, ref):
        self.func, self.args, self.ref = func, args, ref

    def stop(self):
        """Cancel the call if it has not run yet."""
        self.func = None

    pending = property(lambda self: self.func is not None)


_switch = _greenlet.switch  # (bound once: CPython 3.11 caches no lookup of a class's attribute)


class Hub(_greenlet):
    """The greenlet that runs this thread's event loop and wakes parked greenlets."""

    parent: _greenlet  # (for type checkers) the thread's main greenlet, never None
    # Slots: CPython 3.11 caches no lookup of a greenlet's __dict__ attribute
    # (the hub reads these on every wake-up), but caches a slot's.
    __slots__ = ("ev", "loop", "_fired", "_record_fired", "_fds", "_spare_ios", "_parked", "_deadlines",
                 "_io_parks", "_lent", "_started", "_callbacks", "_timers", "_timer_numbers", "_sweep_at",
                 "_due_ahead", "_clock", "_clock_when", "_incoming", "_thread", "_pid", "_runner", "_wake_lock",
                 "_wakeup", "_destroyed", "_next_poll", "_arriving", "_deferred", "_idlers", "_signal_wakeup",
                 "_sigint", "_creator")

    def __init__(self) -> None:
        root = getcurrent()
        while root.parent is not None:
            root = root.parent
        super().__init__(parent=root)  # the thread's main greenlet gets LoopExit and Ctrl-C
        # libev makes its wake-up fd when the first Async starts, and retries
        # pipe() for ever (pyev: aborts) if no fd is free: fail here with EMFILE.
        for fd in _os.pipe():
            _os.close(fd)
        self.ev = _pyev  # the backend's namespace: pyev, or a stand-in with its names
        self.loop = _pyev.Loop()
        self._fired: dict[Any, int] = {}  # {watcher: revents} recorded by the loop in one pass
        self._record_fired = self._fired.__setitem__
        self._fds: dict[int, _Fd] = {}
        self._spare_ios: tuple[list[Any], list[Any]] = ([], [])  # stopped watchers for reading, writing, to reuse
        self._parked: dict[_greenlet, tuple[Any, ...]] = {}  # {greenlet: the request it parked with}
        self._deadlines: dict[_greenlet, _Callback] = {}     # {parked greenlet: its wake-up at its deadline}
        self._io_parks = 0             # parked greenlets an fd or a worker thread will wake
        self._lent = 0                 # ThreadPool.spawn jobs whose results this hub is to set
        self._started: list[Any] = []  # io watchers started since the last poll (_check_started)
        self._callbacks: _deque[_Callback] = _deque()  # run in order on the next pass
        self._timers: list[tuple[float, int, _Callback]] = []  # a heap
        self._timer_numbers = _count()
        self._sweep_at = _SWEEP_AT
        self._due_ahead = 0  # how many callbacks at the front are due timers not yet run, oldest first
        self._clock = _pyev.Timer(0.0, 0.0, self.loop, self._record_fired)  # wakes the poll for _timers
        self._clock_when: float | None = None  # when the clock is set to fire (None: stopped)
        self._incoming: _deque[tuple[Callable[..., object], tuple[Any, ...]]] = _deque()  # from other threads
        self._thread, self._pid, self._runner = _threading.get_ident(), _os.getpid(), _threading.current_thread()
        self._wake_lock = _allocate_lock()  # no thread wakes the loop while destroy() closes it
        self._wakeup = _pyev.Async(self.loop, self._record_fired)
        self._destroyed = False
        self._next_poll = 0.0          # when a run of callbacks next lets I/O in
        self._arriving: tuple[Any, ...] | None = None  # PyPy: the last request a greenlet parked with (_resume)
        self._deferred: _deque[tuple[Callable[..., object], int]] = _deque()  # signal handlers that landed in the hub
        self._idlers: list[tuple[Any, ...]] = []  # idle()'s park requests: woken once a pass has nothing to run
        self._signal_wakeup: tuple[Any, tuple[int, int]] | None = None  # (watcher, pipe)
        self._sigint = None            # SIGINT's handler before ours, while ours is installed
        self._wakeup.start()
        try:
            if _threading.current_thread() is _threading.main_thread():
                self._watch_signal_wakeup()
                self._defer_sigint()
            # Start the hub greenlet here, and let it park at once: a signal
            # handler that raises as it starts then fails this call, and no
            # dead hub is ever handed out.
            self._creator: _greenlet | None = getcurrent()
            _greenlet.switch(self)
        except BaseException:
            self._close_loop()  # pyev would free its watchers active
            raise

    # -- signals ------------------------------------------------------------

    def _watch_signal_wakeup(self):
        # A signal delivered to another thread does not interrupt this
        # thread's poll; Python writes to its wakeup fd then, which wakes us
        # (asyncio does the same). Leave it alone if someone else set it.
        import signal
        pipe = _nonblocking_pipe()
        try:
            previous = signal.set_wakeup_fd(pipe[1], warn_on_full_buffer=False)
        except ValueError:
            previous = None
        if previous == -1:
            watcher = self.ev.Io(pipe[0], _EV_READ, self.loop, self._record_fired)
            watcher.start()
            self._signal_wakeup = (watcher, pipe)
            return
        if previous is not None:
            signal.set_wakeup_fd(previous)  # not ours: put the other one back
        _os.close(pipe[0])
        _os.close(pipe[1])

    def _stop_signal_wakeup(self):
        if self._signal_wakeup:
            import signal
            watcher, pipe = self._signal_wakeup
            self._signal_wakeup = None
            watcher.stop()
            try:
                previous = signal.set_wakeup_fd(-1)
                if previous != pipe[1]:
                    signal.set_wakeup_fd(previous)  # someone replaced ours: leave theirs
            except ValueError:
                pass  # not the main thread any more (after fork in a thread)
            _os.close(pipe[0])
            _os.close(pipe[1])

    def _defer_sigint(self):
        # trio's rule: take SIGINT over only from Python's default handler,
        # never from one the program installed. SIGINT is blocked meanwhile:
        # one arriving between the two signal() calls would run the wrong one.
        import signal
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            previous = signal.signal(signal.SIGINT, _interrupt)
            if previous is signal.default_int_handler:
                self._sigint = previous
            else:
                signal.signal(signal.SIGINT, previous)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _restore_sigint(self):
        if self._sigint is not None:
            import signal
            try:
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    previous = signal.signal(signal.SIGINT, self._sigint)
                    if previous is not _interrupt:
                        signal.signal(signal.SIGINT, previous)  # the program installed its own since: leave it
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            except ValueError:  # not the main thread (a hub closed at interpreter exit)
                pass
            self._sigint = None

    def _run_deferred_signals(self):
        """Run the signal handlers that landed in the hub's code; what they raise goes to the main greenlet."""
        deferred = self._deferred
        while deferred:
            handler, signum = deferred.popleft()
            try:
                handler(signum, None)
            except BaseException as exc:
                self._throw(self.parent, exc)

    # -- parking and waking -------------------------------------------------

    def park(self, request: tuple[Any, ...]) -> Any:
        """Park the current greenlet with request; return the value it is woken with.

        The one primitive that parks a greenlet: a single switch into the hub
        that carries the request, (_PARK, greenlet, target, events, deadline,
        exclusive). target is an _Fd to wait on for events (EV_READ, EV_WRITE
        or both), a list of (_Fd, events), _THREAD, or None; deadline is a
        time.monotonic() value, 0 for the next pass, or None. Woken by the fd
        (None), the deadline (_TIMED_OUT), the hub's _wake(request) (a _Waiter
        called, a worker thread done), or an exception thrown in by kill(), a
        Timeout or Ctrl-C.
        """
        if request[1] is self or self._destroyed:
            self._check_switch()
        if _PYPY:  # see _resume
            self._arriving = request
        return _switch(self, request)

    def wait(self, entry: _Fd, events: int, deadline: float | None = None) -> None:
        """Park the current greenlet until entry's fd is ready for events, as a socket call.

        Raises TimeoutError past `deadline` (a time.monotonic() value),
        OSError(EBADF) if the fd is closed meanwhile, ConcurrentObjectUseError
        if another greenlet's socket call waits on the fd for the same direction.
        """
        current = getcurrent()
        if current is self or self._destroyed:
            self._check_switch()
        users = entry.users
        if users[0] is not None or users[1] is not None:  # (the common case: nobody)
            for i in _DIRECTIONS[events]:
                other = users[i]
                if other is not None and other is not current:
                    sock = entry.owner and entry.owner()
                    raise ConcurrentObjectUseError(
                        f"This {'socket' if sock else 'fd'} is already used by another greenlet for "
                        f"{('reading', 'writing')[i]}: {sock or entry.fd!r} is waited on by {other!r}; "
                        f"use one greenlet per direction, or a lock")
        request = (_PARK, current, entry, events, deadline, True)
        if _PYPY:  # see _resume
            self._arriving = request
        if _switch(self, request) is _TIMED_OUT:  # (park(), inline: the socket's hot path)
            raise _timed_out("timed out")

    def _take(self, request):
        """Record what a greenlet switched into the hub with, if it parked (anything else is ignored)."""
        if type(request) is not tuple or not request or request[0] is not _PARK:
            return
        _, greenlet, target, events, deadline, exclusive = request
        parked = self._parked
        if greenlet in parked:  # a record a raw throw() left behind
            self._unpark(greenlet)
        parked[greenlet] = request
        if target is not None:
            self._io_parks += 1
            try:
                if type(target) is _Fd:
                    if exclusive and events != 3 and target.watchers[events - 1] is not None:  # the hot path, inline
                        target.users[events - 1] = greenlet  # (a started watcher: so the fd is open and known)
                    else:
                        self._watch_for(greenlet, target, events, exclusive)
                elif target is not _THREAD:
                    for entry, entry_events in target:
                        self._watch_for(greenlet, entry, entry_events, False)
            except BaseException as exc:  # the fd closed meanwhile, or the backend refused it: tell the greenlet
                self._throw(greenlet, exc)
                return
        if deadline is not None:
            wake = _Callback(self._wake, (request, _TIMED_OUT), 1)
            self._deadlines[greenlet] = wake
            if deadline:
                _heappush(self._timers, (deadline, next(self._timer_numbers), wake))
            else:
                self._callbacks.append(wake)

    def _watch_for(self, greenlet, entry, events, exclusive):
        for i in _DIRECTIONS[events]:  # first the record, which _unpark undoes whatever follows
            if exclusive:
                entry.users[i] = greenlet
            else:
                entry.waiters[i].append(greenlet)
        known = self._fds.get(entry.fd)
        if known is not entry:
            if known is not None or entry.owner is not None:  # the socket closed before the request came
                raise OSError(_errno.EBADF, _CLOSED_WHILE_WAITING)
            self._fds[entry.fd] = entry  # a raw fd's first wait
        for i in _DIRECTIONS[events]:
            if entry.watchers[i] is None:
                self._start_watching(entry, i)

    def _unpark(self, greenlet):
        """Clear greenlet's record; return the request it parked with, or None if it was not parked."""
        request = self._parked.pop(greenlet, None)
        if request is None:
            return None
        _, _, target, events, deadline, exclusive = request
        if target is not None:
            self._io_parks -= 1
            if type(target) is _Fd:
                if exclusive and events != 3:  # the hot path, inline
                    target.users[events - 1] = None
                else:
                    self._unwatch_for(greenlet, target, events, exclusive)
            elif target is not _THREAD:
                for entry, entry_events in target:
                    self._unwatch_for(greenlet, entry, entry_events, False)
        if deadline is not None:
            wake = self._deadlines.pop(greenlet, None)  # (None if _take failed before it set one)
            if wake is not None:
                wake.func = None
        return request

    def _unwatch_for(self, greenlet, entry, events, exclusive):
        waiters = entry.waiters
        for i in _DIRECTIONS[events]:
            if exclusive:
                entry.users[i] = None
            elif greenlet in waiters[i]:  # (not yet, in a wait on several fds that failed before it)
                waiters[i].remove(greenlet)
        if entry.owner is None and not waiters[0] and not waiters[1]:
            self._notify_closing(entry, keep_watchers=True)  # nothing tells the hub when a raw fd closes

    def _wake(self, request, value=None):
        """From the hub: wake the greenlet of request with value, if it is still parked with it."""
        greenlet = request[1]
        if self._parked.get(greenlet) is request:
            self._unpark(greenlet)
            self._take(greenlet.switch(value) if not _PYPY else self._resume(greenlet.switch, value))

    def _drop(self, request):
        """From the hub: forget request if it is still its greenlet's record (a raw switch() ended that park)."""
        if self._parked.get(request[1]) is request:
            self._unpark(request[1])

    def _throw(self, greenlet, exception):
        """From the hub: raise exception in greenlet, clearing its record first."""
        if not greenlet.dead:
            self._unpark(greenlet)
            self._take(self._resume(greenlet.throw, exception))

    def _start(self, greenlet):
        """From the hub: start greenlet (Greenlet.start schedules this)."""
        self._take(self._resume(greenlet.switch))

    if not _PYPY:
        def _resume(self, switch, *value):
            return switch(*value)
    else:
        # PyPy's greenlet is Python code: back on the hub's side of a switch,
        # getcurrent() still names the greenlet that switched to the hub for a
        # few bytecodes. A signal handler running there is not deferred, and
        # its exception comes out of switch() in place of the request that
        # greenlet brought. So on PyPy a greenlet also leaves its request in
        # _arriving as it parks (see park), and an exception out of switch()
        # while the target lives is the main greenlet's.
        def _resume(self, switch, *value):
            try:
                request = switch(*value)
            except BaseException as exc:
                if switch.__self__.dead or self._destroyed:
                    raise  # a raw greenlet died of it (the caller reports it), or destroy()
                request, self._arriving = self._arriving, None
                if request is not None and request[1].dead:
                    request = None
                self.run_callback(self._throw, self.parent, exc)
            self._arriving = None
            return request

    def _wake_closed(self, entry, directions=(0, 1)):
        for i in directions:
            for greenlet in [entry.users[i], *entry.waiters[i]]:
                if greenlet is not None and greenlet in self._parked:
                    self._throw(greenlet, OSError(_errno.EBADF, _CLOSED_WHILE_WAITING))

    # An entry's watcher for a direction is there only while it is started:
    # a park checks the slot, not the backend's `active`.
    def _start_watching(self, entry, i):
        spares = self._spare_ios[i]
        if spares:  # a stopped watcher: set() costs less than a new one
            watcher = spares.pop()
            watcher.set(entry.fd, i + 1)
        else:
            watcher = self.ev.Io(entry.fd, i + 1, self.loop, self._record_fired)
        watcher.data = (entry, i)
        entry.watchers[i] = watcher  # first: a close stops it even if start() is cut short once started
        try:
            watcher.start()
        except BaseException:  # the backend refused the fd, or a signal: no slot without a started watcher
            self._stop_watching(entry, i)
            raise
        self._started.append(watcher)

    def _stop_watching(self, entry, i, keep=False):
        """Stop entry's watcher for direction i; keep: as a spare (not for one that may still be in this
        pass's fired watchers: reused for another fd, it would wake that fd's waiters)."""
        watcher = entry.watchers[i]
        if watcher is not None:
            watcher.data = entry.watchers[i] = None  # first: if a signal cuts stop() short, _run_pass stops it
            watcher.stop()
            if keep and len(self._spare_ios[i]) < _SPARE_IOS:
                self._spare_ios[i].append(watcher)

    def _entry(self, fd, owner=None):
        """Return this hub's entry for fd; owner: a weakref to the socket, whose entry is kept at once.

        A raw fd's entry is kept from its first wait's arrival to its last
        waiter's leaving: nothing tells the hub when a raw fd closes.
        """
        entry = self._fds.get(fd)
        if entry is not None and entry.owner is not None:
            sock = entry.owner()
            # Dropped unclosed, closed by another thread, or a second socket on
            # the number: the first's fd was closed under it (os.close) and reused.
            if sock is None or sock.fileno() != fd or (owner is not None and owner() is not sock):
                self._notify_closing(entry)
                entry = None
        if entry is None:
            entry = _Fd(fd, owner)
            if owner is not None:
                self._fds[fd] = entry
        elif entry.owner is None and owner is not None:
            entry.owner = owner
        return entry

    def _notify_closing(self, entry, keep_watchers=False):
        """Stop watching entry's fd, which is about to close; its waiters get EBADF on the next pass.

        Called by whoever closes the fd, before it closes; idempotent: if a
        signal cuts it short, the close does not happen, and the next call
        finishes it.
        """
        for i in (0, 1):
            self._stop_watching(entry, i, keep_watchers)
        if self._fds.get(entry.fd) is entry:
            del self._fds[entry.fd]
        if entry.waiters[0] or entry.waiters[1] or entry.users != [None, None]:
            self.run_callback(self._wake_closed, entry)

    def switch(self, *args: Any) -> Any:
        """Switch to the hub; it switches back when something wakes this greenlet."""
        if getcurrent() is self or self._destroyed:
            self._check_switch()
        return _greenlet.switch(self, *args)

    def _check_switch(self):
        if getcurrent() is self:
            raise BlockingSwitchOutError(_NOT_FROM_HUB)
        raise self.ev.Error(_LOOP_CLOSED)  # else it would return at once: nothing runs a destroyed hub

    # -- callbacks and timers -----------------------------------------------

    def run_callback(self, func: Callable[..., object], *args: Any) -> _Callback:
        """Call func(*args) from the hub on its next pass; return a handle with .stop().

        func runs in the hub: if it switches into a greenlet, it must return
        what that switch returned (as a bound greenlet.switch does), so that a
        greenlet that parks again is recorded.
        """
        callback = _Callback(func, args, 0)
        self._callbacks.append(callback)
        return callback

    def run_later(self, seconds: float, func: Callable[..., object], *args: Any, ref: bool = True) -> _Callback:
        """Call func(*args) from the hub after `seconds`; return a handle with .stop().

        With ref=False the pending call does not keep the hub alive.
        """
        return self._at(_monotonic() + seconds, func, args, ref)

    def _at(self, when, func, args, ref, holder=None, attribute=None):
        # The handle goes to holder before the push (one C call): wherever a
        # signal lands, the owner can cancel what was made.
        callback = _Callback(func, args, ref)
        if holder is not None:
            setattr(holder, attribute, callback)
        _heappush(self._timers, (when, next(self._timer_numbers), callback))
        return callback

    # Deadlines live in a heap here, and one loop timer (the clock) wakes the
    # poll for the earliest: a timeout costs a heap push, not a loop watcher.
    # Most timeouts are cancelled before they are due (a socket call that did
    # not wait long); a cancelled one is dropped when it surfaces, or when the
    # heap is swept. The clock is set again only when the next deadline is
    # earlier than the one it is set for: one that fires early, or for a
    # cancelled timer, costs a pass that finds nothing due. libev counts a
    # timer from its cached time, which goes stale while greenlets run, so the
    # loop's time is updated before the clock starts, or it would fire early.

    def _run_due_timers(self):
        """Move due timers to the front of the callbacks, behind those due before; set the clock for the next one."""
        timers, now, clock = self._timers, _monotonic(), self._clock
        if len(timers) > self._sweep_at:
            timers[:] = [timer for timer in timers if timer[2].func is not None]
            _heapify(timers)
            self._sweep_at = max(_SWEEP_AT, 2 * len(timers))
        due = []
        while timers and (timers[0][2].func is None or timers[0][0] <= now):
            callback = _heappop(timers)[2]
            if callback.func is not None:
                due.append(callback)
        callbacks = self._callbacks  # ahead of a burst's leftovers (see _run_pass), behind the due timers
        for i, callback in enumerate(due, self._due_ahead):  # still queued: no timer overtakes an older one
            callbacks.insert(i, callback)
            self._due_ahead = i + 1
        if self._clock_when is not None and (now >= self._clock_when or not clock.active):
            self._clock_when = None  # it fired (or should have)
        if timers and (self._clock_when is None or timers[0][0] < self._clock_when):
            clock.stop()
            self._clock_when = timers[0][0]
            clock.set(max(self._clock_when - now, 0.0), 0.0)
            self.loop.update()
            clock.start()

    def _keeps_polling(self):
        """True while something can still wake a parked greenlet: an fd, a thread, a ref timer."""
        return self._io_parks > 0 or self._lent > 0 or any(timer[2].ref and timer[2].func is not None for timer in self._timers)

    def _run_threadsafe(self, func, *args):
        """From any thread: have the hub call func(*args); False if the hub is gone."""
        with self._wake_lock:
            if self._destroyed:
                return False
            self._incoming.append((func, args))
            self._wakeup.send()
        return True

    def _wake_soon(self, request):
        """From any thread: wake request's greenlet on the hub's next pass, if it is still parked with it.

        False if the hub is gone (destroyed, its thread ended, or did not survive a fork).
        """
        if self._pid != _os.getpid():
            return False
        if self._thread == _get_ident():
            self._callbacks.append(_Callback(self._wake, (request, None), 0))
            return not self._destroyed
        if _threading._active.get(self._thread) is not self._runner:
            return False  # its thread has ended (on PyPy the hub is closed only at a later collection)
        return self._run_threadsafe(self._wake, request)

    @property
    def threadpool(self) -> ThreadPool:
        """The process's ThreadPool for blocking calls, which name lookups use (gevent's hub.threadpool)."""
        return _resolver

    @property
    def resolver(self) -> Resolver:
        """The name lookups as gevent's hub.resolver has them (its thread resolver's methods)."""
        return _LOOKUPS

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Run the loop until destroy()."""
        creator, self._creator = self._creator, None
        try:
            arrived = creator.switch() if creator is not None else None  # __init__ started the hub: park
            while not self._destroyed:
                try:
                    self._take(arrived)
                    arrived = None
                    self._run_pass()
                except GreenletExit:
                    raise
                except BaseException as exc:  # a handler patch(signal=True) did not wrap raised here
                    self._throw(self.parent, exc)
        except GreenletExit:  # destroy(), or the hub was garbage-collected
            return

    def _run_pass(self):
        """Run the callbacks queued before this pass, poll once, wake the waiters of fired watchers.

        The only place callbacks are called; a callback's exception is
        reported (KeyboardInterrupt and SystemExit go to the main greenlet).
        What a signal handler raises in the poll goes to the main greenlet.
        Fairness: once the greenlets run here have taken _PASS_BUDGET, the
        rest of a burst (100 TLS handshakes woken at once) lets due timers
        in: callbacks left over wait for the next pass, which polls without
        blocking and runs due timers first; a run of fired watchers runs the
        due timers between two of them. (Fired watchers are never left for a
        next poll: it would report every one of them again, a cost per
        connection at 1,000 of them.)
        """
        if self._deferred:
            self._run_deferred_signals()
        budget_end = _monotonic() + _PASS_BUDGET
        callbacks, take, parked = self._callbacks, self._take, self._parked
        self._run_callbacks(len(callbacks), budget_end)  # only those queued before: a sleep(0) loop must let I/O in
        incoming = self._incoming
        while incoming:  # what other threads handed over
            func, args = incoming.popleft()
            self.run_callback(func, *args)
        if self._timers:
            self._run_due_timers()
        if callbacks:  # a sleep(0) loop polls I/O every _POLL_EVERY, not at every round
            now = _monotonic()
            if now < self._next_poll and now <= budget_end:
                return
            self._next_poll = now + _POLL_EVERY
            flags = _EVRUN_NOWAIT
        elif self._idlers:  # nothing else to run: wake those that idle() waits for it
            for request in self._idlers:
                self.run_callback(self._wake, request)
            self._idlers, flags = [], _EVRUN_NOWAIT
        elif self._keeps_polling() or self._deferred:
            flags = _EVRUN_ONCE
        else:
            self._throw(self.parent, LoopExit(
                "This operation would block forever: no greenlet waits on I/O and no timer "
                "or callback is pending, so nothing can wake the waiting greenlet; spawn the "
                "greenlet that is to wake it before waiting, or wait with a timeout"))
            return
        if self._started:
            self._check_started()
        try:
            self.loop.start(flags)
        except BaseException as exc:  # what a signal handler raised in the poll
            if self._destroyed:
                raise GreenletExit from None
            self._throw(self.parent, exc)
        fired = self._fired
        if fired:
            watchers = list(fired)
            fired.clear()
            timers = self._timers
            for watcher in watchers:
                if (self._due_ahead or timers) and _monotonic() > budget_end:  # let due timers in between
                    self._run_due_timers()
                    self._run_callbacks(self._due_ahead, float("inf"))
                    budget_end = _monotonic() + _PASS_BUDGET
                data = watcher.data
                if data is None:
                    if self._signal_wakeup and watcher is self._signal_wakeup[0]:
                        _drain(self._signal_wakeup[1][0])
                    elif watcher is not self._clock and watcher is not self._wakeup:
                        watcher.stop()  # an io watcher no entry holds (a stop a signal cut short): it would fire again
                    continue
                entry, i = data
                user, waiting = entry.users[i], entry.waiters[i]
                if waiting:
                    waking = [user, *waiting] if user is not None else list(waiting)
                elif user is not None:
                    waking = (user,)
                else:
                    self._stop_watching(entry, i, keep=True)  # nobody waits: a ready fd would fire every pass
                    continue
                for greenlet in waking:
                    request = parked.get(greenlet)
                    if request is None:  # woken already, by its other fd
                        continue
                    if request[2] is entry and request[3] == i + 1 and request[4] is None and request[5]:
                        del parked[greenlet]  # (_unpark, inline for a socket call's wait: the hot path)
                        entry.users[i] = None
                        self._io_parks -= 1
                    else:
                        self._unpark(greenlet)
                    try:
                        take(greenlet.switch() if not _PYPY else self._resume(greenlet.switch))
                    except BaseException as exc:  # a raw greenlet died, or destroy()
                        if self._destroyed:
                            raise GreenletExit from None
                        self._report(greenlet, exc)

    def _run_callbacks(self, count, budget_end):
        """Run up to count callbacks from the front of the queue, fewer once past budget_end."""
        callbacks, take, ran = self._callbacks, self._take, 0
        try:
            for ran in range(1, count + 1):
                callback = callbacks.popleft()
                func = callback.func
                if func is not None:
                    callback.func = None
                    try:
                        take(func(*callback.args))
                    except BaseException as exc:
                        if self._destroyed:  # destroy() from a greenlet this callback switched to
                            raise GreenletExit from None
                        self._report(func, exc)
                    if _monotonic() > budget_end:
                        return
        finally:
            self._due_ahead = max(self._due_ahead - ran, 0)

    def _check_started(self):
        # libev registers a started watcher's fd with the kernel only at its
        # next poll, and aborts the process if the fd is closed by then. A
        # socket's close() tells the hub first; an os.close() of a socket's
        # fd (the user's bug, in gevent and trio too) does not: so the fds
        # of the watchers started since the last poll are checked here, and
        # a closed one's waiters get EBADF instead.
        started, self._started = self._started, []
        for watcher in started:
            data = watcher.data
            if data is not None and watcher.active:
                try:
                    _os.fstat(data[0].fd)
                except OSError:
                    self._notify_closing(data[0])

    def _call(self, func, *args):
        """From the hub: call func(*args) as a callback is called (what it switched back with is taken,
        what it raised reported), for code that calls several in one callback."""
        try:
            self._take(func(*args))
        except BaseException as exc:
            if self._destroyed:  # destroy() from a greenlet func switched to
                raise GreenletExit from None
            self._report(func, exc)

    def _report(self, context, exc):
        """Pass an exception that escaped context (a greenlet, a callback) to handle_error; the hub carries on."""
        try:
            self.handle_error(context, type(exc), exc, exc.__traceback__)
        except BaseException:  # an override's own failure: printed, not raised into the hub
            if self._destroyed:  # destroy() from the main greenlet handle_error switched to
                raise GreenletExit from None
            _traceback.print_exc()

    def handle_error(self, context: object, type: type[BaseException], value: BaseException, tb: Any) -> None:
        """Report an exception that escaped context, a callback or greenlet (gevent's arguments).

        KeyboardInterrupt, SystemExit and SystemError (the interpreter's own
        fault, as gevent's SYSTEM_ERROR) are raised in the main greenlet
        instead; GreenletExit is not an error. An override (set on the class
        or the hub) must not raise: what it raises is printed and dropped.
        """
        if issubclass(type, (KeyboardInterrupt, SystemExit, SystemError)):
            if issubclass(type, SystemError):
                self.print_exception(context, type, value, tb)
            if getcurrent() is self:
                self._throw(self.parent, value)
            else:
                self.run_callback(self._throw, self.parent, value)
        elif not issubclass(type, GreenletExit):
            self.print_exception(context, type, value, tb)

    def print_exception(self, context: object, type: type[BaseException], value: BaseException, tb: Any) -> None:
        """Print the traceback, then when and where it failed, to stderr."""
        _traceback.print_exception(type, value, tb)
        now = _time.strftime("%Y-%m-%dT%H:%M:%S%z")
        print(f"{now} {context!r} failed with {type.__name__}: {value}", file=_sys.stderr)

    def stats(self) -> dict[str, Any]:
        """Return counts for tests and debugging: fds watched, greenlets waiting on fds or threads,
        pending timers (run_later, Timeout, sleep, socket timeouts) and callbacks."""
        return {"backend": self.ev.__name__, "fds": len(self._fds), "waiting": self._io_parks,
                "timers": sum(timer[2].func is not None for timer in self._timers),
                "callbacks": sum(c.func is not None for c in self._callbacks)}

    def destroy(self) -> None:
        """End this hub and close its loop; the thread gets a new hub on next use.

        Greenlets parked on it stay parked for good. Safe from any greenlet of its thread.
        """
        self._close_loop()
        if getattr(_local, "hub", None) is self:
            del _local.hub, _local.closer
        if self and getcurrent() is self.parent:
            _greenlet.throw(self, GreenletExit)

    def _close_loop(self):
        with self._wake_lock:
            self._destroyed = True
        # In a forked child, the hub of a thread that did not survive the fork
        # shares its epoll instance with the parent's: stopping a watcher
        # there (EPOLL_CTL_DEL) would take the fd from the parent. Close only.
        if self._pid == _os.getpid():
            self._restore_sigint()
            self._stop_signal_wakeup()
            for entry in list(self._fds.values()):
                for watcher in entry.watchers:
                    if watcher is not None:
                        watcher.stop()
            self._fds.clear()
            self._clock.stop()
            self._wakeup.stop()
        self._timers, self._callbacks, self._deadlines = [], _deque(), {}  # their handles refer to the hub
        self._due_ahead = 0
        close = getattr(self.loop, "_close", None)  # real pyev frees its loop when collected
        if close is not None:
            close()

    def __repr__(self):
        return f"<Hub backend={self.ev.__name__} callbacks={len(self._callbacks)} at {id(self):#x}>"


def _interrupt(signum, frame):
    """SIGINT's handler while the main thread's hub lives: Ctrl-C that lands in the hub waits for its next step."""
    hub = _local.__dict__.get("hub")  # (handlers run in the main thread)
    if hub is not None and getcurrent() is hub:
        hub._deferred.append((_default_interrupt, signum))
        hub._wakeup.send()  # it may land after this pass looked: its poll must not block
    else:
        raise KeyboardInterrupt


def _default_interrupt(signum, frame):
    raise KeyboardInterrupt

def _hub_after_fork_in_child():
    hub = getattr(_local, "hub", None)
    if hub is not None and not hub._destroyed:
        hub._wake_lock = _allocate_lock()  # another thread may have held it at the fork
        hub._pid, hub._lent = _os.getpid(), 0  # (the pools' threads did not survive it)
        hub.loop.reset()
        if hub._signal_wakeup:  # the parent owns that pipe too
            hub._stop_signal_wakeup()
            hub._watch_signal_wakeup()


_os.register_at_fork(after_in_child=_hub_after_fork_in_child)  # a registration: no hub is made at import


# ---------------------------------------------------------------------------
# Timeout

class Timeout(BaseException):
    """Raise an exception in the current greenlet after `seconds`.

    A BaseException, so that `except Exception` does not swallow it. `exception`
    is what gets raised: None raises the Timeout itself, False too but a `with`
    block then suppresses it silently, a string ends its message, a class or
    instance is raised as given. Timeout(None) never fires; Timeout(0) fires on
    the next loop pass. With ref=False the timer does not keep the loop alive.
    """

    def __init__(self, seconds: float | None = None,
                 exception: type[BaseException] | BaseException | str | bool | None = None, ref: bool = True) -> None:
        self.seconds, self.exception, self._ref = seconds, exception, ref
        self._raising = None  # the hub's run_later handle while started

    @classmethod
    def start_new(cls, seconds: Timeout | float | None = None,
                  exception: type[BaseException] | BaseException | str | bool | None = None,
                  ref: bool = True) -> Timeout:
        """Create a Timeout and start it; a Timeout given as `seconds` is started as is, unless pending."""
        timeout = seconds if isinstance(seconds, Timeout) else cls(seconds, exception, ref)
        if not timeout.pending:
            timeout.start()
        return timeout

    @property
    def pending(self) -> bool:
        """True while started and not yet raised or cancelled."""
        return self._raising is not None and self._raising.func is not None

    def start(self) -> None:
        """Start the countdown in the current greenlet.

        Raises RuntimeError if it is already started, TypeError or ValueError
        for seconds that socket.settimeout() would reject (negatives mean 0).
        """
        raising, seconds = self._raising, self.seconds
        if raising is not None and raising.func is not None:
            raise RuntimeError(f"{self!r} is already started; cancel it first")
        if seconds is not None:
            if type(seconds) not in (int, float) or not seconds >= 0:
                seconds = _seconds(seconds)
            hub = get_hub()
            hub._at(_monotonic() + seconds, self._raise_in, (hub, getcurrent()), self._ref, self, "_raising")

    def cancel(self) -> None:
        """Stop the countdown, if it is running; safe to call at any time."""
        raising = self._raising
        if raising is not None:
            raising.func = None

    close = cancel

    def _raise_in(self, hub, target):
        exc = self.exception
        hub._throw(target, self if exc is None or exc is False or isinstance(exc, str) else _raisable(exc))

    def __enter__(self: _Timeout) -> _Timeout:
        if self._raising is None or self._raising.func is None:  # not pending
            self.start()
        return self

    def __exit__(self, typ: object, value: object, tb: object) -> bool:
        raising = self._raising
        if raising is not None:
            raising.func = None
        return value is self and self.exception is False

    def __str__(self):  # gevent's words
        if self.seconds is None:
            return ""
        seconds = f"{self.seconds} second{'' if self.seconds == 1 else 's'}"
        exc = self.exception
        return seconds if exc is None else f"{seconds} (silent)" if exc is False else f"{seconds}: {exc}"

    def __repr__(self):
        return f"<Timeout seconds={self.seconds} exception={self.exception!r} pending={self.pending}>"


def _expiry(timeout, exception):
    """What a wait that raises past `timeout` raises: a Timeout given as `timeout` itself (gevent's), else exception."""
    return timeout if isinstance(timeout, Timeout) else exception


def with_timeout(seconds: float | None, func: Callable[..., _T], *args: Any, timeout_value: Any = Timeout,
                 **kwargs: Any) -> _T | Any:
    """Return func(*args, **kwargs), or timeout_value if given and `seconds` pass first."""
    timeout = Timeout.start_new(seconds)
    try:
        return func(*args, **kwargs)
    except Timeout as exc:
        if exc is timeout and timeout_value is not Timeout:
            return timeout_value
        raise
    finally:
        timeout.cancel()


# ---------------------------------------------------------------------------
# Greenlets
#
# A Greenlet's parent is always the hub; links run from the hub, after the
# outcome is stored.

class _Waiter:
    """A wake-up for one park of one greenlet: a call wakes it if that park is still on, else does nothing."""

    __slots__ = ("hub", "request")

    def __init__(self):
        self.hub = self.request = None

    def __call__(self, *args):
        request, hub = self.request, self.hub
        if request is not None:
            if getcurrent() is hub:
                hub._wake(request)
            else:
                hub.run_callback(hub._wake, request)

    def wait(self, timeout=None):
        """Park until called; return False if `timeout` seconds passed first.

        A Timeout as `timeout` (gevent's habit) is started unless pending and
        cancelled after; its own exception means that it passed.
        """
        hub = get_hub()
        if isinstance(timeout, Timeout):
            return self._wait_for(hub, timeout)
        return self._park(hub, None if timeout is None else _monotonic() + _seconds(timeout))

    def _park(self, hub, deadline):  # deadline 0: the hub's next callbacks, behind those queued now
        self.hub, self.request = hub, (_PARK, getcurrent(), None, 0, deadline, False)
        return hub.park(self.request) is not _TIMED_OUT

    def _wait_for(self, hub, timeout):
        Timeout.start_new(timeout)
        self.hub, self.request = hub, (_PARK, getcurrent(), None, 0, None, False)
        try:
            hub.park(self.request)
            return True
        except Timeout as exc:
            if exc is not timeout:
                raise
            return False
        finally:
            timeout.cancel()


class Greenlet(_greenlet):
    """A greenlet that runs func(*args, **kwargs) under the hub and keeps the outcome.

    An exception that escapes func is printed and kept in .exception; it never
    kills the hub.
    """

    __slots__ = ("_func", "_args", "_kwargs", "value", "exception", "_tb", "_links", "_starter", "_finished", "name")
    parent: Hub  # (for type checkers) always the hub: see __init__
    value: Any
    exception: BaseException | None
    _tb: Any
    _starter: _Callback | None

    def __init__(self, func: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> None:
        if func is not None:
            _check_callable(func)
        super().__init__(parent=get_hub())
        self._func, self._args, self._kwargs = func, args, kwargs  # None: _run (not stored: a cycle)
        self.value = self.exception = self._tb = self._starter = None
        self.name = f"Greenlet-{next(_greenlet_numbers)}"  # for reports; settable
        self._links: list[Callable[[Greenlet], object]] = []
        self._finished = False

    @classmethod
    def spawn(cls: type[_Greenlet], *args: Any, **kwargs: Any) -> _Greenlet:
        """Create a greenlet of this class with these arguments, start it, return it."""
        g = cls(*args, **kwargs)
        g.start()
        return g

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """Run when no function was given: a subclass's code goes here, as in gevent."""

    args = property(lambda self: self._args or (), doc="The positional arguments (() once finished).")
    kwargs = property(lambda self: self._kwargs or {}, doc="The keyword arguments ({} once finished).")
    started = property(lambda self: bool(self) or (self._starter is not None and self._starter.pending),
                       doc="True while scheduled or running.")

    def start(self) -> None:
        """Schedule the greenlet to run on the hub's next pass."""
        if self._starter is None and not self and not self._finished:
            self._starter = self.parent.run_callback(self.parent._start, self)

    def start_later(self, seconds: float) -> None:
        """Schedule the greenlet to run in `seconds`."""
        if self._starter is None and not self and not self._finished:
            self._starter = self.parent.run_later(_seconds(seconds), self.parent._start, self)

    def run(self) -> None:
        self._starter = None
        try:
            func, args, kwargs = self._run if self._func is None else self._func, self._args, self._kwargs
            # A call with *args recurses in C on CPython 3.11, and a parked
            # greenlet keeps a copy of its C stack: so the usual arities are
            # called directly (368 bytes less per idle connection).
            if kwargs or len(args) > 2:
                self.value = func(*args, **kwargs)
            elif len(args) == 2:  # StreamServer's handle(socket, address)
                self.value = func(args[0], args[1])
            else:
                self.value = func(args[0]) if args else func()
        except GreenletExit as exc:  # kept without its traceback, which holds this frame and so this
            self.value = exc.with_traceback(None)  # greenlet: a cycle only a collection frees (kill() 2x slower)
        except BaseException as exc:
            self.exception, self._tb = exc, exc.__traceback__  # as it died: each get() raises it afresh
            self.parent._report(self, exc)
        finally:
            self._finish()

    def _finish(self):
        self._finished = True
        func = self._run if self._func is None else self._func
        self._func = getattr(func, "__qualname__", None) or _reprlib.repr(func)  # for the repr
        self._args = self._kwargs = None
        if self._links:
            self.parent.run_callback(self._notify_links)

    def _notify_links(self):
        links = self._links
        while links:
            self.parent._call(links.pop(0), self)  # taken off as it is called: one may unlink another

    def ready(self) -> bool:
        """Return True once the greenlet has finished (or was killed)."""
        return self._finished

    def successful(self) -> bool:
        """Return True if it finished without an exception (a kill counts as success)."""
        return self._finished and self.exception is None

    dead = property(lambda self: self._finished or _greenlet.dead.__get__(self))
    exc_info = property(lambda self: None if self.exception is None else (type(self.exception), self.exception,
                                                                          self._tb),
                        doc="(type, exception, traceback) if it died of an exception, else None (gevent's).")

    def link(self, callback: Callable[[Greenlet], object]) -> None:
        """Call callback(self) from the hub once the greenlet finishes."""
        _check_callable(callback, "callback")
        if self._finished:
            self.parent.run_callback(callback, self)
        else:
            self._links.append(callback)

    rawlink = link

    def link_value(self, callback: Callable[[Greenlet], object]) -> None:
        """Call callback(self) from the hub once the greenlet finishes without an exception."""
        self.link(_Link(callback, True))

    def link_exception(self, callback: Callable[[Greenlet], object]) -> None:
        """Call callback(self) from the hub once the greenlet dies of an exception."""
        self.link(_Link(callback, False))

    def unlink(self, callback: Callable[[Greenlet], object]) -> None:
        """Undo link(callback), link_value(callback) or link_exception(callback)."""
        if callback in self._links:
            self._links.remove(callback)

    def has_links(self) -> int:
        """Return how many links are waiting for it to finish."""
        return len(self._links)

    def __enter__(self: _Greenlet) -> _Greenlet:
        return self

    def __exit__(self, typ: object, value: BaseException | None, tb: object) -> None:
        """A `with` block: on leaving, wait for the greenlet (kill it if the block raised), as gevent's."""
        try:
            if value is None:
                self.join()
        finally:
            self.kill(GreenletExit if value is None else value)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the greenlet finishes, or `timeout` seconds; return None."""
        if not self._finished:
            waiter = _Waiter()
            self._links.append(waiter)
            try:
                waiter.wait(timeout)
            finally:
                if waiter in self._links:
                    self._links.remove(waiter)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Return the result, or raise the exception the greenlet died of.

        Raises Timeout if it has not finished (at once when block is False).
        """
        if not self._finished and block:
            self.join(timeout)
        if not self._finished:
            raise _expiry(timeout, Timeout(timeout))
        if self.exception is not None:
            raise self.exception.with_traceback(self._tb)
        return self.value

    def _end_unstarted(self, exc):
        if self._starter is not None:
            self._starter.stop()
        if isinstance(exc, GreenletExit):
            self.value = exc
        else:
            self.exception, self._tb = exc, getattr(exc, "__traceback__", None)
        self._finish()

    def throw(self, typ: Any = GreenletExit, val: Any = None, tb: Any = None) -> Any:
        """Raise an exception in the greenlet now (from the hub); one not started ends without running, as a kill."""
        if self or self._finished:
            return _greenlet.throw(self, typ, val, tb)
        self._end_unstarted(val if isinstance(val, BaseException) else typ if isinstance(typ, BaseException)
                            else typ() if val is None else typ(val))
        return None

    def kill(self, exception: type[BaseException] | BaseException = GreenletExit, block: bool = True,
             timeout: float | None = None) -> None:
        """Raise `exception` in the greenlet; wait for it to end unless block is False."""
        if self._finished:
            return
        exception = _raisable(exception)  # not an exception: the greenlet dies of the TypeError, as in gevent
        if not self:  # not started yet: it never runs
            return self._end_unstarted(exception() if isinstance(exception, type) else exception)
        self.parent.run_callback(self.parent._throw, self, exception)  # itself too: at its next switch, as gevent
        if block:
            self.join(timeout)

    def __repr__(self):
        call = f" {getattr(self._func, '__qualname__', self._func)}"
        if not self._finished:
            args = [_reprlib.repr(a) for a in self._args] + [f"{k}={_reprlib.repr(v)}" for k, v in self._kwargs.items()]
            call += f"({', '.join(args)})"
        state = ("failed" if self.exception is not None else "dead" if self._finished
                 else "running" if self else "pending")
        return f"<Greenlet {self.name!r}{call} {state} at {id(self):#x}>"


_greenlet_numbers = _count(1)


class _Link:
    """A link that calls callback(g) only if g succeeded (or only if it failed); equal to callback."""

    __slots__ = ("callback", "on_success")
    __hash__ = object.__hash__

    def __init__(self, callback, on_success):
        _check_callable(callback, "callback")
        self.callback, self.on_success = callback, on_success

    def __call__(self, g):
        if (g.exception is None) is self.on_success:
            self.callback(g)

    def __eq__(self, other):
        return self is other or self.callback == other


def spawn(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Greenlet:
    """Start func(*args, **kwargs) in a new Greenlet on the hub's next pass; return it."""
    g = Greenlet(func, *args, **kwargs)
    g.start()
    return g


def spawn_later(seconds: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Greenlet:
    """Start func(*args, **kwargs) in a new Greenlet after `seconds`; return it."""
    g = Greenlet(func, *args, **kwargs)
    g.start_later(seconds)
    return g


def spawn_raw(func: Callable[..., Any], *args: Any, **kwargs: Any) -> _greenlet:
    """Start func(*args, **kwargs) in a plain greenlet (the hub's child; no outcome kept, no links): gevent's."""
    _check_callable(func)
    hub = get_hub()
    g = _greenlet(lambda: func(*args, **kwargs), hub)
    hub.run_callback(hub._start, g)
    return g


def idle(priority: int = 0) -> None:
    """Park until the hub has nothing else to run: the greenlets and callbacks ready have run.

    gevent's; the priority is ignored.
    """
    hub, current = get_hub(), getcurrent()
    if current is hub:
        raise BlockingSwitchOutError(_NOT_FROM_HUB)
    request = (_PARK, current, None, 0, None, False)
    hub._idlers.append(request)
    hub.park(request)


class wrap_errors:
    """A callable that calls func and returns, not raises, an exception of the types in errors (gevent's).

    spawn(wrap_errors(OSError, sock.recv), 100).get() gives the data or the OSError.
    """

    def __init__(self, errors: type[BaseException] | tuple[type[BaseException], ...], func: Callable[..., Any]) -> None:
        self._errors, self._func = errors, func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._func(*args, **kwargs)
        except self._errors as exc:
            return exc

    def __str__(self):
        return str(self._func)

    def __repr__(self):
        return repr(self._func)

    def __getattr__(self, name):
        return getattr(self._func, name)


def sleep(seconds: float = 0) -> None:
    """Park the current greenlet for `seconds`; 0 lets the other ready greenlets and I/O run.

    Raises what time.sleep() raises for the same argument.
    """
    hub = _local.__dict__.get("hub") or get_hub()
    current = getcurrent()
    if current is hub:
        raise BlockingSwitchOutError("cannot sleep inside the hub: sleep in a spawned greenlet")
    if type(seconds) not in (int, float) or not 0 <= seconds <= 9.2e9:  # the checks time.sleep() makes
        seconds = seconds if isinstance(seconds, float) else _seconds_int(seconds)
        if seconds != seconds:
            raise ValueError("Invalid value NaN (not a number)")
        if seconds < 0 if not _PYPY else seconds * 1e9 <= -1:  # PyPy's truncates to whole ns first
            raise ValueError("sleep length must be non-negative")
        if seconds > 9.2e9:
            raise OverflowError("timestamp out of range for platform time_t")
    request = (_PARK, current, None, 0, _monotonic() + seconds if seconds else 0, False)
    if hub.park(request) is not _TIMED_OUT:  # a raw switch() into the sleeper: gevent raises too
        hub.run_callback(hub._drop, request)  # its timer must not wake it later, wherever it is by then
        raise AssertionError(f"Invalid switch into {current!r}: a sleep ends at its time, not at a switch()")


def joinall(greenlets: Iterable[Greenlet], timeout: float | None = None, raise_error: bool = False,
            count: int | None = None) -> list[Greenlet]:
    """Wait for all greenlets (or `count` of them) to finish, or `timeout`; return those that did.

    With raise_error, raise the first exception a greenlet dies of, as soon as it does.
    """
    greenlets = list(greenlets)
    unfinished = [g for g in greenlets if not g.ready()]
    failed = [g for g in greenlets if g.ready() and g.exception is not None]
    wanted = len(unfinished) if count is None else _index(count) - (len(greenlets) - len(unfinished))
    if unfinished and wanted > 0 and not (raise_error and failed):
        waiter, left = _Waiter(), [min(wanted, len(unfinished))]

        def on_finish(g):
            left[0] -= 1
            if g.exception is not None:
                failed.append(g)
            if not left[0] or (raise_error and failed):
                waiter()
        for g in unfinished:
            g.link(on_finish)
        try:
            waiter.wait(timeout)
        finally:
            for g in unfinished:
                g.unlink(on_finish)
    if raise_error and failed and failed[0].exception is not None:
        raise failed[0].exception.with_traceback(failed[0]._tb)
    return [g for g in greenlets if g.ready()]


def kill(greenlet_: _greenlet, exception: type[BaseException] | BaseException = GreenletExit, block: bool = True,
         timeout: float | None = None) -> None:
    """Raise `exception` in a greenlet (a Greenlet or a raw one); wait for a Greenlet to end."""
    if isinstance(greenlet_, Greenlet):
        greenlet_.kill(exception, block, timeout)
    elif not greenlet_.dead:
        hub = get_hub()
        hub.run_callback(hub._throw, greenlet_, exception)


# ---------------------------------------------------------------------------
# Coordination: events, queues, locks, pools
#
# These belong to the thread whose greenlets use them; only Event.set(),
# AsyncResult.set() and set_exception() may be called from another thread.

class _Line(_deque):
    """The greenlets (their _Waiter) and link callbacks waiting on a primitive, in arrival order.

    A change that may let some through (set, put, release) schedules wake()
    before it makes the change: a signal in between leaves at worst a wake-up
    with nothing to do. On the hub, wake() wakes the head of the line while
    may_go(); the woken greenlet runs at once and takes its item or count
    before anything else runs, so no later greenlet gets in first. A waiter
    leaves the line itself, in a finally: one killed or timed out leaves
    nothing behind, and the next in line gets what it did not take.

    Leaving costs O(1) wherever the waiter stands: one at either end is
    popped, one in the middle is only marked gone (a linear remove() made
    40,000 waiters killed newest-first take half a minute); gone ones are
    dropped as they reach an end. The line is true while a waiter is still there.
    """

    __slots__ = ("_gone",)

    def __init__(self):
        super().__init__()
        self._gone = set()  # {id(waiter)}: the waiters that left from the middle, still in the deque

    def __bool__(self):  # (not __len__: a deque's negative indices count from it)
        return _deque.__len__(self) > len(self._gone)

    def park(self, timeout, may_go, *args):
        """Wait in line until wake() lets this greenlet go; False on timeout."""
        waiter, woken, queued = _Waiter(), False, False
        try:
            self.append(waiter)
            queued = True
            woken = waiter.wait(timeout)
            return woken
        finally:
            if queued:
                self._leave(waiter)
            if not woken and self:  # interrupted: pass on a wake-up that may have been ours
                self.schedule(may_go, *args)

    def _leave(self, waiter):
        if self[-1] is waiter:
            self.pop()
        elif self[0] is waiter:
            self.popleft()
        else:
            self._gone.add(id(waiter))  # ids: a link callback may be unhashable
        self._drop_gone()

    def _drop_gone(self):
        gone = self._gone
        if gone:
            while gone and id(self[0]) in gone:
                gone.discard(id(self.popleft()))
            while gone and id(self[-1]) in gone:
                gone.discard(id(self.pop()))

    def schedule(self, may_go, *args):
        get_hub().run_callback(self.wake, may_go, *args)

    def wake(self, may_go, *args):
        """From the hub: wake the head of the line while may_go(); call a link callback with args."""
        hub = getcurrent()
        try:
            for _ in range(len(self)):  # at most once each: a woken greenlet may queue up again
                self._drop_gone()
                if not self or not may_go():
                    return
                waiter = self[0]
                if type(waiter) is not _Waiter:
                    self.popleft()  # a link callback: called once; if it fails, the line goes on
                    hub._call(waiter, *args)
                    continue
                waiter()  # its greenlet runs now, and leaves the line itself
                if self and self[0] is waiter:
                    self.popleft()  # a waiter that was gone already
        finally:  # more may go, or a signal cut this pass short: another pass (unless destroy() cut it)
            if not hub._destroyed and self and may_go():
                self.schedule(may_go, *args)


class Event:
    """A flag greenlets wait for; set(), from any thread, wakes every waiter (threading.Event's API)."""

    __slots__ = ("_flag", "_waiters", "_hub", "__weakref__")

    def __init__(self) -> None:
        self._flag, self._waiters = False, _Line()
        self._hub: Hub | None = None  # the waiters' hub, see set()

    def is_set(self) -> bool:
        """Return the flag."""
        return self._flag

    ready = is_set

    def set(self) -> None:
        """Set the flag and wake every waiter, from any thread."""
        hub = self._hub
        if hub is not None and hub._thread != _threading.get_ident():
            self._flag = True  # wait() notes its hub before it reads the flag: one of them sees the other
            hub._run_threadsafe(self._release)
        else:
            self._release()
            self._flag = True

    def _release(self):
        line = self._waiters
        if line:  # all those waiting now go, even if the flag is cleared before they run
            line.schedule(lambda: True, self)
            self._waiters = _Line()

    def clear(self) -> None:
        """Reset the flag."""
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Park until the flag is set, or `timeout` seconds pass; return the flag."""
        self._hub = get_hub()
        return self._flag or self._waiters.park(timeout, self.is_set, self) or self._flag

    def rawlink(self, callback: Callable[[Any], object]) -> None:
        """Call callback(self) from the hub once the flag is set (at once if it is); TypeError if not callable."""
        _check_callable(callback, "callback")
        self._hub = get_hub()
        if self._flag:
            self._hub.run_callback(callback, self)
        else:
            self._waiters.append(callback)

    def unlink(self, callback: Callable[[Any], object]) -> None:
        """Undo rawlink(callback)."""
        if callback in self._waiters:
            self._waiters.remove(callback)


class AsyncResult(Event):
    """A value (or exception) one greenlet sets and others wait for; g.link(result) makes it g's outcome."""

    __slots__ = ("value", "exception", "_tb")
    exception: BaseException | None
    _tb: Any
    exc_info = property(lambda self: () if self.exception is None else (type(self.exception), self.exception, self._tb),
                        doc="(type, exception, traceback) if set to an exception, else () (gevent's).")

    def __init__(self) -> None:
        super().__init__()
        self.value = self.exception = self._tb = None

    def set(self, value: Any = None) -> None:
        """Store value and wake every waiter."""
        self.value = value
        super().set()

    def set_exception(self, exception: BaseException, exc_info: tuple[Any, Any, Any] | None = None) -> None:
        """Store exception (raised by get(), with exc_info's traceback if given) and wake every waiter."""
        self.exception, self._tb = exception, exc_info[2] if exc_info else exception.__traceback__
        super().set()

    def __call__(self, source: Greenlet) -> None:
        """Take the outcome of source, a finished greenlet: its value, or its exception."""
        if source.exception is None:
            return self.set(source.value)
        self.set_exception(source.exception, source.exc_info)

    def successful(self) -> bool:
        """Return True if set with a value."""
        return self._flag and self.exception is None

    def wait(self, timeout: float | None = None) -> Any:
        """Park until set, or `timeout` seconds pass; return the value (None if unset or set to an exception)."""
        super().wait(timeout)  # gevent's AsyncResult returns the value, its Event the flag
        return self.value if self.exception is None else None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Return the value or raise the exception; raise Timeout if not set in time (at once if not block)."""
        if not (self._flag or block and Event.wait(self, timeout)):
            raise _expiry(timeout, Timeout(timeout))
        if self.exception is not None:
            raise self.exception.with_traceback(self._tb)
        return self.value

    def get_nowait(self) -> Any:
        """Return the value or raise the exception; raise Timeout if not set."""
        return self.get(block=False)

    def clear(self) -> None:
        """Forget the value and the exception."""
        self._flag, self.value, self.exception, self._tb = False, None, None, None


def _iwait(objects, timeout, count):
    objects = list(objects)
    count = len(objects) if count is None else min(count, len(objects))
    ready: _deque[_Waitable] = _deque()
    waiter = _Waiter()

    def on_ready(obj):
        ready.append(obj)
        waiter()
    linked = []  # what to unlink, however this ends (iwait([event, 5]) raises at 5)
    try:
        for obj in objects:
            obj.rawlink(on_ready)
            linked.append(obj)
        deadline = None if timeout is None else _monotonic() + _seconds(timeout)
        for _ in range(count):
            while not ready:
                if not waiter.wait(None if deadline is None else deadline - _monotonic()):
                    return
            yield ready.popleft()
    finally:
        for obj in linked:
            obj.unlink(on_ready)


class _Iwait:
    __slots__ = ("_gen",)

    def __init__(self, gen): self._gen = gen
    def __iter__(self): return self
    def __next__(self): return next(self._gen)
    def __enter__(self): return self
    def __exit__(self, *exc_info): self._gen.close()


def iwait(objects: Iterable[_Waitable], timeout: float | None = None, count: int | None = None) -> Iterator[_Waitable]:
    """Yield greenlets, events, results and semaphores as they become ready, up to `count`; stop quietly at `timeout`.

    `with iwait(...) as it:` unlinks them from it when the block ends (gevent's).
    """
    return _Iwait(_iwait(objects, timeout, count))


def wait(objects: Iterable[_Waitable] | None = None, timeout: float | None = None,
         count: int | None = None) -> list[_Waitable] | bool | None:
    """Wait for objects (see iwait) and return those ready; with none, run the hub until it runs out of work.

    With no objects, call it from the main greenlet; it returns False if `timeout` passed first.
    """
    if objects is not None:
        return list(iwait(objects, timeout, count))
    hub = get_hub()
    if getcurrent() is not hub.parent:
        raise BlockingSwitchOutError("wait() with no objects waits for the whole hub: call it from the main greenlet")
    timer = Timeout(timeout, ref=False)  # only the work the hub has left counts
    try:
        with timer:
            hub.switch()
    except LoopExit:
        return True
    except Timeout as exc:
        if exc is not timer:
            raise
        return False
    return None  # something else switched to the main greenlet


def killall(greenlets: Iterable[_greenlet], exception: type[BaseException] | BaseException = GreenletExit,
            block: bool = True, timeout: float | None = None) -> None:
    """Raise `exception` in every greenlet; unless block is False, wait up to `timeout` for them to end.

    Raises Timeout if one is still running then. From one of them: the others, then the caller at its next switch.
    """
    greenlets = list(greenlets)
    for g in greenlets:
        kill(g, exception, block=False)
    waited = [g for g in greenlets if isinstance(g, Greenlet)]
    if block and len(joinall(waited, timeout)) < len(waited):
        raise _expiry(timeout, Timeout(timeout))


class Queue:
    """A FIFO queue for one thread's greenlets: queue.Queue's API, plus peek; always true; maxsize None, 0: no limit.

    Iterating gets items until one is StopIteration (gevent's); Queue[int] is a type.
    """

    __slots__ = ("maxsize", "queue", "_getters", "_putters", "unfinished_tasks", "_all_done", "is_shutdown",
                 "__weakref__")
    __class_getitem__: Any = classmethod(_GenericAlias)

    def __init__(self, maxsize: int | None = None) -> None:
        self.maxsize, self.is_shutdown = maxsize, False
        self._init(maxsize)  # sets self.queue, as queue.Queue's (a subclass may override it)
        self._getters, self._putters = _Line(), _Line()
        self.unfinished_tasks, self._all_done = 0, Event()
        self._all_done.set()

    def _init(self, maxsize): self.queue = _deque()
    def _put(self, item): self.queue.append(item)
    def _get(self): return self.queue.popleft()
    def _peek(self): return self.queue[0]

    def qsize(self) -> int:
        """Return the number of items."""
        return len(self.queue)

    __len__, __bool__ = qsize, lambda self: True

    def empty(self) -> bool:
        """Return True if there is no item."""
        return not self.queue

    def full(self) -> bool:
        """Return True if there are maxsize items."""
        return 0 < (self.maxsize or 0) <= len(self.queue)

    def _room(self): return not self.full() or self.is_shutdown
    def _any(self): return bool(self.queue) or self.is_shutdown

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add item, parking while the queue is full; raise queue.Full past `timeout` (at once if not block)."""
        _check_timeout(block, timeout)
        if self.is_shutdown:
            raise ShutDown
        if (self.full() or block and self._putters) and not (block and self._putters.park(timeout, self._room)):
            raise _expiry(timeout, _Full())
        if self.is_shutdown:  # what woke it
            raise ShutDown
        if self._getters:
            self._getters.schedule(self._any)
        self._put(item)
        self.unfinished_tasks += 1
        self._all_done.clear()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, parking while empty; raise queue.Empty past `timeout`."""
        _check_timeout(block, timeout)
        if self.is_shutdown and not self.queue:
            raise ShutDown
        if (not self.queue or block and self._getters) and not (block and self._getters.park(timeout, self._any)):
            raise _expiry(timeout, _Empty())
        if not self.queue:  # shut down while it waited
            raise ShutDown
        if self._putters:
            self._putters.schedule(self._room)
        return self._get()

    def peek(self, block: bool = True, timeout: float | None = None) -> Any:
        """Return the next item without removing it; raise queue.Empty as get() does."""
        _check_timeout(block, timeout)
        if self.is_shutdown and not self.queue:
            raise ShutDown
        if not self.queue and not (block and self._getters.park(timeout, self._any)):
            raise _expiry(timeout, _Empty())
        if not self.queue:  # shut down while it waited
            raise ShutDown
        return self._peek()

    def put_nowait(self, item: Any) -> None:
        """Add item; raise queue.Full if the queue is full."""
        self.put(item, False)

    def get_nowait(self) -> Any:
        """Remove and return an item; raise queue.Empty if there is none."""
        return self.get(False)

    def peek_nowait(self) -> Any:
        """Return the next item; raise queue.Empty if there is none."""
        return self.peek(False)

    def task_done(self) -> None:
        """Mark one item taken by get() as processed; raise ValueError if called more than put()."""
        if self.unfinished_tasks <= 0:
            raise ValueError("task_done() called too many times")
        self.unfinished_tasks -= 1
        if not self.unfinished_tasks:
            self._all_done.set()

    def join(self, timeout: float | None = None) -> bool:
        """Park until every item put has been marked done; False if `timeout` passed first."""
        return self._all_done.wait(timeout)

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse further put()s (ShutDown); get() raises it once empty, at once if immediate (3.13's queue)."""
        self.is_shutdown = True
        if immediate:
            self.unfinished_tasks = max(self.unfinished_tasks - len(self.queue), 0)
            self.queue.clear()
            if not self.unfinished_tasks:
                self._all_done.set()
        for line, may_go in ((self._getters, self._any), (self._putters, self._room)):
            if line:
                line.schedule(may_go)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self.get()
        if item is StopIteration:
            raise StopIteration
        return item


SimpleQueue = Queue  # gevent's name for its queue without task_done(): coopsock's has both


class Channel:
    """A queue with no room (gevent's): put() parks until a get() takes its item, get() until a put() offers one."""

    __slots__ = ("_offers", "_getters", "__weakref__")
    __class_getitem__ = Queue.__class_getitem__

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize != 1:
            raise ValueError("a Channel has a maxsize of 1 (gevent's); use a Queue for room")
        self._offers: _deque[list[Any]] = _deque()  # [item, the putter's _Waiter, taken]
        self._getters = _Line()

    balance = property(lambda self: len(self._offers) - _deque.__len__(self._getters) + len(self._getters._gone),
                       doc="Putters waiting, less getters waiting.")

    def _offered(self): return bool(self._offers)

    def qsize(self) -> int:
        """Return 0: a Channel holds no item."""
        return 0

    def empty(self) -> bool:
        """Return True: a Channel holds no item."""
        return True

    def full(self) -> bool:
        """Return True: a Channel has no room."""
        return True

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Offer item and park until a get() takes it; queue.Full past `timeout` (not block: unless taken at once)."""
        _check_timeout(block, timeout)
        if not block and not self._getters:
            raise _Full
        offer = [item, _Waiter(), False]
        self._offers.append(offer)
        if self._getters:
            self._getters.schedule(self._offered)
        try:  # not block: the getters woken run first, then this one learns whether one took it
            offer[1].wait(timeout) if block else offer[1]._park(get_hub(), 0)
        finally:
            if not offer[2]:
                self._offers.remove(offer)
        if not offer[2]:
            raise _expiry(timeout, _Full())

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take an offered item, parking until one is; queue.Empty past `timeout` (at once if not block)."""
        _check_timeout(block, timeout)
        if (not self._offers or block and self._getters) and not (block and self._getters.park(timeout, self._offered)):
            raise _expiry(timeout, _Empty())
        offer = self._offers.popleft()
        offer[2] = True
        offer[1]()
        return offer[0]

    def put_nowait(self, item: Any) -> None:
        """Hand item to a getter waiting; queue.Full if none is."""
        self.put(item, False)

    def get_nowait(self) -> Any:
        """Take an item a putter offers; queue.Empty if none does."""
        return self.get(False)

    __iter__, __next__ = Queue.__iter__, Queue.__next__


class LifoQueue(Queue):
    """A queue that returns the newest item first."""

    __slots__ = ()

    def _init(self, maxsize): self.queue = []
    def _get(self): return self.queue.pop()
    def _peek(self): return self.queue[-1]


class PriorityQueue(Queue):
    """A queue that returns the smallest item first (heapq order, as queue.PriorityQueue)."""

    __slots__ = ()

    def _init(self, maxsize): self.queue = []
    def _put(self, item): _heappush(self.queue, item)
    def _get(self): return _heappop(self.queue)


class Semaphore:
    """A counter one thread's greenlets take from and give back (threading.Semaphore's API, plus locked())."""

    __slots__ = ("counter", "_waiters", "_bound", "__weakref__")
    _overflow: tuple[type[Exception], str] = (ValueError, "Semaphore released too many times")
    _bounded = False

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self.counter, self._waiters = value, _Line()
        self._bound = value if self._bounded else None  # release() raises _overflow past it

    def locked(self) -> bool:
        """Return True if acquire() would park."""
        return self.counter <= 0

    def _free(self): return self.counter > 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one, parking in line while there is none; False if `timeout` passes first (ValueError: not blocking)."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        if (self.counter <= 0 or blocking and self._waiters) and not (
                blocking and self._waiters.park(timeout, self._free, self)):
            return False
        self.counter -= 1
        return True

    def wait(self, timeout: float | None = None) -> int:
        """Park until acquire() would not, or `timeout` passes; return the counter."""
        if self.counter <= 0 or self._waiters:
            self._waiters.park(timeout, self._free, self)
        return self.counter

    def release(self) -> None:
        """Give one back, waking the first in line."""
        if self._bound is not None and self.counter >= self._bound:
            raise self._overflow[0](self._overflow[1])
        if self._waiters:
            self._waiters.schedule(self._free, self)
        self.counter += 1

    __enter__ = acquire

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def rawlink(self, callback: Callable[[Semaphore], object]) -> None:
        """Call callback(self) from the hub when acquire() would not park, in line with the greenlets (gevent's)."""
        _check_callable(callback, "callback")
        self._waiters.append(callback)
        if self._free():
            self._waiters.schedule(self._free, self)

    def unlink(self, callback: Callable[[Semaphore], object]) -> None:
        """Undo rawlink(callback)."""
        if callback in self._waiters:
            self._waiters.remove(callback)


class BoundedSemaphore(Semaphore):
    """A Semaphore that raises ValueError when released more often than acquired."""

    __slots__ = ()
    _bounded = True


class Lock(BoundedSemaphore):
    """A lock for one thread's greenlets (threading.Lock's API); release() of an unlocked lock raises RuntimeError."""

    __slots__ = ()
    _overflow = (RuntimeError, "release unlocked lock")

    def __init__(self) -> None:
        super().__init__(1)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:  # type: ignore[override]  # -1, not None
        """Take the lock, parking in line while held; False if `timeout` (-1: none) passed first."""
        return super().acquire(blocking, _lock_timeout(blocking, timeout))


def _current():
    """getcurrent(), or the thread's Thread once greenlet is being finalized at exit (logging's
    lock is taken then, by a handler's weakref callback: only plain code runs by that time)."""
    try:
        return getcurrent()
    except RuntimeError:
        return _threading.current_thread()


class RLock:
    """A lock the greenlet holding it may take again (threading.RLock's API), for one thread's greenlets."""

    __slots__ = ("_lock", "_owner", "_count", "__weakref__")

    def __init__(self) -> None:
        self._lock, self._count = Lock(), 0
        self._owner: _greenlet | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, if this greenlet holds it); False if `timeout` (-1: none) passed first."""
        timeout, me = _lock_timeout(blocking, timeout), _current()
        if self._owner is me:
            self._count += 1
            return True
        if not Semaphore.acquire(self._lock, blocking, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        """Undo one acquire(); raise RuntimeError if this greenlet does not hold the lock."""
        if self._owner is not _current():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._lock.release()

    def locked(self) -> bool:
        """Return True if some greenlet holds the lock."""
        return self._lock.locked()

    __enter__, __exit__ = acquire, Semaphore.__exit__


class _PoolResults:
    """Pool.imap's iterator: a feeder greenlet spawns the calls, next() takes their outcomes.

    The feeder holds nothing of the iterator: one dropped before its end is
    collected, and stops the feeder.
    """

    def __init__(self, pool, func, iterables, ordered, maxsize):
        self._out = Queue()  # ordered: the greenlets in spawn order; unordered: as they finish; the feeder last
        self._room = Semaphore(_index(maxsize)) if maxsize else None  # 0: no bound, as gevent's
        self._spawned, self._done, self._total = [0], 0, None
        self._feeder = Greenlet(self._feed, pool, func, iterables, ordered, self._out, self._room, self._spawned)
        self._feeder.link(self._out.put)
        self._feeder.start()

    @staticmethod
    def _feed(pool, func, iterables, ordered, out, room, spawned):  # parks while the pool is full, not next()
        for args in zip(*iterables):
            if room is not None:
                room.acquire()
            g = pool.spawn(func, *args)
            spawned[0] += 1
            out.put(g) if ordered else g.link(out.put)

    def __iter__(self):
        return self

    def __next__(self):
        while self._total is None or self._done < self._total:
            g = self._out.get()
            if g is self._feeder:
                self._total = self._spawned[0]
                g.get()  # raises what the iterable raised
                continue
            self._done += 1
            if self._room is not None:
                self._room.release()
            return g.get()  # ordered: raises at the failing call's index
        raise StopIteration

    def close(self):
        """Spawn no more (as a generator's close(): the calls running go on)."""
        self._feeder.kill(block=False)

    __del__ = close  # dropped before the end


class Pool:
    """One thread's greenlets spawned through it, at most `size` (None: no limit) at once, to join or kill together."""

    def __init__(self, size: int | None = None) -> None:
        # 0, as gevent's: nothing runs, for a program that checks free_count() or wait_available(timeout) first
        if size is not None and _index(size) < 0:  # TypeError for 1.5 or "2", as range() gives
            raise ValueError(f"Pool size must be a non-negative integer or None, not {size!r}")
        self.size, self._slots = size, None if size is None else Semaphore(size)
        self.greenlets: set[Greenlet] = set()
        self._empty = Event()
        self._empty.set()

    def __len__(self): return len(self.greenlets)
    def __iter__(self): return iter(list(self.greenlets))
    def __contains__(self, g): return g in self.greenlets

    def add(self, g: Greenlet, blocking: bool = True, timeout: float | None = None) -> None:
        """Track greenlet g until it finishes, parking while the pool is full; PoolFull if not block or past timeout."""
        if g in self.greenlets or g.ready():
            return
        if self._slots is not None:
            if not self._slots.acquire(blocking, timeout if blocking else None):
                raise PoolFull
            if g.ready():  # it finished while we waited
                return self._slots.release()
        self.greenlets.add(g)
        self._empty.clear()
        g.link(self._discard)

    def discard(self, g: Greenlet) -> None:
        """Stop tracking greenlet g."""
        g.unlink(self._discard)
        self._discard(g)

    def _discard(self, g):
        if g in self.greenlets:
            self.greenlets.discard(g)
            if self._slots is not None:
                self._slots.release()
            if not self.greenlets:
                self._empty.set()

    def spawn(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Greenlet:
        """Start func(*args, **kwargs) in a greenlet of this group (parking while a pool is full).

        Raises TypeError if func is not callable (None too: a pool runs functions).
        """
        _check_callable(func)
        g = Greenlet(func, *args, **kwargs)
        self.add(g)
        g.start()
        return g

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> _T:
        """Return func(*args, **kwds) run in the group (directly if called from one of its greenlets)."""
        if _current() in self.greenlets:
            return func(*args, **(kwds or {}))
        return self.spawn(func, *args, **(kwds or {})).get()

    def map(self, func: Callable[[Any], _T], iterable: Iterable[Any]) -> list[_T]:
        """Return [func(x) for x in iterable], run in the group's greenlets; raise what a call raises."""
        _check_callable(func)
        results = _PoolResults(self, func, (iterable,), True, None)
        try:
            return list(results)
        finally:  # a call failed: spawn no more (the exception's traceback may keep the iterator alive)
            results.close()

    def apply_cb(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None,
                 callback: Callable[[_T], object] | None = None) -> _T:
        """apply(), then callback(result) if given and the call succeeded; return the result."""
        result = self.apply(func, args, kwds)
        if callback is not None:
            spawn(callback, result)
        return result

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], object] | None = None) -> Greenlet:
        """Start func(*args, **kwds) in the group, without parking; return its greenlet (callback(result) after).

        On a full pool, the greenlet returned is one that waits for room, then calls apply_cb().
        """
        _check_callable(func)
        if self.full():
            return spawn(self.apply_cb, func, args, kwds, callback)
        g = self.spawn(func, *args, **(kwds or {}))
        if callback is not None:
            g.link_value(lambda done: spawn(callback, done.value))
        return g

    def map_cb(self, func: Callable[[Any], _T], iterable: Iterable[Any],
               callback: Callable[[list[_T]], object] | None = None) -> list[_T]:
        """map(), then callback(results) if given and every call succeeded; return the results."""
        results = self.map(func, iterable)
        if callback is not None:
            callback(results)
        return results

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  callback: Callable[[list[Any]], object] | None = None) -> Greenlet:
        """Return at once a greenlet running map_cb(); its get() gives the results."""
        _check_callable(func)
        return spawn(self.map_cb, func, iterable, callback)

    def imap(self, func: Callable[..., _T], *iterables: Iterable[Any], maxsize: int | None = None) -> Iterator[_T]:
        """Yield func(*args) for args in zip(*iterables) in order, computed concurrently.

        A call's exception is raised at its turn; the next next() goes on with
        the rest, as multiprocessing's. maxsize bounds the results computed
        ahead of the consumer (None: the pool's size bounds only the calls running).
        """
        _check_callable(func)  # now, not at the first next()
        return _PoolResults(self, func, iterables, True, maxsize)

    def imap_unordered(self, func: Callable[..., _T], *iterables: Iterable[Any],
                       maxsize: int | None = None) -> Iterator[_T]:
        """Yield func(*args) for args in zip(*iterables) as each finishes; as imap() otherwise."""
        _check_callable(func)
        return _PoolResults(self, func, iterables, False, maxsize)

    def join(self, timeout: float | None = None, raise_error: bool = False) -> bool:
        """Wait until the group is empty (True) or `timeout` passes (False); raise_error: raise the first failure."""
        timer = Timeout.start_new(timeout, False)  # a Timeout given is started as is (gevent's habit)
        try:
            if raise_error:
                joinall(self.greenlets, raise_error=True)
            self._empty.wait()
        except Timeout as exc:
            if exc is not timer:
                raise
        finally:
            timer.cancel()
        return not self.greenlets

    def kill(self, exception: type[BaseException] | BaseException = GreenletExit, block: bool = True,
             timeout: float | None = None) -> None:
        """Raise `exception` in every greenlet of the group; unless block is False, wait up to `timeout`."""
        killall(self.greenlets, exception, block=False)
        if block:
            self.join(timeout)

    def full(self) -> bool:
        """Return True if spawn() would park."""
        return self._slots is not None and self._slots.locked()

    def free_count(self) -> int:
        """Return how many more greenlets could start at once (1 with no limit, as in gevent)."""
        return 1 if self._slots is None else self._slots.counter

    def wait_available(self, timeout: float | None = None) -> int:
        """Park until spawn() would not, or `timeout` passes; return free_count()."""
        if self._slots is not None:
            self._slots.wait(timeout)
        return self.free_count()


class Group(Pool):
    """A Pool without a size limit; Group(greenlets) starts with those (gevent's)."""

    def __init__(self, greenlets: Iterable[Greenlet] = ()) -> None:
        super().__init__()
        for g in greenlets:
            self.add(g)


# ---------------------------------------------------------------------------
# Threads: locks that park greenlets and block threads; the thread pool
#
# What patch(threading=True) installs. Threads stay OS threads (that is how a
# blocking C call leaves the hub); the locks are theirs and the greenlets'
# alike. A lock's state is a real lock's, so a thread blocks on it as on
# threading.Lock; a greenlet of a thread with a hub that would have to wait
# instead queues its request in the lock's line, tries once more (a release
# in between sees it queued), and parks. release(), from any thread, takes
# the head of the line and wakes it through its hub; the woken greenlet tries
# again. Like the real lock, this one is not handed over: a newcomer may take
# it first, and the loser queues again. A greenlet that leaves the line
# without the lock (timed out, killed) after a release picked it passes the
# wake-up on. Condition, and through it everything threading and queue build
# (Semaphore, Event, Barrier, Queue, concurrent.futures), waits on these locks.
# A greenlet parked on one keeps the hub polling: any thread may release it.

_NOT_FROM_HUB_LOCK = ("the hub cannot wait for a lock a greenlet of its own thread holds: it would wait for "
                      "ever; take the lock in a spawned greenlet, not in a hub callback")
_ABORTED = object()  # a wait an exception ended
_MISSING = object()  # an attribute that is not there


class _ThreadLock:
    """threading.Lock for threads and greenlets: a greenlet that must wait parks, a thread blocks."""

    __slots__ = ("_lock", "_line", "_holder", "__weakref__")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._line: _deque[tuple[Hub, tuple[Any, ...]]] = _deque()  # (hub, request) of parked greenlets
        # The thread that took it last, which the hub must not wait for if it is
        # its own: an id, not a greenlet (one of a thread that has ended, kept
        # here, crashed a later garbage collection).
        self._holder = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; park (a greenlet) or block (a thread) while it is held; False past `timeout`."""
        if blocking is not True or timeout != -1:
            timeout = _lock_timeout(blocking, timeout)  # (the stdlib checks them, taken or not)
        if self._lock.acquire(False):
            self._holder = _get_ident()
            return True
        if not blocking:
            return False
        hub, current = _local.__dict__.get("hub"), _current()
        if hub is None or current is hub:  # a thread, or the hub: only blocking is left
            if hub is not None and self._holder == _get_ident():
                raise BlockingSwitchOutError(_NOT_FROM_HUB_LOCK)
            taken = self._lock.acquire(True, -1 if timeout in (None, -1) else timeout)
        else:
            taken = self._park(hub, current, None if timeout in (None, -1) else _monotonic() + timeout)
        if taken:
            self._holder = _get_ident()
        return taken

    def _park(self, hub, current, deadline):
        while True:
            request = (_PARK, current, _THREAD, 0, deadline, False)
            place, woken = (hub, request), _ABORTED
            try:
                self._line.append(place)  # queued first: a release() from now on sees it
                woken = True if self._lock.acquire(False) else hub.park(request)
            finally:
                try:
                    self._line.remove(place)
                except ValueError:  # (or never queued) a release() took it to wake us: leaving without the lock,
                    # pass that on
                    if woken is _ABORTED or woken is _TIMED_OUT:
                        self._wake_next()
            if woken is True or woken is _TIMED_OUT:
                return woken is True

    def _wake_next(self):  # from any thread
        while True:
            try:
                hub, request = self._line.popleft()
            except IndexError:
                return
            if hub._wake_soon(request):
                return  # (else a waiter whose hub is gone: its thread ended, or this is a forked child)

    def release(self) -> None:
        """Free the lock (from any thread or greenlet); RuntimeError if it is not held."""
        self._holder = 0  # before: the hub must never see its own thread's id once another thread holds it
        self._lock.release()
        if self._line:
            self._wake_next()

    def locked(self) -> bool:
        """Return True if the lock is held."""
        return self._lock.locked()

    def _at_fork_reinit(self):  # threading and logging call it in a forked child
        self._lock, self._line = _allocate_lock(), _deque()

    __enter__ = acquire

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self):
        return f"<{'locked' if self.locked() else 'unlocked'} coopsock._ThreadLock object at {id(self):#x}>"


class _ThreadRLock(RLock):
    """threading.RLock for threads and greenlets: the greenlet that holds it may take it again."""

    __slots__ = ()

    def __init__(self) -> None:
        self._lock, self._count = _ThreadLock(), 0  # type: ignore[assignment]
        self._owner: _greenlet | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, if this greenlet holds it); False if `timeout` passed first."""
        if blocking is not True or timeout != -1:
            _lock_timeout(blocking, timeout)
        me = _current()
        if self._owner is me:
            self._count += 1
            return True
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    __enter__ = acquire  # (release, __exit__ and locked are RLock's)

    # What Condition uses to let go of the lock while it waits, however often it is held.
    def _is_owned(self):
        return self._owner is _current()

    def _recursion_count(self):
        return self._count if self._owner is _current() else 0

    def _release_save(self):
        if self._owner is not _current():
            raise RuntimeError("cannot release un-acquired lock")
        count, self._owner, self._count = self._count, None, 0
        self._lock.release()
        return count

    def _acquire_restore(self, count):
        self._lock.acquire()
        self._owner, self._count = _current(), count

    def _at_fork_reinit(self):
        self._lock._at_fork_reinit()
        self._owner, self._count = None, 0

    def __repr__(self):
        return f"<coopsock._ThreadRLock owner={self._owner!r} count={self._count} at {id(self):#x}>"


def _rebound(func, namespace):
    """A copy of the stdlib's func whose global names are looked up in namespace (coopsock's in place of some)."""
    from types import FunctionType

    copy = FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__, copy.__doc__, copy.__qualname__ = func.__kwdefaults__, func.__doc__, func.__qualname__
    return copy


class _ThreadCondition(_threading.Condition):
    """threading.Condition, waiting on the locks above; a kill or a Timeout cannot leave it without its lock."""

    def wait(self, timeout: float | None = None) -> bool:
        """Let go of the lock until notify(), or `timeout` seconds; take it back; return False on timeout.

        The lock is taken back whatever lands meanwhile (a kill, a Timeout: raised once it is back), and
        a notify() that chose this waiter as it left goes to the next one.
        """
        if not self._is_owned():  # type: ignore[attr-defined]  # (typeshed lacks the private protocol)
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _ThreadLock()
        waiter.acquire()
        waiter._holder = 0  # the notifier releases it, maybe another thread: the hub may block on it
        self._waiters.append(waiter)  # type: ignore[attr-defined]
        state = self._release_save()  # type: ignore[attr-defined]
        try:
            notified = (waiter.acquire() if timeout is None else waiter.acquire(True, timeout) if timeout > 0
                        else waiter.acquire(False))
        except BaseException:
            self._take_back(state, waiter)
            raise
        landed = self._take_back(state, None if notified else waiter)
        if landed is not None:
            raise landed
        return notified

    def _take_back(self, state, waiter):
        """Take the lock back, whatever lands meanwhile; return what landed. waiter: one that was not notified."""
        landed = None
        while True:
            try:
                self._acquire_restore(state)
                break
            except BaseException as exc:
                landed = exc
        if waiter is not None:
            try:
                self._waiters.remove(waiter)
            except ValueError:  # notify() chose it as it left: the next one goes instead
                self.notify()
        return landed


class local:
    """threading.local, with attributes of each greenlet's own (patch(threading=True) installs it).

    As threading.local: a subclass's __init__ runs again, with the
    constructor's arguments, in each greenlet that first uses the object.
    """

    __slots__ = ("_local__dicts", "_local__args", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if (args or kwargs) and cls.__init__ is object.__init__:
            raise TypeError("Initialization arguments are not supported")
        self = object.__new__(cls)
        object.__setattr__(self, "_local__dicts", {})  # {id(greenlet): (weak reference to it, its dict)}
        object.__setattr__(self, "_local__args", None)  # the creator's own dict needs no __init__ call
        _local_dict(self)
        object.__setattr__(self, "_local__args", (args, kwargs))
        return self

    def __getattribute__(self, name: str) -> Any:
        if name in ("__class__", "_local__dicts", "_local__args"):
            return object.__getattribute__(self, name)
        mine = _local_dict(self)
        if name == "__dict__":
            return mine
        cls = type(self)
        found = next((base.__dict__[name] for base in cls.__mro__ if name in base.__dict__), _MISSING)
        kind = type(found)
        if hasattr(kind, "__get__") and (hasattr(kind, "__set__") or hasattr(kind, "__delete__")):
            return kind.__get__(found, self, cls)  # a property or slot: before the instance's own, as Python looks up
        if name in mine:
            return mine[name]
        if found is not _MISSING:
            return kind.__get__(found, self, cls) if hasattr(kind, "__get__") else found
        getattr_ = next((base.__dict__["__getattr__"] for base in cls.__mro__ if "__getattr__" in base.__dict__), None)
        if getattr_ is not None:
            return getattr_(self, name)
        raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "__dict__":
            raise AttributeError(f"{type(self).__name__!r} object attribute '__dict__' is read-only")
        found = next((base.__dict__[name] for base in type(self).__mro__ if name in base.__dict__), None)
        setter = getattr(type(found), "__set__", None)
        if setter is not None:
            setter(found, self, value)
        else:
            _local_dict(self)[name] = value

    def __delattr__(self, name: str) -> None:
        found = next((base.__dict__[name] for base in type(self).__mro__ if name in base.__dict__), None)
        deleter = getattr(type(found), "__delete__", None)
        if deleter is not None:
            deleter(found, self)
            return
        try:
            del _local_dict(self)[name]
        except KeyError:
            raise AttributeError(name) from None


def _local_dict(local_):
    """The current greenlet's dict of local_ (made on its first use, running the subclass's __init__)."""
    dicts, current = object.__getattribute__(local_, "_local__dicts"), getcurrent()
    key = id(current)
    entry = dicts.get(key)
    if entry is not None and entry[0]() is current:
        return entry[1]
    mine: dict[str, Any] = {}
    # The greenlet's end drops its dict (ids are reused only after it).
    dicts[key] = (_weakref(current, lambda _, dicts=dicts, key=key: dicts.pop(key, None)), mine)
    args = object.__getattribute__(local_, "_local__args")
    if args is not None and type(local_).__init__ is not object.__init__:
        type(local_).__init__(local_, *args[0], **args[1])
    return mine


_std_join = _threading.Thread.join
_joining: dict[tuple[_threading.Thread, Hub | None], AsyncResult] = {}  # {(thread, hub): a helper thread's join of it}


def _join(thread: _threading.Thread, timeout: float | None = None) -> None:
    """threading.Thread.join under patch(threading=True): a greenlet parks while a helper thread joins.

    One helper joins a thread for all the greenlets of a hub that wait for
    it, however many give up (two joins at once race in threading's code).
    """
    hub = _local.__dict__.get("hub")
    key = (thread, hub)
    if key not in _joining:
        _std_join(thread, 0)  # the stdlib's checks (not started, the current thread); at once if it has ended
        if not thread.is_alive() or hub is None or getcurrent() is hub:
            return _std_join(thread, timeout)
        _joining[key] = joined = _helpers.spawn(_std_join, thread)  # its own thread: as long as the thread lives
        joined.rawlink(lambda _: _joining.pop(key, None))
    _joining[key].wait(timeout)


# The thread pool. A job is queued with what is to be done with its outcome;
# threads start as jobs come, up to maxsize; a thread idle for `idle`
# seconds exits, so a program that resolved one name once keeps no thread.
# The pool's lock and conditions are the ones above: its threads block on
# them, the greenlets that queue jobs or join() park on them.

_pools: _WeakSet[ThreadPool] = _WeakSet()  # for the fork hook


class ThreadPool:
    """Real threads for blocking calls (C extensions, file I/O, CPU work) while the calling greenlet parks.

    gevent's ThreadPool API: spawn() returns an AsyncResult; apply(), map(),
    imap() and imap_unordered() park the caller. maxsize None: no limit.
    """

    def __init__(self, maxsize: int | None, idle: float = 1.0, name: str = "coopsock-threadpool") -> None:
        if maxsize is not None and _index(maxsize) < 1:
            raise ValueError(f"ThreadPool maxsize must be a positive integer or None, not {maxsize!r}")
        _pools.add(self)
        self.maxsize, self.idle, self.name = maxsize, _seconds(idle), name
        self._reset()

    def _reset(self):
        self._lock = _ThreadLock()
        self._work, self._done = _ThreadCondition(self._lock), _ThreadCondition(self._lock)
        self._jobs: _deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Callable[..., Any]]] = _deque()
        self._threads = self._idle_threads = self._unfinished = 0

    @property
    def size(self) -> int:
        """The number of threads running (each busy, or idle until it exits)."""
        return self._threads

    def _submit(self, func, args, kwargs, finish):
        """Queue func(*args, **kwargs); a thread calls finish(ok, value) with its outcome."""
        job, start = (func, args, kwargs, finish), False
        with self._lock:
            self._jobs.append(job)
            self._unfinished += 1
            if self._idle_threads >= len(self._jobs):
                self._work.notify()
            elif self.maxsize is None or self._threads < self.maxsize:
                self._threads, start = self._threads + 1, True
        if start:
            try:
                _threading.Thread(target=self._worker, name=self.name, daemon=True).start()
            except BaseException:  # no thread (RuntimeError: can't start new thread): no job either
                with self._lock:
                    self._threads -= 1
                    if job in self._jobs:
                        self._jobs.remove(job)
                        self._unfinished -= 1
                raise

    def _worker(self):
        with self._lock:
            while True:
                if self._jobs:
                    func, args, kwargs, finish = self._jobs.popleft()
                    self._lock.release()
                    try:
                        try:
                            outcome = (True, func(*args, **kwargs))
                        except BaseException as exc:
                            outcome = (False, exc)
                        finish(*outcome)
                    finally:
                        self._lock.acquire()
                        self._unfinished -= 1
                        if not self._unfinished:
                            self._done.notify_all()
                    continue
                self._idle_threads += 1
                woken = self._work.wait(self.idle)
                self._idle_threads -= 1
                if not woken and not self._jobs:
                    self._threads -= 1
                    return

    def spawn(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> AsyncResult:
        """Run func(*args, **kwargs) in a thread; return an AsyncResult of its outcome (the hub waits for it)."""
        _check_callable(func)
        hub, result = get_hub(), AsyncResult()

        def settle(ok, value):  # in the hub
            hub._lent -= 1
            (result.set if ok else result.set_exception)(value)
        hub._lent += 1
        try:
            self._submit(func, args, kwargs, lambda ok, value: hub._run_threadsafe(settle, ok, value))
        except BaseException:  # not queued (no thread to start; killed while the pool's lock was held)
            hub._lent -= 1
            raise
        return result

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> _T:
        """Run func(*args, **kwds) in a thread and return its result (or raise its exception); the caller parks."""
        _check_callable(func)
        hub, current, outcome = get_hub(), getcurrent(), []
        if current is hub:
            raise BlockingSwitchOutError(_NOT_FROM_HUB)
        request = (_PARK, current, _THREAD, 0, None, False)

        def finish(ok, value):  # in the thread
            outcome.append((ok, value))
            hub._run_threadsafe(hub._wake, request)  # dropped if the hub is gone; a no-op if the wait ended
        self._submit(func, tuple(args), kwds or {}, finish)  # (which may park: the job may be done already)
        if not outcome:
            hub.park(request)
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def imap(self, func: Callable[..., _T], *iterables: Iterable[Any]) -> Iterator[_T]:
        """Yield func(*items) for the items of iterables, in order, computed in the pool's threads."""
        _check_callable(func)
        results = [self.spawn(func, *items) for items in zip(*iterables)]
        return (result.get() for result in results)

    def imap_unordered(self, func: Callable[..., _T], *iterables: Iterable[Any]) -> Iterator[_T]:
        """As imap(), in the order the results come."""
        _check_callable(func)
        results = [self.spawn(func, *items) for items in zip(*iterables)]
        return (result.get() for result in iwait(results))

    def map(self, func: Callable[..., _T], iterable: Iterable[Any]) -> list[_T]:
        """Return [func(item) for item in iterable], computed in the pool's threads."""
        return list(self.imap(func, iterable))

    def join(self, timeout: float | None = None) -> bool:
        """Park until every job queued has finished; False if `timeout` seconds passed first."""
        with self._lock:
            return self._done.wait_for(lambda: not self._unfinished, timeout)

    def kill(self) -> None:
        """Drop the jobs no thread has started (their results raise GreenletExit); running ones finish."""
        with self._lock:
            dropped, self._jobs = self._jobs, _deque()
            self._unfinished -= len(dropped)
            if not self._unfinished:
                self._done.notify_all()
        for _, _, _, finish in dropped:
            finish(False, GreenletExit())

    def __repr__(self):
        return f"<ThreadPool size={self._threads} maxsize={self.maxsize} jobs={len(self._jobs)} at {id(self):#x}>"


def _pools_after_fork_in_child():
    for pool in list(_pools):
        pool._reset()  # its threads did not survive the fork
    _joining.clear()


_os.register_at_fork(after_in_child=_pools_after_fork_in_child)
_LOOKUPS_THREADS = 8  # name lookups at once: more queue (a resolver's own limit is usually lower)
_resolver = ThreadPool(_LOOKUPS_THREADS, name="coopsock-resolver")  # Hub.threadpool
_helpers = ThreadPool(None, name="coopsock-helper")  # each waits as long as what it waits for: a join, a child


# ---------------------------------------------------------------------------
# The cooperative socket
#
# The real socket underneath is always non-blocking; the timeout the user set
# lives in _timeout. Every blocking call first tries the system call, and only
# on EWOULDBLOCK parks on the socket's read or write watcher (created once per
# socket, so the hot path creates no objects) and retries.
#
# How an fd closes, and how the hub hears of it first. A watcher left started
# on a closed fd makes libev abort (EBADF in epoll_ctl) at the next change it
# makes for that fd, or when it re-arms every fd after a stale event; a reused
# number would get the old file's events. So every path follows trio's
# notify_closing protocol: the socket drops its entry, tells the hub
# (_forget_fd: the hub stops the fd's watchers now and wakes its waiters with
# EBADF on its next pass), and only then closes the fd:
#   close(), and so `with`: _real_close().
#   detach(): the hub lets go as above; whoever owns the fd next closes it,
#     through its own close path (a coopsock socket) or unwatched (any other).
#   dropped unclosed, or collected in a cycle: __del__ does what close()
#     does (without it, the C finalizer of _socket.socket closed the fd behind
#     the hub's back).
#   an SSLSocket: ssl's _create() detaches the plain socket (above), and the
#     SSLSocket owns the fd; a handshake it cannot finish closes it whatever
#     the exception (SSLSocket._create); then close() and __del__ as above.
#   create_connection(): an attempt cut short by any exception closes its socket.
#   fromfd(), dup(), accept(): each is a new fd of its own, with an entry of
#     its own; closing one leaves the others watched.
#   another thread's close(): the hub hears through _run_threadsafe, after
#     the fd has closed (a window the hub must close itself).
#   os.close() of a socket's fd: the user's bug (gevent's and trio's words);
#     the hub cannot hear of it, and must check the fd itself before it watches.

_CONNECT_AGAIN = (_errno.EINPROGRESS, _errno.EALREADY, _errno.EAGAIN, _errno.EINTR)


def _wait_before(hub, entry, events, deadline):
    # Checked before each wait of a retry loop: a watcher that keeps firing
    # spuriously would otherwise outrun the deadline's timer for ever.
    if deadline is not None and deadline <= _monotonic():
        raise _timed_out("timed out")
    hub.wait(entry, events, deadline)


def _class_getattr(cls, name):  # the gevent habit: `from coopsock import socket` is a class, not a module
    if not name.startswith("_") and name in globals():
        raise AttributeError(f"coopsock.socket is the socket class, not a module: use coopsock.{name}, "
                             f"or `import coopsock as socket`")
    raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")


# (set by setattr: a type checker that saw a metaclass __getattr__ would take
# every attribute of coopsock.socket for Any, typos included)
class _SocketClass(type):
    pass


setattr(_SocketClass, "__getattr__", _class_getattr)  # noqa: B010

_sock_recv, _sock_send = _socket.socket.recv, _socket.socket.send  # (bound once, as _switch)


class socket(_stdsocket.socket, metaclass=_SocketClass):
    """The stdlib socket, cooperative: a blocking call parks only the calling greenlet."""

    __slots__ = ("_timeout", "_hub", "_entry", "_drained")

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        self._timeout = _socket.socket.gettimeout(self)  # 0.0 with SOCK_NONBLOCK, as the stdlib's
        _socket.socket.settimeout(self, 0.0)
        self._hub = self._entry = None  # the hub that waits on this fd, and its entry for it
        self._drained = False if _socket.socket.type.__get__(self) == _socket.SOCK_STREAM else None  # see recv

    # -- timeouts -----------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        """Set the timeout of blocking calls: None blocks, 0 never does, t > 0 raises TimeoutError."""
        # The fd stays non-blocking, and the C timeout 0, throughout: forked
        # workers share a listener's mode (another's accept() in an instant of
        # blocking mode blocked its whole hub), and a signal landing between
        # two calls could leave them otherwise. So the stdlib is asked on a
        # socket without an fd, as setblocking() does.
        if _socket.socket.fileno(self) < 0:
            _socket.socket.settimeout(self, value)  # closed: the stdlib's OSError
        self._timeout = _asked_timeout(_socket.socket.settimeout, value)
        if self._drained:  # it holds only without a timeout
            self._drained = False

    def gettimeout(self) -> float | None:
        """Return the timeout in seconds, or None."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """setblocking(True) is settimeout(None); setblocking(False) is settimeout(0)."""
        self.settimeout(_asked_timeout(_socket.socket.setblocking, flag))

    def getblocking(self) -> bool:
        """Return False only if the socket is non-blocking (timeout 0)."""
        return self._timeout != 0.0

    # -- waiting ------------------------------------------------------------

    def _deadline(self):
        return None if self._timeout is None else _monotonic() + self._timeout

    def _wait(self, events, deadline):
        """Park until the fd is ready for `events`; TimeoutError past `deadline`."""
        hub, entry = self._hub_entry()
        _wait_before(hub, entry, events, deadline)

    def _hub_entry(self):
        """Return this thread's hub and its entry for this socket's fd."""
        hub = _local.__dict__.get("hub") or get_hub()
        if self._hub is not hub:
            self._register(hub)
        return hub, self._entry

    def _register(self, hub):
        fd = _socket.socket.fileno(self)
        if fd < 0:
            raise OSError(_errno.EBADF, "Bad file descriptor")
        if self._hub is not None:  # the socket moved to another thread: its old hub lets go
            self._forget_fd()
        self._entry, self._hub = hub._entry(fd, _weakref(self)), hub

    def _forget_fd(self):
        # Stop the watchers before the fd closes (libev must never see a closed fd)
        # and wake the waiters with EBADF, in the hub's own thread.
        hub, entry = self._hub, self._entry
        if hub is None:  # it never waited; a wait_read() on its fd may
            hub = getattr(_local, "hub", None)
            entry = hub._fds.get(_socket.socket.fileno(self)) if hub is not None else None
            if entry is None:
                return
        self._hub = self._entry = None
        if hub._thread == _threading.get_ident():
            hub._notify_closing(entry)
        else:
            hub._run_threadsafe(hub._notify_closing, entry)

    def _real_close(self, _ss=_socket.socket):
        self._forget_fd()
        _ss.close(self)

    def __del__(self, _ss=_socket.socket):
        # Dropped unclosed, or half-made (an SSLSocket whose creation a kill
        # cut short): the C finalizer would close the fd behind the hub's
        # back. A __del__ replaces it, so this one warns as it does, then
        # closes as close() does: the hub lets go of the fd first.
        if _ss.fileno(self) >= 0:
            try:
                _warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
            finally:
                try:
                    self._forget_fd()
                finally:
                    try:
                        _ss.close(self)
                    except OSError:  # closed under it already (os.close): as the C finalizer, say nothing
                        pass

    def detach(self) -> int:
        """Stop waiting on the fd and return it, leaving it open."""
        self._forget_fd()
        return super().detach()

    def shutdown(self, how: int) -> None:
        """Shut down one or both directions; greenlets waiting on them get EBADF (as in gevent)."""
        super().shutdown(how)
        hub, entry = self._hub, self._entry
        if hub is not None and hub._thread == _threading.get_ident():
            for i, shut in enumerate((how != _socket.SHUT_WR, how != _socket.SHUT_RD)):
                if shut and (entry.users[i] is not None or entry.waiters[i]):
                    hub._stop_watching(entry, i)  # so that the fd becoming ready cannot wake them first
                    hub.run_callback(hub._wake_closed, entry, (i,))

    # -- the blocking calls ---------------------------------------------------

    def accept(self) -> tuple[socket, Any]:
        """Wait for a connection; return (socket, address)."""
        fd, address = self._retry(_socket.socket._accept, _EV_READ)  # type: ignore[attr-defined]  # not in typeshed
        return socket(self.family, self.type, self.proto, fileno=fd), address

    def _retry(self, call, events, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        return self._wait_and_retry(call, events, *args, **kwargs)

    def _wait_and_retry(self, call, events, *args, **kwargs):
        timeout = self._timeout
        hub = _local.__dict__.get("hub") or get_hub()  # (_hub_entry and _wait_before, inline: the hot path)
        if self._hub is not hub:
            self._register(hub)
        entry = self._entry
        if timeout is None:
            while True:
                hub.wait(entry, events, None)
                try:
                    return call(self, *args, **kwargs)
                except BlockingIOError:
                    pass
        deadline = _monotonic() + timeout
        while True:
            _wait_before(hub, entry, events, deadline)
            try:
                return call(self, *args, **kwargs)
            except BlockingIOError:
                pass

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to bufsize bytes; b"" at end of stream."""
        # A blocking stream socket whose last recv returned less than it asked
        # for had nothing more then: a request's answer comes later, so the next
        # recv waits first instead of failing with EAGAIN (a system call and an
        # exception per round trip). The wait is level-triggered: data already
        # there wakes it at the next poll. Not with a timeout: a due timer could
        # win over data that has arrived.
        if self._drained and not flags:
            hub = self._hub
            if hub is not None and hub is _local.__dict__.get("hub"):  # (_wait_and_retry, inline: the hot path)
                hub.wait(self._entry, _EV_READ, None)
                try:
                    data = _sock_recv(self, bufsize)
                except BlockingIOError:
                    data = self._wait_and_retry(_sock_recv, _EV_READ, bufsize, 0)
            else:
                data = self._wait_and_retry(_sock_recv, _EV_READ, bufsize, 0)
        else:
            try:
                data = _sock_recv(self, bufsize, flags)
            except BlockingIOError:  # the fast path: one system call, no loop
                if self._timeout == 0.0 or flags & _MSG_DONTWAIT:
                    raise
                data = self._wait_and_retry(_socket.socket.recv, _EV_READ, bufsize, flags)
        if self._drained is not None:  # (None: not a stream socket)
            self._drained = self._timeout is None and not flags and type(bufsize) is int and len(data) < bufsize
        return data

    def send(self, data: _Buffer, flags: int = 0) -> int:
        """Send some of data; return how many bytes were sent."""
        try:
            return _socket.socket.send(self, data, flags)
        except BlockingIOError:
            if self._timeout == 0.0 or flags & _MSG_DONTWAIT:
                raise
        return self._wait_and_retry(_socket.socket.send, _EV_WRITE, data, flags)

    def sendall(self, data: _Buffer, flags: int = 0) -> None:
        """Send all of data; the timeout bounds the whole call, not each piece."""
        try:  # usually all of it goes at once; and this checks data as the stdlib does
            sent = _sock_send(self, data, flags)
        except BlockingIOError:
            if self._timeout == 0.0 or flags & _MSG_DONTWAIT:
                raise
            sent = 0
        except OSError:
            if _PYPY and not memoryview(data).nbytes:
                return  # PyPy's sendall makes no call for no data, so it raises nothing (CPython's sends once)
            raise
        if type(data) is bytes and sent == len(data):
            return
        with memoryview(data) as view:
            if view.format != "B" or view.ndim != 1:  # count bytes (not always: a cast view is slow on PyPy)
                view = view.cast("B")
            deadline = None
            while sent < len(view):
                try:
                    sent += _socket.socket.send(self, view[sent:sent + 0x100000], flags)  # PyPy copies it
                except BlockingIOError:
                    if self._timeout == 0.0 or flags & _MSG_DONTWAIT:
                        raise
                    if deadline is None:
                        deadline = self._deadline()
                    self._wait(_EV_WRITE, deadline)

    def connect(self, address: Any) -> None:
        """Connect to address; a host name is resolved without blocking the hub.

        The timeout bounds the whole connection attempt.
        """
        address, deadline, waited = self._resolve(address), None, False
        while True:
            # A TCP connect is "in progress" until writable, then a second
            # connect says how it went; an AF_UNIX one says EAGAIN while the
            # listener's queue is full, and is simply tried again.
            err = _socket.socket.connect_ex(self, address)
            if err == 0 or (err == _errno.EISCONN and waited):  # EISCONN: our own attempt made it
                return
            if err not in _CONNECT_AGAIN or self._timeout == 0.0:
                raise OSError(err, _os.strerror(err))
            if not waited:
                deadline, waited = self._deadline(), True
            self._wait(_EV_WRITE, deadline)

    def connect_ex(self, address: Any) -> int:
        """Like connect(), but return an errno instead of raising OSError (0 on success)."""
        try:
            self.connect(address)
            return 0
        except _timed_out:
            return _errno.EAGAIN
        except OSError as exc:
            if exc.errno is None or isinstance(exc, (gaierror, herror)):
                raise
            return exc.errno

    def _resolve(self, address):
        # Numeric addresses (and AF_UNIX paths) go straight to the OS; a host
        # name is looked up in a worker thread so a slow DNS stalls nobody.
        if not (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)
                and self.family in (_socket.AF_INET, _socket.AF_INET6)):
            return address
        host, port = address[0], address[1]
        if not isinstance(port, int) or not 0 <= port <= 65535 or host in ("", "<broadcast>") or "\0" in host:
            return address  # the OS call raises what the stdlib raises
        try:
            _socket.inet_pton(self.family, host)
            return address
        except (OSError, ValueError):
            pass
        infos = getaddrinfo(host, port, self.family, self.type, self.proto)
        return infos[0][4][:2] + tuple(address[2:]) if self.family == _socket.AF_INET6 else infos[0][4]

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (read and sent in pieces, cooperatively)."""
        return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined]  # not in typeshed

    def __repr__(self):
        text = super().__repr__()
        return text if self._timeout is None else text[:-1] + f", timeout={self._timeout}>"


def _cooperative(name, events, flags_at):
    call = getattr(_socket.socket, name)

    def method(self: socket, *args: Any, **kwargs: Any) -> Any:  # what the stdlib's takes and returns
        if name in ("recvmsg_into", "sendmsg"):  # a retry must see iterators of buffers whole again
            args = tuple(list(a) if i < 2 and hasattr(a, "__next__") else a for i, a in enumerate(args))
        try:
            return call(self, *args, **kwargs)
        except BlockingIOError:  # so flags parsed as an int: MSG_DONTWAIT never waits
            at = flags_at if len(args) != 2 or name != "sendto" else 2  # sendto(data, address): none
            flags = kwargs.get("flags", args[at] if len(args) > at else 0)
            if self._timeout == 0.0 or _index(flags) & _MSG_DONTWAIT:
                raise
        return self._wait_and_retry(call, events, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = call.__doc__
    return method


for _name, _events, _flags_at in (
        ("recv_into", _EV_READ, 2), ("recvfrom", _EV_READ, 1), ("recvfrom_into", _EV_READ, 2),
        ("recvmsg", _EV_READ, 2), ("recvmsg_into", _EV_READ, 2), ("sendto", _EV_WRITE, 1),
        ("sendmsg", _EV_WRITE, 2)):
    if hasattr(_socket.socket, _name):
        setattr(socket, _name, _cooperative(_name, _events, _flags_at))


# ---------------------------------------------------------------------------
# Module-level helpers

def socketpair(family: int | None = None, type: int = _socket.SOCK_STREAM, proto: int = 0) -> tuple[socket, socket]:
    """Return a pair of connected cooperative sockets (AF_UNIX where available)."""
    if family is None:
        family = getattr(_socket, "AF_UNIX", _socket.AF_INET)
    a, b = _socket.socketpair(family, type, proto)
    return socket(family, type, proto, a.detach()), socket(family, type, proto, b.detach())


def fromfd(fd: int, family: int, type: int, proto: int = 0) -> socket:
    """Return a cooperative socket on a duplicate of fd."""
    return socket(family, type, proto, _socket.dup(fd))


def create_server(address: Any, *, family: int = _socket.AF_INET, backlog: int | None = None,
                  reuse_port: bool = False, dualstack_ipv6: bool = False) -> socket:
    """Return a cooperative listening TCP socket bound to address (stdlib arguments)."""
    sock = _std_create_server(address, family=family, backlog=backlog, reuse_port=reuse_port,
                              dualstack_ipv6=dualstack_ipv6)
    return sock if isinstance(sock, socket) else socket(sock.family, sock.type, sock.proto, sock.detach())


def create_connection(address: tuple[str | None, int], timeout: float | None = _DEFAULT_TIMEOUT,
                      source_address: Any = None, *, all_errors: bool = False) -> socket:
    """Connect to (host, port), trying each address the name resolves to; return the socket.

    The timeout applies to each attempt, as in the stdlib. all_errors=True
    (Python 3.11+, as the stdlib's) raises an ExceptionGroup of every attempt's error.
    """
    if all_errors and _sys.version_info < (3, 11):
        raise TypeError("create_connection(all_errors=True) needs Python 3.11 (ExceptionGroup): "
                        "use Python 3.11+, or leave all_errors False to get the first error")
    host, port = address
    errors = []
    for family, type_, proto, _, sockaddr in getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = socket(family, type_, proto)
        try:
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            errors.append(exc)
            sock.close()
        except BaseException:  # a Timeout or a kill: closed now, not by a finalizer some time later
            sock.close()
            raise
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)  # type: ignore[name-defined]  # noqa: F821 (3.11+)
    raise errors[0]


# Name lookups block in the C library, so they run in the resolver's
# ThreadPool (above), which wakes the hub through its Async. Numeric
# addresses need no lookup, no thread.

def _run_in_thread(func, *args):
    """Run func(*args) in a resolver thread; park until it returns."""
    return _resolver.apply(func, args)


def _is_numeric(host):
    """True if host is an IP address or None: the C library answers without a lookup."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
            return True
        except (OSError, ValueError, TypeError):
            pass
    return False


def getaddrinfo(host: bytes | str | None, port: bytes | str | int | None, family: int = 0, type: int = 0,
                proto: int = 0, flags: int = 0) -> list[tuple[Any, ...]]:
    """Return socket.getaddrinfo's list; a name is looked up in a worker thread, not blocking the hub."""
    if _is_numeric(host):
        return _std_getaddrinfo(host, port, family, type, proto, flags)
    return _run_in_thread(_std_getaddrinfo, host, port, family, type, proto, flags)


def gethostbyname(hostname: str) -> str:
    """Return socket.gethostbyname's address; the lookup runs in a worker thread."""
    if _is_numeric(hostname) and hostname is not None:
        return _socket.gethostbyname(hostname)
    return _run_in_thread(_socket.gethostbyname, hostname)


def gethostbyname_ex(hostname: str) -> tuple[str, list[str], list[str]]:
    """Return socket.gethostbyname_ex's (name, aliases, addresses); the lookup runs in a worker thread."""
    return _run_in_thread(_socket.gethostbyname_ex, hostname)


def gethostbyaddr(ip_address: str) -> tuple[str, list[str], list[str]]:
    """Return socket.gethostbyaddr's (name, aliases, addresses); the lookup runs in a worker thread."""
    return _run_in_thread(_socket.gethostbyaddr, ip_address)


def getnameinfo(sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
    """Return socket.getnameinfo's (host, port); the lookup runs in a worker thread unless both are numeric."""
    numeric = _socket.NI_NUMERICHOST | _socket.NI_NUMERICSERV
    if isinstance(flags, int) and flags & numeric == numeric:
        return _socket.getnameinfo(sockaddr, flags)
    return _run_in_thread(_socket.getnameinfo, sockaddr, flags)


def getfqdn(name: str = "") -> str:
    """Return socket.getfqdn's fully qualified name for name; the lookup runs in a worker thread."""
    name = name.strip()
    if not name or name in ("0.0.0.0", "::"):
        name = _socket.gethostname()
    try:
        hostname, aliases, _ = gethostbyaddr(name)
    except OSError:
        return name
    return next((n for n in [hostname, *aliases] if "." in n), hostname)


class Resolver:
    """gevent's hub.resolver: the lookups above as methods, each in a worker thread (gevent's thread resolver)."""

    getaddrinfo, gethostbyname, gethostbyname_ex = (staticmethod(getaddrinfo), staticmethod(gethostbyname),
                                                    staticmethod(gethostbyname_ex))
    gethostbyaddr, getnameinfo = staticmethod(gethostbyaddr), staticmethod(getnameinfo)

    def __init__(self, hub: Hub | None = None) -> None:  # gevent's signature: one resolver serves every hub
        pass

    def close(self) -> None:
        """Nothing to close: the lookups share the process's resolver threads."""


_LOOKUPS = Resolver()


def wait_readwrite(fileno: _FileDescriptorLike, timeout: float | None = None,
                   timeout_exc: type[BaseException] | BaseException | None = None, *,
                   events: int = _EV_READ | _EV_WRITE) -> None:
    """Park until fileno is readable or writable; raise timeout_exc after `timeout` seconds.

    timeout_exc defaults to TimeoutError("timed out"), as a socket's timeout raises.
    Raises what select() raises for a bad fd or timeout; OSError(EBADF) if a
    coopsock socket on the fd is closed meanwhile.
    """
    if timeout is not None and not (type(timeout) in (int, float) and timeout >= 0):
        timeout = _pypy_seconds(timeout) if _PYPY else timeout if isinstance(timeout, float) else \
            _seconds_int(timeout)  # TypeError, as select's
        if _PYPY and timeout != timeout:  # PyPy's select waits with no timeout; CPython's raises
            timeout = None
        elif not timeout >= 0:
            raise ValueError("timeout must be non-negative")
    fd, hub = _check_fd(fileno), get_hub()
    deadline = None if timeout is None else _monotonic() + timeout
    if hub.park((_PARK, getcurrent(), hub._entry(fd), events, deadline, False)) is _TIMED_OUT:
        raise _timed_out("timed out") if timeout_exc is None else timeout_exc


def wait_read(fileno: _FileDescriptorLike, timeout: float | None = None,
              timeout_exc: type[BaseException] | BaseException | None = None) -> None:
    """Park until fileno is readable; raise timeout_exc after `timeout` seconds."""
    wait_readwrite(fileno, timeout, timeout_exc, events=_EV_READ)


def wait_write(fileno: _FileDescriptorLike, timeout: float | None = None,
               timeout_exc: type[BaseException] | BaseException | None = None) -> None:
    """Park until fileno is writable; raise timeout_exc after `timeout` seconds."""
    wait_readwrite(fileno, timeout, timeout_exc, events=_EV_WRITE)


# ---------------------------------------------------------------------------
# Servers: StreamServer, DatagramServer, WSGIServer; signal_handler
#
# A server owns its listener and the greenlets it spawned: close() stops taking
# new work, stop() also waits for the running handlers and then kills them.
# Its handle is the one given, or a subclass's handle method (gevent's habit).

def _parse_address(address):
    """(host, port) from what gevent's servers take: a tuple, "host:port", "[v6host]:port", ":port" or a port."""
    if isinstance(address, tuple):
        return address
    if isinstance(address, int):
        return "", address
    if not isinstance(address, str):
        raise TypeError(f"a server listens on a (host, port) tuple, 'host:port' or a socket, not {address!r}")
    host, _, port = address.rpartition(":")
    return host[1:-1] if host.startswith("[") else host, int(port)


class _Server:
    """What StreamServer and DatagramServer share: the listener, start/serve_forever/close/stop, the pool."""

    stop_timeout = 1  # seconds stop() waits for the running handlers before it kills them
    kind = _socket.SOCK_STREAM
    _worker: Greenlet | None  # the greenlet that accepts or receives (for type checkers)
    _log: Any  # logging.getLogger("coopsock"), got by start()

    def _listen(self, family: int) -> socket:
        raise NotImplementedError  # StreamServer's and DatagramServer's own

    def __init__(self, listener, handle, spawn):
        self.socket: socket | None  # the listener, once there is one
        self._given: _socket.socket | None  # the one given, if any
        if handle is not None:
            _check_callable(handle, "handle")
            self.handle = handle
        elif not callable(getattr(self, "handle", None)):
            raise TypeError(f"{type(self).__name__} needs a handle: pass one, or define a handle method in a subclass")
        if isinstance(listener, _socket.socket):
            # The server owns a listener given: it closes it with the one it uses.
            self._given, self.socket = listener, listener if isinstance(listener, socket) else fromfd(
                listener.fileno(), listener.family, listener.type, listener.proto)
            self.socket.settimeout(None)  # accept() and recvfrom() wait, whatever timeout it had
            self.address = self.socket.getsockname()
        else:
            self.socket, self.address, self._given = None, _parse_address(listener), None
        # spawn: "default", a Pool, None (each handler in the accepting greenlet, one at a time), a
        # function that starts handle(*args) as spawn() does (gevent's four), or a size for a Pool.
        own = spawn == "default" or not (spawn is None or isinstance(spawn, Pool) or callable(spawn))
        self.pool = ((Group() if spawn == "default" else Pool(spawn)) if own
                     else spawn if isinstance(spawn, Pool) else None)
        self._spawn = self.pool.spawn if self.pool is not None else spawn
        self._handlers = self.pool if own else Group()  # a Pool of the user's may hold others
        self._worker, self.closed, self._handling = None, False, False  # _handling: spawn=None's, in _worker

    started = property(lambda self: self._worker is not None and not self._worker.dead,
                       doc="True while accepting connections or datagrams.")
    server_host = property(lambda self: self.address[0])
    server_port = property(lambda self: self.address[1])

    def start(self) -> None:
        """Listen or bind (creating the socket if needed) and start serving in a greenlet; OSError if it cannot."""
        if self.closed:
            raise ValueError(f"This server is closed: create a new {type(self).__name__}")
        if self.socket is None:
            family = _socket.AF_INET6 if ":" in self.address[0] else _socket.AF_INET
            self.socket = self._listen(family)
            self.address = self.socket.getsockname()  # the real port; kept once the socket is closed
        if not self.started:
            # The loop logs when accept() fails, EMFILE above all: then
            # importing logging would need an fd too, and fail. So it is done now.
            import logging
            self._log = logging.getLogger("coopsock")
            self._worker = spawn(self._serve)

    def serve_forever(self) -> None:
        """Start, and park until the server is closed (then stop, if an exception ends the wait)."""
        self.start()
        try:
            assert self._worker is not None  # (for type checkers) start() set it
            self._worker.join()
        finally:
            if not self.closed:
                self.stop()

    def close(self) -> None:
        """Stop taking connections or datagrams and close the listener; the running handlers go on."""
        self.closed = True
        if self._worker is not None and self._worker is not getcurrent() and not self._handling:
            self._worker.kill()  # (one handling with spawn=None goes on, then finds the listener closed)
        for sock in (self.socket, self._given):
            if sock is not None:
                sock.close()

    def stop(self, timeout: float | None = None) -> None:
        """Close, wait up to `timeout` (None: stop_timeout) for the running handlers, then kill the rest.

        Called from a handler, it waits for and kills the others, and returns.
        """
        self.close()
        others = [g for g in self._handlers if g is not getcurrent()]
        if self._handling and self._worker is not getcurrent():
            others.append(self._worker)  # spawn=None: its handler
        if len(joinall(others, self.stop_timeout if timeout is None else timeout)) < len(others):
            killall(others, block=False)
            joinall(others, 1)  # a killed handler ends at once, unless it ignores GreenletExit

    def _serve(self):
        delay = 0
        while True:
            if self.pool is not None and self.pool.full():  # leave further work in the kernel's queue
                self.pool.wait_available()
            try:
                work = self._next()
            except OSError as exc:
                if exc.errno in (_errno.EBADF, _errno.EINVAL, _errno.ENOTSOCK):  # the listener is gone
                    return self.close()
                if not delay:  # EMFILE and friends: back off until fds free up; log once per episode
                    self._log.warning("%s on %s failed, retrying with back-off up to 1 s: %s",
                                      "accept()" if self.kind == _socket.SOCK_STREAM else "recvfrom()",
                                      self.address, exc)
                delay = min(delay * 2 or 0.01, 1.0)
                sleep(delay)
                continue
            delay = 0
            if self._spawn is None:
                self._handling = True
                try:
                    self._handle(*work)
                except GreenletExit:
                    raise
                except BaseException as exc:  # reported as a handler greenlet's would be; the server goes on
                    get_hub()._report(self.handle, exc)
                finally:
                    self._handling = False
                continue
            try:
                handler = self._spawn(self._handle, *work)
            except BaseException:  # killed while the pool was full
                self._drop(work)
                raise
            if isinstance(handler, Greenlet):
                self._handlers.add(handler)

    def __enter__(self: _AnyServer) -> _AnyServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class StreamServer(_Server):
    """Accept TCP connections on `listener` and run handle(socket, address) in a greenlet for each.

    listener: a (host, port) address (the family taken from the host), gevent's
    "host:port" or ":port", or a listening socket, which the server then owns:
    it makes it blocking and closes it on close(). handle: a function, or None
    for a subclass's handle method. spawn: 'default' (a greenlet per
    connection), a Pool, an int (a Pool of that size; connections beyond it
    wait in the backlog), a function called as spawn(func, *args), or None
    (each connection handled in the accepting greenlet, one at a time). The
    connection is closed when handle returns. With ssl_context, each
    connection is wrapped with ssl_context.wrap_socket(conn, server_side=True);
    gevent's certfile= and keyfile= make such a context.
    """

    backlog_default = 2048  # holds a burst of 1,000 simultaneous connects (the kernel caps it at somaxconn)

    def __init__(self, listener: tuple[str, int] | str | _stdsocket.socket,
                 handle: Callable[[socket, Any], object] | None = None, backlog: int | None = None,
                 spawn: Literal["default"] | int | Pool | Callable[..., Any] | None = "default",
                 ssl_context: ssl.SSLContext | None = None, **ssl_args: Any) -> None:
        if backlog is not None and isinstance(listener, _socket.socket):
            raise TypeError("backlog applies to a listener the server creates: listen() on your socket instead")
        if ssl_args:
            unknown = set(ssl_args) - {"certfile", "keyfile"}
            if unknown or "certfile" not in ssl_args:
                raise TypeError(f"{type(self).__name__} takes certfile= and keyfile= for TLS, not "
                                f"{sorted(unknown) or 'keyfile alone'}: for anything more, pass ssl_context=")
            import ssl as std_ssl
            ssl_context = std_ssl.create_default_context(std_ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(ssl_args["certfile"], ssl_args.get("keyfile"))
        super().__init__(listener, handle, spawn)
        self.backlog, self.ssl_context = backlog, ssl_context

    def _listen(self, family):
        return create_server(self.address, family=family, backlog=self.backlog or self.backlog_default)

    def _next(self):
        return self.socket.accept()

    def _drop(self, work):
        work[0].close()

    def _handle(self, conn, address):
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            self.handle(conn, address)
        finally:
            conn.close()


class DatagramServer(_Server):
    """Receive UDP datagrams on `listener` and run handle(data, address) in a greenlet for each (gevent's API).

    listener: as StreamServer's, or a bound SOCK_DGRAM socket. handle: a
    function, or None for a subclass's handle method; it answers with
    server.sendto(data, address). spawn: as StreamServer's; while a Pool is
    full, datagrams wait in the kernel's buffer.
    """

    kind = _socket.SOCK_DGRAM
    max_size = 65535  # the largest UDP payload: a datagram is never cut short

    def __init__(self, listener: tuple[str, int] | str | _stdsocket.socket,
                 handle: Callable[[bytes, Any], object] | None = None,
                 spawn: Literal["default"] | int | Pool | Callable[..., Any] | None = "default") -> None:
        super().__init__(listener, handle, spawn)

    def _listen(self, family):
        sock = socket(family, _socket.SOCK_DGRAM)
        try:
            sock.bind(self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _next(self):
        return self.socket.recvfrom(self.max_size)

    def _drop(self, work):
        pass

    def _handle(self, data, address):
        self.handle(data, address)

    def sendto(self, data: bytes, address: Any) -> int:
        """Send data to address from the server's socket (the reply to a datagram)."""
        if self.socket is None:
            raise ValueError("the server has no socket yet: start() it first")
        return self.socket.sendto(data, address)


class _RequestBody:
    """wsgi.input: a request's body, by Content-Length or chunked; it never reads past the body."""

    def __init__(self, rfile, length, chunked, send_continue):
        self.rfile, self.left, self.chunked, self._send_continue = rfile, length, chunked, send_continue
        self.done = not chunked and not length

    def _next_chunk(self):
        if self._send_continue is not None:  # the client waits for this before it sends the body
            self._send_continue, send = None, self._send_continue
            send()
        if self.chunked and not self.left and not self.done:
            line = self.rfile.readline(WSGIServer.max_line + 1)
            try:
                self.left = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise ValueError(f"a bad chunk size line in the request's body: {line[:40]!r}") from None
            if not self.left:
                while self.rfile.readline(WSGIServer.max_line + 1) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, ignored
                self.done = True

    def _take(self, data, wanted, line=False):
        if not data or len(data) < wanted and not (line and data.endswith(b"\n")):
            raise ConnectionError("the client closed the connection before the end of its request's body")
        self.left -= len(data)
        if not self.left:
            if self.chunked:
                self.rfile.readline(3)  # the CRLF after a chunk
            else:
                self.done = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        size = -1 if size is None else size
        while size and not self.done:
            self._next_chunk()
            if self.done:
                break
            n = self.left if size < 0 else min(size, self.left)
            parts.append(self._take(self.rfile.read(n), n))
            size -= n if size > 0 else 0
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        size = -1 if size is None else size
        while size and not self.done and not (parts and parts[-1].endswith(b"\n")):
            self._next_chunk()
            if self.done:
                break
            n = self.left if size < 0 else min(size, self.left)
            parts.append(self._take(self.rfile.readline(n), n, line=True))
            size -= len(parts[-1]) if size > 0 else 0
        return b"".join(parts)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class WSGIServer(StreamServer):
    """Serve a WSGI application, a greenlet per connection (gevent's pywsgi.WSGIServer).

    HTTP/1.1 with keep-alive; a response without Content-Length goes chunked
    to an HTTP/1.1 client (a one-item list gets its length); request bodies by
    Content-Length or chunked, with Expect: 100-continue. log: a file for an
    access line per request (default sys.stderr), a logging.Logger, or None;
    error_log the same for the application's errors. environ: keys added to
    every request's. HTTPS: ssl_context, or gevent's certfile= and keyfile=.
    For development and small services: in production, run the application
    under gunicorn, `gunicorn -k coopsock.GunicornWorker module:app`.
    """

    max_line = 65536  # the longest request line or header line, as http.client allows
    max_drain = 65536  # an unread body up to this is read to keep the connection; a longer one closes it

    def __init__(self, listener: tuple[str, int] | str | _stdsocket.socket, application: Callable[..., Any] | None = None,
                 backlog: int | None = None,
                 spawn: Literal["default"] | int | Pool | Callable[..., Any] | None = "default", log: Any = "default",
                 error_log: Any = "default", environ: dict[str, Any] | None = None,
                 ssl_context: ssl.SSLContext | None = None, **ssl_args: Any) -> None:
        super().__init__(listener, None, backlog, spawn, ssl_context, **ssl_args)
        self.application = application
        self.log = _sys.stderr if log == "default" else log
        self.error_log = _sys.stderr if error_log == "default" else error_log
        self.environ = {"SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.multithread": False,
                        "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.input_terminated": True,
                        "wsgi.url_scheme": "https" if self.ssl_context is not None else "http", **(environ or {})}

    def handle(self, sock: socket, address: Any) -> None:
        """Serve one connection's requests while it keeps alive."""
        rfile = sock.makefile("rb")
        try:
            while self._serve_request(sock, rfile, address):
                pass
        except (OSError, ValueError):
            pass  # the client went away, or broke its body's framing: the connection closes
        finally:
            rfile.close()

    def _serve_request(self, sock, rfile, address):
        """Read one request, run the application, send its response; True to keep the connection."""
        import http.client
        import re
        from email.utils import formatdate
        line = rfile.readline(self.max_line + 1)
        if line in (b"\r\n", b"\n"):  # a stray CRLF between requests (RFC 9112 2.2)
            line = rfile.readline(self.max_line + 1)
        if not line:
            return False
        started = _monotonic()
        request_line = line.decode("latin-1").rstrip("\r\n")
        parts = request_line.split()
        if len(line) > self.max_line:
            return self._refuse(sock, "414 URI Too Long")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):  # 505 only for a well-formed other version
            other = len(parts) == 3 and re.fullmatch(r"HTTP/\d\.\d", parts[2])
            return self._refuse(sock, "505 HTTP Version Not Supported" if other else "400 Bad Request")
        method, target, version = parts
        try:
            headers = http.client.parse_headers(rfile)
        except http.client.HTTPException:
            return self._refuse(sock, "431 Request Header Fields Too Large")
        connection = headers.get("Connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length", "0" if chunked or "Transfer-Encoding" not in headers else "x")
        if not length.isdigit() or (chunked and "Content-Length" in headers):
            return self._refuse(sock, "400 Bad Request")
        path, _, query = target.partition("?")
        environ = {**self.environ, "REQUEST_METHOD": method, "PATH_INFO": _unquote(path),
                   "QUERY_STRING": query, "SERVER_PROTOCOL": version, "RAW_URI": target,
                   "SERVER_NAME": self.address[0] or "localhost", "SERVER_PORT": str(self.address[1]),
                   "REMOTE_ADDR": address[0] if isinstance(address, tuple) else "",
                   "REMOTE_PORT": str(address[1]) if isinstance(address, tuple) else "",
                   "wsgi.errors": self.error_log if hasattr(self.error_log, "write") else _sys.stderr}
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
            environ[key] = environ[key] + "," + value if key in environ else value
        expects = version == "HTTP/1.1" and headers.get("Expect", "").lower() == "100-continue"
        body = environ["wsgi.input"] = _RequestBody(
            rfile, int(length), chunked, (lambda: sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")) if expects else None)

        status: list[Any] = []  # [status, headers] once start_response is called
        sent = [False, False, 0]  # [headers sent, chunked, body bytes]

        def start_response(status_: str, headers_: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None:
                try:
                    if sent[0]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None  # no cycle through the frame
            elif status:
                raise AssertionError("start_response was called already: pass exc_info to call it again")
            if type(status_) is not str or not status_[:3].isdigit() or status_[3:4] != " ":
                raise ValueError(f"status must be a str such as '200 OK', not {status_!r}")
            if any(type(pair) is not tuple or len(pair) != 2 or not all(type(x) is str for x in pair) or
                   "\n" in pair[0] + pair[1] or "\r" in pair[0] + pair[1] for pair in headers_):
                raise ValueError(f"headers must be a list of (str, str) tuples without line breaks, not {headers_!r}")
            status[:] = [status_, list(headers_)]
            return write

        def write(data: bytes, whole: bool = False) -> None:
            nonlocal keep_alive
            if not status:
                raise AssertionError("the application wrote its body before calling start_response")
            if not sent[0]:
                code, response_headers = int(status[0][:3]), status[1]
                names = {name.lower() for name, _ in response_headers}
                if "content-length" not in names and method != "HEAD" and code >= 200 and code not in (204, 304):
                    if whole:
                        response_headers.append(("Content-Length", str(len(data))))
                    elif version == "HTTP/1.1":
                        sent[1] = True
                        response_headers.append(("Transfer-Encoding", "chunked"))
                    else:
                        keep_alive = False  # the body ends where the connection does
                if not keep_alive and "connection" not in names:
                    response_headers.append(("Connection", "close"))
                if "date" not in names:
                    response_headers.append(("Date", formatdate(usegmt=True)))
                head = "".join([f"HTTP/1.1 {status[0]}\r\n", *(f"{k}: {v}\r\n" for k, v in response_headers), "\r\n"])
                sock.sendall(head.encode("latin-1"))
                sent[0] = True
            if data and method != "HEAD":
                sent[2] += len(data)
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if sent[1] else data)

        try:
            try:
                if self.application is None:
                    raise LookupError("this WSGIServer has no application: pass one, or set server.application")
                result = self.application(environ, start_response)
                try:
                    if type(result) in (list, tuple) and len(result) == 1 and status and not sent[0]:
                        write(result[0], whole=True)
                    else:
                        for data in result:
                            write(data)
                    if not sent[0]:
                        write(b"", whole=True)
                    if sent[1]:
                        sock.sendall(b"0\r\n\r\n")
                finally:
                    if hasattr(result, "close"):
                        result.close()
            except Exception:
                self._log_error(environ)
                if sent[0]:
                    return False  # the response is cut: only closing tells the client
                status[:] = ["500 Internal Server Error", [("Content-Type", "text/plain")]]
                keep_alive = False
                write(b"Internal Server Error", whole=True)
            if keep_alive and not body.done:  # what the application left unread is read, or the connection closed
                if body.chunked or body.left > self.max_drain:
                    keep_alive = False
                else:
                    body.read()
        finally:
            self._log_access(environ, request_line, status[0][:3] if status else "-", sent[2], started)
        return keep_alive

    def _refuse(self, sock, status):
        sock.sendall(f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode())
        return False

    def _log_access(self, environ, request_line, code, length, started):
        if self.log is not None:
            import time
            when = time.strftime("%d/%b/%Y %H:%M:%S")
            line = f'{environ["REMOTE_ADDR"] or "-"} - - [{when}] "{request_line}" {code} {length} {_monotonic() - started:.6f}'
            if hasattr(self.log, "write"):
                self.log.write(line + "\n")
            else:
                self.log.info(line)

    def _log_error(self, environ):
        if self.error_log is not None:
            import traceback
            text = f"Error in the WSGI application, {environ['REQUEST_METHOD']} {environ['RAW_URI']}:\n" + traceback.format_exc()
            if hasattr(self.error_log, "write"):
                self.error_log.write(text)
            else:
                self.error_log.error(text.rstrip())


def _unquote(path):
    """PATH_INFO as WSGI wants it: %-escapes decoded to bytes, the bytes as latin-1 (PEP 3333)."""
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(path).decode("latin-1")


class signal_handler:
    """Run handler(*args, **kwargs) in a new greenlet each time signal `signum` arrives (gevent's signal_handler).

    The Python-level handler only notes the arrival; the hub starts the
    greenlet at its next step, so the handler may wait, sleep or fail as any
    greenlet does. cancel() puts back the handler installed before. Main
    thread only, as signal.signal.
    """

    def __init__(self, signum: int, handler: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        import signal
        _check_callable(handler, "handler")
        self.signum, self.handler, self.args, self.kwargs = signum, handler, args, kwargs
        self.hub = get_hub()
        install = _originals.get((signal, "signal"), signal.signal)  # no deferring wrapper: this one defers
        self._previous = install(signum, self._arrived)

    def _arrived(self, signum, frame):
        hub = self.hub
        if not hub._destroyed:
            hub._deferred.append((self._start, signum))
            hub._wakeup.send()  # a poll on epoll would go on after the handler (PEP 475)

    def _start(self, signum, frame):
        spawn(self.handler, *self.args, **self.kwargs)

    def cancel(self) -> None:
        """Put back the handler that was installed before; idempotent."""
        if self._previous is not None:
            import signal
            _originals.get((signal, "signal"), signal.signal)(self.signum, self._previous)
            self._previous = None


# ---------------------------------------------------------------------------
# TLS and the stdlib patch
#
# ssl.SSLSocket drives OpenSSL over its fd; under coopsock's socket the fd is
# always non-blocking, so OpenSSL answers "want read" or "want write" where
# it would block, and coopsock's SSLSocket parks on that and retries. ssl is
# imported when TLS is first used (the module's __getattr__), not at import.


_std_select, _std_poll = _select.select, _select.poll  # before patch() replaces them
_TLS_NAMES = ("SSLContext", "SSLSocket", "create_default_context")


def _build_tls() -> Any:
    import ssl
    import weakref

    class SSLSocket(ssl.SSLSocket, socket):  # type: ignore[misc]  # accept(): each returns its own class
        """ssl.SSLSocket, cooperative: the handshake, reads and writes park only the calling greenlet.

        Made by SSLContext.wrap_socket(); raises ssl's errors, and TimeoutError past the timeout (one per call).
        """

        _sslobj: Any  # (for type checkers) ssl.SSLSocket's own, absent from typeshed
        _check_connected: Callable[[], None]

        def _tls_retry(self, call, *args, block=False, deadline=False):
            # OpenSSL on a non-blocking fd says which way it must wait (a read
            # may need to write, in a handshake or a TLS 1.3 key update):
            # wait for that, then make the very same call again.
            if _PYPY and self._sslobj is not None and type(self._sslobj.socket()) is not _TLSFd:
                # PyPy's _ssl is Python that asks its socket's gettimeout()
                # whether to wait itself: our None (the user's) would make it
                # spin on the non-blocking fd. It gets an fd view of timeout
                # 0.0, as CPython's C code sees the fd's own, and says "want read".
                self._tls_fd = view = _TLSFd(self)
                self._sslobj.socket = weakref.ref(view)
            while True:
                try:
                    return call(*args)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                    if self._timeout == 0.0 and not block:
                        raise
                    events = _EV_READ if isinstance(exc, ssl.SSLWantReadError) else _EV_WRITE
                if deadline is False:
                    deadline = None if block and self._timeout == 0.0 else self._deadline()
                self._wait(events, deadline)

        @classmethod
        def _create(cls, sock, server_side=False, do_handshake_on_connect=True, **kwargs):
            # ssl's _create() closes the SSLSocket it made (which owns the fd
            # by then) only if the handshake raises OSError or ValueError: a
            # Timeout or a kill would leave the fd open until a garbage
            # collection, late if a stored traceback holds it in a cycle. So
            # the handshake is made here, and any exception closes the fd at
            # once. (A non-blocking socket still gets ssl's own ValueError.)
            handshake = do_handshake_on_connect and sock.gettimeout() != 0.0
            self = super()._create(sock, server_side, do_handshake_on_connect and not handshake, **kwargs)
            self.do_handshake_on_connect = do_handshake_on_connect
            if handshake and self._connected:
                try:
                    self.do_handshake()
                except BaseException:
                    self.close()
                    raise
            return self

        def do_handshake(self, block: bool = False) -> None:
            """Perform the TLS handshake (wrap_socket and connect do it unless told not to)."""
            self._check_connected()
            self._tls_retry(self._sslobj.do_handshake, block=block)

        def read(self, len: int = 1024, buffer: _Buffer | None = None) -> bytes:
            """Read up to len bytes (into buffer: return the count); b"" or 0 at the end."""
            return self._tls_retry(super().read, len, buffer)

        def write(self, data: _Buffer) -> int:
            """Write data as TLS records; return how many bytes were written."""
            return self._tls_retry(super().write, data)

        def send(self, data: _Buffer, flags: int = 0) -> int:
            """Send data (over TLS once it is set up); return how many bytes were sent."""
            return self._tls_retry(super().send, data, flags)

        def sendall(self, data: _Buffer, flags: int = 0) -> None:
            """Send all of data; the timeout bounds the whole call, not each piece."""
            if self._sslobj is None or flags:
                return super().sendall(data, flags)  # plain, or the stdlib's ValueError
            deadline = self._deadline()
            with memoryview(data) as view, view.cast("B") as view:
                sent = 0
                while sent < len(view):
                    sent += self._tls_retry(self._sslobj.write, view[sent:], deadline=deadline)

        def unwrap(self) -> socket:
            """Close TLS (close_notify both ways) and return the socket, now plain."""
            plain = self._tls_retry(super().unwrap)
            return plain.sock if isinstance(plain, _TLSFd) else plain  # PyPy: see _tls_retry

    class SSLContext(ssl.SSLContext):
        """ssl.SSLContext whose wrap_socket() (the stdlib's arguments and errors) returns a coopsock.SSLSocket."""

        sslsocket_class = SSLSocket

    class _TLSFd:  # PyPy: see _tls_retry
        __slots__ = ("sock", "__weakref__")

        def __init__(self, sock):
            self.sock = sock  # what unwrap() gives back, as CPython's does

        def fileno(self):
            return self.sock.fileno()  # -1 once the socket closes, as PyPy's _ssl checks

        def gettimeout(self):
            return 0.0

    std_create_default_context = ssl.create_default_context

    def create_default_context(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: str | None = None,
                               capath: str | None = None, cadata: str | bytes | None = None) -> ssl.SSLContext:
        """Return ssl.create_default_context(...) as a coopsock.SSLContext; raise what it raises."""
        context = std_create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
        context.__class__ = SSLContext  # the same layout: only the class wrap_socket() uses changes
        return context

    for public in (SSLSocket, SSLContext, create_default_context):
        public.__module__, public.__qualname__ = __name__, public.__name__
    globals().update(SSLSocket=SSLSocket, SSLContext=SSLContext, create_default_context=create_default_context)
    return ssl


# ---------------------------------------------------------------------------
# select, poll, selectors
#
# Each call first asks the stdlib's own select or poll, with a zero timeout:
# that checks the arguments (and raises) exactly as the stdlib does and
# answers at once when something is ready. Only then does the greenlet park,
# on the fds' watchers, and ask again when one fires. Exceptional conditions
# (xlist, POLLPRI) are reported but not waited for: libev cannot watch them.

def _fileno(fd):  # of an argument the stdlib's call has accepted
    return fd if isinstance(fd, int) else _index(fd.fileno())


def _wait_any(fds, timeout):
    """Park until one of fds ({fd: _EV_READ and/or _EV_WRITE}) is ready, or timeout seconds pass."""
    hub = get_hub()
    targets = [(hub._entry(_check_fd(fd)), events) for fd, events in fds.items()]
    hub.park((_PARK, getcurrent(), targets, 0, None if timeout is None else _monotonic() + timeout, False))


def _until_ready(ask, watched, deadline):
    """Return ask() once it reports something ready or the deadline passes; park on the fds of watched() meanwhile."""
    while True:
        ready = ask()
        remaining = None if deadline is None else deadline - _monotonic()
        if any(ready) or (remaining is not None and remaining <= 0):
            return ready
        fds = watched()  # {fd: _EV_READ and/or _EV_WRITE}
        if fds:
            _wait_any(fds, remaining)
        else:  # nothing to wait for but the time (or xlist, which libev cannot watch)
            sleep(remaining if remaining is not None else 2 ** 31)


_PLAIN_TIMEOUT = 86400.0 * 365  # seconds every interpreter's select takes as they are: no need to ask


def _ask_select_about(timeout):
    """Raise what select.select raises for this timeout, without waiting: a writable fd makes it return at once."""
    try:
        readable, writable = _os.pipe()
    except OSError:  # out of fds: the checks below still run
        return
    try:
        _std_select([], [writable], [], timeout)
    finally:
        _os.close(readable)
        _os.close(writable)


def select(rlist: Iterable[_FileDescriptorLike], wlist: Iterable[_FileDescriptorLike],
           xlist: Iterable[_FileDescriptorLike],
           timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """select.select, cooperative: park until an fd is ready or timeout seconds pass; raise what select.select does."""
    if timeout is not None and not (type(timeout) in (int, float) and 0 <= timeout < _PLAIN_TIMEOUT):
        _ask_select_about(timeout)
    if _PYPY and timeout is not None:  # as PyPy's select: any real number; NaN is no timeout
        timeout = _pypy_seconds(timeout)
        timeout = None if timeout != timeout else timeout
    timeout = _select_timeout(timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")

    def watched():
        fds = dict.fromkeys(map(_fileno, rlist), _EV_READ)
        for fd in map(_fileno, wlist):
            fds[fd] = fds.get(fd, 0) | _EV_WRITE
        return fds
    return _until_ready(lambda: _std_select(rlist, wlist, xlist, 0), watched,
                        None if timeout is None else _monotonic() + timeout)


class poll:
    """select.poll(), cooperative: poll() parks only the calling greenlet."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # {fd: eventmask}
        self._poll = _std_poll()

    def register(self, fd: _FileDescriptorLike,
                 eventmask: int = _select.POLLIN | _select.POLLPRI | _select.POLLOUT) -> None:
        """Watch fd for eventmask; raise what select.poll().register raises."""
        self._poll.register(fd, eventmask)
        self._fds[_fileno(fd)] = eventmask

    def modify(self, fd: _FileDescriptorLike, eventmask: int) -> None:
        """Change what fd is watched for; OSError(ENOENT) if it is not registered."""
        self._poll.modify(fd, eventmask)
        self._fds[_fileno(fd)] = eventmask

    def unregister(self, fd: _FileDescriptorLike) -> None:
        """Stop watching fd; KeyError if it is not registered."""
        self._poll.unregister(fd)
        del self._fds[_fileno(fd)]

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        """Return [(fd, events)] once something is ready, waiting at most timeout ms (None, < 0: no limit)."""
        timeout = _select_timeout(timeout, "an integer")

        def watched():
            fds = {fd: (_EV_READ if mask & (_select.POLLIN | _select.POLLPRI) else 0)
                   | (_EV_WRITE if mask & _select.POLLOUT else 0) for fd, mask in self._fds.items()}
            return {fd: events for fd, events in fds.items() if events}
        return _until_ready(lambda: self._poll.poll(0), watched,
                            None if timeout is None or timeout < 0 else _monotonic() + timeout / 1000)


class DefaultSelector(_selectors.PollSelector):
    """selectors.DefaultSelector, cooperative: select() parks only the calling greenlet."""

    _selector_cls = poll


# ---------------------------------------------------------------------------
# Subprocesses
#
# The subprocess module's own code, with its two waits made cooperative:
# for the child to exit (on a pidfd, which the loop watches as any fd; where
# the kernel has none, a helper thread waits) and for its pipes
# (communicate() through DefaultSelector). `coopsock.subprocess` is a copy of
# the module with those parts, built on first use (import coopsock does not
# import subprocess); patch(subprocess=True) puts them in the module itself.

def _build_subprocess() -> Any:
    if "subprocess" in globals():
        return globals()["subprocess"]
    import io
    import subprocess
    from types import ModuleType

    module = ModuleType("coopsock.subprocess", subprocess.__doc__)
    namespace = module.__dict__
    namespace.update((name, value) for name, value in vars(subprocess).items()
                     if name in ("__all__", "__builtins__") or not name.startswith("__"))  # (3.9 needs the latter)

    def read_when_ready(fd, size):  # where exec'ing the child blocks the parent (no vfork): PyPy, 3.9
        hub = _local.__dict__.get("hub")
        if hub is not None and getcurrent() is not hub:
            wait_read(fd)
        return _os.read(fd, size)
    os_ = ModuleType("os")
    vars(os_).update(vars(_os), read=read_when_ready)

    class GreenPipe(io.RawIOBase):
        """A pipe's end, its fd made non-blocking: a read or write that would block parks the greenlet."""

        def __init__(self, raw):
            super().__init__()
            self.raw, self.name, self.mode = raw, raw.name, raw.mode
            _os.set_blocking(raw.fileno(), False)

        def fileno(self): return self.raw.fileno()
        def readable(self): return self.raw.readable()
        def writable(self): return self.raw.writable()

        def readinto(self, buffer):
            while (count := self.raw.readinto(buffer)) is None:  # (None: EAGAIN)
                wait_read(self.raw.fileno())
            return count

        def write(self, data):
            while (count := self.raw.write(data)) is None:
                wait_write(self.raw.fileno())
            return count

        def close(self):
            if not self.closed:
                super().close()
                self.raw.close()

    def green(pipe):
        """The same file object as the stdlib's pipe, made over a GreenPipe; the stdlib's detached from the fd."""
        if pipe is None:
            return None
        if isinstance(pipe, io.FileIO):  # bufsize=0
            return GreenPipe(pipe)
        text = pipe if isinstance(pipe, io.TextIOWrapper) else None
        buffered = text.detach() if text is not None else pipe
        raw = GreenPipe(buffered.detach())
        buffered = (io.BufferedReader if raw.readable() else io.BufferedWriter)(raw)
        if text is None:
            return buffered
        return io.TextIOWrapper(buffered, text.encoding, text.errors, line_buffering=text.line_buffering,
                                write_through=text.write_through)

    class Popen(subprocess.Popen):
        __doc__ = ("subprocess.Popen, cooperative: wait(), communicate() and its pipes' reads and writes park only "
                   "the calling greenlet.")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stdin, self.stdout, self.stderr = green(self.stdin), green(self.stdout), green(self.stderr)
        _cooperative_communicate = _rebound(vars(subprocess.Popen)["_communicate"], namespace)

        def _communicate(self, input, endtime, orig_timeout):
            if getcurrent() is _local.__dict__.get("hub"):  # the hub cannot park: it blocks, as a thread
                return super()._communicate(input, endtime, orig_timeout)
            return self._cooperative_communicate(input, endtime, orig_timeout)
        # (the error pipe, which the stdlib reads until the child has exec'd)
        _execute_child = _rebound(vars(subprocess.Popen)["_execute_child"], dict(namespace, os=os_))

        def communicate(self, input=None, timeout=None):
            # With one pipe and no timeout, the stdlib reads or writes it
            # blocking: take the path it takes with a timeout instead.
            if timeout is not None or self._communication_started or (self.stdin, self.stdout, self.stderr).count(None) < 2:
                return super().communicate(input, timeout)
            try:
                result = self._communicate(input, None, None)
            finally:
                self._communication_started = True
            self.wait()
            return result

        def _wait(self, timeout):
            hub = _local.__dict__.get("hub")
            if self.returncode is not None or timeout is not None and timeout <= 0 or hub is None or \
                    getcurrent() is hub:  # known; a look without waiting; a thread's, or the hub's: it blocks
                return super()._wait(timeout)
            try:
                pidfd = _os.pidfd_open(self.pid)
            except (AttributeError, OSError):  # no pidfd here (Linux before 5.3, another system)
                return _helpers.apply(super()._wait, (timeout,))
            try:
                wait_read(pidfd, timeout, subprocess.TimeoutExpired(self.args, timeout))
            finally:
                _os.close(pidfd)
            return super()._wait(None)  # it has exited: this reaps it at once

        _exit_links: list[Callable[[Any], object]] | None = None  # rawlink's, while a greenlet waits for the exit

        def rawlink(self, callback):
            """Call callback(self) from the hub once the child has exited (so wait() and iwait() take a Popen)."""
            _check_callable(callback, "callback")
            if self.poll() is not None:
                return get_hub().run_callback(callback, self)
            if self._exit_links is None:
                self._exit_links = []
                spawn(self._notify_exit)  # a greenlet of its own waits for the child
            self._exit_links.append(callback)

        def unlink(self, callback):
            if self._exit_links and callback in self._exit_links:
                self._exit_links.remove(callback)

        def _notify_exit(self):
            try:
                self.wait()
            finally:  # (killed meanwhile: a later rawlink starts another)
                links, self._exit_links = self._exit_links, None
            for callback in links:
                get_hub().run_callback(callback, self)

    namespace["_PopenSelector"] = DefaultSelector
    namespace["Popen"] = Popen
    for name in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        namespace[name] = _rebound(getattr(subprocess, name), namespace)
    globals()["subprocess"] = module
    return module


# ---------------------------------------------------------------------------
# patch() and unpatch()

_originals: dict[tuple[Any, str], Any] = {}  # {(module or class, attribute): what patch() replaced there}


def _patch_table(wanted):
    """Yield (object, attribute, replacement) for each kind of patch wanted."""
    if wanted["socket"]:
        yield from ((_sys.modules["socket"], name, globals()[name]) for name in _COOPERATIVE)
    if wanted["ssl"]:
        # Every context the stdlib makes, before or after patch() and however
        # its class was imported, wraps with its class's sslsocket_class.
        # (Replacing ssl.SSLContext itself would make its property setters,
        # which call super(SSLContext, SSLContext), recurse.)
        ssl = _build_tls() if "SSLSocket" not in globals() else _sys.modules["ssl"]
        yield ssl.SSLContext, "sslsocket_class", globals()["SSLSocket"]
    if wanted["select"]:
        yield _sys.modules["select"], "select", select
        yield _sys.modules["select"], "poll", poll
    if wanted["selectors"]:
        std_selectors = _sys.modules["selectors"]
        yield std_selectors, "DefaultSelector", DefaultSelector
        yield std_selectors, "PollSelector", DefaultSelector  # what socketserver picks when imported later
        if "socketserver" in _sys.modules:  # what it picked, if imported already
            yield _sys.modules["socketserver"], "_ServerSelector", DefaultSelector
    if wanted["time"]:
        yield _sys.modules["time"], "sleep", sleep
    if wanted["threading"]:
        # threading's names only, not _thread.allocate_lock: importlib's module
        # locks are made of that, and keep per-thread state that the greenlets
        # of a thread would share (a KeyError in an import).
        import queue
        for name, replacement in (("Lock", _ThreadLock), ("_allocate_lock", _ThreadLock), ("RLock", _ThreadRLock),
                                  ("Condition", _ThreadCondition), ("local", local)):
            yield _threading, name, replacement  # Event, Semaphore, Barrier are built of these
        yield _threading.Thread, "join", _join
        yield queue, "SimpleQueue", queue._PySimpleQueue  # (Queue is built of threading's: already cooperative)
    if wanted["subprocess"]:
        import subprocess
        yield subprocess, "Popen", _build_subprocess().Popen  # run(), call(), check_output()... create it
        yield subprocess, "_PopenSelector", DefaultSelector
    if wanted["signal"]:
        import signal
        yield signal, "signal", _install_deferring
        yield signal, "getsignal", _installed_handler


class _DeferringHandler:
    """A signal handler that, landing in the hub's own code, runs at the hub's next step instead (patch(signal=True)).

    Elsewhere it runs at once, as Python runs handlers; what it raises in the
    hub's step goes to the main greenlet.
    """

    __slots__ = ("handler",)

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, signum, frame):
        hub = _local.__dict__.get("hub")  # (handlers run in the main thread)
        if hub is not None and getcurrent() is hub:
            hub._deferred.append((self.handler, signum))
            hub._wakeup.send()  # as _interrupt's
        else:
            self.handler(signum, frame)


def _install_deferring(signalnum: int, handler: Any) -> Any:
    """signal.signal under patch(signal=True): install handler wrapped in a _DeferringHandler."""
    std_signal = _originals[(_sys.modules["signal"], "signal")]
    previous = std_signal(signalnum, _DeferringHandler(handler) if callable(handler) else handler)
    return previous.handler if type(previous) is _DeferringHandler else previous


def _installed_handler(signalnum: int) -> Any:
    """signal.getsignal under patch(signal=True): the handler as the program gave it."""
    handler = _originals[(_sys.modules["signal"], "getsignal")](signalnum)
    return handler.handler if type(handler) is _DeferringHandler else handler


def patch(*, socket: bool = True, ssl: bool = True, select: bool = True, selectors: bool = True,
          time: bool = True, threading: bool = True, subprocess: bool = True, signal: bool = False) -> None:
    """Make the stdlib's blocking entry points coopsock's, so libraries using them cooperate.

    Covers socket.socket and the socket module's functions coopsock has, TLS
    (every ssl.SSLContext wraps sockets cooperatively), select.select and
    poll, selectors.DefaultSelector (and the one socketserver picks),
    time.sleep, threading's locks (and so Condition, Event, Semaphore,
    Barrier, queue.Queue, concurrent.futures: a greenlet that waits parks,
    a thread blocks), threading.local (per greenlet), Thread.join and
    subprocess.Popen (and so run(), check_output()...). With signal=True, a handler signal.signal() installs from then
    on is deferred when it lands in the hub's own code: it runs at the hub's
    next step, and what it raises goes to the main greenlet (without it, a
    handler that raises there can leave the hub inconsistent).
    Call it first thing in __main__: names bound earlier with
    `from socket import socket`, and locks, queues and handlers made before,
    stay the stdlib's. Threads stay OS threads, each with a hub of its own
    when it uses one; C extensions that do their own I/O still block.
    Idempotent; unpatch() undoes it. Raises nothing of its own.
    """
    wanted = {"socket": socket, "ssl": ssl, "select": select, "selectors": selectors, "time": time,
              "threading": threading, "subprocess": subprocess, "signal": signal}
    for target, attribute, replacement in list(_patch_table(wanted)):
        key = (target, attribute)
        if key not in _originals:  # recorded first: an interrupted patch() is still undone
            _originals[key] = target.__dict__.get(attribute, _MISSING)
        setattr(target, attribute, replacement)


def is_module_patched(name: str) -> bool:
    """Return True if patch() replaced something in the stdlib module `name` ("socket", "threading"...): gevent's."""
    return any((target.__name__ if type(target) is type(_sys) else target.__module__) == name  # a module, or a class
               for target, _ in _originals)


def is_anything_patched() -> bool:
    """Return True if patch() replaced anything (and unpatch() has not put it back): gevent's."""
    return bool(_originals)


def unpatch() -> None:
    """Put back every original patch() replaced; safe to call twice. Raises nothing."""
    for key in reversed(list(_originals)):
        (target, attribute), original = key, _originals[key]
        if original is _MISSING:
            delattr(target, attribute)
        else:
            setattr(target, attribute, original)
        del _originals[key]


# ---------------------------------------------------------------------------
# The gunicorn worker: gunicorn -k coopsock.GunicornWorker module:app

def _build_gunicorn_worker() -> Any:
    """Make GunicornWorker (importing gunicorn, once)."""
    if "GunicornWorker" in globals():
        return globals()["GunicornWorker"]
    import signal
    from functools import partial

    from gunicorn.sock import ssl_context as gunicorn_ssl_context
    from gunicorn.workers.base_async import AsyncWorker

    class GunicornWorker(AsyncWorker):
        """A gunicorn worker serving each connection in a greenlet, modelled on gunicorn's gevent worker.

        patch() comes first, so the application's libraries cooperate. Up to
        worker_connections connections at once, with gunicorn's keep-alive,
        heartbeat, max_requests, reload and TLS settings. SIGTERM: stop
        accepting, let the requests in flight finish within graceful_timeout,
        then kill the rest; SIGQUIT and SIGINT: stop at once.
        """

        def init_process(self) -> None:
            patch(signal=True)  # gunicorn's handlers, installed next, then run at the hub's next step
            self.sockets = [socket(s.FAMILY, _socket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets]  # type: ignore[has-type]
            self._stopping = Event()
            super().init_process()

        def init_signals(self) -> None:
            hubs = signal.set_wakeup_fd(-1)  # the hub's, which wakes its poll when a signal lands
            super().init_signals()
            signal.set_wakeup_fd(hubs)  # gunicorn's own pipe is for its sync workers' select()

        def run(self) -> None:
            ssl_args = {"ssl_context": gunicorn_ssl_context(self.cfg)} if self.cfg.is_ssl else {}
            servers = []
            for listener in self.sockets:  # (left non-blocking: the other workers accept on it too)
                server = StreamServer(listener, partial(self.handle, listener),
                                      spawn=Pool(self.worker_connections), **ssl_args)
                server.start()
                servers.append(server)
            while self.alive:
                self.notify()  # the heartbeat: the arbiter kills a worker silent for `timeout`
                self._stopping.wait(1.0)
            for server in servers:
                server.close()  # no new connections; gunicorn's arbiter starts a new worker
            deadline = _monotonic() + self.cfg.graceful_timeout
            running = [g for server in servers for g in server._handlers if not g.dead]
            while not self._quitting and _monotonic() < deadline and running:
                self.notify()
                joinall(running, min(1.0, deadline - _monotonic()))
                running = [g for g in running if not g.dead]
            if not self._quitting and running:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            for server in servers:
                server.stop(timeout=0)

        _quitting = False

        def notify(self) -> None:
            super().notify()
            if self.ppid != _os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
                self._stopping.set()

        def handle_exit(self, sig: int, frame: Any) -> None:  # SIGTERM: graceful
            self.alive = False
            self._stopping.set()

        def handle_quit(self, sig: int, frame: Any) -> None:  # SIGQUIT, SIGINT: at once
            self.alive, self._quitting = False, True
            self.cfg.worker_int(self)
            self._stopping.set()

        def handle_usr1(self, sig: int, frame: Any) -> None:
            spawn(super().handle_usr1, sig, frame)  # reopening log files may wait

        def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
            try:
                return super().handle_request(listener_name, req, sock, addr)
            except (GreenletExit, SystemExit):  # killed by a stop: the connection drops, as gevent's worker does
                return None
            finally:
                if not self.alive:  # max_requests reached: stop without waiting for the heartbeat
                    self._stopping.set()

        def handle_error(self, req: Any, client: Any, addr: Any, einfo: Any) -> None:
            if not isinstance(einfo, (GreenletExit, SystemExit)):  # (a stop's kill: the connection drops quietly)
                super().handle_error(req, client, addr, einfo)

        def timeout_ctx(self) -> Timeout:
            return Timeout(self.cfg.keepalive, False)  # an idle keep-alive connection ends quietly

        def handle(self, listener: Any, client: Any, addr: Any) -> None:
            client.setblocking(True)
            super().handle(listener, client, addr)

    GunicornWorker.__module__ = __name__
    globals()["GunicornWorker"] = GunicornWorker
    return GunicornWorker


def __getattr__(name: str) -> Any:
    # PEP 562: the TLS classes, coopsock.subprocess and the gunicorn worker
    # are built, and ssl, subprocess or gunicorn imported, on first use only.
    if name in _TLS_NAMES:
        _build_tls()
        return globals()[name]
    if name == "subprocess":
        return _build_subprocess()
    if name == "GunicornWorker":
        return _build_gunicorn_worker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TLS_NAMES, "subprocess", "GunicornWorker"})


# ---------------------------------------------------------------------------
# The demo: python -m coopsock, an echo server written as a user would write it

def _serve(args, log):
    """Listen, fork the other workers, echo until Ctrl-C or SIGTERM; return the exit status."""
    import signal
    stops, stopping = {signal.SIGTERM, signal.SIGINT}, []  # SIGINT too: a shell's `cmd &` starts it ignored

    def stop(signum, frame):  # once: a worker may get Ctrl-C's SIGINT and the parent's SIGTERM
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt
    for signum in stops:
        signal.signal(signum, stop)
    (host, family, address), port = args.host, args.port
    dualstack, where = address == "::" and has_dualstack_ipv6(), f"[{host}]" if ":" in host else host  # noqa: F821
    try:
        listener = create_server((host, port), family=family, backlog=args.backlog, dualstack_ipv6=dualstack)
    except OSError as exc:  # create_server's message names the address again: cut it
        hint = {_errno.EADDRINUSE: "choose another --port, or stop the program that uses it",
                _errno.EACCES: "ports below 1024 need privileges: use a --port above 1023"}.get(exc.errno, "check --host")
        log.error("cannot listen on %s:%d: %s; %s", where, port, str(exc.strerror or exc).split(" (while")[0], hint)
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # a stop while forking waits till all serve, forked or not
    # The other workers share the listener, each with a hub of its own (none
    # exists yet), once through the gate: a byte each, sent when all are forked.
    children, (gate, key) = [], _os.pipe()
    try:
        while len(children) < args.workers - 1 and 0 not in children:
            children.append(_os.fork())  # 0 in the worker
        _os.write(key, bytes(len(children) * (0 not in children)))
    except OSError as exc:  # EAGAIN or ENOMEM: the gate closes unopened, and the workers forked exit unheard
        _os.close(key)
        for pid in children:
            _os.waitpid(pid, 0)
        log.error("cannot start worker %d of --workers %d: fork() failed: %s; use fewer --workers, or raise "
                  "the process limit (ulimit -u)", len(children) + 2, args.workers, exc.strerror or exc)
        return 1
    _os.close(key)
    if 0 in children and not _os.read(gate, 1):
        _os._exit(1)
    _os.close(gate)
    log.info("echo server listening on %s:%d%s (loop backend: %s, pid %d)", where, listener.getsockname()[1],
             " and IPv4" if dualstack else "", BACKEND, _os.getpid())
    served = {"connections": 0, "bytes": 0, "open": 0}

    def echo(conn, address):  # every byte back, until the peer closes, goes idle, or the server stops
        # Counted here, not as the server's handlers: a burst has many accepted and not yet started.
        if served["open"] >= args.max_connections:
            return log.warning("refused %s: --max-connections %d reached", address, args.max_connections)
        served["connections"] += 1
        log.debug("connection from %s opened", address)
        conn.settimeout(args.idle_timeout or None)
        reason = "the server stops"
        served["open"] += 1  # no switch since the check: a burst gets exactly --max-connections
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
                served["bytes"] += len(data)
            reason = "closed by peer"
        except OSError as exc:
            reason = f"idle for {args.idle_timeout} s" if isinstance(exc, _timed_out) else exc.strerror or str(exc)
        finally:  # then the server closes it
            served["open"] -= 1
            log.debug("connection from %s closed (%s)", address, reason)
    server = StreamServer(listener, echo)  # out of fds, its accept loop backs off and logs once
    server.stop_timeout = 0  # an echo connection never ends by itself: close them all at once
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    log.info("served %d connection(s), echoed %d bytes", served["connections"], served["bytes"])
    if 0 in children:  # a worker: back to nothing of the parent's
        _os._exit(0)
    for pid in children:  # one that has ended stays a zombie until waited for: kill() cannot miss
        _os.kill(pid, signal.SIGTERM)
    return max((_os.waitstatus_to_exitcode(_os.waitpid(pid, 0)[1]) for pid in children), default=0, key=abs)


def main(argv=None):
    """Run the echo server demo (python -m coopsock --help); return the exit status."""
    import argparse
    import logging

    def number(kind, low, high, what):  # an argparse type: kind(text) from low to high, NaN refused
        def parse(text):
            try:
                if low <= kind(text) <= high:
                    return kind(text)
            except ValueError:
                pass
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return parse

    def host(name):  # (name, family, address) to listen on: its first address, by the stdlib (no hub yet)
        try:
            info = _std_getaddrinfo(name or None, 0, 0, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)[0]
        except (OSError, UnicodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot listen on {name!r} ({exc}): use an IP address "
                                             "of this machine (127.0.0.1, ::1...) or its name") from None
        return name, info[0], info[4][0]
    parser = argparse.ArgumentParser(prog="python -m coopsock", description="A cooperative TCP echo server.")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")  # one line
    add, count = parser.add_argument, number(int, 1, float("inf"), "a count: use 1 or more")
    add("--host", type=host, default="127.0.0.1", help="IPv4 or IPv6; :: is IPv4 too where the OS allows (%(default)s)")
    add("--port", type=number(int, 0, 65535, "a TCP port: use 1 to 65535, or 0 for any free one"), default=8000,
        help="0: any free port (%(default)s)")
    add("--backlog", type=number(int, 0, 2**31 - 1, "a backlog: use 0 to 2147483647"), default=1024,
        help="capped by the kernel's somaxconn (%(default)s)")
    add("--max-connections", type=count, default=1000, metavar="N", help="close new ones beyond N open (%(default)s)")
    add("--idle-timeout", type=number(float, 0, 86400 * 365, "a duration: use 0 (never) to 31536000 s"),
        default=300.0, metavar="SECONDS", help="close a connection silent this long; 0: never (%(default)s)")
    add("--workers", type=count, default=1, metavar="N", help="processes sharing the listener (%(default)s)")
    add("--loop", choices=list(_LOADERS), help="loop backend (default: COOPSOCK_LOOP's, or the first that loads)")
    add("-v", "--verbose", action="store_true", help="log every connection")
    add("--version", action="version", version=f"coopsock {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=_sys.stderr,
                        format="%(asctime)s coopsock[%(process)d] %(message)s")
    log = logging.getLogger("coopsock")
    if args.loop:
        try:
            _use_backend(args.loop)
        except ImportError as exc:
            log.error("%s", exc)
            return 2
    return _serve(args, log)


if __name__ == "__main__":
    _sys.exit(main())
