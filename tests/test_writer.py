"""Tests of faml_jax.writer: atomic files and the run writer's metrics.jsonl / TensorBoard."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from faml_jax.writer import RunWriter, write_atomic, write_json


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, "old\n")

    class Unserialisable:
        pass

    with pytest.raises(AttributeError, match="local object"):
        write_atomic(path, arrays={"x": Unserialisable()})  # a local class cannot be pickled into the .npz
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left
    write_atomic(tmp_path / "a.npz", arrays={"x": np.arange(3)})
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], np.arange(3))


def test_run_writer_mirrors_the_history_then_appends(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')  # epoch 3 not checkpointed
    writer = RunWriter(tmp_path, [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}])
    writer.write(3, {"train_loss": 1.25, "train_ce": 1.0})
    writer.write_logits(3, np.zeros((2, 7), np.float32), np.array([1, 2]))
    writer.write_summary({"epochs": 3})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"epoch": 1, "train_loss": 2.0},
        {"epoch": 2, "train_loss": 1.5},
        {"epoch": 3, "train_loss": 1.25, "train_ce": 1.0},
    ]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"epochs": 3}
    assert (tmp_path / "test_logits" / "epoch_0003.npz").exists()
    assert any((tmp_path / "tensorboard").iterdir())


def test_files_and_json_honour_the_umask_and_are_strict(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"x": 1.5})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "c.json", {"loss": float("nan")})
    assert not (tmp_path / "c.json").exists() and not list(tmp_path.glob(".c.json*"))


def read_scalars(folder) -> dict:
    """``{(tag, step): value}`` of the TensorBoard event files in ``folder`` (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in folder.iterdir():
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = event_pb2.Event.FromString(data[12 : 12 + length])
            data = data[12 + length + 4 :]
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_the_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it is installed (seconds at every start of a program);
    the writer keeps it out, and torch can still be imported afterwards."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        from faml_jax.writer import RunWriter
        writer = RunWriter({str(tmp_path)!r})
        writer.write(3, {{"train_loss": 1.25}})
        writer.close()
        print("torch imported:", "torch" in sys.modules)
        if importlib.util.find_spec("torch") is not None:
            import torch  # not blocked any more
            print("torch afterwards:", torch.__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch imported: False" in result.stdout
    assert read_scalars(tmp_path / "tensorboard") == {("train_loss", 3): 1.25}
