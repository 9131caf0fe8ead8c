"""Tests of faml_jax.trainer and the training program: exact resume, crash during a checkpoint save, the reference loss through the loop, CLI errors."""

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_FLAGS, assert_same_run, program_env, tiny_config

from experiments import train as train_program
from experiments.flags import resolve_config
from faml_jax import config as config_module
from faml_jax import runs, trainer
from faml_jax.errors import WorkdirError
from faml_jax.records import config_to_json
from faml_jax.versions import FORMAT_VERSION, stamped

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: three epochs without interruption."""
    root = tmp_path_factory.mktemp("runs")
    data_dir = root / "data"
    config = tiny_config(data_dir, 3)
    summary = trainer.fit(config, root / "full", progress=False)
    return root, data_dir, config, summary


def test_run_writes_its_outputs(uninterrupted):
    root, _, config, summary = uninterrupted
    full = root / "full"
    written = set(trainer.OUTPUTS) - {runs.PREEMPTED, runs.DAMAGED}  # those only after a stop or a damage
    assert sorted(p.name for p in full.iterdir()) == sorted(written)
    assert json.loads((full / "config.json").read_text()) == {
        "format_version": FORMAT_VERSION,
        **config_to_json(config),
    }
    history = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["phase"] for h in history] == [1, 1, 2]  # the detector (window 2) fired after epoch 2
    assert history[2]["learning_rate"] == pytest.approx(1e-5)
    assert summary["final_test_accuracy"] == history[-1]["test_accuracy"]
    assert summary["best_epoch_test_accuracy"] == max(h["test_accuracy"] for h in history)
    saved = np.load(full / "test_logits" / "epoch_0003.npz")
    assert saved["logits"].shape == (40, 7) and saved["labels"].shape == (40,)
    assert np.isclose(np.mean(saved["logits"].argmax(-1) == saved["labels"]), history[-1]["test_accuracy"])
    epochs = sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit())
    assert epochs[-2:] == [2, 3] and len(epochs) <= 3  # last 2 plus the best
    assert any((full / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_run(uninterrupted):
    root, data_dir, config, _ = uninterrupted
    workdir = root / "resumed"
    trainer.fit(config, workdir, progress=False, stop_after=2)
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    trainer.fit(config, workdir, resume=True, progress=False)
    assert_same_run(workdir, root / "full", config)


CRASHING_RUN = "from helpers import tiny_config\n" + textwrap.dedent("""
    import os, sys
    import orbax.checkpoint as ocp
    from faml_jax import trainer

    # Die (no clean-up, like a kill) while the checkpoint of epoch CRASH_AT is being written: its
    # files are in the temporary folder, not yet committed (orbax's public atomicity classes).
    crash_at = int(os.environ["CRASH_AT"])
    atomicity = ocp.path.atomicity
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize
        async def finalize(self, *args, _original=original, **kwargs):
            if str(self.get_final()).rstrip("/").endswith(f"checkpoints/{crash_at}"):
                os._exit(17)
            return await _original(self, *args, **kwargs)
        cls.finalize = finalize
    config = ({config})
    trainer.fit(config, sys.argv[1], progress=False)
""")


def test_a_run_killed_during_a_save_resumes_from_the_last_complete_checkpoint(uninterrupted):
    root, data_dir, config, _ = uninterrupted
    workdir = root / "crashed"
    script = CRASHING_RUN.replace("{config}", f"tiny_config({str(data_dir)!r}, 3)")
    env = program_env(CRASH_AT="2")
    result = subprocess.run(
        [sys.executable, "-c", script, str(workdir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 17, result.stderr[-2000:]
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert "1" in leftovers and "2" not in leftovers
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers

    trainer.fit(config, workdir, resume=True, progress=False)
    assert_same_run(workdir, root / "full", config)


def run_cli(args, capsys):
    code = train_program.main(args)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--epochs", "x"], "invalid int value: 'x'"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--widths", "a,b"], "--widths must be comma-separated integers"),
        (["--p-lsr", "1.5"], "p_lsr must be in [0, 1]"),
        (["--input-size", "63"], "input_size must be a positive even number"),
    ],
)
def test_bad_flags_exit_non_zero_with_one_line(args, message, capsys, tmp_path):
    try:
        code, err = run_cli(args + ["--workdir", str(tmp_path / "w")], capsys)
    except SystemExit as exit_:  # argparse's own errors
        code, err = exit_.code, capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_unwritable_workdir_is_an_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(["--workdir", str(blocker / "run")], capsys)
    assert code == 2 and "cannot write to workdir" in err and len(err.splitlines()) == 1


def test_existing_run_needs_resume_and_a_matching_configuration(uninterrupted, capsys):
    root, data_dir, _, _ = uninterrupted
    full = root / "full"
    common = ["--workdir", str(full), "--data-dir", str(data_dir)]
    code, err = run_cli(common, capsys)
    assert code == 2 and "pass --resume" in err
    code, err = run_cli(common + ["--resume", "--loss", "ce"], capsys)
    assert code == 2 and "another configuration" in err and "loss.kind ('ml' in config.json, 'ce' now)" in err


def test_a_configuration_of_another_format_version_is_refused(tmp_path):
    """config.json carries format_version: a file without one (a development version wrote it
    before files were versioned) or of another version is refused in one line, by --resume and
    by every reader. The programs keep a resumed run's recorded settings (``adopt_recorded``)."""
    from faml_jax.trainer import prepare_workdir

    config = tiny_config(tmp_path / "data", epochs=2)
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "1").mkdir(parents=True)  # a run to continue (prepare_workdir looks no further)
    saved = stamped(config_to_json(config))
    (workdir / "config.json").write_text(json.dumps(saved))
    prepare_workdir(workdir, config, resume=True, overwrite=False)  # this version: it continues
    for version, said in ((None, "no format version"), (FORMAT_VERSION + 1, f"format version {FORMAT_VERSION + 1}")):
        other = {k: v for k, v in saved.items() if k != "format_version"}
        if version is not None:
            other["format_version"] = version
        (workdir / "config.json").write_text(json.dumps(other))
        message = (
            f"config.json has {said}.*; this faml_jax reads format version {FORMAT_VERSION}: make it again with "
            "this version"
        )
        with pytest.raises(WorkdirError, match=message):
            prepare_workdir(workdir, config, resume=True, overwrite=False)
        with pytest.raises(WorkdirError, match=message):
            runs.read_run_config(workdir)
    # The programs keep a resumed run's recorded setting (unless the flag is given again).
    saved["data"]["crop_faces"] = False
    saved["schedule"]["lr1_min"] = 0.0
    kept = trainer.adopt_recorded(config, saved, ("data.crop_faces", "schedule.lr1_min"))
    assert kept.data.crop_faces is False and kept.schedule.lr1_min == 0.0
    (workdir / "config.json").write_text(json.dumps(saved))
    prepare_workdir(workdir, kept, resume=True, overwrite=False)
    assert runs.read_run_config(workdir) == kept


@pytest.mark.parametrize("program", ["train", "evolve", "ablation"])
@pytest.mark.parametrize("dataset", ["rafdb", "affectnet7", "affectnet8"])
def test_real_data_sets_refuse_to_start_from_random_weights(program, dataset, capsys, tmp_path):
    """docs/method.md 2: every model of the paper starts pre-trained; without --init a real data set run
    is refused in one line that names the converter and the usual sources, before any data is
    read (the data folder does not even exist here)."""
    import importlib

    main = importlib.import_module(f"experiments.{program}").main
    common = ["--dataset", dataset, "--data-dir", str(tmp_path / "absent"), "--workdir", str(tmp_path / "w")]
    assert main(common) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for needle in (
        "pre-trained ResNet18",
        "--init",
        "python -m tools.convert_torch_resnet18",
        "resnet18_msceleb.pth",
        "ImageNet",
        "--from-scratch",
    ):
        assert needle in err, (needle, err)
    assert not (tmp_path / "w").exists()
    # With --from-scratch it starts (and fails later, on the missing folder, naming it).
    assert main(common + ["--from-scratch"]) == 2
    assert "absent" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing left behind that would ask for --resume on the next try


def test_model_presets_follow_the_papers_rows():
    """docs/method.md 2: R18 and R18+FA train with plain CE (every data set), R18+FAML with ML; FA is
    the fusion stem and the attention blocks; --no-attention keeps the stem only."""
    parse = lambda *a: resolve_config(train_program.build_parser().parse_args(list(a)))  # noqa: E731
    for dataset in ("synthetic", "affectnet8"):
        scratch = ("--from-scratch",) if dataset != "synthetic" else ()
        r18 = parse("--dataset", dataset, "--model", "r18", *scratch)
        fa = parse("--dataset", dataset, "--model", "r18_fa", *scratch)
        faml = parse("--dataset", dataset, *scratch)
        assert r18.loss.kind == fa.loss.kind == "ce" and not r18.loss.needs_class_weights
        assert faml.loss.kind == "ml" and faml.loss.weighted == (dataset == "affectnet8")
        assert fa.model == faml.model and fa.model.attention and fa.model.fa_regions
        assert not r18.model.attention and not r18.model.fa_regions
    stem_only = parse("--model", "r18_fa", "--no-attention")
    assert stem_only.model.fa_regions and not stem_only.model.attention
    assert parse("--model", "r18", "--loss", "ml").loss.kind == "ml"  # an explicit --loss wins


def test_numerics_and_fusion_flags_reach_the_configuration():
    """--matmul-precision and --fusion-init (the weight of a pre-trained start with --init, of a
    random one without) are recorded in the run's configuration; evaluation is float32."""
    parse = lambda *a: resolve_config(train_program.build_parser().parse_args(list(a)))  # noqa: E731
    default = parse()
    assert (default.model.matmul_precision, default.model.fa_init, default.model.fa_init_pretrained) == (
        "highest",
        0.5,
        0.0,
    )
    assert default.eval_dtype == "float32" and config_to_json(default)["eval_dtype"] == "float32"
    assert parse("--matmul-precision", "high").model.matmul_precision == "high"
    assert parse("--fusion-init", "0.25").model.fa_init == 0.25
    pretrained = parse("--fusion-init", "0.25", "--init", "/backbone")
    assert (pretrained.model.fa_init, pretrained.model.fa_init_pretrained) == (0.5, 0.25)


def test_the_detector_reads_the_reference_loss_through_the_loop(tmp_path, monkeypatch):
    """docs/method.md 2.4 [choice]: a scripted run through the real training loop (the step replaced by
    one that reports scripted per-batch metrics). The sampled ML loss jumps by 0.05 between
    epochs (LSR/CE draws) and never looks stable; the reference loss train_ce settles from epoch
    index 4 on. With K = 3 the detector fires at the end of epoch index 6 (epochs 4-6), so Lr2
    starts at epoch 7: exactly when the reference settles, never on the sampled loss."""
    from faml_jax import loop, schedules

    steps = 6  # 96 training images, batch 16
    ce_by_epoch = [2.0, 1.5, 1.0, 0.8, 0.700, 0.705, 0.698, 0.702, 0.701, 0.699]
    calls = []

    def scripted_step(self, placed, learning_rates, active):  # the loop's step, its state left as it is
        epoch, i = divmod(len(calls), steps)
        calls.append(float(learning_rates[0]))
        lsr = float((epoch + i) % 2 == 0)  # alternating draws, shifted per epoch
        # Three LSR batches per epoch: means 0.75 and 0.80 by turns (range 0.05 > 0.02).
        metrics = {
            "loss": 0.6 + 0.3 * lsr + 0.05 * (epoch % 2),
            "train_ce": ce_by_epoch[epoch],
            "accuracy": 0.5,
            "lsr": lsr,
            "learning_rate": learning_rates[0],
        }
        return {k: np.full((1,), v, np.float32) for k, v in metrics.items()}

    monkeypatch.setattr(loop.DataParallel, "__call__", scripted_step)
    config = dataclasses.replace(
        tiny_config(tmp_path / "data", epochs=len(ce_by_epoch)),
        schedule=config_module.ScheduleConfig(lr1=1e-3, lr2=1e-5, window=3),
    )
    summary = trainer.fit(config, tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sampled = [h["train_loss"] for h in history]
    reference = [h["train_ce"] for h in history]
    np.testing.assert_allclose(reference, ce_by_epoch, rtol=1e-6)
    accuracy = [h["train_accuracy"] for h in history]
    # The sampled loss never looks stable over any 3 epochs; the reference does from epochs 4-6 on.
    assert not any(schedules.is_stable(sampled[: e + 1], accuracy[: e + 1], 3, 0.02, 0.01) for e in range(len(history)))
    first = next(
        e for e in range(len(history)) if schedules.is_stable(reference[: e + 1], accuracy[: e + 1], 3, 0.02, 0.01)
    )
    assert first == 6
    assert summary["switch_epoch"] == 7
    assert [h["phase"] for h in history] == [1] * 7 + [2] * 3
    assert calls[7 * steps] == pytest.approx(1e-5) and calls[7 * steps - 1] > 1e-5  # Lr2 from epoch 7, never up
    assert summary["final_train_ce"] == pytest.approx(0.699)


def test_resume_keeps_the_recorded_setting_of_a_flag_not_given_again(tmp_path, capsys):
    """A run made with --no-crop-faces resumes without the flag with its recorded setting;
    given explicitly, a different setting is a named configuration mismatch."""
    common = [*TINY_FLAGS, "--data-dir", str(tmp_path / "data"), "--workdir", str(tmp_path / "run")]
    assert train_program.main(common + ["--epochs", "1", "--no-crop-faces"]) == 0
    path = tmp_path / "run" / "config.json"
    assert json.loads(path.read_text())["data"]["crop_faces"] is False
    assert train_program.main(common + ["--epochs", "2", "--resume"]) == 0  # the flag not given again
    assert json.loads(path.read_text())["data"]["crop_faces"] is False
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert train_program.main(common + ["--epochs", "3", "--resume", "--crop-faces"]) == 2
    assert "data.crop_faces (False in config.json, True now)" in capsys.readouterr().err


def test_a_run_resumed_with_more_epochs_goes_on_from_its_learning_rate(uninterrupted, tmp_path):
    """--resume with a larger --epochs (docs/training.md): the cosine goes on from the rate the run
    had reached and ends at the floor at the new end, instead of being re-planned over the new
    length (a jump up at the resume point). 2 epochs planned, resumed after 1 with 4."""
    from helpers import restored_state

    from faml_jax import schedules

    _, data_dir, config, _ = uninterrupted
    config = dataclasses.replace(
        config, epochs=2, schedule=dataclasses.replace(config.schedule, window=5)
    )  # no switch to Lr2 here
    workdir = tmp_path / "run"
    trainer.fit(config, workdir, progress=False, stop_after=1)
    longer = dataclasses.replace(config, epochs=4)
    trainer.fit(longer, workdir, resume=True, progress=False, stop_after=1)
    steps = 96 // 16
    reached = schedules.learning_rate(config.schedule, schedules.LrState(), 1, 0, steps, 2)
    expected = schedules.LrState(cosine_start=1.0, cosine_lr=reached, cosine_end=4.0)
    _, record = restored_state(workdir, longer)
    assert record["lr_state"] == dataclasses.asdict(expected) and record["planned_epochs"] == 4
    rates = [json.loads(line)["learning_rate"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rates[1] == pytest.approx(schedules.learning_rate(config.schedule, expected, 1, steps - 1, steps, 4))
    assert rates[0] > rates[1]
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 4
    # Resumed again with the same epochs: the segment stays as recorded.
    trainer.fit(longer, workdir, resume=True, progress=False)
    _, record = restored_state(workdir, longer)
    assert record["lr_state"] == dataclasses.asdict(expected)
    rates = [json.loads(line)["learning_rate"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(schedules.learning_rate(config.schedule, expected, 3, steps - 1, steps, 4))


def test_a_pretrained_start_has_zero_fusion_weights_and_balanced_wce_is_warned(tmp_path, logged):
    """With --init the FA fusion weights start at fa_init_pretrained (0: the stem starts as the
    backbone's conv1; docs/method.md 2.1), set by --fusion-init; --balanced with a class-weighted
    loss is said in one warning line (the imbalance corrected twice)."""
    import jax

    from faml_jax import models, pretrained
    from faml_jax.setup import Setup

    config = tiny_config(tmp_path / "data", 1)
    fresh = jax.device_get(models.init(models.network(config.model), jax.random.key(0)))
    backbone = {
        "params": {k: v for k, v in fresh["params"].items() if k != "fc"},
        "batch_stats": fresh["batch_stats"],
    }
    backbone["params"]["stem"] = {"conv_main": backbone["params"]["stem"]["conv_main"]}
    path = pretrained.save_backbone(backbone, None, tmp_path / "backbone")
    started = Setup(dataclasses.replace(config, init=str(path))).start_variables(3)
    np.testing.assert_array_equal(started["params"]["stem"]["fusion_weights"], [0.0, 0.0])
    assert config.model.fa_init == 0.5 and not [m for m in logged if "twice" in m]
    half = dataclasses.replace(config, init=str(path), model=dataclasses.replace(config.model, fa_init_pretrained=0.5))
    np.testing.assert_array_equal(Setup(half).start_variables(3)["params"]["stem"]["fusion_weights"], [0.5, 0.5])
    assert config.loss.needs_class_weights  # the tiny run's ML with WCE
    Setup(dataclasses.replace(config, data=dataclasses.replace(config.data, balanced=True)))
    (warning,) = [m for m in logged if "twice" in m]
    assert warning.startswith("warning: --balanced with the class-weighted loss (ml with WCE (--weighted))")


def test_the_pmap_train_step_compiles_once_over_several_epochs(tmp_path):
    """Training's data-parallel (``jax.pmap``) step and the evaluator are traced and compiled in
    the first epoch only; the epochs after it compile nothing. Counted with jax's own compilation
    events (a pmapped function is lowered as ``jit(_fun)``), between the epochs' log lines; the
    loss and evaluation batch are this test's own, so that neither is built already."""
    import logging

    import jax

    config = tiny_config(tmp_path / "data", 3)
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, p_lsr=0.37), eval_batch_size=24)
    per_epoch = [0]

    def on_event(name, duration, **kwargs):
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration" and kwargs.get("fun_name") == "jit(_fun)":
            per_epoch[-1] += 1

    class EpochEnds(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("epoch "):
                per_epoch.append(0)

    handler, log = EpochEnds(), logging.getLogger("faml_jax.member")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        trainer.fit(config, tmp_path / "run", progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
        log.removeHandler(handler)
        log.setLevel(level)
    assert per_epoch == [2, 0, 0, 0]  # epoch 1: the train step and the evaluator; then nothing
