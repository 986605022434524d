"""Compare two copies of coopsock.py on the hot path, in one run, interleaved.

usage: ab.py DIR_A DIR_B [--runs 15] [--pairs 100] [--rounds 1500] [--instructions]
Each run is a fresh process (pinned to CPU 1 when taskset exists) that opens
--pairs socketpairs, echoes --rounds 64-byte round trips on each between two
greenlets, and prints its CPU time per round trip (both ends, microseconds).
Runs alternate A B A B ...; the report gives the median, quartiles and
minimum of each, and the ratio of the medians. The backend comes from
COOPSOCK_LOOP, as for any user. `git show REV:coopsock.py > DIR/coopsock.py`
makes a copy of an older version.

--instructions counts instead of timing: each run is two processes under
valgrind's callgrind (rounds and twice as many, default 20), and the figure
is the user-space instructions per round trip between them. The count does
not depend on what else the machine runs (the kernel's share is not in it),
so three runs settle what fifteen timed ones on a noisy machine do not.
"""
import argparse
import re
import shutil
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import coopsock
pairs, rounds = int(sys.argv[2]), int(sys.argv[3])
def echo(s):
    while True:
        data = s.recv(65536)
        if not data:
            return
        s.sendall(data)
def client(s):
    with s:
        for _ in range(rounds):
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(65536))
sockets = [coopsock.socketpair() for _ in range(pairs)]
greenlets = [coopsock.spawn(echo, b) for a, b in sockets] + [coopsock.spawn(client, a) for a, b in sockets]
started = time.process_time()
coopsock.joinall(greenlets)
print((time.process_time() - started) / (pairs * rounds) * 1e6)
"""


def instructions(path, pairs, rounds):
    """User-space instructions per round trip: callgrind's count at 2 x rounds less its count at rounds."""
    counts = []
    for n in (rounds, 2 * rounds):
        err = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              "-c", CHILD, path, str(pairs), str(n)], capture_output=True, text=True, check=True).stderr
        counts.append(int(re.search(r"Collected : (\d+)", err).group(1)))
    return (counts[1] - counts[0]) / (pairs * rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--runs", type=int, help="runs of each, alternating (default 15; 3 with --instructions)")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--rounds", type=int, help="round trips per pair (default 1500; 20 with --instructions)")
    ap.add_argument("--instructions", action="store_true", help="count instructions with callgrind (default 3 runs)")
    args = ap.parse_args()
    if args.instructions and not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind: apt-get install valgrind")
    rounds = args.rounds or (20 if args.instructions else 1500)
    runs_wanted = args.runs or (3 if args.instructions else 15)
    unit = "instructions" if args.instructions else "us of CPU"
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    results = {args.a: [], args.b: []}
    for _ in range(runs_wanted):
        for path, runs in results.items():
            if args.instructions:
                runs.append(instructions(path, args.pairs, rounds))
                continue
            out = subprocess.run([*pin, sys.executable, "-c", CHILD, path, str(args.pairs), str(rounds)],
                                 capture_output=True, text=True, check=True).stdout
            runs.append(float(out))
    for path, runs in results.items():
        q = statistics.quantiles(runs, n=4) if len(runs) > 1 else runs * 3
        print(f"{path}: {unit} per round trip median {statistics.median(runs):.2f}, "
              f"quartiles {q[0]:.2f}-{q[2]:.2f}, min {min(runs):.2f} ({len(runs)} runs)")
    ratio = statistics.median(results[args.b]) / statistics.median(results[args.a])
    print(f"B / A medians: {ratio:.3f}")


if __name__ == "__main__":
    main()
