"""Transfer learning on texts, end to end on tiny runs of the text default: `freeze=partial`
leaves the first layers as loaded (under bf16 autocast), `freeze=gradual` thaws at the
configured epoch, a sweep of the linear probe with and without the feature cache on the pooled
output trains one head (and summarises both jobs), and two torchrun processes of batch B end
where one process of batch 2B does (length-grouped batches sharded over the ranks).

One module-scoped "pretrained" run (1 epoch) is the backbone every frozen run loads (the random
backbone guard refuses freezing a random one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_train_in, torchrun

RUN = (
    "experiment=text_tiny_bert",
    "data.size=240",
    "data.batch_size=16",
    "data.sampler=length_grouped",  # text_table's default (the reviews' is random)
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "logger=csv",
)
EMBEDDINGS, LAYER_0, LAYER_1 = "bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."
HEAD = "classifier."


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def named(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    found = {k.split(part, 1)[1]: v for k, v in state.items() if part in k}
    assert found, f"no tensor named {part}* in {list(state)[:5]}"
    return found


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], part: str) -> bool:
    ours, theirs = named(a, part), named(b, part)
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text_transfer")
    result = run_train_in(
        folder,
        *RUN,
        "trainer.epochs=1",
        f"paths.cache_dir={folder / 'cache'}",
        run_dir=folder / "pre",
    )
    assert result.returncode == 0, result.output[-3000:]
    return folder


def transfer_run(base: Path, name: str, *overrides: str) -> Path:
    result = run_train_in(
        base,
        *RUN,
        f"model.pretrained={base / 'pre'}",
        f"paths.cache_dir={base / 'cache'}",
        *overrides,
        run_dir=base / name,
    )
    assert result.returncode == 0, result.output[-3000:]
    return base / name


def test_partial_keeps_the_first_layers_as_loaded_under_bf16(base):
    run = transfer_run(
        base,
        "partial",
        "freeze=partial",
        "freeze.stages=1",
        "trainer.precision=bf16",
        "trainer.epochs=1",
    )
    loaded, trained = (
        weights(base / "pre/checkpoints/last.pt"),
        weights(run / "checkpoints/last.pt"),
    )
    assert same(trained, loaded, EMBEDDINGS) and same(trained, loaded, LAYER_0)
    assert not same(trained, loaded, LAYER_1) and not same(trained, loaded, HEAD)
    assert "precision: bf16" in (run / "hparams.yaml").read_text()


def test_gradual_thaws_the_backbone_at_the_configured_epoch(base):
    run = transfer_run(
        base, "gradual", "freeze=gradual", "freeze.unfreeze_at_epoch=2", "trainer.epochs=2"
    )
    assert "freeze=gradual: epoch 2 thaws stages" in (run / "train.log").read_text()
    loaded = weights(base / "pre/checkpoints/last.pt")
    first = weights(next((run / "checkpoints").glob("epoch=001-*.pt")))
    last = weights(run / "checkpoints/last.pt")
    for part in (EMBEDDINGS, LAYER_0, LAYER_1):
        assert same(first, loaded, part), f"{part} moved before the thaw"
        assert not same(last, loaded, part), f"{part} did not train after the thaw"
    assert not same(first, loaded, HEAD)


def test_a_sweep_of_cached_and_uncached_probes_trains_the_same_head(base):
    """One `-m` sweep, two jobs: the linear probe on the pooled output with and without the
    feature cache. The sweep summarises both by the text monitor, and they train one head."""
    result = run_train_in(
        base, "-m", *RUN, f"model.pretrained={base / 'pre'}", f"paths.cache_dir={base / 'cache'}",
        "freeze=backbone", "trainer.epochs=2", "freeze.cache_features=false,true",
        f"paths.log_dir={base / 'sweep'}", own_dir=True,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    [sweep] = (base / "sweep" / "multirun").glob("*/*/")
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert {row["monitor"] for row in rows} == {"val/acc"}
    jobs = {}
    for job in (p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        config = torch.load(job / "checkpoints/last.pt", weights_only=True)["config"]
        jobs[config["freeze"]["cache_features"]] = job
    probe, cached = jobs[False], jobs[True]
    assert "Features cached in" in (cached / "train.log").read_text()
    uncached_head = named(weights(probe / "checkpoints/last.pt"), HEAD)
    cached_head = named(weights(cached / "checkpoints/last.pt"), HEAD)
    for key, value in uncached_head.items():
        torch.testing.assert_close(cached_head[key], value, msg=key)
    metrics = [json.loads((run / "summary.json").read_text())["test"] for run in (probe, cached)]
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-5)


def test_two_processes_of_batch_b_end_where_one_process_of_batch_2b_does(base, tmp_path):
    # Plain SGD: Adam's step divides by the gradient's size, which turns float noise (each rank
    # pads its half batch to its own longest text) into visible weight differences.
    equivalent = (
        *RUN[:2],
        *RUN[3:],
        "optimizer=sgd",
        "optimizer.lr=0.01",
        "scheduler=none",
        "trainer.epochs=1",
        f"paths.cache_dir={base / 'cache'}",
    )
    ddp = torchrun(tmp_path, *equivalent, "data.batch_size=8", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    single = run_train_in(tmp_path, *equivalent, "data.batch_size=16", run_dir=tmp_path / "one")
    assert single.returncode == 0, single.output[-3000:]
    ours, theirs = (
        weights(tmp_path / "ddp/checkpoints/last.pt"),
        weights(single.run_dir / "checkpoints/last.pt"),
    )
    assert ours.keys() == theirs.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert worst < 1e-5, f"largest weight difference {worst}"
