"""Tests of faml_jax.runs: a run folder written by hand (config.json, two checkpoints,
metrics.jsonl) read back exactly; the checkpoint choice; one-line errors naming what is missing."""

import dataclasses
import json
import shutil

import chex
import jax
import numpy as np
import pytest
from helpers import TINY_MODEL, tiny_config

from faml_jax import models, runs, train
from faml_jax.checkpoint import DIGEST, CheckpointMismatch, Checkpoints, CheckpointUnreadable, stored_shapes
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.records import config_to_json
from faml_jax.versions import FORMAT_VERSION, stamped


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """Epochs 1 and 2 of a tiny R18+FAML, with different weights; epoch 1 has the higher test
    accuracy, so "best" is 1 and "final" is 2."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(workdir / "data", 2)
    (workdir / "config.json").write_text(json.dumps(stamped(config_to_json(config))))
    model = models.network(config.model)
    tx = train.make_optimizer(config.optim, config.schedule.lr1)
    states = {e: train.create_train_state(model, tx, jax.random.key(e)) for e in (1, 2)}
    accuracy = {1: 0.5, 2: 0.25}
    checkpoints = Checkpoints(workdir)
    for epoch, state in states.items():
        checkpoints.save(epoch, state, {"epoch": epoch})
    checkpoints.close()
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "test_accuracy": a, "train_loss": 1.0}) + "\n" for e, a in accuracy.items())
    )
    return workdir, config, states


def test_load_gives_the_saved_configuration_and_variables(run_folder):
    workdir, config, states = run_folder
    for which, epoch in (("final", 2), ("best", 1)):
        loaded, variables, chosen = runs.load(workdir, which)
        assert loaded == config and chosen == epoch
        expected = {"params": states[epoch].params, "batch_stats": states[epoch].batch_stats}
        chex.assert_trees_all_equal(variables, expected)
    assert runs.last_epoch(workdir)["epoch"] == 2 and runs.checkpoint_epochs(workdir) == [1, 2]
    assert TINY_MODEL["widths"] == config.model.widths


def test_the_digest_records_the_stored_shapes_and_its_format_version(run_folder, tmp_path):
    """The shapes ``stored_like`` compares come from digest.json (the key as its two uint32 words);
    a checkpoint without a digest (a save interrupted before it was written) is judged by orbax's
    metadata: it restores, and another model's template is still a mismatch. A digest of another
    format version is refused, not read, and the checkpoint is left where it is."""
    workdir, config, states = run_folder
    shapes = stored_shapes(workdir / "checkpoints" / "2")
    assert shapes["params/fc/kernel"] == (config.model.widths[-1], config.model.num_classes)
    assert shapes["rng"] == (2,) and len(shapes) == len(jax.tree_util.tree_leaves(states[2]))
    copy = tmp_path / "interrupted"
    shutil.copytree(workdir, copy)
    digest = copy / "checkpoints" / "2" / DIGEST
    recorded = json.loads(digest.read_text())
    assert recorded["format_version"] == FORMAT_VERSION
    digest.unlink()
    assert stored_shapes(copy / "checkpoints" / "2") is None
    checkpoints = Checkpoints(copy)
    try:
        like = runs.state_template(config.model, config.optim)
        state, record = checkpoints.restore(2, like)
        assert record == {"epoch": 2}
        chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(states[2].params))
        other = dataclasses.replace(config.model, widths=(8, 16, 16, 64))
        with pytest.raises(CheckpointMismatch, match="layer4_0/bn1/mean is \\(32,\\) there, \\(64,\\) here"):
            checkpoints.restore(2, runs.state_template(other, config.optim))
        digest.write_text(json.dumps({**recorded, "format_version": FORMAT_VERSION + 1}))
        with pytest.raises(
            CheckpointUnreadable,
            match=f"has format version {FORMAT_VERSION + 1}; this faml_jax reads format version {FORMAT_VERSION}",
        ):
            checkpoints.restore(2, like)
        assert digest.exists()
    finally:
        checkpoints.close()


def test_best_takes_the_earliest_of_equal_accuracies(run_folder, tmp_path):
    workdir, _, _ = run_folder
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    for e in (1, 2, 3):
        (copy / "checkpoints" / str(e)).mkdir()
    (copy / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # unfinished: not a checkpoint
    (copy / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "test_accuracy": a}) + "\n" for e, a in ((1, 0.3), (2, 0.6), (3, 0.6)))
    )
    assert runs.choose_epoch(copy, "best") == 2 and runs.choose_epoch(copy, "final") == 3
    with pytest.raises(ValueError, match="unknown checkpoint 'last'"):
        runs.choose_epoch(copy, "last")


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(WorkdirError, match=f"run folder {tmp_path / 'absent'} not found"):
        runs.load(tmp_path / "absent")
    with pytest.raises(WorkdirError, match="config.json not found"):
        runs.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(stamped(config_to_json(tiny_config(tmp_path, 1)))))
    with pytest.raises(WorkdirError, match=f"no checkpoint in {tmp_path / 'checkpoints'}"):
        runs.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "model": 3}))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'config.json'}: model is not an object"):
        runs.read_run_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(WorkdirError, match="config.json is not a JSON object"):
        runs.read_run_config(tmp_path)


def test_a_restore_puts_arrays_where_the_templates_live_and_keeps_host_values(devices, tmp_path):
    """Arrays go to the template's device (here the second one), a typed key too; NumPy arrays
    and Python numbers come back as such (orbax's own choice, as before shapes were recorded)."""
    with jax.default_device(devices[1]):
        like = {"w": jax.numpy.ones((3, 4)), "key": jax.random.key(0), "host": np.ones(3, np.float32), "n": 3}
    checkpoints = Checkpoints(tmp_path)
    try:
        checkpoints.save(1, like, {"epoch": 1})
        state, _ = checkpoints.restore(1, like)
    finally:
        checkpoints.close()
    assert state["w"].devices() == {devices[1]} and state["key"].devices() == {devices[1]}
    assert jax.random.key_impl(state["key"]) == jax.random.key_impl(like["key"])
    assert isinstance(state["host"], np.ndarray) and state["n"] == 3
