"""Table 6's basic networks (docs/method.md 7): ResNet34, VGG16, VGG16-BN and DenseNet-121 as
torchvision defines them. Converted torchvision weights give torchvision's logits (eval mode, and
training mode where the network has BatchNorm), a state dict of another architecture is refused,
the full-size networks have torchvision's parameter counts, and each trains on the synthetic data
at small width. Needs the ``torch`` extra (``make test`` installs it)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("FAML_JAX_REQUIRE_TORCH") == "1":
    import torch
    import torchvision
else:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed (pip install -e '.[torch]')")
    torchvision = pytest.importorskip("torchvision")

from helpers import randomise_batch_norm  # noqa: E402

from faml_jax import models, pretrained  # noqa: E402
from faml_jax.errors import ConfigError  # noqa: E402
from faml_jax.pretrained import ConversionError  # noqa: E402

CLASSES = 7
SIZE = 96  # small enough for the CPU; VGG's 3x3 map then goes through the 7x7 adaptive pool
TOLERANCE = 1e-4
TORCHVISION = {
    "resnet34": torchvision.models.resnet34,
    "vgg16": torchvision.models.vgg16,
    "vgg16_bn": torchvision.models.vgg16_bn,
    "densenet121": torchvision.models.densenet121,
}


def torch_network(name: str, dropout: float = 0.5):
    """torchvision's network with random weights and randomised BatchNorm statistics."""
    torch.manual_seed(0)
    net = TORCHVISION[name](num_classes=CLASSES, **({"dropout": dropout} if name.startswith("vgg") else {}))
    return randomise_batch_norm(net, min_var=1.0)  # variances >= 1: ResNet34's random logits stay of order 1


# Small variants torchvision builds from the same classes (its VGG, DenseNet and ResNet code with
# other sizes), converted with the same layout functions at those sizes: the numerics of every
# conversion rule (kernel layouts, VGG's channel-first flattening, BatchNorm, DenseNet's
# concatenations) are compared with torchvision's logits here, at a fraction of the full networks'
# compile time. The full-size layouts are checked tensor by tensor against the full models below.
VGG_WIDTHS, VGG_DEPTHS, VGG_HIDDEN = (8, 16, 16, 32, 32), (2, 2, 3, 3, 3), 32
DENSENET = dict(init=8, growth=4, blocks=(2, 2, 2, 2))


def small_torch_network(name: str):
    """(torchvision network, its layout, faml_jax model options) of a small variant of ``name``."""
    from torch import nn
    from torchvision.models import densenet, resnet, vgg

    torch.manual_seed(0)
    if name == "resnet34":  # torchvision's ResNet fixes the widths: the full network, small enough
        net, layout, options = TORCHVISION[name](num_classes=CLASSES), None, {}
    elif name.startswith("vgg"):
        cfg = [x for w, d in zip(VGG_WIDTHS, VGG_DEPTHS) for x in [w] * d + ["M"]]
        net = vgg.VGG(vgg.make_layers(cfg, batch_norm=name == "vgg16_bn"), num_classes=CLASSES, dropout=0.0)
        net.classifier = nn.Sequential(  # torchvision's classifier at a smaller width
            nn.Linear(VGG_WIDTHS[-1] * 49, VGG_HIDDEN),
            nn.ReLU(True),
            nn.Dropout(0.0),
            nn.Linear(VGG_HIDDEN, VGG_HIDDEN),
            nn.ReLU(True),
            nn.Dropout(0.0),
            nn.Linear(VGG_HIDDEN, CLASSES),
        )
        layout = pretrained.vgg_layout(VGG_WIDTHS, VGG_DEPTHS, batch_norm=name == "vgg16_bn", hidden=VGG_HIDDEN)
        options = dict(widths=VGG_WIDTHS, classifier_width=VGG_HIDDEN, dropout=0.0)
    else:
        net = densenet.DenseNet(
            growth_rate=DENSENET["growth"],
            block_config=DENSENET["blocks"],
            num_init_features=DENSENET["init"],
            num_classes=CLASSES,
        )
        layout = pretrained.densenet_layout(**DENSENET)
        options = dict(widths=(DENSENET["init"],), growth_rate=DENSENET["growth"], stage_depths=DENSENET["blocks"])
    assert isinstance(net, resnet.ResNet) == (name == "resnet34")
    return randomise_batch_norm(net, min_var=1.0), layout, options


def converted(name: str, net, layout=None, **overrides):
    """``net`` (a torch network, or a state dict of NumPy arrays) converted, and the model it
    starts; every tensor of the model is checked to be there with its shape."""
    state = net if isinstance(net, dict) else {k: v.numpy() for k, v in net.state_dict().items()}
    backbone, head = pretrained.torch_to_flax(state, name, layout)
    model = models.build(pretrained.ARCHITECTURES[name][3], CLASSES, input_size=SIZE, **overrides)
    variables = {"params": {**backbone["params"], "fc": head}, "batch_stats": backbone["batch_stats"]}
    expected = jax.eval_shape(lambda k: models.init(model, k), jax.random.key(0))
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)  # noqa: E731
    assert shapes(variables) == shapes(expected)  # every tensor of the model, each of its shape
    return model, variables


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_converted_weights_give_torchvisions_logits(name):
    images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    net, layout, options = small_torch_network(name)  # dropout 0: no random masks to compare below
    model, variables = converted(name, net, layout, **options)
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, images))
    assert np.max(np.abs(logits - expected)) <= TOLERANCE, np.max(np.abs(logits - expected))
    if not variables["batch_stats"]:
        return  # VGG16 without BatchNorm: training mode differs only by dropout
    # Training mode: BatchNorm normalises with the batch's statistics, as torch's does.
    with torch.no_grad():
        expected = net.train()(x).numpy()
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    assert np.max(np.abs(np.asarray(logits) - expected)) <= 1e-3
    eval_logits = np.asarray(model.apply(variables, images))
    assert np.max(np.abs(eval_logits - np.asarray(logits))) > 1e-2  # batch statistics were used


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_full_size_networks_convert_tensor_for_tensor_and_count_torchvisions_parameters(name):
    """torchvision's full networks, built on torch's meta device (shapes without weights): their
    state dicts pass the converter, every tensor lands where the full faml_jax model has it with its
    shape (``converted``; the values follow the rules tested above), and the faml_jax model with
    1,000 classes has torchvision's parameter count."""
    with torch.device("meta"):
        net = TORCHVISION[name](num_classes=CLASSES)
        expected_count = sum(p.numel() for p in TORCHVISION[name](num_classes=1000).parameters())
    zeros = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in net.state_dict().items()}
    converted(name, zeros)
    model = models.build(pretrained.ARCHITECTURES[name][3], 1000)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 224, 224, 3))), jax.random.key(0))
    assert models.count_params(shapes["params"]) == expected_count


def test_a_state_dict_of_another_architecture_is_refused_naming_it():
    net = torchvision.models.resnet34(num_classes=CLASSES)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    with pytest.raises(
        ConversionError, match=r"not a torchvision densenet121 state dict \(its keys look like resnet34's"
    ):
        pretrained.torch_to_flax(state, "densenet121")
    with pytest.raises(ConversionError, match=r"not a torchvision resnet18 state dict .*unexpected keys: layer1.2"):
        pretrained.torch_to_flax(state, "resnet18")
    with pytest.raises(ConversionError, match="unknown architecture 'alexnet'"):
        pretrained.torch_to_flax(state, "alexnet")


def test_densenet_weights_published_with_the_old_key_names_convert():
    """torchvision's published DenseNet files name a layer's parts ``norm.1``, ``conv.2``."""
    state = {k: v.numpy() for k, v in torchvision.models.densenet121(num_classes=CLASSES).state_dict().items()}
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    assert old != state
    new_backbone, _ = pretrained.torch_to_flax(state, "densenet121")
    old_backbone, _ = pretrained.torch_to_flax(old, "densenet121")
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_backbone, old_backbone)


def test_the_fa_parts_are_resnets_only():
    with pytest.raises(ConfigError, match="the FA stem and the attention blocks are ResNet's; vgg has neither"):
        models.build("vgg16", CLASSES, attention=True)
    with pytest.raises(ConfigError, match="densenet takes one width"):
        models.build("densenet121", CLASSES, widths=(16, 32))


SMALL = {
    "resnet34": dict(widths=(8, 8, 16, 16)),
    "vgg16": dict(widths=(8, 8, 16, 16, 16), classifier_width=32),
    "densenet121": dict(widths=(8,), growth_rate=4, stage_depths=(2, 2, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_network_trains_on_the_synthetic_data_and_resumes(name, tmp_path):
    """A small version of each trains an epoch through trainer.fit (checkpoint, evaluation,
    summary; VGG16's empty BatchNorm collection and dropout included) and resumes."""
    from faml_jax import runs, trainer
    from faml_jax.presets import preset

    config = preset(
        "synthetic",
        name,
        model_options={**SMALL[name], "input_size": 32},
        data=dict(data_dir=str(tmp_path / "data"), synthetic=dict(train_size=96, test_size=40, image_size=32)),
        epochs=2,
        batch_size=16,
        eval_batch_size=32,
    )
    assert config.loss.kind == "ce" and config.model_name == name  # the R18 row's recipe
    trainer.fit(config, tmp_path / "run", progress=False, stop_after=1)
    summary = trainer.fit(config, tmp_path / "run", resume=True, progress=False)
    assert summary["epochs"] == 2 and summary["model"] == name
    loaded, variables, epoch = runs.load(tmp_path / "run")
    assert loaded == config and epoch == 2
    assert bool(variables["batch_stats"]) == (name != "vgg16")


def test_a_backbone_of_another_architecture_is_refused_by_the_run(tmp_path):
    """--init names a backbone converted from another architecture than --model's: one line."""
    from faml_jax.presets import preset
    from faml_jax.setup import Setup
    from tools import convert_torch

    path = tmp_path / "densenet121.pth"
    torch.save(torchvision.models.densenet121(num_classes=CLASSES).state_dict(), path)
    folder = convert_torch.convert(path, tmp_path / "backbone", "densenet121")
    # A backbone's format is its own (version 1): converted backbones stay usable across run formats.
    assert json.loads((folder / "digest.json").read_text())["format_version"] == 1
    data = dict(data_dir=str(tmp_path / "data"), synthetic=dict(train_size=96, test_size=40, image_size=32))
    config = preset("synthetic", "resnet34", init=str(folder), data=data)
    with pytest.raises(
        ConversionError, match=r"is a densenet121 backbone: it starts --model densenet121, not resnet34"
    ):
        _ = Setup(config).backbone


@pytest.mark.parametrize("name", ["vgg16", "densenet121"])
def test_grad_cam_maps_of_the_other_networks(name, tmp_path):
    """Grad-CAM (docs/method.md 6) reads each network's last map: a map per face at the input
    size, not constant, and the relevancy map (attention blocks only) refused in one line."""
    from helpers import jittered_variables, write_run

    from faml_jax.predict import Predictor
    from faml_jax.presets import preset

    config = preset("synthetic", name, model_options={**SMALL[name], "input_size": 64})  # last maps 2x2
    run = write_run(tmp_path / name, config, jittered_variables(config, 0))
    predictor = Predictor.from_runs([run], batch_size=4)
    faces = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    combined, member_maps, prediction = predictor.explain(faces)
    assert combined.shape == (3, 64, 64) and member_maps.shape == (1, 3, 64, 64)
    assert np.all(np.isfinite(combined)) and np.ptp(combined) > 0
    with pytest.raises(ConfigError, match="relevancy maps need a model with attention blocks"):
        predictor.explain(faces, kind="relevancy")


def test_inputs_too_small_and_flags_of_other_networks_are_one_line(capsys):
    """VGG's five poolings and DenseNet's stem and transitions need 32 px (smaller gave a
    traceback or a non-finite loss); flags of the FA parts are refused for networks without them."""
    from experiments import train as train_program

    with pytest.raises(ConfigError, match="input_size 16 is too small for vgg's poolings: at least 32"):
        models.build("vgg16", CLASSES, input_size=16)
    with pytest.raises(ConfigError, match="input_size 16 is too small for densenet's poolings: at least 32"):
        models.build("densenet121", CLASSES, input_size=16)
    with pytest.raises(ConfigError, match=r"vgg takes 5 widths, one per stage"):
        models.build("vgg16", CLASSES, widths=(8, 16))
    for flags, said in (
        (["--model", "vgg16", "--fusion-init", "0.3"], "--fusion-init: vgg16 has no FA stem"),
        (["--model", "densenet121", "--no-attention"], "--no-attention: densenet121 has no attention blocks"),
    ):
        assert train_program.main([*flags, "--workdir", "/nonexistent/x"]) == 2
        assert said in capsys.readouterr().err
