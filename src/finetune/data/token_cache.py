"""Tokens kept on disk (`data.token_cache=true`): each run of a sweep tokenizes its texts once.

A split's tokens are a function of its texts, the tokenizer and `data.max_length`, so the file is
named by a hash of exactly those (the tokenizer by its serialized json: vocabulary, normalizer,
templates), like the feature cache's key (models/features.py). A changed text, tokenizer or
length makes a new file; nothing is ever updated in place. The file is data, never code: a
safetensors file of the concatenated (ids, token types) and each text's offset, written
atomically (a crash leaves no half file that a later run would read).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from finetune.safety.atomic import atomic_write

log = logging.getLogger(__name__)

# Bump when what a file holds, or how the tokenizer is called, changes.
FORMAT = 1


def token_key(texts: list[str], pairs: list[str] | None, tokenizer: Any, max_length: int) -> str:
    """A hash of what decides the tokens: the texts (and pairs), the tokenizer, max_length."""
    digest = hashlib.sha256(f"tokens v{FORMAT}\n{max_length}\n".encode())
    digest.update(tokenizer_json(tokenizer).encode())
    digest.update(f"\n{tokenizer.truncation_side}\n{len(texts)}\n".encode())
    for column in (texts, pairs or []):
        for text in column:
            digest.update(text.encode())
            digest.update(b"\0")
        digest.update(b"\1")
    return digest.hexdigest()[:24]


def tokenizer_json(tokenizer: Any) -> str:
    """The tokenizer's serialized json without its call state: transformers sets truncation
    and padding on the backend at each call (max_length is in the key on its own)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def load_tokens(path: Path) -> list[torch.Tensor] | None:
    """The (2, length) samples a cache file holds; None when it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        stored = load_file(path)
        tokens, offsets = stored["tokens"].long(), stored["offsets"].tolist()
    except (SafetensorError, KeyError, OSError) as error:
        log.warning("Token cache %s is unreadable (%s); tokenizing again", path, error)
        return None
    return [tokens[:, start:end] for start, end in zip(offsets, offsets[1:], strict=False)]


def save_tokens(path: Path, samples: list[torch.Tensor]) -> None:
    """All samples in one (2, total) int32 tensor, with the offsets that cut it back."""
    from safetensors.torch import save

    lengths = torch.tensor([0] + [sample.shape[1] for sample in samples])
    stored = {
        "tokens": torch.cat(samples, dim=1).to(torch.int32).contiguous(),
        "offsets": lengths.cumsum(0),
    }
    blob = save(stored)
    atomic_write(path, lambda handle: handle.write(blob))
