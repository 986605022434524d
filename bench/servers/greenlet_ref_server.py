"""Reference echo server: greenlets on select.epoll, and nothing else.

What a minimal greenlet server costs on this machine, as a yardstick for
coopsock's own overhead. A hub greenlet polls epoll and switches to the greenlet
parked on each ready fd. Each socket is registered once (EPOLLIN,
level-triggered), at accept, and unregistered at close; recv, send and accept
are tried first, and a greenlet parks only on BlockingIOError (a blocked send
waits for EPOLLOUT instead, then goes back to EPOLLIN). A new connection's
greenlet starts when its first bytes arrive.
Prints "PORT <n> greenlet-epoll" once listening.
"""
import select
import socket

from greenlet import getcurrent, greenlet

epoll = select.epoll()
waiting = {}  # fd: the greenlet parked on it


def park(fd):
    waiting[fd] = getcurrent()
    hub.switch()


def run_hub():
    poll, pop = epoll.poll, waiting.pop
    while True:
        for fd, _ in poll():
            glet = pop(fd, None)
            if glet is not None:
                glet.switch()


def handle(conn, fd):
    recv, send = conn.recv, conn.send
    try:
        while True:
            try:
                data = recv(65536)
            except BlockingIOError:
                park(fd)
                continue
            if not data:
                break
            while data:
                try:
                    data = data[send(data):]
                except BlockingIOError:
                    epoll.modify(fd, select.EPOLLOUT)
                    park(fd)
                    epoll.modify(fd, select.EPOLLIN)
    except OSError:  # the load generator resets its connections when done
        pass
    finally:
        epoll.unregister(fd)
        conn.close()


def main():
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    server.setblocking(False)
    epoll.register(server.fileno(), select.EPOLLIN)
    print("PORT", server.getsockname()[1], "greenlet-epoll", flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            park(server.fileno())
            continue
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = conn.fileno()
        epoll.register(fd, select.EPOLLIN)
        waiting[fd] = greenlet(lambda conn=conn, fd=fd: handle(conn, fd), hub)


hub = greenlet(run_hub)

if __name__ == "__main__":
    main()
