"""The README's "Extending" recipe, followed from inside a test: a new schedule, sampler, net,
loss, dataset and metric, each a few lines of Python here plus its YAML, trained and evaluated
together by the unchanged difftrain."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difftrain.cli.train import train
from difftrain.data.datasets import TensorImages
from difftrain.diffusion.objectives import expand_like
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.evaluation import metrics
from difftrain.evaluation.features import FeatureSet
from difftrain.nets.conditioning import null_class
from difftrain.runs.pretrained import load_trained
from difftrain.streams import WHOLE
from tests.conftest import FAST


class QuadraticSchedule(NoiseSchedule):
    """A toy schedule: log-SNR falls from span / 2 at t = 0 to -span / 2 at t = 1, as a parabola."""

    def __init__(self, span: float = 12.0):
        super().__init__()
        self.span = span

    def _log_snr(self, t: Tensor) -> Tensor:
        return self.span * (0.5 - t**2)


@torch.no_grad()
def sample_midpoint(denoiser, x, sigmas, *, cond=None, generator=None, callback=None) -> Tensor:
    """A toy sampler: the explicit midpoint method on the probability-flow ODE (NFE 2 per step)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, sigma, cond)) / sigma
        if sigma_next == 0:
            x = x - sigma * d
            continue
        middle = (sigma * sigma_next).sqrt()
        x_middle = x + (middle - sigma) * d
        x = x + (sigma_next - sigma) * (x_middle - denoiser(x_middle, middle, cond)) / middle
    return x


class TinyConvNet(nn.Module):
    """A toy net that keeps `nets.protocol.Net`: two convolutions and a noise-level embedding."""

    augment_dim = 0

    def __init__(self, sample_shape: Sequence[int], width: int = 16, num_classes: int = 0):
        super().__init__()
        self.sample_shape, self.num_classes = tuple(sample_shape), num_classes
        channels = sample_shape[0]
        self.embed = nn.Linear(1, width)
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: Tensor, c_noise: Tensor, *, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise.expand(x.shape[0])[:, None].float())
        if self.classes is not None:
            none = torch.full((x.shape[0],), self.num_classes, device=x.device)
            emb = emb + self.classes(none if class_labels is None else class_labels)
        return self.out(F.silu(self.inp(x) + emb[:, :, None, None]))

    def null_cond(self, cond):
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Any image size: it is fully convolutional."""


class X0Loss(nn.Module):
    """A toy loss: the plain x0 error ||D(x0 + sigma n) - x0||^2 at log-uniform noise levels in
    [sigma_min, sigma_max], drawn for the global batch (each process keeps its share)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        super().__init__()
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)

    def set_step(self, step: int) -> None:
        """No curriculum: the levels do not depend on the step."""

    def forward(self, denoiser, schedule, x0, cond=None, generator=None, share=WHOLE, gather=None):
        n = len(x0) * share.world
        u = share.of(torch.rand(n, device=x0.device, generator=generator))
        sigma = torch.exp(self.log_min + u * (self.log_max - self.log_min)).to(x0.dtype)
        noise = share.of(torch.randn((n, *x0.shape[1:]), device=x0.device, generator=generator))
        x = x0 + expand_like(sigma, x0) * noise.to(x0.dtype)
        return (denoiser(x, sigma, cond) - x0).float().square().flatten(1).mean(1), sigma


def stripes(split: str, image_size: int = 8) -> TensorImages:
    """A toy dataset: horizontal (label 0) or vertical (label 1) stripes, at random phases."""
    n, gen = (512, 0) if split == "train" else (128, 1)
    gen = torch.Generator().manual_seed(gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    phase = torch.randint(0, 2, (n, 1, 1), generator=gen)
    rows, cols = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    lines = torch.where(labels[:, None, None] == 0, rows, cols)
    images = ((lines + phase) % 2 * 255).to(torch.uint8)[:, None]  # (N, 1, S, S)
    return TensorImages(images, labels)


def mean_shift(generated: FeatureSet, reference: FeatureSet, **_: object) -> dict[str, float]:
    """A toy metric: how far the samples' mean feature is from the reference's."""
    shift = generated.features.mean(0) - reference.features.mean(0)
    return {"mean_shift": shift.norm().item()}


YAML = {  # each part's config, as it would sit in conf/<group>/<option>.yaml
    "schedule/quadratic.yaml": """
_target_: tests.test_extending.QuadraticSchedule
span: 12.0
""",
    "sampler/midpoint.yaml": """
_target_: difftrain.diffusion.samplers.Sampler
solver:
  _target_: tests.test_extending.sample_midpoint
  _partial_: true
steps: 4
spacing: linspace
sigma_max: 80.0
""",
    "net/tiny_conv.yaml": """
_target_: tests.test_extending.TinyConvNet
sample_shape: ${data.sample_shape}
width: 16
num_classes: 0
""",
    "loss/x0.yaml": """
_target_: tests.test_extending.X0Loss
sigma_min: 0.01
sigma_max: 50.0
""",
    "data/stripes.yaml": """
defaults:
  - _image
  - _self_

dataset:
  _target_: tests.test_extending.stripes
  _partial_: true
  image_size: ${data.image_size}
image_size: 8
num_classes: 2
""",
}


def test_a_new_schedule_sampler_net_loss_dataset_and_metric_train_and_evaluate(
    make_cfg, tmp_path, monkeypatch
):
    conf = tmp_path / "conf"
    for name, text in YAML.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    monkeypatch.setitem(metrics.METRICS, "mean_shift", mean_shift)  # a metric: a registry entry
    cfg = make_cfg(
        *FAST, f"hydra.searchpath=[file://{conf}]", "schedule=quadratic", "sampler=midpoint",
        "net=tiny_conv", "loss=x0", "data=stripes", "evaluator.metrics=[fid,mean_shift]", "logger=none",
    )  # fmt: skip
    results = train(cfg)
    assert {"val/loss", "eval/fid", "eval/mean_shift"} <= set(results)
    model = load_trained(tmp_path / "run" / "checkpoints" / "last.ckpt")
    images, nfe = model.sample(4)
    assert images.shape == (4, 8, 8, 1) and nfe == 7  # midpoint: 2 per step, 1 for the last
