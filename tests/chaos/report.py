"""Regenerate the results table of docs/reliability.md from the JSON results of a chaos run.

Usage: ``python tests/chaos/report.py [RESULTS_DIR] [DOC]`` (defaults: ``.build/chaos`` and
``docs/reliability.md`` of the repository). Each scenario writes ``<scenario>.json`` and the
abuse suite ``abuse.json`` (tests/support/chaos_run.py, tests/chaos/test_abuse.py); this
script replaces what lies between the table markers of the document and leaves the prose
alone, so the page always shows the last run.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ["process-3", "power-loss-3", "membership-3", "network-3", "disk-3", "mixed-5"]


#: Results that are not scenarios: the abuse suite's and the Raft wire fuzzer's.
NOT_SCENARIOS = {"abuse.json", "raft_fuzz.json"}


def load(results: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    scenarios = []
    for path in sorted(results.glob("*.json")):
        if path.name in NOT_SCENARIOS or "-history" in path.name:
            continue
        scenarios.append(json.loads(path.read_text()))
    scenarios.sort(key=lambda r: ORDER.index(r["scenario"]) if r["scenario"] in ORDER else 99)
    abuse_file = results / "abuse.json"
    abuse = json.loads(abuse_file.read_text()) if abuse_file.exists() else None
    fuzz_file = results / "raft_fuzz.json"
    if abuse is not None and fuzz_file.exists():
        fuzz = json.loads(fuzz_file.read_text())
        abuse["bad_inputs"] += fuzz["cases"]
        abuse["by_kind"] = {
            **abuse["by_kind"],
            **{f"raft wire: {k}": v for k, v in fuzz["by_kind"].items()},
        }
    return scenarios, abuse


def table(scenarios: list[dict[str, Any]], abuse: dict[str, Any] | None) -> str:
    head = (
        "| scenario | nodes | network | faults for | fault events | records acknowledged "
        "| lost | duplicated (client retries) | duplicated (never retried) | divergent replicas "
        "| dirty / out-of-order / stale linearizable reads | bad inputs tried "
        "| node crashes caused | seed | result |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in scenarios:
        nodes = str(r["nodes"])
        if r.get("nodes_at_start", r["nodes"]) != r["nodes"]:
            nodes = f"{r['nodes_at_start']} → {r['nodes']}"
        faults_for = f"{r['duration_s']:g} s"
        if r.get("opening"):  # the opening counts in the duration, and always runs whole
            faults_for = "opening only" if not r["duration_s"] else f"{faults_for} incl. opening"
        rows.append(
            f"| {r['scenario']} | {nodes} | {r['network']} | {faults_for} "
            f"| {r['fault_events']} | {r['acknowledged']:,} | {r['lost']} "
            f"| {r['duplicated_client']} | {r['duplicated_raw']} | {r['divergent_replicas']} "
            f"| {r['dirty_reads']} / {r['out_of_order_reads']} / {r.get('stale_reads', 'n/a')} "
            f"| n/a | {r['crashes']} "
            f"| {r['seed']} | {'pass' if r['passed'] else 'FAIL'} |"
        )
    if abuse is not None:
        rows.append(
            "| fuzz + abuse + security | 3 | 127.0.0.1 | "
            + "n/a | " * 8
            + f"{abuse['bad_inputs']:,} | {abuse['node_crashes']} | n/a "
            + f"| {'pass' if abuse['node_crashes'] == 0 else 'FAIL'} |"
        )
    lines = [*rows, ""]
    for r in scenarios:
        extra = ""
        if r.get("opening"):
            extra += f"opening: {', '.join(r['opening'])}; "
        if r.get("membership_changes"):
            extra += f"membership changes seen in GetServers: {r['membership_changes']}; "
        if r.get("loss_method"):
            extra += f"packet loss made with {r['loss_method']}; "
        for kind, why in (r.get("skipped_nemeses") or {}).items():
            extra += f"nemesis {kind} skipped: {why}; "
        lines.append(
            f"- **{r['scenario']}**: {r['description']}. Nemeses: {', '.join(r['nemeses'])}; "
            f"{extra}"
            f"{r['attempted']:,} produce attempts ({r['acknowledged_raw']:,} acknowledged raw "
            f"single calls), {r['records_read']:,} records read by consumers, final log "
            f"{r['final_length']:,} records; "
            f"{r.get('linearizable_reads', 0):,} linearizable reads of acknowledged offsets "
            f"({r.get('linearizable_answered', 0):,} answered); "
            f"failed or unknown attempts by error: "
            f"{r['errors'] or 'none'}; agents restarted after the known Serf-spawn abort: "
            f"{r.get('start_aborts_known_bug', 0)}; took {r['elapsed_s']} s."
        )
    if abuse is not None:
        kinds = ", ".join(f"{k} {v}" for k, v in abuse["by_kind"].items())
        codes = ", ".join(f"{k} {v}" for k, v in abuse["codes"].items())
        glitches = ", ".join(f"{k} {v}" for k, v in abuse.get("findings", {}).items())
        lines.append(
            f"- **fuzz + abuse + security**: {kinds}. Status codes seen: {codes}. "
            f"Known glitches counted: {glitches or 'none'}."
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Generated by `tests/chaos/report.py` on {stamp}."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    results = Path(argv[1]) if len(argv) > 1 else REPO / ".build" / "chaos"
    doc = Path(argv[2]) if len(argv) > 2 else REPO / "docs" / "reliability.md"
    scenarios, abuse = load(results)
    if not scenarios and abuse is None:
        print(f"no results in {results}: run `make chaos` first", file=sys.stderr)
        return 1
    text = doc.read_text()
    if START not in text or END not in text:
        print(f"{doc} has no {START} ... {END} markers", file=sys.stderr)
        return 1
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    doc.write_text(f"{before}{START}\n{table(scenarios, abuse)}\n{END}{after}")
    print(f"wrote {doc} ({len(scenarios)} scenarios{', abuse suite' if abuse else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
