"""Few-step generation from a trained model: the consistency function, Easy Consistency Tuning's
loss, and multistep consistency sampling.

A consistency model f(x, sigma) maps any point of a probability-flow ODE trajectory to its start,
with the boundary condition f(x, sigma_min) = x (Song et al. 2023, Eq. 3). `ConsistencyObjective`
writes f as preconditioning around any objective's denoiser D (every difftrain objective is in
EDM form, Karras et al. 2022, Table 1):

    f(x, sigma) = x + (1 - sigma_min / sigma) (D(x; sigma) - x),

the ODE's Euler step from sigma down to sigma_min along D's direction: f(x, sigma_min) = x
exactly, and f = D up to sigma_min / sigma (0.25% at sigma 0.8) where sampling evaluates it, so a
student starts as its teacher. (Song et al. and ECT shift EDM's c_skip and c_out by sigma_min
instead: the same boundary, for the EDM objective only.)

`ConsistencyTuningLoss` is ECT (Geng et al. 2024, "Consistency Models Made Easy"; locuslab/ect
`training/loss.py`): the model, tuned from a trained checkpoint, is its own teacher,
    t ~ LogNormal(p_mean, p_std),  r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), clamped at 0,
    x_t = x0 + t n,  x_r = x0 + r n  (one shared noise n),
    loss = d(f(x_t, t), stopgrad f(x_r, r)) / (t - r),
with d the pseudo-Huber distance sqrt(||.||^2 + c^2) - c (c = 0: the L2 norm) and the target
x0 itself where r is below sigma_min (the boundary). The gap t - r halves with each stage
(`stages` over the run's steps), from plain denoising at stage 0 (r = 0 for t under about 2) to
consistency between near neighbours. Both branches see the same dropout mask. ECT's paper,
Eq. 9-11 and its Sec. 3.3 (the mapping function); its CIFAR-10 defaults are p_mean -1.1,
p_std 2.0, q 2, k 8, b 1, c 0.

`ConsistencyDistillationLoss` is consistency distillation (CD; Song et al. 2023, Algorithm 2;
openai/consistency_models `karras_diffusion.py`, `consistency_losses`): a frozen teacher, the
trained run's EMA denoiser, gives the target by one Heun step of its probability-flow ODE
between adjacent levels of N Karras levels (rho 7) from sigma_min to sigma_max,
    n ~ U{1, ..., N-1},  t = sigma_{n+1},  r = sigma_n,  x_t = x0 + t z,
    x_r = x_t + (r - t) (d(x_t, t) + d(x_euler, r)) / 2,  d(x, s) = (x - D_teacher(x, s)) / s,
    loss = d(f(x_t, t), stopgrad f(x_r, r)) / (t - r),
with ECT's distance and weighting, so the two methods differ only in the target: the teacher's
ODE step against the shared noise. The target net is the student itself (stop-gradient), as in
improved consistency training and ECT (Song et al.'s CD used an EMA of it, mu 0.95).

`sample_consistency` is multistep consistency sampling (Song et al. 2023, Algorithm 1): f at the
first level from pure noise, then for each next level sigma, x = f + sigma n and f again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from difftrain.diffusion.denoiser import Denoiser, DenoiserFn
from difftrain.diffusion.loss import batch_noise, example_mean
from difftrain.diffusion.noise_levels import LogNormal
from difftrain.diffusion.objectives import Objective, Scalings, expand_like
from difftrain.diffusion.samplers import Callback, _noise, solver_facts
from difftrain.diffusion.schedules import NoiseSchedule, karras_sigmas
from difftrain.nets.protocol import Cond
from difftrain.streams import WHOLE, Share


class ConsistencyObjective(Objective):
    """`base`'s preconditioning with the boundary condition f(x, sigma_min) = x: D's scalings
    blended towards the identity by sigma_min / sigma (see the module's docstring)."""

    def __init__(self, base: Objective, sigma_min: float = 0.002):
        if sigma_min <= 0:
            raise ValueError(f"the boundary's sigma_min must be > 0, got {sigma_min}")
        self.base, self.sigma_min = base, sigma_min
        self.name = f"consistency({base.name})"
        self.defined_at_zero_snr = base.defined_at_zero_snr

    def scalings(self, sigma: Tensor) -> Scalings:
        c_skip, c_out, c_in, c_noise = self.base.scalings(sigma)
        keep = self.sigma_min / sigma  # 1 at the boundary: f = x
        return keep + (1 - keep) * c_skip, (1 - keep) * c_out, c_in, c_noise


def ect_gap(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's r for levels t at `stage`: t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), at least 0."""
    shrink = q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t))
    return (t * (1 - shrink)).clamp(min=0)


def stage_at(step: int, stages: int, total_steps: int) -> int:
    """Which of `stages` equal shares of `total_steps` (schedule) steps `step` falls in, the last
    one from `total_steps` on: ECT's stage and CD's curriculum."""
    return min(stages - 1, stages * step // total_steps)


def _rng_state(device: torch.device) -> Callable[[], None]:
    """A function that puts back the random state of `device` as it is now (dropout's)."""
    if device.type == "cuda":
        state = torch.cuda.get_rng_state(device)
        return lambda: torch.cuda.set_rng_state(state, device)
    state = torch.get_rng_state()
    return lambda: torch.set_rng_state(state)


class ConsistencyLoss(nn.Module):
    """What ECT and CD share, with `DenoisingLoss`'s interface (per-example losses (B,) and the
    levels t (B,), every draw made for the global batch from the step's generator): the distance
    between f at a higher level and stop-gradient f at a lower one over their gap, `c` its
    pseudo-Huber constant (0: the L2 norm), and no level above `sigma_max`. A method gives the
    pairs of points and levels (`pair`)."""

    def __init__(self, c: float = 0.0, sigma_max: float = 80.0):
        super().__init__()
        if c < 0:
            raise ValueError(f"loss: the pseudo-Huber constant c must be >= 0, got {c}")
        self.c, self.sigma_max = c, sigma_max

    def set_step(self, step: int) -> None:
        """The schedule step, for losses that change over the run."""

    def distance(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        x_r: Tensor,
        r: Tensor,
        cond: Cond | None = None,
    ) -> Tensor:
        """d(f(x_t, t), stopgrad f(x_r, r)) per example (B,), the target x0 where r is below the
        boundary: zero where (x_r, r) = (x_t, t)."""
        restore = _rng_state(x0.device)
        f_t = denoiser(x_t, t, cond).float()
        sigma_min = denoiser.objective.sigma_min
        with torch.no_grad():
            restore()  # the same dropout mask in both branches
            f_r = denoiser(x_r, r.clamp(min=sigma_min), cond).float()
            f_r = torch.where(expand_like(r < sigma_min, x0), x0.float(), f_r)  # the boundary
        squared = example_mean((f_t - f_r).square(), cond)
        return (squared + self.c**2).sqrt() - self.c

    def forward(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        x0: Tensor,
        cond: Cond | None = None,
        generator: torch.Generator | None = None,
        share: Share = WHOLE,
        gather: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(denoiser.objective, ConsistencyObjective):
            raise ValueError(
                "a consistency loss (loss=ect or cd) trains a consistency model: set "
                "model.boundary_sigma (distill=ect and distill=cd do)"
            )
        x_t, t, x_r, r = self.pair(denoiser, schedule, x0, cond, generator, share)
        return self.distance(denoiser, x0, x_t, t, x_r, r, cond) / (t - r).float(), t

    def pair(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        x0: Tensor,
        cond: Cond | None,
        generator: torch.Generator | None,
        share: Share,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The points and levels (x_t, t, x_r, r), r < t, of each example: the method's."""
        raise NotImplementedError


class ConsistencyTuningLoss(ConsistencyLoss):
    """Easy Consistency Tuning's loss (see the module's docstring). The stage is `stages` x the
    share of `total_steps` done (`set_step`): the schedule step, so a time budget stretches it."""

    def __init__(
        self,
        p_mean: float = -1.1,
        p_std: float = 2.0,
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        c: float = 0.0,
        stages: int = 8,
        total_steps: int = 1,
        sigma_max: float = 80.0,
    ):
        super().__init__(c, sigma_max)
        if q <= 1 or stages < 1 or total_steps < 1:
            raise ValueError(
                f"loss: ECT needs q > 1, stages >= 1 and total_steps >= 1, got q={q}, "
                f"stages={stages}, total_steps={total_steps}"
            )
        self.levels = LogNormal(p_mean, p_std)  # t: EDM's log-normal, ECT's p_mean and p_std
        self.q, self.k, self.b = q, k, b
        self.stages, self.total_steps = stages, total_steps
        self.stage = 0

    def set_step(self, step: int) -> None:
        self.stage = stage_at(step, self.stages, self.total_steps)

    def pair(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        x0: Tensor,
        cond: Cond | None,
        generator: torch.Generator | None,
        share: Share,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x_t and x_r on one shared noise, at t drawn log-normal and r at the stage's gap."""
        t, _ = self.levels(len(x0) * share.world, schedule, x0.device, generator)
        t = share.of(t.clamp(max=self.sigma_max)).to(x0.dtype)
        noise = denoiser.noise(batch_noise(x0, share, generator))
        r = ect_gap(t, self.stage, self.q, self.k, self.b)
        return x0 + expand_like(t, x0) * noise, t, x0 + expand_like(r, x0) * noise, r


@torch.no_grad()
def heun_step(
    denoiser: DenoiserFn, x: Tensor, t: Tensor, r: Tensor, cond: Cond | None = None, steps: int = 1
) -> Tensor:
    """Heun's method for the probability-flow ODE dx/dsigma = (x - D(x)) / sigma from levels t to
    r > 0, per example (B,) (Karras et al. 2022, Algorithm 1), in `steps` steps at levels spaced
    evenly in log sigma: t (r / t)^(i / steps)."""
    levels = [t * (r / t) ** (i / steps) for i in range(steps)] + [r]
    for t_i, r_i in pairwise(levels):
        t_, r_ = expand_like(t_i, x), expand_like(r_i, x)
        d = (x - denoiser(x, t_i, cond)) / t_
        x_euler = x + (r_ - t_) * d
        x = x + (r_ - t_) * (d + (x_euler - denoiser(x_euler, r_i, cond)) / r_) / 2
    return x


class ConsistencyDistillationLoss(ConsistencyLoss):
    """Consistency distillation (see the module's docstring): the target is the frozen
    `teacher`'s Heun step between adjacent levels of `levels` Karras levels. `teacher` (a
    `Denoiser` with the run's own objective) is set by the training module from
    `model.init_from`; it is not a submodule, so the checkpoint does not carry it.

    `levels` may be a list, a curriculum of level counts (as improved consistency training's
    N(k) grows, Song & Dhariwal 2023, Sec. 3.4): each count serves an equal share of
    `total_steps` schedule steps (`set_step`; under a time budget the share of the budget), so
    `[7, 18]` first carries the boundary up to sigma_max in 6 links, then refines with 17.
    `teacher_steps` splits each teacher step into that many Heun steps (evenly in log sigma):
    coarse levels with the teacher's ODE solved as finely as more levels would."""

    def __init__(
        self,
        levels: int | Sequence[int] = 18,
        rho: float = 7.0,
        c: float = 0.0,
        sigma_max: float = 80.0,
        teacher_steps: int = 1,
        total_steps: int = 1,
    ):
        counts = [levels] if isinstance(levels, int) else [int(n) for n in levels]
        if not counts or min(counts) < 2:
            raise ValueError(f"loss: CD needs levels >= 2 noise levels, got {levels}")
        if teacher_steps < 1 or total_steps < 1:
            raise ValueError(
                f"loss: CD needs teacher_steps >= 1 and total_steps >= 1, got "
                f"teacher_steps={teacher_steps}, total_steps={total_steps}"
            )
        super().__init__(c, sigma_max)
        self.curriculum, self.num_levels, self.rho = counts, counts[0], rho
        self.teacher_steps, self.total_steps = teacher_steps, total_steps
        self.__dict__["teacher"] = None

    def set_step(self, step: int) -> None:
        self.num_levels = self.curriculum[stage_at(step, len(self.curriculum), self.total_steps)]

    def set_teacher(self, teacher: Denoiser) -> None:
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher

    def pair(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        x0: Tensor,
        cond: Cond | None,
        generator: torch.Generator | None,
        share: Share,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x_t at a Karras level t, and the teacher's Heun step from it to the level r below."""
        if self.teacher is None:
            raise ValueError("loss=cd distills a teacher: give model.init_from=<its checkpoint>")
        sigma_min = denoiser.objective.sigma_min
        levels = karras_sigmas(sigma_min, self.sigma_max, self.num_levels, self.rho).flip(0)
        levels = levels.to(x0.device, x0.dtype)  # rising: sigma_1 = sigma_min, ..., sigma_max
        n = torch.randint(
            self.num_levels - 1, (len(x0) * share.world,), device=x0.device, generator=generator
        )
        t, r = share.of(levels[n + 1]), share.of(levels[n])
        x_t = x0 + expand_like(t, x0) * denoiser.noise(batch_noise(x0, share, generator))
        x_r = heun_step(self.teacher, x_t, t, r, cond, self.teacher_steps)
        return x_t, t, x_r.to(x0.dtype), r


@solver_facts(multistep=False)
@torch.no_grad()
def sample_consistency(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): the model's x0 at each
    level of `sigmas` (ending in 0), renoised to the next; NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, sigmas[i], cond)
        x = x0 + sigmas[i + 1] * _noise(x, generator, denoiser) if sigmas[i + 1] > 0 else x0
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x0})
    return x
