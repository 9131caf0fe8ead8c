"""Tests of faml_jax.workdir: the lock on an output folder, the resume/overwrite checks, undoing a
failed start."""

import os
import shutil
import subprocess
import sys

import pytest

from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.workdir import LOCK_FILE, WorkdirLock, new_folders, prepare_directory, undone_if_it_fails


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    with WorkdirLock(tmp_path / "w") as lock:
        assert f"process {os.getpid()}" in lock.path.read_text()
        with pytest.raises(WorkdirError, match=f"in use by process {os.getpid()} "):
            WorkdirLock(tmp_path / "w").acquire()
    with WorkdirLock(tmp_path / "w"):  # free again
        pass
    assert not (tmp_path / "w" / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "w"
    script = (
        "import os, sys; from faml_jax.workdir import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
        "os._exit(9)"
    )  # dies holding it, the lock file left behind
    assert subprocess.run([sys.executable, "-c", script, str(folder)]).returncode == 9
    assert (folder / LOCK_FILE).exists()
    with WorkdirLock(folder):
        assert f"process {os.getpid()}" in (folder / LOCK_FILE).read_text()


def test_a_file_or_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkdirError, match="cannot write to workdir .*file: it is a file, not a folder"):
        WorkdirLock(blocker).acquire()
    with pytest.raises(WorkdirError, match="cannot write to workdir .*file/w: Not a directory"):
        WorkdirLock(blocker / "w").acquire()


def prepare(folder, current, *, resume=False, overwrite=False, write=True):
    return prepare_directory(
        folder,
        config_file="config.json",
        current=current,
        outputs=("config.json", "out"),
        has_run=lambda d: (d / "out").exists(),
        resume=resume,
        overwrite=overwrite,
        may_differ=("epochs",),
        what="run",
        write=write,
    )


def test_prepare_directory_continues_refuses_replaces_or_starts_afresh(tmp_path):
    folder = tmp_path / "w"
    assert prepare(folder, {"epochs": 1, "lr": 1}) is False
    (folder / "out").write_text("a run")
    with pytest.raises(WorkdirError, match="holds an earlier run: pass --resume .* or --overwrite"):
        prepare(folder, {"epochs": 1, "lr": 1})
    with pytest.raises(ConfigError, match=r"another configuration: lr \(1 in config.json, 2 now\)$"):
        prepare(folder, {"epochs": 1, "lr": 2}, resume=True)
    assert prepare(folder, {"epochs": 5, "lr": 1}, resume=True) is True  # epochs may grow
    assert prepare(folder, {"epochs": 1, "lr": 2}, overwrite=True) is False
    assert not (folder / "out").exists()
    # Nothing to continue from (a start that failed early): afresh, also with resume; its leftovers go.
    (folder / "config.json").write_text('{"epochs": 1, "lr": 2}')
    assert prepare(folder, {"epochs": 1, "lr": 3}, resume=True, write=False) is False
    assert not (folder / "config.json").exists()
    # ... but files that are not this program's are refused, also with --overwrite.
    (folder / "config.json").write_text('{"not": "json')
    for kwargs in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(WorkdirError, match="holds config.json but no run of faml_jax: it is never replaced"):
            prepare(folder, {"epochs": 1, "lr": 3}, **kwargs)
    assert (folder / "config.json").read_text() == '{"not": "json'
    # A run of this program (its checkpoints) whose config.json was damaged: --resume says to pass
    # --overwrite, and --overwrite replaces it.
    (folder / "out").write_text("a run")
    with pytest.raises(WorkdirError, match="is not valid JSON .*--overwrite replaces it"):
        prepare(folder, {"epochs": 1, "lr": 3}, resume=True)
    assert prepare(folder, {"epochs": 1, "lr": 3}, overwrite=True) is False
    assert not (folder / "out").exists()


def test_a_failed_start_leaves_a_parent_folders_lock_alone(tmp_path):
    """Undoing a failed start removes the folders it made while empty, but never another
    process's lock in a parent folder (it holds only its own workdir's)."""
    workdir = tmp_path / "runs" / "a"
    made = new_folders(workdir)
    with WorkdirLock(workdir):
        with WorkdirLock(tmp_path / "runs", "report folder"):  # another program's lock on the parent
            with pytest.raises(RuntimeError), undone_if_it_fails(workdir, "config.json", made):
                (workdir / "config.json").write_text("{}")
                raise RuntimeError("the data set is missing")
            assert not workdir.exists() and (tmp_path / "runs" / ".lock").exists()


@pytest.mark.parametrize(
    "marker, kind",
    [("evolve.json", "an evolution"), ("report.json", "an ensemble report"), ("export.json", "an export")],
)
def test_another_programs_folder_is_never_written_into(tmp_path, marker, kind):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / marker).write_text("{}")
    (folder / "notes.txt").write_text("mine")
    for kwargs in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(WorkdirError, match=f"holds {kind} \\({marker}\\), not a run: choose another folder"):
            prepare(folder, {"epochs": 1}, **kwargs)
    assert sorted(p.name for p in folder.iterdir()) == sorted([marker, "notes.txt"])


def test_a_failed_start_removes_what_it_made(tmp_path):
    workdir = tmp_path / "a" / "b"
    made = new_folders(workdir)
    with WorkdirLock(workdir):
        with pytest.raises(RuntimeError):
            with undone_if_it_fails(workdir, "config.json", made):
                (workdir / "config.json").write_text("{}")
                raise RuntimeError("the data set is missing")
    assert not (tmp_path / "a").exists()


def test_overwrite_refuses_a_symbolic_link_among_the_outputs_before_deleting_anything(tmp_path):
    """A run's tensorboard/ as a link: --overwrite deleted checkpoints/ first, then failed with
    "Cannot call rmtree on a symbolic link" naming no path. Every output is checked first; a link
    (an output, or inside one) is refused in one line naming it, and nothing is deleted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "events").write_text("kept")
    folder = tmp_path / "w"
    outputs = ("checkpoints", "tensorboard", "config.json")
    for linked in ("tensorboard", "checkpoints/7"):
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "1").write_text("a checkpoint")
        (folder / linked).symlink_to(elsewhere, target_is_directory=True)
        (folder / "config.json").write_text('{"epochs": 1}')
        before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        with pytest.raises(WorkdirError) as caught:
            prepare_directory(
                folder,
                config_file="config.json",
                current={"epochs": 1},
                outputs=outputs,
                has_run=lambda d: (d / "checkpoints" / "1").exists(),
                resume=False,
                overwrite=True,
                may_differ=(),
                what="run",
            )
        message = str(caught.value)
        assert f"{folder / linked} is a symbolic link" in message and len(message.splitlines()) == 1
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before  # nothing deleted
        assert (elsewhere / "events").read_text() == "kept"


def test_a_lock_taken_removes_what_a_killed_writer_left(tmp_path):
    """write_atomic's temporaries (.NAME.<8 random>.tmp) left by a killed writer are removed by
    the next holder of the folder's lock (it knows their writer is gone), in the folder and its
    folders; other hidden files stay."""
    folder = tmp_path / "w"
    (folder / "test_logits").mkdir(parents=True)
    stale = [folder / ".summary.json.ab3_x9zq.tmp", folder / "test_logits" / ".epoch_0001.npz.k2j4h5g6.tmp"]
    for path in stale:
        path.write_text("half")
    kept = [folder / ".mine.tmp", folder / "notes.tmp", folder / ".summary.json.toolong123.tmp"]
    for path in kept:
        path.write_text("mine")
    with WorkdirLock(folder):
        assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in kept)
