"""What ``trainer.fit`` builds from a configuration, shared by every network of it: ``Setup``
(data set, model, optimiser, evaluator, the key of its compiled train steps, where a new network
starts). Below ``faml_jax.loop`` and ``faml_jax.member``, which train and hold the networks it
sets up (``trainer.fit`` one, ``evolution.evolve`` a population).
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from faml_jax import data, models, pretrained, runs, train
from faml_jax.compiled import compiled
from faml_jax.config import RunConfig, evaluation_model
from faml_jax.errors import ConfigError
from faml_jax.evaluate import Evaluator

logger = logging.getLogger(__name__)


def double_correction_warning(config: RunConfig) -> str:
    """What a run told to correct the class imbalance twice is warned (``--balanced`` with a
    class-weighted loss): it trains, as asked, but says so in one line."""
    loss = "wce" if config.loss.kind == "wce" else f"{config.loss.kind} with WCE (--weighted)"
    return (
        f"warning: --balanced with the class-weighted loss ({loss}) corrects the class imbalance twice: the "
        "sampler draws every class equally often and the loss weights the rare classes up again; drop one of "
        "them (--balanced, or --loss ce / --no-weighted) unless that is what you want"
    )


class Setup:
    """The data set, model, optimiser and evaluator shared by every member of one configuration
    (members differ only in seed and starting weights)."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.devices = jax.local_devices()
        self.check_batch(config)
        self.dataset = runs.open_dataset(config)
        self.model = models.network(config.model)  # training: in config.model.dtype
        eval_model = evaluation_model(config.model)  # evaluation: always float32 (docs/method.md 2.4)
        self.tx = train.make_optimizer(config.optim, config.schedule.lr1)
        self.class_weights = self.dataset.class_weights if config.loss.needs_class_weights else None
        if config.data.balanced and config.loss.needs_class_weights:
            logger.warning(double_correction_warning(config))
        self.evaluator = compiled(
            ("evaluator", eval_model, config.eval_batch_size, tuple(self.devices)),
            lambda: Evaluator(models.network(eval_model), config.eval_batch_size, self.devices),
        )

    def step_key(self, kind: str, devices) -> tuple:
        """What a compiled train step of this configuration depends on (``compiled``)."""
        c = self.config
        weights = None if self.class_weights is None else tuple(np.asarray(self.class_weights).tolist())
        return (kind, c.model, c.optim, c.loss, c.augment, weights, None if devices is None else tuple(devices))

    @staticmethod
    def check_batch(config: RunConfig) -> None:
        n = jax.local_device_count() * jax.process_count()
        if config.batch_size % n:
            raise ConfigError(f"batch size {config.batch_size} is not divisible by {n} devices")

    def loader(self, seed: int, *, whole_batches: bool = False) -> data.TrainLoader:
        """The training batches of ``seed``: this process's slice of each global batch, or with
        ``whole_batches`` the global batches themselves (the same in every process)."""
        c = self.config
        shard = (
            dict(process_index=0, process_count=1)
            if whole_batches
            else dict(process_index=jax.process_index(), process_count=jax.process_count())
        )
        return data.TrainLoader(
            self.dataset.train,
            c.batch_size,
            c.model.input_size,
            seed=seed,
            num_threads=c.data.num_threads,
            balanced=c.data.balanced,
            **shard,
        )

    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    @functools.cached_property
    def _steps_per_epoch(self) -> int:  # asked every epoch; building a loader for it each time is waste
        return self.loader(0).steps_per_epoch

    def initial_state(self, seed: int, variables: dict | None = None) -> train.TrainState:
        """A fresh train state from ``seed``; with ``variables``, those weights and statistics
        instead of the random initialisation (fresh optimiser state, step 0, the seed's rng)."""
        state = train.create_train_state(self.model, self.tx, jax.random.key(seed))
        if variables is None:
            return state
        return state.replace(
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=self.tx.init(variables["params"]),
        )

    @functools.cached_property
    def state_template(self) -> train.TrainState:
        """The shapes and dtypes of this configuration's train state (``jax.eval_shape``: nothing
        initialised), what a checkpoint is restored into."""
        return jax.eval_shape(lambda: train.create_train_state(self.model, self.tx, jax.random.key(0)))

    @functools.cached_property
    def backbone(self) -> dict | None:
        """The pre-trained backbone of ``config.init`` (read once), or None."""
        if self.config.init is None:
            return None
        backbone, _, info = pretrained.load_backbone(self.config.init)
        pretrained.check_backbone_fits(info, self.config.model_name, self.config.init)
        return backbone

    def with_backbone(self, variables: dict) -> dict:
        """``variables`` (a random initialisation) with the backbone of ``config.init`` copied in
        (``pretrained.init_from_backbone``, on the host); as they are without one. The one way a
        network starts from a pre-trained backbone (a run, an evolution's networks)."""
        if self.backbone is None:
            return variables
        return pretrained.init_from_backbone(
            jax.device_get(variables), self.backbone, self.config.model.fa_init_pretrained
        )

    def start_variables(self, seed: int) -> dict | None:
        """Where a new network of this configuration starts: None (its seed's random
        initialisation) or, with ``config.init``, that initialisation with the backbone copied in
        (``with_backbone``)."""
        if self.backbone is None:
            return None
        fresh = jax.device_get(self.initial_state(seed))
        return self.with_backbone({"params": fresh.params, "batch_stats": fresh.batch_stats})

    def test_logits(self, variables) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of the test split; ``variables`` replicated (``train.replicate``)."""
        c = self.config
        return self.evaluator(
            variables, data.eval_batches(self.dataset.test, c.eval_batch_size, c.model.input_size, c.data.num_threads)
        )
