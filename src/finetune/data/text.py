"""Labelled texts: a table (`data=text_table`: CSV, JSON lines or parquet) or the generated default.

A split holds raw texts until the run's tokenizer is known; `tokenize()` then encodes each
split once (batched, by the fast tokenizer) and a sample becomes one long tensor of shape
(2, length): token ids and token type ids. `collate_texts` pads a batch to its longest
sample (dynamic padding), so the model input is one (batch, 2, length) tensor that the engine
moves, shards and checkpoints like an image batch; the attention mask is `ids != pad`.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from finetune.data.splits import Splits, stratified_split
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


class TextSamples(Dataset):
    """Texts (and optional second texts of a pair) with class labels; encoded by `tokenize`."""

    def __init__(self, texts: list[str], pairs: list[str] | None, labels: torch.Tensor) -> None:
        self.texts, self.pairs, self.labels = texts, pairs, labels
        self.encoded: list[torch.Tensor] | None = None
        self.lengths: torch.Tensor | None = None  # tokens per sample (length_grouped sorts them)
        self.transform: Any = None  # the engine sets one on every split; texts need none

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.encoded is None:
            raise FinetuneError("texts are not tokenized yet (call finetune.data.text.tokenize)")
        return self.encoded[index], int(self.labels[index])


def tokenize(
    dataset: TextSamples, tokenizer: Any, max_length: int, cache_dir: str | None = None
) -> None:
    """Encode every text once: ids and token type ids, truncated to `max_length` tokens.

    With `cache_dir` the tokens come from, or go to, a file keyed by the texts, the tokenizer
    and max_length (data/token_cache.py), so the next run of a sweep does not tokenize again.
    """
    from finetune.data.token_cache import load_tokens, save_tokens, token_key

    path = None
    if cache_dir:
        key = token_key(dataset.texts, dataset.pairs, tokenizer, max_length)
        path = Path(cache_dir).expanduser() / f"{key}.safetensors"
        cached = load_tokens(path)
        if cached is not None and len(cached) == len(dataset.texts):
            log.info("Tokens from the cache: %s", path)
            set_encoded(dataset, cached)
            return
    set_encoded(dataset, encode(dataset.texts, dataset.pairs, tokenizer, max_length))
    if path is not None:
        save_tokens(path, dataset.encoded)
        log.info("Tokens cached in %s", path)


def encode(
    texts: list[str], pairs: list[str] | None, tokenizer: Any, max_length: int
) -> list[torch.Tensor]:
    """(2, length) long tensors: token ids and token type ids (one batched call)."""
    encoded = tokenizer(
        texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=True
    )
    return [
        torch.tensor([ids, types], dtype=torch.long)
        for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True)
    ]


def set_encoded(dataset: TextSamples, samples: list[torch.Tensor]) -> None:
    dataset.encoded = samples
    dataset.lengths = torch.tensor([sample.shape[1] for sample in samples])


def collate_texts(batch: list[tuple[torch.Tensor, int]], pad_id: int) -> tuple[Any, ...]:
    """Pad to the batch's longest sample: (batch, 2, length) ids and types, and labels."""
    length = max(sample.shape[1] for sample, *_ in batch)
    packed = torch.zeros(len(batch), 2, length, dtype=torch.long)
    packed[:, 0] = pad_id
    for row, (sample, *_) in enumerate(batch):
        packed[row, :, : sample.shape[1]] = sample
    rest = [torch.as_tensor([item[i] for item in batch]) for i in range(1, len(batch[0]))]
    return (packed, *rest)


def text_splits_from(
    texts: list[str], pairs: list[str] | None, labels: list[str], cfg: DictConfig, seed: int
) -> Splits:
    """Check the texts and labels, name the classes (sorted), split stratified and seeded."""
    check_texts(texts, "data.text_column")
    if pairs is not None:
        check_texts(pairs, "data.text_pair_column")
    class_names = sorted(set(labels))
    if len(class_names) < 2:
        raise FinetuneError(
            f"every label in data.label_column is {class_names[0]!r}: a classifier needs at "
            "least 2 classes; check data.label_column or add examples of other classes"
        )
    targets = torch.tensor([class_names.index(label) for label in labels])
    train, val, test = stratified_split(targets.numpy(), cfg, seed)

    def subset(idx: np.ndarray) -> TextSamples:
        chosen = idx.tolist()
        second = [pairs[i] for i in chosen] if pairs is not None else None
        return TextSamples([texts[i] for i in chosen], second, targets[idx])

    chosen = {"train": train, "val": val, "test": test}
    return Splits(
        subset(train),
        subset(val),
        subset(test),
        class_names,
        "text",
        indices={name: idx.tolist() for name, idx in chosen.items()},
    )


def check_texts(texts: list[str], column: str) -> None:
    empty = [row for row, text in enumerate(texts, start=1) if not text.strip()]
    if empty:
        raise FinetuneError(
            f"{column} has {len(empty)} empty text(s) (first at data row {empty[0]}); "
            "remove those rows or fill them"
        )


def text_table_splits(cfg: DictConfig, seed: int) -> Splits:
    """`data.path`: a CSV, JSON-lines or parquet table: a text, a label, an optional pair column."""
    rows = read_table(cfg.path)
    columns = [cfg.text_column, cfg.label_column] + (
        [cfg.text_pair_column] if cfg.text_pair_column else []
    )
    present = list(rows[0])
    for column in columns:
        if column not in present:
            raise FinetuneError(
                f"data.path={cfg.path} has no column {column!r}; its columns are {present} "
                "(set data.text_column, data.label_column or data.text_pair_column)"
            )
    texts = [str(row[cfg.text_column] or "") for row in rows]
    pairs = [str(row[cfg.text_pair_column] or "") for row in rows] if cfg.text_pair_column else None
    labels = [str(row[cfg.label_column]) for row in rows]
    return text_splits_from(texts, pairs, labels, cfg, seed)


def read_table(path_text: str | None) -> list[dict[str, Any]]:
    """The rows of a .csv, .tsv, .jsonl or .parquet file; one line naming what is wrong."""
    if not path_text:
        raise FinetuneError("data=text_table needs data.path=FILE (.csv, .tsv, .jsonl or .parquet)")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise FinetuneError(f"data.path={path_text} is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".ndjson"):
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        elif suffix == ".parquet":
            rows = read_parquet(path)
        else:
            raise FinetuneError(
                f"data.path={path_text} is not a table this reads: use .csv, .tsv, .jsonl or "
                ".parquet"
            )
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, ValueError) as error:
        raise FinetuneError(f"data.path={path_text} is not a readable table: {error}") from None
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise FinetuneError(f"data.path={path_text} has no table rows (a header and data lines)")
    return rows


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """A parquet file's rows (pyarrow, imported only for parquet tables)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def prediction_texts(
    spec: str, data_cfg: DictConfig, class_names: list[str]
) -> tuple[list[str], list[str | None]]:
    """predict's `input=`: a .txt file (one text a line) or a table with the run's text column
    (and, when it has the run's label column, the true labels)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise FinetuneError(f"input={spec} holds no text (one text a line)")
        return texts, [None] * len(texts)
    rows = read_table(spec)
    if data_cfg.text_column not in rows[0]:
        raise FinetuneError(
            f"input={spec} has no column {data_cfg.text_column!r} (the run's data.text_column); "
            f"its columns are {list(rows[0])}"
        )
    texts = [str(row[data_cfg.text_column] or "") for row in rows]
    check_texts(texts, f"input={spec} column {data_cfg.text_column}")
    truths = [row.get(data_cfg.label_column) for row in rows]
    truths = [None if truth in (None, "") else str(truth) for truth in truths]
    unknown = sorted({t for t in truths if t is not None and t not in class_names})
    if unknown:
        raise FinetuneError(
            f"input={spec} has labels {unknown[:5]} that are not the model's classes {class_names}"
        )
    return texts, truths


def collate_predict(batch: list[tuple[torch.Tensor, int]], pad_id: int) -> dict[str, Any]:
    """predict's batch: padded inputs, their indices (the labels slot carries them), no errors."""
    packed, indices = collate_texts(batch, pad_id)
    return {"images": packed, "indices": indices.tolist(), "errors": []}
