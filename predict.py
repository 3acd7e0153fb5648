"""Predict on new files: python predict.py ckpt=RUN input=IMAGE|FOLDER|GLOB|TABLE (see README)."""

import hydra
from omegaconf import DictConfig

from finetune.process_exit import leave_live_objects_to_the_os
from finetune.resolvers import register_resolvers

register_resolvers()
leave_live_objects_to_the_os()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from finetune.engine.predict import predict_from_config
    from finetune.safety.errors import exit_on_user_error

    with exit_on_user_error():
        predict_from_config(cfg)


if __name__ == "__main__":
    main()
