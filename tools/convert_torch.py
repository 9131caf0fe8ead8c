"""Convert a torchvision checkpoint to a faml_jax backbone:
``python -m tools.convert_torch --arch vgg16 vgg16-397923af.pth backbones/vgg16-imagenet``.

Architectures (``--arch``, docs/method.md 7): resnet18 (R18, R18+FA, R18+FAML start from it; the
paper's MS-Celeb-1M or ImageNet "RI18" weights), resnet34, vgg16, vgg16_bn and densenet121, each
as torchvision defines it. Reads the state dict (plain, under ``state_dict``, ``module.``-prefixed,
with or without the last linear layer; DenseNet's published key names too) with
``torch.load(weights_only=True)`` (no pickled code runs), converts it to Flax variables and writes
them as an orbax checkpoint into the new folder OUT, with a digest. A state dict of another
architecture is refused naming the keys that did not match and the architecture they look like.
Start a run from it with ``python -m experiments.train --model MODEL --init OUT``. Needs torch
(``pip install -e '.[torch]'``); training from OUT does not.
"""

from __future__ import annotations

import logging
import sys

from experiments.cli import OneLineErrorParser, run_cli
from faml_jax import pretrained

logger = logging.getLogger("tools.convert_torch")


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("tools.convert_torch", __doc__)
    parser.add_argument(
        "--arch",
        choices=sorted(pretrained.ARCHITECTURES),
        default="resnet18",
        help="the torchvision architecture of the file (default resnet18)",
    )
    parser.add_argument("checkpoint", help="the PyTorch file (.pth, .pth.tar)")
    parser.add_argument("out", help="the folder to create")
    return parser


def convert(checkpoint, out, architecture: str = "resnet18"):
    """Convert ``checkpoint`` (a torchvision ``architecture``) into the new folder ``out``;
    returns the folder."""
    state = pretrained.read_torch_state_dict(checkpoint)
    backbone, head = pretrained.torch_to_flax(state, architecture)
    model = pretrained.ARCHITECTURES[architecture][3]
    info = {"source": str(checkpoint), "architecture": architecture}
    folder = pretrained.save_backbone(backbone, head, out, info=info)
    head_text = f"its last layer with {head['kernel'].shape[1]} classes kept" if head is not None else "no last layer"
    # A ResNet18 backbone starts R18, R18+FA or R18+FAML (the default model); the others their own.
    model_flag = "" if model == "r18" else f"--model {model} "
    logger.info(
        f"converted {len(state)} tensors of {checkpoint} ({architecture}) into {folder} ({head_text}); "
        f"train with: python -m experiments.train {model_flag}--init {folder}"
    )
    return folder


def main(argv=None) -> int:
    return run_cli(build_parser(), argv, lambda args: convert(args.checkpoint, args.out, args.arch))


if __name__ == "__main__":
    sys.exit(main())
