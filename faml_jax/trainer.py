"""Training one network: ``fit(config, workdir)`` (what ``experiments.train`` runs) trains,
evaluates and checkpoints one network data-parallel over all devices in one flat loop
(``train_member``); ``faml_jax.evolution`` reuses it for each network of a population (and
trains networks side by side itself). Also here: preparing a run's folder, configuration checks
on resume, several processes.

    >>> from faml_jax import config, trainer
    >>> summary = trainer.fit(config.preset("synthetic", epochs=2), "runs/quick")

A member's workdir and how it is read: ``faml_jax.runs``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import traverse_util

from faml_jax import data, models, pretrained, schedules, train
from faml_jax.checkpoint import sync_processes
from faml_jax.config import RunConfig, config_differences, config_to_json, from_dict, run_config_from_json
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.evaluate import Evaluator, open_run_dataset
from faml_jax.metrics import classification_metrics
from faml_jax.runs import checkpoints_of, has_checkpoint, primary_workdir
from faml_jax.writer import RunWriter, write_atomic

# Per-epoch fields of metrics.jsonl that are timings (they differ between identical runs).
TIMING_FIELDS = ("images_per_s", "epoch_s")
OUTPUTS = ("checkpoints", "test_logits", "tensorboard", "metrics.jsonl", "config.json", "summary.json")

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Files


def ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(f"cannot write to workdir {directory}: {error.strerror or error}") from None


def prepare_directory(workdir: Path, *, config_file: str, current: dict, outputs: tuple[str, ...],
                      markers: tuple[str, ...], resume: bool, overwrite: bool, may_differ: tuple[str, ...],
                      what: str, complete: Callable[[dict], dict] = lambda saved: saved) -> None:
    """Create an output folder, check it is writable and check it against ``resume``/``overwrite``:
    an earlier ``what`` (any of ``markers`` exists) needs ``resume`` with the same configuration
    (``may_differ`` excepted) or ``overwrite`` (which deletes ``outputs``). Then writes
    ``config_file`` with ``current``. ``complete`` fills a saved configuration's fields that a
    later version added with their defaults, before comparing."""
    ensure_writable(workdir)
    has_run = any((workdir / name).exists() for name in markers)
    if has_run and overwrite:
        sync_processes(f"delete {primary_workdir(workdir)}")  # no process still reads the old run
        for name in outputs:
            path = workdir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        has_run = False
    if has_run and not resume:
        raise WorkdirError(f"workdir {workdir} holds an earlier {what}: pass --resume to continue it or --overwrite to replace it")
    if resume and (workdir / config_file).exists():
        saved = complete(json.loads((workdir / config_file).read_text()))
        diffs = config_differences(saved, current, may_differ=may_differ)
        if diffs:
            raise ConfigError(f"the {what} in {workdir} was made with another configuration: {'; '.join(diffs)}")
    write_atomic(workdir / config_file, json.dumps(current, indent=2) + "\n")
    sync_processes(f"prepared {primary_workdir(workdir)}")  # process 0 may have deleted checkpoints


@contextlib.contextmanager
def undone_if_it_fails(workdir: Path, marker: str):
    """Around preparing a run's workdir and opening what it needs (data set, backbone): when that
    fails for a new run, its ``marker`` (config.json, evolve.json) is removed again, and the
    folders this call made while they are empty, so the next try starts afresh instead of asking
    for --resume."""
    workdir = Path(workdir).absolute()
    made = [p for p in (workdir, *workdir.parents) if not p.exists()]  # innermost first
    new_run = not (workdir / marker).exists()
    try:
        yield
    except BaseException:
        if new_run and workdir.is_dir():
            (workdir / marker).unlink(missing_ok=True)
            for folder in made:
                if not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()
        raise


def prepare_workdir(workdir: Path, config: RunConfig, resume: bool, overwrite: bool) -> None:
    """Make a network's workdir ready (``prepare_directory`` with its ``config.json``; ``epochs``
    may grow on resume)."""
    prepare_directory(workdir, config_file="config.json", current=config_to_json(config), outputs=OUTPUTS,
                      markers=("config.json", "checkpoints"), resume=resume, overwrite=overwrite,
                      may_differ=("epochs",), what="run", complete=complete_run_config)


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree, keep_empty_nodes=True, sep=".")


def _nested(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat, sep=".")


def complete_run_config(saved: dict) -> dict:
    """A saved ``config.json`` with the fields added since it was written at their defaults (at
    ``config.LEGACY_DEFAULTS`` for the fields whose default changed since) and retired fields
    dropped (``config.upgrade_saved``)."""
    if not isinstance(saved, dict):
        return saved
    try:
        return config_to_json(run_config_from_json(saved))
    except (ValueError, TypeError):
        return saved  # not a configuration of this version: compared as it is


def adopt_recorded(config: RunConfig, saved: dict | None, fields: tuple[str, ...]) -> RunConfig:
    """``config`` with the dotted ``fields`` set to their values in ``saved`` (a run's saved
    configuration, completed by ``complete_run_config``), so that resuming a run made before a
    default changed keeps its recorded setting (e.g. ``data.crop_faces``, ``schedule.lr1_min``).
    Nothing saved: ``config`` as it is."""
    if not saved:
        return config
    saved, current = _flat(complete_run_config(saved)), _flat(config_to_json(config))
    current.update({name: saved[name] for name in fields if name in saved})
    return from_dict(RunConfig, _nested(current))


def recorded_config(workdir: Path, config_file: str = "config.json") -> dict | None:
    """The configuration saved in ``workdir`` (None when there is none or it is not JSON)."""
    path = Path(workdir) / config_file
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Several processes (jax.distributed)


# The launchers whose environment ``jax.distributed.initialize()`` reads (jax's cluster
# detection), named by the variables that show them.
LAUNCHERS = {
    "SLURM (srun)": ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    "Open MPI (mpirun)": ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    "Open MPI 5 (mpirun)": ("OMPI_MCA_ess_base_jobid", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
}


def launcher(environ=os.environ) -> str | None:
    """The cluster launcher that started this process (a key of ``LAUNCHERS``), or None."""
    return next((name for name, names in LAUNCHERS.items() if all(n in environ for n in names)), None)


def start_processes(coordinator: str | None, num_processes: int | None, process_id: int | None,
                    distributed: str = "off") -> None:
    """Join a multi-process run: every process runs the same command with its own ``process_id``
    and the same ``coordinator`` (``host:port`` of process 0); ``jax.distributed`` connects them
    (collectives between CPU processes over gloo). ``distributed="auto"``: the launcher's
    environment says all three (``srun``, ``mpirun``; ``LAUNCHERS``; the coordinator's port is
    ``$JAX_COORDINATOR_PORT`` if set). Must run before jax creates a backend. Nothing given: a
    one-process run."""
    given = (coordinator, num_processes, process_id)
    if distributed not in ("off", "auto"):
        raise ConfigError(f"--distributed must be off or auto, got {distributed!r}")
    if distributed == "auto":
        if any(v is not None for v in given):
            raise ConfigError("--distributed auto takes the processes from the launcher: "
                              "give no --coordinator, --num-processes or --process-id")
        if launcher() is None:
            raise ConfigError("--distributed auto: no cluster launcher found in the environment "
                              f"(looked for {', '.join(LAUNCHERS)}); start with srun or mpirun, or give --coordinator, "
                              "--num-processes and --process-id")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
        return
    if all(v is None for v in given):
        return
    if any(v is None for v in given):
        raise ConfigError("--coordinator, --num-processes and --process-id are given together (or none of them)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


# ---------------------------------------------------------------------------------------------
# What the members of one configuration share


# Compiled steps shared by every Setup of one configuration in this process: a population, an
# ablation or a test session builds many Setups of one configuration, and tracing and compiling a
# ResNet step takes seconds each time (as ``models.init`` is memoised per configuration).
_COMPILED: dict = {}
_COMPILED_MAX = 8


def compiled(key: tuple, build: Callable):
    """``build()`` once per ``key`` in this process (the ``_COMPILED_MAX`` most recent kept)."""
    if key not in _COMPILED:
        while len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


class Setup:
    """The data set, model, optimiser and evaluator shared by every member of one configuration
    (members differ only in seed and starting weights)."""

    def __init__(self, config: RunConfig, log: Log = print):
        self.config = config
        self.devices = jax.local_devices()
        self.check_batch(config)
        self.dataset = open_run_dataset(config, log)
        self.model = models.ResNet(config.model)
        self.tx = train.make_optimizer(config.optim, config.schedule.lr1)
        self.class_weights = self.dataset.class_weights if config.loss.needs_class_weights else None
        self.evaluator = compiled(("evaluator", config.model, config.eval_batch_size, tuple(self.devices)),
                                  lambda: Evaluator(self.model, config.eval_batch_size, self.devices))

    def step_key(self, kind: str, devices) -> tuple:
        """What a compiled train step of this configuration depends on (``compiled``)."""
        c = self.config
        weights = None if self.class_weights is None else tuple(np.asarray(self.class_weights).tolist())
        return (kind, c.model, c.optim, c.loss, c.augment, weights, None if devices is None else tuple(devices))

    @functools.cached_property
    def data_parallel(self) -> "DataParallel":
        """The (compiled once, reused) data-parallel train step of this configuration."""
        return DataParallel(self)

    @staticmethod
    def check_batch(config: RunConfig) -> None:
        n = jax.local_device_count() * jax.process_count()
        if config.batch_size % n:
            raise ConfigError(f"batch size {config.batch_size} is not divisible by {n} devices")

    def loader(self, seed: int, *, whole_batches: bool = False) -> data.TrainLoader:
        """The training batches of ``seed``: this process's slice of each global batch, or with
        ``whole_batches`` the global batches themselves (the same in every process)."""
        c = self.config
        shard = dict(process_index=0, process_count=1) if whole_batches else dict(
            process_index=jax.process_index(), process_count=jax.process_count())
        return data.TrainLoader(
            self.dataset.train, c.batch_size, c.model.input_size, seed=seed, num_threads=c.data.num_threads,
            balanced=c.data.balanced, **shard,
        )

    def steps_per_epoch(self) -> int:
        return self.loader(0).steps_per_epoch

    def initial_state(self, seed: int, variables: dict | None = None) -> train.TrainState:
        """A fresh train state from ``seed``; with ``variables``, those weights and statistics
        instead of the random initialisation (fresh optimiser state, step 0, the seed's rng)."""
        state = train.create_train_state(self.model, self.tx, jax.random.key(seed))
        if variables is None:
            return state
        return state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                             opt_state=self.tx.init(variables["params"]))

    @functools.cached_property
    def backbone(self) -> dict | None:
        """The pre-trained backbone of ``config.init`` (read once), or None."""
        if self.config.init is None:
            return None
        backbone, _, _ = pretrained.load_backbone(self.config.init)
        return backbone

    def start_variables(self, seed: int) -> dict | None:
        """Where a new network of this configuration starts: None (its seed's random
        initialisation) or, with ``config.init``, that initialisation with the backbone copied in
        (``pretrained.init_from_backbone``)."""
        if self.backbone is None:
            return None
        fresh = jax.device_get(self.initial_state(seed))
        return pretrained.init_from_backbone({"params": fresh.params, "batch_stats": fresh.batch_stats}, self.backbone)

    def test_logits(self, variables) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of the test split; ``variables`` replicated (``train.replicate``)."""
        c = self.config
        return self.evaluator(variables, data.eval_batches(self.dataset.test, c.eval_batch_size,
                                                           c.model.input_size, c.data.num_threads))


def reference_loss(entry: dict) -> float:
    """An epoch's reference loss (``train_ce``, METHOD 2.4 [choice]) from its metrics.jsonl entry;
    entries written before it was logged give their sampled ``train_loss``."""
    return entry.get("train_ce", entry["train_loss"])


# ---------------------------------------------------------------------------------------------
# One network


class Member:
    """One network in its workdir (made ready by ``prepare_workdir``): configuration, checkpoints,
    history and learning-rate regime.

    A new member starts from the seed's random initialisation, or from ``init_variables`` (an
    FGA child, or FGA's shared start), in which case those weights are evaluated and saved as
    checkpoint 0 first (``test_logits/epoch_0000.npz``, ``initial_test`` in summary.json). An
    existing one continues from its latest complete checkpoint.

    ``until_trained``: stop as soon as the stability detector says the network is well trained
    (``schedules.is_well_trained``), at the latest after ``config.epochs`` epochs.
    ``start_lr``: "lr1" starts with the cosine regime, "lr2" directly with Lr2.
    """

    def __init__(self, setup: Setup, config: RunConfig, workdir: str | os.PathLike, *,
                 init_variables: dict | None = None, until_trained: bool = False,
                 start_lr: str = "lr1", name: str = "", log: Log = print):
        if start_lr not in ("lr1", "lr2"):
            raise ValueError(f"start_lr must be 'lr1' or 'lr2', got {start_lr!r}")
        self.setup, self.config, self.workdir = setup, config, Path(workdir)
        self.until_trained, self.name, self.log = until_trained, name, log
        self.checkpoints = checkpoints_of(self.workdir, keep=config.keep_checkpoints)
        self.loader = setup.loader(config.seed)
        self.state = setup.initial_state(config.seed)
        self.history: list[dict] = []
        self.initial_test: dict | None = None
        self.lr_state = schedules.LrState(0 if start_lr == "lr2" else None)
        latest = self.checkpoints.latest_epoch()
        if latest is not None:
            try:
                self.state, record = self.checkpoints.restore(latest, self.state)
            except ValueError as error:
                raise WorkdirError(str(error)) from None
            self.history = record["history"]
            self.lr_state = schedules.LrState(record["switch_epoch"])
            self.initial_test = record.get("initial_test")
            log(f"{self.prefix}resuming from checkpoint {latest} (epoch {latest} of at most {config.epochs})")
        elif init_variables is not None:
            self.state = setup.initial_state(config.seed, init_variables)
            logits, labels = setup.test_logits(train.replicate({"params": self.state.params,
                                                                "batch_stats": self.state.batch_stats}))
            test = classification_metrics(logits, labels)
            self.initial_test = {k: test[k] for k in ("accuracy", "mean_class_accuracy")}
            (self.workdir / "test_logits").mkdir(exist_ok=True)
            write_atomic(self.workdir / "test_logits" / "epoch_0000.npz", arrays={"logits": logits, "labels": labels})
            self.checkpoints.save(0, jax.device_get(self.state), self.record(test), test["accuracy"])
            log(f"{self.prefix}starting weights: test acc {test['accuracy']:.4f}")
        # The run's outputs; metrics.jsonl mirrors the history of the checkpoint we continue from.
        self.writer = RunWriter(self.workdir, self.history)

    @property
    def prefix(self) -> str:
        return f"{self.name}: " if self.name else ""

    @property
    def epoch(self) -> int:
        """Epochs trained so far."""
        return len(self.history)

    @property
    def well_trained(self) -> bool:
        return schedules.is_well_trained(self.config.schedule, self.lr_state, self.losses, self.accuracies)

    @property
    def losses(self) -> list[float]:
        """The reference loss of every epoch (``train_ce``: plain CE of the training batches,
        METHOD 2.4 [choice]), what the stability detector reads; epochs logged before it existed
        give their sampled loss."""
        return [reference_loss(h) for h in self.history]

    @property
    def accuracies(self) -> list[float]:
        return [h["train_accuracy"] for h in self.history]

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs or (self.until_trained and self.well_trained)

    def learning_rate(self, step_in_epoch: int, steps_per_epoch: int) -> float:
        return schedules.learning_rate(self.config.schedule, self.lr_state, self.epoch, step_in_epoch,
                                       steps_per_epoch, self.config.epochs)

    def record(self, test: dict) -> dict:
        return {"epoch": self.epoch, "history": self.history, "switch_epoch": self.lr_state.switch_epoch,
                "test": test, "initial_test": self.initial_test}

    def end_epoch(self, state: train.TrainState, variables, sums: dict, steps: int, lr: float, elapsed: float) -> dict:
        """Book one trained epoch: evaluate ``variables`` (replicated) on the test split, save the
        (host) ``state``, metrics, logits and TensorBoard scalars; returns the epoch's entry."""
        self.state = state
        logits, labels = self.setup.test_logits(variables)
        test = classification_metrics(logits, labels)
        epoch = self.epoch
        entry = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / steps,
            "train_ce": sums["train_ce"] / steps,
            "train_accuracy": sums["accuracy"] / steps,
            "lsr_share": sums["lsr"] / steps,
            "learning_rate": lr,
            "phase": self.lr_state.phase,
            "test_accuracy": test["accuracy"],
            "test_mean_class_accuracy": test["mean_class_accuracy"],
            "images_per_s": steps * self.config.batch_size / elapsed,
            "epoch_s": elapsed,
        }
        self.history.append(entry)
        self.lr_state = schedules.after_epoch(self.config.schedule, self.lr_state, epoch, self.losses, self.accuracies)
        self.writer.write_logits(epoch + 1, logits, labels)
        self.checkpoints.save(epoch + 1, state, self.record(test), test["accuracy"])
        self.writer.write(epoch + 1, entry)
        switched = " | stable: switching to Lr2" if self.lr_state.switch_epoch == epoch + 1 else ""
        trained = " | well trained" if self.until_trained and self.well_trained else ""
        self.log(f"{self.prefix}epoch {epoch + 1}/{self.config.epochs}: train loss {entry['train_loss']:.4f} "
                 f"(CE {entry['train_ce']:.4f}) acc "
                 f"{entry['train_accuracy']:.4f} | test acc {test['accuracy']:.4f} mean-class "
                 f"{test['mean_class_accuracy']:.4f} | {entry['images_per_s']:.0f} img/s{switched}{trained}")
        return entry

    def variables(self) -> dict:
        """The current (host) ``{"params", "batch_stats"}``."""
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def summary(self) -> dict:
        """Write and return summary.json (final and best epoch)."""
        if not self.history:
            raise WorkdirError(f"{self.prefix}no epoch trained in {self.workdir}")
        best = max(self.history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
        final = self.history[-1]
        labels = np.load(self.workdir / "test_logits" / f"epoch_{final['epoch']:04d}.npz")["labels"]
        summary = {
            "dataset": self.config.data.dataset,
            "model": self.config.model_name,
            "epochs": final["epoch"],
            "final_train_loss": final["train_loss"],
            "final_train_ce": reference_loss(final),
            "final_train_accuracy": final["train_accuracy"],
            "final_test_accuracy": final["test_accuracy"],
            "final_test_mean_class_accuracy": final["test_mean_class_accuracy"],
            "best_epoch": best["epoch"],
            "best_epoch_test_accuracy": best["test_accuracy"],
            "majority_class_rate": float(np.bincount(labels).max() / len(labels)),
            "well_trained": self.well_trained,
            "switch_epoch": self.lr_state.switch_epoch,
        }
        if self.initial_test is not None:
            summary["initial_test_accuracy"] = self.initial_test["accuracy"]
        self.writer.write_summary(summary)
        return summary

    def close(self) -> None:
        self.writer.close()
        self.checkpoints.close()


# ---------------------------------------------------------------------------------------------
# Placing members on the devices


class DataParallel:
    """One network's train state replicated over all devices, its batches split over them
    (``train.parallel_train_step``)."""

    def __init__(self, setup: Setup):
        self.devices = setup.devices  # this process's devices: it places its share of each batch
        self.multi_process = jax.process_count() > 1
        # All devices of all processes (one process: its own devices).
        devices = None if self.multi_process else self.devices
        self.step = compiled(setup.step_key("data-parallel", devices), lambda: train.parallel_train_step(
            setup.model, setup.tx, setup.config.loss, setup.class_weights, devices=devices, augment=setup.config.augment))

    def load(self, state: train.TrainState) -> None:
        self.state = train.replicate(state, self.devices)

    def place(self, batch):
        """The step's input on the devices: the batch split over this process's devices."""
        return train.shard(batch, self.devices)

    def __call__(self, placed, learning_rate: float):
        self.state, metrics = self.step(self.state, placed, learning_rate)
        return metrics

    def host_state(self) -> train.TrainState:
        return jax.device_get(train.unreplicate(self.state))

    def eval_variables(self, host_state):
        """Variables replicated over this process's devices, for the evaluator (one process:
        already there; several: the train state spans every process's devices)."""
        if self.multi_process:
            return train.replicate({"params": host_state.params, "batch_stats": host_state.batch_stats}, self.devices)
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}


# ---------------------------------------------------------------------------------------------
# The loop

METRICS = ("loss", "train_ce", "accuracy", "lsr")  # the step's metrics summed over an epoch
FETCH_EVERY = 10  # steps whose metrics are fetched from the devices together (fewer host syncs)


class EpochProgress:
    """One epoch's metric sums and its progress bar (loss, accuracy, images/s, learning rate),
    shared by the single-network loop and FGA's side-by-side loop."""

    def __init__(self, desc: str, steps: int, images_per_step: int, progress: bool):
        from tqdm import tqdm

        self.sums = {k: 0.0 for k in METRICS}
        self.images_per_step = images_per_step
        self.begin = time.perf_counter()
        self.bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step", dynamic_ncols=True)

    def add(self, values: dict) -> None:
        for k in self.sums:
            self.sums[k] += values[k]

    def show(self, done: int, fetched: int, learning_rate: float) -> None:
        self.bar.set_postfix(loss=f"{self.sums['loss'] / done:.3f}", acc=f"{self.sums['accuracy'] / done:.3f}",
                             img_s=f"{done * self.images_per_step / (time.perf_counter() - self.begin):.0f}",
                             lr=f"{learning_rate:.2e}")
        self.bar.update(fetched)

    def close(self) -> float:
        """Close the bar; the epoch's seconds."""
        self.bar.close()
        return time.perf_counter() - self.begin


def train_member(setup: Setup, member: Member, *, progress: bool = True, stop_after: int | None = None) -> None:
    """Train one network until it is ``done`` (or for ``stop_after`` epochs, as if interrupted):
    each epoch's batches go to the devices ahead of their step, the learning rate is set per
    step, metrics are fetched every ``FETCH_EVERY`` steps, and the epoch ends in
    ``member.end_epoch`` (evaluation, checkpoint, outputs)."""
    placement = setup.data_parallel
    placement.load(member.state)
    steps = setup.steps_per_epoch()
    epochs = 0
    while not member.done and (stop_after is None or epochs < stop_after):
        epochs += 1
        epoch = EpochProgress(f"{member.prefix}epoch {member.epoch + 1}/{member.config.epochs}", steps,
                              setup.config.batch_size, progress)
        iterator = iter(member.loader.iterate(member.epoch))
        host_batches = (next(iterator) for _ in range(steps))
        pending, learning_rate = [], 0.0
        # Batches go to the devices ahead of their step (transfers overlap the running step).
        for i, placed in enumerate(train.prefetch_to_device(host_batches, placement.place)):
            learning_rate = member.learning_rate(i, steps)
            pending.append(placement(placed, learning_rate))
            if len(pending) == FETCH_EVERY or i == steps - 1:
                for metrics in jax.device_get(pending):
                    epoch.add({k: float(v[0]) for k, v in metrics.items()})
                epoch.show(i + 1, len(pending), learning_rate)
                pending = []
        elapsed = epoch.close()
        state = placement.host_state()
        member.end_epoch(state, placement.eval_variables(state), epoch.sums, steps, learning_rate, elapsed)


# ---------------------------------------------------------------------------------------------
# One network, start to end


def fit(config: RunConfig, workdir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, log: Log = print, stop_after: int | None = None,
        keep_recorded: tuple[str, ...] = ()) -> dict:
    """Train, evaluate and checkpoint one network data-parallel over all devices (of all
    processes); returns the summary (also in summary.json): final and best epoch.

    ``resume`` continues the run in ``workdir`` from its last complete checkpoint (bit for bit);
    ``overwrite`` deletes an earlier run's outputs first. ``stop_after`` ends this call after that
    many epochs (as if interrupted there; continue with ``resume=True``). ``keep_recorded``:
    dotted fields a resumed run takes from its saved config.json (``adopt_recorded``). Raises
    ``ConfigError`` / ``WorkdirError`` / ``DataError`` with one-line messages."""
    workdir = Path(workdir)
    if resume and keep_recorded:
        config = adopt_recorded(config, recorded_config(workdir), keep_recorded)
    Setup.check_batch(config)
    with undone_if_it_fails(workdir, "config.json"):
        prepare_workdir(workdir, config, resume, overwrite)
        setup = Setup(config, log)  # opens the data set
        init = setup.start_variables(config.seed) if config.init and not has_checkpoint(workdir) else None
    member = Member(setup, config, workdir, init_variables=init, log=log)
    try:
        if member.done:
            raise ConfigError(f"nothing to do: the run in {workdir} already has {member.epoch} epochs; raise --epochs")
        train_member(setup, member, progress=progress, stop_after=stop_after)
        summary = member.summary()
    finally:
        member.close()
    log(f"final (epoch {summary['epochs']}): test accuracy {summary['final_test_accuracy']:.4f}, mean class accuracy "
        f"{summary['final_test_mean_class_accuracy']:.4f} (majority-class rate {summary['majority_class_rate']:.4f})")
    log(f"best epoch {summary['best_epoch']} (selected on the test split, optimistic): test accuracy "
        f"{summary['best_epoch_test_accuracy']:.4f}")
    return summary
