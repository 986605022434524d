"""Echo server on stdlib sockets with one thread per connection.

Prints "PORT <n> threads" once listening.
"""
import socket
import threading


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
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print("PORT", server.getsockname()[1], "threads", flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
