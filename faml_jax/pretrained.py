"""Pre-trained ResNet18 backbones (MS-Celeb-1M, ImageNet) from PyTorch checkpoints (docs/method.md 2).

The paper starts R18+FAML from a ResNet18 pre-trained on MS-Celeb-1M, distributed as PyTorch files
whose state dict loads into torchvision's ``resnet18``. This module:

* ``torch_to_flax``: a torchvision-layout ResNet18 state dict (numpy arrays) to this project's
  Flax variables of ``"r18"``: conv kernels (O, I, kH, kW) -> (kH, kW, I, O), the dense layer
  (out, in) -> (in, out), BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var
  (both use eps 1e-5; ``models.layers.BN_EPSILON``). Pure numpy: no torch needed.
* ``read_torch_state_dict``: loads a ``.pth`` without executing pickled code
  (``torch.load(weights_only=True)``), accepting the common wrappings: a plain state dict, one
  nested under ``state_dict``, ``module.``-prefixed keys (DataParallel), with or without ``fc``.
* ``save_backbone`` / ``load_backbone``: the converted variables as an orbax checkpoint.
* ``init_from_backbone``: a freshly initialised model's variables with the backbone copied in;
  the FA stem's auxiliary convolutions start as copies of conv1 (docs/method.md 2.1); attention blocks,
  fusion weights and the head keep their fresh initialisation (the head has the data set's
  classes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from faml_jax.errors import FamlError
from faml_jax.versions import BACKBONE_VERSION

RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_DEPTHS = (2, 2, 2, 2)


class ConversionError(FamlError):
    """A state dict that is not a torchvision ResNet18, or a backbone that does not fit a model."""


def _list(keys, limit: int = 20, sort: bool = True) -> str:
    keys = sorted(keys) if sort else list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# torchvision names -> Flax paths


def _bn(torch_prefix: str, flax_path: tuple[str, ...], width: int) -> dict[str, tuple]:
    return {
        f"{torch_prefix}.weight": ("params", flax_path + ("scale",), (width,), None),
        f"{torch_prefix}.bias": ("params", flax_path + ("bias",), (width,), None),
        f"{torch_prefix}.running_mean": ("batch_stats", flax_path + ("mean",), (width,), None),
        f"{torch_prefix}.running_var": ("batch_stats", flax_path + ("var",), (width,), None),
    }


def _conv(torch_key: str, flax_path: tuple[str, ...], out: int, inp: int, k: int) -> dict[str, tuple]:
    return {torch_key: ("params", flax_path + ("kernel",), (out, inp, k, k), (2, 3, 1, 0))}


def _conv_bias(torch_prefix: str, flax_path: tuple[str, ...], out: int, inp: int, k: int) -> dict[str, tuple]:
    return {
        **_conv(f"{torch_prefix}.weight", flax_path, out, inp, k),
        f"{torch_prefix}.bias": ("params", flax_path + ("bias",), (out,), None),
    }


def _dense(torch_prefix: str, flax_path: tuple[str, ...], out: int, inp: int, transform=(1, 0)) -> dict[str, tuple]:
    return {
        f"{torch_prefix}.weight": ("params", flax_path + ("kernel",), (out, inp), transform),
        f"{torch_prefix}.bias": ("params", flax_path + ("bias",), (out,), None),
    }


def _nchw_flattened(pooled: int, channels: int):
    """torchvision flattens VGG's (C, 7, 7) pooled map channel-first, faml_jax (7, 7, C)
    channel-last: the first dense layer's (out, C*49) weight becomes a (49*C, out) kernel."""

    def transform(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        return weight.reshape(out, channels, pooled, pooled).transpose(2, 3, 1, 0).reshape(-1, out)

    return transform


def resnet18_layout(widths=RESNET18_WIDTHS, depths=RESNET18_DEPTHS) -> dict[str, tuple]:
    """torch key -> (collection, Flax path, torch shape, transpose) for every backbone tensor of
    torchvision's ResNet18 (``fc`` excluded; ``num_batches_tracked`` carries nothing)."""
    layout = {**_conv("conv1.weight", ("stem", "conv_main"), widths[0], 3, 7), **_bn("bn1", ("bn1",), widths[0])}
    inp = widths[0]
    for s, (width, depth) in enumerate(zip(widths, depths)):
        for b in range(depth):
            t, f = f"layer{s + 1}.{b}", (f"layer{s + 1}_{b}",)
            block_in = inp if b == 0 else width
            layout.update(_conv(f"{t}.conv1.weight", f + ("conv1",), width, block_in, 3))
            layout.update(_bn(f"{t}.bn1", f + ("bn1",), width))
            layout.update(_conv(f"{t}.conv2.weight", f + ("conv2",), width, width, 3))
            layout.update(_bn(f"{t}.bn2", f + ("bn2",), width))
            if b == 0 and (s > 0 or block_in != width):
                layout.update(_conv(f"{t}.downsample.0.weight", f + ("downsample_conv",), width, block_in, 1))
                layout.update(_bn(f"{t}.downsample.1", f + ("downsample_bn",), width))
        inp = width
    return layout


def vgg_layout(widths=(64, 128, 256, 512, 512), depths=(2, 2, 3, 3, 3), batch_norm=False, hidden=4096):
    """torchvision's ``vgg16`` (``vgg16_bn`` with ``batch_norm``): ``features.<i>`` in the order
    of its Sequential (convolution, [BatchNorm,] ReLU per convolution, a max pool per stage) and
    the classifier's first two dense layers (``classifier.0``, ``classifier.3``)."""
    layout, index, inp = {}, 0, 3
    for stage, (width, depth) in enumerate(zip(widths, depths), 1):
        for i in range(1, depth + 1):
            layout.update(_conv_bias(f"features.{index}", (f"conv{stage}_{i}",), width, inp, 3))
            if batch_norm:
                layout.update(_bn(f"features.{index + 1}", (f"bn{stage}_{i}",), width))
            index += 3 if batch_norm else 2
            inp = width
        index += 1  # the stage's max pool
    layout.update(_dense("classifier.0", ("fc1",), hidden, inp * 49, _nchw_flattened(7, inp)))
    layout.update(_dense("classifier.3", ("fc2",), hidden, hidden))
    return layout


def densenet_layout(init=64, growth=32, blocks=(6, 12, 24, 16), bn_size=4) -> dict[str, tuple]:
    """torchvision's ``densenet121``: ``features.conv0``, ``norm0``, each dense block's layers
    (``norm1``, ``conv1``, ``norm2``, ``conv2``), the transitions and ``norm5``."""
    layout = {**_conv("features.conv0.weight", ("conv0",), init, 3, 7), **_bn("features.norm0", ("norm0",), init)}
    channels = init
    for b, layers in enumerate(blocks, 1):
        for i in range(1, layers + 1):
            t, f = f"features.denseblock{b}.denselayer{i}", f"denseblock{b}_layer{i}"
            layout.update(_bn(f"{t}.norm1", (f"{f}_norm1",), channels))
            layout.update(_conv(f"{t}.conv1.weight", (f"{f}_conv1",), bn_size * growth, channels, 1))
            layout.update(_bn(f"{t}.norm2", (f"{f}_norm2",), bn_size * growth))
            layout.update(_conv(f"{t}.conv2.weight", (f"{f}_conv2",), growth, bn_size * growth, 3))
            channels += growth
        if b < len(blocks):
            t = f"features.transition{b}"
            layout.update(_bn(f"{t}.norm", (f"transition{b}_norm",), channels))
            layout.update(_conv(f"{t}.conv.weight", (f"transition{b}_conv",), channels // 2, channels, 1))
            channels //= 2
    layout.update(_bn("features.norm5", ("norm5",), channels))
    return layout


# Each architecture torchvision defines that faml_jax converts: the backbone's layout, the head's
# torch prefix and the head's input width, and the faml_jax model it becomes (docs/method.md 7).
ARCHITECTURES = {
    "resnet18": (resnet18_layout, "fc", 512, "r18"),
    "resnet34": (lambda: resnet18_layout(depths=(3, 4, 6, 3)), "fc", 512, "resnet34"),
    "vgg16": (vgg_layout, "classifier.6", 4096, "vgg16"),
    "vgg16_bn": (lambda: vgg_layout(batch_norm=True), "classifier.6", 4096, "vgg16_bn"),
    "densenet121": (densenet_layout, "classifier", 1024, "densenet121"),
}


def _legacy_densenet_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision's published DenseNet weights name a layer's parts ``norm.1`` and ``conv.2``
    (its loader renames them to ``norm1``, ``conv2``): the same renaming here."""
    import re

    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    renamed = {}
    for key, value in state.items():
        match = pattern.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def closest_architecture(keys) -> str:
    """The architecture of ``ARCHITECTURES`` whose tensor names overlap ``keys`` most."""
    keys = set(keys)

    def overlap(name):
        layout_fn, head, _, _ = ARCHITECTURES[name]
        names = set(layout_fn()) | {f"{head}.weight", f"{head}.bias"}
        return len(names & keys) / len(names | keys)

    return max(ARCHITECTURES, key=overlap)


def check_backbone_fits(info: Mapping, model_name: str, where) -> None:
    """Refuse, in one line, a backbone converted from another architecture than ``model_name``'s
    (a ResNet18 backbone starts r18, r18_fa and r18_faml; every other its own model)."""
    architecture = info.get("architecture")
    if architecture not in ARCHITECTURES:
        return  # not recorded: the tensors' names and shapes are checked when it is copied in
    fits = ("r18", "r18_fa", "r18_faml") if architecture == "resnet18" else (ARCHITECTURES[architecture][3],)
    if model_name not in fits:
        raise ConversionError(
            f"--init {where} is a {architecture} backbone: it starts --model {' / '.join(fits)}, not {model_name}"
        )


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint: itself, or its ``state_dict`` (or ``model``)
    entry; a ``module.`` prefix on every key (DataParallel) is removed."""
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(
            "the checkpoint holds no state dict (expected a dict of tensors, or one under 'state_dict')"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def torch_to_flax(
    state: Mapping[str, np.ndarray], architecture: str = "resnet18", layout: Mapping[str, tuple] | None = None
) -> tuple[dict, dict | None]:
    """Convert a torchvision state dict of ``architecture`` (a key of ``ARCHITECTURES``; values:
    numpy arrays) to Flax. ``layout``: the tensors of a variant of that family torchvision builds
    with other sizes (e.g. ``densenet_layout(init=8, growth=4, blocks=(2, 2, 2, 2))``), instead of
    the named architecture's own.

    Returns ``(backbone, head)``: backbone = ``{"params", "batch_stats"}`` of the faml_jax model
    (``ARCHITECTURES[architecture][3]``) without its head ``fc``; head = ``{"kernel", "bias"}`` of
    the last linear layer (None when the state dict has none). Missing keys, keys that are not the
    architecture's and wrong shapes are a ``ConversionError`` that names them (and the
    architecture the keys look like).
    """
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"unknown architecture {architecture!r}; available: {', '.join(ARCHITECTURES)}")
    layout_fn, head_prefix, head_width, _ = ARCHITECTURES[architecture]
    if layout is None:
        layout = layout_fn()
    else:
        head_width = _head_input(layout, architecture)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if architecture == "densenet121":
        state = _legacy_densenet_keys(state)
    head_keys = {f"{head_prefix}.weight", f"{head_prefix}.bias"}
    missing = set(layout) - set(state)
    unexpected = set(state) - set(layout) - head_keys
    if missing or unexpected:
        parts = ([f"missing keys: {_list(missing)}"] if missing else []) + (
            [f"unexpected keys: {_list(unexpected)}"] if unexpected else []
        )
        closest = closest_architecture(state)
        looks = f" (its keys look like {closest}'s: --arch {closest})" if closest != architecture else ""
        raise ConversionError(f"not a torchvision {architecture} state dict{looks}: " + "; ".join(parts))
    present_head = head_keys & set(state)
    if present_head and present_head != head_keys:
        raise ConversionError(f"missing keys: {_list(head_keys - present_head)} ({head_prefix} needs weight and bias)")
    wrong = []
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, (collection, path, shape, transform) in layout.items():
        value = np.asarray(state[key], np.float32)
        if value.shape != shape:
            wrong.append(f"{key} {tuple(value.shape)} ({architecture}: {shape})")
            continue
        if callable(transform):
            value = transform(value)
        elif transform:
            value = value.transpose(transform)
        flat[(collection,) + path] = np.ascontiguousarray(value)
    backbone = traverse_util.unflatten_dict(flat)
    backbone.setdefault("batch_stats", {})  # VGG16 without BatchNorm has none
    head = None
    if present_head:
        weight = np.asarray(state[f"{head_prefix}.weight"], np.float32)
        bias = np.asarray(state[f"{head_prefix}.bias"], np.float32)
        if weight.ndim != 2 or weight.shape[1] != head_width or bias.shape != (weight.shape[0],):
            wrong.append(
                f"{head_prefix}.weight {tuple(weight.shape)} / {head_prefix}.bias {tuple(bias.shape)} "
                f"({architecture}: (C, {head_width}) / (C,))"
            )
        else:
            head = {"kernel": weight.T.copy(), "bias": bias}
    if wrong:
        raise ConversionError(f"shapes that are not {architecture}'s: {_list(wrong)}")
    return backbone, head


def _head_input(layout: Mapping[str, tuple], architecture: str) -> int:
    """The width the head of a variant ``layout`` reads: the last stage's BatchNorm (ResNet,
    DenseNet) or the classifier's last hidden layer (VGG)."""
    if architecture.startswith("vgg"):
        return layout["classifier.3.weight"][2][0]
    return [shape[0] for key, (_, _, shape, _) in layout.items() if key.endswith(".running_var")][-1]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a PyTorch checkpoint without executing pickled code and return its (unwrapped) state
    dict as numpy arrays. Needs torch (``pip install -e '.[torch]'``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"PyTorch checkpoint not found: {path}")
    try:
        import torch
    except ImportError:
        raise ConversionError("reading a PyTorch checkpoint needs torch: pip install -e '.[torch]'") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ConversionError(load_refusal(path, str(error))) from None
    state = unwrap_state_dict(checkpoint)
    return {k: v.detach().cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_refusal(path: Path, message: str) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused (torch's ``message``). A file
    that holds pickled objects besides tensors is named as such, with what it needs, and without
    torch's advice to retry with ``weights_only=False``: that runs the file's pickled code, never
    safe for a downloaded file."""
    if "weights only load failed" not in message.lower():
        return f"cannot load {path} as weights only (no pickled code is run): {message.splitlines()[0]}"
    found = re.search(r"GLOBAL ([\w.]+)", message)
    holds = f"a pickled {found.group(1)}" if found else "pickled Python objects besides tensors"
    return (
        f"cannot load {path} as weights only: it holds {holds}, which only running the file's pickled code "
        "could read, and that is never safe for a downloaded file; save the network's state_dict() with "
        "torch.save where it was made (a trusted environment) and convert that file"
    )


# ---------------------------------------------------------------------------------------------
# Converted backbones on disk


def non_finite(tree: Mapping) -> list[str]:
    """The names (``a/b/c``) of the floating-point arrays of ``tree`` holding NaN or infinity,
    with how many."""
    found = []
    for path, value in traverse_util.flatten_dict(dict(tree)).items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            found.append(f"{'/'.join(map(str, path))} ({int((~np.isfinite(value)).sum())} of {value.size} values)")
    return found


# Beyond these magnitudes a weight or BatchNorm statistic is taken for damage, not training: a
# trained network's weights are of order 1 and a flipped exponent bit gives 1e30 or more;
# BatchNorm's running variances (of unnormalised activations) get a wider margin.
PLAUSIBLE = {"params": 1e4, "batch_stats": 1e8}


def implausible(tree: Mapping) -> list[str]:
    """The names (``a/b/c``) of the arrays of ``tree`` (with a ``params`` or ``batch_stats``
    level) holding values beyond ``PLAUSIBLE``, with the largest magnitude."""
    found = []
    for path, value in traverse_util.flatten_dict(dict(tree)).items():
        value = np.asarray(value)
        limit = next((PLAUSIBLE[p] for p in path if p in PLAUSIBLE), PLAUSIBLE["params"])
        if np.issubdtype(value.dtype, np.floating) and value.size and np.isfinite(value).all():
            largest = float(np.abs(value).max())
            if largest > limit:
                found.append(f"{'/'.join(map(str, path))} (|w| up to {largest:.3g}, limit {limit:.0e})")
    return found


def refuse_non_finite(tree: Mapping, where: str) -> None:
    """A ``ConversionError`` naming the arrays of ``tree`` that hold NaN or infinity, or values
    too large for trained weights (``implausible``)."""
    for what, bad in (("non-finite", non_finite(tree)), ("implausible", implausible(tree))):
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ConversionError(f"{where} holds {what} weights: {', '.join(bad[:3])}{more}")


def save_backbone(backbone: dict, head: dict | None, out: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``{"params", "batch_stats"}`` (and the head, when given) as an orbax checkpoint in
    the new folder ``out``, with the digest (size and SHA-256 of every file) that
    ``load_backbone`` verifies; written under a temporary name and renamed when complete.
    Weights with NaN, infinity or implausible magnitudes are refused (``ConversionError``
    naming them)."""
    import shutil

    import orbax.checkpoint as ocp

    from faml_jax.checkpoint import write_digest
    from faml_jax.workdir import ensure_writable
    from faml_jax.writer import temporary_folder

    out = Path(out).absolute()
    if out.exists():
        raise ConversionError(f"{out} exists; choose a new folder")
    refuse_non_finite({"backbone": backbone, **({"head": head} if head is not None else {})}, "the converted network")
    ensure_writable(out.parent, "output folder")
    tree = {"backbone": backbone, **({"head": head} if head is not None else {})}
    info = {**(info or {}), "has_head": head is not None, "format": f"faml_jax backbone {BACKBONE_VERSION}"}
    tmp = temporary_folder(out.parent, f".{out.name}.", ".tmp")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(
                tmp / "backbone",
                args=ocp.args.Composite(variables=ocp.args.StandardSave(tree), info=ocp.args.JsonSave(info)),
            )
        write_digest(tmp / "backbone", version=BACKBONE_VERSION)
        os.replace(tmp / "backbone", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_backbone(path: str | os.PathLike) -> tuple[dict, dict | None, dict]:
    """Read a folder written by ``save_backbone``: ``(backbone, head or None, info)``. A missing
    folder, files that differ from those written (its digest) and weights that are non-finite
    or implausible are each a ``ConversionError`` naming them."""
    import orbax.checkpoint as ocp

    from faml_jax.checkpoint import DIGEST, verify, version_problem

    path = Path(path).absolute()
    if not path.exists():
        raise ConversionError(f"backbone {path} not found (convert one with python -m tools.convert_torch)")
    if not (path / "info").is_dir() or not (path / "variables").is_dir():
        raise ConversionError(
            f"{path} is not a converted backbone (expected the folder written by python -m tools.convert_torch)"
        )
    if not (path / DIGEST).is_file():
        raise ConversionError(f"the backbone {path} has no {DIGEST}: it cannot be checked; convert it again")
    damage = verify(path)
    if damage:
        raise ConversionError(f"the backbone {path} is damaged ({damage}): convert it again")
    version = version_problem(path, f"the backbone {path}", BACKBONE_VERSION)
    if version:
        raise ConversionError(version)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            path, args=ocp.args.Composite(variables=ocp.args.StandardRestore(), info=ocp.args.JsonRestore())
        )
    tree = jax.tree_util.tree_map(np.asarray, restored["variables"])
    refuse_non_finite(tree, f"the backbone {path}")
    return tree["backbone"], tree.get("head"), dict(restored["info"])


# ---------------------------------------------------------------------------------------------
# Starting a model from a backbone


def init_from_backbone(variables: Mapping, backbone: Mapping, fusion_init: float | None = None) -> dict:
    """``variables`` (a fresh ``{"params", "batch_stats"}`` of any preset) with every backbone
    tensor copied in; each FA auxiliary convolution ``stem/conv_region<i>`` starts as a copy of
    conv1 and, given ``fusion_init`` (``ModelConfig.fa_init_pretrained``, [choice] 0), the fusion
    weights at that value, so that the stem starts as the backbone's conv1 (docs/method.md 2.1).
    Everything else (attention blocks, the head) stays as initialised. A backbone tensor the model lacks, a backbone tensor of another shape, or a
    ResNet tensor of the model the backbone lacks is a ``ConversionError`` naming the keys."""
    result = {}
    problems = []
    for collection in ("params", "batch_stats"):
        target = traverse_util.flatten_dict(variables[collection])
        source = traverse_util.flatten_dict(backbone[collection])
        for path in [p for p in target if p[0] == "stem" and p[1].startswith("conv_region")]:
            source[path] = source.get(("stem", "conv_main") + path[2:])
        for path, value in source.items():
            name = f"{collection}/{'/'.join(path)}"
            if path not in target:
                problems.append(f"{name} (not in the model)")
            elif value is None:
                continue
            elif tuple(np.shape(value)) != tuple(np.shape(target[path])):
                problems.append(f"{name} {tuple(np.shape(value))} (model: {tuple(np.shape(target[path]))})")
            else:
                target[path] = np.asarray(value, np.asarray(target[path]).dtype)
        fresh_only = ("attn", "fc")
        lacking = [
            f"{collection}/{'/'.join(p)}"
            for p in target
            if p not in source and not p[0].startswith(fresh_only) and p[-1] != "fusion_weights"
        ]
        problems += [f"{name} (not in the backbone)" for name in lacking]
        if fusion_init is not None:
            for path in [p for p in target if p[-1] == "fusion_weights"]:
                target[path] = np.full(np.shape(target[path]), fusion_init, np.asarray(target[path]).dtype)
        result[collection] = traverse_util.unflatten_dict(target)
    if problems:
        raise ConversionError(f"the backbone does not fit the model: {_list(problems, sort=False)}")
    return result
