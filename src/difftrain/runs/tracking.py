"""Experiment tracking: a W&B logger that works offline and never loses a run to the network."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")


def wandb_logger(
    save_dir: str,
    mode: str = "offline",
    project: str = "difftrain",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    log_model: bool = False,
    init_timeout: float = 60.0,
    swept: Mapping[str, str] | None = None,
) -> WandbLogger:
    """A Lightning `WandbLogger` whose run lives under `save_dir/wandb/`.

    mode="online" falls back to offline with a warning when W&B cannot be reached or no API key
    is configured; the offline run can be uploaded later with `wandb sync <run dir>/wandb/offline-run-*`.
    The config gives `mode` (the command line, else $WANDB_MODE, else offline), and it is passed
    to `wandb.init` explicitly, never set in the environment, so it cannot leak between jobs. `swept` (a multirun job's swept key -> value) becomes tags
    `key=value` (cut to W&B's 64 characters) and the config entry `swept`, so the W&B UI can group and filter by it.
    """
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode must be one of {MODES}, got {mode!r}")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    swept = dict(swept or {})
    swept_tags = (f"{k}={v}" for k, v in swept.items())
    tags = [*tags, *(t if len(t) <= 64 else t[:61] + "..." for t in swept_tags)]  # W&B's limit
    kwargs = dict(project=project, name=name, group=group, tags=tags, dir=save_dir)
    if rank_zero_only.rank != 0:  # other DDP ranks never start a run
        return WandbLogger(
            save_dir=save_dir, offline=mode != "online", log_model=log_model, **kwargs
        )
    settings = wandb.Settings(init_timeout=init_timeout)
    try:
        run = wandb.init(mode=mode, settings=settings, reinit="finish_previous", **kwargs)
    except Exception as e:  # no API key, no network, server error: keep the run, offline
        if mode != "online":
            raise
        log.warning("W&B online mode failed (%s); logging offline to %s/wandb instead", e, save_dir)
        run = wandb.init(mode="offline", settings=settings, reinit="finish_previous", **kwargs)
    if swept:
        run.config.update({"swept": swept, "job_name": name})
    return WandbLogger(experiment=run, save_dir=save_dir, log_model=log_model)


# W&B's offline run file (run-*.wandb) is a LevelDB-style log of protobuf records: a 7-byte
# header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
# header (CRC32C, length, type). wandb >= 0.19 reads it only from its Go core, hence this reader.
_BLOCK, _CHUNK_HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pos, pending = [], 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER:  # block trailer padding
            pos += room
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
        else:  # zero padding at the end of a file that is still being written
            break
    return out


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, history rows and summary of a W&B offline run directory (offline-run-*)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in _records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary}
