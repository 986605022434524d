"""Echo server on eventlet: eventlet.listen, an accept loop and eventlet.spawn.

Prints "PORT <n> <hub>" once listening.
"""
import warnings

warnings.simplefilter("ignore")  # eventlet warns that it is deprecated

import eventlet  # noqa: E402
import eventlet.hubs  # noqa: E402
from eventlet.green import socket  # noqa: E402


def handle(conn):
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
    server = eventlet.listen(("127.0.0.1", 0), backlog=1024)
    print("PORT", server.getsockname()[1], type(eventlet.hubs.get_hub()).__module__, flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        eventlet.spawn(handle, conn)


if __name__ == "__main__":
    main()
