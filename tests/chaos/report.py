"""Regenerate the results table of docs/reliability.md from the JSON results of a chaos run.

Usage: ``python tests/chaos/report.py [RESULTS_DIR] [DOC]`` (defaults: ``.build/chaos`` and
``.build/chaos-long``, and ``docs/reliability.md`` of the repository). Each scenario writes
``<scenario>.json`` and the abuse suite ``abuse.json`` (tests/support/chaos_run.py,
tests/chaos/test_abuse.py); this script replaces what lies between the table markers of the
document and leaves the prose alone, so the page always shows the last run. The long run
(``make chaos PROFILE=long``, scenarios ``long-*``) has its own table and markers, so a
``make chaos`` does not erase its figures, nor it theirs; a section whose run left no
results is left as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- results:start -->", "<!-- results:end -->"
LONG_START, LONG_END = "<!-- long-results:start -->", "<!-- long-results:end -->"
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


def is_long(result: dict[str, Any]) -> bool:
    return str(result["scenario"]).startswith("long-")


def long_table(runs: list[dict[str, Any]]) -> str:
    """The long run's figures: one row per run, then its fault events by kind."""
    head = (
        "| date | command (replays the schedule) | nodes | network | faults for "
        "| fault events | records acknowledged | lost | duplicated (client / never retried) "
        "| divergent replicas | dirty / out-of-order / stale linearizable reads "
        "| node crashes | pytest RSS at the end (peak) | took | result |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    runs = sorted(runs, key=lambda r: str(r.get("started_at", "")))  # oldest first
    for r in runs:
        nodes = str(r["nodes"])
        if r.get("nodes_at_start", r["nodes"]) != r["nodes"]:
            nodes = f"{r['nodes_at_start']} → {r['nodes']}"
        command = f"`CHAOS_SEED={r['seed']} make chaos PROFILE=long DURATION={r['duration_s']:g}`"
        rows.append(
            f"| {r.get('started_at', 'n/a')} | {command} | {nodes} | {r['network']} "
            f"| {r['duration_s']:g} s | **{r['fault_events']:,}** | {r['acknowledged']:,} "
            f"| {r['lost']} | {r['duplicated_client']} / {r['duplicated_raw']} "
            f"| {r['divergent_replicas']} "
            f"| {r['dirty_reads']} / {r['out_of_order_reads']} / {r['stale_reads']} "
            f"| {r['crashes']} | {r.get('pytest_rss_mb', 'n/a')} MiB "
            f"({r.get('pytest_max_rss_mb', 'n/a')} MiB) | {r['elapsed_s']:,} s "
            f"| {'pass' if r['passed'] else 'FAIL'} |"
        )
    lines = [*rows, ""]
    for r in runs:
        by_kind = ", ".join(f"{k} {n}" for k, n in r.get("fault_events_by_kind", {}).items())
        skipped = "; ".join(f"{k}: {why}" for k, why in (r.get("skipped_nemeses") or {}).items())
        lines.append(
            f"- **{r['scenario']}** ({r.get('started_at', 'n/a')}, seed {r['seed']}): "
            f"{r['description']}. Fault events by kind (one per injection; heals, restarts "
            f"and rejoins are not counted): {by_kind or 'n/a'}. Nemeses that could run: "
            f"{', '.join(r['nemeses'])}; skipped: {skipped or 'none'}; "
            f"packet loss made with {r.get('loss_method') or 'n/a'}; hold "
            f"{'-'.join(f'{x:g}' for x in r.get('hold_s', []))} s, gap "
            f"{'-'.join(f'{x:g}' for x in r.get('gap_s', []))} s; membership changes seen in "
            f"GetServers: {r.get('membership_changes', 0)}; {r['attempted']:,} produce attempts "
            f"({r['acknowledged_raw']:,} acknowledged raw single calls), {r['records_read']:,} "
            f"records read by consumers, final log {r['final_length']:,} records, every one "
            f"checked on every replica; {r['linearizable_reads']:,} linearizable reads "
            f"({r['linearizable_answered']:,} answered); failed or unknown attempts by error: "
            f"{r['errors'] or 'none'}; agents restarted after the known Serf-spawn abort "
            f"(counted as crashes here): {r.get('start_aborts_known_bug', 0)}"
            + (f"; what failed: {'; '.join(r['problems'][:5])}." if r.get("problems") else ".")
        )
    return "\n".join(lines)


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


def replace_section(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} markers")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def main(argv: list[str]) -> int:
    dirs = (
        [Path(argv[1])] if len(argv) > 1 else [REPO / ".build" / d for d in ("chaos", "chaos-long")]
    )
    doc = Path(argv[2]) if len(argv) > 2 else REPO / "docs" / "reliability.md"
    scenarios: list[dict[str, Any]] = []
    abuse: dict[str, Any] | None = None
    for results in dirs:
        found, found_abuse = load(results) if results.is_dir() else ([], None)
        scenarios += found
        abuse = abuse or found_abuse
    short = [r for r in scenarios if not is_long(r)]
    long = [r for r in scenarios if is_long(r)]
    if not short and not long and abuse is None:
        print(f"no results in {', '.join(map(str, dirs))}: run `make chaos` first", file=sys.stderr)
        return 1
    text = doc.read_text()
    try:
        if short or abuse is not None:
            text = replace_section(text, START, END, table(short, abuse))
        if long:
            text = replace_section(text, LONG_START, LONG_END, long_table(long))
    except ValueError as exc:
        print(f"{doc}: {exc}", file=sys.stderr)
        return 1
    doc.write_text(text)
    print(
        f"wrote {doc} ({len(short)} scenarios{', abuse suite' if abuse else ''}"
        f"{f', {len(long)} long run(s)' if long else ''})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
