"""net=diffusers_unet and net=diffusers_transformer: diffusers' UNets and transformers behind
difftrain's Net protocol, pretrained or from scratch, and their scheduler configs mapped onto
difftrain's schedule and objective. Nothing is downloaded: the pretrained nets are tiny random
ones saved with save_pretrained, as Stable Diffusion lays them out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difftrain.diffusion.denoiser import Denoiser  # noqa: E402
from difftrain.diffusion.objectives import EpsObjective, VObjective  # noqa: E402
from difftrain.diffusion.scheduler_config import scheduler_config, trained_with  # noqa: E402
from difftrain.diffusion.schedules import (  # noqa: E402
    CosineSchedule,
    EDMSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
)
from difftrain.nets.diffusers import DiffusersTransformer, DiffusersUNet  # noqa: E402
from difftrain.nets.protocol import Net  # noqa: E402

SD = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
      "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1}  # fmt: skip


def tiny_sd_unet(folder: Path, scheduler: dict = SD) -> Path:
    """A random tiny UNet2DConditionModel (4 latent channels, text width 32) and its scheduler
    config, in a Stable Diffusion folder's layout (unet/, scheduler/)."""
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4,
    ).save_pretrained(folder / "unet")  # fmt: skip
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


class Words(torch.nn.Module):
    """A fixed text encoder of width 32 for the nets' tests: states from the token ids."""

    dim = 32

    def __init__(self):
        super().__init__()
        from difftrain.text.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer(16)
        self.embed = torch.nn.Embedding(self.tokenizer.size, 32)

    def forward(self, tokens):
        return self.embed(tokens), tokens != 0


@pytest.mark.parametrize("schedule", [ScaledLinearSchedule(), LinearSchedule(), CosineSchedule(),
                                      ScaledLinearSchedule(zero_terminal_snr=True)])  # fmt: skip
def test_the_net_gets_the_timestep_diffusers_gives_each_level(schedule):
    """The fractional timestep of a noise level is what diffusers' Euler scheduler feeds its net
    (`_sigma_to_t`) for Karras levels of the same table."""
    beta = {ScaledLinearSchedule: "scaled_linear", LinearSchedule: "linear",
            CosineSchedule: "squaredcos_cap_v2"}[type(schedule)]  # fmt: skip
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_schedule=beta, beta_start=0.00085 if beta == "scaled_linear" else 1e-4,
        beta_end=0.012 if beta == "scaled_linear" else 0.02, use_karras_sigmas=True,
        rescale_betas_zero_snr=schedule.zero_terminal_snr,
    )  # fmt: skip
    scheduler.set_timesteps(12)
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=1e-5, atol=1e-7
    )
    net = DiffusersUNet([3, 8, 8], schedule, EpsObjective(), config={"norm_num_groups": 8})
    sigmas = scheduler.sigmas[:-1].float()
    if schedule.zero_terminal_snr:  # diffusers' top level is 4096 there too; compare below it
        sigmas = sigmas[1:]
    expected = scheduler.timesteps[-len(sigmas) :].float()
    # diffusers' table is float32: at the cosine's top (alpha_bar ~ 1e-9) its last digits differ
    torch.testing.assert_close(net.timestep(sigmas.log() / 4), expected, rtol=1e-3, atol=2e-3)


def test_a_net_built_from_scratch_is_a_difftrain_net_with_classes_and_text():
    net = DiffusersUNet([3, 16, 16], EDMSchedule(), EpsObjective(), num_classes=4)
    assert isinstance(net, Net) and type(net.model).__name__ == "UNet2DModel"
    assert net.model.config.num_class_embeds == 5  # and the null class
    x = torch.randn(2, 3, 16, 16)
    out = Denoiser(net, EpsObjective())(
        x, torch.tensor([0.5, 5.0]), {"class_labels": torch.tensor([1, 3])}
    )
    null = net(x, torch.zeros(2), **net.null_cond({"class_labels": torch.tensor([1, 3])}))
    torch.testing.assert_close(null, net(x, torch.zeros(2)))  # no labels: the null class
    assert out.shape == x.shape and net.timestep(torch.tensor([0.3])) == 0.3  # EDM: c_noise
    with pytest.raises(ValueError, match=r"takes \(3, H, W\) with H and W divisible by 4"):
        net.check_shape([3, 18, 18])

    text = DiffusersUNet([4, 8, 8], ScaledLinearSchedule(), EpsObjective(), text_encoder=Words())
    assert type(text.model).__name__ == "UNet2DConditionModel" and text.tokenizer is not None
    tokens = text.tokenizer.encode(["a red seven", ""])
    y = text(torch.randn(2, 4, 8, 8), torch.zeros(2), text_tokens=tokens)
    empty = text(torch.randn(2, 4, 8, 8), torch.zeros(2))
    assert y.shape == empty.shape == (2, 4, 8, 8)
    with pytest.raises(
        ValueError, match="UNet2DConditionModel reads prompts: set text_encoder=clip"
    ):
        DiffusersUNet(
            [4, 8, 8], ScaledLinearSchedule(), EpsObjective(), model_class="UNet2DConditionModel"
        )


def test_a_pretrained_net_loads_its_weights_and_checks_its_schedule(tmp_path):
    sd = tiny_sd_unet(tmp_path / "sd")
    net = DiffusersUNet([4, 8, 8], ScaledLinearSchedule(), EpsObjective(), path=str(sd),
                        subfolder="unet", text_encoder=Words())  # fmt: skip
    reference = diffusers.UNet2DConditionModel.from_pretrained(sd / "unet")
    x, tokens = torch.randn(1, 4, 8, 8), net.tokenizer.encode(["an orange zebra"])
    t = torch.tensor([0.4])
    states, _ = net.text_encoder(tokens)
    expected = reference(x, net.timestep(t), encoder_hidden_states=states).sample
    torch.testing.assert_close(net(x, t, text_tokens=tokens), expected)

    with pytest.raises(ValueError, match=r"predicts epsilon \(objective=eps\), not objective=v"):
        DiffusersUNet([4, 8, 8], ScaledLinearSchedule(), VObjective(), path=str(sd), subfolder="unet",
                      text_encoder=Words())  # fmt: skip
    with pytest.raises(
        ValueError, match="beta_schedule=scaled_linear.*Fix: schedule=scaled_linear"
    ):
        DiffusersUNet([4, 8, 8], LinearSchedule(), EpsObjective(), path=str(sd), subfolder="unet",
                      text_encoder=Words())  # fmt: skip
    with pytest.raises(ValueError, match=r"set data.sample_shape=\[4,8,8\]"):
        DiffusersUNet([3, 8, 8], ScaledLinearSchedule(), EpsObjective(), path=str(sd),
                      subfolder="unet", text_encoder=Words())  # fmt: skip
    with pytest.raises(
        FileNotFoundError, match="net.subfolder=unet or transformer in a pipeline folder"
    ):
        DiffusersUNet([4, 8, 8], ScaledLinearSchedule(), EpsObjective(), path=str(sd))


def test_scheduler_configs_map_both_ways():
    """SD 1.5 is scaled_linear with eps, SD 2.x-v v; an exported config reads back as the run's."""
    schedule, objective, overrides = trained_with(SD)
    assert objective == "eps" and "schedule=scaled_linear" in overrides
    assert torch.allclose(schedule.alphas_cumprod, ScaledLinearSchedule().alphas_cumprod)
    assert trained_with({**SD, "prediction_type": "v_prediction"})[1] == "v"
    run = {"_target_": "difftrain.diffusion.schedules.CosineSchedule", "num_timesteps": 1000,
           "s": 0.008, "max_beta": 0.999, "zero_terminal_snr": True, "base_resolution": None}  # fmt: skip
    config = scheduler_config(run, "v")
    back, objective, _ = trained_with(config)
    assert objective == "v" and back.zero_terminal_snr
    torch.testing.assert_close(
        back.alphas_cumprod, CosineSchedule(zero_terminal_snr=True).alphas_cumprod
    )
    with pytest.raises(ValueError, match="has no diffusers scheduler"):
        scheduler_config({**run, "_target_": "difftrain.diffusion.schedules.EDMSchedule"}, "edm")
    with pytest.raises(ValueError, match="flow-matching"):
        trained_with({"_class_name": "FlowMatchEulerDiscreteScheduler"})


def test_a_dit_reads_classes_without_dropping_them_itself_and_unconditional_is_its_null_class():
    net = DiffusersTransformer([3, 8, 8], EDMSchedule(), EpsObjective(), num_classes=4)
    assert isinstance(net, Net) and type(net.model).__name__ == "DiTTransformer2DModel"
    x, c = torch.randn(2, 3, 8, 8), torch.zeros(2)
    net.train()  # diffusers' label dropout would draw here: difftrain's conditioning drops
    y = net(x, c, class_labels=torch.tensor([1, 3]))
    torch.testing.assert_close(y, net(x, c, class_labels=torch.tensor([1, 3])))
    assert y.shape == x.shape and not torch.allclose(y, net(x, c))  # no labels: the null class
    plain = DiffusersTransformer([3, 8, 8], EDMSchedule(), EpsObjective())
    torch.testing.assert_close(plain(x, c), plain(x, c, class_labels=torch.tensor([0, 0])))
    with pytest.raises(ValueError, match=r"takes \(3, H, W\) with H and W divisible by 2"):
        net.check_shape([3, 9, 9])


def test_a_pixart_reads_prompts_with_their_mask():
    net = DiffusersTransformer(
        [4, 8, 8], ScaledLinearSchedule(), EpsObjective(), text_encoder=Words()
    )
    assert type(net.model).__name__ == "PixArtTransformer2DModel"
    torch.nn.init.normal_(net.model.proj_out.weight)  # zero at first: every prompt alike
    tokens = net.tokenizer.encode(["a red seven", "an orange zebra"])
    x = torch.randn(2, 4, 8, 8)
    y = net(x, torch.zeros(2), text_tokens=tokens)
    assert y.shape == x.shape and not torch.allclose(y[0], y[1])


def test_a_pretrained_dit_gives_the_prediction_half_of_its_learned_variance(tmp_path):
    torch.manual_seed(0)
    diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, num_embeds_ada_norm=10,
    ).save_pretrained(tmp_path / "dit" / "transformer")  # fmt: skip
    (tmp_path / "dit" / "scheduler").mkdir()
    linear = {**SD, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    (tmp_path / "dit" / "scheduler" / "scheduler_config.json").write_text(json.dumps(linear))
    net = DiffusersTransformer([4, 8, 8], LinearSchedule(), EpsObjective(), num_classes=10,
                               path=str(tmp_path / "dit"), subfolder="transformer")  # fmt: skip
    reference = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "dit" / "transformer")
    x, c, y = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.5]), torch.tensor([2, 10])
    expected = reference(x, timestep=net.timestep(c), class_labels=y).sample[:, :4]
    torch.testing.assert_close(net(x, c, class_labels=y), expected)
    with pytest.raises(ValueError, match="has 10 classes: set net.num_classes=10"):
        DiffusersTransformer([4, 8, 8], LinearSchedule(), EpsObjective(), num_classes=3,
                             path=str(tmp_path / "dit"), subfolder="transformer")  # fmt: skip


def test_a_class_conditional_dit_trains_and_draws_each_class(tmp_path):
    """net=diffusers_transformer through difftrain-train: the run's classes and guidance."""
    from difftrain.runs.pretrained import load_trained
    from tests.conftest import _train_tiny

    ckpt = _train_tiny(tmp_path, "net=diffusers_transformer", "net.num_classes=${data.num_classes}",
                       "model.label_dropout=0.2", "callbacks.evaluate=null")  # fmt: skip
    model = load_trained(ckpt)
    assert type(model.diffusion.denoiser.net.model).__name__ == "DiTTransformer2DModel"
    images, _ = model.generate(4, labels=[0, 1, 2, 3], guidance=2.0)
    assert images.shape == (4, 1, 16, 16) and torch.isfinite(images).all()


def test_a_net_built_from_a_hydra_config_saves_as_diffusers_writes_it(tmp_path):
    """+net.config.* arrive as OmegaConf containers; the model's config.json takes plain ones."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"block_out_channels": [16, 32],
                               "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                               "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]})  # fmt: skip
    net = DiffusersUNet([3, 8, 8], EDMSchedule(), EpsObjective(), config=config)
    net.model.save_pretrained(tmp_path / "unet")
    saved = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert saved["block_out_channels"] == [16, 32] and saved["sample_size"] == 8
