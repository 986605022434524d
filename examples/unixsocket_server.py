"""A WSGI server on a Unix domain socket: gevent's examples/unixsocket_server.py with its imports changed.

    PYTHONPATH=. python examples/unixsocket_server.py
    then, in the same folder: curl --unix-socket unixsocket_server.py.sock http://localhost/

WSGIServer takes a listening socket of any family, as StreamServer does.
"""

import os

import coopsock as socket
from coopsock import WSGIServer


def application(environ, start_response):
    assert environ
    start_response("200 OK", [])
    return []


if __name__ == "__main__":
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockname = "./" + os.path.basename(__file__) + ".sock"
    if os.path.exists(sockname):
        os.remove(sockname)
    listener.bind(sockname)
    listener.listen(1)
    WSGIServer(listener, application).serve_forever()
