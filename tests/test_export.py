"""Tests of faml_jax.export, its ONNX compiler (faml_jax.jaxpr_onnx) and ``python -m tools.export``:
the ONNX graph (run by onnxruntime) and the StableHLO function (loaded with jax alone) equal JAX's
probabilities within 1e-4 for R18 and R18+FAML, at batch sizes other than the traced one; an
ensemble's StableHLO gives the T2V decision."""

import json

import numpy as np
import onnxruntime
import pytest
from helpers import TINY_MODEL, jittered_variables, write_run

from faml_jax import ensemble, export, runs
from faml_jax.errors import ConfigError
from faml_jax.presets import preset


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# Small versions of Table 6's other networks (docs/method.md 7) at the tiny run's input size.
OTHER_MODELS = {
    "resnet34": dict(widths=(8, 8, 16, 16), input_size=32),
    "vgg16": dict(widths=(8, 8, 16, 16, 16), classifier_width=32, input_size=32),
    "densenet121": dict(widths=(8,), growth_rate=4, stage_depths=(2, 2, 2, 2), input_size=32),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["r18", "r18_faml", *OTHER_MODELS])
def test_onnx_and_stablehlo_equal_jax(name, tmp_path, capsys):
    from tools import export as program

    config = preset("synthetic", name, model_options=OTHER_MODELS.get(name, TINY_MODEL))
    run = write_run(tmp_path / name, config, jittered_variables(config, 0))
    assert program.main([str(run), str(tmp_path / "out")]) == 0
    assert f"{name}.onnx" in capsys.readouterr().out
    _, variables, _ = runs.load(run)
    reference = export.inference_function(config, variables)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / f"{name}.onnx"))
    stablehlo = export.load_stablehlo(tmp_path / "out" / "model.stablehlo")
    for batch in (1, 5):  # traced at 97
        x = images(batch, seed=batch)
        expected = np.asarray(reference(x))
        np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.asarray(stablehlo(x)), expected, atol=1e-4, rtol=0)
    description = json.loads((tmp_path / "out" / "export.json").read_text())
    assert description["input"]["shape"] == ["batch", 32, 32, 3] and description["classes"][0] == "anger"


@pytest.mark.gpu
def test_an_ensembles_stablehlo_holds_the_t2v_decision(tmp_path):
    config = preset("synthetic", "r18", model_options=TINY_MODEL)
    paths = [write_run(tmp_path / f"net{i}", config, jittered_variables(config, i)) for i in range(3)]
    description = export.export_runs(paths, tmp_path / "out", formats=("stablehlo",))
    assert description["t2v"]["alpha"] == 1.9 and "model.stablehlo" in description["files"]
    probabilities, decision = export.load_stablehlo(tmp_path / "out")(images(6))  # the folder, or its module
    np.testing.assert_array_equal(export.load_stablehlo(tmp_path / "out" / "model.stablehlo")(images(6))[1], decision)
    with pytest.raises(ConfigError, match="model.stablehlo not found: load_stablehlo takes a folder written by"):
        export.load_stablehlo(tmp_path)
    logits = np.stack(
        [np.log(np.asarray(export.inference_function(config, runs.load(p)[1])(images(6)))) for p in paths]
    )
    np.testing.assert_allclose(np.asarray(probabilities), np.exp(logits), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(decision), ensemble.t2v_predict(logits))
    with pytest.raises(ValueError, match="unknown export format"):
        export.export_runs(paths, tmp_path / "x", formats=("tflite",))


@pytest.mark.gpu
def test_an_ensembles_onnx_is_one_model_that_equals_the_predictor(tmp_path, capsys, monkeypatch):
    """tools.export of several runs writes ONE ONNX graph whose outputs are every member's logits,
    the T2V scores, the decision and its confidence: onnxruntime gives Predictor.predict's within
    1e-5 at batch sizes other than the traced one. The folder's README.md snippet, run as written
    on a real photo, cuts the faces as the predictor's photos do and gives the predictor's answer."""
    from faml_jax.predict import Predictor
    from tools import export as program

    config = preset("synthetic", "r18", model_options=TINY_MODEL)
    paths = [write_run(tmp_path / f"net{i}", config, jittered_variables(config, i)) for i in range(3)]
    out = tmp_path / "out"
    assert program.main([*map(str, paths), str(out), "--format", "onnx"]) == 0
    assert "ensemble.onnx" in capsys.readouterr().out
    files = ["README.md", "ensemble.onnx", "export.json"]
    assert sorted(p.name for p in out.iterdir()) == files  # no file per member
    description = json.loads((out / "export.json").read_text())
    assert sorted(description["files"]) == sorted(set(files) - {"export.json"})
    assert export.recognise_export(out) is None  # its own: --overwrite may replace it
    session = onnxruntime.InferenceSession(str(out / "ensemble.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "scores", "decision", "confidence"]
    predictor = Predictor.from_runs(paths)
    for batch in (1, 6):
        x = images(batch, seed=10 + batch)
        logits, scores, decision, confidence = session.run(None, {"images": x})
        expected = predictor.predict(x)
        np.testing.assert_allclose(logits, expected.logits.transpose(1, 0, 2), atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores, expected.scores, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(decision, expected.decision)
        np.testing.assert_allclose(confidence, expected.confidence, atol=1e-5, rtol=0)
    # The README's snippet, as a user would copy it, on the astronaut photo.
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
    from PIL import Image

    from faml_jax import faces

    photo = skimage_data.astronaut()
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    readme = (out / "README.md").read_text()
    assert 'faces.Finder("box")' in readme and "Image.BILINEAR" in readme  # the synthetic set's cut
    snippet = readme.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(snippet.replace('"ensemble.onnx"', repr(str(out / "ensemble.onnx"))), namespace)
    photo = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    crops = [face.crop for face in faces.Finder("box").find(photo)]
    assert len(crops) == 1
    expected = predictor.predict(crops)
    np.testing.assert_array_equal(namespace["decision"], expected.decision)
    np.testing.assert_allclose(namespace["logits"], expected.logits.transpose(1, 0, 2), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_full_width_r18_faml_at_initialisation_exports_exactly(tmp_path):
    """The case that XLA's CPU compiler got wrong with the weights as constants of the module
    (all-zero logits at 112 px and more, full widths, zero back-projections): the weights travel
    as an argument, and the exported function equals the model applied op by op."""
    import jax

    from faml_jax import models
    from faml_jax.preprocess import normalize

    config = preset("rafdb", "r18_faml", from_scratch=True, model_options={"input_size": 112})
    variables = models.init(models.network(config.model), jax.random.key(0))
    run = write_run(tmp_path / "run", config, variables)
    export.export_runs([run], tmp_path / "out", formats=("stablehlo",))
    x = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    expected = jax.nn.softmax(models.network(config.model).apply(variables, normalize(x), train=False), axis=-1)
    got = export.load_stablehlo(tmp_path / "out" / "model.stablehlo")(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4, rtol=0)


def test_a_bfloat16_run_exports_in_float32(tmp_path):
    """GPU runs compute in bfloat16 (their parameters are float32): the export computes in
    float32, which ONNX's CPU kernels have."""
    config = preset("synthetic", "r18", model_options={**TINY_MODEL, "dtype": "bfloat16"})
    run = write_run(tmp_path / "bf16", config, jittered_variables(config, 0))
    export.export_runs([run], tmp_path / "out", formats=("onnx",))
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "bf16.onnx"))
    x = images(2)
    float32 = preset("synthetic", "r18", model_options=TINY_MODEL)
    expected = np.asarray(export.inference_function(float32, runs.load(run)[1])(x))
    np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, atol=1e-4, rtol=0)


def test_the_export_folder_replaces_only_an_earlier_export(tmp_path, capsys):
    """tools.export writes its folder whole; an earlier export is replaced only with --overwrite,
    and a folder that is not an export (a run, a user's files) never is, even with --overwrite."""
    from tools import export as program

    config = preset("synthetic", "r18", model_options=TINY_MODEL)
    run = write_run(tmp_path / "net", config, jittered_variables(config, 0))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "out"
    assert program.main([str(run), str(out), "--format", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "net.onnx"]
    capsys.readouterr()
    assert program.main([str(run), str(out), "--format", "onnx"]) == 2
    assert "holds an earlier export: pass --overwrite" in capsys.readouterr().err
    assert program.main([str(run), str(out), "--format", "stablehlo", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "model.stablehlo", "model.weights.npz"]
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    for target, named in ((out, "notes.txt"), (run, "checkpoints, config.json")):
        assert program.main([str(run), str(target), "--format", "onnx", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"{target} is not an export written by faml_jax (it holds {named}" in err and len(err.splitlines()) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "out"]  # no temporary folder or lock left


def test_an_export_killed_mid_write_leaves_nothing_after_the_next(tmp_path, capsys):
    """tools.export killed while writing left .OUT.<random>.tmp/ and .OUT.lock beside OUT, and
    later exports never removed them: the next export, holding OUT's lock (so their writer is
    gone), removes them."""
    import subprocess
    import sys

    from helpers import program_env

    from tools import export as program

    config = preset("synthetic", "r18", model_options=TINY_MODEL)
    run = write_run(tmp_path / "net", config, jittered_variables(config, 0))
    out = tmp_path / "out"
    script = (
        "import os, sys; from pathlib import Path; from faml_jax.workdir import WorkdirLock; "
        "from faml_jax.writer import folder_written_whole; out = Path(sys.argv[1]); "
        "WorkdirLock(out.parent, name='.out.lock').acquire(); whole = folder_written_whole(out); tmp = whole.__enter__(); "
        "(tmp / 'net.onnx').write_text('half'); os._exit(9)"
    )  # killed mid-write, holding the lock
    assert subprocess.run([sys.executable, "-c", script, str(out)], env=program_env()).returncode == 9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert len(left) == 2 and ".out.lock" in left and any(name.endswith(".tmp") for name in left)
    assert program.main([str(run), str(out), "--format", "onnx"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "net.onnx"]


def test_the_onnx_compiler_refuses_a_primitive_without_a_converter_in_one_line():
    """faml_jax.jaxpr_onnx maps each primitive of the inference path; any other (here ``sin``) is a
    one-line ConfigError naming it, not a graph that onnxruntime would reject later."""
    import jax.numpy as jnp

    from faml_jax.jaxpr_onnx import to_onnx

    with pytest.raises(ConfigError, match=r"^ONNX export: no ONNX conversion for jax primitive 'sin'$"):
        to_onnx(lambda x: jnp.sin(x.astype(jnp.float32)).reshape(x.shape[0], -1), 4)
