"""Train a model: python train.py [group=option ...] [key=value ...]   (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from finetune.engine.distributed_env import launched_by_torchrun
from finetune.engine.resume import resume_argv
from finetune.process_exit import leave_live_objects_to_the_os
from finetune.resolvers import register_resolvers
from finetune.safety.checks import check_config
from finetune.safety.errors import exit_on_user_error, hydra_errors_as_bad_input
from finetune.safety.runlock import hold_run_dir_lock, lock_run_dir

register_resolvers()
leave_live_objects_to_the_os()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Heavy imports (torch, timm) wait until a job runs, so --help and --cfg answer at once.
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # In a sweep the error must reach Hydra, which records this job as failed and goes on.
    # One process per run directory: a second one given the same directory refuses to start.
    with (
        exit_on_user_error(reraise=HydraConfig.get().mode == RunMode.MULTIRUN),
        lock_run_dir(cfg.paths.output_dir),
    ):
        check_config(cfg)  # a bad value is refused before torch and timm are imported
        from finetune.engine.run import run

        return run(cfg)


if __name__ == "__main__":
    with exit_on_user_error():  # one line and an exit status, not a traceback
        sys.argv = resume_argv(sys.argv)  # resume=RUN continues in RUN's own directory
        hold_run_dir_lock(sys.argv)  # before Hydra writes .hydra/ and train.log there
    if launched_by_torchrun():
        # Join the process group first, so rank 0 can choose the one run directory for all.
        from finetune.engine.distributed import cleanup, init_distributed

        init_distributed()
        try:
            with hydra_errors_as_bad_input():
                main()
        finally:
            cleanup()
    else:
        with hydra_errors_as_bad_input():  # an unknown option: one line and exit 2, as ours
            main()
