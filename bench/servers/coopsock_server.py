"""Echo server on coopsock: a plain accept loop and a greenlet per connection.

usage: coopsock_server.py [timeout]
The backend comes from COOPSOCK_LOOP (libev, selectors, pyev), as for any user.
`timeout`: each connection gets conn.settimeout(300), as the demo server does.
Prints "PORT <n> <backend>" once listening.
"""
import os
import sys

# run.py points COOPSOCK_PATH at a copy of coopsock.py taken when the run began.
sys.path.insert(0, os.environ.get("COOPSOCK_PATH") or
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import coopsock  # noqa: E402

TIMEOUT = 300 if "timeout" in sys.argv[1:] else None


def handle(conn):
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


def main():
    server = coopsock.create_server(("127.0.0.1", 0), backlog=1024)
    print("PORT", server.getsockname()[1], coopsock.BACKEND, flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(coopsock.IPPROTO_TCP, coopsock.TCP_NODELAY, 1)
        coopsock.spawn(handle, conn)


if __name__ == "__main__":
    main()
