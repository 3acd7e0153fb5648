"""Comparing two checkpoints bitwise: what resume equality (tests/integration/test_resume*.py and
the tasks' fault tests) checks."""

from __future__ import annotations

# Checkpoints compared, for resume equality: what the next step depends on; `loop` and `rng`
# say where, and with which random streams.
RESUME_STATE_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler",
    "ema_state_dict",
    "loop",
    "rng",
    "epoch",
    "global_step",
)


def state_differences(a: object, b: object, where: str = "") -> list[str]:
    """Where two checkpoint values differ: tensors bitwise, containers item by item."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in state_differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in state_differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]
