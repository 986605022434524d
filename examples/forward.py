"""A TCP port forwarder: PYTHONPATH=. python examples/forward.py LISTEN_PORT HOST PORT

Two greenlets pump the bytes, one per direction. When one side stops sending
(EOF), the pump passes that on with shutdown(SHUT_WR) and the other direction
goes on: a client may send a request, half-close, and still read the reply.
"""

import sys

import coopsock


def pump(source, sink):
    while True:
        data = source.recv(65536)
        if not data:
            break
        sink.sendall(data)
    sink.shutdown(coopsock.SHUT_WR)


def forwarder(upstream):
    """Return a StreamServer handler that forwards each connection to upstream (host, port)."""
    def handle(client, address):
        with coopsock.create_connection(upstream, timeout=10) as server:
            server.settimeout(None)
            pumps = [coopsock.spawn(pump, client, server), coopsock.spawn(pump, server, client)]
            try:
                coopsock.joinall(pumps, raise_error=True)
            finally:
                coopsock.killall(pumps)
    return handle


def serve(listen, upstream):
    """Return the forwarder listening on `listen`, started."""
    server = coopsock.StreamServer(listen, forwarder(upstream))
    server.start()
    return server


if __name__ == "__main__":
    listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    serve(("127.0.0.1", listen_port), (host, port)).serve_forever()
