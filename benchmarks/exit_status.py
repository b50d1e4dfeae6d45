"""Exit status of `pipeline show` in many fresh processes under CPU load: an abort at interpreter exit
(exit 134, "terminate called without an active exception") shows up in a small share of runs only.

    python benchmarks/exit_status.py OUTPUT [--runs 600] [--parallel 8] [--burners 3]

OUTPUT is a labeling job's OUTPUT (the README's demo line makes one). Prints how many runs ended with each
exit status and the first lines of stderr of the runs that did not exit 0.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BURN = "while True: pass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--burners", type=int, default=3, help="busy processes running alongside (the load)")
    args = parser.parse_args()

    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners)]

    def show(_: int) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "pipeline", "show", args.output], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        return done.returncode, done.stderr

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(show, range(args.runs)))
    finally:
        for burner in burners:
            burner.kill()
    counts = collections.Counter(code for code, _ in results)
    print(f"{args.runs} runs of `pipeline show`, {args.parallel} at a time, {args.burners} busy processes beside "
          f"them, {time.monotonic() - started:.0f} s")
    for code, count in sorted(counts.items()):
        print(f"  exit {code}: {count}")
    for code, err in [r for r in results if r[0] != 0][:3]:
        print(f"  exit {code}: {err.strip().splitlines()[-2:] if err.strip() else '(no stderr)'}")


if __name__ == "__main__":
    main()
