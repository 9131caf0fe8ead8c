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
import orbax.checkpoint as ocp


class Checkpoints:
    """Checkpoints of one run in ``<workdir>/checkpoints/<epoch>``; the step is the epoch number
    (1-based: checkpoint ``e`` holds the state after ``e`` epochs)."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1),
        ])
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=False, create=True
            ),
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
        ``epoch``; ``test_accuracy`` ranks it for the best-checkpoint policy."""
        self.manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            metrics={"test_accuracy": float(test_accuracy)},
        )
        self.manager.wait_until_finished()

    def restore(self, epoch: int, like: Any) -> tuple[Any, dict]:
        """Restore checkpoint ``epoch`` into the structure (and dtypes) of ``like``, an
        unreplicated train state. Raises ValueError when the shapes do not match ``like``."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"checkpoint {self.directory / str(epoch)} does not match this run's model or optimiser: {error}"
            ) from error
        return restored["state"], restored["record"]

    def close(self) -> None:
        self.manager.close()
