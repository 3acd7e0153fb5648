"""data.token_cache: a split's tokens are kept on disk keyed by its texts, the tokenizer and
max_length; the next run reads them (and says so) and they equal a fresh tokenization."""

from __future__ import annotations

import logging

import pytest
import torch

from finetune.data.text import TextSamples, tokenize
from finetune.models.hf_text import train_word_level

TEXTS = [f"the {w} number {i} is {'not ' * (i % 3)}good." for i, w in enumerate("abcdefgh")]


@pytest.fixture(scope="module")
def tokenizer():
    return train_word_level(TEXTS, 100)


def samples(texts: list[str] = TEXTS) -> TextSamples:
    return TextSamples(list(texts), None, torch.zeros(len(texts), dtype=torch.long))


def tokenized(tokenizer, cache, max_length: int = 16, texts: list[str] = TEXTS) -> TextSamples:
    dataset = samples(texts)
    tokenize(dataset, tokenizer, max_length, str(cache))
    return dataset


def test_a_second_run_reads_the_cache_and_gets_the_fresh_tokens(tokenizer, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="finetune.data.text")
    first = tokenized(tokenizer, tmp_path)
    assert "Tokens cached in" in caplog.text and "from the cache" not in caplog.text
    files = sorted(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"]  # data, no pickle; no temporary left
    caplog.clear()
    second = tokenized(tokenizer, tmp_path)
    assert f"Tokens from the cache: {files[0]}" in caplog.text
    fresh = samples()
    tokenize(fresh, tokenizer, 16)  # no cache
    for cached, new, old in zip(second.encoded, fresh.encoded, first.encoded, strict=True):
        assert cached.dtype == new.dtype == torch.long
        assert torch.equal(cached, new) and torch.equal(old, new)
    assert torch.equal(second.lengths, fresh.lengths)


def test_a_changed_text_or_max_length_or_tokenizer_makes_a_new_entry(tokenizer, tmp_path):
    tokenized(tokenizer, tmp_path)
    tokenized(tokenizer, tmp_path, max_length=5)
    tokenized(tokenizer, tmp_path, texts=[*TEXTS[:-1], "the h number 7 is good!"])
    tokenized(train_word_level(TEXTS[:4], 100), tmp_path)
    assert len(list(tmp_path.iterdir())) == 4
    short = tokenized(tokenizer, tmp_path, max_length=5)  # read back: still truncated
    assert max(sample.shape[1] for sample in short.encoded) == 5


def test_an_unreadable_cache_file_is_tokenized_again(tokenizer, tmp_path):
    tokenized(tokenizer, tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"not a safetensors file")
    again = tokenized(tokenizer, tmp_path)
    fresh = samples()
    tokenize(fresh, tokenizer, 16)
    assert all(torch.equal(a, b) for a, b in zip(again.encoded, fresh.encoded, strict=True))
