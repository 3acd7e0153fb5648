"""Precision and compile: what each setting becomes on the device at hand."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from finetune.engine import precision
from finetune.safety.errors import FinetuneError

CPU = torch.device("cpu")


def test_precision_names_map_to_autocast_dtypes() -> None:
    assert precision.autocast_dtype(32, CPU) is None
    assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(FinetuneError, match="trainer.precision=8 must be one of 32, bf16, 16"):
        precision.autocast_dtype(8, CPU)


def test_fp16_on_cpu_falls_back_to_bf16_and_says_so(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert precision.autocast_dtype("16", CPU) is torch.bfloat16
    assert "trainer.precision=16 is not supported on CPU: using bf16" in caplog.text
    assert precision.grad_scaler(CPU, torch.bfloat16) is None  # a scaler only for fp16 on CUDA


def test_compile_off_returns_the_model_itself() -> None:
    model = nn.Linear(2, 2)
    assert precision.maybe_compile(model, False, CPU) is model


def test_without_a_cpp_compiler_compile_warns_once_and_stays_eager(monkeypatch, caplog) -> None:
    from torch._inductor import cpp_builder

    def no_compiler() -> str:
        raise RuntimeError("InvalidCxxCompiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    precision.warn_eager.cache_clear()
    model = nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING):
        assert precision.maybe_compile(model, True, CPU) is model
        assert precision.maybe_compile(model, True, CPU) is model  # a thaw wraps again
    assert caplog.text.count("no C++ compiler found (install g++, or set CXX)): eager mode") == 1


def test_compile_wraps_the_model_where_inductor_can_build(monkeypatch) -> None:
    monkeypatch.setattr(precision, "compile_unavailable", lambda device: None)
    model = nn.Linear(2, 2)
    compiled = precision.maybe_compile(model, True, CPU)  # lazy: nothing compiles until a call
    assert compiled is not model and compiled._orig_mod is model


@pytest.mark.parametrize("native", [True, False])
def test_emulated_bf16_is_named_as_slower_than_fp32(monkeypatch, caplog, native) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    with caplog.at_level(logging.WARNING):
        assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert ("no native bf16" in caplog.text) is not native
    assert ("trainer.precision=32 is faster here" in caplog.text) is not native
