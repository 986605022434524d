"""coopsock as the stdlib socket module: its namespace, flags, errors and lookups, on every backend."""

import errno
import inspect
import socket as stdsocket
import sys
import threading
import time

import pytest

import coopsock
from conftest import drain, fill
from coopsock import spawn

COOPERATIVE = {"socket", "socketpair", "fromfd", "create_server", "create_connection", "getaddrinfo",
               "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getfqdn"}


def _resolver_threads():
    return [t for t in threading.enumerate() if t.name == "coopsock-resolver"]


@pytest.fixture
def no_worker_threads(monkeypatch):
    """Fail any call that hands work to a resolver thread."""
    def refuse(func, *args):
        raise AssertionError(f"{func.__name__}{args} went to a worker thread")
    monkeypatch.setattr(coopsock, "_run_in_thread", refuse)


# ---------------------------------------------------------------------------
# The namespace


def test_every_public_name_of_the_stdlib_socket_module_is_there():
    public = set(stdsocket.__all__) | {"AddressFamily", "SocketKind", "MsgFlag", "AddressInfo", "SocketType"}
    missing = sorted(name for name in public if not hasattr(coopsock, name))
    assert not missing, f"coopsock lacks {missing}"
    assert public <= set(coopsock.__all__)
    different = sorted(name for name in public - COOPERATIVE
                       if getattr(coopsock, name) is not getattr(stdsocket, name))
    assert not different, f"not the stdlib's own objects: {different}"
    for name in COOPERATIVE:
        assert getattr(coopsock, name) is not getattr(stdsocket, name), name


def test_the_namespace_shows_the_library_not_its_internals():
    public = {name for name in dir(coopsock) if not name.startswith("_")}
    assert public == set(coopsock.__all__), f"public but not in __all__: {sorted(public - set(coopsock.__all__))}"
    assert len(coopsock.__all__) == len(set(coopsock.__all__))
    assert not {"os", "sys", "threading", "selectors", "deque", "pyev", "EV_READ", "EVRUN_ONCE", "greenlet",
                "traceback"} & public


def test_a_module_function_asked_of_the_socket_class_names_the_fix():
    from coopsock import socket  # the gevent habit, where this is a module
    with pytest.raises(AttributeError, match=r"use coopsock\.create_connection, or `import coopsock as socket`"):
        socket.create_connection  # noqa: B018
    with pytest.raises(AttributeError, match="type object 'socket' has no attribute 'nothing'"):
        socket.nothing  # noqa: B018


def test_every_public_function_and_method_is_type_hinted():
    # mypy (in CI) checks the hints; this keeps a new public name from going without any.
    # The hints are strings (from __future__ import annotations), so importing costs nothing.
    def unhinted(qualname, func):
        params = [p for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")]
        missing = [p.name for p in params if p.name not in func.__annotations__]
        return [f"{qualname}: {missing or 'return'}"] if missing or "return" not in func.__annotations__ else []

    found = []
    for name in coopsock.__all__:
        obj = getattr(coopsock, name)
        if getattr(obj, "__module__", None) != "coopsock" or name == "main":  # main: the demo's, being rewritten
            continue
        if inspect.isfunction(obj):
            found += unhinted(name, obj)
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                func = getattr(member, "__func__", member)  # classmethods
                if inspect.isfunction(func) and (not attr.startswith("_") or attr in (
                        "__init__", "__call__", "__enter__", "__exit__")):
                    found += unhinted(f"{name}.{attr}", func)
    assert not found, f"public functions without type hints: {found}"
    assert coopsock.spawn.__annotations__["return"] == "Greenlet"  # a string: never evaluated at import


def test_star_import_gives_a_drop_in_socket_module():
    namespace = {}
    exec("from coopsock import *", namespace)  # noqa: S102 - what a user writes
    assert namespace["socket"] is coopsock.socket and namespace["AF_INET"] == stdsocket.AF_INET
    assert namespace["inet_aton"]("127.0.0.1") == b"\x7f\x00\x00\x01" and namespace["htons"](1) == stdsocket.htons(1)


# ---------------------------------------------------------------------------
# Flags that say "never wait"


def test_msg_dontwait_never_waits_on_an_empty_socket(pair):
    a, _ = pair
    assert a.gettimeout() is None
    buffer = bytearray(10)
    for call in (lambda: a.recv(10, stdsocket.MSG_DONTWAIT),
                 lambda: a.recv_into(buffer, 10, stdsocket.MSG_DONTWAIT),
                 lambda: a.recv_into(buffer, flags=stdsocket.MSG_DONTWAIT),
                 lambda: a.recvfrom(10, stdsocket.MSG_DONTWAIT),
                 lambda: a.recvfrom_into(buffer, 10, stdsocket.MSG_DONTWAIT),
                 lambda: a.recvmsg(10, 0, stdsocket.MSG_DONTWAIT),
                 lambda: a.recvmsg_into([buffer], 0, stdsocket.MSG_DONTWAIT)):
        with pytest.raises(BlockingIOError):
            call()


@pytest.mark.skipif(not hasattr(stdsocket, "MSG_ERRQUEUE"), reason="no MSG_ERRQUEUE on this OS")
def test_msg_errqueue_never_waits_as_the_stdlibs(listener):
    # Reading the error queue never blocks: with nothing queued the kernel says EAGAIN at once.
    flags = stdsocket.MSG_ERRQUEUE
    with stdsocket.socket() as std, coopsock.socket() as sock:
        with pytest.raises(BlockingIOError):
            std.recv(10, flags)
        with pytest.raises(BlockingIOError):
            sock.recv(10, flags)


def test_msg_dontwait_never_waits_on_a_full_socket(pair):
    a, _ = pair
    a.setblocking(False)
    while True:
        try:
            a.send(b"x" * 65536)
        except BlockingIOError:
            break
    a.setblocking(True)
    for call in (lambda: a.send(b"y" * 65536, stdsocket.MSG_DONTWAIT),
                 lambda: a.sendall(b"y" * 65536, stdsocket.MSG_DONTWAIT),
                 lambda: a.sendmsg([b"y" * 65536], [], stdsocket.MSG_DONTWAIT)):
        with pytest.raises(BlockingIOError):
            call()


def test_msg_dontwait_on_udp_sendto_and_recvfrom():
    with coopsock.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as a:
        a.bind(("127.0.0.1", 0))
        with pytest.raises(BlockingIOError):
            a.recvfrom(10, stdsocket.MSG_DONTWAIT)
        a.sendto(b"hi", stdsocket.MSG_DONTWAIT, a.getsockname())
        assert a.recvfrom(10)[0] == b"hi"


def test_a_socket_made_with_sock_nonblock_has_timeout_zero_and_never_waits():
    with coopsock.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM | stdsocket.SOCK_NONBLOCK) as sock, \
            stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM | stdsocket.SOCK_NONBLOCK) as std:
        assert (sock.gettimeout(), sock.getblocking(), sock.type) == (std.gettimeout(), std.getblocking(), std.type)
        assert sock.gettimeout() == 0.0
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(BlockingIOError):
            sock.accept()


# ---------------------------------------------------------------------------
# Errors as the running Python's socket module raises them


def test_a_timeout_is_the_socket_modules_timeout_on_every_python(pair):
    a, _ = pair
    a.settimeout(0.01)
    with pytest.raises(stdsocket.timeout, match="^timed out$") as info:
        a.recv(10)
    assert type(info.value) is stdsocket.timeout and isinstance(info.value, OSError)
    with pytest.raises(stdsocket.timeout):
        coopsock.wait_read(a.fileno(), timeout=0.01)


def test_create_connection_all_errors_as_the_running_stdlib(listener):
    port = listener.getsockname()[1]
    listener.close()
    if sys.version_info >= (3, 11):
        with pytest.raises(ExceptionGroup) as info:  # noqa: F821
            coopsock.create_connection(("127.0.0.1", port), all_errors=True)
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)
    else:
        with pytest.raises(TypeError, match="3.11"):
            coopsock.create_connection(("127.0.0.1", port), all_errors=True)
    with pytest.raises(ConnectionRefusedError):
        coopsock.create_connection(("127.0.0.1", port))


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="Python 3.11+ has ExceptionGroup: all_errors works")
def test_create_connection_all_errors_before_3_11_says_what_to_do_instead():
    with pytest.raises(TypeError, match="needs Python 3.11 \\(ExceptionGroup\\): use Python 3.11\\+, or leave "
                                        "all_errors False to get the first error$"):
        coopsock.create_connection(("127.0.0.1", 1), all_errors=True)


@pytest.fixture
def listener():
    with coopsock.create_server(("127.0.0.1", 0)) as sock:
        yield sock


# ---------------------------------------------------------------------------
# Lookups: numeric addresses need no thread, names go to threads that end


def test_numeric_addresses_need_no_worker_thread(no_worker_threads, listener):
    host, port = listener.getsockname()
    assert coopsock.getaddrinfo("127.0.0.1", port) == stdsocket.getaddrinfo("127.0.0.1", port)
    assert coopsock.getaddrinfo(b"::1", "80", stdsocket.AF_INET6) == stdsocket.getaddrinfo(b"::1", "80",
                                                                                             stdsocket.AF_INET6)
    assert coopsock.getaddrinfo(None, 80) == stdsocket.getaddrinfo(None, 80)
    assert coopsock.gethostbyname("127.0.0.1") == "127.0.0.1"
    flags = stdsocket.NI_NUMERICHOST | stdsocket.NI_NUMERICSERV
    assert coopsock.getnameinfo(("127.0.0.1", 80), flags) == ("127.0.0.1", "80")
    with coopsock.create_connection((host, port)) as conn:
        assert conn.getpeername() == (host, port)
    with coopsock.socket() as sock:
        sock.connect((host, port))
    with pytest.raises(AssertionError, match="worker thread"):
        coopsock.getaddrinfo("localhost", 80)  # a name does go to a thread


def test_idle_resolver_threads_exit():
    assert coopsock.getaddrinfo("localhost", 80, stdsocket.AF_INET)[0][4] == ("127.0.0.1", 80)
    assert _resolver_threads(), "the lookup ran in no resolver thread"
    deadline = time.monotonic() + 15
    while _resolver_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _resolver_threads(), "resolver threads still there 15 s after their last lookup"
    assert coopsock.getaddrinfo("localhost", 80, stdsocket.AF_INET)[0][4] == ("127.0.0.1", 80)  # and come back


@pytest.mark.parametrize("name, args", [("gethostbyaddr", ("127.0.0.1",)), ("gethostbyname_ex", ("localhost",)),
                                        ("getfqdn", ("127.0.0.1",)), ("getfqdn", ()),
                                        ("gethostbyname", ("localhost",))])
def test_the_other_lookups_answer_as_the_stdlib_without_blocking_the_hub(name, args, monkeypatch):
    expected = getattr(stdsocket, name)(*args)
    real = getattr(coopsock._socket, "gethostbyaddr" if name == "getfqdn" else name)
    started = threading.Event()

    def slow(*a):
        started.set()
        time.sleep(0.2)
        return real(*a)
    monkeypatch.setattr(coopsock._socket, "gethostbyaddr" if name == "getfqdn" else name, slow)
    ticks = []
    ticker = spawn(lambda: [ticks.append(coopsock.sleep(0.01)) for _ in range(100)])
    assert getattr(coopsock, name)(*args) == expected
    assert started.is_set() and len(ticks) >= 5, f"the hub stalled during {name}: {len(ticks)} ticks"
    ticker.kill()


def test_lookup_errors_are_the_stdlibs():
    with pytest.raises(stdsocket.gaierror) as info:
        coopsock.getaddrinfo("no-such-host.invalid", 80)
    assert info.value.errno in (stdsocket.EAI_NONAME, getattr(stdsocket, "EAI_NODATA", None), stdsocket.EAI_AGAIN)
    with pytest.raises(TypeError):
        coopsock.getaddrinfo(42, 80)
    with pytest.raises(OSError) as info:
        coopsock.gethostbyaddr("no-such-host.invalid")
    assert isinstance(info.value, (stdsocket.herror, stdsocket.gaierror))


# ---------------------------------------------------------------------------
# With coopsock's functions in the socket module, as patch() puts them


def test_coopsocks_helpers_do_not_call_themselves_once_in_the_socket_module(monkeypatch):
    for name in COOPERATIVE:
        monkeypatch.setattr(stdsocket, name, getattr(coopsock, name))
    a, b = stdsocket.socketpair()
    with a, b, stdsocket.fromfd(a.fileno(), a.family, a.type) as dup:
        assert isinstance(a, coopsock.socket) and isinstance(dup, coopsock.socket)
        dup.sendall(b"x")
        assert b.recv(1) == b"x"
    with stdsocket.create_server(("127.0.0.1", 0)) as server:
        assert isinstance(server, coopsock.socket)
        with stdsocket.create_connection(server.getsockname()) as conn:
            assert isinstance(conn, coopsock.socket)
    assert stdsocket.getaddrinfo("localhost", 80, stdsocket.AF_INET)[0][4] == ("127.0.0.1", 80)
    assert isinstance(stdsocket.getfqdn(), str)


def test_a_closed_fd_gives_ebadf_through_fromfd():
    sock = stdsocket.socket()
    fd = sock.detach()
    stdsocket.socket(fileno=fd).close()
    with pytest.raises(OSError) as info:
        coopsock.fromfd(fd, stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    assert info.value.errno == errno.EBADF


# ---------------------------------------------------------------------------
# Arguments a retry must see again


def test_recvmsg_into_and_sendmsg_take_generators_that_a_retry_sees_whole(pair):
    a, b = pair
    coopsock.spawn_later(0.05, b.send, b"x")
    buffer = bytearray(1)
    assert a.recvmsg_into(buf for buf in [buffer])[0] == 1 and buffer == b"x"
    sent = fill(a)
    reader = spawn(lambda: drain(b, sent + 3))
    assert a.sendmsg(part for part in [b"a", b"bc"]) == 3
    assert reader.get(timeout=10)[-3:] == b"abc"
