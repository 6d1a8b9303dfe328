"""Process-wide settings: the cores a run takes, and the warning when the machine is oversubscribed."""

from __future__ import annotations

import logging

from difftrain.runtime import (
    cores,
    cpu_bf16_warning,
    cpu_flags,
    oversubscription,
    warn_if_oversubscribed,
)


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


def test_bf16_on_a_cpu_without_bf16_instructions_is_named_with_the_fix():
    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    message = cpu_bf16_warning("bf16-mixed", avx2)
    assert "without bf16 instructions" in message and "trainer.precision=32-true" in message
    assert cpu_bf16_warning("bf16-mixed", avx2 | {"avx512f", "avx512_bf16"}) is None
    assert cpu_bf16_warning("bf16-mixed", {"asimd", "bf16"}) is None  # Arm
    assert cpu_bf16_warning("32-true", avx2) is None
    assert cpu_bf16_warning("bf16-mixed", set()) is None  # flags unknown: nothing to say
    assert isinstance(cpu_flags(), set)


def test_a_run_prints_no_library_tips_or_known_warnings(make_cfg, caplog, recwarn):
    from difftrain.cli.train import train
    from tests.conftest import FAST

    train(make_cfg(*FAST, "logger=none", "~callbacks.evaluate"))
    assert not [r for r in caplog.records if "litlogger" in r.getMessage()]
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
