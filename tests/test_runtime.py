"""Process-wide settings: the cores a run takes, and the warning when the machine is oversubscribed."""

from __future__ import annotations

import logging

from difftrain.runtime import cores, oversubscription, warn_if_oversubscribed


def test_oversubscription_is_named_with_the_fix():
    assert oversubscription(threads=2, others=0, available=2) is None
    assert oversubscription(threads=1, others=1, available=2) is None  # two jobs with a core each
    message = oversubscription(threads=2, others=2, available=2)  # a second training beside ours
    assert "oversubscribed: 2 other threads are ready to run on its 2 cores" in message
    assert "num_threads=<cores / runs>" in message


def test_a_busy_machine_is_seen(monkeypatch, caplog):
    import difftrain.runtime as runtime

    monkeypatch.setattr(runtime, "runnable_elsewhere", lambda: float(2 * cores()))
    with caplog.at_level(logging.WARNING, logger="difftrain.runtime"):
        warn_if_oversubscribed()
    assert "oversubscribed" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "runnable_elsewhere", lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="difftrain.runtime"):
        warn_if_oversubscribed()
    assert caplog.text == ""
