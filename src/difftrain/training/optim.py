"""Learning-rate schedules and optimizer parameter groups."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from difftrain.training.budget import go_to_step
from difftrain.training.distributed import is_sharded

# The config groups whose settings a resumed run takes from its config, not from the checkpoint.
RETUNED_ON_RESUME = ("optimizer", "lr_scheduler")


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up over warmup_steps, then cosine decay to min_factor x lr at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_inverse_sqrt(optimizer: Optimizer, warmup_steps: int, ref_steps: int) -> LambdaLR:
    """EDM2's schedule (Karras et al. 2024, Eq. 1 of App. B): lr / sqrt(max(step / ref_steps, 1)) after warm-up."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps)) / math.sqrt(max(step / ref_steps, 1.0))

    return LambdaLR(optimizer, factor)


def adam8bit(
    params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:  # fmt: skip
    """bitsandbytes' 8-bit Adam (Dettmers et al. 2022): the moments in 8 bits, a quarter of
    Adam's optimizer memory (optimizer=adam8bit)."""
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError(
            "optimizer=adam8bit needs bitsandbytes and a GPU: pip install bitsandbytes, or use "
            "optimizer=adam"
        ) from e
    return bitsandbytes.optim.Adam8bit(params, lr=lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay)  # fmt: skip


def parameter_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights that decay, and norms, biases and embeddings that do not (weight_decay 0)."""
    decay, no_decay = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = param.ndim < 2 or isinstance(module, (nn.Embedding, nn.GroupNorm, nn.LayerNorm))
            (no_decay if skip else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def skip_update(optimizer: Optimizer, skip: Tensor) -> None:
    """optimizer.step(), or nothing where `skip` (a device bool) is true.

    Fused optimizers (torch's fused Adam, AdamW and SGD) skip on the device, as GradScaler makes
    them: no host sync. Others need the host to know, once per step.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps it
    if inner.defaults.get("fused"):
        inner.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del inner.found_inf
    elif not skip.item():
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)


def retune(
    checkpoint: dict[str, Any],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    keep_moments: bool = True,
) -> list[str]:
    """Rewrite a checkpoint's optimizer and LR-schedule states so that they resume with the
    settings of `optimizer` and `scheduler` (freshly built from the config) at the checkpoint's
    schedule step; the per-parameter moments are kept unless `keep_moments` is false (another
    kind of optimizer). Returns what changed, as "lr 0.001 -> 0.01"."""
    schedules = checkpoint.get("lr_schedulers") or []
    step = schedules[0]["last_epoch"] if schedules else int(checkpoint.get("global_step", 0))
    if scheduler is not None:
        go_to_step(scheduler, step)  # the new schedule's rates at the step the run resumes at
    (saved,) = checkpoint["optimizer_states"]
    fresh = optimizer.state_dict()
    changes: list[str] = []
    for old, new in zip(saved["param_groups"], fresh["param_groups"], strict=True):
        for key in sorted((set(old) | set(new)) - {"params"}):
            change = f"{key} {old.get(key)} -> {new.get(key)}"
            if old.get(key) != new.get(key) and change not in changes:
                changes.append(change)
        params = old["params"]  # the checkpoint's parameter ids, which its moments are keyed by
        old.clear()
        old.update(new, params=params)
    if not keep_moments:
        saved["state"] = {}
        changes.append("moments reset (another optimizer)")
    checkpoint["lr_schedulers"] = [] if scheduler is None else [scheduler.state_dict()]
    return changes


def resume_with(
    config: dict[str, Any], checkpoint: dict[str, Any], build: Callable[[], dict[str, Any]]
) -> list[str]:
    """A run resumed with other optimizer or LR-schedule settings (`config`, resolved) than its
    checkpoint was trained with: `retune` the checkpoint to them, with the optimizer and schedule
    that `build` makes (`configure_optimizers`); what changed, none for the same settings."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    if not config or all(saved.get(k) == config.get(k) for k in RETUNED_ON_RESUME):
        return []  # the same settings: the states resume as saved (exactly)
    built = build()
    same_kind = saved.get("optimizer", {}).get("_target_") == config["optimizer"]["_target_"]
    scheduler = built.get("lr_scheduler", {}).get("scheduler")
    return retune(checkpoint, built["optimizer"], scheduler, keep_moments=same_kind)


def grad_norm(model: nn.Module, strategy: Any) -> Tensor:
    """The gradient's norm () over every parameter of `model`, on the device (no host sync); with
    sharded weights (FSDP) over every process's part."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    square = torch.stack(torch._foreach_norm(grads)).square().sum()
    if is_sharded(strategy):  # each process holds a part of every gradient
        square = strategy.reduce(square, reduce_op="sum")
    return square.sqrt()


def clip_gradients(
    model: nn.Module, strategy: Any, norm: Tensor, value: float | None, algorithm: str | None
) -> None:
    """Clip by the `norm` already measured (`grad_norm`): no second pass over the gradients, and
    no host sync; with sharded weights (FSDP), FSDP's clip over every part. Not Lightning's
    clipping, which under bf16-mixed refuses fused optimizers although without loss scaling there
    is nothing to unscale (fp16, which scales, is refused before the run starts)."""
    if not value:
        return
    if is_sharded(strategy):
        if algorithm not in (None, "norm"):
            raise ValueError(f"trainer=fsdp clips by norm only, not {algorithm!r}")
        strategy.model.clip_grad_norm_(value)
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if algorithm == "value":
        torch._foreach_clamp_min_(grads, -value)
        torch._foreach_clamp_max_(grads, value)
    else:  # grad * min(1, max_norm / norm), as torch.nn.utils.clip_grad_norm_
        torch._foreach_mul_(grads, (value / (norm + 1e-6)).clamp(max=1.0))
