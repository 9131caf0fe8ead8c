"""Joining a multi-process run (``jax.distributed``): by hand (every process given the
coordinator, the number of processes and its own index) or from a cluster launcher's environment
(``srun``, ``mpirun``). The programs call ``start_processes`` before jax creates a backend.
"""

from __future__ import annotations

import os

import jax

from faml_jax.errors import ConfigError

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


def start_processes(
    coordinator: str | None, num_processes: int | None, process_id: int | None, distributed: str = "off"
) -> None:
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
            raise ConfigError(
                "--distributed auto takes the processes from the launcher: "
                "give no --coordinator, --num-processes or --process-id"
            )
        if launcher() is None:
            raise ConfigError(
                "--distributed auto: no cluster launcher found in the environment "
                f"(looked for {', '.join(LAUNCHERS)}); start with srun or mpirun, or give --coordinator, "
                "--num-processes and --process-id"
            )
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
