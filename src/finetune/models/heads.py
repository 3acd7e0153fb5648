"""Finding a model's classifier head and completing its stages, for sources without a registry.

timm models say where their head is (pretrained_cfg's `classifier`); torchvision and
transformers models do not, so the head is the last Linear layer sized for the run's classes,
or the module `model.head` names.
"""

from __future__ import annotations

from torch import nn

from finetune.models.source import Stage
from finetune.safety.errors import FinetuneError


def find_head(model: nn.Module, num_outputs: int, configured: str | None, name: str) -> list[str]:
    """The classifier's module name: `model.head` when set, else the last Linear to the classes."""
    modules = dict(model.named_modules())
    if configured:
        if configured not in modules:
            raise FinetuneError(
                f"model.head={configured} is not a module of {name}; set model.head to the "
                "classifier's module name (see print(model))"
            )
        return [configured]
    linears = [
        n for n, m in modules.items() if isinstance(m, nn.Linear) and m.out_features == num_outputs
    ]
    if not linears:
        raise FinetuneError(
            f"cannot find the classifier of {name} (no Linear layer with {num_outputs} outputs); "
            "set model.head to the classifier's module name (see print(model))"
        )
    return [linears[-1]]


def in_head(name: str, head: list[str]) -> bool:
    """Whether a module or parameter name lies inside the head."""
    return any(name == h or name.startswith(f"{h}.") for h in head)


def complete_stages(model: nn.Module, stages: list[Stage], head: list[str]) -> list[Stage]:
    """Drop empty stages; parameters no stage holds (a final norm, a pooler) join the last one.

    So freezing "the backbone" means every parameter outside the head, whatever the structure.
    """
    covered = [n for stage in stages for n in stage.modules]
    named = {n for stage in stages for n in stage.parameters}
    rest = [
        name
        for name, _ in model.named_parameters()
        if not in_head(name, head) and not in_head(name, covered) and name not in named
    ]
    stages = [s for s in stages if s.modules or s.parameters]
    if rest:
        stages.append(Stage([], rest))
    return stages


def with_parameters(model: nn.Module, names: list[str]) -> list[str]:
    """The module names among `names` that exist and hold parameters."""
    modules = dict(model.named_modules())
    return [n for n in names if n in modules and any(True for _ in modules[n].parameters())]
