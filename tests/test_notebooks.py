"""The notebooks run top to bottom on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_notebook_runs(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFTRAIN_CKPT", str(tiny_checkpoint))
    nb = nbformat.read(NOTEBOOKS / "01_quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "strip outputs"
    )
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert (tmp_path / "quickstart_grid.png").is_file()
    assert "NFE 100" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
