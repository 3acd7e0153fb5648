"""Train a model: python train.py [group=option ...] [key=value ...]   (see README.md)."""

import hydra
from omegaconf import DictConfig

from finetune.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Heavy imports (torch, timm) wait until a job runs, so --help and --cfg answer at once.
    from finetune.errors import exit_on_user_error
    from finetune.train import run

    with exit_on_user_error():
        return run(cfg)


if __name__ == "__main__":
    main()
