"""Resuming a run: the checkpoint to resume (`ckpt_path`, `ckpt_path=last`), checked before
anything starts, and how the config it resumes with differs from the one it was trained with."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


def config_keys(node: DictConfig | ListConfig, prefix: str) -> list[Any]:
    """The keys of a node; at the top, all but Hydra's own."""
    if isinstance(node, ListConfig):
        return list(range(len(node)))
    return [k for k in node.keys() if prefix or k != "hydra"]  # noqa: SIM118


@dataclass(frozen=True)
class Saved:
    """What a checkpoint to resume from was trained with: its step and its run's config."""

    step: int = 0
    config: dict | None = None


def check_checkpoint(
    ckpt_path: str | None, cfg: DictConfig | None = None
) -> tuple[list[str], Saved]:
    """The checkpoint to resume from: present, readable, and of this run's architecture; the
    problems found, and its step and config (`Saved()` without one)."""
    if ckpt_path is None:
        return [], Saved()
    path = Path(ckpt_path)
    if not path.is_file():
        return [f"ckpt_path={ckpt_path}: no such file. Fix: point ckpt_path at a checkpoint, e.g. "
                "<run dir>/checkpoints/last.ckpt, or ckpt_path=last in the run's own dir"], Saved()  # fmt: skip
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        previous = [
            p for p in sorted(path.parent.glob("*.ckpt"), key=os.path.getmtime) if p != path
        ]
        hint = (
            f"The previous checkpoint there is {previous[-1]}"
            if previous
            else "No other checkpoint is there."
        )
        return [f"ckpt_path={ckpt_path}: the file is damaged ({type(e).__name__}: {e}); it may have been "
                f"cut short while being written. {hint}"], Saved()  # fmt: skip
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if config is None:
        problem = f"ckpt_path={ckpt_path}: not a difftrain checkpoint (no config inside)"
        return [problem], Saved()
    saved = Saved(int(ckpt.get("global_step", 0)), config)
    if cfg is None:
        return [], saved
    differences = []
    for group in ("net", "objective"):
        theirs = OmegaConf.to_container(OmegaConf.create(config.get(group, {})), resolve=True)
        ours = OmegaConf.to_container(cfg[group], resolve=True)
        for key in sorted(set(_flat(theirs)) | set(_flat(ours))):
            a, b = _flat(theirs).get(key), _flat(ours).get(key)
            if a != b:
                differences.append(f"checkpoint {group}.{key}={a}, config {group}.{key}={b}")
    if differences:
        return [
            f"ckpt_path={ckpt_path} holds another architecture: " + "; ".join(differences)
        ], saved
    return [], saved


def changed_settings(saved: dict, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """The settings of `cfg` that differ from the config a checkpoint was trained with (`saved`),
    as key -> (checkpoint's value, config's value). Each setting is named where it is set, not
    where it is interpolated (optimizer.lr, not model.optimizer.lr); a part that one config has
    and the other has not is named once (callbacks.evaluate: {...} -> (not set)); the run's own
    paths are left out."""
    ours, linked = _settings(cfg)
    theirs = {
        k: v for k, v in _settings(OmegaConf.create(saved))[0].items()
        if not any(k == link or k.startswith(link + ".") for link in linked)
    }  # fmt: skip
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(ours.keys() | theirs.keys()):
        if key.startswith("paths.") or key == "ckpt_path":
            continue
        if key in ours and key in theirs:
            if ours[key] != theirs[key]:
                changes[key] = (theirs[key], ours[key])
            continue
        top = _where_it_stops(key, ours if key in theirs else theirs)
        changes.setdefault(top, (_value_at(top, theirs), _value_at(top, ours)))
    return changes


def _settings(node: DictConfig, prefix: str = "") -> tuple[dict[str, Any], set[str]]:
    """The leaves of a config (lists are leaves), resolved, and the keys that are interpolations."""
    leaves: dict[str, Any] = {}
    linked: set[str] = set()
    for key in config_keys(node, prefix):
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_interpolation(node, key):
            linked.add(path)
            continue
        value = node._get_node(key)._value() if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(value, DictConfig):
            inner, inner_linked = _settings(value, path)
            leaves.update(inner)
            linked |= inner_linked
        else:
            leaves[path] = _plain(value)
    return leaves, linked


def _where_it_stops(key: str, other: dict[str, Any]) -> str:
    """The shortest part of `key` that the `other` config has no subtree for."""
    parts = key.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in other or not any(k.startswith(prefix + ".") for k in other):
            return prefix
    return key


def _value_at(key: str, settings: dict[str, Any]) -> Any:
    if key in settings:
        return settings[key]
    return "{...}" if any(k.startswith(key + ".") for k in settings) else "(not set)"


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resume_note(ckpt_path: str, step: int, changes: dict[str, tuple[Any, Any]]) -> str:
    """The warning that lists how a resumed run's settings differ from its checkpoint's."""
    lines = [
        f"resuming {ckpt_path} (step {step}) with {len(changes)} setting(s) other than it was "
        f"trained with; each takes effect from step {step} on:"
    ]
    for key, (theirs, ours) in changes.items():
        kept = key.startswith("model.clusters")  # fitted once: the checkpoint carries them
        note = "  (not applied: the checkpoint's fitted clusters are kept)" if kept else ""
        lines.append(f"  {key}: {theirs} -> {ours}{note}")
    return "\n".join(lines)


def resume_from(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume: `ckpt_path`, or for "last" the run dir's own latest one."""
    if ckpt_path != "last":
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("ckpt_path=last: resuming from %s", last)
        return str(last)
    log.warning(
        "ckpt_path=last: no checkpoint in %s yet, so training starts from scratch", last.parent
    )
    return None


def resumed_record(ckpt_path: str | None, saved: Saved, cfg: DictConfig) -> dict[str, Any] | None:
    """What summary.json records of a resumed run (the checkpoint, its step, the settings that
    differ from its run's), warning of those settings; None for a fresh run."""
    if ckpt_path is None:
        return None
    changes = changed_settings(saved.config, cfg)
    if changes:
        log.warning("%s", resume_note(ckpt_path, saved.step, changes))
    return {"from": ckpt_path, "step": saved.step, "changed": changes}
