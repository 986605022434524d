"""Echo servers on gevent: `spawn` (gevent.socket accept loop) or `streamserver`.

usage: gevent_server.py [spawn|streamserver] [timeout]
`timeout`: each connection gets conn.settimeout(300), as coopsock's demo server does.
Prints "PORT <n> <loop>" once listening.
"""
import sys

import gevent
from gevent import socket
from gevent.server import StreamServer

TIMEOUT = 300 if "timeout" in sys.argv[2:] else None


def handle(conn, address=None):
    if TIMEOUT is not None:
        conn.settimeout(TIMEOUT)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:  # the load generator resets its connections when done
        pass
    finally:
        conn.close()


def nodelay(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve_spawn():
    # gevent.socket.create_server is the stdlib's, which returns a blocking socket.
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    print("PORT", server.getsockname()[1], type(gevent.get_hub().loop).__module__, flush=True)
    while True:
        conn, _ = server.accept()
        nodelay(conn)
        gevent.spawn(handle, conn)


def serve_streamserver():
    def handler(conn, address):
        nodelay(conn)
        handle(conn)
    server = StreamServer(("127.0.0.1", 0), handler, backlog=1024)
    server.start()
    print("PORT", server.server_port, type(gevent.get_hub().loop).__module__, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    {"spawn": serve_spawn, "streamserver": serve_streamserver}[sys.argv[1] if len(sys.argv) > 1 else "spawn"]()
