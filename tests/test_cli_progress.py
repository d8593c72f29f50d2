"""The CLI's progress line: drawn only on a terminal, throttled, erased at the end."""

from __future__ import annotations

import io

from audit_instrument._progress import Progress, track


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_written_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("retrying", 10, stream=stream) as progress:
        progress.advance(5)
    assert progress.enabled is False
    assert stream.getvalue() == ""


def test_line_shows_count_percent_rate_and_time_left() -> None:
    clock = _Clock()
    stream = _Terminal()
    progress = Progress("retrying", 1000, stream=stream, clock=clock, interval=0.5)
    assert progress.enabled is True
    clock.now += 2.0
    progress.update(250)
    assert stream.getvalue() == "\r\x1b[Kretrying: 250/1,000 (25%) 125/s, 6s left"
    clock.now += 0.1
    progress.advance(10)  # within the interval: not redrawn
    assert stream.getvalue().count("retrying") == 1
    clock.now += 1.0
    progress.advance(10)
    assert stream.getvalue().endswith("retrying: 270/1,000 (27%) 87/s, 8s left")
    progress.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_unknown_total_and_forced_display() -> None:
    clock = _Clock()
    stream = io.StringIO()
    progress = Progress("scanning", stream=stream, enabled=True, clock=clock)
    clock.now += 4
    progress.update(2000)
    assert progress.render() == "scanning: 2,000 500/s"
    assert "scanning: 2,000 500/s" in stream.getvalue()


def test_long_waits_read_in_minutes_and_hours() -> None:
    clock = _Clock()
    progress = Progress("x", 1_000_000, enabled=False, clock=clock)
    clock.now += 10
    progress.update(1000)
    assert progress.render().endswith("2h46m left")
    progress.update(20_000)
    assert progress.render().endswith("8m10s left")


def test_track_yields_every_item_and_counts_them() -> None:
    stream = _Terminal()
    items = list(track(range(7), "sending", stream=stream, interval=0.0))
    assert items == list(range(7))
    assert "sending: 7/7 (100%)" in stream.getvalue()
    assert stream.getvalue().endswith("\r\x1b[K")
