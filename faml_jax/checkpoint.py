"""Per-epoch checkpoints with orbax: the train state plus a JSON record of everything else a
resumed run needs (data iterator position, learning-rate regime, history).

Checkpoints are atomic: orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it when complete,
so a run killed during a save resumes from the last complete checkpoint. Each complete checkpoint
also holds ``digest.json`` (the size and SHA-256 of each of its files), so a checkpoint damaged
afterwards (a truncated or changed file, a lost manifest) is recognised before orbax reads it
(``CheckpointDamaged``), and told apart from a checkpoint of another model (``CheckpointMismatch``).
Which checkpoints are kept is the caller's choice (``prune``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from faml_jax.errors import FamlError, WorkdirError
from faml_jax.versions import FORMAT_VERSION, checked, stamped, unstamped

DIGEST = "digest.json"


class CheckpointError(FamlError):
    """A checkpoint cannot be restored (the subclasses say why)."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint's files are missing, truncated or changed since it was written."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint is intact but holds another model's or optimiser's state."""


class CheckpointUnreadable(CheckpointError):
    """A checkpoint whose files are those written (its digest verifies) cannot be read now (no
    permission, an I/O error, another orbax version): nothing is set aside."""


class Checkpoints:
    """Checkpoints of one run in ``<workdir>/checkpoints/<epoch>``; the step is the epoch number
    (1-based: checkpoint ``e`` holds the state after ``e`` epochs).

    In a multi-process run (``jax.distributed``) every process holds the same state; process 0
    alone writes, every process calls ``save``, which waits for all of them before writing (so no
    process is still reading what it changes) and returns when the checkpoint is complete."""

    def __init__(self, workdir: str | os.PathLike, folder: str = "checkpoints"):
        self.directory = Path(workdir).absolute() / folder
        self.directory.mkdir(parents=True, exist_ok=True)  # orbax's create=True refuses active_processes
        # orbax's own multi-host protocol is not used: each process works alone (its barriers
        # would wait for processes that never call it), ``save`` synchronises the processes.
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, handler, arg_types in (
            (
                "state",
                ocp.handlers.StandardCheckpointHandler(multiprocessing_options=alone),
                (ocp.args.StandardSave, ocp.args.StandardRestore),
            ),
            (
                "record",
                ocp.handlers.JsonCheckpointHandler(multiprocessing_options=alone),
                (ocp.args.JsonSave, ocp.args.JsonRestore),
            ),
        ):
            for arg_type in arg_types:
                registry.add(item, arg_type, handler)
        with quiet_orbax():  # a damaged checkpoint's missing metadata is a warning there; ``restore`` says it
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    enable_async_checkpointing=False,
                    create=False,
                    multiprocessing_options=alone,
                ),
                handler_registry=registry,
            )

    def latest_epoch(self) -> int | None:
        """The epoch of the newest complete checkpoint (None: no checkpoint)."""
        return self.manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, epoch: int, state: Any, record: dict) -> None:
        """Save the (unreplicated) train state and a JSON-serialisable ``record`` as checkpoint
        ``epoch``, then its digest. Typed PRNG keys are stored as their key data (uint32): when
        several processes run, orbax refuses to write jax.Arrays that live on one process's
        devices."""
        several = jax.process_count() > 1
        if several:  # every process has read what it reads before this save (e.g. latest_epoch)
            sync_processes(f"before checkpoint {self.directory} {epoch}")
        if jax.process_index() == 0:
            stored = _keys_to_data(state)
            self.manager.save(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardSave(stored), record=ocp.args.JsonSave(stamped(record))),
                force=True,
            )
            self.manager.wait_until_finished()
            write_digest(
                self.directory / str(epoch), {name: list(np.shape(x)) for name, x in _flat_paths(stored).items()}
            )
        if several:  # no process reads the checkpoint before it is complete
            sync_processes(f"after checkpoint {self.directory} {epoch}")
            self._refresh()

    def delete(self, epoch: int) -> None:
        """Delete checkpoint ``epoch`` (process 0; every process calls it)."""
        if jax.process_index() == 0 and epoch in self.all_epochs():
            self.manager.delete(epoch)
        sync_processes(f"deleted {self.directory} {epoch}")
        self._refresh()

    def prune(self, keep: set[int]) -> None:
        """Delete every complete checkpoint whose epoch is not in ``keep``."""
        for epoch in self.all_epochs():
            if epoch not in keep:
                self.delete(epoch)

    def set_aside(self, epoch: int, where: Path) -> Path:
        """Move checkpoint ``epoch`` (a damaged one) out of the way to ``where/<epoch>``, so that
        the run can write that epoch again; returns its new path."""
        target = Path(where) / str(epoch)
        k = 1
        while target.exists():  # an earlier damaged copy of this epoch is kept too
            target, k = Path(where) / f"{epoch}.{k}", k + 1
        sync_processes(f"set aside {self.directory} {epoch} (every process has looked at it)")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(epoch)), target)
            with quiet_orbax():
                self.manager.reload()
        sync_processes(f"set aside {self.directory} {epoch}")
        self._refresh()
        return target

    def _refresh(self) -> None:
        """Other processes than 0 re-read the list of checkpoints that process 0 writes."""
        if jax.process_index() > 0:
            with quiet_orbax():
                self.manager.reload()

    def restore(self, epoch: int, like: Any) -> tuple[Any, dict]:
        """Restore checkpoint ``epoch`` into the structure (and dtypes) of ``like``, an
        unreplicated train state or its shapes and dtypes (``jax.eval_shape``). Raises ``CheckpointDamaged`` when its files are not those
        written (``verify``; a checkpoint whose save stopped before its digest was written is
        judged by whether orbax can read it) and ``CheckpointMismatch`` when it is intact but
        holds arrays of other names or shapes than ``like``'s."""
        path = self.directory / str(epoch)
        problem = verify(path)
        if problem:
            raise CheckpointDamaged(f"checkpoint {path} is damaged: {problem}")
        version = version_problem(path)
        if version:
            raise CheckpointUnreadable(version)
        template = self.stored_like(epoch, like)
        abstract = jax.tree_util.tree_map(_abstract_leaf, template, like)
        try:
            # orbax's reading threads report a damaged file as many "Event loop is closed"
            # tracebacks on stderr; the error raised here says what matters.
            with contextlib.redirect_stderr(io.StringIO()), quiet_orbax():
                restored = self.manager.restore(
                    epoch,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()),
                )
        except Exception as error:  # noqa: BLE001 (orbax and tensorstore raise many kinds)
            if (path / DIGEST).exists():  # its files are those written: the reading failed, not the files
                raise CheckpointUnreadable(
                    f"checkpoint {path} is intact but cannot be read: {first_line(error)}"
                ) from None
            raise CheckpointDamaged(f"checkpoint {path} cannot be read: {first_line(error)}") from None
        state = _data_to_keys(restored["state"], like)
        return state, unstamped(restored["record"])

    def stored_like(self, epoch: int, like: Any) -> Any:
        """``like`` in the form checkpoint ``epoch`` stores it: PRNG keys as key data. A
        checkpoint whose stored arrays have other names or shapes is a ``CheckpointMismatch``;
        one whose metadata cannot be read, ``CheckpointDamaged``."""
        path = self.directory / str(epoch)
        shapes = stored_shapes(path)
        if shapes is None:  # no digest (a save interrupted before it): orbax's metadata (slower)
            try:
                with contextlib.redirect_stderr(io.StringIO()), quiet_orbax():
                    stored = self.manager.item_metadata(epoch)["state"]
                shapes = {k: tuple(v.shape) for k, v in _flat_paths(stored).items()}
            except Exception as error:  # noqa: BLE001
                raise CheckpointDamaged(f"checkpoint {path} cannot be read: {first_line(error)}") from None
        template = _keys_to_data(like)
        wanted = {k: tuple(np.shape(v)) for k, v in _flat_paths(template).items()}
        if wanted == shapes:
            return template
        differing = sorted(set(wanted) ^ set(shapes)) or sorted(k for k in wanted if wanted[k] != shapes[k])
        name = differing[0]
        where = (
            f"{name} is {shapes[name]} there, {wanted[name]} here"
            if name in wanted and name in shapes
            else f"{name} is {'only there' if name in shapes else 'not there'}"
        )
        raise CheckpointMismatch(f"checkpoint {path} does not match this run's model or optimiser: {where}")

    def close(self) -> None:
        self.manager.close()


@contextlib.contextmanager
def quiet_orbax():
    """Within: orbax's warnings (absl's logger) are not shown; errors still are."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (tensorstore's run to many lines)."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):  # dict keys, dataclass fields, sequence indices
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _flat_paths(tree) -> dict:
    """``{"a/b/c": leaf}`` of a pytree, the same for a train state and its stored metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digest(checkpoint: Path, shapes: dict[str, list[int]] | None = None, version: int = FORMAT_VERSION) -> None:
    """Record the size and SHA-256 of every file of a complete checkpoint in its digest.json, and
    the shape of each stored array (``"a/b/c"`` paths), which ``stored_like`` compares without
    asking orbax for the checkpoint's metadata."""
    from faml_jax.writer import write_json

    files = {
        str(p.relative_to(checkpoint)): [p.stat().st_size, _sha256(p)]
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != DIGEST
    }
    record = {"files": files, **({"shapes": shapes} if shapes is not None else {})}
    write_json(checkpoint / DIGEST, stamped(record, version))


def version_problem(checkpoint: Path, what: str | None = None, expected: int = FORMAT_VERSION) -> str | None:
    """None when ``checkpoint``'s digest is of this format version (or it has none: a save
    interrupted before its digest, judged by reading it), else what to say of it (``what``
    names it; default "checkpoint <path>")."""
    try:
        record = json.loads((Path(checkpoint) / DIGEST).read_text())
    except (OSError, ValueError):
        return None
    try:
        checked(record, what or f"checkpoint {checkpoint}", expected)
    except WorkdirError as error:
        return str(error)
    return None


def content_digest(checkpoint: Path) -> str:
    """What identifies a checkpoint's content: the SHA-256 of its digest's list of files (each
    file's name, size and SHA-256). A copy of the checkpoint has the same; a network trained
    again, or another run put in its place, another. ``CheckpointDamaged`` when it has no valid
    digest (the files themselves are checked against it when the checkpoint is restored)."""
    path = Path(checkpoint) / DIGEST
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        raise CheckpointDamaged(f"checkpoint {checkpoint} has no {DIGEST}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointDamaged(f"checkpoint {checkpoint}: its {DIGEST} is not valid") from None
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def stored_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]] | None:
    """The stored arrays' shapes as the digest records them (None: no digest, or one written
    before it recorded shapes)."""
    try:
        shapes = json.loads((Path(checkpoint) / DIGEST).read_text()).get("shapes")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(shapes, dict):
        return None
    try:
        return {str(k): tuple(int(n) for n in v) for k, v in shapes.items()}
    except (ValueError, TypeError):  # an edited digest: orbax's own metadata decides
        return None


def verify(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files (None: they are those its digest lists, or it has
    no digest: a save interrupted after orbax completed it but before its digest was written,
    judged by reading it)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "it is missing"
    digest_path = checkpoint / DIGEST
    if not digest_path.exists():
        return None if any(checkpoint.iterdir()) else "its folder is empty"
    try:
        files = {
            str(name): (int(size), str(sha256))
            for name, (size, sha256) in json.loads(digest_path.read_text())["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {DIGEST} is not valid"
    if any(Path(name).is_absolute() or ".." in Path(name).parts for name in files):
        return f"its {DIGEST} names files outside it"
    for name, (size, sha256) in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _sha256(path) != sha256:
            return f"{name} changed since it was written"
    return None


def sync_processes(name: str) -> None:
    """Wait until every process of a multi-process run reaches the point called ``name``
    (nothing in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _abstract_leaf(leaf, ref):
    """What orbax restores ``leaf`` of a template as: where the template's array (or, for stored
    key data, its key) lives, said explicitly, since without a sharding orbax reads the
    checkpoint's metadata again to find one (most of a small checkpoint's restore time); an
    abstract template (``jax.eval_shape``) on this process's first device, where a train state
    is made; host values (NumPy arrays, Python numbers) as orbax would restore them."""
    source = ref if isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)) else leaf
    if isinstance(source, jax.ShapeDtypeStruct):
        sharding = source.sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)
    if isinstance(source, jax.Array):
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=source.sharding)
    return ocp.utils.to_shape_dtype_struct(leaf)


def _is_key(x) -> bool:
    """Whether ``x`` is a typed PRNG key (an array, or its shape and dtype: ``jax.eval_shape``)."""
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.eval_shape(jax.random.key_data, x)
    return np.asarray(jax.random.key_data(x))


def _key_impl(ref):
    """The PRNG implementation of key ``ref``; an abstract key's is the default one (the only
    one train states are made with), which it must be."""
    if isinstance(ref, jax.Array):
        return jax.random.key_impl(ref)
    default = jax.random.key(0)
    if default.dtype != ref.dtype:
        raise ValueError(f"an abstract template's key is {ref.dtype}, not the default {default.dtype}")
    return jax.random.key_impl(default)


def _keys_to_data(tree):
    """``tree`` with every typed PRNG key replaced by its key data, on the host (numpy uint32)."""
    return jax.tree_util.tree_map(lambda x: _key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, like):
    """Undo ``_keys_to_data``: where ``like`` holds a typed key, wrap the key data of ``tree``."""
    return jax.tree_util.tree_map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=_key_impl(ref)) if _is_key(ref) else x, tree, like
    )
