"""`longtail export`: the exported model (ONNX through onnxruntime, TorchScript, torch.export) predicts like
the checkpoint, RIDE's routing included, and carries its preprocessing and class names."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from longtail.cli.main import main
from longtail.methods.ride import RIDE, ROUTER, masked_routed_logits, routed_forward
from longtail.methods.runs import load_trained_model
from longtail.methods.context import create_datasets_for

TINY_RIDE = ["budget=2", "data.imbalance=100", "data.val_per_class=2", "data.args.image_size=8",
             "train.progress=false"]
BATCH = 7  # not the batch size the export traced with

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def ride_run(tmp_path_factory):
    """digits-ride (3 experts and the router stage), compressed to seconds."""
    run_dir = tmp_path_factory.mktemp("export") / "ride"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--recipe", "digits-ride", *TINY_RIDE, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def checkpoint(ride_run):
    return load_trained_model(ride_run)


@pytest.fixture(scope="module")
def test_batch(checkpoint) -> torch.Tensor:
    """Preprocessed test images, as the evaluation loader makes them."""
    test = create_datasets_for(checkpoint.config).test
    images = torch.stack([test[i][0] for i in range(BATCH)]).float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in (checkpoint.info.mean, checkpoint.info.std))
    return (images - mean) / std


def _expected(checkpoint, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint.method.predict(checkpoint.model, images).logits.float()


def _export(run_dir, fmt: str, out) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(run_dir), "--format", fmt, "--output", str(out)]) == 0
    return printed.getvalue()


def test_onnx_predicts_like_the_checkpoint(ride_run, checkpoint, test_batch, tmp_path):
    import onnx
    import onnxruntime

    printed = _export(ride_run, "onnx", tmp_path / "ride.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "ride.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": test_batch.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), _expected(checkpoint, test_batch), rtol=1e-4, atol=1e-4)

    stored = {prop.key: prop.value for prop in onnx.load(str(tmp_path / "ride.onnx")).metadata_props}
    metadata = json.loads(stored["longtail"])
    assert metadata == json.loads((tmp_path / "ride.onnx.json").read_text())
    assert metadata["class_names"] == checkpoint.info.class_names
    assert metadata["preprocessing"]["resize"] == [8, 8]
    assert metadata["preprocessing"]["mean"] == list(checkpoint.info.mean)
    assert "resize to 8x8" in printed and "softmax" in printed


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "torch-export"])
def test_torch_formats_predict_like_the_checkpoint(fmt, ride_run, checkpoint, test_batch, tmp_path):
    out = tmp_path / f"ride.{fmt}"
    _export(ride_run, fmt, out)
    extra = {"longtail.json": ""}
    if fmt == "torchscript":
        predict = torch.jit.load(str(out), _extra_files=extra)
    else:
        predict = torch.export.load(out, extra_files=extra).module()
    torch.testing.assert_close(predict(test_batch), _expected(checkpoint, test_batch), rtol=1e-4, atol=1e-4)
    assert json.loads(extra["longtail.json"])["class_names"] == checkpoint.info.class_names


def test_masked_routing_matches_routed_forward_when_the_router_splits_a_batch(checkpoint, test_batch):
    network = checkpoint.model
    router = getattr(network, ROUTER)
    with torch.no_grad():
        logits, features = network.forward_expert(network.forward_trunk(test_batch), 0)
        scores = router(0, logits.float(), features)
        threshold = torch.sigmoid(scores.median()).item()  # about half the images go on to expert 1
        routed = routed_forward(network, router, test_batch, threshold)
        masked = masked_routed_logits(network, router, test_batch, threshold)
    assert 0 < (routed.num_experts > 1).sum() < BATCH
    torch.testing.assert_close(masked, routed.logits, rtol=1e-5, atol=1e-5)


def test_a_model_that_cannot_be_traced_gives_one_line(ride_run, tmp_path, monkeypatch, capsys):
    def untraceable(self, model, images):
        raise RuntimeError("data-dependent control flow\nlong tracer detail")

    monkeypatch.setattr(RIDE, "exportable_logits", untraceable)
    assert main(["export", str(ride_run), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "could not be exported as torchscript (data-dependent control flow)" in error
    assert "try --format onnx, torch-export" in error
