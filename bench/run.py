"""`make bench`: run every bench/bench_*.py in name order, each in its own process.

Arguments are passed through to every benchmark (each one ignores what it does not know,
see its ``--help``). Each benchmark prints its own table; this runner prints a header per
file and exits non-zero if any benchmark failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    benches = sorted(here.glob("bench_*.py"))
    if not benches:
        print("no bench/bench_*.py found")
        return 1
    failed: list[str] = []
    for bench in benches:
        print(f"==> {bench.name}", flush=True)
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(bench), *argv], check=False)
        took = time.monotonic() - start
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"<== {bench.name}: {status} in {took:.1f} s\n", flush=True)
        if result.returncode != 0:
            failed.append(bench.name)
    if failed:
        print("failed benchmarks: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
