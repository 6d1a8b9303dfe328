"""Where the Hydra configs live, and helpers to compose them outside a Hydra app (tests, notebooks)."""

from __future__ import annotations

from pathlib import Path

import difftrain.runs.sweep  # noqa: F401  registers the ${job:...} resolver the configs use


def config_dir() -> Path:
    """`conf/` of a source checkout, or the copy packaged inside an installed wheel."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


CONFIG_DIR = str(config_dir())
