"""Run commands at once, each in its own greenlet, and collect what they print.

    PYTHONPATH=. python examples/processes.py "sleep 1; echo one" "sleep 1; echo two" "uname -s"

Takes about as long as the slowest command, not the sum of them: each
greenlet parks while its child runs (coopsock.subprocess is the stdlib's
module, cooperative; after coopsock.patch(), `import subprocess` is too).
"""

import sys
import time

import coopsock
from coopsock import subprocess


def run_all(commands, timeout=10.0):
    """Return {command: its output, or the exception it failed with}, running the commands at once in a shell."""
    def one(command):
        try:
            return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout,
                                  check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return exc
    greenlets = {command: coopsock.spawn(one, command) for command in commands}
    return {command: g.get() for command, g in greenlets.items()}


if __name__ == "__main__":
    started = time.monotonic()
    for command, output in run_all(sys.argv[1:]).items():
        print(f"{command!r}: {output!r}")
    print(f"{len(sys.argv) - 1} commands in {time.monotonic() - started:.2f} s")
