"""The converter's refusals of PyTorch files, run without the torch extra: a stand-in ``torch``
module raises what ``torch.load(weights_only=True)`` raises (its message's shape since PyTorch
2.6), so these run in every environment; tests/test_pretrained.py checks them with torch itself."""

import pickle
import sys
import types

import pytest

from faml_jax import pretrained

# The shape of torch's refusal of a file holding a pickled class: a first line saying the file can
# still be loaded, advice to retry with weights_only=False, then the class that was refused.
TORCH_REFUSAL = (
    "Weights only load failed. This file can still be loaded, to do so you have two options, do those steps "
    "only if you trust the source of the checkpoint.\n"
    "\t(1) Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can result "
    "in arbitrary code execution.\n"
    "\t(2) Alternatively, to load with `weights_only=True` please check the recommended steps below.\n"
    "\tWeightsUnpickler error: Unsupported global: GLOBAL mylab.models.Net was not an allowed global by default.\n"
)


def stand_in_torch(message: str) -> types.ModuleType:
    torch = types.ModuleType("torch")

    def load(path, map_location=None, weights_only=False):
        assert weights_only is True  # the converter never asks for anything else
        raise pickle.UnpicklingError(message)

    torch.load = load
    return torch


def test_a_pickled_object_is_refused_without_passing_on_torchs_advice(tmp_path, monkeypatch):
    (tmp_path / "net.pth").write_bytes(b"a pickle")
    monkeypatch.setitem(sys.modules, "torch", stand_in_torch(TORCH_REFUSAL))
    with pytest.raises(pretrained.ConversionError) as refused:
        pretrained.read_torch_state_dict(tmp_path / "net.pth")
    message = str(refused.value)
    assert message.startswith(
        f"cannot load {tmp_path / 'net.pth'} as weights only: it holds a pickled mylab.models.Net"
    )
    assert "never safe for a downloaded file" in message and "\n" not in message
    for advice in ("can still be loaded", "likely succeed", "weights_only=False", "trust the source"):
        assert advice not in message, message


def test_another_refusal_keeps_torchs_first_line(tmp_path, monkeypatch):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", stand_in_torch("invalid load key, 'n'.\nmore detail"))
    with pytest.raises(
        pretrained.ConversionError,
        match=r"^cannot load .*bad.pth as weights only \(no pickled code is run\): invalid load key, 'n'.$",
    ):
        pretrained.read_torch_state_dict(tmp_path / "bad.pth")
