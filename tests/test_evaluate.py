"""Tests of faml_jax.evaluate: split evaluation over devices (members evaluated together:
test_report.py)."""

import jax
import numpy as np

from faml_jax import models, train
from faml_jax.data import ArraySource, eval_batches
from faml_jax.evaluate import Evaluator


def test_evaluator_matches_direct_application_with_padding(devices):
    model = models.build("r18", 5, widths=(8, 8, 8, 8), input_size=16)
    variables = models.init(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    src = ArraySource(images, np.arange(23) % 5)
    evaluator = Evaluator(model, batch_size=6, devices=devices)  # 6 -> 8 (4 devices)
    logits, labels = evaluator(train.replicate(variables, devices), eval_batches(src, 10, 16, num_threads=1))
    expected = train.make_eval_step(model)(variables["params"], variables["batch_stats"], images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.arange(23) % 5)


def test_a_split_smaller_than_the_batch_is_padded_to_the_device_count_only(devices):
    """5 images with a batch of 64 are evaluated in one call of 8 (two per device), not 64."""
    model = models.build("r18", 5, widths=(8, 8, 8, 8), input_size=16)
    variables = models.init(model, jax.random.key(0))
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    evaluator = Evaluator(model, batch_size=64, devices=devices)
    step, calls = evaluator._step, []
    evaluator._step = lambda v, x: calls.append(x.shape) or step(v, x)
    logits, _ = evaluator(
        train.replicate(variables, devices), eval_batches(ArraySource(images, np.zeros(5)), 64, 16, 1)
    )
    n = len(devices)
    assert calls == [(n, -(-5 // n), 16, 16, 3)]
    expected = train.make_eval_step(model)(variables["params"], variables["batch_stats"], images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_evaluation_is_float32_whatever_the_training_dtype(tmp_path, devices):
    """docs/method.md 2.4: a run trained in bfloat16 is evaluated in float32, by the trainer's
    evaluator, the predictor and the export alike: each equals a float32 forward of its weights
    (to float32 rounding), and a bfloat16 forward would not."""
    import dataclasses

    from helpers import jittered_variables, tiny_config, write_run

    from faml_jax import data, export
    from faml_jax.config import evaluation_model
    from faml_jax.predict import Predictor
    from faml_jax.preprocess import normalize
    from faml_jax.setup import Setup

    config = tiny_config(tmp_path / "data", 1, attention=True)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="bfloat16"))
    assert config.eval_dtype == "float32" and evaluation_model(config.model).dtype == "float32"
    variables = jittered_variables(config, 0)
    path = write_run(tmp_path / "run", config, variables)
    float32 = models.network(evaluation_model(config.model))
    bfloat16 = models.network(config.model)

    def forward(model, images):  # one compiled forward (the weights an argument), not op by op
        return np.asarray(jax.jit(lambda v, x: model.apply(v, normalize(x), train=False))(variables, images))

    setup = Setup(config)
    logits, _ = setup.test_logits(train.replicate(variables, setup.devices))
    test_images = np.stack([np.asarray(d["image"]) for d in data.eval_batches(setup.dataset.test, 40, 32, 1)][0])
    assert test_images.shape == (40, 32, 32, 3)
    np.testing.assert_allclose(logits, forward(float32, test_images), rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(forward(bfloat16, test_images) - logits)) > 1e-3  # the check can tell them apart

    faces = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    predicted = Predictor.from_runs([path], batch_size=4).logits(faces)[0]
    np.testing.assert_allclose(predicted, forward(float32, faces), rtol=1e-5, atol=1e-5)
    exported = np.asarray(export.inference_function(config, variables)(faces))
    np.testing.assert_allclose(exported, jax.nn.softmax(forward(float32, faces), axis=-1), rtol=1e-5, atol=1e-6)
