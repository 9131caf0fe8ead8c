"""Several processes (jax.distributed) take the same train steps as one process with all devices.

Two ``experiments.train`` processes on localhost, each with 2 forced CPU devices, against one
process with 4 (the test's own, with the suite's forced devices): after every step of one epoch the parameters must agree (checked on the final
checkpoint after 6 steps, within float reordering: gloo sums in another order; and on every
logged metric). Process 0 writes the checkpoints; process 1 keeps its own copy of the other
outputs in ``<workdir>.process1``, from its own evaluation.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import TINY_FLAGS, program_env, restored_state, suite_xla_flags

ROOT = Path(__file__).resolve().parents[1]
# R18+FAML (its ML loss draws must agree across processes) without the attention blocks, which
# add compile time and nothing across processes.
ARGS = [*TINY_FLAGS, "--epochs", "1", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir: Path, data_dir: Path, devices: int, extra=()):
    env = program_env(XLA_FLAGS=suite_xla_flags(devices))
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        *ARGS,
        "--data-dir",
        str(data_dir),
        "--workdir",
        str(workdir),
        *extra,
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_process_with_all_devices(tmp_path):
    data_dir = tmp_path / "data"
    # One process with 4 devices: this one (the suite's 4 forced CPU devices, the programs' flags).
    from experiments import train as train_program

    assert train_program.main([*ARGS, "--data-dir", str(data_dir), "--workdir", str(tmp_path / "one")]) == 0

    port = free_port()
    processes = [
        launch(
            tmp_path / "two",
            data_dir,
            devices=2,
            extra=["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        )
        for i in range(2)
    ]
    outputs = [finish(p) for p in processes]
    assert "final (epoch 1)" in outputs[0] and "final (epoch 1)" not in outputs[1]  # process 0 prints

    (one, _), (two, _) = restored_state(tmp_path / "one"), restored_state(tmp_path / "two")
    assert int(one.step) == int(two.step) == 6  # 96 images, batch 16
    for a, b in zip(
        jax.tree_util.tree_leaves((one.params, one.batch_stats)),
        jax.tree_util.tree_leaves((two.params, two.batch_stats)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "two.process1" / "checkpoints").exists()  # process 0 alone writes them
    for workdir in (tmp_path / "two", tmp_path / "two.process1"):  # process 1 evaluated on its own
        for m1, m2 in zip(metrics(tmp_path / "one"), metrics(workdir), strict=True):
            for key in ("train_loss", "train_accuracy", "test_accuracy", "learning_rate"):
                assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key


def test_process_flags_go_together(tmp_path):
    from experiments import train as train_program

    code = train_program.main([*ARGS, "--workdir", str(tmp_path / "w"), "--coordinator", "localhost:1"])
    assert code == 2


def test_distributed_auto_needs_a_launcher_and_no_process_flags(tmp_path, monkeypatch, capsys):
    from experiments import train as train_program
    from faml_jax.launch import LAUNCHERS, launcher

    for names in LAUNCHERS.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    assert launcher() is None
    assert train_program.main([*ARGS, "--workdir", str(tmp_path / "w"), "--distributed", "auto"]) == 2
    assert "no cluster launcher" in capsys.readouterr().err
    slurm = slurm_environment(process_id=1, processes=2, port=1)
    assert launcher(slurm) == "SLURM (srun)"
    assert launcher({k: v for k, v in slurm.items() if k != "SLURM_PROCID"}) is None  # salloc's shell: no task
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert (
        train_program.main(
            [*ARGS, "--workdir", str(tmp_path / "w"), "--distributed", "auto", "--coordinator", "localhost:1"]
        )
        == 2
    )
    assert "give no --coordinator" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def slurm_environment(process_id: int, processes: int, port: int) -> dict:
    """What ``srun --ntasks=<processes>`` on one node sets for task ``process_id`` (the variables
    jax's SLURM detection reads), with the coordinator's port fixed by ``JAX_COORDINATOR_PORT``."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_NTASKS": str(processes),
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": str(process_id),
        "JAX_COORDINATOR_PORT": str(port),
    }


@pytest.mark.slow
def test_evolution_across_two_processes_keeps_them_in_step(tmp_path):
    """FGA across two processes started as ``srun`` starts them (``--distributed auto`` reads a
    simulated SLURM environment): every decision (fitness, parents, fused child, BatchNorm
    recomputed on training batches) is the same in both, so process 1's copy of the population
    record equals process 0's (a process reading only its slice of a batch for the BatchNorm
    recomputation made them differ)."""
    port = free_port()
    extra = [
        "--population",
        "2",
        "--generations",
        "1",
        "--children",
        "1",
        "--new-members",
        "0",
        "--fixed-epochs",
        "--recompute-bn",
        "2",
        "--distributed",
        "auto",
    ]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.evolve",
                *ARGS,
                "--data-dir",
                str(tmp_path / "data"),
                "--workdir",
                str(tmp_path / "evo"),
                *extra,
            ],
            env=program_env(XLA_FLAGS=suite_xla_flags(2), **slurm_environment(i, 2, port)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for p in processes:
        finish(p)
    assert (tmp_path / "evo.process1" / "population.json").exists()  # the launcher made it process 1 of 2
    ours, theirs = (json.loads((tmp_path / d / "population.json").read_text()) for d in ("evo", "evo.process1"))
    child = ours["members"]["g1-c0"]
    assert child["origin"] == "child" and child["recompute_bn_batches"] == 2 and child["status"] == "trained"
    assert ours == theirs
