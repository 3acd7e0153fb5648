"""GENERATED product reviews (negative, neutral, positive): the text default, made offline.

No installed package ships a small real labelled text set (scikit-learn's 20 newsgroups and
nltk's corpora are downloads; `datasets` ships none: its hub sets are downloads too), so the
embedded text default is generated, and named so: `data=synthetic_reviews`. Each review is a
seeded template sentence about a product. Its label is the sentiment of its opinion word,
flipped by a negation before it ("not great" is negative, "not bad" positive); neutral reviews
state facts with no opinion word. Word order therefore matters (a bag of words cannot tell
"not great" from "great"), and `label_noise` of the labels are redrawn at random, so no model
reaches 100%.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from finetune.data.splits import Splits
from finetune.data.text import text_splits_from

CLASSES = ("negative", "neutral", "positive")
POSITIVE = ("great", "excellent", "good", "lovely", "reliable", "superb", "handy", "solid")
NEGATIVE = ("bad", "terrible", "awful", "flimsy", "useless", "poor", "broken", "noisy")
PRODUCTS = ("kettle", "lamp", "backpack", "phone case", "blender", "chair", "headset", "drill")
OPENERS = ("honestly", "overall", "after a week", "so far", "to be fair", "in short", "well")
FACTS = (
    "arrived on {day} in a {colour} box",
    "comes in {colour} and weighs about {n} hundred grams",
    "was delivered on {day} with {n} spare parts",
    "has a {colour} cable and {n} buttons",
)
DAYS = ("monday", "tuesday", "friday", "the weekend")
COLOURS = ("grey", "blue", "white", "black", "green")


def synthetic_reviews_splits(cfg: DictConfig, seed: int) -> Splits:
    """`data.size` generated reviews (seeded by `data.generator_seed`, not the run's seed)."""
    rng = np.random.default_rng(cfg.generator_seed)
    texts, labels = [], []
    weights = np.asarray(cfg.class_weights, dtype=float)
    for _ in range(cfg.size):
        label = CLASSES[rng.choice(len(CLASSES), p=weights / weights.sum())]
        texts.append(review(rng, label, cfg.negation))
        if rng.random() < cfg.label_noise:
            label = CLASSES[rng.integers(len(CLASSES))]
        labels.append(label)
    return text_splits_from(texts, None, labels, cfg, seed)


def review(rng: np.random.Generator, label: str, negation: float) -> str:
    """One review whose opinion (or its absence) is `label`."""
    product = pick(rng, PRODUCTS)
    opener = pick(rng, OPENERS)
    if label == "neutral":
        fact = pick(rng, FACTS).format(
            day=pick(rng, DAYS), colour=pick(rng, COLOURS), n=int(rng.integers(2, 9))
        )
        return f"{opener}, the {product} {fact}."
    negated = rng.random() < negation
    words = POSITIVE if (label == "positive") != negated else NEGATIVE
    opinion = f"{'not ' if negated else ''}{pick(rng, words)}"
    if rng.random() < 0.5:
        return f"{opener}, this {product} is {opinion}."
    return f"the {product} is {opinion}."


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]
