"""Records written elsewhere, read back (issue 36): a network given to an evolution is identified
by its checkpoint's digest, not by its path; every number of a run's config.json is bounded before
anything is built from it; a damaged array file is one line naming it. Run folders are written
by hand (``helpers.write_run``), nothing is trained."""

import json
import shutil

import numpy as np
import pytest
from helpers import jittered_variables, tiny_config, write_run

from experiments import ensemble as ensemble_program
from experiments import predict as predict_program
from faml_jax import export, runs
from faml_jax.config import FGAConfig
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.evolution import Evolution, evolve
from faml_jax.predict import Predictor
from faml_jax.records import config_to_json, run_config_from_json
from faml_jax.versions import FORMAT_VERSION, stamped
from tools import export as export_program


@pytest.fixture(scope="module")
def runs_by_hand(tmp_path_factory):
    """Three finished runs of the tiny network (different weights), each with a summary.json as
    experiments.train leaves it."""
    root = tmp_path_factory.mktemp("records")
    config = tiny_config(root / "data", 1)
    paths = []
    for i in range(3):
        path = write_run(root / f"net{i}", config, jittered_variables(config, i), test_accuracy=0.1 * (i + 1))
        summary = {
            "epochs": 1,
            "final_train_loss": 1.0 + i,
            "final_train_ce": 1.0 + i,
            "final_train_accuracy": 0.5,
            "final_test_accuracy": 0.1 * (i + 1),
            "well_trained": False,
            "switch_epoch": None,
        }
        (path / "summary.json").write_text(json.dumps(summary))
        paths.append(path)
    return root, config, paths


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------------------------
# 3. A network given with --members is identified by its checkpoint, not its path


def test_a_given_network_swapped_or_moved_is_refused_by_every_reader(runs_by_hand, tmp_path, capsys):
    root, config, (a, b, other) = runs_by_hand
    given = [shutil.copytree(a, tmp_path / "a"), shutil.copytree(b, tmp_path / "b")]
    evo = tmp_path / "evo"
    evolve(config, FGAConfig(population=2, generations=0), evo, members=given, progress=False)
    assert Predictor.from_population(evo).num_members == 2  # as recorded: accepted

    # Another run put in given1's place (cp -a): same path, another network.
    shutil.rmtree(given[1])
    shutil.copytree(other, given[1])
    message = f"network given1 in {given[1]} is not the one {evo / 'population.json'} records"
    with pytest.raises(WorkdirError, match=message):
        Predictor.from_population(evo)
    for program, argv in (
        (ensemble_program, ["--population", str(evo), "--out", str(tmp_path / "report"), "--no-progress"]),
        (predict_program, ["--population", str(evo), str(tmp_path / "a"), "--out", str(tmp_path / "p")]),
        (export_program, ["--population", str(evo), str(tmp_path / "x")]),
    ):
        assert program.main(argv) == 2
        assert message in one_line(capsys)
    # The evolution read back to go on (given1 is a survivor, so a parent of the next children).
    with pytest.raises(WorkdirError, match=message):
        Evolution(config, FGAConfig(population=2), evo, given=given, member_parallel=False, progress=False)
    # The same network copied back (cp -a keeps its files): accepted again.
    shutil.rmtree(given[1])
    shutil.copytree(b, given[1])
    assert Predictor.from_population(evo).num_members == 2

    # given0 moved away: the error names the network and where its path comes from.
    given[0].rename(tmp_path / "moved")
    assert ensemble_program.main(["--population", str(evo), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = one_line(capsys)
    assert f"network given0's run folder {given[0]} (recorded in {evo / 'population.json'}) not found" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "evo", "moved"]  # nothing written
    # What population.json records of each given network: its final checkpoint's epoch and digest.
    lineage = json.loads((evo / "population.json").read_text())
    for i, path in enumerate([tmp_path / "moved", given[1]]):
        record = lineage["members"][f"given{i}"]
        assert record["checkpoint_epoch"] == 1
        assert record["checkpoint_digest"] == runs.checkpoint_digest(path, 1)


def test_a_lineage_of_the_previous_version_or_crafted_is_refused(runs_by_hand, tmp_path):
    _, _, (a, _, _) = runs_by_hand
    (tmp_path / "evolve.json").write_text(json.dumps(stamped({"fga": {"generations": 0}})))
    entry = {"generation": 0, "origin": "given", "workdir": str(a), "seed": None, "status": "trained"}
    lineage = {"members": {"given0": entry}, "generations": [{"generation": 0, "survivors": ["given0"]}]}
    path = tmp_path / "population.json"
    path.write_text(json.dumps(stamped(lineage, 2)))  # before digests were recorded
    with pytest.raises(
        WorkdirError, match="population.json has format version 2; this faml_jax reads format version 3"
    ):
        runs.population_members(tmp_path)
    path.write_text(json.dumps(stamped(lineage, 3)))
    with pytest.raises(WorkdirError, match="network given0 .given with --members. has no valid checkpoint_epoch"):
        runs.population_members(tmp_path)
    own = {**entry, "origin": "initial", "workdir": "../../elsewhere"}  # a name that would become a path
    path.write_text(json.dumps(stamped({**lineage, "members": {"given0": own}}, 3)))
    with pytest.raises(WorkdirError, match="network given0's workdir is '../../elsewhere', not members/given0"):
        runs.population_members(tmp_path)


# ---------------------------------------------------------------------------------------------
# 4. Every number of a run's config.json is bounded, in the reader every program passes


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("widths", [1e9, 16, 16, 32], r"model\.widths\[0\] is 1000000000\.0, not an integer"),
        ("widths", [10**9, 16, 16, 32], r"model\.widths\[0\] is 1000000000; this faml_jax reads 1 to 4,096"),
        ("input_size", 1_000_000, r"model\.input_size is 1000000; this faml_jax reads 2 to 1,024"),
    ],
)
def test_a_crafted_config_is_refused_before_anything_is_built(
    runs_by_hand, tmp_path, capsys, monkeypatch, field, value, message
):
    """widths [1e9, ...] aborted with a C++ overflow (exit 134); input_size 1,000,000 grew
    prediction to 21 GB and the export wrote a model of that input: each program refuses it in one
    line naming the file and the field, and no network is built (the template a checkpoint is
    restored into is where the size would be allocated)."""
    _, _, (a, _, _) = runs_by_hand
    run = shutil.copytree(a, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["model"][field] = value
    (run / "config.json").write_text(json.dumps(saved))

    def built(*args, **kwargs):
        raise AssertionError("a network was built from the crafted configuration")

    monkeypatch.setattr(runs, "state_template", built)
    where = rf"{run / 'config.json'}: {message}"
    with pytest.raises(ConfigError, match=where):
        Predictor.from_run(run)
    with pytest.raises(ConfigError, match=where):
        export.export_runs([run], tmp_path / "x", formats=("stablehlo",))
    for program, argv in (
        (predict_program, ["--run", str(run), str(run), "--out", str(tmp_path / "p")]),
        (export_program, [str(run), str(tmp_path / "x")]),
        (ensemble_program, ["--members", str(run), "--out", str(tmp_path / "r"), "--no-progress"]),
    ):
        assert program.main(argv) == 2
        err = one_line(capsys)
        assert str(run / "config.json") in err and f"model.{field}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("batch_size",), 10**9, "batch_size is 1000000000; this faml_jax reads 1 to 65,536"),
        (("model", "num_classes"), 10**7, "model.num_classes is 10000000; this faml_jax reads 2 to 1,000"),
        (("model", "stage_depths"), [2] * 40, "model.stage_depths holds 40 values; this faml_jax reads at most 16"),
        (("model", "attention"), 1, "model.attention is 1, not true or false"),
        (("model", "dtype"), "float8", "model.dtype is 'float8', not one of 'float32', 'bfloat16'"),
        (("data", "synthetic", "image_size"), 10**6, "data.synthetic.image_size is 1000000; this faml_jax reads"),
        (("schedule", "lr1"), "fast", "schedule.lr1 is 'fast', not a finite number"),
        (("model",), 3, "model is not an object"),
    ],
)
def test_each_field_is_typed_and_bounded(path, value, message):
    saved = stamped(config_to_json(tiny_config("/tmp/unused", 1)))
    target = saved
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=f"^runs/x/config.json: {message}".replace("[", r"\[").replace("(", r"\(")):
        run_config_from_json(saved, "runs/x/config.json")


def test_the_presets_are_within_the_bounds():
    from faml_jax.models import PRESETS
    from faml_jax.presets import preset

    for dataset in ("synthetic", "rafdb", "affectnet8"):
        for model in PRESETS:
            config = preset(dataset, model, from_scratch=True)
            assert run_config_from_json(stamped(config_to_json(config)), "x") == config


# ---------------------------------------------------------------------------------------------
# 5. A damaged test_logits/epoch_*.npz is one line naming it


def damaged_object_array(path):
    np.savez(path, logits=np.zeros((40, 7), np.float32), labels=np.array([{"a": 1}, None], dtype=object))


def damaged_truncated(path):
    np.savez(path, logits=np.zeros((40, 7), np.float32), labels=np.zeros(40, np.int32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [damaged_object_array, damaged_truncated])
def test_damaged_test_logits_are_one_line_naming_the_file(runs_by_hand, tmp_path, capsys, damage):
    _, _, (a, _, _) = runs_by_hand
    run = shutil.copytree(a, tmp_path / "run")
    stored = run / "test_logits" / "epoch_0001.npz"
    stored.parent.mkdir()
    damage(stored)
    assert ensemble_program.main(["--members", str(run), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = one_line(capsys)
    assert f"the test logits {stored}" in err and "(damaged?)" in err, err
    assert not (tmp_path / "r").exists()


def test_an_array_file_without_the_arrays_written_is_named(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, logits=np.zeros((3, 7), np.float32))
    with pytest.raises(WorkdirError, match=f"the test logits {path} has no labels"):
        runs.read_arrays(path, {"logits": ("f", 2), "labels": ("iu", 1)}, "the test logits")
    np.savez(path, logits=np.zeros((3, 7), np.float32), labels=np.zeros(3, np.float32))
    with pytest.raises(WorkdirError, match="labels is float32 .3,., not as written"):
        runs.read_arrays(path, {"logits": ("f", 2), "labels": ("iu", 1)}, "the test logits")
    assert FORMAT_VERSION == 2  # config.json and checkpoints keep their version


def test_a_damaged_stablehlo_export_is_one_line_naming_the_file(tmp_path):
    """load_stablehlo reads a folder that may come from elsewhere: damaged weights (an object
    array, a truncated zip) or a damaged model file are one line naming the file."""
    from faml_jax import export
    from faml_jax.errors import ConfigError

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "model.stablehlo").write_bytes(b"not a flatbuffer at all")
    np.savez(folder / "model.weights.npz", **{"params/fc/kernel": np.array([object()], dtype=object)})
    with pytest.raises(ConfigError, match=r"model\.weights\.npz cannot be read \(damaged\?\)"):
        export.load_stablehlo(folder)
    np.savez(folder / "model.weights.npz", **{"params/fc/kernel": np.ones((2, 2), np.float32)})
    whole = (folder / "model.weights.npz").read_bytes()
    (folder / "model.weights.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=r"model\.weights\.npz cannot be read \(damaged\?\)"):
        export.load_stablehlo(folder)
    (folder / "model.weights.npz").write_bytes(whole)
    with pytest.raises(ConfigError, match=r"model\.stablehlo is not a StableHLO export \(damaged\?\)"):
        export.load_stablehlo(folder)
