"""difftrain-compare: the table, plots and page for a multirun, failed jobs included."""

from __future__ import annotations

import csv
import shutil

import pytest

from difftrain.cli.compare import choose_metric, compare, differing_keys, effects, main, ranked
from difftrain.runs.read import Run, load_runs


def run(name: str, lr: float, loss: float | None, status: str = "finished") -> Run:
    return Run(
        path=f"/runs/{name}", name=name, status=status,
        config={"optimizer.lr": lr, "seed": 0, "paths.output_dir": f"/runs/{name}"},
        choices={"net": "mlp"}, metrics={} if loss is None else {"val/loss": loss},
    )  # fmt: skip


def test_differing_keys_are_the_ones_that_vary():
    runs = [run("a", 1e-3, 0.5), run("b", 1e-2, 0.4)]
    assert differing_keys(runs) == ["optimizer.lr"]


def test_ranking_puts_failed_runs_last_and_effects_rank_keys():
    runs = [
        run("a", 1e-3, 0.5),
        run("b", 1e-2, None, "diverged"),
        run("c", 1e-2, 0.3),
        run("d", 1e-3, 0.7),
    ]
    assert [r.name for r in ranked(runs, "val/loss")] == ["c", "a", "d", "b"]
    (effect,) = effects(runs, ["optimizer.lr"], "val/loss")
    assert effect["means"] == {"0.001": 0.6, "0.01": 0.3}


def test_prompt_alignment_and_clip_score_rank_the_largest_first():
    runs = [run("a", 1e-3, 0.5), run("b", 1e-2, 0.4), run("c", 1e-2, 0.3)]
    for r, share in zip(runs, (0.2, 0.6, 0.4), strict=True):
        r.metrics.update({"eval/align_heldout_digit": share, "eval/clip_score": share * 100})
    assert [r.name for r in ranked(runs, "eval/align_heldout_digit")] == ["b", "c", "a"]
    assert [r.name for r in ranked(runs, "eval/clip_score")] == ["b", "c", "a"]
    assert [r.name for r in ranked(runs, "val/loss")] == ["c", "b", "a"]


def test_compare_a_multirun_writes_table_plots_and_page(tiny_multirun, tmp_path, capsys):
    out = tmp_path / "cmp"
    main([str(tiny_multirun), "--out", str(out)])
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert [(r["run"], r["status"], r["callbacks.fault_injection.nan_steps"]) for r in rows] == [
        ("0", "finished", "[]"), ("1", "diverged", rows[1]["callbacks.fault_injection.nan_steps"])
    ]  # fmt: skip
    assert rows[0]["val/loss"] and rows[1]["rollbacks"] == "2"
    page = (out / "index.html").read_text()
    assert "Best by val/loss" in page and "diverged" in page
    for image in ("loss_curves.png", "vs_callbacks.fault_injection.nan_steps.png"):
        assert (out / image).stat().st_size > 5000 and image in page
    assert "ranked by val/loss" in capsys.readouterr().out


def test_compare_mixes_run_dirs_and_wandb_runs(tiny_multirun, tmp_path):
    (offline,) = (tiny_multirun / "0" / "wandb").glob("offline-run-*")
    runs = load_runs(tiny_multirun / "1", offline)
    assert [r.status for r in runs] == ["diverged", "finished"]
    # out= and metric=, as the other difftrain commands take their options, work too
    main([str(tiny_multirun / "1"), str(offline), f"out={tmp_path}", "metric=eval/hq_share"])
    assert "Best by eval/hq_share" in (tmp_path / "index.html").read_text()
    with pytest.raises(SystemExit) as exit_:  # a path that is no run: a message, no traceback
        main([str(tmp_path / "nope")])
    assert exit_.value.code == 2


def evaluated(name: str, fid: float, extractor: str) -> Run:
    result = run(name, 1e-3, 0.5)
    result.metrics["eval/fid"] = fid
    result.evaluation = {"extractor": extractor, "reference": "abc-16px-train", "num_samples": 1000}
    return result


def test_eval_metrics_of_different_extractors_are_not_ranked_together(tmp_path):
    same = [evaluated("a", 3.0, "classifier-1"), evaluated("b", 2.0, "classifier-1")]
    assert choose_metric(same, None) == "eval/fid"
    mixed = [evaluated("a", 3.0, "classifier-1"), evaluated("b", 2.0, "classifier-2")]
    assert choose_metric(mixed, None) == "val/loss"  # the default falls back
    with pytest.raises(ValueError, match="2 different evaluation setups"):
        choose_metric(mixed, "eval/fid")
    page = compare(mixed, tmp_path).read_text()
    assert "different evaluation setups" in page and "classifier-2" in page  # marked per run


def test_a_run_with_a_cut_short_summary_is_left_out_with_a_warning(tiny_multirun, tmp_path, capsys):
    sweep = shutil.copytree(
        tiny_multirun, tmp_path / "sweep", ignore=shutil.ignore_patterns("compare")
    )
    cut = sweep / "1" / "summary.json"
    cut.write_text(cut.read_text()[:200])  # the job was killed while it wrote summary.json
    main([str(sweep), "--out", str(tmp_path / "cmp")])
    warning = capsys.readouterr().err
    assert f"warning: {cut} cannot be read (JSONDecodeError: " in warning
    assert f"leaving the run {sweep / '1'} out" in warning
    assert [r["run"] for r in csv.DictReader((tmp_path / "cmp" / "runs.csv").open())] == ["0"]
    other = sweep / "0" / "summary.json"
    other.write_text("")
    with pytest.raises(SystemExit) as exit_:  # none left: an error naming them, no traceback
        main([str(sweep), "--out", str(tmp_path / "cmp")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "no run could be read" in error and str(cut) in error and str(other) in error
