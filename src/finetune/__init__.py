"""finetune: transfer-learning experiments in plain PyTorch, configured by Hydra.

Importing the package is cheap on purpose (no torch): `python train.py --cfg job`
must answer in about a second. The heavy pieces load on first use.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from finetune.engine.inference import load_model

        return load_model
    if name == "predict":
        from finetune.engine.predict import predict

        return predict
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
