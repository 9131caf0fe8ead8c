"""The flags the programs share and the configurations built from them: a training run's flags
(``add_run_arguments``) resolved into its ``RunConfig`` (``resolve_config``: the data set's
``faml_jax.presets.preset``, overridden by the flags given), FGA's flags (``fga_config``) and
``--generation`` of a population. A problem with the flags themselves is a ``cli.UsageError``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from experiments.cli import UsageError
from faml_jax import data, models
from faml_jax.config import AugmentConfig, FGAConfig, RunConfig
from faml_jax.presets import AUGMENT_PRESETS, MODEL_PRESETS, RUN_PRESETS, PretrainedStartMissing, preset


def add_run_arguments(parser: argparse.ArgumentParser, epochs_help: str, workdir_help: str) -> None:
    """The flags that define a training run (shared by ``experiments.train``, ``.evolve``, ``.ablation``
    and ``.architectures``), in the order ``--help`` lists them."""
    _add_data_flags(parser)
    _add_network_flags(parser)
    _add_loss_flags(parser)
    _add_training_flags(parser, epochs_help)
    _add_network_size_flags(parser)
    _add_augment_flags(parser)
    _add_synthetic_size_flags(parser)
    _add_workdir_flags(parser, workdir_help)
    _add_process_flags(parser)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Which data set, where it is, and how its folder is read."""
    parser.add_argument(
        "--dataset",
        default="synthetic",
        choices=data.DATASETS,
        help="data set (default: synthetic, embedded, no download)",
    )
    parser.add_argument(
        "--data-dir",
        help="data set folder: for rafdb/affectnet7/affectnet8 the folder as "
        "distributed (see docs/data.md) or the output of experiments.prepare; for synthetic its cache "
        "(default ~/.cache/faml_jax)",
    )
    parser.add_argument(
        "--crop-faces",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="AffectNet original release: train and test on each image's face box from the CSV "
        "(default; --no-crop-faces: whole photographs; a resumed run keeps its recorded setting)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="reading a folder: check every image first and leave out (and report) unreadable ones",
    )


def _add_network_flags(parser: argparse.ArgumentParser) -> None:
    """Which network: its preset name, FA without attention, the head's initialisation."""
    parser.add_argument(
        "--model",
        choices=sorted(models.PRESETS),
        help="network (preset: r18_faml); r18 = R18, r18_fa = R18+FA (FA stem and attention blocks), "
        "both trained with plain CE unless --loss is given; r18_faml = R18+FA with the ML loss",
    )
    parser.add_argument(
        "--no-attention",
        action="store_true",
        help="FA without its attention blocks (the paper reports the same accuracy without them)",
    )
    parser.add_argument(
        "--head-init",
        choices=["flax", "torch"],
        default="flax",
        help="initialisation of the dense head: flax (LeCun normal, zero bias; default) or torch "
        "(nn.Linear's uniform +-1/sqrt(fan_in))",
    )


def _add_loss_flags(parser: argparse.ArgumentParser) -> None:
    """The training loss (docs/method.md 2.3)."""
    parser.add_argument(
        "--loss",
        choices=["ml", "ce", "lsr", "wce", "mix"],
        help="ml: LSR or CE/WCE drawn per batch; mix: weighted sum (ablation)",
    )
    parser.add_argument("--p-lsr", type=float, help="LSR probability of ml / weight of mix (preset)")
    parser.add_argument(
        "--weighted",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use WCE instead of CE in ml/mix (preset: AffectNet yes, RAF-DB no)",
    )


def _add_training_flags(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """How long and from where: epochs, batch, seed, the backbone; the optimiser and Lr1/Lr2."""
    parser.add_argument("--epochs", type=int, help=epochs_help)
    parser.add_argument("--batch-size", type=int, help="global batch size (preset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, data order, loss draws, flips")
    parser.add_argument(
        "--init",
        metavar="BACKBONE",
        help="start from a pre-trained backbone converted by tools.convert_torch (attention "
        "blocks and head fresh); required on rafdb/affectnet7/affectnet8 unless --from-scratch",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="real data sets: train from random weights on purpose (not the paper's setting)",
    )
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, help="Lr1, the first learning rate (preset; paper 3e-4, SGD 0.005)")
    parser.add_argument("--lr2", type=float, help="Lr2, the rate after the stability switch (default 1e-5)")
    parser.add_argument("--no-switch", action="store_true", help="stay with Lr1 (cosine) for the whole run")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0, as in the paper)")
    parser.add_argument(
        "--weight-decay-mode",
        choices=["decoupled", "coupled"],
        help="decoupled: AdamW (torch.optim.AdamW; Adam's default); coupled: L2 added to the "
        "gradient (torch.optim.Adam(weight_decay=...); SGD's only mode, as torch.optim.SGD)",
    )


def _add_network_size_flags(parser: argparse.ArgumentParser) -> None:
    """The network's sizes and numerics: widths, input side, compute dtype and precision, FA fusion weights."""
    parser.add_argument(
        "--widths",
        help="channels per stage (preset): ResNets 4, e.g. 16,32,64,128; VGG 5; DenseNet 1 (its first convolution's)",
    )
    parser.add_argument("--input-size", type=int, help="input side in pixels (preset)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="training compute dtype; parameters, BatchNorm statistics, the head, logits and losses stay "
        "float32, and evaluation is always float32 (default: bfloat16 on a GPU, float32 on the CPU)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=["highest", "high", "default"],
        help="float32 matrix products and convolutions in training: highest = full float32, as the paper "
        "(default); high or default allow an accelerator's faster modes (TF32 on NVIDIA GPUs)",
    )
    parser.add_argument(
        "--fusion-init",
        type=float,
        metavar="W",
        help="initial FA fusion weights w1, w2 (default: 0 with --init, so the network starts as the "
        "pre-trained one; 0.5 from scratch)",
    )


def _add_augment_flags(parser: argparse.ArgumentParser) -> None:
    """Augmentations and the class-balanced sampler, in their own group of --help."""
    aug = parser.add_argument_group(
        "augmentation and sampling (docs/method.md 1; on the device, in the train step)",
        "The paper flips only. --augment dan|posterpp takes the settings of those PyTorch code bases; the "
        "flags below override single values.",
    )
    aug.add_argument(
        "--augment",
        choices=sorted(AUGMENT_PRESETS),
        default="paper",
        help="paper: flip p 0.5 (default); dan: + rotation 20 deg with padded crop (p 0.2) and random "
        "erasing 0.02-0.25; posterpp: + random erasing 0.02-0.1",
    )
    aug.add_argument("--flip", type=float, metavar="P", help="horizontal flip probability (0.5)")
    aug.add_argument("--rotate", type=float, metavar="P", help="probability of rotation + padded random crop")
    aug.add_argument("--rotate-degrees", type=float, metavar="DEG", help="rotation range +-DEG (20)")
    aug.add_argument(
        "--crop-padding",
        type=float,
        metavar="FRACTION",
        help="padding of the random crop as a fraction of the input side (0.143: 32 px at 224)",
    )
    aug.add_argument("--color-jitter", metavar="B,C,S", help="brightness, contrast, saturation strengths (0,0,0)")
    aug.add_argument("--erasing", type=float, metavar="P", help="random erasing probability")
    aug.add_argument("--erasing-scale", metavar="LO,HI", help="erased area range, fraction of the image (0.02,0.33)")
    aug.add_argument(
        "--balanced",
        action="store_true",
        help="class-balanced sampler: draw training examples with replacement by inverse class frequency",
    )


def _add_synthetic_size_flags(parser: argparse.ArgumentParser) -> None:
    """The synthetic set's sizes."""
    parser.add_argument("--train-size", type=int, help="synthetic: training images (default 10000)")
    parser.add_argument("--test-size", type=int, help="synthetic: test images (default 1000)")


def _add_workdir_flags(parser: argparse.ArgumentParser, workdir_help: str) -> None:
    """The output folder (resume, overwrite, checkpoints kept) and this host's reading threads and progress bar."""
    parser.add_argument("--workdir", help=workdir_help)
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--overwrite", action="store_true", help="delete the outputs of an earlier run in --workdir")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep besides the best (default 3)")
    parser.add_argument("--threads", type=int, default=4, help="host threads reading images (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Several processes (jax.distributed), in their own group of --help."""
    hosts = parser.add_argument_group(
        "several processes (jax.distributed; see docs/gpu.md)",
        "Run the same command once per process (e.g. one per machine), each with its --process-id; together "
        "they take the steps of one process with all their devices. Process 0 writes to --workdir and prints, "
        "process i > 0 keeps an identical copy of the outputs in <workdir>.process<i>.",
    )
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (any free port)")
    hosts.add_argument("--num-processes", type=int, help="number of processes")
    hosts.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    hosts.add_argument(
        "--distributed",
        choices=("off", "auto"),
        default="off",
        help="auto: take the processes from the cluster launcher's environment (srun, mpirun), "
        "with no --coordinator/--num-processes/--process-id (default off)",
    )


def floats(text: str, count: int, flag: str) -> tuple[float, ...]:
    """``count`` comma-separated numbers of a flag's value."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise UsageError(f"{flag} takes {count} comma-separated numbers, got {text!r}")
    return values


def resolve_augment(args: argparse.Namespace) -> AugmentConfig:
    """The ``--augment`` preset with the single-value flags given on top."""
    fields = {
        "flip": args.flip,
        "rotate_p": args.rotate,
        "rotate_degrees": args.rotate_degrees,
        "crop_padding": args.crop_padding,
        "erasing_p": args.erasing,
        "erasing_scale": floats(args.erasing_scale, 2, "--erasing-scale") if args.erasing_scale else None,
    }
    if args.color_jitter:
        fields.update(zip(("brightness", "contrast", "saturation"), floats(args.color_jitter, 3, "--color-jitter")))
    return dataclasses.replace(AUGMENT_PRESETS[args.augment], **{k: v for k, v in fields.items() if v is not None})


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration: ``faml_jax.presets.preset`` of the data set and model, overridden
    by the flags given (R18 and R18+FA train with plain CE unless ``--loss`` is given; docs/method.md 2)."""
    model_options = _model_options(args)
    loss = {k: v for k, v in dict(kind=args.loss, p_lsr=args.p_lsr, weighted=args.weighted).items() if v is not None}
    if args.loss is not None:  # an explicit loss starts from the data set's ML preset (its p and weighting)
        loss = dataclasses.replace(RUN_PRESETS[args.dataset]["loss"], **loss)
    schedule = {k: v for k, v in dict(lr1=args.lr, lr2=args.lr2).items() if v is not None}
    if args.no_switch:
        schedule["switch"] = False
    synthetic = {k: v for k, v in dict(train_size=args.train_size, test_size=args.test_size).items() if v is not None}
    sizes = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size).items() if v is not None}
    try:
        return preset(
            args.dataset,
            args.model,
            model_options=model_options,
            from_scratch=args.from_scratch,
            loss=loss,
            optim=dict(
                name=args.optimizer,
                weight_decay=args.weight_decay,
                **({"weight_decay_mode": args.weight_decay_mode} if args.weight_decay_mode else {}),
            ),
            schedule=schedule,
            data=dict(
                data_dir=args.data_dir,
                synthetic=synthetic,
                num_threads=args.threads,
                crop_faces=True if args.crop_faces is None else args.crop_faces,
                skip_bad_images=args.skip_bad_images,
                balanced=args.balanced,
            ),
            augment=resolve_augment(args),
            seed=args.seed,
            keep_checkpoints=args.keep,
            init=str(Path(args.init).expanduser().absolute()) if args.init else None,
            **sizes,
        )
    except PretrainedStartMissing as error:  # worded with preset()'s arguments: here, with the flags for them
        raise UsageError(error.worded(init="--init BACKBONE", from_scratch="--from-scratch")) from None


def _model_options(args: argparse.Namespace) -> dict:
    """The ``ModelConfig`` fields the flags set (``preset``'s ``model_options``); a flag that the
    network ``--model`` names lacks is refused."""
    model_options = {"head_init": args.head_init}
    if args.widths:
        try:
            model_options["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            raise UsageError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    for name, value in (
        ("input_size", args.input_size),
        ("dtype", args.dtype),
        ("matmul_precision", args.matmul_precision),
        ("fa_init_pretrained" if args.init else "fa_init", args.fusion_init),
    ):
        if value is not None:
            model_options[name] = value
    if args.no_attention:
        model_options["attention"] = False
    chosen = MODEL_PRESETS.get(args.model, {})
    if args.fusion_init is not None and args.model is not None and not chosen.get("fa_regions"):
        raise UsageError(f"--fusion-init: {args.model} has no FA stem")
    if args.no_attention and chosen.get("architecture", "resnet") != "resnet":
        raise UsageError(f"--no-attention: {args.model} has no attention blocks")
    return model_options


def kept_on_resume(args: argparse.Namespace) -> tuple[str, ...]:
    """Fields whose recorded value a resumed run keeps (``adopt_recorded``): settings whose flag
    is not given now."""
    return ("data.crop_faces",) if args.crop_faces is None else ()


def add_format_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--format: the file format of the figures a program writes (png for guides, pdf or svg for a paper)."""
    from faml_jax.figures import FORMATS

    parser.add_argument(
        "--format", choices=FORMATS, default="png", help=f"file format of {what}: png (default), pdf or svg"
    )


def add_generation_argument(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--generation N``: with ``--population``, that generation's survivors instead of the
    final population (``runs.population_members``); ``check_generation`` refuses it alone."""
    group.add_argument(
        "--generation",
        type=int,
        metavar="N",
        help="with --population: generation N's survivors (0: the initial population) instead of the final "
        "population; also of an unfinished evolution",
    )


def check_generation(args: argparse.Namespace) -> None:
    """``--generation`` given without ``--population``: a usage error."""
    if args.generation is not None and not args.population:
        raise UsageError("--generation needs --population")


def add_fga_arguments(parser: argparse.ArgumentParser, population: bool) -> argparse._ArgumentGroup:
    """The flags of ``FGAConfig`` (``--population`` only where ``population``); returns their group."""
    group = parser.add_argument_group("FGA (docs/method.md 3)")
    if population:
        group.add_argument(
            "--population", type=int, default=FGAConfig.population, help="networks per generation (default 4)"
        )
    group.add_argument("--generations", type=int, default=FGAConfig.generations, help="generations (default 1)")
    group.add_argument("--children", type=int, default=FGAConfig.children, help="children per generation (default 2)")
    group.add_argument(
        "--new-members", type=int, default=FGAConfig.new_members, help="fresh networks per generation (default 1)"
    )
    group.add_argument("--parents", type=int, default=FGAConfig.parents, help="parents per child, k (default 2)")
    group.add_argument(
        "--fixed-epochs",
        action="store_true",
        help="train every network for --epochs, not until the detector says well trained",
    )
    group.add_argument(
        "--child-lr",
        choices=["lr1", "lr2"],
        default=FGAConfig.child_lr,
        help="retrain children from Lr1's cosine start (default) or directly with Lr2",
    )
    group.add_argument(
        "--independent-init",
        action="store_true",
        help="each network its own random initialisation (default: one shared start, own heads)",
    )
    group.add_argument(
        "--recompute-bn",
        type=int,
        default=0,
        metavar="N",
        help="recompute a child's BatchNorm statistics on N training batches (default 0: off)",
    )
    return group


def fga_config(args: argparse.Namespace, population: int | None = None) -> FGAConfig:
    """The ``FGAConfig`` of parsed FGA flags (``population``: instead of ``--population``)."""
    return FGAConfig(
        population=args.population if population is None else population,
        generations=args.generations,
        children=args.children,
        new_members=args.new_members,
        parents=args.parents,
        until_trained=not args.fixed_epochs,
        child_lr=args.child_lr,
        recompute_bn=args.recompute_bn,
        shared_start=not args.independent_init,
    )


def add_predictor_arguments(parser: argparse.ArgumentParser, checkpoint_help: str = "by test accuracy") -> None:
    """The networks a ``predict.Predictor`` is made of and how they decide: ``--run`` (repeat) or
    ``--population`` [``--generation``], ``--checkpoint``, ``--strategy``, ``--ties``
    (experiments.predict and experiments.serve; ``predictor_from_args`` reads them)."""
    from faml_jax.ensemble import STRATEGIES

    source = parser.add_argument_group("networks")
    source.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="DIR",
        help="an experiments.train run folder (repeat for an ensemble)",
    )
    source.add_argument("--population", metavar="DIR", help="an experiments.evolve workdir: its final population")
    add_generation_argument(source)
    parser.add_argument(
        "--checkpoint",
        choices=["final", "best"],
        default="final",
        help=f"each run's latest checkpoint (default) or its best {checkpoint_help}".strip(),
    )
    parser.add_argument(
        "--strategy",
        choices=list(STRATEGIES),
        default="t2v",
        help="how an ensemble decides: T2V top-two voting (default), T1V majority, NOI summed softmax",
    )
    parser.add_argument(
        "--ties",
        choices=["noi", "lowest"],
        default="noi",
        help="how T2V and T1V break a tie: by NOI, then the lowest class (default), or the lowest class alone",
    )


def predictor_from_args(args: argparse.Namespace, batch_size: int):
    """The ``predict.Predictor`` that ``add_predictor_arguments``' flags name (a usage error for
    neither or both of ``--run`` and ``--population``)."""
    from faml_jax import predict
    from faml_jax.config import EnsembleConfig

    if bool(args.run) == bool(args.population):
        raise UsageError("give --run DIR (one or more) or --population DIR")
    check_generation(args)
    kwargs = dict(strategy=args.strategy, ensemble_config=EnsembleConfig(ties=args.ties), batch_size=batch_size)
    if args.population:
        return predict.Predictor.from_population(args.population, args.checkpoint, generation=args.generation, **kwargs)
    return predict.Predictor.from_runs(args.run, args.checkpoint, **kwargs)
