"""Export a trained network for deployment, with its preprocessing inside: uint8 NHWC faces at
the run's input size in, class probabilities out, so a deployment cannot normalise wrongly. What
is exported (``inference_function``, ``ensemble_function``), the files and the folder
(``export_runs``, ``export.json``).

* StableHLO (``jax.export``): the serialised function of (weights, images), its batch dimension
  symbolic, lowered for the CPU and CUDA, with its weights beside it (``model.weights.npz``);
  loaded by ``load_stablehlo`` (the files alone need only jax and NumPy). For an ensemble, one function
  holds every member and the T2V decision (``ensemble.t2v_predict``): it returns the members'
  probabilities (M, N, C) and the decided class (N,).
* ONNX: one graph, compiled from the inference function's jaxpr by
  ``faml_jax.jaxpr_onnx.to_onnx`` (opset 17, batch dimension symbolic; why not jax2onnx: its
  docstring): ``<name>.onnx`` for one network (probabilities out), ``ensemble.onnx`` for an
  ensemble: every member's logits, the T2V scores, the decision and its confidence
  (``onnx_ensemble_function``), what ``Predictor.predict`` returns.
* README.md: the face cutting a deployment must do (``faml_jax.export_readme``).

    >>> export.export_runs(["runs/rafdb-r18_faml-seed0"], "exported", formats=("onnx", "stablehlo"))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax import data, ensemble, fga, models, runs
from faml_jax.config import EnsembleConfig, RunConfig, evaluation_model
from faml_jax.errors import ConfigError
from faml_jax.evaluate import check_compatible, model_groups, named_members
from faml_jax.export_readme import readme
from faml_jax.jaxpr_onnx import to_onnx
from faml_jax.preprocess import normalize
from faml_jax.safenames import plain_name
from faml_jax.versions import stamped
from faml_jax.workdir import WorkdirLock, check_replaceable, recognise_listed
from faml_jax.writer import folder_written_whole, write_atomic, write_json

FORMATS = ("onnx", "stablehlo")
PLATFORMS = ("cpu", "cuda")  # the StableHLO module runs on either, wherever it was exported


def inference_function(config: RunConfig, variables: dict) -> Callable[[jax.Array], jax.Array]:
    """``images (N, S, S, 3) uint8 -> probabilities (N, C) float32`` of one network, its
    variables closed over (normalisation as in training and evaluation). Computed in float32
    whatever the run's compute dtype (its parameters are float32; bfloat16 has no ONNX CPU kernels)."""
    model = models.network(evaluation_model(config.model))
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    def infer(images):
        return jax.nn.softmax(model.apply(variables, normalize(images), train=False), axis=-1)

    infer.weights, infer.apply = (
        variables,
        lambda weights, images: jax.nn.softmax(model.apply(weights, normalize(images), train=False), axis=-1),
    )
    return infer


def ensemble_function(config: RunConfig, variables: Sequence[dict], ensemble_config: EnsembleConfig = EnsembleConfig()):
    """``images -> (probabilities (M, N, C), T2V decision (N,))`` of several networks (float32)."""
    model = models.network(evaluation_model(config.model))
    stacked = fga.stack([{"params": v["params"], "batch_stats": v["batch_stats"]} for v in variables])
    alpha, beta = ensemble_config.alpha, ensemble_config.beta

    def apply(weights, images):
        logits = ensemble.ensemble_logits(model, weights, images)
        return jax.nn.softmax(logits, axis=-1), ensemble.t2v_predict(logits, alpha, beta)

    def infer(images):
        return apply(stacked, images)

    infer.weights, infer.apply = stacked, apply
    return infer


ENSEMBLE_ONNX = "ensemble.onnx"
ENSEMBLE_OUTPUTS = ("logits", "scores", "decision", "confidence")


def onnx_ensemble_function(
    config: RunConfig, variables: Sequence[dict], ensemble_config: EnsembleConfig = EnsembleConfig()
):
    """``images -> (logits (N, M, C), T2V scores (N, C), decision (N,) int32, confidence (N,))``
    of several networks, the batch first (as ONNX runtimes batch), each member's weights closed
    over and its network unrolled (ONNX has no loop over stacked weights to compile to). The
    scores and the decision are ``ensemble.t2v_scores`` and ``ensemble.t2v_predict`` themselves
    (Eq. 10-12, ties by NOI then the lowest class), the confidence is the members' mean
    probability of the decided class: what ``Predictor.predict`` returns, in one graph."""
    model = models.network(evaluation_model(config.model))
    members = [{"params": v["params"], "batch_stats": v["batch_stats"]} for v in variables]
    alpha, beta = ensemble_config.alpha, ensemble_config.beta

    def infer(images):
        x = normalize(images)
        logits = jnp.stack([model.apply(v, x, train=False) for v in members])  # (M, N, C)
        decision = ensemble.t2v_predict(logits, alpha, beta)
        mean = jax.nn.softmax(logits, axis=-1).mean(axis=0)
        chosen = decision[:, None] == jnp.arange(logits.shape[-1], dtype=decision.dtype)[None, :]
        confidence = jnp.sum(jnp.where(chosen, mean, 0.0), axis=-1)
        return jnp.swapaxes(logits, 0, 1), ensemble.t2v_scores(logits, alpha, beta), decision, confidence

    return infer


# ---------------------------------------------------------------------------------------------
# StableHLO


def to_stablehlo(function: Callable, input_size: int) -> tuple[bytes, dict]:
    """``function`` (from ``inference_function`` / ``ensemble_function``) serialised by
    ``jax.export`` as a function of ``(weights, images)``, the batch of uint8 images (b, S, S, 3)
    symbolic; returns the serialised module and the weights as flat arrays ("/"-joined paths).
    **[choice]** The weights are an argument, not constants inside the module: XLA's CPU compiler
    (jaxlib 0.10.2) computed a full-width R18+FAML with its weights as constants to all-zero
    logits (with them as arguments it matches the eager model), so they travel beside it."""
    from flax import traverse_util

    weights = jax.device_get(function.weights)
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, input_size, input_size, 3), jnp.uint8)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), weights)
    exported = jax.export.export(jax.jit(function.apply), platforms=PLATFORMS)(specs, spec)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(weights, sep="/").items()}
    return bytes(exported.serialize()), flat


def load_stablehlo(path: str | os.PathLike) -> Callable:
    """A function exported by ``export_runs``: its ``model.stablehlo`` (``model.weights.npz``
    beside it) or the export folder holding both; callable on uint8 images."""
    from flax import traverse_util

    path = Path(path)
    if path.is_dir():
        path = path / "model.stablehlo"
    weights_path = path.with_name(path.stem + ".weights.npz")
    for needed in (path, weights_path):
        if not needed.is_file():
            raise ConfigError(
                f"{needed} not found: load_stablehlo takes a folder written by tools.export "
                "--format stablehlo (or its model.stablehlo)"
            )
    weights = traverse_util.unflatten_dict(_read_weights(weights_path), sep="/")
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as error:  # flatbuffers' and jax's errors on bytes that are not an export
        raise ConfigError(f"{path} is not a StableHLO export (damaged?): {str(error).splitlines()[0][:120]}") from None
    weights.setdefault("batch_stats", {})  # a network without BatchNorm (VGG16) stores none
    return lambda images: exported.call(weights, images)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The float arrays of an export's ``model.weights.npz`` (never unpickled); a damaged file
    or one holding anything else is a one-line ``ConfigError`` naming it."""
    import zipfile
    import zlib

    try:
        with np.load(path, allow_pickle=False) as saved:
            weights = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ConfigError(f"{path} cannot be read (damaged?): {str(error).splitlines()[0][:120]}") from None
    wrong = [k for k, v in weights.items() if v.dtype.kind != "f" or not all(k.split("/"))]
    if not weights or wrong:
        raise ConfigError(f"{path} is not the weights tools.export wrote ({', '.join(wrong[:3]) or 'no arrays'})")
    return weights


# ---------------------------------------------------------------------------------------------
# Runs -> files


EXPORT_KIND = "faml_jax.export"  # export.json's "kind": how an export folder is recognised


def recognise_export(folder: Path) -> str | None:
    """None for a folder ``export_runs`` wrote, else what in ``folder`` is not its own."""
    return recognise_listed(folder, "export.json", EXPORT_KIND, lambda index: set(index.get("files", {})))


def export_runs(
    workdirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    checkpoint: str = "final",
    ensemble_config: EnsembleConfig = EnsembleConfig(),
    names=None,
    overwrite: bool = False,
) -> dict:
    """Export the networks of ``workdirs`` (one run, or the members of an ensemble) into ``out``:
    ``<name>.onnx`` (one network) or ``ensemble.onnx`` (every member and the T2V decision),
    ``model.stablehlo`` (one network, or the ensemble with its T2V decision), README.md (how to
    cut faces) and ``export.json`` (what each file takes and returns, classes, input size, T2V's
    weights). Returns that description.

    The folder is written under a temporary name and renamed when complete. An earlier export in
    ``out`` is replaced only with ``overwrite``; a folder that is not an export (a run, anything
    else) never is."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"unknown export format(s) {unknown}; expected some of {', '.join(FORMATS)}")
    paths = [Path(p) for p in workdirs]
    names, loaded = _load_networks(paths, names, checkpoint)
    out = Path(out).absolute()
    with WorkdirLock(out.parent, f"export folder {out.name} in", name=f".{out.name}.lock"):
        check_replaceable(out, "export", recognise_export, overwrite)
        with folder_written_whole(out) as tmp:
            return _write_export(tmp, names, paths, loaded, formats, checkpoint, ensemble_config)


def _load_networks(paths: list[Path], names, checkpoint: str) -> tuple[list[str], list[tuple]]:
    """The networks' names (each a plain file name, none twice) and their ``runs.load`` triples;
    refused in one line unless they are one architecture at one input size."""
    names = list(names) if names is not None else [n for n, _ in named_members(paths)]
    for name in names:  # each becomes <name>.onnx in the folder: never a path out of it
        plain_name(name, "the export", "network name", "each network's name becomes a file name in the export")
    if len(set(names)) != len(names):
        raise ConfigError(f"two networks have the same name: {', '.join(names)}")
    loaded = [runs.load(p, checkpoint) for p in paths]
    check_compatible(list(zip(names, paths)), [c for c, _, _ in loaded])
    if len(model_groups([c for c, _, _ in loaded])) > 1:
        raise ConfigError(
            "the networks are of several architectures or input sizes: export one architecture's networks at a time "
            "(each export takes one input size)"
        )
    return names, loaded


def _write_export(out: Path, names, paths, loaded, formats, checkpoint: str, ensemble_config: EnsembleConfig) -> dict:
    """Every file of the export into ``out`` (the folder being written), export.json last."""
    config = loaded[0][0]
    description = _description(config, names, paths, loaded, checkpoint)
    if "onnx" in formats:
        description["files"].update(_write_onnx(out, config, names, [v for _, v, _ in loaded], ensemble_config))
    if "stablehlo" in formats:
        description["files"].update(_write_stablehlo(out, config, [v for _, v, _ in loaded], ensemble_config))
    if len(loaded) > 1:
        description["t2v"] = {
            "alpha": ensemble_config.alpha,
            "beta": ensemble_config.beta,
            "rule": "votes V_k = sum over networks of alpha [k is its top-1] + beta [k is its "
            "top-2]; decision argmax V, ties broken by the summed probabilities, then "
            "by the lowest class index (Eq. 10-12)",
        }
    description["files"]["README.md"] = "how to cut faces from photos and run the model"
    write_atomic(out / "README.md", text=readme(description))
    write_json(out / "export.json", stamped(description))
    return description


def _description(config: RunConfig, names, paths, loaded, checkpoint: str) -> dict:
    """export.json before its files are listed: the input, the classes and the networks."""
    size = config.model.input_size
    return {
        "kind": EXPORT_KIND,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": ["batch", size, size, 3],
            "meaning": "RGB face crops already cut out as the run's data set shows faces (faml_jax.faces); "
            "resized to the input size; normalisation is inside",
        },
        "classes": list(data.class_names(config.data.dataset)[: config.model.num_classes]),
        "dataset": config.data.dataset,
        "model": config.model_name,
        "input_size": size,
        "checkpoint": checkpoint,
        "networks": [{"name": n, "run": str(p), "epoch": e} for n, p, (_, _, e) in zip(names, paths, loaded)],
        "files": {},
    }


def _write_onnx(out: Path, config: RunConfig, names, variables, ensemble_config: EnsembleConfig) -> dict[str, str]:
    """``<name>.onnx`` for one network, or ``ensemble.onnx``: every member, the T2V scores and
    the decision in one graph (no per-member files: its ``logits`` output holds each member's);
    returns what each file is."""
    size = config.model.input_size
    if len(variables) == 1:
        model = to_onnx(inference_function(config, variables[0]), size, name=names[0])
        write_atomic(out / f"{names[0]}.onnx", payload=model.SerializeToString())
        return {f"{names[0]}.onnx": "images -> probabilities (batch, classes) of one network"}
    function = onnx_ensemble_function(config, variables, ensemble_config)
    model = to_onnx(function, size, name="ensemble", outputs=ENSEMBLE_OUTPUTS)
    write_atomic(out / ENSEMBLE_ONNX, payload=model.SerializeToString())
    return {
        ENSEMBLE_ONNX: "images -> logits (batch, networks, classes) in export.json's order of networks, "
        "scores (batch, classes) T2V's votes (Eq. 12), decision (batch,) int32 the decided class (ties: "
        "export.json's t2v.rule), confidence (batch,) the networks' mean probability of the decided class"
    }


def _write_stablehlo(out: Path, config: RunConfig, variables, ensemble_config: EnsembleConfig) -> dict[str, str]:
    """``model.stablehlo`` (one network, or the ensemble with its T2V decision) and its
    ``model.weights.npz``; returns what each file is."""
    if len(variables) == 1:
        function = inference_function(config, variables[0])
        what = "images -> probabilities (batch, classes)"
    else:
        function = ensemble_function(config, variables, ensemble_config)
        what = "images -> (probabilities (members, batch, classes), T2V decision (batch,))"
    module, weights = to_stablehlo(function, config.model.input_size)
    write_atomic(out / "model.weights.npz", arrays=weights)
    write_atomic(out / "model.stablehlo", payload=module)
    return {
        "model.stablehlo": what
        + "; a jax.export function of (weights, images): load both with faml_jax.export.load_stablehlo",
        "model.weights.npz": "the weights of model.stablehlo (flat, '/'-joined paths)",
    }
