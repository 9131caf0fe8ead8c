"""Configurations as records: their JSON form (a run's config.json, an evolution's evolve.json),
read back, and compared.

A record may have been written elsewhere or edited, so reading one back checks every value's
type and bounds every number before any configuration is built, hence before anything is
allocated (a width of 1e9 or an input of a million pixels is refused in one line, not an abort or
a machine out of memory). The bounds (``BOUNDS``) are far above every preset and real use;
docs/faults.md lists them.

    >>> saved = versions.stamped(config_to_json(config))                # as config.json holds it
    >>> config = run_config_from_json(saved, "runs/a/config.json")      # read back, checked
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from faml_jax.config import RunConfig
from faml_jax.errors import ConfigError
from faml_jax.versions import checked

# Per configuration type and field, the range of a number (for a tuple: of each of its numbers).
# Types and fields not named are only type-checked (their own checks bound them: probabilities,
# learning rates, ...).
BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "ModelConfig": {
        "num_classes": (2, 1000),
        "widths": (1, 4096),
        "stage_depths": (1, 64),
        "input_size": (2, 1024),
        "attn_patch_sizes": (1, 64),
        "attn_dim": (1, 4096),
        "attn_depth": (0, 64),
        "attn_heads": (1, 64),
        "attn_mlp_ratio": (0, 64),
        "classifier_width": (1, 16384),
        "growth_rate": (1, 512),
        "bn_size": (1, 64),
        "fa_init": (-1000, 1000),
        "fa_init_pretrained": (-1000, 1000),
    },
    "RunConfig": {
        "epochs": (1, 100_000),
        "batch_size": (1, 65_536),
        "eval_batch_size": (1, 65_536),
        "keep_checkpoints": (1, 10_000),
        "seed": (-(2**63), 2**63 - 1),
    },
    "OptimConfig": {"b1": (0, 1), "b2": (0, 1), "eps": (0, 1)},
    "ScheduleConfig": {"lr1_epochs": (1, 100_000), "lr2_step_epochs": (1, 100_000), "window": (2, 10_000)},
    "DataConfig": {"num_threads": (1, 1024)},
    "SyntheticConfig": {
        "train_size": (1, 1_000_000),
        "test_size": (1, 1_000_000),
        "image_size": (1, 1024),
        "seed": (-(2**63), 2**63 - 1),
    },
    "FGAConfig": {
        "population": (2, 1000),
        "generations": (0, 10_000),
        "children": (0, 1000),
        "new_members": (0, 1000),
        "parents": (2, 1000),
        "recompute_bn": (0, 100_000),
    },
}
# The most numbers (or regions) a tuple field holds: stages, attention blocks, facial regions.
MAX_TUPLE = 16
# The synthetic set is generated on disk: its images in all at most this many bytes.
MAX_SYNTHETIC_BYTES = 64 * 2**30


def bound(cls_name: str, field: str) -> tuple[float, float] | None:
    """The range ``BOUNDS`` gives a number of ``cls_name``'s ``field`` (None: not bounded here)."""
    return BOUNDS.get(cls_name, {}).get(field)


def from_dict(cls, values: dict, where: str = "the configuration", prefix: str = ""):
    """Rebuild a (nested) config dataclass from its ``dataclasses.asdict`` / JSON form, e.g. a
    run's saved ``config.json``: ``from_dict(RunConfig, json.load(f), path)``. Lists become
    tuples; missing fields take their defaults. A value of the wrong type, a number outside
    ``BOUNDS`` or an unknown field is a ``ConfigError`` naming ``where`` and the dotted field."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the record'} is not an object ({_shown(values)})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: {prefix or ''}{cls.__name__} has no field(s) {unknown}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _from_json(hints[name], value, where, f"{prefix}{name}", bound(cls.__name__, name))
    if cls.__name__ == "SyntheticConfig":
        _check_synthetic_size(kwargs, where, prefix)
    return cls(**kwargs)


def _check_synthetic_size(values: dict, where: str, prefix: str) -> None:
    images = values.get("train_size", 10_000) + values.get("test_size", 1000)
    side = values.get("image_size", 64)
    if images * side * side * 3 > MAX_SYNTHETIC_BYTES:
        raise ConfigError(
            f"{where}: {prefix}train_size + test_size of {side}x{side} images would be "
            f"{images * side * side * 3 / 2**30:.0f} GiB; this faml_jax generates at most {MAX_SYNTHETIC_BYTES // 2**30} GiB"
        )


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_json(tp, value, where: str, name: str, limits: tuple[float, float] | None):
    """``value`` as type ``tp`` (the field ``name``), checked; ``limits`` bound its numbers."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, name + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _from_json(next(a for a in args if a is not type(None)), value, where, name, limits)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {name} is not a list ({_shown(value)})")
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if fixed and len(value) != len(args):
            raise ConfigError(f"{where}: {name} holds {len(value)} values, not {len(args)}")
        if len(value) > MAX_TUPLE:
            raise ConfigError(f"{where}: {name} holds {len(value)} values; this faml_jax reads at most {MAX_TUPLE}")
        element_types = args if fixed else [args[0]] * len(value)
        return tuple(
            _from_json(t, v, where, f"{name}[{i}]", limits) for i, (t, v) in enumerate(zip(element_types, value))
        )
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {name} is {_shown(value)}, not one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} is {_shown(value)}, not true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} is {_shown(value)}, not a string")
        return value
    if tp in (int, float):
        integer = isinstance(value, int) and not isinstance(value, bool)
        if tp is int and not integer:
            raise ConfigError(f"{where}: {name} is {_shown(value)}, not an integer")
        if not integer and not (isinstance(value, float) and math.isfinite(value)):
            raise ConfigError(f"{where}: {name} is {_shown(value)}, not a finite number")
        if limits is not None and not limits[0] <= value <= limits[1]:
            low, high = (f"{x:,}" if float(x).is_integer() else str(x) for x in limits)
            raise ConfigError(f"{where}: {name} is {_shown(value)}; this faml_jax reads {low} to {high}")
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Configurations saved and compared


def config_to_json(config) -> dict:
    """A config as JSON-ready nested dicts (tuples become lists), as saved in config.json."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_differences(
    saved: dict,
    current: dict,
    prefix: str = "",
    may_differ=("epochs",),
    labels: tuple[str, str] = ("in config.json", "now"),
) -> list[str]:
    """Dotted names of the fields that differ between two configuration dicts (``may_differ``
    excepted), each with both values: ``name (saved labels[0], current labels[1])``."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".", may_differ, labels)
        elif a != b and name not in may_differ:
            diffs.append(f"{name} ({a!r} {labels[0]}, {b!r} {labels[1]})")
    return diffs


# What networks must share to be fused or stacked together: their variables are restored into one
# structure (model and optimiser) and evaluated on one data set.
SAME_NETWORK = ("model_name", "model", "optim", "data.dataset", "data.synthetic", "data.crop_faces")


def structural_differences(
    saved: dict,
    current: dict,
    labels: tuple[str, str] = ("in config.json", "now"),
    fields: tuple[str, ...] = SAME_NETWORK,
) -> list[str]:
    """``config_differences`` restricted to ``fields`` and the fields nested under them."""
    return [
        d
        for d in config_differences(saved, current, may_differ=(), labels=labels)
        if any(d.startswith(f + ".") or d.startswith(f + " ") for f in fields)
    ]


def run_config_from_json(saved: dict, where: str = "config.json") -> RunConfig:
    """The ``RunConfig`` of a saved ``config.json`` (``where`` names it in errors): a file of
    another format version is a ``WorkdirError`` (``versions.checked``); one that is not a run
    configuration, or holds a value of the wrong type or out of bounds (``records.BOUNDS``), a
    one-line ``ConfigError`` naming ``where`` (and the field), before anything is built from it."""
    values = checked(saved, where)
    try:
        return from_dict(RunConfig, values, where)
    except ConfigError as error:  # a configuration's own check (its message does not name the file)
        if str(error).startswith(f"{where}: "):
            raise
        raise ConfigError(f"{where}: {error}") from None
    except TypeError as error:  # a required field missing
        raise ConfigError(f"{where} is not a run configuration: {error}") from None
