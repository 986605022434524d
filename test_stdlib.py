"""TLS, select/selectors and patch(): the stdlib and real clients, cooperatively."""

import errno
import os
import socket as stdsocket
import ssl
import subprocess
import sys
import time

import pytest
import trustme

import coopsock
from conftest import Ticker, run_concurrently

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def server_ctx(cert):
    ctx = coopsock.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca):
    ctx = coopsock.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def tls_pair(client_ctx, server_ctx, server_hostname="localhost"):
    """Return (client, server) TLS sockets over a socket pair, both handshaken."""
    a, b = coopsock.socketpair()
    server = coopsock.spawn(server_ctx.wrap_socket, a, server_side=True)
    try:
        client = client_ctx.wrap_socket(b, server_hostname=server_hostname)
    finally:
        server.join()
    return client, server.get()


# ---------------------------------------------------------------------------
# TLS

def test_import_does_not_import_ssl():
    code = ("import sys, coopsock; print('ssl' in sys.modules);"
            "import ssl; print(issubclass(coopsock.SSLContext, ssl.SSLContext))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE, check=True)
    assert out.stdout.split() == ["False", "True"]  # ssl loads only when TLS is first used


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_tls_handshake_sni_alpn_and_echo(client_ctx, server_ctx, version):
    seen = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen.append(name)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx.set_alpn_protocols(["http/1.1"])
    client_ctx.maximum_version = client_ctx.minimum_version = version
    client, server = tls_pair(client_ctx, server_ctx)  # both ends in one thread: each parks in turn
    with client, server:
        assert isinstance(client, coopsock.SSLSocket) and isinstance(server, coopsock.SSLSocket)
        assert client.version() == server.version() == version.name.replace("_", ".")
        assert seen == ["localhost"]
        assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "http/1.1"
        client.sendall(b"ping")
        assert server.recv(10) == b"ping"
        buf = bytearray(10)
        server.write(b"pong")
        assert client.recv_into(buf) == 4 and buf[:4] == b"pong"


def test_tls_big_sendall_parks_while_the_peer_reads(client_ctx, server_ctx):
    client, server = tls_pair(client_ctx, server_ctx)
    data = os.urandom(4 << 20)
    with client, server:
        def read_all():
            got = bytearray()
            while len(got) < len(data):
                got += server.read(65536)
            return bytes(got)
        reader = coopsock.spawn(read_all)
        turns = []  # a greenlet that runs whenever the hub has a pass: sendall must have let it
        spinner = coopsock.spawn(lambda: [turns.append(coopsock.sleep(0)) for _ in iter(int, 1)])
        client.sendall(data)  # 4 MiB: more than the socket buffers hold, so it parks until read
        assert reader.get(timeout=10) == data
        spinner.kill()
        assert turns, "sendall never let another greenlet run"


def test_tls_makefile_and_sendfile(client_ctx, server_ctx, tmp_path):
    client, server = tls_pair(client_ctx, server_ctx)
    path = tmp_path / "f"
    path.write_bytes(b"line one\nline two\n" * 1000)
    with client, server, open(path, "rb") as f:
        sender = coopsock.spawn(client.sendfile, f)
        reader = server.makefile("rb")
        assert reader.readline() == b"line one\n"
        assert reader.read(len(path.read_bytes()) - 9) == path.read_bytes()[9:]
        assert sender.get() == len(path.read_bytes())
        reader.close()


def test_tls_timeout_is_one_deadline_and_raises_timeout_error(client_ctx, server_ctx):
    client, server = tls_pair(client_ctx, server_ctx)
    with client, server:
        client.settimeout(0.2)
        start = time.monotonic()
        with pytest.raises(stdsocket.timeout):
            client.recv(10)
        assert 0.15 < time.monotonic() - start < 1.0
        client.settimeout(0.0)
        with pytest.raises(ssl.SSLWantReadError):  # non-blocking: the stdlib's error
            client.recv(10)


def test_tls_handshake_timeout_against_a_silent_peer(client_ctx):
    a, b = coopsock.socketpair()
    with a, b:
        b.settimeout(0.2)
        start = time.monotonic()
        with pytest.raises(stdsocket.timeout):
            client_ctx.wrap_socket(b, server_hostname="localhost")
        assert time.monotonic() - start < 1.0


def test_tls_verification_failure_raises_the_ssl_error(server_ctx):
    untrusting = coopsock.create_default_context()
    untrusting.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_pair(untrusting, server_ctx)


def test_tls_wrong_hostname_raises_the_ssl_error(client_ctx, server_ctx):
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_pair(client_ctx, server_ctx, server_hostname="example.org")


def test_tls_close_while_waiting_and_one_waiter_per_direction(client_ctx, server_ctx):
    client, server = tls_pair(client_ctx, server_ctx)
    with server:
        first = coopsock.spawn(client.recv, 10)
        second = coopsock.spawn(client.recv, 10)
        coopsock.joinall([second])
        assert isinstance(second.exception, coopsock.ConcurrentObjectUseError)
        client.close()
        first.join()
        assert isinstance(first.exception, OSError) and first.exception.errno == errno.EBADF


def test_tls_unwrap_leaves_a_plain_socket(client_ctx, server_ctx):
    client, server = tls_pair(client_ctx, server_ctx)
    other = coopsock.spawn(server.unwrap)
    plain = client.unwrap()
    plain_server = other.get()
    with plain, plain_server:
        plain.sendall(b"clear")
        assert plain_server.recv(10) == b"clear"


def test_tls_over_tcp_accept_and_connect(client_ctx, server_ctx):
    listener = coopsock.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with server_ctx.wrap_socket(listener, server_side=True) as tls_listener:
        def serve():
            conn, _ = tls_listener.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())
        server = coopsock.spawn(serve)
        with client_ctx.wrap_socket(coopsock.socket(), server_hostname="localhost") as client:
            client.connect(("127.0.0.1", port))
            client.sendall(b"hello")
            assert client.recv(100) == b"HELLO"
        server.get()


# ---------------------------------------------------------------------------
# select, poll, selectors

def test_select_parks_only_the_caller():
    pairs = [coopsock.socketpair() for _ in range(10)]
    try:
        waiters = [coopsock.spawn(coopsock.select, [a], [], [], 5) for a, _ in pairs]
        coopsock.sleep(0.01)
        assert not any(w.ready() for w in waiters)  # all parked, and this greenlet runs
        for _, b in pairs:
            b.send(b"x")
        results = [w.get(timeout=5) for w in waiters]
        assert results == [([a], [], []) for a, _ in pairs]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_select_many_fds_returns_the_ready_ones_and_frees_them(pair):
    a, b = pair
    c, d = coopsock.socketpair()
    with c, d:
        coopsock.spawn_later(0.02, d.send, b"y")
        assert coopsock.select([a, c.fileno()], [], [], 5) == ([c.fileno()], [], [])
        assert c.recv(1) == b"y"  # no helper still waits on c
        coopsock.spawn_later(0.02, b.send, b"z")
        assert a.recv(1) == b"z"
        assert coopsock.select([a], [a], [], 1) == ([], [a], [])  # writable at once


def test_select_timeout_and_sleep():
    a, b = coopsock.socketpair()
    with a, b:
        start = time.monotonic()
        assert coopsock.select([a], [], [], 0.1) == ([], [], [])
        assert coopsock.select([], [], [], 0.1) == ([], [], [])
        assert 0.18 < time.monotonic() - start < 1.0
        assert coopsock.select([a], [], [], 0) == ([], [], [])


@pytest.mark.parametrize("args", [([], [], [], -1), ([], [], [], "1"), ([], ["writable"], [], float("nan")),
                                  ([-1], [], [], 0), (["x"], [], [], 0), (5, [], [], 0), ([object()], [], [], 0)])
def test_select_raises_what_select_select_raises(pair, args):
    import select as stdselect
    args = [[pair[0] if fd == "writable" else fd for fd in arg] if isinstance(arg, list) else arg for arg in args]
    try:  # PyPy's select takes a NaN timeout as none: then the writable fd makes it return at once
        expected = stdselect.select(*args)
    except Exception as exc:
        with pytest.raises(type(exc)) as got:
            coopsock.select(*args)
        if sys.implementation.name != "pypy":  # PyPy words some (a str timeout's); coopsock keeps CPython's words
            assert str(got.value) == str(exc)
    else:
        assert coopsock.select(*args) == expected


def test_select_closed_fd_raises_ebadf():
    a, b = coopsock.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as exc:
        coopsock.select([fd], [], [], 0.1)
    assert exc.value.errno == errno.EBADF


@pytest.mark.skipif(not hasattr(coopsock, "poll"), reason="no poll on this platform")
def test_poll_waits_cooperatively_and_checks_as_the_stdlib(pair):
    import select as stdselect
    a, b = pair
    p = coopsock.poll()
    p.register(a, stdselect.POLLIN)
    start = time.monotonic()
    assert p.poll(100) == []
    assert 0.08 < time.monotonic() - start < 1.0
    coopsock.spawn_later(0.02, b.send, b"x")
    assert p.poll() == [(a.fileno(), stdselect.POLLIN)]
    p.modify(a, stdselect.POLLOUT)
    assert p.poll(0) == [(a.fileno(), stdselect.POLLOUT)]
    p.unregister(a)
    with pytest.raises(KeyError):
        p.unregister(a)
    with pytest.raises(FileNotFoundError):
        p.modify(a, stdselect.POLLIN)
    with pytest.raises(TypeError, match="timeout must be an integer or None"):
        p.poll("1")


def test_default_selector_is_a_cooperative_base_selector(pair):
    import selectors
    a, b = pair
    with coopsock.DefaultSelector() as selector:
        assert isinstance(selector, selectors.BaseSelector)
        selector.register(a, selectors.EVENT_READ, "data")
        assert selector.select(0.05) == []
        coopsock.spawn_later(0.02, b.send, b"x")
        with Ticker() as ticker:
            [(key, events)] = selector.select(5)
        assert (key.fileobj, key.data, events) == (a, "data", selectors.EVENT_READ)
        assert ticker.ticks > 0


# ---------------------------------------------------------------------------
# patch() and unpatch()

def _patchable():
    import select as stdselect
    import selectors

    return [(stdsocket, "socket"), (stdsocket, "socketpair"), (stdsocket, "create_connection"),
            (stdsocket, "getaddrinfo"), (ssl.SSLContext, "sslsocket_class"), (stdselect, "select"),
            (stdselect, "poll"), (selectors, "DefaultSelector"), (selectors, "PollSelector"), (time, "sleep")]


def test_patch_is_idempotent_and_unpatch_restores_the_exact_originals():
    originals = [getattr(target, name) for target, name in _patchable()]
    try:
        coopsock.patch()
        coopsock.patch()
        replaced = [getattr(target, name) for target, name in _patchable()]
        assert replaced == [coopsock.socket, coopsock.socketpair, coopsock.create_connection, coopsock.getaddrinfo,
                            coopsock.SSLSocket, coopsock.select, coopsock.poll, coopsock.DefaultSelector,
                            coopsock.DefaultSelector, coopsock.sleep]
    finally:
        coopsock.unpatch()
    assert all(got is want for got, want in zip([getattr(t, n) for t, n in _patchable()], originals))
    coopsock.unpatch()
    assert all(got is want for got, want in zip([getattr(t, n) for t, n in _patchable()], originals))


def test_patch_only_what_is_asked():

    original_socket, original_sleep = stdsocket.socket, time.sleep
    assert not coopsock.is_anything_patched()
    try:
        coopsock.patch(socket=False, ssl=False, select=False, selectors=False)
        assert stdsocket.socket is original_socket and time.sleep is coopsock.sleep
        assert coopsock.is_anything_patched() and coopsock.is_module_patched("time")
        assert not coopsock.is_module_patched("socket") and not coopsock.is_module_patched("ssl")
        coopsock.patch()
        assert coopsock.is_module_patched("socket") and coopsock.is_module_patched("ssl")  # (a class of ssl's)
    finally:
        coopsock.unpatch()
    assert time.sleep is original_sleep
    assert not coopsock.is_anything_patched() and not coopsock.is_module_patched("time")


def test_patched_stdlib_helpers_are_cooperative(patched, ca, cert):

    a, b = stdsocket.socketpair()  # coopsock's helpers reach the stdlib's originals: no recursion
    with a, b, stdsocket.create_server(("127.0.0.1", 0)) as listener:
        assert type(a) is coopsock.socket and type(listener) is coopsock.socket
        reader = coopsock.spawn(a.recv, 10)
        time.sleep(0.01)  # the patched sleep lets the reader park
        assert not reader.ready()
        b.send(b"x")
        assert reader.get(timeout=5) == b"x"
        with stdsocket.create_connection(listener.getsockname()) as conn:
            assert type(conn) is coopsock.socket
            import select as stdselect
            import selectors
            with selectors.PollSelector() as selector:  # what socketserver uses
                selector.register(listener, selectors.EVENT_READ)
                assert [key.fileobj for key, _ in selector.select(5)] == [listener]
            poller = stdselect.poll()
            poller.register(listener, stdselect.POLLIN)
            assert stdselect.select([listener], [], [], 5)[0] == [listener] and poller.poll(5000)
        ctx = ssl.create_default_context()  # a plain stdlib context, made after patch()
        ca.configure_trust(ctx)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(server_ctx)
        client, server = tls_pair(ctx, server_ctx)
        with client, server:
            assert type(client) is coopsock.SSLSocket and type(server) is coopsock.SSLSocket


# ---------------------------------------------------------------------------
# Real clients after patch(): 100 greenlets against servers in another
# process that answer each request after 100 ms. One after another that
# would take 10 s; cooperatively, well under 1 s.

def test_http_client(patched, slow_servers):
    import http.client

    def get(i):
        conn = http.client.HTTPConnection("127.0.0.1", slow_servers["http"], timeout=10)
        try:
            conn.request("GET", f"/item/{i}")
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
    run_concurrently(get, lambda i: (200, f"/item/{i}".encode()))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_urllib_request(patched, slow_servers, scheme):
    import urllib.request
    context = ssl.create_default_context(cafile=slow_servers["cafile"])

    def get(i):
        url = f"{scheme}://127.0.0.1:{slow_servers[scheme]}/u/{i}"
        with urllib.request.urlopen(url, timeout=10, context=context if scheme == "https" else None) as response:
            return response.read()
    # urlopen() without a context builds the opener it keeps at its first call, and on 3.13 that
    # opener's HTTPS handler loads the system's CA store: 35-50 ms of C in one greenlet, once per
    # process, as an import is (gevent's hub cannot cut it short either): paid before the ticker.
    assert get("first") == b"/u/first"
    run_concurrently(get, lambda i: f"/u/{i}".encode())  # https: an opener per call, ~0.5 ms of Python


def test_smtplib(patched, slow_servers):
    import smtplib

    def send(i):
        with smtplib.SMTP("127.0.0.1", slow_servers["smtp"], timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("from@example.org")
            smtp.rcpt("to@example.org")
            return smtp.data(f"Subject: message {i}\r\n\r\nhello\r\n")
    run_concurrently(send, lambda i: (250, f"Subject: message {i}".encode()))


def test_socketserver_serve_forever_with_a_greenlet_per_request(patched):

    import socketserver

    class GreenletMixIn:
        def process_request(self, request, client_address):  # as ThreadingMixIn, with a greenlet
            coopsock.spawn(self._serve_one, request, client_address)

        def _serve_one(self, request, client_address):
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    class SlowEcho(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            time.sleep(0.1)
            self.wfile.write(line.upper())

    class Server(GreenletMixIn, socketserver.TCPServer):
        request_queue_size = 256

    with Server(("127.0.0.1", 0), SlowEcho) as server:
        serving = coopsock.spawn(server.serve_forever, 0.05)

        def ask(i):
            with stdsocket.create_connection(server.server_address, timeout=10) as conn:
                conn.sendall(b"hello %d\n" % i)
                return conn.makefile("rb").readline()
        try:
            run_concurrently(ask, lambda i: b"HELLO %d\n" % i)
        finally:
            serving.kill()


# -- from PyPI: requests (urllib3) and redis-py ----------------------------

@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests(patched, slow_servers, scheme):
    requests = pytest.importorskip("requests")

    def get(i):
        response = requests.get(f"{scheme}://127.0.0.1:{slow_servers[scheme]}/r/{i}", timeout=10,
                                verify=slow_servers["cafile"])
        return response.status_code, response.content
    run_concurrently(get, lambda i: (200, f"/r/{i}".encode()))  # a Session per call: ~1 ms of Python


def test_redis(patched, redis_port):
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=10)

    def set_get_and_wait(i):
        client.set(f"key:{i}", f"value {i}")
        value = client.get(f"key:{i}")
        return value, client.blpop([f"empty:{i}"], timeout=0.1)  # the server answers after 100 ms
    try:
        run_concurrently(set_get_and_wait, lambda i: (f"value {i}".encode(), None))  # redis-py parses ~0.5 ms per call
    finally:
        client.close()
