"""The paper's settings as data and one function (docs/method.md 2-3): the named networks
(``MODEL_PRESETS``, which ``models.PRESETS`` is), the losses and augmentations, the settings per
data set (``RUN_PRESETS``) and ``preset()``, which builds the whole configuration of a run from
them, as the programs do.

    >>> from faml_jax.presets import preset
    >>> config = preset("rafdb", init="backbones/msceleb", data={"data_dir": "~/RAF-DB"})
"""

from __future__ import annotations

import dataclasses

from faml_jax.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    without_unused_attention,
)
from faml_jax.data.synthetic import SyntheticConfig
from faml_jax.errors import ConfigError
from faml_jax.region import DEFAULT_REGIONS

# Named architectures: each is a set of ModelConfig fields (``models.build`` applies a user's
# overrides on top; ``models.PRESETS`` is this table).
# torchvision's vgg16 (docs/method.md 7); vgg16_bn adds BatchNorm after every convolution.
VGG16 = dict(
    architecture="vgg", fa_regions=(), attention=False, widths=(64, 128, 256, 512, 512), stage_depths=(2, 2, 3, 3, 3)
)
MODEL_PRESETS: dict[str, dict] = {
    # Plain ResNet18 (the paper's R18 / RI18 baselines).
    "r18": dict(fa_regions=(), attention=False),
    # R18+FA (the paper's ablation row, docs/method.md 2): FA = the fusion stem *and* the attention blocks.
    "r18_fa": dict(fa_regions=DEFAULT_REGIONS, attention=True),
    # R18+FAML: the same network as R18+FA; ML is its training loss (``preset``
    # trains r18 and r18_fa with plain CE, r18_faml with the data set's ML loss).
    "r18_faml": dict(fa_regions=DEFAULT_REGIONS, attention=True),
    # Table 6's other basic networks (docs/method.md 7), as torchvision defines them.
    "resnet34": dict(fa_regions=(), attention=False, stage_depths=(3, 4, 6, 3)),
    "vgg16": VGG16,
    "vgg16_bn": {**VGG16, "batch_norm": True},
    "densenet121": dict(
        architecture="densenet", fa_regions=(), attention=False, widths=(64,), stage_depths=(6, 12, 24, 16)
    ),
}


def with_preset(config: ModelConfig, name: str, *, attention: bool | None = None) -> ModelConfig:
    """``config`` made into the named architecture: the preset's fields set, every other field
    kept; ``attention=False`` switches the attention blocks off (the paper's remark that FA
    reaches the same accuracy without them; docs/method.md 2.2). Without attention, the attention sizes
    go back to their defaults (they would be unused, and a saved configuration should not show
    them)."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODEL_PRESETS))}")
    config = dataclasses.replace(config, **MODEL_PRESETS[name])
    if attention is not None:
        config = dataclasses.replace(config, attention=attention)
    return without_unused_attention(config)


# docs/method.md 2.3 presets: RAF-DB p = 0.8 with CE; AffectNet p = 0.2 with WCE.
LOSS_PRESETS = {
    "rafdb": LossConfig(kind="ml", p_lsr=0.8, weighted=False),
    "affectnet7": LossConfig(kind="ml", p_lsr=0.2, weighted=True),
    "affectnet8": LossConfig(kind="ml", p_lsr=0.2, weighted=True),
}


# The augmentations of the code bases people compare with (docs/method.md 1), for ``--augment``:
# DAN (RAF-DB): RandomApply([RandomRotation(20), RandomCrop(224, padding=32)], p=0.2), then
# RandomErasing(scale=(0.02, 0.25)); POSTER++: RandomErasing(scale=(0.02, 0.1)). Both keep the flip.
# RandomErasing's other arguments are torchvision's defaults (p 0.5, ratio 0.3-3.3).
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "paper": AugmentConfig(),
    "dan": AugmentConfig(
        rotate_p=0.2, rotate_degrees=20.0, crop_padding=32 / 224, erasing_p=0.5, erasing_scale=(0.02, 0.25)
    ),
    "posterpp": AugmentConfig(erasing_p=0.5, erasing_scale=(0.02, 0.1)),
}


# Per data set: the paper's settings (docs/method.md 2.3-2.4) for the real data sets, and a CPU-sized
# demo for the synthetic one. Values are RunConfig fields; "model" and "schedule" hold overrides
# of ModelConfig and ScheduleConfig fields.
RUN_PRESETS: dict[str, dict] = {
    "synthetic": dict(
        model_name="r18_faml",
        # Per architecture: CPU-sized versions (the real data sets' networks are torchvision's).
        model=dict(
            resnet=dict(widths=(16, 32, 64, 128), input_size=64, attn_dim=32, attn_heads=2, attn_depth=1),
            vgg=dict(widths=(16, 32, 64, 128, 128), classifier_width=256, input_size=64),
            densenet=dict(widths=(16,), growth_rate=8, stage_depths=(2, 2, 2, 2), input_size=64),
        ),
        loss=LossConfig(kind="ml", p_lsr=0.8, weighted=False),
        schedule=dict(lr1=1e-3),
        batch_size=64,
        epochs=8,
    ),
    "rafdb": dict(model_name="r18_faml", model={}, loss=LOSS_PRESETS["rafdb"], schedule={}, batch_size=128, epochs=40),
    "affectnet7": dict(
        model_name="r18_faml", model={}, loss=LOSS_PRESETS["affectnet7"], schedule={}, batch_size=256, epochs=20
    ),
    "affectnet8": dict(
        model_name="r18_faml", model={}, loss=LOSS_PRESETS["affectnet8"], schedule={}, batch_size=256, epochs=20
    ),
}


# The paper's setting on the real data sets starts every network from a pre-trained ResNet18
# (docs/method.md 2); the synthetic demo trains from scratch.
PRETRAINED_DATASETS = ("rafdb", "affectnet7", "affectnet8")
# Models of the paper's ablation rows trained with plain CE (docs/method.md 2 [choice], every data set).
CE_MODELS = ("r18", "r18_fa", "resnet34", "vgg16", "vgg16_bn", "densenet121")  # every model but R18+FAML


def model_loss(dataset: str, model_name: str) -> LossConfig:
    """The training loss of ``model_name`` on ``dataset`` (docs/method.md 2): R18 and R18+FA plain CE on
    every data set; R18+FAML the data set's ML loss (``LOSS_PRESETS``)."""
    if model_name in CE_MODELS:
        return LossConfig(kind="ce")
    return RUN_PRESETS[dataset]["loss"]


class PretrainedStartMissing(ConfigError):
    """A run on a real data set that would start from random weights without ``from_scratch``
    (docs/method.md 2: every model of the paper starts from a pre-trained backbone; from scratch a
    RAF-DB run lands tens of points below the paper). Its message names ``preset``'s arguments;
    a program names its own flags for them with ``worded``."""

    def __init__(self, dataset: str, model_name: str):
        self.dataset, self.model_name = dataset, model_name
        super().__init__(self.worded(init="init=BACKBONE", from_scratch="from_scratch=True"))

    def __reduce__(self):
        return type(self), (self.dataset, self.model_name)

    def worded(self, init: str, from_scratch: str) -> str:
        """The refusal in one line, with ``init`` and ``from_scratch`` as the caller names them."""
        if self.model_name not in ("r18", "r18_fa", "r18_faml"):
            return (
                f"{self.dataset} runs start from pre-trained weights (the paper's setting): give {init}, "
                f"torchvision's ImageNet {self.model_name} weights converted by `python -m tools.convert_torch "
                f"--arch {self.model_name}`, or pass {from_scratch} to train from random weights knowingly"
            )
        return (
            f"{self.dataset} runs start from a pre-trained ResNet18 (the paper's setting; from random weights they "
            f"land far below it): give {init}, converted by `python -m tools.convert_torch_resnet18` from the "
            "MS-Celeb-1M ResNet18 distributed with the DAN code base (resnet18_msceleb.pth) or from torchvision's "
            f"ImageNet resnet18 weights (the paper's RI18 baseline), or pass {from_scratch} to train from random "
            "weights knowingly"
        )


def check_pretrained_start(config: RunConfig, from_scratch: bool = False) -> None:
    """Refuse a run on a real data set that would start from random weights unless
    ``from_scratch`` says that is meant: ``PretrainedStartMissing``, whose message names the way
    to a backbone."""
    dataset = config.data.dataset
    if dataset in PRETRAINED_DATASETS and config.init is None and not from_scratch:
        raise PretrainedStartMissing(dataset, config.model_name)


def preset(
    dataset: str = "synthetic",
    model: str | None = None,
    *,
    model_options: dict | None = None,
    from_scratch: bool = False,
    backend: str | None = None,
    **overrides,
) -> RunConfig:
    """The full configuration of a run on ``dataset`` (``RUN_PRESETS``), as the programs build it.

        >>> config = preset("synthetic", epochs=2)                            # the CPU demo
        >>> config = preset("rafdb", init="backbones/msceleb", data={"data_dir": "~/RAF-DB"})
        >>> config = preset("affectnet8", "r18", from_scratch=True)           # R18 row, plain CE
        >>> config = preset("synthetic", model_options={"widths": (8, 16, 16, 32), "input_size": 32})

    It owns everything a preset decides: the number of classes, the model (``model``: a
    ``faml_jax.models.PRESETS`` name; default the data set's, R18+FAML), its loss (R18 and R18+FA
    plain CE, R18+FAML the data set's ML loss; docs/method.md 2), batch size, epochs, schedule, the
    optimiser's learning rate (Lr1; SGD: the paper's 0.005), the compute dtype of ``backend``
    (default ``jax.default_backend()``: bfloat16 on accelerators, float32 on the CPU) and the
    pre-trained start: on the real data sets a config without ``init`` raises
    ``PretrainedStartMissing`` (a ``ConfigError``) unless ``from_scratch``.

    ``model_options``: ``ModelConfig`` fields to change (as ``models.build`` takes them;
    ``attention=False`` keeps FA's stem without its blocks). ``overrides``: any other ``RunConfig``
    field; for the nested configs (``loss``, ``optim``, ``schedule``, ``data``, ``augment``) either
    a config object or a dict of the fields to change (``data`` may hold ``synthetic`` as a dict).
    ``optim={"name": "sgd"}`` takes SGD's learning rate (``schedule.lr1`` 0.005) unless ``schedule`` sets ``lr1``.
    """
    model_name = _checked_names(dataset, model, overrides)
    base = RUN_PRESETS[dataset]
    if backend is None:
        import jax

        backend = jax.default_backend()
    model_config = preset_model(dataset, model_name, model_options, backend)

    def nested(name: str, default, **extra):
        """The nested config ``name``: given as a config object, or ``default`` with ``extra`` and
        the given dict's fields set."""
        given = overrides.pop(name, None)
        if given is not None and not isinstance(given, dict):
            return given
        return dataclasses.replace(default, **{**extra, **(given or {})})

    loss = nested("loss", model_loss(dataset, model_name))
    optim_given = overrides.get("optim")
    optim_name = optim_given.get("name", "adam") if isinstance(optim_given, dict) else "adam"
    sgd = {"lr1": 0.005} if optim_name == "sgd" else {}  # the paper's SGD learning rate
    schedule = nested("schedule", ScheduleConfig(), **{**base["schedule"], **sgd})
    # Weight decay as PyTorch's optimiser of that name applies it, unless given: SGD coupled only.
    optim = nested("optim", OptimConfig(), weight_decay_mode="coupled" if optim_name == "sgd" else "decoupled")
    if isinstance(overrides.get("data"), dict) and isinstance(overrides["data"].get("synthetic"), dict):
        overrides["data"] = {**overrides["data"], "synthetic": SyntheticConfig(**overrides["data"]["synthetic"])}
    data_config = nested("data", DataConfig(dataset=dataset))
    augment = nested("augment", AugmentConfig())
    config = RunConfig(
        **{
            "model_name": model_name,
            "model": model_config,
            "loss": loss,
            "optim": optim,
            "schedule": schedule,
            "data": data_config,
            "augment": augment,
            "epochs": base["epochs"],
            "batch_size": base["batch_size"],
            **overrides,
        }
    )
    check_pretrained_start(config, from_scratch)
    return config


def _checked_names(dataset: str, model: str | None, overrides: dict) -> str:
    """The model's name of ``preset`` (``model`` or the data set's); refused: an unknown data set,
    model or ``RunConfig`` field, or the model given as an override."""
    if dataset not in RUN_PRESETS:
        raise ConfigError(f"unknown data set {dataset!r}; available: {', '.join(RUN_PRESETS)}")
    model_name = model or RUN_PRESETS[dataset]["model_name"]
    if model_name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(sorted(MODEL_PRESETS))}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RunConfig)} - {"model_name", "model"})
    if unknown:
        raise ConfigError(f"RunConfig has no field(s) {unknown}")
    if "model" in overrides or "model_name" in overrides:
        raise ConfigError("give the model's name as preset(dataset, model) and its fields as model_options")
    return model_name


def preset_model(dataset: str, model_name: str, model_options: dict | None, backend: str) -> ModelConfig:
    """The network of ``preset``: the named architecture (``MODEL_PRESETS``) at the data set's
    size (its classes; the synthetic set's CPU-sized widths) in ``backend``'s compute dtype, with
    ``model_options`` on top (``attention=False``: FA's stem without its blocks)."""
    architecture = MODEL_PRESETS[model_name].get("architecture", "resnet")
    given_model = dict(model_options or {})
    attention = given_model.pop("attention", None)
    fields = {
        "dtype": default_compute_dtype(backend),
        **MODEL_PRESETS[model_name],
        **RUN_PRESETS[dataset]["model"].get(architecture, {}),
        **given_model,
        **({} if attention is None else {"attention": attention}),
    }
    return without_unused_attention(ModelConfig(num_classes=8 if dataset == "affectnet8" else 7, **fields))


def default_compute_dtype(backend: str) -> str:
    """The runs' compute dtype on ``backend`` (``jax.default_backend()``): mixed precision on
    accelerators (bfloat16 compute, float32 parameters and BatchNorm statistics; tensor cores run
    bfloat16), float32 on the CPU."""
    return "float32" if backend == "cpu" else "bfloat16"
