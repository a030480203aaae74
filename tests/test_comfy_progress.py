"""Progress lines: one format for every log, and one line per node change and per 10% step."""

from __future__ import annotations

from infinitetalk_pipeline.comfy.progress import ProgressEvent, ProgressLines


def _lines(*events: ProgressEvent) -> list[str]:
    lines: list[str] = []
    report = ProgressLines(lines.append)
    for event in events:
        report(event)
    return lines


def test_a_progress_event_reads_as_percent_node_and_class() -> None:
    assert str(ProgressEvent("progress", "12", "KSampler", 9, 20)) == "45% node 12 (KSampler)"


def test_an_event_reads_as_its_kind_and_the_node_alone_when_the_class_is_unknown() -> None:
    assert str(ProgressEvent("executing", "7")) == "executing node 7"


def test_a_node_that_starts_executing_is_reported_once() -> None:
    events = [ProgressEvent("executing", "3", "VAEDecode"), ProgressEvent("executing", "3", "VAEDecode")]
    assert _lines(*events) == ["executing node 3 (VAEDecode)"]


def test_progress_is_reported_once_per_10_percent_step_of_a_node() -> None:
    steps = [ProgressEvent("progress", "12", "KSampler", value, 40) for value in range(41)]
    assert _lines(*steps) == [f"{percent}% node 12 (KSampler)" for percent in range(0, 101, 10)]


def test_a_new_node_is_reported_even_at_the_step_the_previous_node_was_at() -> None:
    events = [ProgressEvent("progress", "12", "KSampler", 5, 10), ProgressEvent("progress", "13", "KSampler", 5, 10)]
    assert _lines(*events) == ["50% node 12 (KSampler)", "50% node 13 (KSampler)"]


def test_cached_executed_and_maximum_less_progress_events_are_not_reported() -> None:
    events = [
        ProgressEvent("cached", "1", "LoadImage"),
        ProgressEvent("executed", "2", "SaveVideo"),
        ProgressEvent("progress", "3", "KSampler", 4, None),
    ]
    assert _lines(*events) == []
