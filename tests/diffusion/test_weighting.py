"""Loss weightings: the F-space weights equal each paper's formula for each target."""

from __future__ import annotations

import torch

from difftrain.diffusion.objectives import EDMObjective, EpsObjective, VObjective, X0Objective
from difftrain.diffusion.weighting import P2, EDMWeighting, MinSNR, Uniform

SIGMA = torch.logspace(-2, 2, 9)
SNR = SIGMA**-2


def f_weight(weighting, objective):
    _, c_out, _, _ = objective.scalings(SIGMA)
    return weighting(SIGMA, c_out)


def test_min_snr_matches_hang_et_al_for_eps_x0_and_v():
    gamma = 5.0
    clipped = torch.clamp(SNR, max=gamma)
    torch.testing.assert_close(f_weight(MinSNR(gamma), EpsObjective()), clipped / SNR)
    torch.testing.assert_close(f_weight(MinSNR(gamma), X0Objective()), clipped)
    torch.testing.assert_close(f_weight(MinSNR(gamma), VObjective()), clipped / (SNR + 1))


def test_p2_matches_choi_et_al_on_the_eps_loss():
    torch.testing.assert_close(f_weight(P2(gamma=1.0, k=1.0), EpsObjective()), 1 / (1 + SNR))
    torch.testing.assert_close(f_weight(P2(gamma=0.5, k=1.0), EpsObjective()), (1 + SNR) ** -0.5)


def test_edm_weighting_is_uniform_in_edm_preconditioned_f_space():
    torch.testing.assert_close(
        f_weight(EDMWeighting(0.5), EDMObjective(0.5)), torch.ones_like(SIGMA)
    )


def test_uniform_weights_the_objectives_own_loss():
    assert torch.equal(f_weight(Uniform(), VObjective()), torch.ones_like(SIGMA))
