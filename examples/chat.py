"""A chat server: every line a client sends goes to every other client.

    PYTHONPATH=. python examples/chat.py [port]      then: nc localhost 8001

Each client has an outbox (a Queue) and a greenlet that drains it, so that a
slow client delays nobody else.
"""

import sys

import coopsock

clients = {}  # {socket: Queue of lines to send}


def broadcast(line, sender=None):
    for conn, outbox in clients.items():
        if conn is not sender:
            outbox.put(line)


def send_loop(conn, outbox):
    try:
        while True:
            conn.sendall(outbox.get())
    except OSError:  # the client went away: handle() sees it too, and says so
        pass


def handle(conn, address):
    name = f"{address[0]}:{address[1]}"
    clients[conn] = outbox = coopsock.Queue()
    sender = coopsock.spawn(send_loop, conn, outbox)
    broadcast(f"* {name} joined\n".encode(), conn)
    try:
        with conn.makefile("rb") as lines:
            for line in lines:
                broadcast(f"{name}: ".encode() + line, conn)
    except ConnectionError:  # a client that drops (a reset) has left, as one that closes
        pass
    finally:
        del clients[conn]
        sender.kill()
        broadcast(f"* {name} left\n".encode())


def serve(address=("127.0.0.1", 8001)):
    """Return the chat server, started."""
    server = coopsock.StreamServer(address, handle)
    server.start()
    return server


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    server = serve(("127.0.0.1", port))
    print(f"chat server on port {server.server_port}")
    server.serve_forever()
