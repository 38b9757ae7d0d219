"""Peer figures for our benchmarks: run the shared JetStream benchmark, parse its JSON.

`../shared/bench/peers/bench_jetstream.py` starts NATS JetStream (a 3-node R3 cluster and/or
a single R1 server), loads it with nats-py's publish_async and writes its figures (medians)
as JSON. Our benchmarks run it in the same session as their own load, so the two sets of
figures come from the same machine in the same minutes, and print ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "bench" / "peers"

#: Column names bench_jetstream.py uses per topology.
R1, R3 = "1-node R1", "3-node R3"


def jetstream(
    *, nodes: Sequence[int], sizes: Sequence[int], quiet_wait: float, repeats: int = 1
) -> dict[str, dict[str, float]]:
    """JetStream figures: column (``R1``/``R3``) -> metric -> median; {} if it cannot run."""
    script = PEERS / "bench_jetstream.py"
    if not script.is_file():
        print(f"  JetStream: {script} not found; skipped", file=sys.stderr)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-js-") as tmp:
        out_json = Path(tmp) / "js.json"
        cmd = [
            "python3",
            str(script),
            "--nodes",
            ",".join(map(str, nodes)),
            "--repeats",
            str(repeats),
            "--sizes",
            ",".join(map(str, sizes)),
            "--json",
            str(out_json),
            "--quiet-wait",
            str(quiet_wait),
        ]
        print("  running " + " ".join(cmd), file=sys.stderr, flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0 or not out_json.is_file():
            print(
                f"  JetStream failed (exit {result.returncode}):\n{result.stderr[-2000:]}",
                file=sys.stderr,
            )
            return {}
        data = json.loads(out_json.read_text())
    figures: dict[str, dict[str, float]] = {}
    for metric, cols in data["metrics"].items():
        for col, cell in cols.items():
            figures.setdefault(col, {})[metric] = float(cell["median"])
    return figures
