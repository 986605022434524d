"""A web application that fetches other sites for you: gevent's examples/webproxy.py with its imports changed.

    PYTHONPATH=. python examples/webproxy.py      then open http://127.0.0.1:8088/

patch() first thing makes urllib's blocking calls cooperative: each request
fetches its page in its own greenlet while the others go on.
"""

import coopsock as monkey; monkey.patch()  # isort: skip (first, as gevent's monkey.patch_all())
import re
import sys
import traceback
from html import escape
from urllib import request as urllib2
from urllib.parse import unquote, urlparse

LISTEN = ("127.0.0.1", 8088)


def _as_bytes(s):
    return s if isinstance(s, bytes) else s.encode("utf-8")


def _as_str(s):
    return s if isinstance(s, str) else s.decode("latin-1")


def application(env, start_response):
    proxy_url = f"http://{env['HTTP_HOST']}/"
    method = env["REQUEST_METHOD"]
    path = env["PATH_INFO"]
    if env["QUERY_STRING"]:
        path += "?" + env["QUERY_STRING"]
    path = path.lstrip("/")

    if (method, path) == ("GET", ""):
        start_response("200 OK", [("Content-Type", "text/html")])
        return [FORM]
    if method == "GET":
        return proxy(path, start_response, proxy_url)
    if (method, path) == ("POST", ""):
        key, value = env["wsgi.input"].read().strip().split(b"=")
        assert key == b"url", repr(key)
        start_response("302 Found", [("Location", _as_str(join(proxy_url, unquote(_as_str(value)))))])
    elif method == "POST":
        start_response("404 Not Found", [])
    else:
        start_response("501 Not Implemented", [])
    return []


def proxy(path, start_response, proxy_url):
    if "://" not in path:
        path = "http://" + path
    try:
        try:
            response = urllib2.urlopen(path)
        except urllib2.HTTPError as ex:  # an error page is a page to show too
            response = ex
        print(f"{path}: {response.code} {response.msg}")
        # header names keep the sender's case: compare them lowercased
        headers = [(k, v) for (k, v) in response.headers.items() if k.lower() not in DROP_HEADERS]
        scheme, netloc = urlparse(path)[:2]
        host = (scheme or "http") + "://" + netloc
    except Exception as ex:
        sys.stderr.write(f"error while reading {path}:\n")
        traceback.print_exc()
        start_response("502 Bad Gateway", [("Content-Type", "text/html")])
        error = escape(str(ex) or type(ex).__name__)
        return [_as_bytes(f"<h1>{error}</h1><h2>{escape(path)}</h2><pre>{escape(traceback.format_exc())}</pre>")]
    print("Returning", headers)
    start_response(f"{response.code} {response.msg}", headers)
    return [fix_links(response.read(), proxy_url, host)]


def join(url1, *rest):
    """Join URL pieces with exactly one slash between each two; return bytes."""
    if not rest:
        return url1
    url1, url2 = _as_bytes(url1), _as_bytes(rest[0])
    if url1.endswith(b"/") and url2.startswith(b"/"):
        return join(url1 + url2[1:], *rest[1:])
    if url1.endswith(b"/") or url2.startswith(b"/"):
        return join(url1 + url2, *rest[1:])
    return join(url1 + b"/" + url2, *rest[1:])


def fix_links(data, proxy_url, host_url):
    """Point the page's links back through the proxy.

    >>> fix_links(b"><img src=images/hp0.gif width=158", "http://127.0.0.1:8088", "www.example.org")
    b'><img src="http://127.0.0.1:8088/www.example.org/images/hp0.gif" width=158'
    """
    def fix_link_cb(m):
        url = m.group("url")
        if b"://" in url:
            return m.group("before") + b'"' + join(proxy_url, url) + b'"'
        return m.group("before") + b'"' + join(proxy_url, host_url, url) + b'"'
    data = _link_re_1.sub(fix_link_cb, data)
    return _link_re_2.sub(fix_link_cb, data)


_link_re_1 = re.compile(rb"""(?P<before>(href|src|action)\s*=\s*)(?P<quote>['"])(?P<url>[^#].*?)(?P=quote)""")
_link_re_2 = re.compile(rb"""(?P<before>(href|src|action)\s*=\s*)(?P<url>[^'"#>][^ >]*)""")

# The headers not passed on, lowercased: the body is re-framed, and cookies belong to the other site.
DROP_HEADERS = {"transfer-encoding", "set-cookie"}

FORM = b"""<html><head>
<title>Web Proxy - a coopsock example</title></head><body>
<table width=60% height=100% align=center>
<tr height=30%><td align=center valign=bottom>Type the URL to visit and press Enter</td></tr>
<tr><td align=center valign=top>
<form action=/ method=post>
<input size=80 name=url value="http://www.example.org"/>
</form>
</td></tr>
</table></body></html>
"""

if __name__ == "__main__":
    from coopsock import WSGIServer
    print(f"Serving on {LISTEN}...")
    WSGIServer(LISTEN, application).serve_forever()
