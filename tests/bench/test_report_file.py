"""The benchmark report writer (``bench.report_file``): docs/benchmarks.md's generated block, one
subsection per bench, rewritten alone; ratios oriented by unit; targets and their verdicts."""

from __future__ import annotations

import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import report_file
from bench.report_file import BEGIN, END, Figure, Run, render_section, update
from bench.support import report

RUN = Run(
    started=datetime(2026, 12, 4, 17, 20, tzinfo=UTC),
    finished=datetime(2026, 12, 4, 17, 24, tzinfo=UTC),
    machine="Some CPU, 2 cores, 7.8 GiB RAM, Python 3.11.9, PostgreSQL 16.4",
    load_before=1.5,
    load_after=2.25,
)
HAND_WRITTEN = "# Benchmarks\n\nIntro by hand.\n\n## Soak\n\nSoak text by hand.\n"


@pytest.fixture(autouse=True)
def _own_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own process-wide record, so figures do not leak between tests."""
    monkeypatch.setattr(report_file, "FIGURES", [])
    monkeypatch.setattr(report_file, "NOTES", {})
    monkeypatch.setattr(report_file, "_current", [])


def section(bench: str, *figures: Figure) -> str:
    return render_section(bench, figures, RUN)


def test_replacing_one_subsection_keeps_the_others_and_the_hand_written_text() -> None:
    doc = HAND_WRITTEN.replace("## Soak", f"## Figures\n\n{BEGIN}\n{END}\n\n## Soak")
    doc = update(doc, {"bench.intake": section("intake", Figure("intake", "old", 1.0, "req/s"))})
    doc = update(doc, {"bench.hostile": section("hostile", Figure("hostile", "kept", 2.0, "x"))})
    doc = update(doc, {"soak": section("soak", Figure("soak", "lost", 0, "requests", goal=("==", 0)))})
    before_block, after_block = doc.split(BEGIN)[0], doc.split(END)[1]

    new = update(doc, {"bench.intake": section("intake", Figure("intake", "new", 3.0, "req/s"))})

    assert new.split(BEGIN)[0] == before_block and new.split(END)[1] == after_block
    assert "Intro by hand." in new and "Soak text by hand." in new
    assert "| new |" in new and "| old |" not in new
    assert "| kept |" in new and "| lost |" in new
    assert new.count("### bench.intake") == 1
    # Writing the same subsection again changes nothing.
    again = update(new, {"bench.intake": section("intake", Figure("intake", "new", 3.0, "req/s"))})
    assert again == new


def test_subsections_follow_the_given_order_whatever_order_they_were_written_in() -> None:
    order = ["bench.intake", "bench.hostile", "soak"]
    doc = update(HAND_WRITTEN, {"soak": section("soak", Figure("soak", "a", 1, "s"))}, order)
    doc = update(doc, {"bench.hostile": section("hostile", Figure("hostile", "b", 1, "s"))}, order)
    doc = update(doc, {"bench.intake": section("intake", Figure("intake", "c", 1, "s"))}, order)
    assert doc.index("### bench.intake") < doc.index("### bench.hostile") < doc.index("### soak")


def test_a_file_without_the_block_gets_one_appended_and_keeps_its_text() -> None:
    doc = update(HAND_WRITTEN, {"bench.ui": section("ui", Figure("ui", "/", 12.0, "ms"))})
    assert doc.startswith(HAND_WRITTEN.rstrip("\n"))
    assert doc.index(BEGIN) > doc.index("Soak text by hand.") and doc.rstrip().endswith(END)


def test_ratio_is_baseline_over_value_for_times_and_value_over_baseline_for_rates() -> None:
    time = Figure("b", "upload", 8.0, "s", baseline=4.0)
    rate = Figure("b", "intake", 8.0, "req/s", baseline=4.0)
    size = Figure("b", "rss", 200.0, "MB", baseline=100.0)
    assert time.ratio == 0.5 and "baseline ÷ ours" in time.ratio_text()
    assert rate.ratio == 2.0 and "ours ÷ baseline" in rate.ratio_text()
    assert size.ratio == 0.5
    # The caller may say which way: "within 1.3x of the smaller size" reads as value / baseline.
    per_request = Figure(
        "b", "us/req at 200k", 13.0, "us/req", baseline=10.0, ratio_direction="value/baseline"
    )
    assert per_request.ratio == pytest.approx(1.3) and "ours ÷ baseline" in per_request.ratio_text()


def test_a_figure_without_target_or_baseline_renders_dashes() -> None:
    rendered = section("ui", Figure("ui", "dashboard counts", 42.0, "ms"))
    assert "| dashboard counts | 42 | ms | — | — | — | — |" in rendered


def test_met_or_not_on_the_value_on_the_ratio_and_on_both() -> None:
    assert Figure("b", "f", 4.0, "s", goal=("<", 5)).met is True
    assert Figure("b", "f", 6.0, "s", goal=("<", 5)).met is False
    assert Figure("b", "f", 70.0, "req/s", baseline=100.0, ratio_goal=(">=", 0.7)).met is True
    assert Figure("b", "f", 69.0, "req/s", baseline=100.0, ratio_goal=(">=", 0.7)).met is False
    both = Figure("b", "f", 9.0, "s", baseline=6.0, goal=("<", 10), ratio_goal=(">=", 0.7))
    assert both.met is False and both.target_text() == "< 10 s; ratio ≥ 0.7"  # 6 / 9 = 0.67
    assert Figure("b", "f", 1.0, "s", "(free text)").met is None
    rendered = section("p", both, Figure("b", "g", 4.0, "s", goal=("<", 5)))
    assert "| < 10 s; ratio ≥ 0.7 | **no** |" in rendered and "| < 5 s | yes |" in rendered


def test_the_header_says_when_where_and_how_loaded() -> None:
    rendered = section("intake", Figure("intake", "f", 1.0, "s"))
    assert rendered.startswith("### bench.intake\n")
    header = " ".join(rendered.split("\n\n")[1].split())  # the paragraph, wrapped as the docs are
    assert "2026-12-04, 17:20 to 17:24 UTC" in header and RUN.machine in header
    assert "load average 1.50 before, 2.25 after" in header


def test_report_keeps_its_old_signature_and_records_free_text_targets(capsys: pytest.CaptureFixture) -> None:
    report_file.begin("delivery")
    report("our RabbitPublisher", 900.0, "msg/s", f"{900 / 1000:.2f} of baseline")
    report("ours", 2.0, "s", baseline=1.0, goal=("<", 5), ratio_goal=(">=", 0.7))
    (legacy, structured) = report_file.figures_of("delivery")
    assert legacy.target_text() == "0.90 of baseline" and legacy.met is None
    assert structured.met is False
    out = capsys.readouterr().out
    assert "our RabbitPublisher" in out and "0.90 of baseline" in out and "MISSED" in out


def test_python_m_bench_writes_the_subsection_of_the_bench_it_ran(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(HAND_WRITTEN)
    monkeypatch.setattr(report_file, "BENCHMARKS_MD", doc)
    bench = types.ModuleType("bench.tiny")
    bench.main = lambda: report("a figure", 3.0, "s", goal=("<", 5))  # type: ignore[attr-defined]

    bench_main.run_one("tiny", bench, write=True)

    text = doc.read_text()
    assert "### bench.tiny" in text and "| a figure | 3 | s | — | — | < 5 s | yes |" in text
    assert "Soak text by hand." in text and "load average" in text
