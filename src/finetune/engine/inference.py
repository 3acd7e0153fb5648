"""`finetune.load_model(path)`: a trained model ready to predict, in three lines.

model, transform, classes = finetune.load_model("outputs/.../checkpoints/best.pt")
logits = model(transform(Image.open("x.png")).unsqueeze(0))
print(classes[logits.argmax()])
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn


class LoadedModel(NamedTuple):
    model: nn.Module  # in eval mode, on the CPU
    transform: Any  # PIL image -> input tensor as in the run's evaluation; or the tokenizer
    classes: list[str]


def load_model(path: str) -> LoadedModel:
    """A run directory or checkpoint -> the model, its preprocessing, its class names."""
    from finetune.data.inputs import predict_transform
    from finetune.engine.evaluation import checkpoint_path, model_from_checkpoint
    from finetune.models.weights import safe_torch_load

    checkpoint = checkpoint_path(str(path))
    state = safe_torch_load(checkpoint)
    model, prep, cfg = model_from_checkpoint(state, str(checkpoint))
    classes = list(state["classes"])
    tokenizer = getattr(model, "tokenizer", None)  # a text model's: its input transform
    if tokenizer is not None:
        return LoadedModel(model, tokenizer, classes)
    return LoadedModel(model, predict_transform(prep, cfg.data), classes)
