"""A real data set's folder as distributed, read by name: ``read_folder`` dispatches to the
readers of the layouts (``rafdb``, ``affectnet``). Used when a data set is opened directly from
its folder (``faml_jax.data.open_dataset``) and when it is prepared (``faml_jax.data.prepared``).
"""

from __future__ import annotations

from collections.abc import Callable

from faml_jax.data import affectnet, rafdb
from faml_jax.data.folders import FolderIndex, progress_bar


def read_folder(name: str, data_dir, progress: Callable | None = progress_bar) -> FolderIndex:
    """The ``folders.FolderIndex`` of a real data set's folder as distributed (``progress``
    wraps per-file label reading)."""
    if name == "rafdb":
        return rafdb.read_index(data_dir)
    return affectnet.read_index(data_dir, 8 if name == "affectnet8" else 7, progress)
