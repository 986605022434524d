"""A UDP server that answers every datagram: gevent's examples/udp_server.py with its import changed.

    PYTHONPATH=. python examples/udp_server.py     then: echo -n hi | nc -u -w1 127.0.0.1 9000

DatagramServer runs handle(data, address) in a greenlet of its own for each datagram received.
"""

from coopsock import DatagramServer


class EchoServer(DatagramServer):

    def handle(self, data, address):
        print(f"{address[0]}: got {data!r}")
        self.socket.sendto(f"Received {len(data)} bytes".encode(), address)


if __name__ == "__main__":
    print("Receiving datagrams on :9000")
    EchoServer(":9000").serve_forever()
