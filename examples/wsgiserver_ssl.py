"""The WSGI example over TLS: gevent's examples/wsgiserver_ssl.py with its import changed.

    python -m trustme && mv server.pem server.crt      (a key and a certificate for localhost, in this folder)
    PYTHONPATH=. python examples/wsgiserver_ssl.py     then: curl --cacert client.pem https://localhost:8443/

keyfile= and certfile= are gevent's names; WSGIServer(..., ssl_context=context) takes an ssl.SSLContext instead.
"""

import coopsock as pywsgi


def hello_world(env, start_response):
    if env["PATH_INFO"] == "/":
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<b>hello world</b>"]
    start_response("404 Not Found", [("Content-Type", "text/html")])
    return [b"<h1>Not Found</h1>"]


if __name__ == "__main__":
    print("Serving on https://:8443")
    server = pywsgi.WSGIServer(("127.0.0.1", 8443), hello_world, keyfile="server.key", certfile="server.crt")
    # start() would return at once and serve in the background; this program has nothing else to do
    server.serve_forever()
