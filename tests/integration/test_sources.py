"""Every model source through the real entrypoint: a linear probe (freeze=backbone) from weights
the test built, then full fine-tuning from that run; bitwise resume, eval equal to the recorded
test metrics, exports that match; and LoRA on a tiny transformers ViT. The probe runs as two
DDP processes under bf16 autocast, so each source is also checked under torchrun and AMP.

Weights are built here, never downloaded: torchvision's mobilenet_v3_small state dict saved to a
file, a random transformers ViT (hidden 32, 2 layers, 32 px) saved with save_pretrained.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF_DIR, REPO_ROOT, torchrun

TINY = (
    "data.image_size=32",
    "data.batch_size=32",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
    "scheduler=none",  # a constant LR: extending 1 epoch to 2 changes no schedule
)


def torchvision_weights(base: Path) -> tuple[str, ...]:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), base / "mobilenet.pth")
    return ("model=tv_mobilenet_v3_small", f"model.pretrained={base / 'mobilenet.pth'}")


def hf_weights(base: Path) -> tuple[str, ...]:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTForImageClassification(config).save_pretrained(base / "tiny-vit")
    return ("model=hf_vit", f"model.name={base / 'tiny-vit'}")


WEIGHTS = {"torchvision": torchvision_weights, "hf": hf_weights}


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model_state_dict"]


def assert_bitwise_equal(a: Path, b: Path) -> None:
    weights_a, weights_b = last_weights(a), last_weights(b)
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, f"weights differ: {different[:5]}"


def hparams(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "hparams.yaml").read_text())["run"]


def train_resume_straight(train_in, base: Path, *overrides: str) -> dict[str, Path]:
    """1 epoch then resumed to 2, beside 2 straight epochs."""
    first = train_in(base, *overrides, "trainer.epochs=1", run_dir=base / "first")
    assert first.returncode == 0, first.output[-3000:]
    resumed = train_in(base, f"resume={base / 'first'}", "trainer.epochs=2", run_dir=base / "first")
    assert resumed.returncode == 0, resumed.output[-3000:]
    straight = train_in(base, *overrides, "trainer.epochs=2", run_dir=base / "straight")
    assert straight.returncode == 0, straight.output[-3000:]
    return {"first": base / "first", "straight": base / "straight"}


@pytest.fixture(scope="module", params=sorted(WEIGHTS))
def source(request, tmp_path_factory) -> dict:
    """A source, its built weights, and where its runs go."""
    base = tmp_path_factory.mktemp(request.param)
    return {"name": request.param, "base": base, "model": WEIGHTS[request.param](base)}


@pytest.fixture(scope="module")
def probe_run(source) -> Path:
    """A linear probe (freeze=backbone) on the built weights: two DDP processes, bf16 autocast."""
    base = source["base"]
    probe = torchrun(
        base,
        *TINY,
        *source["model"],
        "freeze=backbone",
        "trainer.epochs=1",
        "trainer.precision=bf16",
        f"hydra.run.dir={base / 'probe'}",
    )
    assert probe.returncode == 0, (probe.stdout + probe.stderr)[-3000:]
    return base / "probe"


@pytest.fixture(scope="module")
def source_runs(source, probe_run, train_in) -> dict:
    """freeze=none from the probe's run: 1 epoch resumed to 2, and 2 straight."""
    tuned = (*TINY, *source["model"], f"model.pretrained={probe_run}", "freeze=none")
    runs = train_resume_straight(train_in, source["base"], *tuned)
    return {"source": source["name"], "probe": probe_run, **runs}


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, train_in) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lora")
    return train_resume_straight(train_in, base, *TINY, *hf_weights(base), "freeze=lora")


def evaluate_in_process(run_dir: Path) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from finetune.engine.evaluation import evaluate_checkpoint
    from finetune.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt={run_dir}"])
    return evaluate_checkpoint(cfg)


def export(run_dir: Path, out: Path) -> int:
    spec = importlib.util.spec_from_file_location("export", REPO_ROOT / "scripts/export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(run_dir), "--out", str(out), "--formats", "torchscript", "export"])


def test_probe_trains_only_the_head_of_loaded_weights(source, probe_run):
    facts = hparams(probe_run)
    config = yaml.safe_load((probe_run / "hparams.yaml").read_text())["config"]
    assert facts["world_size"] == 2 and config["trainer"]["precision"] == "bf16"
    assert facts["model"]["source"] == source["name"] and facts["model"]["pretrained_loaded"]
    head = last_weights(probe_run)
    head_size = sum(
        v.numel() for k, v in head.items() if k.startswith(tuple(facts["model"]["head"]))
    )
    assert facts["parameters"]["trainable"] == head_size
    assert facts["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_full_fine_tune_resumes_bitwise(source_runs):
    assert hparams(source_runs["straight"])["parameters"]["frozen"] == 0
    assert_bitwise_equal(source_runs["first"], source_runs["straight"])


def test_eval_and_export_match_the_run(source_runs, tmp_path):
    import json

    recorded = json.loads((source_runs["straight"] / "summary.json").read_text())["test"]
    assert evaluate_in_process(source_runs["straight"]) == pytest.approx(recorded, abs=1e-6)
    assert export(source_runs["straight"], tmp_path) == 0


def test_hf_run_opens_with_from_pretrained(source_runs):
    if source_runs["source"] != "hf":
        pytest.skip("transformers only")
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source_runs["straight"] / "hf")
    assert model.config.id2label[3] == "3" and model.config.num_labels == 10


def test_lora_trains_adapters_resumes_bitwise_and_exports_merged(lora_runs, tmp_path):
    facts = hparams(lora_runs["straight"])["parameters"]
    assert 0 < facts["trainable"] < facts["total"]
    assert any("lora_A" in k for k in last_weights(lora_runs["straight"]))
    assert_bitwise_equal(lora_runs["first"], lora_runs["straight"])
    import json

    recorded = json.loads((lora_runs["straight"] / "summary.json").read_text())["test"]
    assert evaluate_in_process(lora_runs["straight"]) == pytest.approx(recorded, abs=1e-6)
    assert export(lora_runs["straight"], tmp_path) == 0
    from safetensors.torch import load_file

    merged = load_file(lora_runs["straight"] / "hf/model.safetensors")
    assert not any("lora_" in k for k in merged)
