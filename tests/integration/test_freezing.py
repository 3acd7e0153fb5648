"""Freezing end to end: a linear probe leaves every backbone tensor as loaded; the feature cache
trains the same head as the uncached probe, and new backbone weights get a new cache entry.

The probe runs with a high learning rate and a strong weight decay, so that a backbone tensor
reached by the optimizer, or a BatchNorm statistic moved by `model.train()`, would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Five tiny runs in one module fixture: minutes alone, far more on shared cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "data.augment=false",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
)
PROBE = (
    "freeze=backbone",
    "optimizer.lr=0.1",
    "optimizer.weight_decay=0.5",
    "trainer.epochs=2",
    "scheduler=none",
)
HEAD = "fc."  # test_resnet's classifier


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def other_weights(run_dir: Path, out: Path) -> Path:
    """The run's best weights with one backbone tensor changed: a weights file of its own."""
    weights = load(run_dir / "checkpoints/best.pt")["model_state_dict"]
    weights["conv1.0.weight"] = weights["conv1.0.weight"] * 1.5
    torch.save(weights, out)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_in) -> dict:
    """A pretrained run; probes of it (uncached, cached, cached again) and a cached probe of
    other backbone weights, sharing one feature cache folder."""
    base = tmp_path_factory.mktemp("freezing")
    probe = (*TINY, *PROBE, f"paths.cache_dir={base / 'cache'}")
    cached = (*probe, "freeze.cache_features=true")
    result = train_in(base, *TINY, "trainer.epochs=1", run_dir=base / "pre")
    assert result.returncode == 0, result.output[-3000:]
    other = other_weights(base / "pre", base / "other.pt")
    plans = {
        "probe": (*probe, f"model.pretrained={base / 'pre'}"),
        "cached": (*cached, f"model.pretrained={base / 'pre'}"),
        "cached_again": (*cached, f"model.pretrained={base / 'pre'}"),
        "cached_other": (*cached, f"model.pretrained={other}"),
    }
    cache_entries = {}
    for name, overrides in plans.items():
        result = train_in(base, *overrides, run_dir=base / name)
        assert result.returncode == 0, f"{name}:\n{result.output[-3000:]}"
        cache_entries[name] = sorted(p.name for p in (base / "cache").rglob("*") if p.is_file())
    return {"cache_entries": cache_entries, "pre": base / "pre", **{n: base / n for n in plans}}


def test_a_linear_probe_leaves_every_backbone_tensor_as_loaded(runs) -> None:
    loaded = load(runs["pre"] / "checkpoints/best.pt")["model_state_dict"]
    probed = load(runs["probe"] / "checkpoints/best.pt")["model_state_dict"]
    backbone = [k for k in probed if not k.startswith(HEAD)]
    assert any("running_mean" in k for k in backbone), "BatchNorm statistics must be compared"
    # FrozenBatchNorm2d keeps no batch counter: the only keys a frozen model may lack.
    assert {k for k in loaded if not k.startswith(HEAD)} - set(backbone) <= {
        k for k in loaded if k.endswith("num_batches_tracked")
    }
    moved = [k for k in backbone if not torch.equal(probed[k], loaded[k])]
    assert not moved, f"backbone tensors changed under freeze=backbone: {moved[:5]}"
    trained = [k for k in probed if k.startswith(HEAD) and not torch.equal(probed[k], loaded[k])]
    assert trained, "the head did not train, so this test proves nothing"


def test_cached_and_uncached_probes_give_the_same_head_and_metrics(runs) -> None:
    uncached = load(runs["probe"] / "checkpoints/best.pt")
    cached = load(runs["cached"] / "checkpoints/best.pt")
    assert uncached["epoch"] == cached["epoch"]
    for key in [k for k in uncached["model_state_dict"] if k.startswith(HEAD)]:
        torch.testing.assert_close(
            cached["model_state_dict"][key], uncached["model_state_dict"][key], msg=key
        )
    summaries = [json.loads((runs[n] / "summary.json").read_text()) for n in ("probe", "cached")]
    for split in ("final", "test"):
        metrics = [
            {k: v for k, v in s[split].items() if k.startswith(("val/", "test/", "train/"))}
            for s in summaries
        ]
        assert metrics[0].keys() == metrics[1].keys()
        for key in metrics[0]:
            assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-5), key


def test_the_cache_is_reused_for_the_same_weights_and_new_for_new_ones(runs) -> None:
    entries = runs["cache_entries"]
    assert entries["probe"] == [], "an uncached probe wrote to the feature cache"
    assert entries["cached"], "the cached probe left nothing in paths.cache_dir"
    assert entries["cached_again"] == entries["cached"], "the same weights made a new entry"
    new = set(entries["cached_other"]) - set(entries["cached_again"])
    assert new, "new backbone weights reused the old weights' features"
