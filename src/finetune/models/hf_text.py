"""HuggingFace text classifiers: `model.source=hf_text`, AutoModelForSequenceClassification.

`model.name` is a hub id (distilbert-base-uncased), a local `save_pretrained` folder, or `tiny`:
a small BERT built from `model.config` (no weights), whose tokenizer is trained on the training
split with the `tokenizers` library (`model.tokenizer=train`). Otherwise the tokenizer is the
model's own (AutoTokenizer of `model.name`), or of `model.tokenizer` when that names another.

The model is wrapped so that it takes the one (batch, 2, length) tensor the text loaders make
(token ids and token type ids; data/text.py) and returns logits, as every source's model does.
The tokenizer rides on the wrapper (`model.tokenizer`, not a module) so that `<run>/hf` gets
both with save_pretrained, and `from_pretrained(<run>/hf)` opens the run in transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models import hf
from finetune.models.heads import find_head
from finetune.models.hf import LogitsModel, local_files_only, stages_of
from finetune.models.hf import loader_options as loader_options  # factory's check reads it
from finetune.models.source import ModelInfo, normalise_pretrained, weights_path
from finetune.models.weights import load_into, load_state_dict_file
from finetune.safety.errors import FinetuneError

TINY = "tiny"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TextLogitsModel(LogitsModel):
    """A sequence classifier taking packed (ids, token types) and returning logits."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ids, types = packed[:, 0], packed[:, 1]
        mask = (ids != self.pad_id).long()
        return self.model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def build(cfg: DictConfig, num_outputs: int) -> tuple[nn.Module, ModelInfo]:
    raise FinetuneError(
        f"model.source=hf_text ({cfg.name}) is a text model: use task=text_classification"
    )


def build_text(
    cfg: DictConfig, num_outputs: int, tokenizer: Any
) -> tuple[TextLogitsModel, ModelInfo]:
    """`cfg.name` with a `num_outputs` classifier, fitted to `tokenizer`, with its weights."""
    from transformers import AutoModelForSequenceClassification

    mode = normalise_pretrained(cfg.pretrained)
    labels = {index: str(index) for index in range(num_outputs)}  # named at save_native
    sized = {"num_labels": num_outputs, "id2label": labels, **as_dict(cfg.kwargs)}
    sized["label2id"] = {name: index for index, name in labels.items()}
    source, loaded, notes = "random init", False, []
    if cfg.name != TINY and mode in ("auto", "true"):
        local = local_files_only(cfg.name, mode)
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.name, ignore_mismatched_sizes=True, local_files_only=local, **sized
        )
        source, loaded = f"{'file' if Path(cfg.name).is_dir() else 'hub'}:{cfg.name}", True
    else:
        model = AutoModelForSequenceClassification.from_config(config_of(cfg, tokenizer, sized))
        if mode not in ("auto", "true", "false"):
            path = weights_path(mode)
            keyed = TextLogitsModel(model, tokenizer)
            head = find_head(keyed, num_outputs, cfg.head, cfg.name)
            notes = load_into(keyed, load_state_dict_file(path), str(path), head)
            source, loaded = f"file:{path.resolve()}", True
    check_tokenizer_fits(model, tokenizer, cfg)
    wrapped = TextLogitsModel(model, tokenizer)
    head = find_head(wrapped, num_outputs, cfg.head, cfg.name)
    info = ModelInfo(cfg.name, num_outputs, source, loaded, notes, "hf_text", head)
    info.preprocessing = {"mean": [0.0], "std": [1.0], "interpolation": "none"}
    info.stages = stages_of(wrapped, head)
    return wrapped, info


def config_of(cfg: DictConfig, tokenizer: Any, sized: dict[str, Any]) -> Any:
    """`tiny`: a BertConfig from `model.config`, sized to the tokenizer; else `name`'s config."""
    from transformers import AutoConfig, BertConfig

    if cfg.name == TINY:
        shape = as_dict(cfg.config)
        return BertConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape, **sized
        )
    return AutoConfig.from_pretrained(
        cfg.name, local_files_only=local_files_only(cfg.name, "false"), **sized
    )


def check_tokenizer_fits(model: nn.Module, tokenizer: Any, cfg: DictConfig) -> None:
    """Token ids past the model's embedding table would index out of range mid-run."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise FinetuneError(
            f"model.tokenizer={cfg.tokenizer} has {len(tokenizer)} tokens but {cfg.name} embeds "
            f"only {vocab}: the tokenizer does not match the model; use the model's own "
            "(model.tokenizer=null)"
        )


def tokenizer_for(cfg: DictConfig, train_texts: list[str], saved: Path) -> Any:
    """`model.tokenizer`: train (word-level, on the training texts), null (the model's) or a name.

    A trained tokenizer is kept in `saved` (the run's tokenizer.json) and read back from there
    on resume, by eval and by predict: the trainer numbers tokens differently in every process
    (a hash map's order), so training it again would not give the same token ids. Rank 0
    trains and writes it, the other ranks read it.
    """
    if cfg.tokenizer != "train":
        name = cfg.tokenizer or cfg.name
        if name == TINY:
            raise FinetuneError(
                "model.name=tiny has no tokenizer of its own: use model.tokenizer=train"
            )
        return load_tokenizer(str(name))
    from finetune.engine.distributed import barrier, dist_info

    if not saved.is_file() and dist_info().is_main:
        saved.parent.mkdir(parents=True, exist_ok=True)
        train_word_level(train_texts, cfg.vocab_size).backend_tokenizer.save(str(saved))
    barrier()
    return saved_tokenizer(saved)


def saved_tokenizer(path: Path) -> Any:
    """A tokenizer.json written by tokenizer_for, as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    if not path.is_file():
        raise FinetuneError(
            f"{path} is missing: the run's trained tokenizer (model.tokenizer=train) is kept "
            "there; evaluate or predict from the run directory the checkpoint came from"
        )
    return fast_tokenizer(PreTrainedTokenizerFast, tokenizer_file=str(path))


def fast_tokenizer(cls: Any, **source: Any) -> Any:
    return cls(
        **source,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=local_files_only(name, "true"))


def train_word_level(texts: list[str], vocab_size: int) -> Any:
    """A lowercasing BERT-normalised word-level tokenizer learnt from `texts` (deterministic).

    Word-level, not WordPiece: the tokenizers library's WordPiece trainer picks among equally
    frequent merges in a hash map's order, different in every process, so the same command
    trained different vocabularies (test accuracy 0.93 once, 0.78 the next time). Counting
    whole words has no such ties below `vocab_size`, and the tokens are numbered in a fixed
    order (canonical_vocab). A word unseen in training is [UNK].
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.model = models.WordLevel(canonical_vocab(tokenizer.get_vocab()), unk_token="[UNK]")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return fast_tokenizer(PreTrainedTokenizerFast, tokenizer_object=tokenizer)


def canonical_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """The trainer's tokens numbered in a fixed order: special tokens, then alphabetical.

    At the `vocab_size` limit, ties between equally frequent words may still fall either way,
    which is why a run keeps its tokenizer.json.
    """
    rest = sorted(token for token in vocab if token not in SPECIAL_TOKENS)
    return {token: index for index, token in enumerate([*SPECIAL_TOKENS, *rest])}


def as_dict(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True)) if node else {}


def save_native(
    model: nn.Module, info: ModelInfo, run_dir: Path, checkpoints: Path, classes: list[str]
) -> None:
    """<run>/hf: the model (as hf.save_native writes it) and its tokenizer, save_pretrained."""
    hf.save_native(model, info, run_dir, checkpoints, classes)
    model.tokenizer.save_pretrained(str(run_dir / "hf"))
