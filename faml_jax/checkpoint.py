"""Per-epoch checkpoints with orbax: the train state plus a JSON record of everything else a
resumed run needs (data iterator state, learning-rate regime, history).

Checkpoints are atomic: orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it when complete,
so a run killed during a save resumes from the last complete checkpoint. The last ``keep``
checkpoints are kept, plus the best one by test accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    """Checkpoints of one run in ``<workdir>/checkpoints/<epoch>``; the step is the epoch number
    (1-based: checkpoint ``e`` holds the state after ``e`` epochs).

    In a multi-process run (``jax.distributed``) every process holds the same state; process 0
    alone writes, every process calls ``save``, which waits for all of them before writing (so no
    process is still reading what it changes) and returns when the checkpoint is complete."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.directory.mkdir(parents=True, exist_ok=True)  # orbax's create=True refuses active_processes
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1),
        ])
        # orbax's own multi-host protocol is not used: each process works alone (its barriers
        # would wait for processes that never call it), ``save`` synchronises the processes.
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, handler, arg_types in (
            ("state", ocp.handlers.StandardCheckpointHandler(multiprocessing_options=alone),
             (ocp.args.StandardSave, ocp.args.StandardRestore)),
            ("record", ocp.handlers.JsonCheckpointHandler(multiprocessing_options=alone),
             (ocp.args.JsonSave, ocp.args.JsonRestore)),
        ):
            for arg_type in arg_types:
                registry.add(item, arg_type, handler)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=False, create=False,
                multiprocessing_options=alone,
            ),
            handler_registry=registry,
        )

    def latest_epoch(self) -> int | None:
        """The epoch of the newest complete checkpoint (None: no checkpoint)."""
        return self.manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_epoch(self) -> int | None:
        return self.manager.best_step()

    def save(self, epoch: int, state: Any, record: dict, test_accuracy: float) -> None:
        """Save the (unreplicated) train state and a JSON-serialisable ``record`` as checkpoint
        ``epoch``; ``test_accuracy`` ranks it for the best-checkpoint policy. Typed PRNG keys are
        stored as their key data (uint32): when several processes run, orbax refuses to write
        jax.Arrays that live on one process's devices."""
        several = jax.process_count() > 1
        if several:  # every process has read what it reads before this save (e.g. latest_epoch)
            sync_processes(f"before checkpoint {self.directory} {epoch}")
        if jax.process_index() == 0:
            self.manager.save(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)), record=ocp.args.JsonSave(record)),
                metrics={"test_accuracy": float(test_accuracy)},
            )
            self.manager.wait_until_finished()
        if several:  # no process reads the checkpoint before it is complete
            sync_processes(f"after checkpoint {self.directory} {epoch}")
            self._refresh()

    def _refresh(self) -> None:
        """Other processes than 0 re-read the list of checkpoints that process 0 writes."""
        if jax.process_index() > 0:
            self.manager.reload()

    def restore(self, epoch: int, like: Any) -> tuple[Any, dict]:
        """Restore checkpoint ``epoch`` into the structure (and dtypes) of ``like``, an
        unreplicated train state. Raises ValueError when the shapes do not match ``like``."""
        def restore(template):
            abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
            return self.manager.restore(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()),
            )

        try:
            restored = restore(_keys_to_data(like))
            state = _data_to_keys(restored["state"], like)
        except (ValueError, KeyError, TypeError) as error:
            try:  # a checkpoint written before keys were stored as key data
                restored = restore(like)
                state = restored["state"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"checkpoint {self.directory / str(epoch)} does not match this run's model or optimiser: {error}"
                ) from error
        return state, restored["record"]

    def close(self) -> None:
        self.manager.close()


def sync_processes(name: str) -> None:
    """Wait until every process of a multi-process run reaches the point called ``name``
    (nothing in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    """``tree`` with every typed PRNG key replaced by its key data, on the host (numpy uint32)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.random.key_data(x)) if _is_key(x) else x, tree)


def _data_to_keys(tree, like):
    """Undo ``_keys_to_data``: where ``like`` holds a typed key, wrap the key data of ``tree``."""
    return jax.tree_util.tree_map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like)
