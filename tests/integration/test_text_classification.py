"""Text classification end to end, on one tiny run of the embedded text default (a tiny BERT and
a word-level tokenizer trained on the generated reviews): it trains, resumes bit for bit, eval.py
reproduces its test metrics, the reports (the run's and eval's) agree with them, predict.py
labels a text file, and <run>/hf opens in transformers.

One module-scoped straight run serves every assertion; the resume test adds an interrupted run
and its resumption (FINETUNE_SIGNAL_AT_STEP stops it at a known step, not at a moment).
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_script, run_train_in
from resume_checks import RESUME_STATE_KEYS, state_differences

# 3 epochs of 4 steps on 240 generated reviews; the LR schedule is mid-way at the interruption.
RUN = (
    "experiment=text_tiny_bert",
    "data.size=240",
    "data.batch_size=16",
    "data.sampler=length_grouped",  # text_table's default; resume must stay bitwise with it
    "trainer.epochs=3",
    "trainer.limit_train_batches=4",
    "trainer.progress_bar=false",
    "logger=[csv,tensorboard]",
    "logger.tensorboard.histogram_every_n_epochs=0",
)
INTERRUPT_AT_STEP = 6  # mid-way through epoch 2


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("text")
    result = run_train_in(base, *RUN, f"paths.cache_dir={base / 'cache'}")
    assert result.returncode == 0, result.output[-3000:]
    return result.run_dir


def test_the_run_records_text_metrics_and_keeps_its_tokenizer(text_run):
    summary = json.loads((text_run / "summary.json").read_text())
    assert {"test/acc", "test/f1_macro", "test/balanced_acc"} <= set(summary["test"])
    assert (text_run / "tokenizer.json").is_file()
    with (text_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    log_lines = (text_run / "train.log").read_text().splitlines()
    assert sum("Tokens cached in" in line for line in log_lines) == 3  # train, val, test
    epochs = [line for line in log_lines if "| train/loss" in line]
    assert len(epochs) == 3 and all(" samples/s | " in line for line in epochs), epochs


def test_tensorboard_lists_the_misclassified_validation_texts_each_epoch(text_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(text_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tables = events.Tensors("val/misclassified/text_summary")  # add_text appends the suffix
    assert len(tables) == 3  # one per epoch
    markdown = tables[-1].tensor_proto.string_val[0].decode()
    header, rule, *rows = markdown.splitlines()
    assert header == "| text | true | predicted | probability |" and rows
    for row in rows:
        text, true, predicted, probability = (cell.strip() for cell in row.strip("|").split("|"))
        assert text and true != predicted and 0 < float(probability) <= 1


def test_best_weights_open_in_transformers_with_their_tokenizer(text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import finetune

    model, tokenizer, classes = finetune.load_model(str(text_run))
    assert classes == ["negative", "neutral", "positive"]
    hf_model = AutoModelForSequenceClassification.from_pretrained(text_run / "hf").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(text_run / "hf")
    assert hf_model.config.id2label == dict(enumerate(classes))
    texts = ["the kettle is not great.", "overall, the lamp arrived on monday in a grey box."]
    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    assert encoded["input_ids"].tolist() == tokenizer(texts, padding=True)["input_ids"]
    types = encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"]))
    packed = torch.stack([encoded["input_ids"], types], dim=1)
    with torch.no_grad():
        ours = model(packed)
        theirs = hf_model(**encoded).logits
    torch.testing.assert_close(ours, theirs)


def test_eval_reproduces_the_test_metrics_and_the_reports_agree_with_it(text_run, tmp_path):
    result = run_script("eval.py", f"ckpt={text_run}", base=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    written = json.loads((text_run / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((text_run / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)
    # The run's report (after its test phase) and eval's (beside the checkpoint), same split.
    for report in (text_run / "report", text_run / "checkpoints/best.report-test"):
        check_text_report(report, written["metrics"])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def check_text_report(report: Path, metrics: dict[str, float]) -> None:
    """Per-class figures that average to eval's; the misclassified texts, worst first."""
    assert {"index.html", "confusion.png", "reliability.png", "calibration.json"} <= {
        path.name for path in report.iterdir()
    }
    classes = read_rows(report / "per_class.csv")
    assert [row["class"] for row in classes] == ["negative", "neutral", "positive"]
    f1 = [float(row["f1"]) for row in classes]
    recall = [float(row["recall"]) for row in classes]
    support = [int(row["support"]) for row in classes]
    assert sum(f1) / 3 == pytest.approx(metrics["test/f1_macro"], abs=1e-5)
    assert sum(recall) / 3 == pytest.approx(metrics["test/balanced_acc"], abs=1e-5)
    right = sum(r * n for r, n in zip(recall, support, strict=True))
    assert right / sum(support) == pytest.approx(metrics["test/acc"], abs=1e-5)
    wrong = read_rows(report / "misclassified.csv")
    assert len(wrong) == min(24, round(sum(support) - right))  # report.top_losses=24
    assert all(row["true"] != row["predicted"] and row["text"].endswith(".") for row in wrong)
    losses = [float(row["loss"]) for row in wrong]
    assert losses == sorted(losses, reverse=True)
    page = (report / "index.html").read_text()
    assert "Misclassified texts" in page and all(row["text"] in page for row in wrong)


def test_predict_on_a_text_file_writes_labels_and_probabilities(text_run, tmp_path):
    texts = ["the drill is superb.", "the chair is not reliable.", "well, the lamp is broken."]
    source = tmp_path / "reviews.txt"
    source.write_text("\n".join(texts) + "\n")
    out = tmp_path / "predicted"
    result = run_script(
        "predict.py", f"ckpt={text_run}", f"input={source}", f"out={out}", base=tmp_path
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == texts
    for row in rows:
        assert row["label_1"] in ("negative", "neutral", "positive")
        probabilities = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)


def test_ctrl_c_mid_epoch_then_resume_ends_bitwise_as_the_straight_run(
    text_run, tmp_path, monkeypatch
):
    # This run trains its own tokenizer in its own process: it must learn the straight run's
    # (models/hf_text.py, train_word_level), or the weights below would differ.
    # It reads the straight run's cached tokens (data.token_cache): the same batches must follow.
    shared_cache = f"paths.cache_dir={text_run.parent / 'cache'}"
    monkeypatch.setenv("FINETUNE_SIGNAL_AT_STEP", f"SIGINT:{INTERRUPT_AT_STEP}")
    interrupted = run_train_in(tmp_path, *RUN, shared_cache)
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.output[-3000:]
    assert interrupted.output.count("Tokens from the cache") == 3, interrupted.output[-3000:]
    monkeypatch.delenv("FINETUNE_SIGNAL_AT_STEP")
    resumed = run_train_in(tmp_path, f"resume={interrupted.run_dir}", run_dir=interrupted.run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    ours = load(interrupted.run_dir / "checkpoints/last.pt")
    reference = load(text_run / "checkpoints/last.pt")
    found = [
        d for key in RESUME_STATE_KEYS for d in state_differences(ours[key], reference[key], key)
    ]
    assert not found, f"the resumed run differs from the straight one in {found[:8]}"
