"""Write an imbalanced image folder from scikit-learn's digits, to try the imbalance options.

    python scripts/imbalanced_digits.py DIR [--ratio 10] [--big 100]

DIR/train has --big images of each of the digits 0-4 and --big/--ratio of 5-9; DIR/val (25 a
class) and DIR/test (50 a class) stay balanced, so their accuracy and balanced
accuracy judge every class alike. Then, e.g.:

    python train.py data=image_folder data.root=DIR data.image_size=32 data.sampler=weighted
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

VAL_PER_CLASS = 25


def write_split(root: Path, split: str, label: int, images: np.ndarray) -> None:
    folder = root / split / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray((image * 255 / 16).astype("uint8")).save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--ratio", type=int, default=10, help="big class size / small class size")
    parser.add_argument("--big", type=int, default=100, help="training images of digits 0-4")
    args = parser.parse_args()
    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        images = digits.images[rng.permutation(np.flatnonzero(digits.target == label))]
        train_size = args.big if label < 5 else args.big // args.ratio
        write_split(args.root, "val", label, images[:VAL_PER_CLASS])
        write_split(args.root, "test", label, images[VAL_PER_CLASS : 2 * VAL_PER_CLASS + 25])
        write_split(args.root, "train", label, images[2 * VAL_PER_CLASS + 25 :][:train_size])
    print(f"wrote {args.root}: train {args.big} x 5 and {args.big // args.ratio} x 5 images")


if __name__ == "__main__":
    main()
