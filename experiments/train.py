"""Train one network: ``python -m experiments.train [--dataset synthetic] [--model r18_faml] ...``.

Trains with the data set's preset (METHOD 2.3-2.4; a CPU-sized demo for ``synthetic``),
evaluates on the test split after every epoch, and writes to the workdir:

  config.json              the resolved configuration
  checkpoints/<epoch>/     orbax checkpoints (last N plus the best by test accuracy)
  test_logits/epoch_<e>.npz  test-split logits and labels after each epoch (for ensembles)
  metrics.jsonl            one line per epoch: training loss/accuracy, learning rate, test metrics
  tensorboard/             the same as TensorBoard event files
  summary.json             final-epoch test accuracy and, separately, the best epoch

``--resume`` continues an interrupted run from its last complete checkpoint, bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from faml_jax import data, models, schedules, train
from faml_jax.checkpoint import Checkpoints
from faml_jax.config import (
    DataConfig, ModelConfig, OptimConfig, RUN_PRESETS, RunConfig, ScheduleConfig,
)
from faml_jax.data.synthetic import SyntheticConfig
from faml_jax.evaluate import Evaluator, classification_metrics
from faml_jax.losses import class_weights

# Per-epoch fields of metrics.jsonl that are timings (they differ between identical runs).
TIMING_FIELDS = ("images_per_s", "epoch_s")


class UsageError(Exception):
    """A problem with the user's request: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Configuration


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m experiments.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="synthetic", choices=data.DATASETS,
                        help="data set (default: synthetic, embedded, no download)")
    parser.add_argument("--data-dir", help="data set folder (synthetic: its cache, default ~/.cache/faml_jax)")
    parser.add_argument("--model", choices=sorted(models.PRESETS), help="network (preset: r18_faml)")
    parser.add_argument("--loss", choices=["ml", "ce", "lsr", "wce", "mix"],
                        help="ml: LSR or CE/WCE drawn per batch; mix: weighted sum (ablation)")
    parser.add_argument("--p-lsr", type=float, help="LSR probability of ml / weight of mix (preset)")
    parser.add_argument("--weighted", action=argparse.BooleanOptionalAction, default=None,
                        help="use WCE instead of CE in ml/mix (preset: AffectNet yes, RAF-DB no)")
    parser.add_argument("--epochs", type=int, help="epochs to train (preset)")
    parser.add_argument("--batch-size", type=int, help="global batch size (preset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, data order, loss draws, flips")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, help="Lr1, the first learning rate (preset; paper 3e-4, SGD 0.005)")
    parser.add_argument("--lr2", type=float, help="Lr2, the rate after the stability switch (default 1e-5)")
    parser.add_argument("--no-switch", action="store_true", help="stay with Lr1 (cosine) for the whole run")
    parser.add_argument("--widths", help="stage widths, e.g. 16,32,64,128 (preset)")
    parser.add_argument("--input-size", type=int, help="input side in pixels (preset)")
    parser.add_argument("--train-size", type=int, help="synthetic: training images (default 10000)")
    parser.add_argument("--test-size", type=int, help="synthetic: test images (default 1000)")
    parser.add_argument("--workdir", help="output folder (default runs/<dataset>-<model>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--overwrite", action="store_true", help="delete the outputs of an earlier run in --workdir")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep besides the best (default 3)")
    parser.add_argument("--threads", type=int, default=4, help="host threads reading images (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration: the data set's preset, overridden by the flags given."""
    preset = RUN_PRESETS[args.dataset]
    model_name = preset["model_name"] if args.model is None else args.model
    model_fields = {**models.PRESETS[model_name], **preset["model"]}
    if args.widths:
        try:
            model_fields["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            raise UsageError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    if args.input_size is not None:
        model_fields["input_size"] = args.input_size
    if not model_fields.get("attention"):  # the preset's attention sizes only apply with attention
        model_fields = {k: v for k, v in model_fields.items() if not k.startswith("attn_")}
    loss = preset["loss"]
    loss = dataclasses.replace(
        loss,
        **{k: v for k, v in dict(kind=args.loss, p_lsr=args.p_lsr, weighted=args.weighted).items() if v is not None},
    )
    sgd_lr = {"lr1": 0.005} if args.optimizer == "sgd" else {}  # the paper's SGD learning rate
    schedule = ScheduleConfig(**{
        **preset["schedule"],
        **sgd_lr,
        **{k: v for k, v in dict(lr1=args.lr, lr2=args.lr2).items() if v is not None},
        **({"switch": False} if args.no_switch else {}),
    })
    synthetic = SyntheticConfig(**{
        k: v for k, v in dict(train_size=args.train_size, test_size=args.test_size).items() if v is not None
    })
    num_classes = 8 if args.dataset == "affectnet8" else 7
    return RunConfig(
        model_name=model_name,
        model=ModelConfig(num_classes=num_classes, **model_fields),
        loss=loss,
        optim=OptimConfig(name=args.optimizer, learning_rate=schedule.lr1),
        schedule=schedule,
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, synthetic=synthetic, num_threads=args.threads),
        epochs=preset["epochs"] if args.epochs is None else args.epochs,
        batch_size=preset["batch_size"] if args.batch_size is None else args.batch_size,
        seed=args.seed,
        keep_checkpoints=args.keep,
    )


def config_to_json(config: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two configuration dicts (``epochs`` may)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b and name != "epochs":
            diffs.append(f"{name} ({a!r} in the checkpoint, {b!r} now)")
    return diffs


# ---------------------------------------------------------------------------------------------
# Workdir


def write_atomic(path: Path, text: str | None = None, arrays: dict | None = None) -> None:
    """Write a text or .npz file under a temporary name, then rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if arrays is not None:
                np.savez(f, **arrays)
            else:
                f.write(text.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


OUTPUTS = ("checkpoints", "test_logits", "tensorboard", "metrics.jsonl", "config.json", "summary.json")


def prepare_workdir(workdir: Path, config: RunConfig, resume: bool, overwrite: bool) -> None:
    """Create the workdir, check it is writable, and check it against ``--resume``/``--overwrite``."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to workdir {workdir}: {error.strerror or error}") from None
    has_run = (workdir / "config.json").exists() or (workdir / "checkpoints").exists()
    if has_run and overwrite:
        for name in OUTPUTS:
            path = workdir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        has_run = False
    if has_run and not resume:
        raise UsageError(f"workdir {workdir} holds an earlier run: pass --resume to continue it or --overwrite to replace it")
    if resume and (workdir / "config.json").exists():
        saved = json.loads((workdir / "config.json").read_text())
        diffs = config_differences(saved, config_to_json(config))
        if diffs:
            raise UsageError(f"the checkpoint in {workdir} was made with another configuration: {'; '.join(diffs)}")
    write_atomic(workdir / "config.json", json.dumps(config_to_json(config), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Training


def run(config: RunConfig, workdir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, log=print, stop_after: int | None = None) -> dict:
    """Train, evaluate and checkpoint one network; returns the summary (also in summary.json).

    ``stop_after`` ends this call after that many epochs (as if interrupted there; the run is
    continued with ``resume=True``)."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    workdir = Path(workdir)
    devices = jax.local_devices()
    if config.batch_size % (len(devices) * jax.process_count()):
        raise UsageError(f"batch size {config.batch_size} is not divisible by {len(devices) * jax.process_count()} devices")
    prepare_workdir(workdir, config, resume, overwrite)

    dataset = data.open_dataset(config.data.dataset, config.data.data_dir, config.data.synthetic, progress=log)
    log(dataset.describe())
    if dataset.num_classes != config.model.num_classes:
        raise UsageError(f"{dataset.name} has {dataset.num_classes} classes, the model {config.model.num_classes}")
    model = models.ResNet(config.model)
    tx = train.make_optimizer(config.optim)
    weights = class_weights(dataset.train_counts) if config.loss.needs_class_weights else None
    state = train.create_train_state(model, tx, jax.random.key(config.seed))
    loader = data.TrainLoader(
        dataset.train, config.batch_size, config.model.input_size, seed=config.seed,
        num_threads=config.data.num_threads, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    steps = loader.steps_per_epoch

    checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
    history, lr_state, start_epoch, iterator_state = [], schedules.LrState(), 0, None
    latest = checkpoints.latest_epoch()
    if latest is not None:
        try:
            state, record = checkpoints.restore(latest, state)
        except ValueError as error:
            raise UsageError(str(error)) from None
        history, start_epoch = record["history"], record["epoch"]
        lr_state = schedules.LrState(record["switch_epoch"])
        iterator_state = record["iterator"]
        log(f"resuming from checkpoint {latest} (epoch {start_epoch} of {config.epochs})")
    # metrics.jsonl mirrors the history of the checkpoint we continue from.
    write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    (workdir / "test_logits").mkdir(exist_ok=True)

    step_fn = train.parallel_train_step(model, tx, config.loss, weights, devices=devices)
    evaluator = Evaluator(model, config.eval_batch_size, devices)
    rstate = train.replicate(state, devices)
    writer = SummaryWriter(str(workdir / "tensorboard"))
    try:
        end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, end_epoch):
            iterator = loader.iterate(epoch, iterator_state)
            first_step = int(jax.device_get(rstate.step[0])) - epoch * steps
            iterator_state = None
            sums = {"loss": 0.0, "accuracy": 0.0, "lsr": 0.0}
            pending = []
            bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, leave=False, unit="step", dynamic_ncols=True)
            start = time.perf_counter()
            for i, batch in enumerate(iterator, start=first_step):
                lr = schedules.learning_rate(config.schedule, lr_state, epoch, i, steps, config.epochs)
                rstate, metrics = step_fn(rstate, train.shard(batch, devices), lr)
                pending.append(metrics)
                if len(pending) == 10 or i == steps - 1:  # fetch in groups: fewer host syncs
                    for m in jax.device_get(pending):
                        for k in sums:
                            sums[k] += float(m[k][0])
                    done = i + 1 - first_step
                    bar.set_postfix(loss=f"{sums['loss'] / done:.3f}", acc=f"{sums['accuracy'] / done:.3f}",
                                    img_s=f"{done * config.batch_size / (time.perf_counter() - start):.0f}", lr=f"{lr:.2e}")
                    bar.update(len(pending))
                    pending = []
            bar.close()
            elapsed = time.perf_counter() - start
            trained = steps - first_step

            variables = {"params": rstate.params, "batch_stats": rstate.batch_stats}
            logits, labels = evaluator(variables, data.eval_batches(dataset.test, config.eval_batch_size,
                                                                    config.model.input_size, config.data.num_threads))
            test = classification_metrics(logits, labels)
            entry = {
                "epoch": epoch + 1,
                "train_loss": sums["loss"] / trained,
                "train_accuracy": sums["accuracy"] / trained,
                "lsr_share": sums["lsr"] / trained,
                "learning_rate": lr,
                "phase": lr_state.phase,
                "test_accuracy": test["accuracy"],
                "test_mean_class_accuracy": test["mean_class_accuracy"],
                "images_per_s": trained * config.batch_size / elapsed,
                "epoch_s": elapsed,
            }
            history.append(entry)
            lr_state = schedules.after_epoch(
                config.schedule, lr_state, epoch,
                [h["train_loss"] for h in history], [h["train_accuracy"] for h in history],
            )
            write_atomic(workdir / "test_logits" / f"epoch_{epoch + 1:04d}.npz", arrays={"logits": logits, "labels": labels})
            record = {"epoch": epoch + 1, "history": history, "switch_epoch": lr_state.switch_epoch,
                      "iterator": None, "test": test}
            checkpoints.save(epoch + 1, jax.device_get(train.unreplicate(rstate)), record, test["accuracy"])
            with open(workdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            for k, v in entry.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
            switched = " | stable: switching to Lr2" if lr_state.switch_epoch == epoch + 1 else ""
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {entry['train_loss']:.4f} acc "
                f"{entry['train_accuracy']:.4f} | test acc {test['accuracy']:.4f} mean-class "
                f"{test['mean_class_accuracy']:.4f} | {entry['images_per_s']:.0f} img/s{switched}")
    finally:
        writer.close()
        checkpoints.close()

    if not history:
        raise UsageError(f"nothing to do: the run in {workdir} already has {start_epoch} epochs; raise --epochs")
    best = max(history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
    final = history[-1]
    summary = {
        "dataset": config.data.dataset,
        "model": config.model_name,
        "epochs": final["epoch"],
        "final_test_accuracy": final["test_accuracy"],
        "final_test_mean_class_accuracy": final["test_mean_class_accuracy"],
        "best_epoch": best["epoch"],
        "best_epoch_test_accuracy": best["test_accuracy"],
        "majority_class_rate": float(np.bincount(labels).max() / len(labels)),
    }
    write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"final (epoch {final['epoch']}): test accuracy {final['test_accuracy']:.4f}, mean class accuracy "
        f"{final['test_mean_class_accuracy']:.4f} (majority-class rate {summary['majority_class_rate']:.4f})")
    log(f"best epoch {best['epoch']} (selected on the test split, optimistic): test accuracy {best['test_accuracy']:.4f}")
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        workdir = Path(args.workdir or f"runs/{args.dataset}-{config.model_name}-seed{args.seed}")
        run(config, workdir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # invalid configuration values
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
