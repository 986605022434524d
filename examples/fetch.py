"""Fetch many URLs at once, at most 50 at a time, each with a time limit.

    PYTHONPATH=. python examples/fetch.py http://127.0.0.1:8000/a http://127.0.0.1:8000/b ...
"""

import sys
from urllib.parse import urlsplit

import coopsock


def fetch(url, timeout=5.0):
    """Return the status line of an HTTP/1.0 GET of url; raise coopsock.Timeout past `timeout`."""
    parts = urlsplit(url)
    with coopsock.Timeout(timeout), coopsock.create_connection((parts.hostname, parts.port or 80)) as conn:
        conn.sendall(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    return response.split(b"\r\n", 1)[0].decode()


def fetch_all(urls, size=50, timeout=5.0):
    """Return {url: status line, or the exception it failed with}."""
    pool = coopsock.Pool(size)

    def one(url):
        try:
            return url, fetch(url, timeout)
        except (OSError, coopsock.Timeout) as exc:
            return url, exc
    return dict(pool.imap_unordered(one, urls))


if __name__ == "__main__":
    for url, outcome in fetch_all(sys.argv[1:]).items():
        print(url, outcome)
