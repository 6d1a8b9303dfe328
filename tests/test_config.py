"""Every option of every config group composes, and everything with a _target_ instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difftrain.config import CONFIG_DIR
from difftrain.diffusion.consistency import ConsistencyObjective
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.objectives import Objective
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.training.module import DiffusionModule

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    """A group's options; files starting with _ are shared bases, not options."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_groups_mirror_the_issue_list():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    expected = {
        "data",
        "net",
        "schedule",
        "objective",
        "sampler",
        "optimizer",
        "lr_scheduler",
        "ema",
    }
    expected |= {"trainer", "callbacks", "logger", "paths", "hydra", "experiment", "debug"}
    assert expected <= groups


@pytest.mark.parametrize("option", options("lora"))
def test_lora(make_cfg, option):
    """A LoRA option adapts a diffusers net: its adapters alone train."""
    pytest.importorskip("peft")
    cfg = make_cfg(f"lora={option}", "net=diffusers_unet", "text_encoder=tiny",
                   "data=captioned_digits")  # fmt: skip
    net = instantiate(cfg.net)
    instantiate(cfg.model.lora).apply(net)
    trains = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trains and all(".lora_" in n for n in trains)
    with pytest.raises(ValueError, match="model.lora adapts a diffusers net"):
        instantiate(cfg.model.lora).apply(instantiate(make_cfg("net=unet_tiny").net))


@pytest.mark.parametrize("option", options("prior"))
def test_prior(make_cfg, option):
    cfg = make_cfg(f"prior={option}", "model.prior_preservation.class_prompt='a digit'",
                   "data=captioned_digits")  # fmt: skip
    prior = instantiate(cfg.model.prior_preservation)
    assert prior.images.shape[1:] == tuple(cfg.data.sample_shape)


@pytest.mark.parametrize("option", options("data"))
def test_data(make_cfg, option):
    cfg = make_cfg(f"data={option}")
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)


@pytest.mark.parametrize("option", options("net"))
def test_net(make_cfg, option):
    cfg = make_cfg(f"net={option}", "data.image_size=32")
    net = instantiate(cfg.net)
    x = torch.randn(2, *net.sample_shape)
    with torch.no_grad():
        assert net(x, torch.zeros(2)).shape == x.shape


@pytest.mark.parametrize("option", options("schedule"))
def test_schedule(make_cfg, option):
    schedule = instantiate(make_cfg(f"schedule={option}").schedule)
    assert isinstance(schedule, NoiseSchedule)
    assert torch.isfinite(schedule.sigma(torch.linspace(0, 1, 11))).all()


@pytest.mark.parametrize("option", options("objective"))
def test_objective(make_cfg, option):
    assert isinstance(instantiate(make_cfg(f"objective={option}").objective), Objective)


@pytest.mark.parametrize("option", options("noise_levels"))
def test_noise_levels(make_cfg, option):
    cfg = make_cfg(f"noise_levels={option}")
    sigma, weight = instantiate(cfg.noise_levels)(8, instantiate(cfg.schedule), torch.device("cpu"))
    assert sigma.shape == weight.shape == (8,) and (sigma > 0).all()


@pytest.mark.parametrize("option", options("weighting"))
def test_weighting(make_cfg, option):
    cfg = make_cfg(f"weighting={option}")
    sigma = torch.logspace(-2, 2, 5)
    _, c_out, _, _ = instantiate(cfg.objective).scalings(sigma)
    assert (instantiate(cfg.weighting)(sigma, c_out) > 0).all()


@pytest.mark.parametrize("option", options("loss"))
def test_loss(make_cfg, option):
    cfg = make_cfg(f"loss={option}", "net=unet_tiny")
    loss = instantiate(cfg.loss)
    objective = instantiate(cfg.objective)
    if option in ("ect", "cd"):  # a consistency model: the boundary that distill=ect/cd gives
        objective = ConsistencyObjective(objective, 0.002)
    denoiser = Denoiser(instantiate(cfg.net), objective)
    if option == "cd":  # and a teacher, which the module sets from model.init_from
        loss.set_teacher(Denoiser(instantiate(cfg.net), instantiate(cfg.objective)))
    x0 = torch.randn(4, *denoiser.net.sample_shape)
    losses, sigma = loss(denoiser, instantiate(cfg.schedule), x0, generator=torch.Generator())
    assert losses.shape == sigma.shape == (4,) and torch.isfinite(losses).all()


@pytest.mark.parametrize("option", options("sampler"))
def test_sampler(make_cfg, option):
    cfg = make_cfg(f"sampler={option}", "sampler.steps=5")
    sampler, schedule = instantiate(cfg.sampler), instantiate(cfg.schedule)
    assert isinstance(sampler, Sampler)
    x, nfe = sampler(
        lambda x, sigma, labels: torch.zeros_like(x), torch.randn(2, 1, 4, 4), schedule
    )
    assert nfe == (
        2 * 5 - 1 if option == "heun" else 5
    )  # Heun: two evaluations a step but the last
    assert torch.allclose(x, torch.zeros_like(x))  # a denoiser that always answers 0 leads to 0


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer(make_cfg, option):
    if option == "adam8bit":
        pytest.importorskip("bitsandbytes", reason="optimizer=adam8bit needs bitsandbytes")
    cfg = make_cfg(f"optimizer={option}")
    assert isinstance(
        instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))]), torch.optim.Optimizer
    )


def test_adam8bit_without_bitsandbytes_names_the_fix(make_cfg):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(Exception, match="optimizer=adam8bit needs bitsandbytes and a GPU"):
        instantiate(make_cfg("optimizer=adam8bit").optimizer)([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("option", options("lr_scheduler"))
def test_lr_scheduler(make_cfg, option):
    cfg = make_cfg(f"lr_scheduler={option}")
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    instantiate(cfg.lr_scheduler)(optimizer)


@pytest.mark.parametrize("option", options("ema"))
def test_ema(make_cfg, option):
    decay = instantiate(make_cfg(f"ema={option}").ema)
    betas = [decay(n) for n in range(1, 10_000, 100)]
    assert all(0 <= b < 1 for b in betas) and betas == sorted(betas)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer(make_cfg, option):
    overrides = [] if torch.cuda.is_available() else ["trainer.accelerator=cpu"]
    cfg = make_cfg(f"trainer={option}", *overrides)
    assert isinstance(instantiate(cfg.trainer, logger=False, enable_checkpointing=False), L.Trainer)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks(make_cfg, option):
    cfg = make_cfg(f"callbacks={option}")
    assert all(isinstance(instantiate(c), L.Callback) for c in cfg.callbacks.values())


@pytest.mark.parametrize("option", options("logger"))
def test_logger(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    try:
        loggers = [instantiate(c) for c in cfg.logger.values()]
    finally:
        wandb.finish()
    assert all(hasattr(logger, "log_metrics") for logger in loggers)


def test_paths_and_hydra(make_cfg):
    assert set(make_cfg().paths) == {"root_dir", "data_dir", "log_dir", "cache_dir", "output_dir"}
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        hydra_cfg = compose("train", return_hydra_config=True).hydra
    raw = OmegaConf.to_container(hydra_cfg, resolve=False)
    assert raw["run"]["dir"].startswith("${paths.log_dir}/${task_name}/runs/")
    assert raw["sweep"]["subdir"] == "${hydra.job.num}"  # one run dir per multirun job
    assert raw["job"]["chdir"] is False


@pytest.mark.parametrize("option", options("evaluator"))
def test_evaluator(make_cfg, option):
    overrides = ["experiment=toy2d"] if option == "toy" else []
    evaluator = instantiate(make_cfg(f"evaluator={option}", *overrides).evaluator)
    assert hasattr(evaluator, "setup") and hasattr(evaluator, "score")


@pytest.mark.parametrize("option", options("augment"))
def test_augment(make_cfg, option):
    model = instantiate(make_cfg(f"augment={option}").model)
    images, labels = model.augment(torch.randn(3, 1, 16, 16))
    assert images.shape == (3, 1, 16, 16) and labels.shape == (3, model.denoiser.net.augment_dim)


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment(make_cfg, option):
    if option in ("sd_from_scratch", "sd15_finetune", "sd15_lora"):
        pytest.skip("needs Stable Diffusion's VAE and CLIP and captioned images: tests/latent "
                    "instantiates and runs it with randomly initialized ones")  # fmt: skip
    cfg = make_cfg(f"experiment={option}")
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    model = instantiate(cfg.model)
    assert isinstance(model, DiffusionModule) and isinstance(model.denoiser, Denoiser)


def test_moving_digits_evaluates_in_training_as_difftrain_eval_does(make_cfg):
    cfg = make_cfg("experiment=moving_digits")  # the run's own Heun 18, not DPM-Solver++(2M) 10
    assert cfg.callbacks.evaluate.sampler == cfg.sampler
    assert cfg.sampler.solver._target_.endswith("sample_heun") and cfg.sampler.steps == 18


@pytest.mark.parametrize("option", options("debug"))
def test_debug(make_cfg, option):
    cfg = make_cfg(f"debug={option}", "trainer.accelerator=cpu")
    assert isinstance(instantiate(cfg.trainer, logger=False, enable_checkpointing=False), L.Trainer)


def test_root_model_instantiates(make_cfg):
    assert isinstance(instantiate(make_cfg().model), DiffusionModule)


def test_sample_config_composes(make_cfg):
    cfg = make_cfg("ckpt=x.ckpt", "sampler=ddim", config_name="sample")
    assert cfg.sampler.steps == 50 and cfg.ckpt == "x.ckpt"
    assert make_cfg("ckpt=x.ckpt", config_name="sample").get("sampler") is None


def test_unknown_key_is_an_error(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg("net.chanels=16")
    with pytest.raises(ConfigCompositionException):
        make_cfg("learning_rate=1e-3")


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_hydra_launcher(option):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[sweep]'")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]'")
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={option}"], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert (
        type(launcher).__name__ == {"parallel": "JoblibLauncher", "slurm": "SlurmLauncher"}[option]
    )
    if option == "slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.tasks_per_node == 1


def test_the_slurm_layout_comes_from_the_trainer(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]'")
    from difftrain.runs.preflight import check_launcher

    layout = ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=layout, return_hydra_config=True)
        auto = compose(
            "train", overrides=[*layout, "trainer.devices=auto"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    trainer = instantiate(
        cfg.trainer, accelerator="cpu", precision="32-true", plugins=None, default_root_dir=tmp_path
    )
    assert (trainer.num_nodes, trainer.num_devices) == (2, 4)  # what Lightning checks SLURM against
    assert check_launcher(cfg) == []
    assert check_launcher(auto) == [
        "trainer.devices='auto': hydra/launcher=slurm needs a whole number of GPUs (tasks) per "
        "node, e.g. trainer.devices=2"
    ]


GROUPS = [p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "paths")]


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in GROUPS for o in options(g) if g not in ("sweep", "hparams_search")],
)
def test_every_option_passes_the_start_up_checks(make_cfg, override):
    from difftrain.runs.preflight import check_values

    extra = {
        "evaluator=toy": ["experiment=toy2d"], "text_encoder=tiny": ["data=captioned_digits"],
        "text_encoder=clip": ["data=captioned_digits", "text_encoder.path=/models/clip"],
        "autoencoder=kl": ["autoencoder.path=/models/sd"],
        "experiment=sd_from_scratch": ["autoencoder.path=/models/sd", "text_encoder.path=/models/sd"],
        "experiment=sd15_finetune": ["net.path=/models/sd"],
        "experiment=sd15_lora": ["net.path=/models/sd"],
        "prior=dreambooth": ["model.prior_preservation.class_prompt=a", "data=captioned_digits"],
    }  # fmt: skip
    extra = extra.get(override, [])
    assert check_values(make_cfg(override, *extra)) == []


def test_an_option_without_its_mandatory_value_is_refused_by_name(make_cfg):
    from difftrain.runs.preflight import check_values

    assert check_values(make_cfg("data=captioned_digits", "text_encoder=clip")) == [
        "text_encoder.path=???: has no default, so give it, e.g. text_encoder.path=<value>"
    ]


def test_a_text_encoder_without_captions_says_which_data_has_them(make_cfg):
    from hydra.errors import InstantiationException

    with pytest.raises(
        InstantiationException,
        match="has none to build its vocabulary from: use data=captioned_digits",
    ):
        instantiate(make_cfg("text_encoder=tiny").net)
