"""Progress of long work: a line at the start, every few seconds, and at the end."""

from __future__ import annotations

import logging

from difftrain.console import Progress, duration


def test_long_work_says_how_far_it_is_and_how_long_is_left(caplog):
    caplog.set_level(logging.INFO, "difftrain.console")
    progress = Progress("sampling", 100, "samples", every=0)  # every update is "a while" later
    for _ in range(4):
        progress.update(25)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "sampling: 100 samples ..."
    assert lines[1].startswith("sampling: 25/100 samples (25%),") and "left" in lines[1]
    assert len(lines) == 5 and lines[-1].startswith("sampling: 100 samples in ")


def test_quiet_work_that_ends_soon_says_nothing(caplog):
    caplog.set_level(logging.INFO, "difftrain.console")
    progress = Progress("features", 10, quiet=True)
    progress.update(10)
    progress.close()
    assert caplog.records == []


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == [
        "0 s",
        "42 s",
        "3 min 05 s",
        "1 h 02 min",
    ]


def test_printed_paths_and_overrides_paste_back_into_a_shell():
    from difftrain.console import override, quoted

    assert quoted("/runs/a/last.ckpt") == "/runs/a/last.ckpt"
    assert quoted("/my runs/last.ckpt") == "'/my runs/last.ckpt'"
    assert override("ckpt_path", "/runs/a/last.ckpt") == "ckpt_path=/runs/a/last.ckpt"
    assert override("ckpt_path", "/my runs/last.ckpt") == "\"ckpt_path='/my runs/last.ckpt'\""
