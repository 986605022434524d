"""Hash files in real threads while greenlets go on: blocking work off the hub.

    PYTHONPATH=. python examples/threadpool.py /usr/bin/python3 /etc/passwd

File reads and hashlib block in C (and let the GIL go), so they run in a
coopsock.ThreadPool; the greenlet that asks parks until its thread is done,
and the hub serves every other greenlet meanwhile.
"""

import hashlib
import sys

import coopsock


def sha256_of(path, chunk=1 << 20):
    """Return the hex SHA-256 of the file at path (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while data := file.read(chunk):
            digest.update(data)
    return digest.hexdigest()


def hash_files(paths, threads=4):
    """Return {path: hex SHA-256} for paths, hashed in up to `threads` threads at once."""
    pool = coopsock.ThreadPool(threads)
    return dict(zip(paths, pool.imap(sha256_of, paths)))


if __name__ == "__main__":
    for path, digest in hash_files(sys.argv[1:]).items():
        print(digest, path)
