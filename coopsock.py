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
the licence header, ``pip install greenlet``, and you are done.

The invariants a reader must hold:

* One hub per thread (``get_hub()``): a greenlet that runs the event loop.
  It is created on first use, never at import.
* A blocking call (``sock.recv``, ``sleep``, ``Greenlet.join``...) tries the
  operation, and if it would block, parks the calling greenlet in the hub until
  a watcher fires. ``Hub.wait(watcher)`` is the one primitive that parks a
  greenlet on a watcher. Never block from inside the hub itself
  (``BlockingSwitchOutError``).
* The loop speaks pyev's API. The backend is chosen once at import: the real
  ``pyev`` module if it imports, else libev (``libev.so.4``) bound with ctypes,
  else a pure-Python loop on ``selectors``. ``COOPSOCK_LOOP=pyev|libev|selectors``
  forces one; ``coopsock.BACKEND`` names the one in use.
"""

__version__ = "0.1.0"

__all__ = [
    # the hub and greenlets
    "get_hub", "Hub", "Greenlet", "GreenletExit", "spawn", "spawn_later",
    "sleep", "joinall", "kill", "BACKEND",
    # timeouts
    "Timeout", "with_timeout",
    # sockets
    "socket", "socketpair", "create_connection", "create_server", "fromfd",
    "getaddrinfo", "gethostbyname", "getnameinfo",
    "wait_read", "wait_write", "wait_readwrite",
    # errors
    "LoopExit", "BlockingSwitchOutError", "ConcurrentObjectUseError",
    "error", "timeout", "gaierror", "herror",
    # the demo server
    "main",
]

# ---------------------------------------------------------------------------
# Imports

import sys

if __name__ == "__main__":  # python -m coopsock: let `import coopsock` find this very module
    sys.modules.setdefault("coopsock", sys.modules[__name__])

import _socket
import errno as _errno
import os
import socket as _stdsocket
import stat as _stat
import threading
import time as _time
import traceback
import types
from collections import deque
from operator import index as _index

from greenlet import GreenletExit, getcurrent, greenlet

# The stdlib names a user of coopsock.socket reaches for: constants, and the
# exception classes, which are the very same objects as the stdlib's.
globals().update((name, value) for name, value in vars(_stdsocket).items()
                 if name.isupper() and name[:3] in ("AF_", "SOC", "SO_", "SOL", "IPP", "TCP",
                                                     "MSG", "SHU", "AI_", "NI_", "INA"))
error, timeout, gaierror, herror = OSError, TimeoutError, _stdsocket.gaierror, _stdsocket.herror
getdefaulttimeout, setdefaulttimeout = _stdsocket.getdefaulttimeout, _stdsocket.setdefaulttimeout
_monotonic = _time.monotonic


# ---------------------------------------------------------------------------
# Exceptions


class LoopExit(Exception):
    """Raised in the main greenlet when it waits and nothing can ever wake it."""


class BlockingSwitchOutError(AssertionError):
    """Raised when a blocking function is called from inside the hub itself."""


class ConcurrentObjectUseError(AssertionError):
    """Raised when a second greenlet waits for the same event on the same object."""


# ---------------------------------------------------------------------------
# The loop layer: pyev, or a stand-in with the same names
#
# The hub below uses only the part of pyev's API listed in pyev-api.md. The two
# stand-ins provide exactly those names; each is a group of classes picked by
# _load_backend() at import time.

EV_READ, EV_WRITE, EV__IOFDSET = 0x01, 0x02, 0x80
EV_TIMER, EV_SIGNAL, EV_IDLE = 0x100, 0x400, 0x2000
EV_PREPARE, EV_CHECK, EV_ASYNC, EV_ERROR = 0x4000, 0x8000, 0x80000, -0x80000000
EVRUN_NOWAIT, EVRUN_ONCE, EVBREAK_ONE, EVBREAK_ALL = 1, 2, 1, 2
EVFLAG_AUTO, EVFLAG_NOENV, EVFLAG_FORKCHECK = 0, 0x01000000, 0x02000000
EVBACKEND_SELECT, EVBACKEND_POLL, EVBACKEND_EPOLL, EVBACKEND_KQUEUE = 1, 2, 4, 8
_CONSTANTS = {name: value for name, value in globals().items() if name.startswith(("EV_", "EVRUN", "EVBREAK", "EVFLAG", "EVBACKEND"))}


class _Namespace:
    """A stand-in for the pyev module: the same names, as attributes."""

    def __init__(self, name, **names):
        self.__name__ = name
        self.__dict__.update(_CONSTANTS, **names)


def _fileno(fd):
    if not isinstance(fd, int):
        if not hasattr(fd, "fileno"):
            raise TypeError(f"argument must be an int, or have a fileno() method, not {type(fd).__name__}")
        fd = fd.fileno()
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def _check_timer(after, repeat):
    if not repeat >= 0:  # NaN too: libev asserts on it
        raise ValueError(f"repeat must be >= 0, not {repeat}")
    if after != after:
        raise ValueError("after must be a number of seconds, not NaN")


def _report_callback_error(exc, watcher):
    """Report an exception from a watcher callback as libev's bindings do: unraisable."""
    # The default sys.unraisablehook takes only its own struct type, which
    # Python code cannot build; the hub installs a hook that takes any object.
    args = types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                                 err_msg="Exception ignored in watcher callback", object=watcher.callback)
    try:
        sys.unraisablehook(args)
    except TypeError:
        traceback.print_exception(type(exc), exc, exc.__traceback__)


# --- libev through ctypes --------------------------------------------------
#
# libev's watchers are C structs the caller owns; libev keeps pointers to them
# while they are active or pending. So every such struct stays referenced from
# _ev_watchers until it is stopped, one module-level trampoline serves every
# callback, and the macros libev does not export (ev_io_set, ev_is_active...)
# are done here on the struct fields. The layout is libev 4's default build
# (priorities enabled, EV_COMMON = "void *data"), checked by _probe_libev().

import ctypes as _ct

_ev_lib = None          # the CDLL, once loaded
_ev_watchers = {}       # {struct address: watcher} for every active or pending watcher
_ev_syserrors = {}      # {thread id: message} from libev's syserr callback
_ev_signal_loops = {}   # {signum: loop}: libev aborts if one signal is on two loops


class _ev_watcher(_ct.Structure):
    _fields_ = [("active", _ct.c_int), ("pending", _ct.c_int), ("priority", _ct.c_int),
                ("data", _ct.c_void_p), ("cb", _ct.c_void_p)]


class _ev_io(_ev_watcher):
    _fields_ = [("next", _ct.c_void_p), ("fd", _ct.c_int), ("events", _ct.c_int)]


class _ev_timer(_ev_watcher):
    _fields_ = [("at", _ct.c_double), ("repeat", _ct.c_double)]


class _ev_signal(_ev_watcher):
    _fields_ = [("next", _ct.c_void_p), ("signum", _ct.c_int)]


class _ev_async(_ev_watcher):
    _fields_ = [("sent", _ct.c_int)]


@_ct.CFUNCTYPE(None, _ct.c_void_p, _ct.c_void_p, _ct.c_int)
def _ev_trampoline(loop_ptr, watcher_ptr, revents):
    watcher = _ev_watchers[watcher_ptr]
    if not watcher._struct.active:  # libev stopped it before the call (a one-shot timer, an fd error)
        del _ev_watchers[watcher_ptr]
    try:
        watcher.callback(watcher, revents)
    except BaseException as exc:
        if not watcher.loop.debug:
            raise  # reported as unraisable, as pyev does
        watcher.loop._debug_error = exc  # pyev's debug mode: stop the loop, raise from start()
        _ev_lib.ev_break(loop_ptr, EVBREAK_ALL)


@_ct.CFUNCTYPE(None, _ct.c_char_p)
def _ev_syserr(message):
    # Without this hook libev calls abort() on a failed system call.
    _ev_syserrors[threading.get_ident()] = message.decode(errors="replace")


_EV_TRAMPOLINE = _ct.cast(_ev_trampoline, _ct.c_void_p).value
_EV_SIGNATURES = {  # name: (restype, argtypes); "p" is a pointer, "i" an int
    "ev_version_major": (_ct.c_int, ""), "ev_version_minor": (_ct.c_int, ""),
    "ev_loop_new": (_ct.c_void_p, "u"), "ev_loop_destroy": (None, "p"), "ev_loop_fork": (None, "p"),
    "ev_run": (_ct.c_int, "pi"), "ev_break": (None, "pi"), "ev_now": (_ct.c_double, "p"),
    "ev_now_update": (None, "p"), "ev_time": (_ct.c_double, ""), "ev_ref": (None, "p"),
    "ev_unref": (None, "p"), "ev_backend": (_ct.c_uint, "p"), "ev_iteration": (_ct.c_uint, "p"),
    "ev_depth": (_ct.c_uint, "p"), "ev_pending_count": (_ct.c_uint, "p"),
    "ev_set_syserr_cb": (None, "p"), "ev_feed_event": (None, "ppi"), "ev_invoke": (None, "ppi"),
    "ev_timer_again": (None, "pp"), "ev_timer_remaining": (_ct.c_double, "pp"),
    "ev_async_send": (None, "pp"),
    **{f"ev_{kind}_{verb}": (None, "pp") for kind in ("io", "timer", "signal", "idle", "prepare",
                                                     "check", "async") for verb in ("start", "stop")},
}


def _load_libev():
    """Bind the system libev with ctypes; return the stand-in pyev namespace."""
    global _ev_lib
    if _ev_lib is None:
        from ctypes.util import find_library
        # Cheap sonames first: find_library() costs ~30 ms and finds nothing on musl.
        for name in ("libev.so.4", "libev.4.dylib", "/opt/homebrew/lib/libev.4.dylib",
                     "/usr/local/lib/libev.4.dylib", find_library("ev")):
            try:
                lib = _ct.CDLL(name)
                break
            except (OSError, TypeError):
                continue
        else:
            raise ImportError("libev is not installed: install libev4 (Debian/Ubuntu) or libev (Homebrew)")
        kinds = {"p": _ct.c_void_p, "i": _ct.c_int, "u": _ct.c_uint}
        for fname, (restype, args) in _EV_SIGNATURES.items():
            try:
                func = getattr(lib, fname)
            except AttributeError:
                raise ImportError(f"{lib._name} lacks {fname}: it is not libev 4") from None
            func.restype, func.argtypes = restype, [kinds[a] for a in args]
        if lib.ev_version_major() != 4:
            raise ImportError(f"{lib._name} is libev {lib.ev_version_major()}, not libev 4")
        _probe_libev(lib)
        for cls, kind in _EV_KINDS:
            cls._start, cls._stop = getattr(lib, f"ev_{kind}_start"), getattr(lib, f"ev_{kind}_stop")
        lib.ev_set_syserr_cb(_ct.cast(_ev_syserr, _ct.c_void_p))
        _ev_lib = lib
    return _Namespace("libev", Loop=_EvLoop, Io=_EvIo, Timer=_EvTimer, Signal=_EvSignal,
                      Idle=_EvIdle, Prepare=_EvPrepare, Check=_EvCheck, Async=_EvAsync, Error=_EvError,
                      time=_ev_lib.ev_time, version=_ev_version, abi_version=_ev_version)


def _probe_libev(lib):
    """Check the struct layout on a scratch loop, touching no file descriptor."""
    loop = lib.ev_loop_new(0)
    if not loop:
        raise ImportError("ev_loop_new() failed")
    timer = _ev_timer(priority=1, data=0x5EED, cb=_EV_TRAMPOLINE, at=1000.0, repeat=0.0)
    lib.ev_timer_start(loop, _ct.addressof(timer))
    started = timer.active > 0 and timer.at > 1000.0  # libev made "at" absolute
    lib.ev_timer_stop(loop, _ct.addressof(timer))
    lib.ev_loop_destroy(loop)
    if not (started and timer.active == 0 and abs(timer.at - 1000.0) < 1.0
            and timer.data == 0x5EED and timer.cb == _EV_TRAMPOLINE and timer.priority == 1):
        raise ImportError("libev's struct layout is not the one coopsock knows")


def _closed_loop():
    raise _EvError("this loop is closed: its hub was destroyed")


def _is_epoll(fd):
    try:
        return "eventpoll" in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False


def _ev_version():
    return _ev_lib.ev_version_major(), _ev_lib.ev_version_minor()


class _EvError(Exception):
    """pyev.Error: a libev call failed or a watcher was misused."""


class _EvLoop:
    """pyev.Loop on a loop of its own (ev_loop_new, never ev_default_loop).

    The default loop reaps children on SIGCHLD, which makes Popen.wait() see 0.
    """

    default = False

    def __init__(self, flags=EVFLAG_AUTO, callback=None, data=None, io_interval=0.0,
                 timeout_interval=0.0, debug=False):
        self._ptr = _ev_lib.ev_loop_new(flags)
        if not self._ptr:
            raise _EvError(f"ev_loop_new({flags:#x}) failed: no usable backend")
        self.data, self.debug = data, debug
        self._changed_fds = []  # fds whose io watchers changed since the last poll
        self._async_started = False
        self._runner = self._debug_error = None

    def _close(self):
        """Destroy the libev loop now (closing its fds); its watchers become inactive."""
        if self._ptr:
            for watcher in [w for w in list(_ev_watchers.values()) if w.loop is self]:
                watcher._struct.active = watcher._struct.pending = 0
                _ev_watchers.pop(watcher._ptr, None)
            _ev_lib.ev_loop_destroy(self._ptr)
            self._ptr = None

    __del__ = _close

    def start(self, flags=0):
        ptr, me, runner = self._ptr, threading.get_ident(), self._runner
        if not ptr or runner not in (None, me):  # libev aborts on a loop run by two threads at once
            raise _EvError("this loop is closed" if not ptr else
                           "this loop is running in another thread: use one loop (one hub) per thread")
        if self._changed_fds:
            self._kill_closed_fds()
        self._runner = me
        try:
            alive = _ev_lib.ev_run(ptr, flags)
        finally:
            self._runner = runner
        if _ev_syserrors:
            message = _ev_syserrors.pop(me, None)
            if message:
                raise _EvError(f"libev: {message}")
        if self._debug_error is not None:
            error, self._debug_error = self._debug_error, None
            raise error
        return bool(alive)

    def _kill_closed_fds(self):
        # Debian's libev asserts, and so aborts the process, when epoll_ctl
        # says EBADF: an io watcher left started on an fd closed behind its
        # back. Check each changed fd before libev does, and treat a closed
        # one as libev's fd_kill would: stop its watchers and report EV_ERROR.
        fds, self._changed_fds = set(self._changed_fds), []
        for fd in fds:
            try:
                os.get_inheritable(fd)  # fcntl(F_GETFD): the cheapest "is it open?"
            except OSError:
                for watcher in [w for w in list(_ev_watchers.values())
                                if isinstance(w, _EvIo) and w.loop is self and w.fd == fd]:
                    watcher.stop()
                    watcher.feed(EV_ERROR | EV_READ | EV_WRITE)

    def stop(self, how=EVBREAK_ONE):
        _ev_lib.ev_break(self._ptr or _closed_loop(), how)

    def now(self):
        return _ev_lib.ev_now(self._ptr or _closed_loop())

    def update(self):
        _ev_lib.ev_now_update(self._ptr or _closed_loop())

    def ref(self):
        _ev_lib.ev_ref(self._ptr or _closed_loop())

    def unref(self):
        _ev_lib.ev_unref(self._ptr or _closed_loop())

    def reset(self):
        _ev_lib.ev_loop_fork(self._ptr or _closed_loop())

    def _active_watchers(self):
        return sum(1 for w in list(_ev_watchers.values()) if w.loop is self and w._struct.active)

    backend = property(lambda self: _ev_lib.ev_backend(self._ptr or _closed_loop()))
    pending = property(lambda self: _ev_lib.ev_pending_count(self._ptr or _closed_loop()))
    depth = property(lambda self: _ev_lib.ev_depth(self._ptr or _closed_loop()))
    iteration = property(lambda self: _ev_lib.ev_iteration(self._ptr or _closed_loop()))


class _EvWatcher:
    """The part every pyev watcher shares: start, stop, callback, data."""

    __slots__ = ("_struct", "_ptr", "loop", "callback", "data", "__weakref__")
    _Struct = _ev_watcher
    _start = _stop = None  # the libev functions, set on each subclass

    def __init__(self, loop, callback, data=None, priority=0):
        if not isinstance(loop, _EvLoop):
            raise TypeError(f"loop must be a Loop, not {type(loop).__name__}")
        self._struct = self._Struct(cb=_EV_TRAMPOLINE)
        self._ptr = _ct.addressof(self._struct)
        self.loop, self.callback, self.data = loop, callback, data
        if priority:  # the struct starts at 0
            self.priority = priority

    def start(self):
        if not self._struct.active:
            self._start(self.loop._ptr or _closed_loop(), self._ptr)
            _ev_watchers[self._ptr] = self

    def stop(self):
        struct = self._struct
        if struct.active or struct.pending:
            self._stop(self.loop._ptr, self._ptr)  # also clears a pending event
            _ev_watchers.pop(self._ptr, None)

    def feed(self, revents):
        _ev_lib.ev_feed_event(self.loop._ptr or _closed_loop(), self._ptr, revents)
        _ev_watchers[self._ptr] = self

    def invoke(self, revents):
        self.callback(self, revents)

    def _check_inactive(self):
        if self._struct.active:
            raise _EvError("cannot set a watcher while it is active: stop it first")

    active = property(lambda self: bool(self._struct.active))
    pending = property(lambda self: bool(self._struct.pending))

    @property
    def priority(self):
        return self._struct.priority

    @priority.setter
    def priority(self, value):
        self._check_inactive()
        self._struct.priority = max(-2, min(2, value))

    def __repr__(self):
        return f"<{type(self).__name__} active={self.active} at {self._ptr:#x}>"


class _EvIo(_EvWatcher):
    """pyev.Io: wakes when fd is readable (EV_READ) and/or writable (EV_WRITE)."""

    __slots__ = ()
    _Struct = _ev_io

    def __init__(self, fd, events, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self.set(fd, events)

    def set(self, fd, events):
        self._check_inactive()
        fd = _fileno(fd)
        # libev aborts on an fd that epoll refuses: one not open (or so large
        # that libev's fd table would grow without bound), or an epoll fd.
        if not _stat.S_IFMT(os.fstat(fd).st_mode) and _is_epoll(fd):
            raise OSError(_errno.EINVAL, f"cannot watch fd {fd} with libev: it is an epoll instance")
        if not events or events & ~(EV_READ | EV_WRITE):
            raise _EvError("illegal event mask: use EV_READ, EV_WRITE or both")
        self._struct.fd, self._struct.events = fd, events | EV__IOFDSET  # as ev_io_set does

    def start(self):
        if not self._struct.active:
            self.loop._changed_fds.append(self._struct.fd)
            _ev_lib.ev_io_start(self.loop._ptr or _closed_loop(), self._ptr)
            _ev_watchers[self._ptr] = self

    def stop(self):
        struct = self._struct
        if struct.active or struct.pending:
            self.loop._changed_fds.append(struct.fd)
            _ev_lib.ev_io_stop(self.loop._ptr, self._ptr)
            _ev_watchers.pop(self._ptr, None)

    fd = property(lambda self: self._struct.fd)
    events = property(lambda self: self._struct.events & (EV_READ | EV_WRITE))


class _EvTimer(_EvWatcher):
    """pyev.Timer: fires `after` seconds from loop.now(), then every `repeat` (0: once)."""

    __slots__ = ()
    _Struct = _ev_timer

    def __init__(self, after, repeat, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self.set(after, repeat)

    def set(self, after, repeat):
        self._check_inactive()
        _check_timer(after, repeat)
        self._struct.at, self._struct.repeat = after, repeat  # as ev_timer_set does

    def reset(self):
        _ev_lib.ev_timer_again(self.loop._ptr, self._ptr)
        if self._struct.active:
            _ev_watchers[self._ptr] = self

    repeat = property(lambda self: self._struct.repeat)
    remaining = property(lambda self: _ev_lib.ev_timer_remaining(self.loop._ptr, self._ptr))


class _EvSignal(_EvWatcher):
    """pyev.Signal: fires when the process receives `signum` (libev's own handler)."""

    __slots__ = ()
    _Struct = _ev_signal

    def __init__(self, signum, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self.set(signum)

    def set(self, signum):
        self._check_inactive()
        if not 0 < signum < 65:
            raise ValueError(f"illegal signal number {signum}")
        self._struct.signum = signum

    def start(self):
        # libev aborts when one signal is watched from two loops.
        owner = _ev_signal_loops.setdefault(self._struct.signum, self.loop)
        if owner is not self.loop:
            raise _EvError(f"signal {self._struct.signum} is already watched by another loop")
        super().start()

    def stop(self):
        super().stop()
        if _ev_signal_loops.get(self._struct.signum) is self.loop:
            del _ev_signal_loops[self._struct.signum]

    signum = property(lambda self: self._struct.signum)


class _EvAsync(_EvWatcher):
    """pyev.Async: send() from any thread wakes the loop and fires the callback."""

    __slots__ = ()
    _Struct = _ev_async

    def start(self):
        self.loop._async_started = True
        super().start()

    def send(self):
        # Before any Async started on the loop, libev has no wake-up pipe and
        # asserts (aborts) on the next poll; and there is no one to wake anyway.
        if self.loop._async_started:
            _ev_lib.ev_async_send(self.loop._ptr, self._ptr)

    sent = property(lambda self: bool(self._struct.sent))


def _ev_watcher_class(name, doc):
    return type(name, (_EvWatcher,), {"__slots__": (), "__doc__": doc})


_EvIdle = _ev_watcher_class("_EvIdle", "pyev.Idle: fires on loop passes with nothing else to do.")
_EvPrepare = _ev_watcher_class("_EvPrepare", "pyev.Prepare: fires before each poll.")
_EvCheck = _ev_watcher_class("_EvCheck", "pyev.Check: fires after each poll.")
_EV_KINDS = ((_EvIo, "io"), (_EvTimer, "timer"), (_EvSignal, "signal"), (_EvAsync, "async"),
             (_EvIdle, "idle"), (_EvPrepare, "prepare"), (_EvCheck, "check"))


# --- the pure-Python stand-in on selectors ---------------------------------
#
# The same watcher semantics as libev, for machines without it: level-triggered
# io, timers relative to the cached loop time, prepare -> poll -> check with
# idle watchers only on passes with nothing else to do, and an Async that
# another thread wakes through a socketpair.

import selectors
from heapq import heapify, heappop, heappush


class _SelError(Exception):
    """pyev.Error for the selectors stand-in."""


class _SelLoop:
    """pyev.Loop in pure Python on the best selector the OS has."""

    default = False

    def __init__(self, flags=EVFLAG_AUTO, callback=None, data=None, io_interval=0.0,
                 timeout_interval=0.0, debug=False):
        self.data, self.debug = data, debug
        self.depth = self.iteration = 0
        self._runner = None         # the thread in start(), if any
        self._refs = 0              # active watchers, less unref() calls, as libev counts them
        self._break = False
        self._ios = {}              # {fd: [active io watchers]}
        self._changed = {}          # {fd: True if a watcher was (re)set on it} since the last poll
        self._registered = {}       # {fd: events the selector watches}
        self._timers = []           # heap of [when, sequence, watcher or None once stopped]
        self._sequence = 0
        self._prepares, self._checks, self._idles, self._asyncs = [], [], [], []
        self._pending = deque()     # (watcher, revents) to invoke in this pass
        self._now = _monotonic()
        self._open_selector()

    def _open_selector(self):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = _nonblocking_pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._changed.update(dict.fromkeys(self._ios, True))
        self._registered = {}

    def _close_selector(self):
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def reset(self):
        """Rebuild the selector in a forked child (it shares the parent's otherwise)."""
        if self._selector is None:
            raise _SelError("this loop is closed: its hub was destroyed")
        self._close_selector()
        self._open_selector()

    def __del__(self):
        if getattr(self, "_selector", None) is not None:
            self._close()

    def _wake(self):  # from any thread
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    def _close(self):
        if self._selector is not None:
            self._close_selector()
            self._selector = None

    def start(self, flags=0):
        if self._selector is None:
            raise _SelError("this loop is closed: its hub was destroyed")
        me, runner = threading.get_ident(), self._runner
        if runner not in (None, me):
            raise _SelError("this loop is running in another thread: use one loop (one hub) per thread")
        self.depth += 1
        self._break, self._runner = False, me
        try:
            while True:
                self._run_once(flags)
                if flags or self._break or self._refs <= 0:
                    return self._refs > 0
        finally:
            self.depth -= 1
            self._runner = runner

    def _run_once(self, flags):
        self.iteration += 1
        self._queue(self._prepares, EV_PREPARE)
        self._invoke_pending()
        self._update_registrations()
        timeout = None
        if flags & EVRUN_NOWAIT or self._idles or self._refs <= 0:
            timeout = 0
        elif self._timers:
            timeout = min(max(0.0, self._timers[0][0] - _monotonic()), 3600.0)  # select() has a limit
        ready = self._selector.select(timeout)
        self._now = _monotonic()
        for key, mask in ready:
            if key.fileobj is self._wake_r:
                self._drain_wakeups()
                continue
            for watcher in self._ios.get(key.fd, ()):
                if watcher._events & mask:
                    watcher.feed(watcher._events & mask)
        self._expire_timers()
        if not self._pending:
            self._queue(self._idles, EV_IDLE)
        self._queue(self._checks, EV_CHECK)
        self._invoke_pending()

    def _drain_wakeups(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass
        for watcher in self._asyncs:
            if watcher._sent:
                watcher._sent = False
                watcher.feed(EV_ASYNC)

    def _expire_timers(self):
        timers, now = self._timers, self._now
        while timers and timers[0][0] <= now:
            when, _, watcher = heappop(timers)
            if watcher is None:
                continue  # stopped
            if watcher._repeat:
                watcher._entry = entry = [max(when + watcher._repeat, now), self._next_sequence(), watcher]
                heappush(timers, entry)
            else:  # a one-shot timer stops itself as it fires
                watcher._entry, watcher._active = None, False
                self._refs -= 1
            watcher.feed(EV_TIMER)

    def _next_sequence(self):
        self._sequence += 1
        return self._sequence

    def _queue(self, watchers, revents):
        for watcher in watchers:
            watcher.feed(revents)

    def _invoke_pending(self):
        pending = self._pending
        while pending:
            watcher, revents = pending.popleft()
            if watcher._fed:  # stop() clears a pending event, as in libev
                watcher._fed = False
                try:
                    watcher.callback(watcher, revents)
                except BaseException as exc:
                    if self.debug:
                        raise
                    _report_callback_error(exc, watcher)

    def _update_registrations(self):
        # Like libev, touch the kernel only for fds whose watchers changed
        # since the last poll, and re-register an fd whose watcher was (re)set:
        # its number may now name a new file that the OS knows nothing about.
        changed, self._changed = self._changed, {}
        for fd, was_set in changed.items():
            want = 0
            for watcher in self._ios.get(fd, ()):
                want |= watcher._events
            have = self._registered.get(fd, 0)
            if want == have and not was_set:
                continue
            if have:
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                del self._registered[fd]
            if want:
                try:
                    self._selector.register(fd, want)
                    self._registered[fd] = want
                except Exception:  # closed behind the watcher's back, or the loop's own: fail its watchers
                    for watcher in list(self._ios.get(fd, ())):
                        watcher.stop()
                        watcher.feed(EV_ERROR | EV_READ | EV_WRITE)

    def stop(self, how=EVBREAK_ONE):
        self._break = True

    def now(self):
        return self._now

    def update(self):
        self._now = _monotonic()

    def _active_watchers(self):
        return (sum(map(len, self._ios.values())) + sum(e[2] is not None for e in self._timers)
                + sum(w._active for w in self._prepares + self._checks + self._idles + self._asyncs))

    def ref(self):
        self._refs += 1

    def unref(self):
        self._refs -= 1

    backend = property(lambda self: {"EpollSelector": EVBACKEND_EPOLL, "KqueueSelector": EVBACKEND_KQUEUE,
                                     "PollSelector": EVBACKEND_POLL}.get(type(self._selector).__name__,
                                                                         EVBACKEND_SELECT))
    pending = property(lambda self: len(self._pending))


class _SelWatcher:
    """The part every watcher of the selectors stand-in shares."""

    __slots__ = ("loop", "callback", "data", "_priority", "_active", "_fed", "__weakref__")
    _registry = None  # the name of the loop's list of active watchers of this kind

    def __init__(self, loop, callback, data=None, priority=0):
        if not isinstance(loop, _SelLoop):
            raise TypeError(f"loop must be a Loop, not {type(loop).__name__}")
        self._active = self._fed = False
        self.loop, self.callback, self.data, self.priority = loop, callback, data, priority

    def start(self):
        if not self._active:
            self._active = True
            self.loop._refs += 1
            self._add()

    def stop(self):
        self._fed = False
        if self._active:
            self._active = False
            self.loop._refs -= 1
            self._remove()

    def _add(self):
        getattr(self.loop, self._registry).append(self)

    def _remove(self):
        getattr(self.loop, self._registry).remove(self)

    def feed(self, revents):
        self._fed = True
        self.loop._pending.append((self, revents))

    def invoke(self, revents):
        self.callback(self, revents)

    def _check_inactive(self):
        if self._active:
            raise _SelError("cannot set a watcher while it is active: stop it first")

    active = property(lambda self: self._active)
    pending = property(lambda self: self._fed)

    @property
    def priority(self):
        return self._priority

    @priority.setter
    def priority(self, value):
        self._check_inactive()
        self._priority = max(-2, min(2, value))


class _SelIo(_SelWatcher):
    __slots__ = ("_fd", "_events", "_was_set")
    __doc__ = _EvIo.__doc__

    def __init__(self, fd, events, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self.set(fd, events)

    def set(self, fd, events):
        self._check_inactive()
        fd = _fileno(fd)
        os.get_inheritable(fd)  # OSError(EBADF) for an fd that is not open, as libev's binding
        if not events or events & ~(EV_READ | EV_WRITE):
            raise _SelError("illegal event mask: use EV_READ, EV_WRITE or both")
        self._fd, self._events, self._was_set = fd, events, True

    def _add(self):
        self.loop._ios.setdefault(self._fd, []).append(self)
        self._mark_changed()

    def _remove(self):
        watchers = self.loop._ios[self._fd]
        watchers.remove(self)
        if not watchers:
            del self.loop._ios[self._fd]
        self._mark_changed()

    def _mark_changed(self):
        changed = self.loop._changed
        changed[self._fd] = changed.get(self._fd, False) or self._was_set
        self._was_set = False

    fd = property(lambda self: self._fd)
    events = property(lambda self: self._events)


class _SelTimer(_SelWatcher):
    __slots__ = ("_after", "_repeat", "_entry")
    __doc__ = _EvTimer.__doc__

    def __init__(self, after, repeat, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self._entry = None
        self.set(after, repeat)

    def set(self, after, repeat):
        self._check_inactive()
        _check_timer(after, repeat)
        self._after, self._repeat = float(after), float(repeat)

    def _add(self):
        loop = self.loop
        self._entry = [loop._now + self._after, loop._next_sequence(), self]
        heappush(loop._timers, self._entry)

    def _remove(self):
        loop = self.loop
        self._after = self._entry[0] - loop._now  # as libev keeps the time left
        self._entry[2] = self._entry = None
        if len(loop._timers) > 64 and sum(e[2] is None for e in loop._timers) * 2 > len(loop._timers):
            loop._timers = [e for e in loop._timers if e[2] is not None]  # drop stopped entries
            heapify(loop._timers)

    def reset(self):
        if self._active:
            self.stop()
        if self._repeat:
            self._after = self._repeat
            self.start()

    repeat = property(lambda self: self._repeat)
    remaining = property(lambda self: self._entry[0] - self.loop._now if self._entry else 0.0)


class _SelAsync(_SelWatcher):
    __slots__ = ("_sent",)
    __doc__ = _EvAsync.__doc__
    _registry = "_asyncs"

    def __init__(self, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self._sent = False

    def _add(self):
        self._sent = False  # as libev's ev_async_start does
        super()._add()

    def send(self):
        self._sent = True
        self.loop._wake()

    sent = property(lambda self: self._sent)


class _SelSignal(_SelWatcher):
    """pyev.Signal on Python's signal module (so it works in the main thread only)."""

    __slots__ = ("_signum", "_previous")

    def __init__(self, signum, loop, callback, data=None, priority=0):
        super().__init__(loop, callback, data, priority)
        self.set(signum)

    def set(self, signum):
        self._check_inactive()
        self._signum = signum

    def _add(self):
        import signal
        owner = _ev_signal_loops.setdefault(self._signum, self.loop)
        if owner is not self.loop:
            self._active = False
            self.loop._refs -= 1
            raise _SelError(f"signal {self._signum} is already watched by another loop")
        try:
            self._previous = signal.signal(self._signum, self._on_signal)
        except ValueError as exc:
            self._active = False
            self.loop._refs -= 1
            raise _SelError(f"cannot watch signal {self._signum}: {exc}") from None

    def _on_signal(self, signum, frame):
        self.feed(EV_SIGNAL)
        self.loop._wake()

    def _remove(self):
        import signal
        signal.signal(self._signum, self._previous)
        _ev_signal_loops.pop(self._signum, None)

    signum = property(lambda self: self._signum)


def _sel_watcher_class(registry, doc):
    return type(f"_Sel{registry[1:-1].title()}", (_SelWatcher,),
                {"__slots__": (), "__doc__": doc, "_registry": registry})


_SelIdle = _sel_watcher_class("_idles", _EvIdle.__doc__)
_SelPrepare = _sel_watcher_class("_prepares", _EvPrepare.__doc__)
_SelCheck = _sel_watcher_class("_checks", _EvCheck.__doc__)


def _load_selectors():
    return _Namespace("selectors", Loop=_SelLoop, Io=_SelIo, Timer=_SelTimer, Signal=_SelSignal,
                      Idle=_SelIdle, Prepare=_SelPrepare, Check=_SelCheck, Async=_SelAsync,
                      Error=_SelError, time=_time.time, version=lambda: (4, 33), abi_version=lambda: (4, 33))


# --- choosing the backend ---------------------------------------------------

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


BACKEND, pyev = _load_backend(os.environ.get("COOPSOCK_LOOP", "").strip())


def _use_backend(name):
    """Switch this process to another backend (for tests and --loop); ends this thread's hub."""
    global BACKEND, pyev
    BACKEND, pyev = _load_backend(name)
    hub = getattr(_local, "hub", None)
    if hub is not None:
        hub.destroy()


# ---------------------------------------------------------------------------
# The hub
#
# Speed comes from the shape of the hub's loop more than from the backend:
# watcher callbacks run inside libev (a C callback), where switching greenlets
# is slow and an exception cannot propagate. So a callback only appends the
# watcher to self._fired; the hub runs the loop one pass at a time and, back
# in its own Python code, switches to each fired watcher's waiter.

_local = threading.local()
_MAIN_HOOKS_INSTALLED = []  # one-shot guard for the process-wide hooks


def get_hub():
    """Return this thread's hub, creating it (and its loop) on first use."""
    try:
        return _local.hub
    except AttributeError:
        _local.hub = hub = Hub()
        _local.closer = _LoopCloser(hub)
        return hub


class _LoopCloser:
    """Sits beside the hub in the thread-local: when the thread ends, it closes the loop's fds.

    (The hub itself lives on in a reference cycle with its suspended frame.)
    """

    __slots__ = ("hub",)

    def __init__(self, hub):
        self.hub = hub

    def __del__(self):
        try:
            self.hub._close_loop()
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to release
            pass


class Hub(greenlet):
    """The greenlet that runs this thread's event loop and wakes parked greenlets."""

    def __init__(self):
        root = getcurrent()
        while root.parent is not None:
            root = root.parent
        super().__init__(parent=root)  # the thread's main greenlet gets LoopExit and Ctrl-C
        self.ev = pyev
        self.loop = pyev.Loop()
        self._fired = fired = deque()  # watchers that fired in the last loop pass
        self._fire = lambda watcher, revents, append=fired.append: append(watcher)
        self._callbacks = deque()      # _Callback handles, run in order on the next pass
        self._timers = []              # heap of (when, sequence, _Callback) from run_later()
        self._timer_sequence = 0
        self._timer_refs = 0           # timers that keep the loop alive (ref=True, not stopped)
        self._stopped_timers = 0       # stopped entries still in the heap
        self._clock = self.ev.Timer(0.0, 0.0, self.loop, self._fire)  # wakes the poll for _timers
        self._clock_when = None        # when the clock is set to fire (None: stopped)
        self._clock_ref = True         # False while the clock is unref'd
        self._in_loop = False
        self._loop_errors = []         # what watcher callbacks raised inside the loop
        self._signal_wakeup = None
        _install_process_hooks()
        if threading.current_thread() is threading.main_thread():
            self._watch_signal_wakeup()

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
            watcher = self.ev.Io(pipe[0], EV_READ, self.loop, _drain_pipe, pipe[0])
            watcher.start()
            self.loop.unref()  # it must not keep the loop alive: see LoopExit
            self._signal_wakeup = (watcher, pipe)
            return
        if previous is not None:
            signal.set_wakeup_fd(previous)  # not ours: put the other one back
        os.close(pipe[0])
        os.close(pipe[1])

    def _stop_signal_wakeup(self):
        if self._signal_wakeup:
            import signal
            watcher, pipe = self._signal_wakeup
            self._signal_wakeup = None
            self.loop.ref()
            watcher.stop()
            try:
                previous = signal.set_wakeup_fd(-1)
                if previous != pipe[1]:
                    signal.set_wakeup_fd(previous)  # someone replaced ours: leave theirs
            except ValueError:
                pass  # not the main thread any more (after fork in a thread)
            os.close(pipe[0])
            os.close(pipe[1])

    # -- parking and waking -------------------------------------------------

    def wait(self, watcher):
        """Park the current greenlet until `watcher` fires; return what woke it.

        Starts the watcher, switches to the hub, and stops the watcher however
        the wait ends (a Timeout, a kill). Raises ConcurrentObjectUseError if
        another greenlet already waits on this watcher.
        """
        current = getcurrent()
        if current is self:
            raise BlockingSwitchOutError("cannot block inside the hub: call blocking "
                                         "functions from a spawned greenlet, not from a hub callback")
        if watcher.data is not None:
            raise ConcurrentObjectUseError(f"{watcher!r} is already waited on by {watcher.data!r}")
        watcher.data = current
        watcher.start()
        try:
            return greenlet.switch(self)
        finally:
            watcher.stop()
            watcher.data = None

    def switch(self, *args):
        """Switch to the hub; it switches back when something wakes this greenlet."""
        if getcurrent() is self:
            raise BlockingSwitchOutError("cannot block inside the hub: call blocking "
                                         "functions from a spawned greenlet, not from a hub callback")
        return greenlet.switch(self, *args)

    def run_callback(self, func, *args):
        """Call func(*args) from the hub on its next pass; return a handle with .stop()."""
        callback = _Callback(func, args)
        self._callbacks.append(callback)
        return callback

    def run_later(self, seconds, func, *args, ref=True):
        """Call func(*args) from the hub after `seconds`; return a handle with .stop().

        With ref=False the pending call does not keep the loop alive.
        """
        # Deadlines live in a heap here, and one loop timer (the clock) wakes
        # the poll for the earliest: a Timeout costs a heap push, not a loop
        # watcher, and a cancelled one is dropped lazily when it surfaces.
        callback = _Callback(func, args, self, ref)
        self._timer_sequence += 1
        heappush(self._timers, (_monotonic() + seconds, self._timer_sequence, callback))
        self._timer_refs += ref
        return callback

    def _run_due_timers(self):
        """Move due timers to the callbacks; set the clock for the next one."""
        timers, now, clock, loop = self._timers, _monotonic(), self._clock, self.loop
        if self._clock_when is not None and not clock.active:  # it fired, and stopped itself
            self._clock_when = None
            if not self._clock_ref:  # libev counted that stop against the loop: even it out
                loop.ref()
                self._clock_ref = True
        while timers:
            when, _, callback = timers[0]
            if callback.func is None:
                heappop(timers)
                self._stopped_timers -= 1
            elif when <= now:
                heappop(timers)
                callback.hub = None
                self._timer_refs -= callback.ref
                self._callbacks.append(callback)
            else:
                break
        # Set the clock only when the next deadline is earlier than the one it
        # is set for: a clock that fires early just sets itself again.
        if timers and (self._clock_when is None or timers[0][0] < self._clock_when):
            self._stop_clock()
            self._clock_when = timers[0][0]
            clock.set(max(self._clock_when - now, 0.0), 0.0)
            loop.update()  # loop.now() goes stale while greenlets run
            clock.start()
        elif not timers and self._clock_when is not None:
            self._stop_clock()
        if self._clock_when is not None and self._clock_ref != (self._timer_refs > 0):
            self._clock_ref = not self._clock_ref
            (loop.ref if self._clock_ref else loop.unref)()

    def _drop_stopped_timers(self):
        # Cancelled timeouts would otherwise pile up until their deadline.
        self._timers[:] = [entry for entry in self._timers if entry[2].func is not None]
        heapify(self._timers)
        self._stopped_timers = 0

    def _stop_clock(self):
        if not self._clock_ref:
            self.loop.ref()  # as libev asks before stopping an unref'd watcher
            self._clock_ref = True
        self._clock.stop()
        self._clock_when = None

    def io(self, fd, events):
        """Return a new io watcher whose firing wakes the greenlet waiting on it."""
        return self.ev.Io(fd, events, self.loop, self._fire)

    # -- the loop -----------------------------------------------------------

    def run(self):
        """Run callbacks, poll once, wake the waiters of fired watchers; repeat."""
        loop, fired, callbacks, popleft = self.loop, self._fired, self._callbacks, self._fired.popleft
        while True:
            try:
                while True:
                    for _ in range(len(callbacks)):  # only those queued before this pass:
                        callback = callbacks.popleft()  # a sleep(0) loop must let I/O in
                        func = callback.func
                        if func is not None:
                            callback.func = None
                            func(*callback.args)
                    if self._timers or self._clock_when is not None:
                        self._run_due_timers()
                    if sys.unraisablehook is not _unraisable_hook:
                        _wrap_unraisablehook()
                    self._in_loop = True
                    alive = loop.start(EVRUN_NOWAIT if callbacks else EVRUN_ONCE)
                    self._in_loop = False
                    if self._loop_errors:
                        errors, self._loop_errors = self._loop_errors, []
                        for error in errors[1:]:
                            self.handle_error(self, error)
                        raise errors[0]
                    if fired:  # the woken may start watchers: the next pass decides
                        while fired:
                            waiter = popleft().data
                            if waiter is not None:
                                waiter.switch()
                    elif not alive and not callbacks:
                        self.parent.throw(LoopExit(
                            "This operation would block forever: no watcher is active and no callback "
                            "is scheduled, so nothing can wake the waiting greenlet. Did you forget to "
                            "spawn the greenlet that was to wake it, or to start its watcher?"))
            except (KeyboardInterrupt, SystemExit) as exc:
                self._in_loop = False
                self.parent.throw(exc)
            except GreenletExit:  # destroy(), or the hub was garbage-collected
                return
            except BaseException as exc:
                self._in_loop = False
                self.handle_error(self, exc)

    def handle_error(self, where, exc):
        """Report an exception that escaped a callback or greenlet; the hub carries on.

        KeyboardInterrupt and SystemExit are re-raised in the main greenlet.
        """
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.run_callback(self.parent.throw, exc)
        elif not isinstance(exc, GreenletExit):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            print(f"{where!r} failed with {type(exc).__name__}", file=sys.stderr)

    def stats(self):
        """Return counts for tests and debugging: active watchers (None on real pyev), pending
        timers (run_later, Timeout, sleep) and callbacks."""
        count = getattr(self.loop, "_active_watchers", None)
        return {"backend": self.ev.__name__, "active_watchers": count() if count else None,
                "timers": len(self._timers) - self._stopped_timers,
                "callbacks": sum(c.func is not None for c in self._callbacks)}

    def destroy(self):
        """End this hub and close its loop; the thread gets a new hub on next use.

        Greenlets parked on it stay parked for good.
        """
        self._close_loop()
        if getattr(_local, "hub", None) is self:
            del _local.hub, _local.closer
        if self and getcurrent() is self.parent:
            greenlet.throw(self, GreenletExit)

    def _close_loop(self):
        self._stop_signal_wakeup()
        if self._clock_when is not None:
            self._stop_clock()
        close = getattr(self.loop, "_close", None)  # real pyev closes its loop when collected
        if close is not None:
            close()

    def __repr__(self):
        return f"<Hub backend={self.ev.__name__} callbacks={len(self._callbacks)} at {id(self):#x}>"


class _Callback:
    __slots__ = ("func", "args", "hub", "ref")

    def __init__(self, func, args, hub=None, ref=False):
        self.func, self.args, self.hub, self.ref = func, args, hub, ref  # hub: set while in its timer heap

    def stop(self):
        """Cancel the call if it has not run yet."""
        if self.func is not None:
            self.func = self.args = None
            hub = self.hub
            if hub is not None:
                hub._timer_refs -= self.ref
                hub._stopped_timers += 1
                if hub._stopped_timers > 256 and hub._stopped_timers * 2 > len(hub._timers):
                    hub._drop_stopped_timers()

    pending = property(lambda self: self.func is not None)


def _nonblocking_pipe():
    pipe = os.pipe()
    for fd in pipe:
        os.set_blocking(fd, False)
    return pipe


def _drain_pipe(watcher, revents):
    try:
        while os.read(watcher.data, 4096):
            pass
    except OSError:
        pass


def _install_process_hooks():
    if not _MAIN_HOOKS_INSTALLED:
        _MAIN_HOOKS_INSTALLED.append(True)
        os.register_at_fork(after_in_child=_after_fork_in_child)


_previous_unraisablehook = None


def _unraisable_hook(unraisable):
    # An exception raised in a watcher callback cannot cross libev (nor a
    # ctypes callback, nor real pyev): it arrives here. While this thread's
    # hub runs its loop, hand it to the hub to raise, so that a Ctrl-C that
    # lands inside a callback is never swallowed. The hub puts this hook back
    # in front of whatever hook is current before each poll.
    hub = getattr(_local, "hub", None)
    if hub is not None and hub._in_loop and isinstance(unraisable.exc_value, BaseException):
        hub._loop_errors.append(unraisable.exc_value)
        return
    previous = _previous_unraisablehook
    (sys.__unraisablehook__ if previous in (None, _unraisable_hook) else previous)(unraisable)


def _wrap_unraisablehook():
    global _previous_unraisablehook
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisable_hook


def _after_fork_in_child():
    global _resolver_pool
    _resolver_pool = None  # its threads did not survive the fork
    hub = getattr(_local, "hub", None)
    if hub is not None:
        hub.loop.reset()
        if hub._signal_wakeup:  # the parent owns that socketpair too
            hub._stop_signal_wakeup()
            hub._watch_signal_wakeup()


# -- greenlets ---------------------------------------------------------------

class _Waiter:
    """A one-shot wake-up for a parked greenlet; a call after the wait ended does nothing."""

    __slots__ = ("greenlet",)

    def __init__(self):
        self.greenlet = None

    def __call__(self, *args):
        waiting, self.greenlet = self.greenlet, None
        if waiting is not None:
            waiting.switch()

    def wait(self, timeout=None):
        """Park until called; return False if `timeout` seconds passed first."""
        self.greenlet = getcurrent()
        try:
            if timeout is None:
                get_hub().switch()
            else:
                with Timeout(timeout, False):
                    get_hub().switch()
        finally:
            woken, self.greenlet = self.greenlet is None, None
        return woken


class Greenlet(greenlet):
    """A greenlet that runs func(*args, **kwargs) under the hub and keeps the outcome.

    An exception that escapes func is printed and kept in .exception; it never
    kills the hub.
    """

    __slots__ = ("_func", "_args", "_kwargs", "value", "exception", "_links", "_starter", "_finished")

    def __init__(self, func, *args, **kwargs):
        super().__init__(parent=get_hub())
        self._func, self._args, self._kwargs = func, args, kwargs
        self.value = self.exception = self._starter = None
        self._links = []
        self._finished = False

    def start(self):
        """Schedule the greenlet to run on the hub's next pass."""
        if self._starter is None and not self and not self._finished:
            self._starter = self.parent.run_callback(self.switch)

    def start_later(self, seconds):
        """Schedule the greenlet to run in `seconds`."""
        if self._starter is None and not self and not self._finished:
            self._starter = self.parent.run_later(_delay(seconds), self.switch)

    def run(self):
        self._starter = None
        try:
            self.value = self._func(*self._args, **self._kwargs)
        except GreenletExit as exc:
            self.value = exc
        except BaseException as exc:
            self.exception = exc
            self.parent.handle_error(self, exc)
        finally:
            self._finish()

    def _finish(self):
        self._finished = True
        self._func = self._args = self._kwargs = None
        links, self._links = self._links, []
        for link in links:
            self.parent.run_callback(link, self)

    def ready(self):
        """Return True once the greenlet has finished (or was killed)."""
        return self._finished

    def successful(self):
        """Return True if it finished without an exception (a kill counts as success)."""
        return self._finished and self.exception is None

    dead = property(lambda self: self._finished or greenlet.dead.__get__(self))

    def link(self, callback):
        """Call callback(self) from the hub once the greenlet finishes."""
        if self._finished:
            self.parent.run_callback(callback, self)
        else:
            self._links.append(callback)

    def unlink(self, callback):
        """Undo link(callback)."""
        if callback in self._links:
            self._links.remove(callback)

    def join(self, timeout=None):
        """Wait until the greenlet finishes, or `timeout` seconds; return None."""
        if not self._finished:
            waiter = _Waiter()
            self.link(waiter)
            try:
                waiter.wait(timeout)
            finally:
                self.unlink(waiter)

    def get(self, block=True, timeout=None):
        """Return the result, or raise the exception the greenlet died of.

        Raises Timeout if it has not finished (at once when block is False).
        """
        if not self._finished and block:
            self.join(timeout)
        if not self._finished:
            raise Timeout(timeout)
        if self.exception is not None:
            raise self.exception
        return self.value

    def kill(self, exception=GreenletExit, block=True, timeout=None):
        """Raise `exception` in the greenlet; wait for it to end unless block is False."""
        if self._finished:
            return
        if not self:  # not started yet: it never runs
            if self._starter is not None:
                self._starter.stop()
            exc = exception() if isinstance(exception, type) else exception
            if isinstance(exc, GreenletExit):
                self.value = exc
            else:
                self.exception = exc
            self._finish()
            return
        if getcurrent() is self:
            raise exception
        self.parent.run_callback(_throw_into, self, exception)
        if block:
            self.join(timeout)

    def __repr__(self):
        func = getattr(self._func, "__qualname__", "")
        state = "finished" if self._finished else "running" if self else "pending"
        return f"<Greenlet {func} {state} at {id(self):#x}>"


def _throw_into(target, exception):
    if not target.dead:
        target.throw(exception)


def spawn(func, *args, **kwargs):
    """Start func(*args, **kwargs) in a new Greenlet on the hub's next pass; return it."""
    g = Greenlet(func, *args, **kwargs)
    g.start()
    return g


def spawn_later(seconds, func, *args, **kwargs):
    """Start func(*args, **kwargs) in a new Greenlet after `seconds`; return it."""
    g = Greenlet(func, *args, **kwargs)
    g.start_later(seconds)
    return g


def _delay(seconds):
    """Return seconds as a number >= 0; TypeError and ValueError as socket.settimeout() has them."""
    if type(seconds) in (int, float) and seconds >= 0:  # the common case (NaN fails >=)
        return seconds
    if not isinstance(seconds, float):
        seconds = _index(seconds)
    elif seconds != seconds:
        raise ValueError("Invalid value NaN (not a number)")
    return max(seconds, 0.0)


def sleep(seconds=0):
    """Park the current greenlet for `seconds`; 0 lets the other ready greenlets and I/O run.

    Raises what time.sleep() raises for the same argument.
    """
    hub, current = get_hub(), getcurrent()
    if current is hub:
        raise BlockingSwitchOutError("cannot sleep inside the hub: sleep in a spawned greenlet")
    if type(seconds) not in (int, float) or not 0 <= seconds <= 9.2e9:  # the checks time.sleep() makes
        seconds = seconds if isinstance(seconds, float) else _index(seconds)
        if seconds != seconds:
            raise ValueError("Invalid value NaN (not a number)")
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        if seconds > 9.2e9:
            raise OverflowError("timestamp out of range for platform time_t")
    if seconds:
        waking = hub.run_later(seconds, current.switch)
    else:
        waking = _Callback(current.switch, ())
        hub._callbacks.append(waking)
    try:
        greenlet.switch(hub)
    finally:
        waking.stop()


def joinall(greenlets, timeout=None, raise_error=False):
    """Wait for all greenlets to finish (or `timeout`); return those that did.

    With raise_error, raise the first exception a greenlet dies of, as soon as it does.
    """
    greenlets = list(greenlets)
    unfinished = [g for g in greenlets if not g.ready()]
    failed = [g for g in greenlets if g.ready() and g.exception is not None]
    if unfinished and not (raise_error and failed):
        waiter, left = _Waiter(), [len(unfinished)]

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
    if raise_error and failed:
        raise failed[0].exception
    return [g for g in greenlets if g.ready()]


def kill(greenlet_, exception=GreenletExit, block=True, timeout=None):
    """Raise `exception` in a greenlet (a Greenlet or a raw one); wait for a Greenlet to end."""
    if isinstance(greenlet_, Greenlet):
        greenlet_.kill(exception, block, timeout)
    elif not greenlet_.dead:
        get_hub().run_callback(_throw_into, greenlet_, exception)


# ---------------------------------------------------------------------------
# Timeout

class Timeout(BaseException):
    """Raise an exception in the current greenlet after `seconds`.

    A BaseException, so that `except Exception` does not swallow it. `exception`
    is what gets raised: None raises the Timeout itself, False too but a `with`
    block then suppresses it silently, a string becomes its message, a class or
    instance is raised as given. Timeout(None) never fires; Timeout(0) fires on
    the next loop pass. With ref=False the timer does not keep the loop alive.
    """

    def __init__(self, seconds=None, exception=None, ref=True):
        self.seconds, self.exception, self._ref = seconds, exception, ref
        self._raising = None  # the hub's run_later handle while started

    @classmethod
    def start_new(cls, seconds=None, exception=None, ref=True):
        """Create a Timeout and start it; a Timeout given as `seconds` is started as is."""
        timeout = seconds if isinstance(seconds, Timeout) else cls(seconds, exception, ref)
        timeout.start()
        return timeout

    @property
    def pending(self):
        """True while started and not yet raised or cancelled."""
        return self._raising is not None and self._raising.func is not None

    def start(self):
        """Start the countdown in the current greenlet.

        Raises RuntimeError if it is already started, TypeError or ValueError
        for seconds that socket.settimeout() would reject (negatives mean 0).
        """
        if self.pending:
            raise RuntimeError(f"{self!r} is already started; cancel it first")
        if self.seconds is not None:
            self._raising = get_hub().run_later(_delay(self.seconds), self._raise_in, getcurrent(),
                                                ref=self._ref)

    def cancel(self):
        """Stop the countdown, if it is running; safe to call at any time."""
        if self._raising is not None:
            self._raising.stop()

    close = cancel

    def _raise_in(self, target):
        exc = self.exception
        _throw_into(target, self if exc is None or exc is False or isinstance(exc, str) else exc)

    def __enter__(self):
        if self._raising is None or self._raising.func is None:  # not pending
            self.start()
        return self

    def __exit__(self, typ, value, tb):
        self.cancel()
        return value is self and self.exception is False

    def __str__(self):
        if isinstance(self.exception, str):
            return self.exception
        if self.seconds is None:
            return ""
        return f"{self.seconds} second{'' if self.seconds == 1 else 's'}"

    def __repr__(self):
        return f"<Timeout seconds={self.seconds} exception={self.exception!r} pending={self.pending}>"


def with_timeout(seconds, func, *args, timeout_value=Timeout, **kwargs):
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
# The cooperative socket
#
# The real socket underneath is always non-blocking; the timeout the user set
# lives in _timeout. Every blocking call first tries the system call, and only
# on EWOULDBLOCK parks on the socket's read or write watcher (created once per
# socket, so the hot path creates no objects) and retries.

_CLOSED_WHILE_WAITING = "File descriptor was closed in another greenlet"
_CONNECT_AGAIN = (_errno.EINPROGRESS, _errno.EALREADY, _errno.EAGAIN, _errno.EINTR)


class _Cancelled:
    """Takes a waiter's place in watcher.data once its socket is closed: waking it raises EBADF."""

    __slots__ = ("greenlet",)

    def __init__(self, waiter):
        self.greenlet = waiter

    def switch(self):
        self.greenlet.throw(OSError(_errno.EBADF, _CLOSED_WHILE_WAITING))

    def __repr__(self):
        return repr(self.greenlet)


class socket(_stdsocket.socket):
    """The stdlib socket, cooperative: a blocking call parks only the calling greenlet."""

    __slots__ = ("_timeout", "_hub", "_read_watcher", "_write_watcher")

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        super().__init__(family, type, proto, fileno)
        self._timeout = _socket.getdefaulttimeout()
        _socket.socket.settimeout(self, 0.0)
        self._hub = self._read_watcher = self._write_watcher = None

    # -- timeouts -----------------------------------------------------------

    def settimeout(self, value):
        """Set the timeout of blocking calls: None blocks, 0 never does, t > 0 raises TimeoutError."""
        _socket.socket.settimeout(self, value)  # validates as the stdlib does
        self._timeout = _socket.socket.gettimeout(self)
        _socket.socket.settimeout(self, 0.0)

    def gettimeout(self):
        """Return the timeout in seconds, or None."""
        return self._timeout

    def setblocking(self, flag):
        """setblocking(True) is settimeout(None); setblocking(False) is settimeout(0)."""
        _socket.socket.setblocking(self, flag)  # validates as the stdlib does
        self.settimeout(_socket.socket.gettimeout(self))

    def getblocking(self):
        """Return False only if the socket is non-blocking (timeout 0)."""
        return self._timeout != 0.0

    # -- waiting ------------------------------------------------------------

    def _deadline(self):
        return None if self._timeout is None else _monotonic() + self._timeout

    def _wait(self, events, deadline):
        """Park until the fd is ready for `events`; TimeoutError past `deadline`."""
        hub = get_hub()
        watcher = self._read_watcher if events == EV_READ else self._write_watcher
        if watcher is None or self._hub is not hub:
            watcher = self._make_watcher(hub, events)
        if watcher.data is not None:
            direction = "reading" if events == EV_READ else "writing"
            raise ConcurrentObjectUseError(
                f"This socket is already used by another greenlet for {direction}: {self!r} is "
                f"waited on by {watcher.data!r}; use one greenlet per direction, or a lock")
        if deadline is None:
            hub.wait(watcher)
        else:
            remaining = deadline - _monotonic()
            if remaining <= 0:  # checked here: a watcher that keeps firing would outrun the Timeout
                raise TimeoutError("timed out")
            with Timeout(remaining, TimeoutError("timed out")):
                hub.wait(watcher)

    def _make_watcher(self, hub, events):
        if self._hub is not hub:  # first wait, or the socket moved to another thread
            self._hub, self._read_watcher, self._write_watcher = hub, None, None
        watcher = hub.io(_socket.socket.fileno(self), events)
        if events == EV_READ:
            self._read_watcher = watcher
        else:
            self._write_watcher = watcher
        return watcher

    def _cancel_waits(self, read=True, write=True):
        # Stop the watchers before the fd closes (libev must not see a closed
        # fd), and wake their waiters on the next pass with EBADF. The waiter
        # is swapped for a _Cancelled in watcher.data, so that whichever comes
        # first, the watcher firing or the callback, raises in it.
        for watcher in (self._read_watcher if read else None, self._write_watcher if write else None):
            if watcher is not None:
                watcher.stop()
                if watcher.data is not None and not isinstance(watcher.data, _Cancelled):
                    watcher.data = cancelled = _Cancelled(watcher.data)
                    self._hub.run_callback(_wake_if_waiting, watcher, cancelled)
        if read:
            self._read_watcher = None
        if write:
            self._write_watcher = None

    def _real_close(self, _ss=_socket.socket):
        self._cancel_waits()
        _ss.close(self)

    def detach(self):
        """Stop waiting on the fd and return it, leaving it open."""
        self._cancel_waits()
        return super().detach()

    def shutdown(self, how):
        """Shut down one or both directions; greenlets waiting on them get EBADF (as in gevent)."""
        super().shutdown(how)
        self._cancel_waits(read=how != SHUT_WR, write=how != SHUT_RD)  # noqa: F821

    # -- the blocking calls ---------------------------------------------------

    def accept(self):
        """Wait for a connection; return (socket, address)."""
        fd, address = self._retry(_socket.socket._accept, EV_READ)
        return socket(self.family, self.type, self.proto, fileno=fd), address

    def _retry(self, call, events, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        return self._wait_and_retry(call, events, *args, **kwargs)

    def _wait_and_retry(self, call, events, *args, **kwargs):
        deadline = self._deadline()
        while True:
            self._wait(events, deadline)
            try:
                return call(self, *args, **kwargs)
            except BlockingIOError:
                pass

    def recv(self, bufsize, flags=0):
        """Receive up to bufsize bytes; b"" at end of stream."""
        try:
            return _socket.socket.recv(self, bufsize, flags)
        except BlockingIOError:  # the fast path: one system call, no loop
            if self._timeout == 0.0:
                raise
        return self._wait_and_retry(_socket.socket.recv, EV_READ, bufsize, flags)

    def send(self, data, flags=0):
        """Send some of data; return how many bytes were sent."""
        try:
            return _socket.socket.send(self, data, flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        return self._wait_and_retry(_socket.socket.send, EV_WRITE, data, flags)

    def sendall(self, data, flags=0):
        """Send all of data; the timeout bounds the whole call, not each piece."""
        try:  # usually all of it goes at once; and this checks data as the stdlib does
            sent = _socket.socket.send(self, data, flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            sent = 0
        with memoryview(data) as view, view.cast("B") as view:
            deadline = None
            while sent < len(view):
                try:
                    sent += _socket.socket.send(self, view[sent:], flags)
                except BlockingIOError:
                    if self._timeout == 0.0:
                        raise
                    if deadline is None:
                        deadline = self._deadline()
                    self._wait(EV_WRITE, deadline)

    def connect(self, address):
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
                raise OSError(err, os.strerror(err))
            if not waited:
                deadline, waited = self._deadline(), True
            self._wait(EV_WRITE, deadline)

    def connect_ex(self, address):
        """Like connect(), but return an errno instead of raising OSError (0 on success)."""
        try:
            self.connect(address)
            return 0
        except TimeoutError:
            return _errno.EAGAIN
        except OSError as exc:
            if exc.errno is None or isinstance(exc, (gaierror, herror)):
                raise
            return exc.errno

    def _resolve(self, address):
        # Numeric addresses (and AF_UNIX paths) go straight to the OS; a host
        # name is looked up in a worker thread so a slow DNS stalls nobody.
        if not (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)
                and self.family in (AF_INET, AF_INET6)):  # noqa: F821
            return address
        host, port = address[0], address[1]
        if not isinstance(port, int) or host in ("", "<broadcast>"):
            return address  # the OS call raises what the stdlib raises
        try:
            _socket.inet_pton(self.family, host)
            return address
        except (OSError, ValueError):
            pass
        infos = getaddrinfo(host, port, self.family, self.type, self.proto)
        return infos[0][4][:2] + tuple(address[2:]) if self.family == AF_INET6 else infos[0][4]  # noqa: F821

    def sendfile(self, file, offset=0, count=None):
        """Send a file's contents (read and sent in pieces, cooperatively)."""
        return self._sendfile_use_send(file, offset, count)

    def __repr__(self):
        text = super().__repr__()
        return text if self._timeout is None else text[:-1] + f", timeout={self._timeout}>"


def _cooperative(name, events):
    call = getattr(_socket.socket, name)

    def method(self, *args, **kwargs):
        return self._retry(call, events, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = call.__doc__
    return method


for _name, _events in (("recv_into", EV_READ), ("recvfrom", EV_READ), ("recvfrom_into", EV_READ),
                       ("recvmsg", EV_READ), ("recvmsg_into", EV_READ), ("sendto", EV_WRITE),
                       ("sendmsg", EV_WRITE)):
    if hasattr(_socket.socket, _name):
        setattr(socket, _name, _cooperative(_name, _events))


def _wake_if_waiting(watcher, waiter):
    if watcher.data is waiter:
        waiter.switch()


# ---------------------------------------------------------------------------
# Module-level helpers

def socketpair(family=None, type=_stdsocket.SOCK_STREAM, proto=0):
    """Return a pair of connected cooperative sockets (AF_UNIX where available)."""
    pair = _stdsocket.socketpair(family, type, proto)
    return tuple(socket(s.family, s.type, s.proto, s.detach()) for s in pair)


def fromfd(fd, family, type, proto=0):
    """Return a cooperative socket on a duplicate of fd."""
    return socket(family, type, proto, _socket.dup(fd))


def create_server(address, *, family=_stdsocket.AF_INET, backlog=None, reuse_port=False,
                  dualstack_ipv6=False):
    """Return a cooperative listening TCP socket bound to address (stdlib arguments)."""
    sock = _stdsocket.create_server(address, family=family, backlog=backlog, reuse_port=reuse_port,
                                    dualstack_ipv6=dualstack_ipv6)
    return socket(sock.family, sock.type, sock.proto, sock.detach())


def create_connection(address, timeout=_stdsocket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                      all_errors=False):
    """Connect to (host, port), trying each address the name resolves to; return the socket.

    The timeout applies to each attempt, as in the stdlib.
    """
    host, port = address
    errors = []
    for family, type_, proto, _, sockaddr in getaddrinfo(host, port, 0, SOCK_STREAM):  # noqa: F821
        sock = socket(family, type_, proto)
        try:
            if timeout is not _stdsocket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            errors.append(exc)
            sock.close()
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)  # noqa: F821 (3.11+)
    raise errors[0]


_resolver_pool = None
_resolver_lock = threading.Lock()


def _run_in_thread(func, *args):
    """Run func(*args) in a worker thread; park until it returns (an Async wakes the hub)."""
    global _resolver_pool
    with _resolver_lock:
        if _resolver_pool is None:
            from concurrent.futures import ThreadPoolExecutor
            _resolver_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="coopsock-resolver")
    hub, outcome = get_hub(), []
    done = hub.ev.Async(hub.loop, hub._fire)
    done.start()  # before the worker can send()

    def work():
        try:
            outcome.append((True, func(*args)))
        except BaseException as exc:
            outcome.append((False, exc))
        done.send()
    _resolver_pool.submit(work)
    while not outcome:
        hub.wait(done)
    ok, result = outcome[0]
    if ok:
        return result
    raise result


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    """socket.getaddrinfo, run in a worker thread so the hub keeps running."""
    return _run_in_thread(_stdsocket.getaddrinfo, host, port, family, type, proto, flags)


def gethostbyname(hostname):
    """socket.gethostbyname, run in a worker thread."""
    return _run_in_thread(_socket.gethostbyname, hostname)


def getnameinfo(sockaddr, flags):
    """socket.getnameinfo, run in a worker thread."""
    return _run_in_thread(_socket.getnameinfo, sockaddr, flags)


def wait_readwrite(fileno, timeout=None, timeout_exc=None, *, events=EV_READ | EV_WRITE):
    """Park until fileno is readable or writable; raise timeout_exc after `timeout` seconds.

    timeout_exc defaults to TimeoutError("timed out"), as a socket's timeout raises.
    """
    if timeout is not None and not (type(timeout) in (int, float) and timeout >= 0):
        value = timeout if isinstance(timeout, float) else _index(timeout)  # TypeError, as select's
        if not value >= 0:
            raise ValueError("timeout must be non-negative")
    hub = get_hub()
    watcher = hub.io(fileno, events)
    if timeout is None:
        hub.wait(watcher)
    else:
        with Timeout(timeout, TimeoutError("timed out") if timeout_exc is None else timeout_exc):
            hub.wait(watcher)


def wait_read(fileno, timeout=None, timeout_exc=None):
    """Park until fileno is readable; raise timeout_exc after `timeout` seconds."""
    wait_readwrite(fileno, timeout, timeout_exc, events=EV_READ)


def wait_write(fileno, timeout=None, timeout_exc=None):
    """Park until fileno is writable; raise timeout_exc after `timeout` seconds."""
    wait_readwrite(fileno, timeout, timeout_exc, events=EV_WRITE)


# ---------------------------------------------------------------------------
# The demo: python -m coopsock, an echo server written as a user would write it

def _echo(conn, address, served, idle_timeout, log):
    """Echo every byte back until the peer closes, goes idle, or the server stops."""
    log.debug("connection from %s opened", address)
    conn.settimeout(idle_timeout or None)
    reason = "closed by peer"
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            served["bytes"] += len(data)
    except TimeoutError:
        reason = f"idle for {idle_timeout} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    finally:
        conn.close()
        log.debug("connection from %s closed (%s)", address, reason)


def _serve(args, log):
    """Accept connections until Ctrl-C or SIGTERM; return the exit status."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (a shell's `cmd &`)
    try:
        listener = create_server((args.host, args.port), backlog=args.backlog, reuse_port=args.workers > 1)
    except OSError as exc:
        return _fail(log, f"cannot listen on {args.host}:{args.port}", exc)
    log.info("echo server listening on %s:%d (loop backend: %s, pid %d)",
             *listener.getsockname()[:2], BACKEND, os.getpid())
    served, handlers = {"connections": 0, "bytes": 0}, set()
    try:
        with listener:
            while True:
                try:
                    conn, address = listener.accept()
                except OSError as exc:  # EMFILE and friends: wait for fds to free up
                    log.warning("accept failed: %s", exc)
                    sleep(0.1)
                    continue
                if len(handlers) >= args.max_connections:
                    log.warning("refused %s: --max-connections %d reached", address, args.max_connections)
                    conn.close()
                    continue
                served["connections"] += 1
                handler = spawn(_echo, conn, address, served, args.idle_timeout, log)
                handlers.add(handler)
                handler.link(handlers.discard)
    except KeyboardInterrupt:
        log.info("stopping: closing %d open connection(s)", len(handlers))
        for handler in list(handlers):
            handler.kill(block=False)
        joinall(handlers, timeout=2)
    log.info("served %d connection(s), echoed %d bytes", served["connections"], served["bytes"])
    return 0


def _fail(log, what, exc):
    hints = {_errno.EADDRINUSE: "choose another --port, or stop the program that uses it",
             _errno.EACCES: "ports below 1024 need privileges: use a --port above 1023",
             _errno.EADDRNOTAVAIL: "use an address of this machine as --host (e.g. 127.0.0.1)"}
    hint = "check --host" if (exc.errno or 0) < 0 else hints.get(exc.errno, "check --host and --port")
    reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
    log.error("%s: %s; %s", what, reason, hint)
    return 1


def _serve_workers(args, log):
    """Fork args.workers processes that share the port through SO_REUSEPORT."""
    import signal
    if not hasattr(_stdsocket, "SO_REUSEPORT"):
        log.error("--workers needs SO_REUSEPORT, which this OS lacks: run one process per port instead")
        return 2
    try:  # fail here, once, rather than in every worker
        create_server((args.host, args.port), reuse_port=True).close()
    except OSError as exc:
        return _fail(log, f"cannot listen on {args.host}:{args.port}", exc)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_serve(args, log))
        children.append(pid)

    def forward(signum, frame):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    log.info("all %d workers stopped", args.workers)
    return status


def main(argv=None):
    """Run the echo server demo (python -m coopsock --help); return the exit status."""
    import argparse
    import logging
    parser = argparse.ArgumentParser(prog="python -m coopsock", description="A cooperative TCP echo server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--backlog", type=int, default=1024, help="listen backlog (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=1000, metavar="N",
                        help="close new connections beyond N open ones (default: %(default)s)")
    parser.add_argument("--idle-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="close a connection silent this long; 0 never (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes sharing the port via SO_REUSEPORT (default: %(default)s)")
    parser.add_argument("--loop", choices=list(_LOADERS), help="loop backend (like COOPSOCK_LOOP)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    parser.add_argument("--version", action="version", version=f"coopsock {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s coopsock[%(process)d] %(message)s")
    log = logging.getLogger("coopsock")
    if args.loop:
        try:
            _use_backend(args.loop)
        except ImportError as exc:
            log.error("%s", exc)
            return 2
    return _serve_workers(args, log) if args.workers > 1 else _serve(args, log)


if __name__ == "__main__":
    sys.exit(main())
