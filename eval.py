"""Evaluate a checkpoint: python eval.py ckpt=RUN_DIR_OR_CHECKPOINT [data=...]   (see README)."""

import hydra
from omegaconf import DictConfig

from finetune.process_exit import leave_live_objects_to_the_os
from finetune.resolvers import register_resolvers
from finetune.safety.errors import exit_on_user_error, hydra_errors_as_bad_input

register_resolvers()
leave_live_objects_to_the_os()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    from finetune.engine.evaluation import evaluate_checkpoint

    with exit_on_user_error():
        return evaluate_checkpoint(cfg)


if __name__ == "__main__":
    with hydra_errors_as_bad_input():  # an unknown option: one line and exit 2, as ours
        main()
