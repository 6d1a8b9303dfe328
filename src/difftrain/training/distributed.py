"""DDP for Hydra jobs: the worker processes of a run (or of one multirun job) run that job only.

Lightning starts DDP workers by re-running the command line. In a Hydra multirun that command
line is the whole sweep (`-m key=a,b`), so each worker would launch the sweep again, and their
`hydra.run.dir` is not the job's dir. `DDPStrategy` starts them with the job's own overrides,
in the job's dir, in single-run mode.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher


def worker_command(local_rank: int) -> tuple[list[str], str]:
    """The command line of DDP worker `local_rank` for the running Hydra job, and its cwd."""
    from hydra.core.hydra_config import HydraConfig

    import __main__

    hydra = HydraConfig.get()
    entry = ["-m", __main__.__spec__.name] if __main__.__spec__ else [os.path.abspath(sys.argv[0])]
    job = [
        *hydra.overrides.task,  # this job's values, not the sweep's
        f"hydra.run.dir={hydra.runtime.output_dir}",
        "hydra.output_subdir=null",  # the parent wrote .hydra/
        f"hydra.job.name={hydra.job.name}_rank{local_rank}",  # its own log file
    ]
    return [sys.executable, *entry, *job], hydra.runtime.cwd


ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of DDP worker scripts, with `worker_command` for Hydra jobs; `done()`
    undoes what launching set, so that the next job of a multirun starts afresh."""

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        self._saved_environment = {key: os.environ.get(key) for key in ENVIRONMENT}
        if not HydraConfig.initialized():
            return super()._call_children_scripts()
        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            if os.environ.get("PL_GLOBAL_SEED") is None:  # as Lightning: no seed, none to pass
                env.pop("PL_GLOBAL_SEED", None)
            command, cwd = worker_command(local_rank)
            self.procs.append(subprocess.Popen(command, env=env, cwd=cwd))

    def done(self) -> None:
        """After fitting: end the process group and restore the environment launching changed."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in getattr(self, "_saved_environment", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class HydraJobs:
    """For Lightning strategies that launch worker scripts: they run the Hydra job only."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = HydraJobLauncher(
                self.cluster_environment, self.num_processes, self.num_nodes
            )

    def teardown(self) -> None:
        super().teardown()
        if isinstance(self._launcher, HydraJobLauncher) and self.global_rank == 0:
            for proc in self._launcher.procs:  # the workers finish their own teardown
                proc.wait(timeout=120)
            self._launcher.done()


class DDPStrategy(HydraJobs, LightningDDPStrategy):
    """Lightning's DDP; worker processes of a Hydra job run that job only (`HydraJobLauncher`)."""


class FSDPStrategy(HydraJobs, LightningFSDPStrategy):
    """Lightning's FSDP; worker processes of a Hydra job run that job only (`HydraJobLauncher`).

    By default every residual and attention block, and each denoiser, is an FSDP unit. The
    trained denoiser and its EMA copy are thus sharded alike, so that the EMA update pairs each
    process's parts of both. `use_orig_params` keeps the parameter names that weight decay
    groups and checkpoints use.
    """

    def __init__(self, *, auto_wrap_policy=None, use_orig_params: bool = True, **kwargs):
        if auto_wrap_policy is None:
            from difftrain.diffusion.denoiser import Denoiser
            from difftrain.nets.layers import ResBlock, SelfAttention

            auto_wrap_policy = {ResBlock, SelfAttention, Denoiser}
        super().__init__(
            auto_wrap_policy=auto_wrap_policy, use_orig_params=use_orig_params, **kwargs
        )


def is_sharded(strategy: object) -> bool:
    """Whether `strategy` shards the weights: each process then holds a part of every tensor."""
    return isinstance(strategy, LightningFSDPStrategy)
