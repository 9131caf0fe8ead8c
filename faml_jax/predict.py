"""Trained networks applied to new faces, with the preprocessing they were trained with.

A ``Predictor`` is built from run folders, never from the caller's idea of the preprocessing: the
run's config.json gives the input size, the data set (hence the class names and how faces are cut
from photos, ``faml_jax.faces``) and the model; the resize is the training pipeline's own
(``data.pipeline.resize``: antialiased bilinear) and the normalisation happens inside the compiled
call, as in training and evaluation (``preprocess.normalize``). Members of an ensemble are
evaluated together in one compiled call per batch (``ensemble.ensemble_logits``), and batches are
padded to a fixed size, so a folder of any length compiles once.

    >>> predictor = Predictor.from_population("runs/evolve-rafdb")      # or from_run / from_runs
    >>> result = predictor.predict(faces)                               # uint8 RGB, any size
    >>> result.classes[result.decision[0]], result.confidence[0]
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from faml_jax import data, ensemble, fga, models, runs
from faml_jax.compiled import compiled
from faml_jax.config import EnsembleConfig, RunConfig, evaluation_model
from faml_jax.data.pipeline import resize
from faml_jax.errors import ConfigError, DataError
from faml_jax.evaluate import call_size, check_compatible, named_members, pad_batch

STRATEGIES = ensemble.STRATEGIES


@functools.partial(jax.jit, static_argnames=("strategy", "ties"))
def _decided(logits, strategy: str, alpha: float, beta: float, ties: str):
    """The probabilities, the strategy's scores and its decision of members' logits (M, N, C), in
    one compiled call per shape (eagerly they are a dozen small calls: served one face at a time,
    that was a tenth of the server's time)."""
    if strategy == "t2v":
        scores = ensemble.t2v_scores(logits, alpha, beta)
    elif strategy == "t1v":
        scores = ensemble.t1v_scores(logits)
    else:
        scores = ensemble.noi_scores(logits)
    return jax.nn.softmax(logits, axis=-1), scores, ensemble.predict(logits, strategy, alpha, beta, ties)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What a predictor says about N faces (M networks, C classes).

    Attributes:
      classes: the class names, in label order.
      logits: (M, N, C) each network's logits.
      probabilities: (M, N, C) each network's softmax.
      scores: (N, C) the ensemble's scores under ``strategy``: T2V's weighted votes (Eq. 12),
        T1V's vote counts, or NOI's summed softmax (Eq. 13); for one network, its softmax.
      decision: (N,) the decided class (a T2V or T1V tie broken by the predictor's ``ties``: NOI
        then the lowest class index, or the lowest class index).
      confidence: (N,) the members' mean probability of the decided class.
      member_top1: (M, N) each network's own top-1 class.
      strategy: "t2v", "t1v" or "noi".
    """

    classes: tuple[str, ...]
    logits: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    decision: np.ndarray
    confidence: np.ndarray
    member_top1: np.ndarray
    strategy: str

    def labels(self) -> list[str]:
        """The decided class names."""
        return [self.classes[k] for k in self.decision]


@dataclasses.dataclass
class Group:
    """Members of one architecture and input size, evaluated together in one compiled call."""

    members: list[int]  # their positions in the ensemble
    config: RunConfig
    model: Any
    variables: Any  # stacked (``fga.stack``), on the device
    step: Any  # ``ensemble.make_ensemble_step(model)``

    @property
    def input_size(self) -> int:
        return self.config.model.input_size


class Predictor:
    """One trained network or an ensemble of networks, ready for faces. The members share the
    data set (its classes); they may differ in architecture and input size (a mixed ensemble,
    beyond the paper: docs/method.md 7): members of one architecture are evaluated in one
    compiled call, each group at its own input size.

    Args:
      config: the (first) run's configuration.
      variables: the members' ``{"params", "batch_stats"}``.
      names: a name per member (its run folder's name).
      strategy: how an ensemble decides (docs/method.md 4): "t2v" (default), "t1v" or "noi".
      ensemble_config: T2V's weights (``EnsembleConfig``: alpha 1.9, beta 1.0) and how T2V and
        T1V break a tie (``ties``: NOI then the lowest class, or the lowest class).
      batch_size: at most this many faces per compiled call (``evaluate.call_size``: the last
        batch is padded to it; fewer faces in all are one call of their own number).
    """

    def __init__(
        self,
        config: RunConfig,
        variables: Sequence[dict],
        names: Sequence[str],
        *,
        strategy: str = "t2v",
        ensemble_config: EnsembleConfig = EnsembleConfig(),
        batch_size: int = 32,
        epochs: Sequence[int] | None = None,
        configs: Sequence[RunConfig] | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if not variables:
            raise ConfigError("a predictor needs at least one network")
        self.config, self.names, self.strategy = config, list(names), strategy
        self.paths, self.checkpoint = [], None  # set by the from_* constructors
        self.epochs = list(epochs) if epochs is not None else None
        self.alpha, self.beta, self.ties = ensemble_config.alpha, ensemble_config.beta, ensemble_config.ties
        self.batch_size = batch_size
        configs = list(configs) if configs is not None else [config] * len(variables)
        self.configs = configs
        self.groups: list[Group] = []
        for model_config in dict.fromkeys(evaluation_model(c.model) for c in configs):
            members = [i for i, c in enumerate(configs) if evaluation_model(c.model) == model_config]
            model = models.network(model_config)  # float32 whatever it trained in
            stacked = jax.device_put(fga.stack(jax.device_get([variables[i] for i in members])))
            group_config = configs[members[0]]
            step = compiled(
                ("ensemble-step", model_config, ensemble.default_mapping()), lambda: ensemble.make_ensemble_step(model)
            )
            self.groups.append(Group(members, group_config, model, stacked, step))
        self._explainers: dict = {}

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_runs(cls, workdirs: Iterable[str | os.PathLike], checkpoint: str = "final", **kwargs) -> Predictor:
        """The networks trained in ``workdirs`` (``experiments.train`` run folders), at their
        ``checkpoint`` ("final" or "best")."""
        return cls._from_members(named_members([Path(p) for p in workdirs]), checkpoint, **kwargs)

    @classmethod
    def from_run(cls, workdir: str | os.PathLike, checkpoint: str = "final", **kwargs) -> Predictor:
        """The network trained in ``workdir``."""
        return cls.from_runs([workdir], checkpoint, **kwargs)

    @classmethod
    def from_population(
        cls,
        evolve_dir: str | os.PathLike,
        checkpoint: str = "final",
        *,
        all_networks: bool = False,
        generation: int | None = None,
        **kwargs,
    ) -> Predictor:
        """A finished evolution's final population (``experiments.evolve``'s workdir) as a T2V
        ensemble; ``all_networks``: every network it trained; ``generation``: that generation's
        survivors instead (``runs.population_members``)."""
        return cls._from_members(runs.population_members(evolve_dir, all_networks, generation), checkpoint, **kwargs)

    @classmethod
    def _from_members(cls, members: list[tuple[str, Path]], checkpoint: str, **kwargs) -> Predictor:
        if not members:
            raise ConfigError("no run folder given")
        loaded = [runs.load(path, checkpoint) for _, path in members]
        check_compatible(members, [c for c, _, _ in loaded])
        predictor = cls(
            loaded[0][0],
            [v for _, v, _ in loaded],
            [n for n, _ in members],
            epochs=[e for _, _, e in loaded],
            configs=[c for c, _, _ in loaded],
            **kwargs,
        )
        predictor.paths, predictor.checkpoint = [p for _, p in members], checkpoint
        return predictor

    # -- what training decided ---------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        """The input side faces are cut at: the largest of the members' (each resizes from it)."""
        return max(group.input_size for group in self.groups)

    @property
    def model(self):
        """The network of the first (for maps and export: the only) architecture."""
        return self.groups[0].model

    @property
    def variables(self):
        """The first architecture's members' stacked variables (on the device)."""
        return self.groups[0].variables

    @property
    def mixed(self) -> bool:
        """Whether the members are of more than one architecture or input size."""
        return len(self.groups) > 1

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return data.class_names(self.dataset)[: self.config.model.num_classes]

    @property
    def num_members(self) -> int:
        return len(self.names)

    # -- prediction --------------------------------------------------------------------------------

    def preprocess(self, faces, size: int | None = None) -> np.ndarray:
        """Face crops (one (H, W, 3) uint8 RGB image, a list of them of any sizes, or an
        (N, H, W, 3) array) -> (N, S, S, 3) uint8 at ``size`` (default: the input size), resized
        exactly as the training pipeline resizes (``data.pipeline.resize``)."""
        size = size or self.input_size
        if isinstance(faces, np.ndarray) and faces.ndim == 3:
            faces = [faces]
        out = []
        for i, face in enumerate(faces):
            face = np.asarray(face)
            if face.ndim != 3 or face.shape[-1] != 3 or face.dtype != np.uint8:
                raise DataError(f"face {i}: expected an (H, W, 3) uint8 RGB image, got {face.dtype} {face.shape}")
            out.append(resize(np.ascontiguousarray(face), size))
        return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)

    def logits(self, faces) -> np.ndarray:
        """(M, N, C) float32 logits of every member for ``faces`` (see ``preprocess``), each group
        of one architecture in compiled calls of ``call_size`` faces (the last one padded)."""
        if isinstance(faces, np.ndarray) and faces.ndim == 3:
            faces = [faces]
        n = len(faces)
        out = np.zeros((self.num_members, n, self.config.model.num_classes), np.float32)
        for group in self.groups:
            images = self.preprocess(faces, group.input_size)
            b = call_size(self.batch_size, n)
            for start in range(0, n, b):
                chunk, pad = pad_batch(images[start : start + b], b)
                out[group.members, start : start + b - pad] = np.asarray(group.step(group.variables, chunk))[
                    :, : b - pad
                ]
        return out

    def decide(self, logits: np.ndarray, strategy: str | None = None) -> Prediction:
        """The ``Prediction`` of members' logits (M, N, C) (pure: no network is run)."""
        strategy = strategy or self.strategy
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        logits = np.asarray(logits, np.float32)
        if len(logits[0]) == 0:
            probabilities = np.zeros(logits.shape, np.float32)
            empty = np.zeros((0,), np.int32)
            return Prediction(
                self.classes,
                logits,
                probabilities,
                probabilities.sum(0),
                empty,
                np.zeros((0,), np.float32),
                np.zeros((len(logits), 0), np.int32),
                strategy,
            )
        probabilities, scores, decision = jax.device_get(_decided(logits, strategy, self.alpha, self.beta, self.ties))
        decision = decision.astype(np.int32)
        if len(logits) == 1:
            scores = probabilities[0]
        confidence = probabilities.mean(0)[np.arange(len(decision)), decision]
        return Prediction(
            self.classes,
            logits,
            probabilities,
            np.asarray(scores, np.float32),
            decision,
            confidence.astype(np.float32),
            np.argmax(logits, -1).astype(np.int32),
            strategy,
        )

    def check_explainable(self, kind: str = "gradcam") -> None:
        """Raise ``ConfigError`` (one line) when ``explain`` cannot draw ``kind`` maps for these
        networks: a mixed ensemble, relevancy without attention blocks, or an input too small for
        a Grad-CAM map (``maps.gradcam_stage``). Programs ask before writing anything."""
        if self.mixed:
            raise ConfigError(
                "maps of a mixed ensemble (members of several architectures or input sizes) are not combined: "
                "explain one architecture's members"
            )
        if kind == "relevancy" and not self.config.model.attention:
            raise ConfigError(
                f"relevancy maps need a model with attention blocks; {self.config.model_name} has none (use gradcam)"
            )
        if kind == "gradcam":
            from faml_jax import maps

            maps.gradcam_stage(self.model, self.input_size)  # a stage of at least 7x7, or one line

    def explain(
        self, faces, kind: str = "gradcam", strategy: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, Prediction]:
        """Where the networks look (docs/method.md 6): ``(map (N, S, S), member maps (M, N, S, S),
        prediction)`` for ``faces`` at the model's input size, each member's ``kind`` map
        ("gradcam" or "relevancy") of the decided class; for an ensemble the map is the members'
        maps weighted by their T2V votes for it (Eq. 12, ``maps.vote_weighted``)."""
        from faml_jax import maps

        self.check_explainable(kind)
        images = self.preprocess(faces)
        prediction = self.predict(images, strategy)
        key = kind
        if key not in self._explainers:
            self._explainers[key] = maps.make_explainer(self.model, kind)
        explainer, b = self._explainers[key], call_size(self.batch_size, len(images))
        member_maps = []
        for start in range(0, len(images), b):
            chunk, decided = images[start : start + b], prediction.decision[start : start + b]
            chunk, pad = pad_batch(chunk, b)
            decided, _ = pad_batch(np.asarray(decided, np.int32), b)
            member_maps.append(np.asarray(explainer(self.variables, chunk, decided)[0])[:, : b - pad])
        size = self.input_size
        member_maps = np.concatenate(member_maps, 1) if member_maps else np.zeros((self.num_members, 0, size, size))
        combined = (
            np.asarray(maps.vote_weighted(member_maps, prediction.logits, prediction.decision, self.alpha, self.beta))
            if self.num_members > 1
            else member_maps[0]
        )
        return combined, member_maps, prediction

    def predict(self, faces, strategy: str | None = None) -> Prediction:
        """Probabilities, ensemble scores and decisions for ``faces`` (face crops as ``preprocess``
        takes them; ``strategy`` overrides the predictor's)."""
        return self.decide(self.logits(faces), strategy)
