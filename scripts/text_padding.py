"""How much of a text training epoch is padding, with each `data.sampler`?

    python scripts/text_padding.py                                  # the embedded default
    python scripts/text_padding.py --write-varied /tmp/varied.csv   # a table of varied lengths
    python scripts/text_padding.py data=text_table data.path=/tmp/varied.csv data.max_length=128

For each sampler (random, length_grouped) it builds the run's training loader as train.py does
(the splits, a word-level tokenizer trained on the training texts, text_loaders) and counts, over
one epoch, pad tokens / all tokens of the padded batches the model sees. No model runs; the
samples/s of real epochs are in train.log (`python train.py ... trainer.epochs=1`).

`--write-varied FILE` writes a labelled table whose texts run from one sentence to a dozen (one
generated review followed by 0 to 11 neutral fact sentences; the review's label), the kind of
data where grouping by length matters.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"


def padding_share(overrides: list[str], sampler: str) -> tuple[float, int]:
    """pad tokens / all tokens over one training epoch, and the number of batches."""
    from finetune.data.datasets import build_splits
    from finetune.data.text_loaders import text_loaders
    from finetune.models.hf_text import train_word_level

    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(
            "train",
            ["task=text_classification", *overrides, f"data.sampler={sampler}"]
            + ["data.token_cache=false"],
        )
    splits = build_splits(cfg.data, cfg.seed)
    tokenizer = train_word_level(list(splits.train.texts), cfg.model.vocab_size)
    loader = text_loaders(cfg.data, splits, tokenizer, cfg.seed)["train"]
    loader.sampler.set_epoch(1)
    pad = total = batches = 0
    for packed, _ in loader:
        ids = packed[:, 0]
        pad += int((ids == tokenizer.pad_token_id).sum())
        total += ids.numel()
        batches += 1
    return pad / total, batches


def write_varied(path: Path, size: int = 1200, seed: int = 0) -> None:
    from finetune.data.synthetic_reviews import CLASSES, review

    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(size):
            label = CLASSES[rng.choice(3, p=[0.5, 0.3, 0.2])]
            facts = [review(rng, "neutral", 0.0) for _ in range(int(rng.integers(0, 12)))]
            writer.writerow([" ".join([review(rng, label, 0.2), *facts]), label])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-varied", type=Path, help="write a table of varied lengths")
    args, overrides = parser.parse_known_args()
    if args.write_varied:
        write_varied(args.write_varied)
        print(f"wrote {args.write_varied}")
        return
    for sampler in ("random", "length_grouped"):
        share, batches = padding_share(overrides, sampler)
        print(f"data.sampler={sampler:15s} padding {share:6.1%} of tokens over {batches} batches")


if __name__ == "__main__":
    sys.exit(main())
