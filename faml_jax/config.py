"""Frozen configuration types, one per concern (model, loss, optimiser).

Each config is a frozen dataclass so that it can be hashed, passed as a static argument to
compiled functions and saved beside a run's outputs (``dataclasses.asdict``). Presets per data
set live beside the type they configure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal

from faml_jax.data.synthetic import SyntheticConfig
from faml_jax.errors import ConfigError
from faml_jax.records import from_dict
from faml_jax.versions import checked


@dataclasses.dataclass(frozen=True)
class Region:
    """A facial region as fractions of the (aligned) face box, for the FA stem (docs/method.md 2.1).

    ``top``/``left`` are the region's upper-left corner and ``height``/``width`` its size, all
    in [0, 1] relative to the input image. The pixel rectangle is rounded to even coordinates so
    that it maps exactly onto the stride-2 feature map of the first convolution.
    """

    name: str
    top: float
    left: float
    height: float
    width: float

    def __post_init__(self):
        for field in ("top", "left", "height", "width"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"Region {self.name!r}: {field}={value} is not in [0, 1]")
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"Region {self.name!r} is empty (height={self.height}, width={self.width})")
        if self.top + self.height > 1.0 + 1e-9 or self.left + self.width > 1.0 + 1e-9:
            raise ConfigError(f"Region {self.name!r} extends past the face box")

    def pixels(self, size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in pixels of a ``size`` x ``size`` image, all even."""

        def even(fraction: float) -> int:
            return min(size, 2 * round(fraction * size / 2))

        top, left = even(self.top), even(self.left)
        bottom, right = even(self.top + self.height), even(self.left + self.width)
        if bottom <= top or right <= left:
            raise ConfigError(f"Region {self.name!r} is empty at input size {size}")
        return top, left, bottom, right


# [choice] docs/method.md 2.1: default regions from the proportions of an aligned face (RAF-DB's aligned
# crops: brows at about 30% of the height, eyes at about 40%, nose tip at 60%, mouth at 75-80%).
UPPER_FACE = Region("upper_face", top=0.15, left=0.05, height=0.40, width=0.90)
LOWER_FACE = Region("lower_face", top=0.50, left=0.20, height=0.45, width=0.60)
DEFAULT_REGIONS = (UPPER_FACE, LOWER_FACE)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A network: ResNet18 with the optional FA stem and attention blocks (docs/method.md 2.1-2.2),
    or another of Table 6's architectures (docs/method.md 7).

    Attributes:
      architecture: "resnet" (R18, R18+FA, R18+FAML, ResNet34), "vgg" (VGG16, VGG16-BN) or
        "densenet" (DenseNet-121), as torchvision defines them.
      num_classes: number of expression classes C (logits per image).
      widths: channels of the stages. ResNet: the four residual stages (ResNet18: 64, 128, 256,
        512; the stem has ``widths[0]`` channels); VGG: the five convolution stages (64, 128, 256,
        512, 512); DenseNet: one number, the first convolution's channels (64).
      stage_depths: ResNet: BasicBlocks per stage (ResNet18: 2, 2, 2, 2; ResNet34: 3, 4, 6, 3);
        VGG: convolutions per stage (VGG16: 2, 2, 3, 3, 3); DenseNet: layers per dense block
        (DenseNet-121: 6, 12, 24, 16).
      batch_norm: VGG with BatchNorm after every convolution (torchvision's ``vgg16_bn``).
      classifier_width, dropout: VGG's two hidden dense layers (4096) and their dropout (0.5, in
        training only).
      growth_rate, bn_size: DenseNet's growth rate (32) and bottleneck factor (4).
      input_size: side of the square input image in pixels (even); used to initialise.
      fa_regions: facial regions of the auxiliary stem convolutions; empty = plain ResNet stem.
      fa_init: initial value of the learnable fusion weights w1, w2 from random initialisation
        ([choice] 0.5, docs/method.md 2.1).
      fa_init_pretrained: their initial value when the network starts from a pre-trained backbone
        (``RunConfig.init``): [choice] 0, so that the stem starts as the backbone's conv1 and
        R18+FAML as the pre-trained network (docs/method.md 2.1).
      attention: insert an attention block after each of stages 1-3 (docs/method.md 2.2).
      attn_patch_sizes: patch side per attention block ([choice]: about 14x14 tokens at 224 px).
      attn_dim, attn_depth, attn_heads, attn_mlp_ratio: width, number of pre-norm encoder layers,
        heads and MLP expansion of each attention block's small ViT.
      dtype: compute dtype of training ("float32" or "bfloat16": mixed precision); parameters,
        BatchNorm statistics, the head (last dense layer), the logits and the losses stay float32,
        and evaluation is always float32 (``evaluation_model``; docs/method.md 2.4 [choice]).
      matmul_precision: the precision of float32 matrix products and convolutions: "highest"
        (default: full float32, as the paper trained), "high" or "default" (an accelerator's
        faster modes, e.g. TF32 on NVIDIA GPUs; the same on a CPU). Applies where the compute
        dtype is float32; evaluation always uses "highest".
      head_init: initialisation of the dense head: "flax" (LeCun normal weights, zero bias: Flax's
        ``nn.Dense`` default) or "torch" (PyTorch's ``nn.Linear`` default: weights and bias uniform
        in +-1/sqrt(fan_in)), to match a PyTorch baseline's fresh head.
    """

    num_classes: int = 7
    architecture: Literal["resnet", "vgg", "densenet"] = "resnet"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stage_depths: tuple[int, ...] = (2, 2, 2, 2)
    input_size: int = 224
    fa_regions: tuple[Region, ...] = ()
    fa_init: float = 0.5
    fa_init_pretrained: float = 0.0
    attention: bool = False
    attn_patch_sizes: tuple[int, ...] = (4, 2, 1)
    attn_dim: int = 128
    attn_depth: int = 2
    attn_heads: int = 4
    attn_mlp_ratio: float = 2.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    matmul_precision: Literal["highest", "high", "default"] = "highest"
    head_init: Literal["flax", "torch"] = "flax"
    batch_norm: bool = False
    classifier_width: int = 4096
    dropout: float = 0.5
    growth_rate: int = 32
    bn_size: int = 4

    def __post_init__(self):
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.architecture != "resnet" and (self.fa_regions or self.attention):
            raise ConfigError(f"the FA stem and the attention blocks are ResNet's; {self.architecture} has neither")
        if self.architecture == "densenet":
            if len(self.widths) != 1:
                raise ConfigError(f"densenet takes one width (its first convolution's channels), got {self.widths}")
        elif len(self.widths) != len(self.stage_depths):
            raise ConfigError(
                f"{self.architecture} takes {len(self.stage_depths)} widths, one per stage "
                f"(stage_depths {self.stage_depths}), got {self.widths}"
            )
        if not all(w >= 1 for w in self.widths) or not all(d >= 1 for d in self.stage_depths):
            raise ConfigError(f"widths and stage_depths must be >= 1, got {self.widths} and {self.stage_depths}")
        if self.input_size <= 0 or self.input_size % 2:
            raise ConfigError(f"input_size must be a positive even number, got {self.input_size}")
        smallest = self.smallest_input()
        if self.input_size < smallest:
            raise ConfigError(
                f"input_size {self.input_size} is too small for {self.architecture}'s poolings: at least {smallest}"
            )
        if self.attention:
            n_blocks = len(self.widths) - 1
            if len(self.attn_patch_sizes) != n_blocks:
                raise ConfigError(
                    f"attn_patch_sizes needs one patch size per attention block ({n_blocks}), "
                    f"got {self.attn_patch_sizes}"
                )
            if self.attn_dim % self.attn_heads:
                raise ConfigError(f"attn_dim {self.attn_dim} is not divisible by attn_heads {self.attn_heads}")
            side = math.ceil(math.ceil(self.input_size / 2) / 2)  # after the stem's stride-2 conv and max pooling
            for stage, patch in enumerate(self.attn_patch_sizes, 1):
                if side % patch:
                    raise ConfigError(
                        f"input_size {self.input_size} gives a {side}x{side} feature map after stage {stage}, "
                        f"which attention patches of {patch} do not tile: choose an input size divisible by "
                        f"{4 * 2 ** (stage - 1) * patch} (or other attn_patch_sizes)"
                    )
                side = math.ceil(side / 2)
        for region in self.fa_regions:
            region.pixels(self.input_size)  # raises for a region that is empty at this size
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.head_init not in ("flax", "torch"):
            raise ConfigError(f"head_init must be 'flax' or 'torch', got {self.head_init!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(
                f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {self.matmul_precision!r}"
            )

    def smallest_input(self) -> int:
        """The smallest input side whose last feature map is not empty: VGG halves it after each
        stage; DenseNet by its stem (4x) and its transitions; ResNet's strided convolutions round
        up (any even side works)."""
        if self.architecture == "vgg":
            return 2 ** len(self.stage_depths)
        if self.architecture == "densenet":
            return 4 * 2 ** (len(self.stage_depths) - 1)
        return 2


MATMUL_PRECISIONS = ("highest", "high", "default")
ARCHITECTURES = ("resnet", "vgg", "densenet")
EVAL_DTYPE = "float32"  # every evaluation, whatever the training dtype (docs/method.md 2.4 [choice])


def evaluation_model(model: ModelConfig) -> ModelConfig:
    """The model configuration every evaluation uses (test accuracy, ensembles, prediction, maps,
    export): ``model`` in float32 with full-precision products, whatever it was trained in, so
    that T2V, NOI and the rank table read logits whose top-2 order bfloat16 rounding has not
    changed (docs/method.md 2.4 [choice]). The weights are the same (always stored in float32)."""
    # Fields that do not change the forward pass (how a network was initialised, dropout) are set
    # to their defaults, so that networks of one architecture are evaluated together.
    defaults = ModelConfig()
    return dataclasses.replace(
        model,
        dtype=EVAL_DTYPE,
        matmul_precision="highest",
        fa_init=defaults.fa_init,
        fa_init_pretrained=defaults.fa_init_pretrained,
        head_init=defaults.head_init,
        dropout=defaults.dropout,
    )


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
    # R18+FAML: the same network as R18+FA; ML is its training loss (faml_jax.config.preset
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


def without_unused_attention(config: ModelConfig) -> ModelConfig:
    """``config`` with the attention sizes at their defaults when it has no attention blocks."""
    if config.attention:
        return config
    defaults = ModelConfig()
    return dataclasses.replace(
        config,
        **{f.name: getattr(defaults, f.name) for f in dataclasses.fields(ModelConfig) if f.name.startswith("attn_")},
    )


LossKind = Literal["ml", "ce", "lsr", "wce", "mix"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Training loss (docs/method.md 2.3).

    Attributes:
      kind: "ml" draws LSR with probability ``p_lsr`` else CE/WCE, once per batch; "mix" is the
        ablation ``p_lsr * LSR + (1 - p_lsr) * CE/WCE`` (one search path); "ce", "lsr", "wce"
        use that loss for every batch.
      p_lsr: probability of LSR in "ml", weight of LSR in "mix" (RAF-DB 0.8, AffectNet 0.2).
      eps: label-smoothing epsilon of LSR (Eq. 4-5).
      weighted: in "ml" and "mix", the non-LSR path is WCE (class weights) instead of CE.
    """

    kind: LossKind = "ml"
    p_lsr: float = 0.8
    eps: float = 0.1
    weighted: bool = False

    def __post_init__(self):
        if self.kind not in ("ml", "ce", "lsr", "wce", "mix"):
            raise ConfigError(f"unknown loss kind {self.kind!r}; expected ml, ce, lsr, wce or mix")
        if not 0.0 <= self.p_lsr <= 1.0:
            raise ConfigError(f"p_lsr must be in [0, 1], got {self.p_lsr}")
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")

    @property
    def needs_class_weights(self) -> bool:
        return self.kind == "wce" or (self.kind in ("ml", "mix") and self.weighted)


# docs/method.md 2.3 presets: RAF-DB p = 0.8 with CE; AffectNet p = 0.2 with WCE.
LOSS_PRESETS = {
    "rafdb": LossConfig(kind="ml", p_lsr=0.8, weighted=False),
    "affectnet7": LossConfig(kind="ml", p_lsr=0.2, weighted=True),
    "affectnet8": LossConfig(kind="ml", p_lsr=0.2, weighted=True),
}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser (docs/method.md 2.4). Its learning rate is not here: the schedule (``ScheduleConfig``,
    Lr1 and Lr2) owns it and the train step takes the current value as an argument, so schedules
    and the Lr1 -> Lr2 switch need no recompilation.

    Attributes:
      name: "adam" (the paper's choice) or "sgd" (momentum; the paper's alternative, lr 0.005).
      b1, b2, eps: Adam moments and epsilon (optax/PyTorch defaults).
      momentum, nesterov: SGD only.
      weight_decay: weight decay (0 = none, as in the paper).
      weight_decay_mode: "decoupled" (AdamW: ``param -= lr * wd * param`` beside Adam's update;
        ``torch.optim.AdamW``) or "coupled" (an L2 term ``wd * param`` added to the gradient before
        the optimiser: what ``torch.optim.Adam(weight_decay=...)`` and ``torch.optim.SGD`` do).
        SGD takes it coupled only, as PyTorch's SGD does.
    """

    name: Literal["adam", "sgd"] = "adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    weight_decay_mode: Literal["decoupled", "coupled"] = "decoupled"

    def __post_init__(self):
        if self.name not in ("adam", "sgd"):
            raise ConfigError(f"unknown optimiser {self.name!r}; expected 'adam' or 'sgd'")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay_mode not in ("decoupled", "coupled"):
            raise ConfigError(f"weight_decay_mode must be 'decoupled' or 'coupled', got {self.weight_decay_mode!r}")
        if self.name == "sgd" and self.weight_decay and self.weight_decay_mode != "coupled":
            raise ConfigError(
                "SGD's weight decay is coupled (an L2 term in the gradient, as torch.optim.SGD's): "
                "give weight_decay_mode='coupled'"
            )


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Attributes:
    lr1: initial learning rate of the first regime (Lr1).
    lr1_min: floor of its cosine annealing; None (default, [choice] docs/method.md 2.4): Lr2, so the
      cosine ends where Lr2 starts and the switch never raises the learning rate.
    lr1_epochs: length of the cosine period in epochs (None: the run's epochs).
    lr2: learning rate after the switch (Lr2).
    lr2_step_epochs, lr2_gamma: [choice] step decay of Lr2: times gamma every step_epochs epochs.
    window: K, the number of most recent epochs the detector looks at.
    loss_range, acc_range: the detector fires when max - min of the training loss (accuracy,
      as a fraction) over the window is below these.
    switch: allow the Lr1 -> Lr2 switch (False: Lr1 for the whole run).
    """

    lr1: float = 3e-4
    lr1_min: float | None = None
    lr1_epochs: int | None = None
    lr2: float = 1e-5
    lr2_step_epochs: int = 10
    lr2_gamma: float = 0.5
    window: int = 5
    loss_range: float = 0.02
    acc_range: float = 0.01
    switch: bool = True

    def __post_init__(self):
        if self.window < 2:
            raise ConfigError(f"window must be >= 2 epochs, got {self.window}")
        for name in ("lr1", "lr2", "lr2_gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # NaN and infinity fail here
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        for name in ("loss_range", "acc_range"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.lr1_min is not None and not 0 <= self.lr1_min <= self.lr1:
            raise ConfigError(f"lr1_min must be in [0, lr1={self.lr1}], got {self.lr1_min}")

    @property
    def lr1_floor(self) -> float:
        """Where Lr1's cosine ends: ``lr1_min``, or Lr2 when it is None (capped at Lr1)."""
        return min(self.lr2, self.lr1) if self.lr1_min is None else self.lr1_min


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, where, and how it is read.

    Attributes:
      dataset: data set name (``faml_jax.data.DATASETS``).
      data_dir: its folder (for ``synthetic``: the cache folder; default ``~/.cache/faml_jax``;
        for the real data sets: the folder as distributed, or the output of experiments.prepare).
      synthetic: size and difficulty of the synthetic set.
      num_threads: grain host threads that read and resize images.
      crop_faces: AffectNet's original release (whole photographs with a face box per CSV row):
        train and test on the face boxes ([choice] docs/method.md 1: the paper's "aligned" faces are those
        boxes; default on). Layouts whose images are already faces (RAF-DB's aligned crops,
        AffectNet's re-distributed crops) are read as they are either way.
      skip_bad_images: reading a folder directly: check every image when opening and leave out
        the unreadable ones (reported) instead of failing when one is read.
      balanced: draw each epoch's training examples with replacement, with probability inversely
        proportional to their class's size (every class equally likely per draw; DAN's
        imbalanced-data sampler on AffectNet; docs/method.md 1 [choice]: off in the paper presets).
        Deterministic per seed and epoch; an epoch has as many draws as the split has examples.
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    num_threads: int = 4
    crop_faces: bool = True
    skip_bad_images: bool = False
    balanced: bool = False


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations, run on the device inside the compiled train step from the uint8
    batch (``faml_jax.preprocess.augment``); the host only decodes and resizes. Every draw comes
    from the step's key and the image's index in the global batch, so N devices equal 1 device.

    The paper's only augmentation is the horizontal flip (docs/method.md 1); the others are what the
    PyTorch code bases people compare with add ([choice] docs/method.md 1: options, off in the paper
    presets; ``AUGMENT_PRESETS`` has DAN's and POSTER++'s settings).

    Attributes:
      flip: probability of the random horizontal flip (paper: 0.5).
      rotate_p: probability of DAN's rotation + padded random crop (applied together, as
        ``RandomApply([RandomRotation(degrees), RandomCrop(size, padding)], p)``); 0 = off.
      rotate_degrees: the rotation angle is uniform in +-degrees (nearest-neighbour, zero fill,
        as torchvision's ``RandomRotation``).
      crop_padding: the random crop pads the image on every side (zeros) by this fraction of the
        input side, rounded to pixels, and cuts out an input-sized window at a uniform offset
        (DAN: 32 px at 224 px, 1/7; a fraction so that it scales with the input size).
      brightness, contrast, saturation: colour jitter strengths as torchvision's ``ColorJitter``:
        each factor uniform in [max(0, 1 - s), 1 + s], the three applied in a random order; 0 = off.
      erasing_p: probability of random erasing (torchvision's ``RandomErasing``, value 0 after
        normalisation, i.e. the mean colour); 0 = off.
      erasing_scale: range of the erased area as a fraction of the image.
      erasing_ratio: range of the erased rectangle's aspect ratio (drawn log-uniformly).
    """

    flip: float = 0.5
    rotate_p: float = 0.0
    rotate_degrees: float = 20.0
    crop_padding: float = 32 / 224
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    erasing_p: float = 0.0
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self):
        for name in ("flip", "rotate_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rotate_degrees", "brightness", "contrast", "saturation"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.crop_padding <= 1.0:
            raise ConfigError(f"crop_padding is a fraction of the input side in [0, 1], got {self.crop_padding}")
        lo, hi = self.erasing_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"erasing_scale must satisfy 0 < low <= high <= 1, got {self.erasing_scale}")
        lo, hi = self.erasing_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"erasing_ratio must satisfy 0 < low <= high, got {self.erasing_ratio}")

    def padding_pixels(self, size: int) -> int:
        """The random crop's padding in pixels at input side ``size``."""
        return int(round(self.crop_padding * size))

    @property
    def color(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)


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


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run: everything that determines its result. Saved as ``config.json`` in the
    workdir; a resumed run must have the same configuration (``epochs`` may grow).

    Attributes:
      model_name: the ``faml_jax.models.PRESETS`` name the model was built from.
      model, loss, optim, schedule, data: the resolved configurations.
      epochs: epochs to train.
      batch_size: global batch (over all devices and processes).
      seed: seeds initialisation, data order, loss draws and flips.
      eval_batch_size: batch of the test-split evaluation after each epoch.
      keep_checkpoints: the last N checkpoints are kept (plus the best by test accuracy).
      init: a converted pre-trained backbone (``tools.convert_torch``) the network starts
        from: its ResNet weights and BatchNorm statistics, the FA auxiliary convolutions as copies
        of conv1 (docs/method.md 2.1); attention blocks, fusion weights and the head fresh. None: random
        initialisation from ``seed`` (for the real data sets only when asked for: see
        ``check_pretrained_start``).
      augment: training augmentations (flip only in the paper presets).
      eval_dtype: the dtype of every evaluation: always float32 (``evaluation_model``), recorded
        so that a run's config.json says so beside the training ``model.dtype``.
    """

    model_name: str
    model: ModelConfig
    loss: LossConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    data: DataConfig
    epochs: int
    batch_size: int
    seed: int = 0
    eval_batch_size: int = 256
    keep_checkpoints: int = 3
    init: str | None = None
    augment: AugmentConfig = AugmentConfig()
    eval_dtype: Literal["float32"] = EVAL_DTYPE

    def __post_init__(self):
        if self.eval_dtype != EVAL_DTYPE:
            raise ConfigError(f"eval_dtype is always {EVAL_DTYPE} (docs/method.md 2.4), got {self.eval_dtype!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclasses.dataclass(frozen=True)
class FGAConfig:
    """FGA's genetic algorithm (docs/method.md 3, Algorithm 1).

    Attributes:
      population: networks kept from generation to generation ([choice]: the size is constant).
      generations: generations to run after the initial population.
      children: children fused per generation.
      new_members: fresh networks added per generation (Algorithm 1, step 3).
      parents: k, parents drawn (without replacement) for each child.
      until_trained: train each network until the stability detector says "well trained"
        (docs/method.md 2.4), at the latest for the run's ``epochs``; False: always the run's ``epochs``.
      child_lr: [our choice; the paper is silent] "lr1" (default): a child is retrained from the
        start of the Lr1 cosine regime, like a new network; "lr2": directly with Lr2, only
        fine-tuning the fused kernels. On the synthetic set, children fused from networks trained
        from scratch recovered with Lr1 and not with Lr2 (the measurement is in BENCHMARKS.md).
      shared_start: every initial and new network starts from one shared initialisation (the
        stand-in for the paper's common pre-trained start, docs/method.md 3; members then differ in their heads,
        data order, loss draws and flips, as in docs/method.md 3). Averaging kernels presumes networks
        from one start; False gives each network its own random initialisation.
      recompute_bn: 0 (default): a child keeps its fittest parent's BatchNorm statistics; N > 0:
        they are recomputed on N training batches before the child is retrained. This changes
        the child's accuracy *before* retraining only: training-mode passes normalise with batch
        statistics, so the parameters follow the same path either way, and the running
        statistics forget their start within an epoch (momentum 0.9).
    """

    population: int = 4
    generations: int = 1
    children: int = 2
    new_members: int = 1
    parents: int = 2
    until_trained: bool = True
    child_lr: Literal["lr1", "lr2"] = "lr1"
    shared_start: bool = True
    recompute_bn: int = 0

    def __post_init__(self):
        if self.population < 2:
            raise ConfigError(f"population must be >= 2 networks, got {self.population}")
        if self.generations < 0 or self.children < 0 or self.new_members < 0 or self.recompute_bn < 0:
            raise ConfigError("generations, children, new_members and recompute_bn must be >= 0")
        if self.generations and self.children + self.new_members == 0:
            raise ConfigError("a generation needs at least one child or new member")
        if not 2 <= self.parents <= self.population:
            raise ConfigError(f"parents must be in [2, population={self.population}], got {self.parents}")
        if self.child_lr not in ("lr1", "lr2"):
            raise ConfigError(f"child_lr must be 'lr1' or 'lr2', got {self.child_lr!r}")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """How an ensemble is evaluated and reported (docs/method.md 4).

    Attributes:
      alpha, beta: T2V's weights of a member's top-1 and top-2 vote (Eq. 10-11; paper 1.9, 1.0).
      checkpoint: each member's "final" checkpoint (the result) or its "best" by test accuracy
        (selected on the test split: optimistic).
      order: the order in which members join in the ensemble-size table: as "given", or by
        "accuracy" (best first).
    """

    alpha: float = 1.9
    beta: float = 1.0
    checkpoint: Literal["final", "best"] = "final"
    order: Literal["given", "accuracy"] = "given"

    def __post_init__(self):
        if not (math.isfinite(self.alpha) and self.alpha > 0 and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"T2V needs finite alpha > 0 and beta >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.alpha < self.beta:  # equal weights tie a first and a second choice (NOI decides): allowed
            raise ConfigError(
                f"T2V's alpha={self.alpha} is below beta={self.beta}: every member's second choice would count more "
                "than its first; give alpha >= beta (the paper: 1.9 and 1.0)"
            )
        if self.checkpoint not in ("final", "best"):
            raise ConfigError(f"checkpoint must be 'final' or 'best', got {self.checkpoint!r}")
        if self.order not in ("given", "accuracy"):
            raise ConfigError(f"order must be 'given' or 'accuracy', got {self.order!r}")


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


def check_pretrained_start(config: RunConfig, from_scratch: bool = False) -> None:
    """Refuse a run on a real data set that would start from random weights unless
    ``from_scratch`` says that is meant (docs/method.md 2: every model of the paper starts from a
    pre-trained ResNet18; from scratch a RAF-DB run lands tens of points below the paper).
    Raises ``ConfigError`` with a one-line message naming the way to a backbone."""
    dataset = config.data.dataset
    if dataset in PRETRAINED_DATASETS and config.init is None and not from_scratch:
        if config.model_name not in ("r18", "r18_fa", "r18_faml"):
            raise ConfigError(
                f"{dataset} runs start from pre-trained weights (the paper's setting): give --init BACKBONE, "
                f"torchvision's ImageNet {config.model_name} weights converted by `python -m tools.convert_torch "
                f"--arch {config.model_name}`, or pass --from-scratch to train from random weights knowingly"
            )
        raise ConfigError(
            f"{dataset} runs start from a pre-trained ResNet18 (the paper's setting; from random weights they land "
            "far below it): give --init BACKBONE, converted by `python -m tools.convert_torch_resnet18` from the "
            "MS-Celeb-1M ResNet18 distributed with the DAN code base (resnet18_msceleb.pth) or from torchvision's "
            "ImageNet resnet18 weights (the paper's RI18 baseline), or pass --from-scratch to train from random "
            "weights knowingly"
        )


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
    pre-trained start: on the real data sets a config without ``init`` raises ``ConfigError``
    unless ``from_scratch`` (``check_pretrained_start``).

    ``model_options``: ``ModelConfig`` fields to change (as ``models.build`` takes them;
    ``attention=False`` keeps FA's stem without its blocks). ``overrides``: any other ``RunConfig``
    field; for the nested configs (``loss``, ``optim``, ``schedule``, ``data``, ``augment``) either
    a config object or a dict of the fields to change (``data`` may hold ``synthetic`` as a dict). ``optim={"name": "sgd"}`` takes SGD's
    learning rate (``schedule.lr1`` 0.005) unless ``schedule`` sets ``lr1``.
    """
    if dataset not in RUN_PRESETS:
        raise ConfigError(f"unknown data set {dataset!r}; available: {', '.join(RUN_PRESETS)}")
    base = RUN_PRESETS[dataset]
    model_name = model or base["model_name"]
    if model_name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(sorted(MODEL_PRESETS))}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RunConfig)} - {"model_name", "model"})
    if unknown:
        raise ConfigError(f"RunConfig has no field(s) {unknown}")
    if "model" in overrides or "model_name" in overrides:
        raise ConfigError("give the model's name as preset(dataset, model) and its fields as model_options")

    def nested(name: str, default, **extra):
        given = overrides.pop(name, None)
        if given is not None and not isinstance(given, dict):
            return given
        return dataclasses.replace(default, **{**extra, **(given or {})})

    if backend is None:
        import jax

        backend = jax.default_backend()
    if model_name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(sorted(MODEL_PRESETS))}")
    architecture = MODEL_PRESETS[model_name].get("architecture", "resnet")
    given_model = dict(model_options or {})
    attention = given_model.pop("attention", None)
    fields = {
        "dtype": default_compute_dtype(backend),
        **MODEL_PRESETS[model_name],
        **base["model"].get(architecture, {}),
        **given_model,
        **({} if attention is None else {"attention": attention}),
    }
    model_config = without_unused_attention(ModelConfig(num_classes=8 if dataset == "affectnet8" else 7, **fields))
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


def default_compute_dtype(backend: str) -> str:
    """The runs' compute dtype on ``backend`` (``jax.default_backend()``): mixed precision on
    accelerators (bfloat16 compute, float32 parameters and BatchNorm statistics; tensor cores run
    bfloat16), float32 on the CPU."""
    return "float32" if backend == "cpu" else "bfloat16"


# ---------------------------------------------------------------------------------------------
# Saved configurations: JSON form, comparison


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
