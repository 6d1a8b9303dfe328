"""Samplers: pure functions over a denoiser and a decreasing tensor of noise levels.

All share one signature, in the style of k-diffusion:
    sample_X(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **options)
where `denoiser(x, sigma, cond)` returns an x0-estimate (`cond`: the conditioning mapping, passed
through untouched), `x` is the initial noise already
scaled to sigmas[0], and `sigmas` (steps + 1,) ends with 0. They work in the VE form
x = x0 + sigma eps, so every sampler runs with every schedule and objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import DenoiserFn
from difftrain.diffusion.noise import NoiseModel, independent
from difftrain.diffusion.schedules import NoiseSchedule, karras_sigmas
from difftrain.nets.protocol import Cond

Callback = Callable[[dict], None]


def solver_facts(multistep: bool = False, evaluations_per_step: int = 1) -> Callable:
    """What a sampling function tells `Sampler` about itself: whether it extrapolates from the
    steps before (multistep: it needs steps of similar length in log sigma, see `Sampler.check`),
    and the net evaluations a step takes (the last step one; see `steps_for`)."""

    def mark(solver: Callable[..., Tensor]) -> Callable[..., Tensor]:
        solver.multistep, solver.evaluations_per_step = multistep, evaluations_per_step
        return solver

    return mark


def _noise(x: Tensor, generator: torch.Generator | None, denoiser: DenoiserFn) -> Tensor:
    """Fresh noise shaped like x, as the denoiser's noise model draws it (`Sampler` tells it)."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return getattr(denoiser, "noise", independent)(z)


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Split a step to sigma_next into a deterministic part (sigma_down) and fresh noise (sigma_up).

    sigma_up is DDIM's sigma_t(eta) (Song et al. 2021, Eq. 16) in VE form; eta=1 gives DDPM's posterior.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next.new_zeros(())
    sigma_up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
    sigma_up = torch.minimum(sigma_up, sigma_next)
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler steps of the probability-flow ODE to sigma_down, plus fresh noise sigma_up.

    This is DDIM with its eta (Song et al. 2021, Eq. 12) in VE form: eta=0 is deterministic DDIM,
    eta=1 DDPM's ancestral sampler (Ho et al. 2020, Alg. 2).
    """
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, sigmas[i], cond)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x0 + (x - x0) * (sigma_down / sigmas[i])
        if sigma_up > 0:
            x = x + sigma_up * _noise(x, generator, denoiser)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x0})
    return x


def sample_ddim(
    denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, **kwargs
) -> Tensor:
    """DDIM (Song et al. 2021): deterministic for eta=0."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=eta, **kwargs)


def sample_ddpm(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs) -> Tensor:
    """DDPM's ancestral sampler (Ho et al. 2020, Alg. 2): DDIM with eta=1."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=1.0, **kwargs)


def sample_euler(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x)) / sigma (Karras et al. 2022, Eq. 4)."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=0.0, **kwargs)


@solver_facts(evaluations_per_step=2)
@torch.no_grad()
def sample_heun(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method with optional churn (Karras et al. 2022, Algorithm 2); NFE 2 steps - 1."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # increase the noise level temporarily
            x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * _noise(x, generator, denoiser)
        x0 = denoiser(x, sigma_hat, cond)
        d = (x - x0) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:  # second-order correction
            d_next = (x_next - denoiser(x_next, sigma_next, cond)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": x0})
    return x


@solver_facts(multistep=True)
@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """SDE-DPM-Solver++(2M), midpoint variant (Lu et al. 2022, App. B; as in k-diffusion); NFE = steps.

    eta scales the fresh noise; eta=0 is the deterministic DPM-Solver++(2M).
    """
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, sigma, cond)
        if sigma_next == 0:
            x = x0
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * x0
            if old_x0 is not None:
                x = x - 0.5 * torch.expm1(-h - eta_h) * (h / h_last) * (x0 - old_x0)
            if eta > 0:
                x = (
                    x
                    + _noise(x, generator, denoiser)
                    * sigma_next
                    * (-torch.expm1(-2 * eta_h)).sqrt()
                    * s_noise
                )
            h_last = h
        old_x0 = x0
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": x0})
    return x


@solver_facts(multistep=True)
def sample_dpmpp_2m(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep in lambda = -log(sigma); NFE = steps."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, eta=0.0, **kwargs)


class _CountingDenoiser:
    """Wraps a denoiser to count network evaluations (NFE); `noise` is the model that stochastic
    solvers draw fresh noise from."""

    def __init__(self, denoiser: DenoiserFn, noise: NoiseModel = independent):
        self.denoiser, self.noise, self.nfe = denoiser, noise, 0

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, cond)


# Multistep solvers extrapolate from the previous step; they need steps of similar length in
# log sigma. The smooth grids (karras, trailing, and every spacing of a continuous schedule) keep
# consecutive steps within a factor of 1.7 of each other; leading and linspace over a discrete
# schedule end with a jump from t = 1/steps to t = 0 that is 3.3 to 4.9 times the step before it,
# where DPM-Solver++(2M) overshoots (tests/diffusion/test_sampler_matrix.py measures it).
MAX_STEP_GROWTH = 2.5


@dataclass(frozen=True)
class Sampler:
    """A solver with its step count and noise-level spacing: what `conf/sampler/*.yaml` builds.

    spacing: leading, trailing or linspace over a discrete schedule's training steps (as diffusers),
    linspace over t for a continuous one, or karras (rho-spaced sigmas, Karras et al. 2022, Eq. 5).

    No sampler starts above `sigma_max` (None: the schedule's top). 80 is EDM's choice for data
    in [-1, 1]: the signal-to-noise ratio there is below 2e-4, so starting higher changes nothing
    but wastes steps, and it multiplies an eps-prediction net's error by sigma (the discrete cosine
    schedule tops out at sigma 4096: README, "Why sigma 80"). Karras spacing runs from
    min(sigma_max, sigma(1)); in the other spacings the levels above sigma_max merge into one, so
    NFE may be lower than `steps`.
    """

    solver: Callable[..., Tensor]
    steps: int = 50
    spacing: str = "leading"
    rho: float = 7.0
    sigma_max: float | None = 80.0
    sigma_min: float | None = None  # karras spacing's lowest level (None: the schedule's)
    levels: Sequence[float] | None = None  # these levels, then 0, in place of steps and spacing

    def sigmas(self, schedule: NoiseSchedule) -> Tensor:
        if self.levels is not None:
            levels = torch.tensor([float(s) for s in self.levels] + [0.0])
            if len(levels) < 2 or not (levels[:-1] > 0).all() or (levels.diff() >= 0).any():
                raise ValueError(
                    f"sampler.levels must be decreasing noise levels above 0, got "
                    f"{list(self.levels)}"
                )
            return levels
        if self.spacing == "karras" and self.sigma_min is not None:
            top = schedule.sigma(torch.tensor([1.0], dtype=torch.float64)).item()
            top = top if self.sigma_max is None else min(top, self.sigma_max)
            sigmas = karras_sigmas(self.sigma_min, top, self.steps, self.rho)
            return torch.cat([sigmas, sigmas.new_zeros(1)]).float()
        return schedule.sampling_sigmas(self.steps, self.spacing, self.rho, self.sigma_max)

    def check(self, schedule: NoiseSchedule) -> None:
        """Refuse a solver x schedule x spacing combination that cannot sample correctly."""
        sigmas = self.sigmas(schedule).double()
        if self.sigma_max is not None and self.sigma_max <= 0:
            raise ValueError(f"sampler.sigma_max must be > 0 (or null), got {self.sigma_max}")
        if not getattr(solver_function(self.solver), "multistep", False):
            return
        h = (sigmas[:-2] / sigmas[1:-1]).log()  # log-sigma steps, the final step to 0 aside
        growth = (h[1:] / h[:-1]).max().item() if len(h) > 1 else 1.0
        if growth > MAX_STEP_GROWTH:
            name = solver_function(self.solver).__name__.removeprefix("sample_")
            raise ValueError(
                f"sampler {name} with spacing={self.spacing} and {self.steps} steps over "
                f"{type(schedule).__name__}: one step in log sigma is {growth:.1f}x the one before "
                f"(more than {MAX_STEP_GROWTH}), where its second-order extrapolation overshoots "
                "and the samples come out distorted. Use sampler.spacing=trailing or karras"
            )

    def __call__(
        self,
        denoiser: DenoiserFn,
        noise: Tensor,
        schedule: NoiseSchedule,
        *,
        cond: Cond | None = None,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        noise_model: NoiseModel = independent,
    ) -> tuple[Tensor, int]:
        """Samples (B, *shape) from `noise` (drawn by `noise_model`, which stochastic solvers
        draw their fresh noise from too) and the number of network evaluations."""
        sigmas = self.sigmas(schedule).to(noise.device)
        counting = _CountingDenoiser(denoiser, noise_model)
        x = noise * (sigmas[0] ** 2 + 1).sqrt()  # the VP prior N(0, 1), in VE form
        x = self.solver(counting, x, sigmas, cond=cond, generator=generator, callback=callback)
        return x, counting.nfe


def steps_for(solver: Callable[..., Tensor], nfe: int) -> int:
    """The steps at which `solver` evaluates the net about `nfe` times (Heun: 2 steps - 1)."""
    per_step = getattr(solver_function(solver), "evaluations_per_step", 1)
    return max(1, (nfe + per_step - 1) // per_step)


def solver_function(solver: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The sampling function behind a solver (configs give a functools.partial of it)."""
    while hasattr(solver, "func"):
        solver = solver.func
    return solver
