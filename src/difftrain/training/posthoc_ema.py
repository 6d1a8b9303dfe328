"""Post-hoc EMA (Karras et al. 2024, "EDM2", Sec. 3 and App. C).

During training, two power-function EMA profiles of the weights are kept and snapshotted every
few steps (`PostHocEMA`, below). Afterwards, an EMA of any relative length sigma_rel is
reconstructed as the least-squares combination of the snapshots whose averaging profile best
matches the target profile. The math below works in training steps, t >= 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from difftrain.files import save_atomically
from difftrain.training.distributed import is_sharded
from difftrain.training.ema import PowerDecay
from difftrain.training.report import StepReport


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power-function EMA with relative std sigma_rel (EDM2 Eq. 126).

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)), i.e. the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2.
    """
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.isreal(roots)].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative std of a power-function EMA profile with exponent gamma (EDM2 Eq. 123)."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def profile_inner_product(
    t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray
) -> np.ndarray:
    """<p_a, p_b> for power-function profiles p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t].

    The integral over [0, min(t_a, t_b)] is (g_a + 1)(g_b + 1) / (g_a + g_b + 1) / t_max
    times (t_min / t_max) to the exponent of the longer profile.
    """
    t_a, g_a, t_b, g_b = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (t_a, g_a, t_b, g_b))
    )
    t_max = np.maximum(t_a, t_b)
    exponent = np.where(t_a <= t_b, g_b, g_a)
    ratio = np.minimum(t_a, t_b) / t_max
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) / t_max * ratio**exponent


def posthoc_coefficients(
    snapshot_steps: Sequence[float],
    snapshot_gammas: Sequence[float],
    target_step: float,
    target_gamma: float,
) -> np.ndarray:
    """Weights x (one per snapshot, summing to 1) minimizing ||sum_i x_i p_i - p_target||^2."""
    t, g = (
        np.asarray(snapshot_steps, dtype=np.float64),
        np.asarray(snapshot_gammas, dtype=np.float64),
    )
    gram = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    rhs = profile_inner_product(t, g, np.float64(target_step), np.float64(target_gamma))
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return x / x.sum()


def reconstruct(
    snapshots: Sequence[dict[str, Tensor]],
    snapshot_steps: Sequence[float],
    snapshot_sigma_rels: Sequence[float],
    sigma_rel: float,
    target_step: float | None = None,
) -> tuple[dict[str, Tensor], np.ndarray]:
    """The state dict of an EMA with relative length sigma_rel at target_step (default: the last),
    and the snapshot coefficients that built it."""
    gammas = [sigma_rel_to_gamma(s) for s in snapshot_sigma_rels]
    step = max(snapshot_steps) if target_step is None else target_step
    x = posthoc_coefficients(snapshot_steps, gammas, step, sigma_rel_to_gamma(sigma_rel))
    out = {}
    for key, first in snapshots[0].items():
        if not first.is_floating_point():
            out[key] = snapshots[-1][key].clone()
            continue
        out[key] = sum(
            float(w) * snap[key].double() for w, snap in zip(x, snapshots, strict=True)
        ).to(first.dtype)
    return out, x


class PostHocEMA(L.Callback):
    """Tracks one power-function EMA of the denoiser per sigma_rel (Eq. 1 and 127) and writes all
    of them to `dirpath/phema-<step>.pt` every `snapshot_every` steps and at the last step.

    `difftrain-phema run_dir=... sigma_rel=...` then reconstructs an EMA of any length from them.
    """

    def __init__(
        self, dirpath: str, sigma_rels: Sequence[float] = (0.05, 0.10), snapshot_every: int = 500
    ):
        self.dirpath, self.sigma_rels = Path(dirpath), list(sigma_rels)
        self.snapshot_every = snapshot_every
        self.decays = [PowerDecay(sigma_rel_to_gamma(s)) for s in self.sigma_rels]
        self.emas: list[dict[str, Tensor]] = []
        self.updates = 0

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        report: StepReport = outputs["report"]
        params = report.parameters
        if not self.emas:  # fresh: the first average is the weights themselves
            self.emas = [{n: p.clone() for n, p in params.items()} for _ in self.sigma_rels]
            self.updates = torch.zeros((), dtype=torch.long, device=pl_module.device)
        keep = ~torch.as_tensor(report.skipped, device=pl_module.device)  # on the device: no wait
        self.updates = self.updates + keep.long()
        for decay, ema in zip(self.decays, self.emas, strict=True):
            weight = (1 - decay(self.updates.float())) * keep
            torch._foreach_lerp_(list(ema.values()), list(params.values()), weight)
        due = trainer.global_step % self.snapshot_every == 0 and trainer.is_global_zero
        if due and not report.skipped:  # (a wait for the device, at snapshots only)
            self._save(trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The last step too, wherever training stopped (a time budget ends between snapshots),
        so that the reconstructions average the whole run."""
        if self.emas and trainer.is_global_zero and trainer.global_step % self.snapshot_every:
            self._save(trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_sharded(trainer.strategy):
            raise ValueError(
                "post-hoc EMA (callbacks=phema) keeps whole weights on every process, which "
                "trainer=fsdp shards: use trainer=ddp, or drop callbacks=phema"
            )
        self.emas = [{n: p.to(pl_module.device) for n, p in ema.items()} for ema in self.emas]
        self.updates = torch.as_tensor(self.updates, device=pl_module.device)

    def _save(self, step: int) -> None:
        profiles = [{n: p.cpu().clone() for n, p in ema.items()} for ema in self.emas]
        save_atomically(
            {"step": int(self.updates), "sigma_rels": self.sigma_rels, "profiles": profiles},
            self.dirpath / f"phema-{step:07d}.pt",
        )

    def state_dict(self) -> dict:
        emas = [{n: p.cpu() for n, p in ema.items()} for ema in self.emas]
        return {"updates": int(self.updates), "emas": emas}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.emas = torch.tensor(state["updates"]), state["emas"]

    @torch.no_grad()
    def rollback_to(self, state: dict, step: int) -> None:
        """Called by the guard when it restores the weights of `step`: the profiles go back with
        them, and snapshots written since then (averaging weights that were thrown away) go."""
        device = self._device()
        self.emas = [{n: p.to(device) for n, p in ema.items()} for ema in state["emas"]]
        self.updates = torch.tensor(state["updates"], device=device)
        for path in self.dirpath.glob("phema-*.pt"):
            if int(path.stem.split("-")[1]) > step:
                path.unlink()

    def _device(self) -> torch.device:
        return next(iter(self.emas[0].values())).device if self.emas else torch.device("cpu")
