"""The soak's verdict (``check``: lost, undelivered, double-paid, repeated deliveries) and its figures
(``show``: wall time, throughput per stage, where the time goes, peak RSS, Postgres size; the headline
figures are also recorded for docs/benchmarks.md, which ``python -m bench soak`` writes)."""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from collections import Counter
from pathlib import Path

from batch_pipeline.openai_client import METADATA_KEY
from bench import report_file
from bench.soak import figures
from bench.soak.plan import destination_of
from bench.soak.run import Outcome


def save(outcome: Outcome) -> Path:
    """The raw measurements, so a report can be printed again without running the soak again."""
    path = Path(tempfile.gettempdir()) / f"soak-{outcome.plan.run_id}.pickle"
    path.write_bytes(pickle.dumps(outcome))
    print(f"  measurements saved to {path}", flush=True)
    return path


def _other(sink: str) -> str:
    return "queue" if sink == "webhook" else "webhook"


def repeated_deliveries(outcome: Outcome) -> dict[str, int]:
    """custom_id -> copies beyond the first, over both sinks."""
    return {cid: n - 1 for sink in outcome.counts.values() for cid, n in sink.items() if n > 1}


def explain_repeats(outcome: Outcome) -> tuple[Counter[str], list[str]]:
    """Each repeated delivery by what the database recorded for it; and those it cannot explain."""
    attempts = {cid: (n, ok, outcomes) for cid, n, ok, outcomes in outcome.repeats}
    reasons: Counter[str] = Counter()
    unexplained = []
    for cid, extra in repeated_deliveries(outcome).items():
        if cid not in attempts:
            unexplained.append(cid)
            continue
        _, ok, outcomes = attempts[cid]
        kind = (
            "sent again after a successful attempt" if ok > 1 else f"retried after {outcomes.split(',')[0]}"
        )
        reasons[kind] += extra
    return reasons, unexplained


def openai_batches_by_ours(outcome: Outcome) -> dict[str, Counter[str]]:
    """Our batch id -> the statuses of the OpenAI batches created for it."""
    found: dict[str, Counter[str]] = {}
    for b in outcome.sim_batches:
        ours = (b.get("metadata") or {}).get(METADATA_KEY)
        if ours is not None:
            found.setdefault(ours, Counter())[b["status"]] += 1
    return found


def billed_twice(outcome: Outcome) -> dict[str, dict[str, int]]:
    """Our batches with more than one OpenAI batch that ran (anything but failed at validation, which
    OpenAI does not bill): paid twice."""
    by_ours = openai_batches_by_ours(outcome)
    return {
        ours: dict(s) for ours, s in by_ours.items() if sum(n for st, n in s.items() if st != "failed") > 1
    }


def check(outcome: Outcome, exactly_once: bool) -> list[str]:
    """Every broken promise, in words; empty when the run kept them all."""
    problems = []
    acked = outcome.acknowledged
    refused = [cid for d in outcome.doors for cid in d.refused]
    if refused:
        problems.append(f"{len(refused)} requests refused at intake, e.g. {refused[:3]}")
    lost = [cid for cid in acked if cid not in outcome.stored]
    if lost:
        problems.append(f"{len(lost)} acknowledged requests lost (not stored), e.g. {lost[:3]}")
    undelivered = [cid for cid in acked if not outcome.counts[destination_of(outcome.plan, cid)].get(cid)]
    if undelivered:
        states = Counter(outcome.stored.get(cid, ("missing", 0))[0] for cid in undelivered)
        problems.append(f"{len(undelivered)} never reached their destination (states {dict(states)})")
    strays = [cid for cid in acked if outcome.counts[_other(destination_of(outcome.plan, cid))].get(cid)]
    if strays:
        problems.append(f"{len(strays)} delivered to the wrong destination, e.g. {strays[:3]}")
    unknown = set(outcome.counts["webhook"]) | set(outcome.counts["queue"])
    unknown -= set(acked)
    if unknown:
        problems.append(f"{len(unknown)} deliveries of unknown custom_ids, e.g. {sorted(unknown)[:3]}")
    creates = outcome.sim_stats.get("batches_by_metadata", {}).get(METADATA_KEY, {})
    if outcome.sim_stats.get("batches_created") and not creates:
        problems.append(f"the simulator counted no creates by metadata {METADATA_KEY!r}: cannot check")
    billed = billed_twice(outcome)
    if billed:
        problems.append(f"double-paid: more than one OpenAI batch that ran, for our batches {billed}")
    if outcome.all_delivered is None:
        problems.append("timed out before every result was delivered")
    extra = sum(repeated_deliveries(outcome).values())
    _, unexplained = explain_repeats(outcome)
    if exactly_once and extra:
        problems.append(f"{extra} deliveries beyond one per request (exactly once was expected)")
    elif unexplained:
        problems.append(
            f"{len(unexplained)} repeated deliveries with one recorded attempt: {unexplained[:3]}"
        )
    return problems


def _line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {name:<52} {value:>12,.1f} {unit:<12} {note}", flush=True)


def _span_rate(found: list[figures.Batch], start: str, end: str) -> tuple[float, float] | None:
    """(requests per second, seconds) from the first batch entering ``start`` to the last entering ``end``."""
    first, last = figures.first_and_last(found, start), figures.first_and_last(found, end)
    if not first or not last:
        return None
    count = sum(b.requests for b in found if end in b.entered)
    seconds = max(last[1] - first[0], 1e-9)
    return count / seconds, seconds


def show(outcome: Outcome, target_seconds: float) -> None:
    o, found = outcome, outcome.batches
    t0 = o.first_accept
    acked = len(o.acknowledged)
    print(
        f"requests acknowledged: {acked:,} (doors: "
        + ", ".join(f"{d.door} {len(d.acknowledged):,}" for d in o.doors)
        + f", markers {len(o.markers)})"
    )
    print("intake")
    for d in o.doors:
        _line(f"{d.door}: acknowledged per second", d.rate, "req/s", f"({d.finished - d.started:.1f} s)")
    _line("first to last accept (stored)", o.last_accept - t0, "s")
    if o.all_delivered is not None:
        after = o.all_delivered - o.last_accept
        _line("all delivered, after the last accept", after, "s", f"(target <= {target_seconds:.0f} s)")
        _line("whole run: first accept to last delivery", o.all_delivered - t0, "s")
        _line("end to end throughput", acked / (o.all_delivered - t0), "req/s")
    print("throughput per stage (first batch in to last batch out)")
    for name, start, end in (
        ("upload (run start to OpenAI create)", "uploading", "openai_processing"),
        ("results (download and store)", "downloading", "ready_to_deliver"),
    ):
        rate = _span_rate(found, start, end)
        if rate:
            _line(name, rate[0], "req/s", f"({rate[1]:.1f} s)")
    for kind, (n, first, last) in sorted(o.delivery_spans.items()):
        _line(
            f"delivery, {kind} (first to last success)",
            n / max(last - first, 1e-9),
            "req/s",
            f"({n:,} in {last - first:.1f} s)",
        )
    print("where the time goes, per batch (seconds: median / max over batches)")
    for name, median, worst, n in figures.stage_table(found):
        print(f"  {name:<40} {median:>8.1f} {worst:>8.1f}   ({n} batches)")
    print("timeline, seconds after the first accept (first batch / last batch)")
    for label, state in (
        ("batch opened (age or size reached)", "opened"),
        ("upload run started", "uploading"),
        ("created at OpenAI", "openai_processing"),
        ("finished at OpenAI (seen by polling)", "openai_completed"),
        ("results stored", "ready_to_deliver"),
        ("delivery started", "delivering"),
        ("batch settled", "settled"),
    ):
        span = figures.first_and_last(found, state)
        if span:
            print(f"  {label:<40} {span[0] - t0:>8.1f} {span[1] - t0:>8.1f}")
    firsts = [first for _, first, _ in o.delivery_spans.values()]
    created = figures.first_and_last(found, "openai_processing")
    if firsts and created:
        overlap = created[1] - min(firsts)
        verdict = "overlaps" if overlap > 0 else "does not overlap"
        print(
            f"  first delivery {min(firsts) - t0:.1f} s, last create at OpenAI {created[1] - t0:.1f} s: "
            f"delivery {verdict} upload by {abs(overlap):.1f} s"
        )
    statuses = Counter(b.openai_status for b in found)
    print(
        f"batches: {len(found)} (at OpenAI: {dict(statuses)}; ours: {dict(Counter(b.state for b in found))})"
    )
    states = Counter(state for state, _ in o.stored.values())
    resubmitted = sum(1 for _, r in o.stored.values() if r)
    print(f"request states: {dict(states)}; resubmitted at least once: {resubmitted:,}")
    extra = repeated_deliveries(o)
    reasons, unexplained = explain_repeats(o)
    received = {s: sum(c.values()) for s, c in o.counts.items()}
    print(
        f"deliveries received: {received}; beyond one per request: {sum(extra.values())} {dict(reasons)}"
        + (f"; unexplained {len(unexplained)}" if unexplained else "")
    )
    sim = o.sim_stats
    creates = sim.get("batches_by_metadata", {}).get(METADATA_KEY, {})
    repeated = {ours: dict(s) for ours, s in openai_batches_by_ours(o).items() if s.total() > 1}
    print(
        f"our batches created more than once at OpenAI: {repeated or 'none'} "
        f"(billed twice: {billed_twice(o) or 'none'})"
    )
    print(
        f"simulator: {sim.get('batches_created')} batches created for {len(creates)} of ours "
        f"(most creates for one of ours: {max(creates.values(), default=0)}), "
        f"{sim.get('files_uploaded')} files, "
        f"{sim.get('http_requests')} API calls, faults {sim.get('http_faults')}"
    )
    print("peak RSS per process (VmHWM; runs: the largest of them)")
    for role, mb in sorted(o.peak_rss_mb.items(), key=lambda kv: -kv[1]):
        _line(f"{role} ({o.processes.get(role, 1)} process(es))", mb, "MB")
    print("CPU time per process role (user + system, from the first sample to the end)")
    for role, seconds in sorted(o.cpu_seconds.items(), key=lambda kv: -kv[1]):
        _line(role, seconds, "s")
    print("Postgres size")
    total, ours = o.db_bytes
    scale = 100_000 / max(acked, 1)
    _line(
        "Postgres: whole database (ours + Dagster's) per 100k",
        total * scale / 2**20,
        "MB",
        f"({total / 2**20:,.0f} MB)",
    )
    _line("Postgres: batchman schema per 100k", ours * scale / 2**20, "MB", f"({ours / 2**20:,.0f} MB)")
    during = sorted(o.load_during) or [0.0]
    load = (
        f"1-min load average before the start {o.load_before:.2f}, "
        f"during the run median {during[len(during) // 2]:.2f}, max {during[-1]:.2f}"
    )
    print(f"machine: {os.cpu_count()} cores; {load}")
    _record(o, target_seconds, load)


def _record(o: Outcome, target_seconds: float, load: str) -> None:
    """The headline figures, each with its target, for the soak's subsection of docs/benchmarks.md."""
    bench = "soak" if o.plan.faults else "soak_e2e"

    def fig(name: str, value: float, unit: str, goal: tuple[str, float] | None = None) -> None:
        report_file.record(bench, name, value, unit, goal=goal)

    acked = o.acknowledged
    delivered = sum(1 for cid in acked if o.counts[destination_of(o.plan, cid)].get(cid))
    report_file.note(
        f"SOAK_REQUESTS={o.plan.total:,}, faults {'on' if o.plan.faults else 'off'}; the stack's {load}.",
        bench,
    )
    fig("requests acknowledged", len(acked), "requests")
    fig(
        "lost (acknowledged, not stored)",
        sum(1 for cid in acked if cid not in o.stored),
        "requests",
        ("==", 0),
    )
    fig(
        "double-paid (our batches with two OpenAI batches that ran)",
        len(billed_twice(o)),
        "batches",
        ("==", 0),
    )
    fig("delivered to their destination", delivered, "requests", ("==", len(acked)))
    # Under faults a retried delivery may arrive twice (explained by its attempts); without, never.
    extra = sum(repeated_deliveries(o).values())
    fig("deliveries beyond one per request", extra, "deliveries", None if o.plan.faults else ("==", 0))
    if o.all_delivered is None:
        report_file.note(
            "**Not every result was delivered before the wait ended** (SOAK_WAIT_SECONDS).", bench
        )
    after = o.all_delivered - o.last_accept if o.all_delivered is not None else math.nan
    fig("all delivered, after the last accept", after, "s", ("<=", target_seconds))
    for d in o.doors:
        fig(f"intake, {d.door}", d.rate, "req/s")
    for name, start, end in (
        ("upload", "uploading", "openai_processing"),
        ("results", "downloading", "ready_to_deliver"),
    ):
        rate = _span_rate(o.batches, start, end)
        if rate:
            fig(f"{name} (first batch in to last batch out)", rate[0], "req/s")
    for kind, (n, first, last) in sorted(o.delivery_spans.items()):
        fig(f"delivery, {kind} (first to last success)", n / max(last - first, 1e-9), "req/s")
    for role, mb in sorted(o.peak_rss_mb.items(), key=lambda kv: -kv[1]):
        fig(f"peak RSS: {role} ({o.processes.get(role, 1)} process(es))", mb, "MB")
    for role, seconds in sorted(o.cpu_seconds.items(), key=lambda kv: -kv[1]):
        fig(f"CPU time: {role}", seconds, "s")
    total, ours = o.db_bytes
    scale = 100_000 / max(len(acked), 1) / 2**20
    fig("Postgres per 100k requests: whole database (ours + Dagster's)", total * scale, "MB")
    fig("Postgres per 100k requests: batchman schema", ours * scale, "MB")
