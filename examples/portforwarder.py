"""A TCP port forwarder that exits gracefully: gevent's examples/portforwarder.py with its imports changed.

One bug of gevent's mended: there, a connection whose client closes first
could close the whole server (the other direction's recv, its socket closed
under it by the first, took the error for a signal's and closed the server).

    PYTHONPATH=. python examples/portforwarder.py :8080 example.org:80      then: curl -H "Host: example.org" localhost:8080

On SIGTERM or SIGINT (Ctrl-C) it closes the listening socket and lets the
connections already open carry on; the program ends when the last one
closes. A second signal before then aborts.
"""

import signal
import sys

import coopsock as gevent  # the program is gevent's: every gevent.x below is coopsock's x
from coopsock import StreamServer, create_connection, gethostbyname


class PortForwarder(StreamServer):

    def __init__(self, listener, dest, **kwargs):
        StreamServer.__init__(self, listener, **kwargs)
        self.dest = dest

    def handle(self, source, address):
        log("%s:%s accepted", *address[:2])
        try:
            dest = create_connection(self.dest)
        except OSError as ex:
            log("%s:%s failed to connect to %s:%s: %s", address[0], address[1], self.dest[0], self.dest[1], ex)
            return
        forwarders = (gevent.spawn(forward, source, dest), gevent.spawn(forward, dest, source))
        # The server closes `source` when handle returns: wait for both directions first.
        gevent.joinall(forwarders)

    def close(self):
        if self.closed:
            sys.exit("A second exit signal before the connections ended: aborting.")
        log("Closing listener socket")
        StreamServer.close(self)


def forward(source, dest):
    try:
        source_address = "{}:{}".format(*source.getpeername()[:2])
        dest_address = "{}:{}".format(*dest.getpeername()[:2])
    except OSError as ex:  # a signal may have closed the server, and a socket with it, meanwhile
        log("Failed to get all peer names: %s", ex)
        return
    try:
        while True:
            try:
                data = source.recv(1024)
                log("%s->%s: %r", source_address, dest_address, data)
                if not data:
                    break
                dest.sendall(data)
            except OSError:  # reset, or closed by the other direction: this connection ends, not the server
                break
    finally:
        source.close()
        dest.close()


def parse_address(address):
    try:
        hostname, port = address.rsplit(":", 1)
        port = int(port)
    except ValueError:
        sys.exit(f"Expected HOST:PORT: {address!r}")
    return gethostbyname(hostname), port


def main():
    args = sys.argv[1:]
    if len(args) != 2:
        sys.exit(f"Usage: {__file__} source-address destination-address")
    source = args[0]
    dest = parse_address(args[1])
    server = PortForwarder(source, dest)
    log("Starting port forwarder %s:%s -> %s:%s", *(server.address[:2] + dest))
    gevent.signal_handler(signal.SIGTERM, server.close)
    gevent.signal_handler(signal.SIGINT, server.close)
    server.start()
    gevent.wait()


def log(message, *args):
    sys.stderr.write(message % args + "\n")


if __name__ == "__main__":
    main()
