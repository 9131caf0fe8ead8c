"""Ensembles of networks of different architectures and input sizes (beyond the paper;
docs/method.md 7), and the report of a single run (paper Table 1 from one network)."""

import dataclasses

import jax
import numpy as np
import pytest
from helpers import jittered_variables, reference_predict, tiny_config, write_run

from faml_jax import data, models, runs
from faml_jax.config import evaluation_model
from faml_jax.errors import ConfigError
from faml_jax.evaluate import evaluate_members, model_groups
from faml_jax.predict import Predictor
from faml_jax.preprocess import normalize
from faml_jax.presets import preset
from faml_jax.report import ensemble_report

SYNTHETIC = dict(train_size=96, test_size=40, image_size=32)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Four runs written by hand: two tiny R18+FAML at 32 px, a small VGG16 at 32 px and a
    small DenseNet-121 at 48 px, all on the same synthetic data set."""
    root = tmp_path_factory.mktemp("mixed")
    faml = tiny_config(root / "data", 1)
    data_config = dataclasses.replace(faml.data)
    vgg = preset(
        "synthetic",
        "vgg16",
        model_options=dict(widths=(8, 8, 16, 16, 16), classifier_width=32, input_size=32),
        data=data_config,
    )
    densenet = preset(
        "synthetic",
        "densenet121",
        model_options=dict(widths=(8,), growth_rate=4, stage_depths=(2, 2, 2, 2), input_size=48),
        data=data_config,
    )
    configs = [faml, vgg, faml, densenet]
    paths = [
        write_run(root / name, config, jittered_variables(config, seed))
        for seed, (name, config) in enumerate(zip(["faml0", "vgg", "faml1", "densenet"], configs))
    ]
    return root, configs, paths


def separately(config, path, images_by_size):
    """One member's logits on the test split, computed alone with its own float32 network."""
    _, variables, _ = runs.load(path)
    model = models.network(evaluation_model(config.model))
    images = images_by_size[config.model.input_size]
    return np.asarray(jax.jit(lambda v, x: model.apply(v, normalize(x)))(variables, images))


def test_a_mixed_ensemble_decides_as_the_numpy_vote_over_its_members(mixed):
    root, configs, paths = mixed
    members = [(p.name, p) for p in paths]
    assert [positions for positions, _ in model_groups(configs)] == [[0, 2], [1], [3]]
    # How a network was initialised does not split a group (the forward pass is the same).
    other_start = dataclasses.replace(configs[2], model=dataclasses.replace(configs[2].model, fa_init=0.1))
    assert [p for p, _ in model_groups([configs[0], other_start])] == [[0, 1]]
    logits, labels, _, info = evaluate_members(members, progress=False)
    assert info["model"] == "mixed: r18_faml, vgg16, densenet121"
    assert [r["model"] for r in info["members_evaluated"]] == ["r18_faml", "vgg16", "r18_faml", "densenet121"]
    test = runs.open_dataset(configs[0]).test
    images_by_size = {
        size: np.concatenate([b["image"] for b in data.eval_batches(test, 40, size, 1)]) for size in (32, 48)
    }
    expected = np.stack([separately(c, p, images_by_size) for c, p in zip(configs, paths)])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    report = ensemble_report(members, root / "report", progress=False)
    for strategy in ("t1v", "noi", "t2v"):
        predictions, ambiguous = reference_predict(expected, strategy)
        sure = int(np.sum((predictions == labels) & ~ambiguous))
        assert sure / len(labels) <= report["ensemble"][strategy]["accuracy"] <= (sure + ambiguous.sum()) / len(labels)
    # The predictor: the same grouping, each group at its own input size.
    predictor = Predictor.from_runs(paths, batch_size=16)
    assert predictor.mixed and predictor.input_size == 48
    faces = images_by_size[48][:7]
    faces_by_size = {48: faces, 32: np.stack([data.pipeline.resize(f, 32) for f in faces])}
    alone = np.stack([separately(c, p, faces_by_size) for c, p in zip(configs, paths)])
    np.testing.assert_allclose(predictor.logits(faces), alone, rtol=1e-5, atol=1e-5)
    decided, _ = reference_predict(alone, "t2v")
    np.testing.assert_array_equal(predictor.predict(faces).decision, decided)
    with pytest.raises(ConfigError, match="maps of a mixed ensemble"):
        predictor.explain(faces)


def test_members_of_another_data_set_are_refused(mixed, tmp_path):
    root, configs, paths = mixed
    other = dataclasses.replace(
        configs[0],
        data=dataclasses.replace(configs[0].data, synthetic=dataclasses.replace(configs[0].data.synthetic, seed=5)),
    )
    odd = write_run(tmp_path / "odd", other, jittered_variables(other, 9))
    with pytest.raises(ConfigError, match="member odd differs from faml0 in: data.synthetic"):
        evaluate_members([("faml0", paths[0]), ("odd", odd)], progress=False)


def test_the_report_of_one_run_is_its_rank_table(mixed):
    """Table 1 needs one run per row: a report of one member gives its rank of the true label."""
    root, configs, paths = mixed
    report = ensemble_report([("vgg", paths[1])], root / "one", progress=False)
    (member,) = report["members"]
    assert report["sizes"] == [] and report["ensemble"]["t2v"]["accuracy"] == member["accuracy"]
    ranks = report["ranks"]["members"]["vgg"]
    assert ranks[0] == pytest.approx(member["accuracy"], abs=1e-4) and sum(ranks) == pytest.approx(1.0, abs=1e-3)
    assert "One member: no ensemble" in (root / "one" / "report.md").read_text()


def test_predict_refuses_maps_it_cannot_draw_before_writing(mixed, tmp_path, capsys):
    """--explain of a mixed ensemble (or relevancy without attention blocks) is refused in one
    line before any prediction is written."""
    from PIL import Image

    from experiments import predict as predict_program

    _, _, paths = mixed
    face = tmp_path / "face.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(face)
    for runs_given, extra, said in (
        ([paths[0], paths[1]], [], "maps of a mixed ensemble"),
        ([paths[1]], ["--map", "relevancy"], "relevancy maps need a model with attention blocks; vgg16 has none"),
    ):
        out = tmp_path / "out"
        args = [arg for p in runs_given for arg in ("--run", str(p))]
        code = predict_program.main([*args, "--faces", "aligned", str(face), "--explain", *extra, "--out", str(out)])
        assert code == 2 and said in capsys.readouterr().err
        assert not out.exists()
