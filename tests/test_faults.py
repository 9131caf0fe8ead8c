"""Faults and bad input, end to end: signals sent at known moments through the project's own
interfaces (while starting, at a seeded random step, inside a checkpoint save) for training and evolution, each followed
by a resume and compared with an uninterrupted run; damaged checkpoints; two runs on one
workdir; non-finite training; and the error paths that must end in one line.

The interrupted programs run in subprocesses (``run_cli``, as ``python -m experiments.train``
does, on ``helpers.tiny_config``); resumes and references run here.
"""

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest
from helpers import assert_same_run, program_env, tiny_config, without_timings

from experiments import ensemble as ensemble_program
from experiments import evolve as evolve_program
from experiments import prepare as prepare_program
from experiments import train as train_program
from faml_jax import loop, runs, signals, trainer
from faml_jax.checkpoint import CheckpointDamaged, CheckpointMismatch, Checkpoints
from faml_jax.config import FGAConfig
from faml_jax.data import fixtures
from faml_jax.errors import ConfigError, NonFiniteError, OutOfMemoryError, WorkdirError
from faml_jax.evolution import evolve
from faml_jax.records import config_to_json

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
quiet = dict(progress=False)
FGA = FGAConfig(population=2, generations=1, children=1, new_members=0, parents=2, until_trained=False)

# A program as the experiments are (flags, library, run_cli), on the tiny configuration, with a
# fault injected at a known moment, through the project's own interfaces: a signal to itself once
# its modules are imported (--at imported), as its train step is built (--at setup), before its
# K-th train step (--at-step), or as the checkpoint of epoch E is saved (--in-save).
FAULTY = textwrap.dedent("""
    import sys
    sys.argv[0] = "-m"  # as python -m starts a program: its package handles Ctrl-C while importing
    import experiments
    sys.argv[0] = "faulty"
    import os, signal
    from helpers import tiny_config
    from experiments.cli import OneLineErrorParser, run_cli
    from faml_jax import loop, member, trainer
    from faml_jax.config import FGAConfig

    parser = OneLineErrorParser.for_program("faulty", "")
    parser.add_argument("program", choices=["train", "evolve"])
    parser.add_argument("data_dir")
    parser.add_argument("workdir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--signal", default="SIGTERM")
    parser.add_argument("--at-step", type=int)
    parser.add_argument("--in-save", type=int)
    parser.add_argument("--at", choices=["imported", "setup"])
    args = parser.parse_args()
    signum = getattr(signal, args.signal)

    def send():
        os.kill(os.getpid(), signum)

    if args.at == "imported":  # the program has not started: its package's handler ends it
        send()
    if args.at == "setup":
        original_init = loop.DataParallel.__init__
        def init(self, *a, **k):
            send()
            return original_init(self, *a, **k)
        loop.DataParallel.__init__ = init

    if args.at_step:
        calls = [0]
        original = loop.DataParallel.__call__
        def counted(self, placed, learning_rates, active):
            calls[0] += 1
            if calls[0] == args.at_step:
                send()
            return original(self, placed, learning_rates, active)
        loop.DataParallel.__call__ = counted
    if args.in_save:
        from faml_jax.checkpoint import Checkpoints
        original_save = Checkpoints.save
        def save(self, epoch, *a, **k):
            if self.directory.name == "checkpoints" and epoch == args.in_save:
                send()
            return original_save(self, epoch, *a, **k)
        Checkpoints.save = save

    def body(a):
        config = tiny_config(a.data_dir, 3)
        if a.program == "train":
            trainer.fit(config, a.workdir, resume=a.resume, progress=False)
        else:
            from faml_jax.evolution import evolve
            fga = FGAConfig(population=2, generations=1, children=1, new_members=0, parents=2, until_trained=False)
            evolve(config, fga, a.workdir, resume=a.resume, progress=False)

    sys.exit(run_cli(parser, None, body))
""")


def patched(script: str, code: str) -> str:
    """``script`` with ``code`` run just before its ``body`` is defined (a further fault)."""
    assert "\ndef body(a):" in script
    return script.replace("\ndef body(a):", "\n" + code + "\ndef body(a):")


def run_faulty(*args, timeout=300) -> subprocess.CompletedProcess:
    env = program_env()
    return subprocess.run(
        [sys.executable, "-c", FAULTY, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_stop(result, status):
    """The program stopped as asked: one line on stderr, no traceback, the status."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Three epochs of the tiny run without interruption."""
    root = tmp_path_factory.mktemp("faults")
    data_dir = root / "data"
    config = tiny_config(data_dir, 3)
    trainer.fit(config, root / "full", **quiet)
    return root, data_dir, config


# ---------------------------------------------------------------------------------------------
# Signals during training


@pytest.mark.parametrize("signame, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_within_an_epoch_saves_there_and_the_resumed_run_is_the_uninterrupted_one(
    reference, signame, status, logged
):
    root, data_dir, config = reference
    steps = 96 // 16
    step = random.Random(f"{signame} 19").randrange(steps + 2, 2 * steps)  # within epoch 2 (not its first step)
    workdir = root / f"within-{signame}"
    line = assert_one_line_stop(run_faulty("train", data_dir, workdir, "--signal", signame, "--at-step", step), status)
    done = step  # the step that was running when the signal came is finished first
    assert f"stopped by {signame} at epoch 2, step {done - steps}/{steps}" in line and "--resume" in line, line
    assert runs.checkpoint_epochs(workdir, runs.PREEMPTED) == [done]
    assert runs.checkpoint_epochs(workdir) == [1]
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1

    trainer.fit(config, workdir, resume=True, progress=False)
    assert any(f"step {done - steps}/{steps} of epoch 2" in m for m in logged), logged
    assert_same_run(workdir, root / "full", config)
    assert not runs.checkpoint_epochs(workdir, runs.PREEMPTED)  # done with once the epoch ended
    assert runs.checkpoint_epochs(workdir) == [2, 3]  # the last 2 (the best among them)


def test_a_signal_inside_a_checkpoint_save_stops_after_that_checkpoint(reference):
    root, data_dir, config = reference
    workdir = root / "in-save"
    line = assert_one_line_stop(run_faulty("train", data_dir, workdir, "--in-save", 2), 143)
    assert "after epoch 2 (its checkpoint is saved)" in line, line
    assert runs.checkpoint_epochs(workdir) == [1, 2] and not runs.checkpoint_epochs(workdir, runs.PREEMPTED)
    trainer.fit(config, workdir, resume=True, **quiet)
    assert_same_run(workdir, root / "full", config)


# The file system filling up inside checkpoint 2, as tensorstore reports it under orbax, with the
# echoes seen on a full disk: orbax's writer thread logging the error with its traceback, and
# tensorstore's late callbacks raising "Event loop is closed" as unraisable exceptions.
DISK_FULL_AT_2 = """
import logging
import orbax.checkpoint as ocp
original_manager_save = ocp.CheckpointManager.save
def full_disk_save(self, step, *a, **k):
    if step != 2:
        return original_manager_save(self, step, *a, **k)
    partial = self.directory / "2.orbax-checkpoint-tmp" / "state" / "d"
    partial.mkdir(parents=True)
    error = ValueError(f'RESOURCE_EXHAUSTED: Error writing "params.head/0" in OCDBT database at local file '
                       f'"{partial.parent}/": Failed writing: "{partial}/5e1f": Failed to write 318302 bytes to '
                       "file 20: No space left on device [os_error_code='28']")
    try:
        raise error
    except ValueError:
        logging.getLogger("absl").exception("_SignalingThread.run() raised an exception: %s", error)
    class Unraisable:
        exc_type, exc_value, exc_traceback, err_msg, object = RuntimeError, RuntimeError("Event loop is closed"), None, None, None
    for _ in range(3):
        sys.unraisablehook(Unraisable)
    raise error
ocp.CheckpointManager.save = full_disk_save
"""


def test_a_full_disk_is_one_line_and_the_run_resumes_from_its_last_checkpoint(reference):
    """No traceback, no echo of the writer threads: one line naming the file being written and the
    last complete checkpoint, status 1; --resume (once there is space) ends as the uninterrupted run."""
    root, data_dir, config = reference
    workdir = root / "disk-full"
    result = subprocess.run(
        [sys.executable, "-c", patched(FAULTY, DISK_FULL_AT_2), "train", str(data_dir), str(workdir)],
        env=program_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    line = assert_one_line_stop(result, 1)
    partial = workdir / "checkpoints" / "2.orbax-checkpoint-tmp" / "state" / "d" / "5e1f"
    assert (
        line
        == f"python -m faulty: error: no space left on device while writing {partial}; the last complete checkpoint is epoch 1"
    )
    assert runs.checkpoint_epochs(workdir) == [1]
    trainer.fit(config, workdir, resume=True, **quiet)
    assert_same_run(workdir, root / "full", config)


def test_a_really_full_disk_is_one_line_and_the_run_resumes(reference, tmp_path):
    """The same on a real full file system: a tmpfs of 60 % of what the run writes (mounting one
    needs root, as on the CI machine; elsewhere this test cannot run)."""
    root, data_dir, config = reference
    mount = tmp_path / "small"
    mount.mkdir()
    size = sum(p.stat().st_size for p in (root / "full").rglob("*") if p.is_file()) * 6 // 10
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result = run_faulty("train", data_dir, mount / "run")
        line = assert_one_line_stop(result, 1)
        epochs = runs.checkpoint_epochs(mount / "run")
        kept = f"the last complete checkpoint is epoch {epochs[-1]}" if epochs else "no checkpoint is complete yet"
        assert line.startswith(
            f"python -m faulty: error: no space left on device while writing {mount / 'run'}"
        ) and line.endswith(kept)
        if (mount / "run").exists():  # (a new run full before its first checkpoint removes itself)
            shutil.copytree(mount / "run", tmp_path / "run")  # the disk freed
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    trainer.fit(config, tmp_path / "run", resume=True, **quiet)
    assert_same_run(tmp_path / "run", root / "full", config)


@pytest.mark.parametrize("signame, moment", [("SIGINT", "imported"), ("SIGTERM", "setup"), ("SIGINT", "step")])
def test_a_signal_while_starting_or_at_a_seeded_step_leaves_a_resumable_run(reference, signame, moment):
    """While starting (its modules imported: the program has not begun; its step being built:
    before any checkpoint) or at a seeded random step of training: the stop is one line with
    130/143 (or the run had finished), and --resume ends as the uninterrupted run."""
    root, data_dir, config = reference
    step = random.Random(f"2026 {signame}").randint(1, 18)  # any step of the 3 epochs, the last included
    workdir = root / f"at-{moment}-{signame}"
    result = run_faulty(
        "train",
        data_dir,
        workdir,
        "--signal",
        signame,
        *(["--at-step", step] if moment == "step" else ["--at", moment]),
    )
    if result.returncode != 0 or moment != "step" or step != 18:  # at the very end the run may have finished
        line = assert_one_line_stop(result, 130 if signame == "SIGINT" else 143)
        assert moment != "imported" or line == f"stopped by {signame} while starting", line
    summary = workdir / "summary.json"
    if not summary.exists() or not json.loads(summary.read_text())["finished"]:
        trainer.fit(config, workdir, resume=True, **quiet)
    assert_same_run(workdir, root / "full", config)


def test_a_lengthened_run_stopped_by_a_signal_has_a_summary_of_where_it_stopped(tmp_path, monkeypatch):
    """A finished 1-epoch run resumed for 3 epochs and stopped by SIGINT within epoch 3: its
    summary.json is epoch 2's, unfinished, of 3 planned (it was the 1-epoch run's), a given
    member is refused until it is finished, and the finished run's summary says so."""
    import signal

    from faml_jax.lineage import check_given_member

    config = tiny_config(tmp_path / "data", 1)
    workdir = tmp_path / "run"
    assert trainer.fit(config, workdir, **quiet)["finished"] is True
    longer = dataclasses.replace(config, epochs=3)
    calls, original = [0], loop.DataParallel.__call__

    def signalled(self, *args):  # Ctrl-C during the 3rd step of epoch 3 (6 steps an epoch)
        calls[0] += 1
        if calls[0] == 6 + 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(loop.DataParallel, "__call__", signalled)
    with pytest.raises(signals.Interrupted, match="stopped by SIGINT at epoch 3, step 3/6"):
        trainer.fit(longer, workdir, resume=True, **quiet)
    monkeypatch.setattr(loop.DataParallel, "__call__", original)
    summary = json.loads((workdir / "summary.json").read_text())
    second = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[1])
    assert (summary["epochs"], summary["planned_epochs"], summary["finished"]) == (2, 3, False)
    assert summary["final_test_accuracy"] == second["test_accuracy"]
    with pytest.raises(WorkdirError, match=r"--members .*run stopped at epoch 2 of 3: finish it first"):
        check_given_member(workdir, longer)
    finished = trainer.fit(longer, workdir, resume=True, **quiet)
    assert json.loads((workdir / "summary.json").read_text()) == finished
    assert (finished["epochs"], finished["planned_epochs"], finished["finished"]) == (3, 3, True)


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(reference):
    root, data_dir, config = reference
    workdir = root / "twice"
    # The second signal comes while the first one's checkpoint is about to be written.
    script = patched(
        FAULTY,
        "original_save = member.Member.save_within_epoch\n"
        "def save_within_epoch(*a, **k):\n    send()\n    return original_save(*a, **k)\n"
        "member.Member.save_within_epoch = save_within_epoch\n",
    )
    env = program_env()
    result = subprocess.run(
        [sys.executable, "-c", script, "train", str(data_dir), str(workdir), "--at-step", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    line = assert_one_line_stop(result, 143)
    assert "second SIGTERM" in line
    assert runs.checkpoint_epochs(workdir) == [1] and not runs.checkpoint_epochs(workdir, runs.PREEMPTED)
    trainer.fit(config, workdir, resume=True, **quiet)
    assert_same_run(workdir, root / "full", config)


# ---------------------------------------------------------------------------------------------
# Signals during an evolution


@pytest.fixture(scope="module")
def reference_evolution(reference):
    root, data_dir, config = reference
    evolve(config, FGA, root / "evo-full", **quiet)
    return root / "evo-full"


def assert_same_evolution(workdir, reference_dir):
    assert json.loads((workdir / "population.json").read_text()) == json.loads(
        (reference_dir / "population.json").read_text()
    )
    for member in sorted(p.name for p in (reference_dir / "members").iterdir()):
        lines = (workdir / "members" / member / "metrics.jsonl").read_text().splitlines()
        assert without_timings(lines) == without_timings(
            (reference_dir / "members" / member / "metrics.jsonl").read_text().splitlines()
        ), member


def test_an_evolution_stopped_twice_resumes_to_the_uninterrupted_one(reference, reference_evolution):
    """Stopped within an epoch of its second network, resumed and stopped again inside a
    checkpoint save, resumed to the end: the uninterrupted evolution, exactly."""
    root, data_dir, config = reference
    workdir = root / "evo-stopped"
    rng = random.Random("evolve")
    # Networks train one after another, 3 epochs of 6 steps: steps 19-23 are steps 1-5 of the second one.
    step, saved = rng.randrange(19, 24), rng.choice([2, 3])
    line = assert_one_line_stop(run_faulty("evolve", data_dir, workdir, "--at-step", step), 143)
    assert f"g0-m1: stopped by SIGTERM at epoch 1, step {step - 18}/6" in line, line
    line = assert_one_line_stop(run_faulty("evolve", data_dir, workdir, "--resume", "--in-save", saved), 143)
    # Inside the save of its last epoch: it stops once the network is recorded, before the next.
    told = "after g0-m1 (trained and recorded)" if saved == 3 else f"g0-m1: stopped by SIGTERM after epoch {saved}"
    assert told in line, line
    evolve(config, FGA, workdir, resume=True, **quiet)
    assert_same_evolution(workdir, reference_evolution)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def truncate(checkpoint: Path):
    largest = max((p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def garble_record(checkpoint: Path):
    record = next(
        p
        for p in (checkpoint / "record").iterdir()
        if p.is_file() and p.name != "commit_success.txt" and "METADATA" not in p.name
    )
    text = record.read_text()
    garbled = '{"epoch": 3, "hist'
    record.write_text(garbled + "#" * (len(text) - len(garbled)))  # the same size: only the digest knows


def empty(checkpoint: Path):
    shutil.rmtree(checkpoint)
    checkpoint.mkdir()


DAMAGES = {
    "truncated data file": truncate,
    "deleted manifest": lambda c: (c / "state" / "manifest.ocdbt").unlink(),
    "garbled record": garble_record,
    "empty folder": empty,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_resume_passes_over_a_damaged_checkpoint_to_the_newest_intact_one(reference, damage, logged):
    root, _, config = reference
    workdir = root / f"damaged-{damage.replace(' ', '-')}"
    shutil.copytree(root / "full", workdir)
    DAMAGES[damage](workdir / "checkpoints" / "3")
    trainer.fit(config, workdir, resume=True, progress=False)  # epoch 3 again
    told = [m for m in logged if "damaged" in m or "cannot be read" in m]
    assert len(told) == 1 and "checkpoint" in told[0] and str(workdir / "checkpoints" / "3") in told[0], logged
    assert len(told[0].splitlines()) == 1 and len(told[0]) < 600
    assert any("resuming from checkpoints 2" in m for m in logged), logged
    assert_same_run(workdir, root / "full", config)
    assert (workdir / runs.DAMAGED / "checkpoints" / "3").is_dir()  # kept aside, not deleted


def test_no_intact_checkpoint_is_one_line_and_another_model_is_a_mismatch(reference, tmp_path):
    root, _, config = reference
    workdir = tmp_path / "all-damaged"
    shutil.copytree(root / "full", workdir)
    for epoch in runs.checkpoint_epochs(workdir):
        truncate(workdir / "checkpoints" / str(epoch))
    with pytest.raises(WorkdirError, match="no intact checkpoint in .*--overwrite") as raised:
        trainer.fit(config, workdir, resume=True, **quiet)
    assert len(str(raised.value).splitlines()) == 1
    with pytest.raises(WorkdirError, match="holds an earlier run"):  # still a run: not started afresh silently
        trainer.fit(config, workdir, **quiet)

    # Intact, but of another model: "does not match" (and only then).
    checkpoints = Checkpoints(root / "full")
    other = dataclasses.replace(config.model, widths=(8, 16, 16, 64))
    with pytest.raises(CheckpointMismatch, match="does not match this run's model"):
        checkpoints.restore(3, runs.state_template(other, config.optim))
    checkpoints.close()
    copy = tmp_path / "copy"
    shutil.copytree(root / "full", copy)
    garble_record(copy / "checkpoints" / "3")
    checkpoints = Checkpoints(copy)
    with pytest.raises(CheckpointDamaged, match="record/.* changed since it was written"):
        checkpoints.restore(3, runs.state_template(config.model, config.optim))
    checkpoints.close()


# ---------------------------------------------------------------------------------------------
# Two runs on one workdir


def test_a_workdir_in_use_refuses_a_second_run_and_an_overwrite(reference, capsys):
    root, data_dir, config = reference
    workdir = root / "locked"
    env = program_env()
    # The first run holds on after its first epoch (checkpoint 1 saved) until the test has tried
    # the workdir: it says so on stdout and waits for a line on stdin.
    held = patched(
        FAULTY,
        "original_end = member.Member.end_epoch\n"
        "def end_epoch(*a, **k):\n"
        "    entry = original_end(*a, **k)\n"
        "    if entry['epoch'] == 1:\n"
        "        print('epoch 1 saved', flush=True)\n"
        "        sys.stdin.readline()\n"
        "    return entry\n"
        "member.Member.end_epoch = end_epoch\n",
    )
    first = subprocess.Popen(
        [sys.executable, "-c", held, "train", str(data_dir), str(workdir)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        said = ""
        for said in iter(first.stdout.readline, ""):  # its log lines, then the marker ("" if it ended instead)
            if said == "epoch 1 saved\n":
                break
        assert said == "epoch 1 saved\n"
        assert (workdir / "checkpoints" / "1").is_dir()
        for kwargs in (dict(resume=True), dict(overwrite=True)):
            with pytest.raises(WorkdirError, match=f"is in use by process {first.pid} "):
                trainer.fit(config, workdir, **kwargs, **quiet)
        code = train_program.main(["--workdir", str(workdir), "--resume"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and f"in use by process {first.pid}" in err, err
    finally:
        out, err = first.communicate("go on\n", timeout=300)
    assert first.returncode == 0, err[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3] and len(list((workdir / "tensorboard").iterdir())) == 1
    assert_same_run(workdir, root / "full", config)

    # A lock left by a killed process is no lock: tests/test_workdir.py.


# ---------------------------------------------------------------------------------------------
# Non-finite training


def assert_strict_json(folder: Path):
    for path in folder.rglob("*.json*"):
        text = path.read_text()
        for line in text.splitlines() if path.suffix == ".jsonl" else [text]:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


def test_non_finite_weights_stop_the_run_at_the_step_keeping_the_finite_checkpoint(reference, tmp_path, monkeypatch):
    """A NaN learning rate in the 8th step (epoch 2, step 2) makes the weights NaN: the 9th
    step's loss is NaN, and the run stops there, with checkpoint 1 and nothing non-finite."""
    root, _, config = reference
    calls = [0]
    original = loop.DataParallel.__call__

    def poisoned(self, placed, learning_rates, active):
        calls[0] += 1
        return original(self, placed, [float("nan")] if calls[0] == 8 else learning_rates, active)

    monkeypatch.setattr(loop.DataParallel, "__call__", poisoned)
    workdir = tmp_path / "poisoned"
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite at epoch 2, step 3/6 \(loss nan\).*checkpoint 1 \(finite\) "
        r"is kept",
    ) as raised:
        trainer.fit(config, workdir, **quiet)
    assert len(str(raised.value).splitlines()) == 1
    assert runs.checkpoint_epochs(workdir) == [1] and not (workdir / "summary.json").exists()
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    assert_strict_json(workdir)
    monkeypatch.setattr(loop.DataParallel, "__call__", original)
    trainer.fit(config, workdir, resume=True, **quiet)  # continues from the finite checkpoint
    assert_same_run(workdir, root / "full", config)


def test_a_diverging_learning_rate_stops_in_the_first_epoch(reference, tmp_path):
    root, _, config = reference
    diverging = dataclasses.replace(
        config,
        optim=dataclasses.replace(config.optim, name="sgd"),
        schedule=dataclasses.replace(config.schedule, lr1=1e30),
    )
    workdir = tmp_path / "diverged"
    with pytest.raises(NonFiniteError, match=r"non-finite at epoch 1, step [2-6]/6.*no checkpoint was saved"):
        trainer.fit(diverging, workdir, **quiet)
    assert not runs.checkpoint_epochs(workdir) and not (workdir / "summary.json").exists()
    assert_strict_json(workdir)
    trainer.fit(config, workdir, **quiet)  # nothing to continue from: a new run starts there
    assert_same_run(workdir, root / "full", config)


@pytest.mark.parametrize(
    "flag",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr2", "nan"],
        ["--lr", "-1"],
        ["--weight-decay", "nan"],
        ["--widths", "0,0,0,0"],
    ],
)
def test_non_finite_or_impossible_values_are_refused_in_one_line(flag, capsys, tmp_path):
    code = train_program.main(flag + ["--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "error:" in err, err
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# What a refused or failed command leaves


def test_a_refused_resume_changes_nothing(reference, tmp_path):
    root, _, config = reference
    workdir = tmp_path / "run"
    shutil.copytree(root / "full", workdir)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="nothing to do"):
        trainer.fit(dataclasses.replace(config, epochs=2), workdir, resume=True, **quiet)
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_failed_before_its_first_checkpoint_starts_afresh(reference, tmp_path, resume):
    root, data_dir, config = reference
    workdir = tmp_path / "failed"
    # What a run stopped while compiling leaves: its config (of another seed, say), an empty
    # checkpoints folder, outputs begun.
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config_to_json(dataclasses.replace(config, seed=99))))
    (workdir / "metrics.jsonl").write_text("")
    trainer.fit(config, workdir, resume=resume, **quiet)
    assert_same_run(workdir, root / "full", config)


def test_a_folder_of_other_files_is_not_taken_for_leftovers(reference, tmp_path):
    root, _, config = reference
    workdir = tmp_path / "mine"
    (workdir / "tensorboard").mkdir(parents=True)
    (workdir / "tensorboard" / "events.out").write_text("somebody's")
    (workdir / "config.json").write_text('{"learning_rate": 0.1}')
    for kwargs in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(WorkdirError, match="holds tensorboard, config.json but no run of faml_jax"):
            trainer.fit(config, workdir, **kwargs, **quiet)
    assert (workdir / "tensorboard" / "events.out").read_text() == "somebody's"


def test_output_files_honour_the_umask(reference, tmp_path):
    root, _, config = reference
    old = os.umask(0o027)
    try:
        trainer.fit(config, tmp_path / "run", stop_after=1, **quiet)
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.jsonl", "test_logits/epoch_0001.npz", "checkpoints/1/digest.json"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


def test_resume_of_a_folder_without_a_run_says_it_starts_anew(reference, tmp_path, logged):
    """A mistyped --resume workdir: one line says no earlier run was found, then it trains."""
    root, data_dir, config = reference
    trainer.fit(config, tmp_path / "typo", resume=True, stop_after=1, progress=False)
    assert logged[0] == f"no earlier run to resume in {tmp_path / 'typo'}: starting a new run there"
    logged.clear()
    trainer.fit(config, tmp_path / "typo", resume=True, stop_after=2, progress=False)
    assert not any("no earlier run" in m for m in logged)


def test_out_of_memory_is_one_line_and_leaves_nothing(reference, capsys, tmp_path, monkeypatch):
    """A batch too large for the machine: XLA's RESOURCE_EXHAUSTED at the first step becomes one
    line naming the batch sizes, the devices and the allocation; the new run's folder is gone."""
    root, data_dir, _ = reference

    def exhausted(self, placed, learning_rates, active):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9585684864 bytes.")

    monkeypatch.setattr(loop.DataParallel, "__call__", exhausted)
    workdir = tmp_path / "runs" / "big"
    args = [
        "--workdir",
        str(workdir),
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--widths",
        "8,16,32,64",
        "--input-size",
        "32",
        "--train-size",
        "96",
        "--test-size",
        "40",
        "--no-attention",
        "--no-progress",
    ]
    assert train_program.main(args) == 2
    err = capsys.readouterr().err.strip()
    devices = len(jax.devices())
    assert err == (
        f"python -m experiments.train: error: out of memory training with --batch-size 64 (evaluation batch "
        f"256) on {devices} CPU device(s): one allocation asked for 9.59 GB; lower --batch-size"
    )
    assert not (tmp_path / "runs").exists()
    # A GPU's allocator words it otherwise (the library call: the same error, nothing left).
    monkeypatch.setattr(
        loop.DataParallel,
        "__call__",
        lambda *a: (_ for _ in ()).throw(
            RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.50GiB.")
        ),
    )
    with pytest.raises(OutOfMemoryError, match="one allocation asked for 13.42 GB; lower --batch-size"):
        trainer.fit(reference[2], tmp_path / "resumed", **quiet)
    assert not (tmp_path / "resumed").exists()


def utf16_labels(tmp_path: Path) -> Path:
    """A RAF-DB folder whose label file is UTF-16 text (item 12)."""
    basic = fixtures.write_rafdb(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7], [1, 2], size=24)
    labels = basic / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text(), encoding="utf-16")
    return tmp_path / "raf"


# Each case: the program, its arguments (from the reference run, this test's folder and a file
# in it, "blocker"), what its one line says, and a path it must not leave behind.
PATH_CASES = {
    "ensemble report under a file": (
        ensemble_program.main,
        lambda full, tmp, blocker: ["--members", str(full), "--out", str(blocker / "report")],
        "a-file",
        None,
    ),
    "ensemble report onto a file": (
        ensemble_program.main,
        lambda full, tmp, blocker: ["--members", str(full), "--out", str(blocker)],
        "a-file",
        None,
    ),
    "prepared data onto a file": (
        prepare_program.main,
        lambda full, tmp, blocker: ["--dataset", "rafdb", "--data-dir", str(tmp), "--out", str(blocker)],
        "a-file",
        None,
    ),
    "synthetic data dir a file": (
        train_program.main,
        lambda full, tmp, blocker: ["--data-dir", str(blocker), "--workdir", str(tmp / "w1")],
        "a-file",
        "w1",
    ),
    "rafdb data dir a file": (
        train_program.main,
        lambda full, tmp, blocker: [
            *("--dataset", "rafdb", "--data-dir", str(blocker), "--workdir", str(tmp / "w2"), "--from-scratch")
        ],
        "a-file",
        "w2",
    ),
    "ensemble data dir a file": (
        ensemble_program.main,
        lambda full, tmp, blocker: [*("--members", str(full), "--data-dir", str(blocker), "--out", str(tmp / "r"))],
        "a-file",
        "r",
    ),
    "a network given twice to evolve": (  # item 11
        evolve_program.main,
        lambda full, tmp, blocker: [
            *("--members", str(full), str(full / ".." / "full"), "--population", "2", "--workdir", str(tmp / "evo"))
        ],
        "names a network twice",
        "evo",
    ),
    "a label file in UTF-16": (  # item 12
        train_program.main,
        lambda full, tmp, blocker: [
            *(
                "--dataset",
                "rafdb",
                "--data-dir",
                str(utf16_labels(tmp)),
                "--from-scratch",
                "--workdir",
                str(tmp / "w4"),
            )
        ],
        "is not UTF-8 text (UTF-16",
        "w4",
    ),
    "a cache under a file": (  # FAML_JAX_CACHE below a file: the synthetic data cannot be written
        train_program.main,
        lambda full, tmp, blocker: ["--workdir", str(tmp / "w3")],
        "cannot write the synthetic data set",
        "w3",
    ),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_unwritable_or_wrong_kinds_of_paths_are_one_line(reference, capsys, tmp_path, monkeypatch, case):
    root, _, _ = reference
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    main, argv, told, not_left = PATH_CASES[case]
    if case == "a cache under a file":
        monkeypatch.setenv("FAML_JAX_CACHE", str(blocker / "cache"))
    code = main(argv(root / "full", tmp_path, blocker))
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and len(err.splitlines()) == 1 and "error:" in err, err
    assert told in err, err
    assert not_left is None or not (tmp_path / not_left).exists()
