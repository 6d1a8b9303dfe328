"""The notebooks run top to bottom on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_notebook_runs(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFTRAIN_CKPT", str(tiny_checkpoint))
    nb = run_notebook("01_quickstart.ipynb", tmp_path)
    assert (tmp_path / "quickstart_grid.png").is_file()
    assert "NFE 100" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)


def run_notebook(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "strip outputs"
    )
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def test_compare_runs_notebook_picks_the_best_run_and_samples_it(
    tiny_multirun, tmp_path, monkeypatch
):
    monkeypatch.setenv("DIFFTRAIN_MULTIRUN", str(tiny_multirun))
    nb = run_notebook("02_compare_runs.ipynb", tmp_path)
    assert (tmp_path / "best_samples.png").is_file()
    text = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "diverged" in text and "best: callbacks.fault_injection.nan_steps=[]" in text


def test_noise_schedules_notebook_draws_the_schedules(tmp_path):
    run_notebook("03_noise_schedules.ipynb", tmp_path)
    assert (tmp_path / "noise_schedules.png").is_file() and (
        tmp_path / "forward_process.png"
    ).is_file()


def test_text_to_image_notebook_draws_a_prompt_grid(tiny_text_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFTRAIN_CKPT", str(tiny_text_run / "checkpoints" / "last.ckpt"))
    nb = run_notebook("04_text_to_image.ipynb", tmp_path)
    assert (tmp_path / "prompt_grid.png").is_file()
    assert "row 8: a small red one on a black background, bottom left" in "".join(
        o.get("text", "") for o in nb.cells[-1].outputs
    )


def test_video_notebook_draws_clips_and_predicts(tmp_path, monkeypatch):
    from difftrain.cli.train import train
    from tests.cli.test_video import CLIPS
    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path / "run", *CLIPS, "net.given_frames=true", "trainer.max_steps=2")
    train(cfg)
    monkeypatch.setenv("DIFFTRAIN_CKPT", f"{cfg.paths.output_dir}/checkpoints/last.ckpt")
    monkeypatch.setenv("DIFFTRAIN_DATA_DIR", cfg.paths.data_dir)
    nb = run_notebook("05_video.ipynb", tmp_path)
    assert (tmp_path / "video_grid.gif").is_file()
    assert "copy_last_ssim" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
