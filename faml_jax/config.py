"""Frozen configuration types, one per concern: model, loss, optimiser, schedule, data,
augmentation, a training run, FGA and an ensemble's evaluation.

Each config is a frozen dataclass so that it can be hashed, passed as a static argument to
compiled functions and saved beside a run's outputs (``records.config_to_json``); each checks its
own values when built (``ConfigError``). The paper's settings per data set and model are in
``faml_jax.presets``; a saved config.json is read back by ``faml_jax.records``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from faml_jax.data.synthetic import SyntheticConfig
from faml_jax.errors import ConfigError
from faml_jax.region import Region


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
    presets; ``presets.AUGMENT_PRESETS`` has DAN's and POSTER++'s settings).

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
        ``presets.check_pretrained_start``).
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
      ties: how a tie in T2V's or T1V's score is broken (docs/method.md 4 [choice]): "noi" by
        NOI, then the lowest class index (default); "lowest" by the lowest class index alone.
    """

    alpha: float = 1.9
    beta: float = 1.0
    checkpoint: Literal["final", "best"] = "final"
    order: Literal["given", "accuracy"] = "given"
    ties: Literal["noi", "lowest"] = "noi"

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
        if self.ties not in ("noi", "lowest"):
            raise ConfigError(f"ties must be 'noi' or 'lowest', got {self.ties!r}")
        if self.order not in ("given", "accuracy"):
            raise ConfigError(f"order must be 'given' or 'accuracy', got {self.order!r}")
