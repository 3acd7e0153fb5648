"""Text classification: one class per text (or text pair), a transformers sequence classifier.

The model comes from the hf_text source (models/hf_text.py) with its tokenizer: the model's
own, or one trained on the training split (`model.tokenizer=train`), which is why this task
sees the data (`attach`) before it builds the model. Loss, metrics, decisions and prediction
rows are single-label classification's; the loaders tokenize once and pad each batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from finetune.safety.errors import FinetuneError
from finetune.tasks.classification import Classification

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from finetune.data import Preprocessing, Splits
    from finetune.data.inputs import InputFiles
    from finetune.engine.distributed import DistInfo
    from finetune.models.factory import ModelInfo
    from finetune.records.predictions import Predictions

# Where a run keeps the tokenizer it trained (model.tokenizer=train), in its run directory.
TOKENIZER_FILE = "tokenizer.json"


class TextClassification(Classification):
    tokenizer: Any = None

    def report_exhibits(self) -> Any:
        """The report lists the misclassified texts (records/text_report.py)."""
        from finetune.records.text_report import TextExhibits

        return TextExhibits(int(self.tokenizer.pad_token_id))

    @property
    def sees_images(self) -> bool:
        return False

    def attach(self, splits: Splits) -> None:
        """The tokenizer: the model's, or trained on the training texts."""
        from finetune.models.hf_text import tokenizer_for

        if splits.kind != "text":
            raise FinetuneError(
                f"task=text_classification needs a text data set (data=synthetic_reviews, "
                f"data=text_table or data=hf_dataset), not data={self.cfg.data.name}"
            )
        saved = Path(self.cfg.paths.output_dir) / TOKENIZER_FILE
        self.tokenizer = tokenizer_for(self.cfg.model, list(splits.train.texts), saved)

    def reopen(self, run_dir: Path) -> None:
        """The tokenizer of a finished run, for eval, predict and load_model."""
        from finetune.models.hf_text import load_tokenizer, saved_tokenizer

        model_cfg = self.cfg.model
        if model_cfg.tokenizer == "train":
            self.tokenizer = saved_tokenizer(run_dir / TOKENIZER_FILE)
        else:
            self.tokenizer = load_tokenizer(str(model_cfg.tokenizer or model_cfg.name))

    def build_model(self, model_cfg: DictConfig) -> tuple[nn.Module, ModelInfo]:
        from finetune.models.hf_text import build_text

        if model_cfg.source != "hf_text":
            raise FinetuneError(
                f"task=text_classification needs a text model (model=tiny_bert or "
                f"model=hf_text), not model.source={model_cfg.source}"
            )
        return build_text(model_cfg, self.num_outputs, self.tokenizer)

    def data_loaders(
        self,
        cfg: DictConfig,
        splits: Splits,
        prep: Preprocessing,
        device: torch.device,
        rank: DistInfo,
    ) -> dict[str, DataLoader]:
        """Each split tokenized once, in seeded batches padded to their longest text."""
        from finetune.data.text_loaders import text_loaders

        return text_loaders(cfg.data, splits, self.tokenizer, cfg.seed, rank)

    def preprocessing(self, model_info: ModelInfo, data_cfg: DictConfig) -> Preprocessing:
        """No pixels: a placeholder that only image records would read."""
        from finetune.data import Preprocessing

        return Preprocessing(0, (0.0,), (1.0,), "none")

    def example_input(self, prep: Preprocessing) -> torch.Tensor:
        """One short text: [CLS] [SEP] and token types 0."""
        ids = self.tokenizer("")["input_ids"]
        return torch.stack([torch.tensor([ids]), torch.zeros(1, len(ids), dtype=torch.long)], 1)

    def pictures(self, predictions: Predictions, images: int, epoch: int) -> dict[str, Any]:
        """The confusion matrix (texts make no image grid)."""
        return super().pictures(predictions, 0, epoch)

    def tables(self, predictions: Predictions, rows: int) -> dict[str, Any]:
        """The misclassified validation texts, most confidently wrong first (up to `rows`)."""
        wrong = (predictions.preds != predictions.targets).nonzero().flatten().tolist()
        if not rows or not predictions.tokens:
            return {}
        wrong.sort(key=lambda i: -float(predictions.confidence[i]))
        pad = int(self.tokenizer.pad_token_id)
        table = []
        for i in wrong[:rows]:
            ids = predictions.tokens[i][0]
            text = self.tokenizer.decode(ids[ids != pad].tolist(), skip_special_tokens=True)
            truth, decision = predictions.targets[i], predictions.preds[i]
            confidence = round(float(predictions.confidence[i]), 4)
            table.append([text, self.label_text(truth), self.label_text(decision), confidence])
        return {"val/misclassified": (["text", "true", "predicted", "probability"], table)}

    def prediction_inputs(
        self, spec: str, prep: Preprocessing, data_cfg: DictConfig, settings: DictConfig
    ) -> tuple[InputFiles, DataLoader]:
        """A .txt file (one text a line) or a table with the run's text column, tokenized."""
        from functools import partial

        from torch.utils.data import DataLoader

        from finetune.data.inputs import InputFiles
        from finetune.data.text import TextSamples, collate_predict, prediction_texts, tokenize

        texts, truths = prediction_texts(spec, data_cfg, self.class_names)
        samples = TextSamples(texts, None, torch.arange(len(texts)))  # labels: the indices
        tokenize(samples, self.tokenizer, data_cfg.max_length)
        loader = DataLoader(
            samples,
            batch_size=settings.batch_size,
            collate_fn=partial(collate_predict, pad_id=int(self.tokenizer.pad_token_id)),
        )
        return InputFiles([], texts, truths), loader

    def prediction_rows(
        self, names: list[str], probabilities: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """text, then the top-k classes and their probabilities, best first."""
        rows = super().prediction_rows(names, probabilities, top_k)
        return [{"text": row.pop("file"), **row} for row in rows]
