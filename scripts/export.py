"""Export a trained checkpoint with its architecture, no pickle: TorchScript, torch.export, ONNX.

    python scripts/export.py outputs/2026-11-26/23-20-00            # run dir or checkpoint
    python scripts/export.py CKPT --out exported/ --formats torchscript export onnx

Each export is loaded back and checked against the checkpoint's model on a batch: the script
fails if any output differs by more than --atol.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from finetune.engine.evaluation import checkpoint_path, model_from_checkpoint
from finetune.models.weights import safe_torch_load

FORMATS = ("torchscript", "export", "onnx")


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path) -> torch.Tensor:
    path = out / "model.torchscript.pt"
    torch.jit.save(torch.jit.trace(model, example), str(path))
    return torch.jit.load(str(path))(example)


def export_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> torch.Tensor:
    path = out / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()(example)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> torch.Tensor | None:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        print("onnx: skipped (pip install onnx onnxruntime onnxscript to export and check it)")
        return None
    import onnxruntime

    path = out / "model.onnx"
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": example.numpy()})[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint file or a run directory (its best.pt)")
    parser.add_argument("--out", type=Path, default=None, help="default: <run>/export/")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--batch", type=int, default=4, help="batch size of the check")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)

    path = checkpoint_path(args.ckpt)
    model, prep, _ = model_from_checkpoint(safe_torch_load(path), str(path))
    out = args.out or path.parent.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(args.batch, 3, prep.image_size, prep.image_size)
    with torch.no_grad():
        expected = model(example)
    exporters = {"torchscript": export_torchscript, "export": export_program, "onnx": export_onnx}
    failed = False
    for name in args.formats:
        with torch.no_grad():
            got = exporters[name](model, example, out)
        if got is None:
            continue
        error = (got - expected).abs().max().item()
        ok = error <= args.atol
        failed |= not ok
        print(f"{name}: max |difference| {error:.2e} {'ok' if ok else 'MISMATCH'} -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    import logging

    from finetune.safety.errors import exit_on_user_error

    logging.basicConfig(format="%(message)s")
    with exit_on_user_error():  # a bad or untrusted checkpoint: one line and exit status 2
        sys.exit(main())
