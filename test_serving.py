"""Serving: StreamServer subclasses and addresses, DatagramServer, WSGIServer, signal_handler, gunicorn's worker.

Servers run in the test's own hub, clients in greenlets beside them (raw
sockets where the bytes on the wire are the point, requests after patch()
where a real client is); gunicorn runs as a child process with coopsock's
worker on the test's loop backend. Last, gevent's examples that need these
names, ported with their imports changed, run end to end.
"""

import hashlib
import json
import os
import re
import signal
import socket as stdsocket
import ssl
import subprocess
import sys
import threading
import time
import uuid

import pytest

import coopsock
from conftest import HERE, _child_env, free_port, load_example, run_concurrently, wait_for_port

EXAMPLES = os.path.join(HERE, "examples")


def udp_client():
    """Return a cooperative UDP socket bound to 127.0.0.1, whose calls give up after 5 s."""
    sock = coopsock.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind(("127.0.0.1", 0))
    return sock


class Peer:
    """An HTTP client on a raw cooperative connection: it reads exactly what the server sent, framing included."""

    def __init__(self, address, family=stdsocket.AF_INET):
        self.sock = coopsock.socket(family, stdsocket.SOCK_STREAM)
        self.sock.settimeout(5)
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.buffer = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"the server closed the connection; unread: {self.buffer[:200]!r}")
        self.buffer += data

    def line(self):
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exactly(self, count):
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def at_eof(self):
        """Return True if the server closed the connection with nothing more sent."""
        try:
            self._fill()
        except EOFError:
            return not self.buffer
        return False

    def head(self):
        """Return the status line and the headers, {lowercased name: value}."""
        status, headers = self.line().decode(), {}
        while line := self.line():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunk(self):
        size = int(self.line().split(b";")[0], 16)
        data = self.exactly(size)
        if not size:  # the last chunk: then the trailers, here none
            while self.line():
                pass
        else:
            assert self.line() == b"", "a chunk's data not followed by CRLF"
        return data

    def response(self):
        """Return (status line, headers, body), the body framed as the headers say."""
        status, headers = self.head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b"".join(iter(self.chunk, b""))
        elif "content-length" in headers:
            body = self.exactly(int(headers["content-length"]))
        else:  # the body ends where the connection does
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buffer = self.buffer, b""
        return status, headers, body

    def get(self, path, version="HTTP/1.1", extra=""):
        self.send(f"GET {path} {version}\r\nHost: test\r\n{extra}\r\n".encode())
        return self.response()


def connections_opened(session, url):
    """Return how many connections a requests Session opened to url's server (urllib3 counts them per pool)."""
    pools = session.get_adapter(url).poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118 (the container refuses iter())


def text_app(body=b"hello", length=True):
    """Return a WSGI application answering every request with body (with its Content-Length, or in pieces)."""
    def application(environ, start_response):
        headers = [("Content-Type", "text/plain")]
        if length:
            start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
            return [body]
        start_response("200 OK", headers)
        return (body[i:i + 3] for i in range(0, len(body), 3))  # a generator: the server cannot know the length
    return application


def report(environ, start_response):
    """A WSGI application that answers with what it saw of the request, as JSON."""
    mode = environ["QUERY_STRING"] or "read"
    stream = environ["wsgi.input"]
    if mode == "read":
        body = stream.read()
    elif mode == "pieces":
        body = b"".join(iter(lambda: stream.read(8191), b""))
    else:  # "lines": the input iterates as a file does
        body = b"".join(stream)
    seen = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "port": environ["REMOTE_PORT"],
            "scheme": environ["wsgi.url_scheme"], "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "header": environ.get("HTTP_X_TEST"), "custom": environ.get("custom.key"),
            "content_length": environ.get("CONTENT_LENGTH")}
    data = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


# ---------------------------------------------------------------------------
# StreamServer: gevent's habits

class UpperServer(coopsock.StreamServer):
    """A StreamServer subclass with a handle method instead of a handle argument, as gevent's users write them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers = []

    def handle(self, sock, address):
        self.peers.append(address)
        sock.sendall(sock.recv(100).upper())


@pytest.mark.parametrize("form", ["tuple", "host:port", "host:0", ":0"])
def test_stream_server_subclass_with_handle_and_gevent_address_strings(form):
    port = free_port()
    listener = {"tuple": ("127.0.0.1", port), "host:port": f"127.0.0.1:{port}", "host:0": "127.0.0.1:0",
                ":0": ":0"}[form]
    server = UpperServer(listener)
    if form in ("tuple", "host:port"):
        assert server.address == ("127.0.0.1", port) and server.server_port == port  # before start() too
    with server:
        assert server.server_port != 0 and (form in ("host:0", ":0") or server.server_port == port)
        for word in (b"one", b"two"):
            with coopsock.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
                conn.sendall(word)
                assert conn.recv(100) == word.upper()
                assert conn.recv(100) == b""  # closed when handle returned
                assert conn.getsockname() in server.peers


# ---------------------------------------------------------------------------
# DatagramServer

def test_datagram_server_runs_each_datagram_in_a_greenlet_of_its_own():
    def handle(data, address):
        coopsock.sleep(0.1)  # each datagram waits in its own greenlet: the waits overlap
        server.sendto(b"echo " + data, address)

    def ask(i):
        with udp_client() as sock:
            sock.sendto(b"%d" % i, server.address)
            return sock.recvfrom(100)
    server = coopsock.DatagramServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        run_concurrently(ask, lambda i: (b"echo %d" % i, server.address))
    finally:
        server.stop()


def test_datagram_server_round_trips_from_several_clients():
    def handle(data, address):
        server.sendto(data[::-1], address)

    def client(n):
        with udp_client() as sock:
            replies = []
            for i in range(50):  # one at a time: each reply checked against its datagram
                message = b"client %d datagram %d" % (n, i)
                sock.sendto(message, server.address)
                reply, sender = sock.recvfrom(100)
                replies.append(reply == message[::-1] and sender == server.address)
            for i in range(20):  # then a burst, the replies in any order
                sock.sendto(b"burst %d.%d" % (n, i), server.address)
            burst = {sock.recvfrom(100)[0] for _ in range(20)}
            return all(replies), burst == {(b"burst %d.%d" % (n, i))[::-1] for i in range(20)}
    with coopsock.DatagramServer(("127.0.0.1", 0), handle) as server:
        clients = [coopsock.spawn(client, n) for n in range(5)]
        assert len(coopsock.joinall(clients, timeout=20, raise_error=True)) == len(clients)
        assert [g.value for g in clients] == [(True, True)] * 5


class UpperDatagramServer(coopsock.DatagramServer):
    """gevent's habit: a subclass defines handle(data, address) and answers through self.socket."""

    def handle(self, data, address):
        self.socket.sendto(data.upper(), address)


@pytest.mark.parametrize("form", ["tuple", "host:port", ":port", "bound socket"])
def test_datagram_server_subclass_with_handle_on_each_kind_of_listener(form):
    port = free_port()  # a TCP port free; so, almost surely, the UDP one
    if form == "bound socket":
        listener = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    else:
        listener = {"tuple": ("127.0.0.1", port), "host:port": f"127.0.0.1:{port}", ":port": f":{port}"}[form]
    server = UpperDatagramServer(listener)
    server.start()
    try:
        assert server.server_port == port and server.address[1] == port
        assert server.socket.type == stdsocket.SOCK_DGRAM
        with udp_client() as sock:
            for word in (b"alpha", b"beta"):
                sock.sendto(word, ("127.0.0.1", port))
                assert sock.recvfrom(100) == (word.upper(), ("127.0.0.1", port))
    finally:
        server.stop()


def test_datagram_server_sendto_from_outside_a_handler_then_stop():
    heard, finished, serving = coopsock.AsyncResult(), [], coopsock.Event()

    def handle(data, address):
        if data == b"slow":
            serving.set()
            coopsock.sleep(0.1)
            finished.append(data)
        else:
            heard.set(address)
    server = coopsock.DatagramServer("127.0.0.1:0", handle)
    server.start()  # binds now: serve_forever() in a greenlet would only when the greenlet runs
    forever = coopsock.spawn(server.serve_forever)
    with udp_client() as sock:
        sock.sendto(b"hello", ("127.0.0.1", server.server_port))
        address = heard.get(timeout=5)
        assert address == sock.getsockname()
        server.sendto(b"pushed", address)  # a server may send first: to an address it has heard from
        assert sock.recvfrom(100) == (b"pushed", ("127.0.0.1", server.server_port))
        sock.sendto(b"slow", ("127.0.0.1", server.server_port))
        assert serving.wait(5)
        server.stop(timeout=5)  # waits for the handler still running
        assert finished == [b"slow"]
    forever.join(5)
    assert forever.successful()
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", server.server_port))  # the port is free: the server closed its socket


# ---------------------------------------------------------------------------
# WSGIServer

def test_wsgi_keep_alive_serves_a_session_on_one_connection(patched):
    import requests

    with coopsock.WSGIServer(("127.0.0.1", 0), report, log=None) as server:
        url = f"http://127.0.0.1:{server.server_port}/"
        sessions = [requests.Session(), requests.Session()]
        try:
            ports = [[session.get(url + f"s{n}/r{i}", timeout=10).json()["port"] for i in range(5)]
                     for n, session in enumerate(sessions)]
            counts = [connections_opened(session, url) for session in sessions]
        finally:
            for session in sessions:
                session.close()
    assert counts == [1, 1]  # the client opened one connection per session...
    assert len(set(ports[0])) == 1 and len(set(ports[1])) == 1 and ports[0][0] != ports[1][0]  # ...and the server saw so


def test_wsgi_serves_100_requests_at_once(patched):
    import requests

    def slow(environ, start_response):
        coopsock.sleep(0.1)
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    with coopsock.WSGIServer(("127.0.0.1", 0), slow, log=None) as server:
        def get(i):
            response = requests.get(f"http://127.0.0.1:{server.server_port}/{i}", timeout=10)
            return response.status_code, response.text
        run_concurrently(get, lambda i: (200, f"/{i}"))


def test_wsgi_chunked_response_sends_each_piece_as_the_app_yields_it():
    first_read = coopsock.Event()

    def pieces(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        yield b""  # an empty piece is not the end of the body
        yield b"second" if first_read.wait(5) else b"the client never read the first piece"
        yield b"third"
    with coopsock.WSGIServer(("127.0.0.1", 0), pieces, log=None) as server, Peer(server.address) as peer:
        peer.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers = peer.head()
        assert status.startswith("HTTP/1.1 200") and headers["transfer-encoding"].lower() == "chunked"
        assert "content-length" not in headers
        assert peer.chunk() == b"first"  # sent before the app went on
        first_read.set()
        assert b"".join(iter(peer.chunk, b"")) == b"secondthird"
        # the connection stays open for the next request
        first_read.clear()
        peer.send(b"GET /again HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers = peer.head()
        assert peer.chunk() == b"first"
        first_read.set()
        assert b"".join(iter(peer.chunk, b"")) == b"secondthird"


@pytest.mark.parametrize("framing", ["Content-Length", "chunked"])
def test_wsgi_request_body_reads_whole_in_every_way(patched, framing):
    import requests

    body = b"".join(b"line %d of the request body\n" % i for i in range(20000))  # 550 kB
    with coopsock.WSGIServer(("127.0.0.1", 0), report, log=None) as server, requests.Session() as session:
        for mode in ("read", "pieces", "lines"):
            # requests sends a generator's pieces chunked
            data = body if framing == "Content-Length" else (body[i:i + 70000] for i in range(0, len(body), 70000))
            response = session.post(f"http://127.0.0.1:{server.server_port}/upload?{mode}", data=data, timeout=10)
            assert response.status_code == 200, response.text
            seen = response.json()
            assert (seen["method"], seen["length"], seen["sha256"]) == ("POST", len(body),
                                                                         hashlib.sha256(body).hexdigest()), mode
            assert seen["content_length"] in ((str(len(body)),) if framing == "Content-Length" else (None, "")), seen


@pytest.mark.parametrize("case", ["HTTP/1.0, Content-Length", "HTTP/1.0, no length", "HTTP/1.1, Connection: close"])
def test_wsgi_connection_close_for_http10_clients_and_when_asked(case):
    body = b"a body of some length, " * 100
    app = text_app(body, length="no length" not in case)
    with coopsock.WSGIServer(("127.0.0.1", 0), app, log=None) as server, Peer(server.address) as peer:
        if case.startswith("HTTP/1.0"):
            status, headers, got = peer.get("/", version="HTTP/1.0")
        else:
            status, headers, got = peer.get("/", extra="Connection: close\r\n")
        assert status.split()[1] == "200" and got == body
        assert headers.get("connection", "").lower() == "close", headers
        assert "chunked" not in headers.get("transfer-encoding", "")  # an HTTP/1.0 client could not read it
        assert peer.at_eof()


@pytest.mark.parametrize("request_line", [b"NONSENSE", b"GET / HTTP/1.1 extra", b"GET / FTP/1.0", b"GET / HTTP/x.y"])
def test_wsgi_bad_request_line_gets_400_and_the_server_goes_on(request_line):
    with coopsock.WSGIServer(("127.0.0.1", 0), text_app(), log=None) as server:
        with Peer(server.address) as peer:
            peer.send(request_line + b"\r\nHost: test\r\n\r\n")
            status, _, _ = peer.response()
            assert status.split()[1] == "400", status
            assert peer.at_eof()
        with Peer(server.address) as peer:
            assert peer.get("/")[::2] == ("HTTP/1.1 200 OK", b"hello")


def test_wsgi_app_exception_gets_500_and_the_server_goes_on(capfd, caplog):
    def pieces(environ, start_response):
        if environ["PATH_INFO"] == "/boom-in-iteration":
            raise ValueError("boom in the first piece")
        if environ["PATH_INFO"] == "/late":
            start_response("200 OK", [])
            yield b"a first piece"
            raise ValueError("boom after the headers were sent")
        start_response("200 OK", [("Content-Length", "2")])
        yield b"ok"

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("boom before the response")
        return pieces(environ, start_response)
    with coopsock.WSGIServer(("127.0.0.1", 0), app, log=None) as server:
        for path in ("/boom", "/boom-in-iteration"):
            with Peer(server.address) as peer:
                status, _, _ = peer.get(path)
                assert status.split()[1] == "500", (path, status)
        with Peer(server.address) as peer:
            peer.send(b"GET /late HTTP/1.1\r\nHost: test\r\n\r\n")
            status, headers = peer.head()
            assert status.split()[1] == "200" and headers["transfer-encoding"].lower() == "chunked"
            assert peer.chunk() == b"a first piece"
            with pytest.raises(EOFError):  # closed before the last chunk: the client knows the body is cut short
                peer.chunk()
        with Peer(server.address) as peer:
            assert peer.get("/")[::2] == ("HTTP/1.1 200 OK", b"ok")
    errors = capfd.readouterr().err + caplog.text
    for message in ("boom before the response", "boom in the first piece", "boom after the headers were sent"):
        assert message in errors, errors


@pytest.mark.parametrize("log", ["default", None])
def test_wsgi_access_log_goes_to_stderr_unless_log_is_none(capfd, log):
    with coopsock.WSGIServer(("127.0.0.1", 0), text_app(), log=log) as server, Peer(server.address) as peer:
        status, _, body = peer.get("/logged?x=1", version="HTTP/1.0")
        assert (status.split(" ", 1)[1], body) == ("200 OK", b"hello")
    # the server stopped: every handler ended, its line written
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "/logged?x=1" in line]
    if log is None:
        assert lines == [], err
    else:
        assert len(lines) == 1 and '"GET /logged?x=1 HTTP/1.0" 200' in lines[0], err
        assert lines[0].startswith("127.0.0.1"), err


def test_wsgi_environ_string_listener_and_extra_environ():
    environ = {"custom.key": "from the server's environ"}
    with coopsock.WSGIServer("127.0.0.1:0", report, log=None, environ=environ) as server, \
            Peer(server.address) as peer:
        status, _, body = peer.get("/a%20path", extra="X-Test: a header\r\n")
        port = peer.sock.getsockname()[1]
    seen = json.loads(body)
    assert status.split()[1] == "200"
    assert (seen["method"], seen["path"], seen["header"], seen["custom"], seen["scheme"]) == (
        "GET", "/a path", "a header", "from the server's environ", "http")
    assert seen["port"] == str(port)


def test_wsgi_stop_lets_the_request_in_flight_finish():
    begun = coopsock.Event()

    def slow(environ, start_response):
        begun.set()
        coopsock.sleep(0.2)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]
    server = coopsock.WSGIServer(("127.0.0.1", 0), slow, log=None)
    server.start()
    with Peer(server.address) as peer:
        peer.send(b"GET / HTTP/1.0\r\n\r\n")
        assert begun.wait(5)
        stopping = coopsock.spawn(server.stop, timeout=5)
        assert peer.response()[::2] == ("HTTP/1.1 200 OK", b"done")
        stopping.join(5)
        assert stopping.successful()
    with pytest.raises(ConnectionRefusedError):
        coopsock.create_connection(server.address, timeout=5)


@pytest.mark.parametrize("how", ["ssl_context", "keyfile and certfile"])
def test_wsgi_over_tls(patched, ca, cert, tmp_path, how):
    import requests

    cafile, keyfile, certfile = (str(tmp_path / name) for name in ("ca.pem", "server.key", "server.crt"))
    ca.cert_pem.write_to_path(cafile)
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    if how == "ssl_context":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        server = coopsock.WSGIServer(("127.0.0.1", 0), report, log=None, ssl_context=context)
    else:
        server = coopsock.WSGIServer(("127.0.0.1", 0), report, log=None, keyfile=keyfile, certfile=certfile)
    with server, requests.Session() as session:
        url = f"https://127.0.0.1:{server.server_port}/"
        seen = [session.get(url + f"tls/{i}", timeout=10, verify=cafile).json() for i in range(3)]
        assert [(s["scheme"], s["path"]) for s in seen] == [("https", f"/tls/{i}") for i in range(3)]
        assert len({s["port"] for s in seen}) == 1  # kept alive over TLS too
        with pytest.raises(requests.exceptions.SSLError):  # the server's certificate is checked, not ignored
            requests.get(url, timeout=10)


# ---------------------------------------------------------------------------
# signal_handler

@pytest.fixture
def sigusr1():
    """A handler of SIGUSR1 recording the signals it got (the default would end the process), restored after."""
    calls = []

    def previous(signum, frame):
        calls.append(signum)
    original = signal.signal(signal.SIGUSR1, previous)
    try:
        yield previous, calls
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_signal_handler_runs_in_a_new_greenlet_with_its_arguments(sigusr1):
    calls, done = [], coopsock.Queue()

    def handler(*args, **kwargs):
        calls.append((args, kwargs, coopsock.getcurrent()))
        coopsock.sleep(0.01)  # it may block: it runs in a greenlet, not inside the signal's frame
        done.put(len(calls))
    watcher = coopsock.signal_handler(signal.SIGUSR1, handler, 1, "two", three=3)
    try:
        for n in (1, 2):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert done.get(timeout=5) == n
    finally:
        watcher.cancel()
    assert [(args, kwargs) for args, kwargs, _ in calls] == [((1, "two"), {"three": 3})] * 2
    greenlets = [g for _, _, g in calls]
    assert greenlets[0] is not greenlets[1]
    assert not {id(coopsock.getcurrent()), id(coopsock.get_hub())} & {id(g) for g in greenlets}
    assert sigusr1[1] == []  # the previous handler did not run meanwhile


def test_signal_handler_cancel_restores_the_previous_handler(sigusr1):
    previous, calls = sigusr1
    ran = coopsock.Event()
    watcher = coopsock.signal_handler(signal.SIGUSR1, ran.set)
    assert signal.getsignal(signal.SIGUSR1) is not previous
    os.kill(os.getpid(), signal.SIGUSR1)
    assert ran.wait(5) and calls == []
    watcher.cancel()
    assert signal.getsignal(signal.SIGUSR1) is previous
    os.kill(os.getpid(), signal.SIGUSR1)
    with coopsock.Timeout(5):
        while not calls:  # a Python handler runs between two bytecodes of this thread: soon, but not at a known one
            coopsock.sleep(0.001)
    assert calls == [signal.SIGUSR1]


def test_signal_handler_that_raises_leaves_the_program_and_the_next_signal_alone(sigusr1):
    outcomes = coopsock.Queue()

    def handler():
        outcomes.put("ran")
        raise ValueError("a handler's own error")
    watcher = coopsock.signal_handler(signal.SIGUSR1, handler)
    try:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert outcomes.get(timeout=5) == "ran"
        coopsock.sleep(0.01)  # the second handler's greenlet ends meanwhile: its error stays its own, not the test's
    finally:
        watcher.cancel()


@pytest.mark.loop_independent
def test_signal_handler_outside_the_main_thread_raises_value_error():
    caught = []

    def other():
        try:
            coopsock.signal_handler(signal.SIGUSR1, print)
        except ValueError as exc:
            caught.append(exc)
    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert len(caught) == 1


# ---------------------------------------------------------------------------
# gunicorn with coopsock's worker, in a child process

APP = '''\
"""What gunicorn serves in test_serving.py: the path says what a request waits for; the answer is JSON."""

import json, os, sys, time, urllib.request

import redis

store = redis.Redis(host="127.0.0.1", port=int(os.environ.get("REDIS_PORT", 0)), socket_timeout=10)
running = peak = 0


def application(environ, start_response):
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        kind, _, arg = environ["PATH_INFO"].strip("/").partition("/")
        if kind == "fetch":  # an outbound HTTP call, then a redis one
            with urllib.request.urlopen(os.environ["UPSTREAM"] + arg, timeout=10) as reply:
                result = f"{reply.read().decode()} {store.incr(os.environ['KEY_PREFIX'] + arg)}"
        elif kind == "sleep":  # /sleep/SECONDS/NAME
            seconds, _, result = arg.partition("/")
            print("begun", result, file=sys.stderr, flush=True)
            time.sleep(float(seconds))
        else:
            result = arg
        body = json.dumps({"result": result, "pid": os.getpid(), "peak": peak,
                           "port": environ.get("REMOTE_PORT")}).encode()
    finally:
        running -= 1
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def _no_control_socket():
    # gunicorn 25+ listens on a control socket, one path per user: two runs at once (CI's suites) would share it
    from gunicorn import config

    return ["--no-control-socket"] if hasattr(config, "ControlSocketDisable") else []


NO_CONTROL_SOCKET = _no_control_socket()


class Gunicorn:
    """gunicorn -k coopsock.GunicornWorker -w 1 in a child process on a loop backend; its log in a file."""

    def __init__(self, folder, backend, app, options, env, scheme="http", verify=None):
        self.port, self.log_path, self.verify = free_port(), folder / f"gunicorn-{free_port()}.log", verify
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gunicorn", "-k", "coopsock.GunicornWorker", "-w", "1",
                   "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "10", *NO_CONTROL_SOCKET, *options, app]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=folder, env=dict(_child_env(backend), **env),
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.process, self.port, self.log_path, "gunicorn")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def worker_pids(self):
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())]

    def get(self, path):
        """GET path; check the status; return what the app answered, {"result", "pid", "peak", "port"}."""
        import requests

        response = requests.get(self.url + path, timeout=10, verify=self.verify)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def signal_and_wait(self, signum, timeout=15):
        """Send signum to the arbiter; return its exit status once it ends (fail after `timeout` seconds)."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn still running {timeout} s after {signal.Signals(signum).name}; "
                        f"its log ends with:\n{self.log()[-3000:]}")

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        print(f"--- gunicorn's log\n{self.log()[-5000:]}")  # shown if the test failed


@pytest.fixture
def gunicorn(tmp_path, backend):
    """Return start(app, *options, scheme=, verify=, **env) -> a Gunicorn serving app; each is stopped after."""
    (tmp_path / "serving_app.py").write_text(APP)
    started = []

    def start(app="serving_app:application", *options, scheme="http", verify=None, **env):
        started.append(Gunicorn(tmp_path, backend, app, options, env, scheme, verify))
        return started[-1]
    yield start
    for server in started:
        server.close()


def test_gunicorn_serves_100_requests_each_calling_http_and_redis_at_once(patched, gunicorn, slow_servers,
                                                                          redis_port):
    server = gunicorn(UPSTREAM=f"http://127.0.0.1:{slow_servers['http']}/", REDIS_PORT=str(redis_port),
                      KEY_PREFIX=uuid.uuid4().hex)
    start = time.monotonic()
    # the first request also imports what the app uses and connects to redis; PyPy's JIT warms up over a few
    assert [server.get(f"/fetch/warm{i}")["result"] for i in range(3)] == [f"/warm{i} 1" for i in range(3)]
    one = (time.monotonic() - start) / 3
    warming = [coopsock.spawn(server.get, f"/fetch/warm-{i}") for i in range(20)]  # PyPy's JIT, on a burst too
    assert len(coopsock.joinall(warming, timeout=20, raise_error=True)) == 20
    elapsed = run_concurrently(lambda i: server.get(f"/fetch/{i}")["result"], lambda i: f"/{i} 1",
                               servers=server.worker_pids)
    print(f"one request {one:.3f} s; 100 at once {elapsed:.3f} s")
    assert len(server.worker_pids()) == 1  # the one worker served them all
    assert "Traceback" not in server.log()


def test_gunicorn_sigterm_lets_requests_in_flight_finish_then_exits(patched, gunicorn):
    server = gunicorn()
    pid = server.get("/echo/up")["pid"]

    def ask(i):
        seen = server.get(f"/sleep/0.5/r{i}")
        return seen["result"], seen["pid"], time.monotonic()
    flights = [coopsock.spawn(ask, i) for i in range(20)]
    with coopsock.Timeout(20, AssertionError("the 20 requests did not all begin")):
        while server.log().count("begun r") < 20:  # another process: its log is all there is to wait on
            coopsock.sleep(0.01)
    sent = time.monotonic()
    status = server.signal_and_wait(signal.SIGTERM)
    assert len(coopsock.joinall(flights, timeout=5, raise_error=True)) == len(flights)
    assert [g.value[:2] for g in flights] == [(f"r{i}", pid) for i in range(20)]
    assert all(g.value[2] > sent for g in flights)  # they were in flight when the signal came
    assert status == 0
    log = server.log()
    assert "Handling signal: term" in log and "Traceback" not in log and "graceful timeout" not in log, log


def test_gunicorn_sigquit_exits_at_once(patched, gunicorn):
    import requests

    server = gunicorn()
    server.get("/echo/up")
    flight = coopsock.spawn(server.get, "/sleep/30/long")
    with coopsock.Timeout(20, AssertionError("the request did not begin")):
        while "begun long" not in server.log():
            coopsock.sleep(0.01)
    start = time.monotonic()
    assert server.signal_and_wait(signal.SIGQUIT) == 0
    assert time.monotonic() - start < 5  # not after the graceful timeout (10 s)
    flight.join(5)
    # as gunicorn's gevent and sync workers do: the connection drops; the kill is no error of the app's
    assert isinstance(flight.exception, requests.exceptions.ConnectionError), flight.exception
    log = server.log()
    assert "Error handling request" not in log and "graceful timeout" not in log, log


def test_gunicorn_max_requests_recycles_the_worker_and_no_request_fails(patched, gunicorn):
    server = gunicorn("serving_app:application", "--max-requests", "5")
    pids, deadline = [], time.monotonic() + 20
    while len(set(pids)) < 3 and time.monotonic() < deadline:  # every request must succeed, the restarts included
        pids.append(server.get(f"/echo/{len(pids)}")["pid"])
    runs = [pids.count(pid) for pid in dict.fromkeys(pids)]
    assert len(runs) == 3, f"the worker served {len(pids)} requests without being recycled twice: {runs}"
    assert runs[0] >= 5 and runs[1] >= 5, runs  # not before max_requests
    assert pids == sorted(pids, key=pids.index)  # each worker served its requests in one run
    assert server.worker_pids() == list(dict.fromkeys(pids))
    assert server.log().count("Autorestarting worker after current request.") >= 2
    with coopsock.Timeout(10, AssertionError("a recycled worker did not exit")):
        for old in list(dict.fromkeys(pids))[:2]:
            while True:
                try:
                    os.kill(old, 0)
                except ProcessLookupError:
                    break
                coopsock.sleep(0.05)


def test_gunicorn_worker_connections_bounds_the_requests_at_once(patched, gunicorn):
    server = gunicorn("serving_app:application", "--worker-connections", "5")
    # No warm-up request first: on PyPy its client leaves the connection open, and an idle keep-alive
    # connection holds one of the worker's 5 slots (as in gevent's worker): the peak was 4 there.
    flights = [coopsock.spawn(server.get, f"/sleep/0.3/c{i}") for i in range(12)]
    assert len(coopsock.joinall(flights, timeout=20, raise_error=True)) == len(flights)
    assert sorted(g.value["result"] for g in flights) == sorted(f"c{i}" for i in range(12))
    assert max(g.value["peak"] for g in flights) == 5


def test_gunicorn_heartbeat_keeps_a_busy_worker_alive_past_timeout(patched, gunicorn):
    server = gunicorn("serving_app:application", "--timeout", "2")
    pid = server.get("/echo/up")["pid"]
    seen = server.get("/sleep/3.5/beat")  # the worker notifies the arbiter while this request waits
    assert (seen["result"], seen["pid"]) == ("beat", pid)
    assert "WORKER TIMEOUT" not in server.log() and server.worker_pids() == [pid]


def test_gunicorn_over_tls_serves_the_wsgiserver_example_with_keep_alive(patched, gunicorn, ca, cert, tmp_path):
    import requests

    cafile, keyfile, certfile = (str(tmp_path / name) for name in ("ca.pem", "server.key", "server.crt"))
    ca.cert_pem.write_to_path(cafile)
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    server = gunicorn("wsgiserver:application", "--pythonpath", EXAMPLES, "--certfile", certfile,
                      "--keyfile", keyfile, scheme="https", verify=cafile)
    with requests.Session() as session:
        for path, status, body in [("/", 200, "<b>hello world</b>"), ("/", 200, "<b>hello world</b>"),
                                   ("/elsewhere", 404, "<h1>Not Found</h1>")]:
            response = session.get(server.url + path, timeout=10, verify=cafile)
            assert (response.status_code, response.text) == (status, body)
        assert connections_opened(session, server.url) == 1


# ---------------------------------------------------------------------------
# gevent's examples, ported with their imports changed

def test_example_wsgiserver_answers_hello_and_404():
    wsgiserver = load_example("wsgiserver")
    with coopsock.WSGIServer(("127.0.0.1", 0), wsgiserver.application, log=None) as server:
        for path, expected in [("/", ("200 OK", b"<b>hello world</b>")), ("/x", ("404 Not Found", b"<h1>Not Found</h1>"))]:
            with Peer(server.address) as peer:
                status, headers, body = peer.get(path)
            assert (status.split(" ", 1)[1], body) == expected and headers["content-type"] == "text/html"


def test_example_wsgiserver_ssl_serves_over_tls(patched, ca, cert, tmp_path, monkeypatch):
    import requests

    wsgiserver_ssl = load_example("wsgiserver_ssl")
    monkeypatch.chdir(tmp_path)  # its key and certificate are named relative to the working directory
    cert.private_key_pem.write_to_path("server.key")
    cert.cert_chain_pems[0].write_to_path("server.crt")
    ca.cert_pem.write_to_path("ca.pem")
    server = wsgiserver_ssl.pywsgi.WSGIServer(("127.0.0.1", 0), wsgiserver_ssl.hello_world,
                                              keyfile="server.key", certfile="server.crt", log=None)
    with server:
        response = requests.get(f"https://127.0.0.1:{server.server_port}/", timeout=10, verify="ca.pem")
        assert (response.status_code, response.text) == (200, "<b>hello world</b>")


def test_example_udp_server_answers_each_datagram(capsys):
    udp_server = load_example("udp_server")
    server = udp_server.EchoServer(":0")
    server.start()
    try:
        with udp_client() as sock:
            for message in (b"hello", b"a longer datagram"):
                sock.sendto(message, ("127.0.0.1", server.server_port))
                assert sock.recvfrom(100)[0] == b"Received %d bytes" % len(message)
    finally:
        server.stop()
    assert capsys.readouterr().out.splitlines() == ["127.0.0.1: got b'hello'", "127.0.0.1: got b'a longer datagram'"]


def test_example_unixsocket_server_serves_http_on_a_unix_socket(tmp_path, monkeypatch, backend):
    monkeypatch.chdir(tmp_path)  # it listens on ./unixsocket_server.py.sock; a relative path stays short
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = coopsock.subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "unixsocket_server.py")],
                                            env=_child_env(backend), stdout=log, stderr=subprocess.STDOUT)
    try:
        with coopsock.Timeout(30, AssertionError("the server did not listen within 30 s")):
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    peer = Peer("./unixsocket_server.py.sock", stdsocket.AF_UNIX)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    coopsock.sleep(0.05)
        with peer:
            status, _, body = peer.get("/", version="HTTP/1.0")
        assert status.split(" ", 1)[1] == "200 OK" and body == b""
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == -signal.SIGTERM, log_path.read_text()


def test_example_webproxy_proxies_and_rewrites_links(patched):
    import requests

    page = b'<html><a href="/next">next</a> <img src=pic.gif> <a href="http://elsewhere.example/x">out</a></html>'

    def upstream_app(environ, start_response):
        if environ["PATH_INFO"] != "/page":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return iter([b"no such page"])
        coopsock.sleep(0.1)
        start_response("200 OK", [("Content-Type", "text/html"), ("Set-Cookie", "theirs=1")])
        return iter([page[:20], page[20:]])  # no length: a chunked reply, which the proxy re-frames
    webproxy = load_example("webproxy")
    with coopsock.WSGIServer(("127.0.0.1", 0), upstream_app, log=None) as upstream, \
            coopsock.WSGIServer(("127.0.0.1", 0), webproxy.application, log=None) as proxy:
        base, up = f"http://127.0.0.1:{proxy.server_port}/", f"127.0.0.1:{upstream.server_port}"
        form = requests.get(base, timeout=10)
        assert form.status_code == 200 and b"<form action=/ method=post>" in form.content
        response = requests.get(f"{base}{up}/page", timeout=10)
        assert response.status_code == 200 and "theirs" not in response.cookies
        assert response.content == (
            f'<html><a href="{base}http://{up}/next">next</a> <img src="{base}http://{up}/pic.gif"> '
            f'<a href="{base}http://elsewhere.example/x">out</a></html>').encode()
        missing = requests.get(f"{base}{up}/gone", timeout=10)
        assert (missing.status_code, missing.content) == (404, b"no such page")
        moved = requests.post(base, data={"url": f"http://{up}/page"}, timeout=10, allow_redirects=False)
        assert (moved.status_code, moved.headers["Location"]) == (302, f"{base}http://{up}/page")

        def fetch(i):  # each waits 100 ms for the upstream in a greenlet of its own
            return requests.get(f"{base}{up}/page", timeout=10).content
        run_concurrently(fetch, lambda i: response.content, count=20)


def _forwarder(tmp_path, backend, upstream):
    """Start examples/portforwarder.py to upstream in a child; return (the process, its port, its log's path)."""
    port, log_path = free_port(), tmp_path / "forwarder.log"
    with open(log_path, "wb") as log:
        process = coopsock.subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, "portforwarder.py"), f"127.0.0.1:{port}",
             f"127.0.0.1:{upstream.server_port}"], env=_child_env(backend), stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(process, port, log_path, "the port forwarder")
    return process, port, log_path


def _echo(sock, address):
    while data := sock.recv(65536):
        sock.sendall(data)


def _stop_listening(process, port, log_path):
    """SIGTERM the forwarder; return once its port refuses connections."""
    process.send_signal(signal.SIGTERM)
    with coopsock.Timeout(10, AssertionError("the forwarder did not close its listener")):
        while "Closing listener socket" not in log_path.read_text():
            coopsock.sleep(0.01)
        while True:  # it logs, then closes: a connection made in between is queued (then reset by the close)
            try:
                coopsock.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                pass
            coopsock.sleep(0.01)


def test_example_portforwarder_closes_on_sigterm_and_exits_after_the_last_connection(tmp_path, backend):
    with coopsock.StreamServer(("127.0.0.1", 0), _echo) as upstream:
        process, port, log_path = _forwarder(tmp_path, backend, upstream)
        try:
            with coopsock.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"before")
                assert client.recv(100) == b"before"
                _stop_listening(process, port, log_path)
                client.sendall(b"after")  # the connection open goes on
                assert client.recv(100) == b"after"
                assert process.poll() is None
            assert process.wait(10) == 0, log_path.read_text()  # the last connection closed: the program ends
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = log_path.read_text()
    assert f"Starting port forwarder 127.0.0.1:{port} -> 127.0.0.1:{upstream.server_port}" in log
    assert "accepted" in log and "Traceback" not in log, log


def test_example_portforwarder_aborts_on_a_second_signal(tmp_path, backend):
    with coopsock.StreamServer(("127.0.0.1", 0), _echo) as upstream:
        process, port, log_path = _forwarder(tmp_path, backend, upstream)
        try:
            with coopsock.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"open")
                assert client.recv(100) == b"open"
                _stop_listening(process, port, log_path)
                process.send_signal(signal.SIGTERM)  # the connection still open: this one aborts
                assert process.wait(10) == 1, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "A second exit signal before the connections ended: aborting." in log_path.read_text()


def test_example_portforwarder_keeps_serving_when_a_client_closes_first(capsys):
    # gevent's example closed the whole server here: the reply direction,
    # parked in its recv when the client's direction ended and closed both
    # sockets, took the EBADF for a signal's doing (a CI run's readiness
    # probe made the forwarder refuse the test's connections).
    forwarder, handled = load_example("portforwarder"), coopsock.Queue()

    class Forwarder(forwarder.PortForwarder):
        def handle(self, source, address):
            super().handle(source, address)
            handled.put(address)  # both directions have ended
    with coopsock.StreamServer(("127.0.0.1", 0), _echo) as upstream, \
            Forwarder(("127.0.0.1", 0), ("127.0.0.1", upstream.server_port)) as server:
        server.start()
        for payload in (b"one", b"two", b"three"):
            with coopsock.create_connection(("127.0.0.1", server.server_port), timeout=5) as client:
                client.sendall(payload)
                assert client.recv(100) == payload  # the reply direction now waits in its recv
                address = client.getsockname()
            assert handled.get(timeout=5)[:2] == address[:2]
            assert not server.closed, capsys.readouterr().err
