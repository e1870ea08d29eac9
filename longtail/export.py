"""Export a trained run for deployment: the model as it predicts, as ONNX, TorchScript or a torch.export
program.

The exported graph maps a preprocessed float32 batch ``images`` (N, 3, S, S) to the prediction's ``logits``
(N, C): the recipe's prediction head (DeiT-LT's mean of its heads, SHIKE's active heads, ...) and, for RIDE
after its router stage, every expert with the router's choices applied as masks (the routed logits of
``longtail eval``; the export computes all experts, and only the choices are kept). The batch size stays
free. The metadata (class names, the preprocessing, the run) is stored in the file (ONNX ``metadata_props``
key ``longtail``, the TorchScript / torch.export archive's ``extra/longtail.json``) and beside it as
``OUT.json``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail.data.loaders import preprocessing
from longtail.errors import LongtailError
from longtail.methods.runs import TrainedModel, load_trained_model

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torch-export": ".pt2"}
METADATA_KEY = "longtail"
EXAMPLE_BATCH = 2
ONNX_OPSET = 18


class PredictionModel(nn.Module):
    """``images`` (N, 3, S, S) -> the run's prediction logits (N, C), float32."""

    def __init__(self, run: TrainedModel) -> None:
        super().__init__()
        self.model = run.model
        self.method = run.method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.exportable_logits(self.model, images).float()


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    metadata_path: Path
    metadata: dict[str, Any]


def config_name(run: TrainedModel) -> str:
    return f"Method '{run.config.method.name}' with model '{run.config.model.name}'"


def metadata(run: TrainedModel, source: Path, fmt: str) -> dict[str, Any]:
    """What a deployment needs besides the graph: the input it takes, the classes it predicts, the run."""
    info = run.info
    return {
        "format": fmt,
        "input": {"name": "images", "shape": ["N", 3, info.image_size, info.image_size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", info.num_classes], "meaning": "softmax gives probabilities"},
        "preprocessing": preprocessing(info),
        "class_names": list(info.class_names),
        "dataset": info.name,
        "method": run.config.method.name,
        "model": run.config.model.name,
        "checkpoint": str(source),
        "stage": run.state.get("stage"),
        "epoch": run.state.get("epoch"),
    }


def export_run(source: str | Path, out: str | Path | None = None, fmt: str = "onnx") -> ExportedModel:
    """Export the run directory or checkpoint ``source`` to ``out`` (default: beside the checkpoint, named
    ``model`` with the format's suffix) and write its metadata to ``out`` + ``.json``."""
    if fmt not in FORMATS:
        raise LongtailError(f"Unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    source = Path(source)
    run = load_trained_model(source, "cpu")
    out = Path(out) if out is not None else (source if source.is_dir() else source.parent) / f"model{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = metadata(run, source, fmt)
    module = PredictionModel(run).eval()
    example = torch.zeros(EXAMPLE_BATCH, 3, run.info.image_size, run.info.image_size)
    text = json.dumps(info, indent=2)
    writer = {"onnx": _onnx, "torchscript": _torchscript, "torch-export": _torch_export}[fmt]
    try:
        with torch.no_grad():
            writer(module, example, out, text)
    except LongtailError:
        raise
    except Exception as error:  # noqa: BLE001  (tracers raise many types; each means the same to the user)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        others = ", ".join(name for name in FORMATS if name != fmt)
        raise LongtailError(f"{config_name(run)} could not be exported as {fmt} ({reason}); try --format "
                            f"{others}.") from None
    metadata_path = out.with_name(out.name + ".json")
    metadata_path.write_text(text + "\n")
    return ExportedModel(out, metadata_path, info)


def _program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})


def _onnx(module: nn.Module, example: torch.Tensor, out: Path, text: str) -> None:
    try:  # optional packages, needed only for this format
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise LongtailError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript "
                            "(or `pip install -e '.[export]'` in a checkout).") from None
    # onnxruntime optimises the graph when it loads it, so the exporter's own (slow) optimisation is skipped.
    exported = torch.onnx.export(
        _program(module, example), input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET,
        dynamo=True, optimize=False, verbose=False,
    )
    model = exported.model_proto
    onnx.helper.set_model_props(model, {METADATA_KEY: text})
    onnx.save(model, out)


def _torchscript(module: nn.Module, example: torch.Tensor, out: Path, text: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)  # deprecated in torch, still loadable
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": text})


def _torch_export(module: nn.Module, example: torch.Tensor, out: Path, text: str) -> None:
    torch.export.save(_program(module, example), out, extra_files={f"{METADATA_KEY}.json": text})
