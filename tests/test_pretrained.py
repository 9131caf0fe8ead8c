"""Pre-trained ResNet18 weights from PyTorch: the converted Flax networks compute what
torchvision's resnet18 computes (logits and penultimate features), every common wrapping of the
state dict converts, and a wrong one fails naming its keys. Needs the ``torch`` extra
(``make test`` installs it and sets FAML_JAX_REQUIRE_TORCH=1, so these never skip in CI)."""

import os
import shutil

import chex
import jax
import numpy as np
import pytest

if os.environ.get("FAML_JAX_REQUIRE_TORCH") == "1":
    import torch
    import torchvision
else:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed (pip install -e '.[torch]')")
    torchvision = pytest.importorskip("torchvision")

from helpers import randomise_batch_norm  # noqa: E402

from experiments import train as train_program  # noqa: E402
from faml_jax import models, pretrained  # noqa: E402
from tools import convert_torch_resnet18  # noqa: E402

CLASSES = 7
TOLERANCE = 1e-4  # max abs difference of logits and features (float32, 224 px)


@pytest.fixture(scope="module")
def torch_net():
    """torchvision's resnet18 with random weights and randomised BatchNorm statistics, eval mode."""
    torch.manual_seed(0)
    return randomise_batch_norm(torchvision.models.resnet18(num_classes=CLASSES)).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_outputs(torch_net, images):
    """Logits and penultimate features (the input of fc) of the torch network."""
    captured = {}
    hook = torch_net.fc.register_forward_hook(lambda module, inputs, output: captured.update(features=inputs[0]))
    with torch.no_grad():
        logits = torch_net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    hook.remove()
    return logits.numpy(), captured["features"].numpy()


def state_dict(net) -> dict:
    return {k: v.numpy() for k, v in net.state_dict().items()}


def flax_outputs(model, variables, images):
    """Logits and penultimate features, one compiled forward (the weights an argument)."""
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    logits, state = apply(variables, images)
    return np.asarray(logits), np.asarray(state["intermediates"]["features"][0])


def test_converted_r18_gives_torchvisions_logits_and_features(torch_net, torch_outputs, images):
    backbone, head = pretrained.torch_to_flax(state_dict(torch_net))
    model = models.build("r18", CLASSES)
    variables = {"params": {**backbone["params"], "fc": head}, "batch_stats": backbone["batch_stats"]}
    fresh = models.init(model, jax.random.key(0))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(jax.device_get(fresh))
    logits, features = flax_outputs(model, variables, images)
    assert np.max(np.abs(features - torch_outputs[1])) <= TOLERANCE
    assert np.max(np.abs(logits - torch_outputs[0])) <= TOLERANCE


def test_r18_faml_started_from_the_backbone_is_torchvisions_resnet18(torch_net, torch_outputs, images):
    """docs/method.md 2.1: started from a backbone (--init), the FA auxiliary convolutions are
    copies of conv1 and the fusion weights start at ``fa_init_pretrained`` (0), and the attention
    blocks are the identity, so R18+FAML with both parts present computes torchvision's ResNet18
    (the penultimate features; the logits too with torch's head). From scratch's 0.5 it does not."""
    backbone, head = pretrained.torch_to_flax(state_dict(torch_net))
    model = models.build("r18_faml", CLASSES)
    assert model.config.attention and model.config.fa_regions and model.config.fa_init_pretrained == 0.0
    fresh = jax.device_get(models.init(model, jax.random.key(3)))
    variables = pretrained.init_from_backbone(fresh, backbone, model.config.fa_init_pretrained)
    stem = variables["params"]["stem"]
    for name in ("conv_region0", "conv_region1"):
        np.testing.assert_array_equal(stem[name]["kernel"], backbone["params"]["stem"]["conv_main"]["kernel"])
    np.testing.assert_array_equal(stem["fusion_weights"], [0.0, 0.0])
    np.testing.assert_array_equal(fresh["params"]["stem"]["fusion_weights"], [0.5, 0.5])
    # Attention blocks and the head keep their fresh initialisation.
    chex.assert_trees_all_equal(variables["params"]["attn1"], fresh["params"]["attn1"])
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
    _, features = flax_outputs(model, variables, images)
    assert np.max(np.abs(features - torch_outputs[1])) <= TOLERANCE
    logits, _ = flax_outputs(model, {**variables, "params": {**variables["params"], "fc": head}}, images)
    assert np.max(np.abs(logits - torch_outputs[0])) <= TOLERANCE
    # The fusion weights at 0.5 (the from-scratch default) add the regions' maps: not the backbone.
    half = pretrained.init_from_backbone(fresh, backbone, 0.5)
    _, features = flax_outputs(model, half, images)
    assert np.max(np.abs(features - torch_outputs[1])) > 100 * TOLERANCE


class NotWeights:
    """An object whose unpickling would run code: weights-only loading must refuse it."""


@pytest.mark.parametrize("wrapping", ["plain", "state_dict", "module_prefix", "no_fc", "tar_with_extras"])
def test_each_state_dict_variant_converts(torch_net, tmp_path, wrapping):
    state = torch_net.state_dict()
    if wrapping == "state_dict":
        saved = {"state_dict": state}
    elif wrapping == "module_prefix":
        saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif wrapping == "no_fc":
        saved = {k: v for k, v in state.items() if not k.startswith("fc.")}
    elif wrapping == "tar_with_extras":
        saved = {"epoch": 30, "arch": "resnet18", "best_prec1": 0.9, "state_dict": state}
    else:
        saved = state
    path = tmp_path / "weights.pth.tar"
    torch.save(saved, path)
    backbone, head = pretrained.torch_to_flax(pretrained.read_torch_state_dict(path))
    reference, reference_head = pretrained.torch_to_flax(state_dict(torch_net))
    chex.assert_trees_all_equal(backbone, reference)
    assert (head is None) == (wrapping == "no_fc")
    if head is not None:
        np.testing.assert_array_equal(head["kernel"], reference_head["kernel"])


def test_a_wrong_state_dict_fails_naming_the_keys(torch_net, tmp_path):
    state = state_dict(torch_net)
    missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(pretrained.ConversionError, match=r"missing keys: layer3\.1\.bn2\.running_var"):
        pretrained.torch_to_flax(missing)
    resnet34 = state_dict(torchvision.models.resnet34())
    with pytest.raises(pretrained.ConversionError, match=r"unexpected keys: .*layer1\.2\.bn1\.bias"):
        pretrained.torch_to_flax(resnet34)
    narrow = dict(state, **{"layer2.0.conv1.weight": np.zeros((128, 32, 3, 3), np.float32)})
    with pytest.raises(
        pretrained.ConversionError, match=r"layer2\.0\.conv1\.weight \(128, 32, 3, 3\) \(resnet18: \(128, 64, 3, 3\)\)"
    ):
        pretrained.torch_to_flax(narrow)
    half_fc = {k: v for k, v in state.items() if k != "fc.bias"}
    with pytest.raises(pretrained.ConversionError, match=r"missing keys: fc\.bias"):
        pretrained.torch_to_flax(half_fc)
    # Loading never runs pickled code: a file holding an arbitrary object is refused.
    torch.save({"state_dict": torch_net.state_dict(), "extra": NotWeights()}, tmp_path / "code.pth")
    with pytest.raises(pretrained.ConversionError, match="cannot load .*code.pth as weights only") as refused:
        pretrained.read_torch_state_dict(tmp_path / "code.pth")
    message = str(refused.value)  # what the file holds, and no advice to run its code
    assert "NotWeights" in message and "never safe" in message and "weights_only=False" not in message
    assert "likely succeed" not in message and "\n" not in message
    with pytest.raises(pretrained.ConversionError, match="PyTorch checkpoint not found"):
        pretrained.read_torch_state_dict(tmp_path / "absent.pth")


def test_non_finite_weights_are_refused_by_the_converter_and_by_init(torch_net, tmp_path, capsys):
    from tools import convert_torch_resnet18

    state = {k: v.clone() for k, v in torch_net.state_dict().items()}  # not the shared network's tensors
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    code = convert_torch_resnet18.main([str(tmp_path / "nan.pth"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "non-finite weights: backbone/params/layer2_0/conv1/kernel (1 of 73728 values)" in err, err
    assert not (tmp_path / "out").exists()
    # A backbone damaged after conversion is refused when a run starts from it.
    backbone, head = pretrained.torch_to_flax(state_dict(torch_net))
    folder = pretrained.save_backbone(backbone, head, tmp_path / "ok")
    path = tmp_path / "ok"
    loaded, _, _ = pretrained.load_backbone(path)
    loaded["batch_stats"]["bn1"]["var"][3] = np.inf
    with pytest.raises(
        pretrained.ConversionError,
        match=r"the converted network holds non-finite weights: "
        r"backbone/batch_stats/bn1/var \(1 of 64 values\)",
    ):
        pretrained.save_backbone(loaded, None, tmp_path / "inf")
    assert folder == path.absolute()


def tiny_train_args(data_dir, *extra: str) -> list[str]:
    """experiments.train's flags for one epoch of R18+FAML without attention blocks on 16
    synthetic images of 32 px, plus ``extra``."""
    return [
        *("--train-size", "16", "--test-size", "8", "--input-size", "32", "--batch-size", "8", "--epochs", "1"),
        *("--data-dir", str(data_dir), "--no-progress", "--no-attention", *extra),
    ]


def test_a_damaged_or_implausible_backbone_is_refused_in_one_line(torch_net, tmp_path, capsys):
    """Two flipped bytes of a converted backbone were read as weights up to 3e37 and trained into
    a non-finite loss: the converter's digest is verified by --init, implausible magnitudes are
    refused by the converter and by --init, and a refused --init leaves no workdir behind."""
    backbone, head = pretrained.torch_to_flax(state_dict(torch_net))
    path = pretrained.save_backbone(backbone, head, tmp_path / "ok")
    assert (path / "digest.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    largest = max(
        (p for p in damaged.rglob("*") if p.is_file() and p.name != "digest.json"), key=lambda p: p.stat().st_size
    )
    payload = bytearray(largest.read_bytes())
    payload[len(payload) // 2] ^= 0x7F
    payload[len(payload) // 2 + 1] ^= 0x40
    largest.write_bytes(bytes(payload))
    with pytest.raises(
        pretrained.ConversionError,
        match=f"the backbone {damaged} is damaged \\(.*changed since it was written\\): convert it again",
    ):
        pretrained.load_backbone(damaged)
    with pytest.raises(pretrained.ConversionError, match=f"backbone {tmp_path / 'absent'} not found"):
        pretrained.load_backbone(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(pretrained.ConversionError, match="is not a converted backbone"):
        pretrained.load_backbone(tmp_path / "plain")
    # Finite but implausible: refused when converted, and when read (even with a matching digest).
    big = jax.tree_util.tree_map(np.copy, backbone)
    big["params"]["layer3_0"]["conv2"]["kernel"][0, 0, 0, :2] = 3e37
    with pytest.raises(
        pretrained.ConversionError,
        match=r"implausible weights: backbone/params/layer3_0/conv2/kernel "
        r"\(\|w\| up to 3e\+37, limit 1e\+04\)",
    ):
        pretrained.save_backbone(big, None, tmp_path / "big")
    assert not (tmp_path / "big").exists()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(pretrained, "implausible", lambda tree: [])
    pretrained.save_backbone(big, None, tmp_path / "big")
    monkey.undo()
    with pytest.raises(pretrained.ConversionError, match="the backbone .*big holds implausible weights"):
        pretrained.load_backbone(tmp_path / "big")
    # The programs: one line each, and nothing left of the refused run.
    common = tiny_train_args(tmp_path / "data", "--widths", "64,128,256,512")
    for init, message in (
        (damaged, "is damaged"),
        (tmp_path / "big", "implausible weights"),
        (tmp_path / "absent", "not found"),
    ):
        assert train_program.main(common + ["--init", str(init), "--workdir", str(tmp_path / "runs" / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "runs").exists()


def test_a_backbone_that_does_not_fit_the_model_names_the_keys(torch_net):
    backbone, _ = pretrained.torch_to_flax(state_dict(torch_net))
    narrow = jax.device_get(models.init(models.build("r18", CLASSES, widths=(16, 32, 64, 128)), jax.random.key(0)))
    with pytest.raises(
        pretrained.ConversionError, match=r"params/stem/conv_main/kernel \(7, 7, 3, 64\) \(model: \(7, 7, 3, 16\)\)"
    ):
        pretrained.init_from_backbone(narrow, backbone)


def test_convert_then_train_from_the_backbone(torch_net, tmp_path, capsys):
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch_net.state_dict().items()}}, tmp_path / "r18.pth")
    out = tmp_path / "backbone"
    assert convert_torch_resnet18.main([str(tmp_path / "r18.pth"), str(out)]) == 0
    assert "last layer with 7 classes kept" in capsys.readouterr().out
    backbone, head, info = pretrained.load_backbone(out)
    reference, _ = pretrained.torch_to_flax(state_dict(torch_net))
    chex.assert_trees_all_equal(backbone, reference)
    assert head["kernel"].shape == (512, CLASSES) and info["source"].endswith("r18.pth")
    assert convert_torch_resnet18.main([str(tmp_path / "r18.pth"), str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err

    # FA's stem without the attention blocks (fresh either way): the conversion is what is tested.
    common = tiny_train_args(tmp_path / "data", "--threads", "2", "--init", str(out))
    # The synthetic preset's narrow widths do not fit a ResNet18 backbone: one line naming the keys.
    assert train_program.main(common + ["--workdir", str(tmp_path / "narrow")]) == 2
    err = capsys.readouterr().err
    assert "the backbone does not fit the model: params/bn1/bias (64,) (model: (16,))" in err and "(102 in all)" in err
    assert len(err.strip().splitlines()) == 1
    # ResNet18's widths: it trains from the backbone; checkpoint 0 holds the starting weights.
    workdir = tmp_path / "run"
    assert train_program.main(common + ["--widths", "64,128,256,512", "--workdir", str(workdir)]) == 0
    assert "starting weights: test acc" in capsys.readouterr().out
    from faml_jax.runs import read_run_config, restore_variables

    config = read_run_config(workdir)
    assert config.init == str(out)
    start = restore_variables(workdir, config, epoch=0)
    np.testing.assert_array_equal(
        start["params"]["stem"]["conv_region1"]["kernel"], reference["params"]["stem"]["conv_main"]["kernel"]
    )
    np.testing.assert_array_equal(
        start["batch_stats"]["layer4_1"]["bn2"]["var"], reference["batch_stats"]["layer4_1"]["bn2"]["var"]
    )
