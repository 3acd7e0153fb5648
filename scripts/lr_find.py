"""The LR range test on the configured run: python scripts/lr_find.py [overrides]

    python scripts/lr_find.py                                   # the default run's model and data
    python scripts/lr_find.py model=resnet50 freeze=backbone data=image_folder data.root=DIR

Takes the same overrides as train.py (model, data, freeze policy, optimizer, ...; `lr_find.*`
for the sweep), writes lr_find.png, lr_find.json and TensorBoard/W&B records into its own
run directory, and prints the suggested LR with the train.py command that uses it
(`python train.py optimizer.lr=find` does both in one run). See finetune.engine.lr_finder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from finetune.resolvers import register_resolvers
from finetune.safety.checks import check_config
from finetune.safety.errors import exit_on_user_error

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        check_config(cfg)
        from finetune.engine import lr_finder
        from finetune.engine.distributed import dist_info
        from finetune.engine.setup import pick_device, seed_everything
        from finetune.records.loggers import build_loggers

        run_dir = Path(cfg.paths.output_dir)
        seed_everything(cfg.seed)
        result = lr_finder.range_test(cfg, pick_device(cfg.trainer.device), dist_info())
        loggers = build_loggers(cfg, run_dir, is_main=True)
        plot = lr_finder.record(result, cfg, run_dir, loggers)
        loggers.finish("completed")
        overrides = " ".join(a for a in sys.argv[1:] if not a.startswith(("lr_find.", "hydra.")))
        print(f"suggested lr: {result.suggestion:.3g} (plot: {plot})")
        print(f"train with it: python train.py {overrides} optimizer.lr={result.suggestion:.3g}")
        return result.suggestion


if __name__ == "__main__":
    main()
