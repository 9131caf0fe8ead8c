"""Convert a PyTorch ResNet18 checkpoint to a faml_jax backbone:
``python -m tools.convert_torch_resnet18 resnet18_msceleb.pth backbones/msceleb``; the same as
``python -m tools.convert_torch --arch resnet18`` (which also converts resnet34, vgg16, vgg16_bn and
densenet121).

Reads a torchvision-layout ResNet18 state dict (plain, under ``state_dict``, ``module.``-prefixed,
with or without ``fc``) with ``torch.load(weights_only=True)`` (no pickled code runs), converts
it to Flax variables and writes them as an orbax checkpoint into the new folder OUT. Start a
training run from it with ``python -m experiments.train --init OUT``. Needs torch
(``pip install -e '.[torch]'``); training from OUT does not.
"""

from __future__ import annotations

import sys

from experiments.cli import OneLineErrorParser, run_cli
from tools import convert_torch


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("tools.convert_torch_resnet18", __doc__)
    parser.add_argument("checkpoint", help="the PyTorch file (.pth, .pth.tar)")
    parser.add_argument("out", help="the folder to create")
    return parser


def convert(checkpoint, out):
    """Convert ``checkpoint`` (a torchvision ResNet18) into the new folder ``out``; returns the
    folder (``tools.convert_torch.convert`` with ``--arch resnet18``)."""
    return convert_torch.convert(checkpoint, out, "resnet18")


def main(argv=None) -> int:
    return run_cli(build_parser(), argv, lambda args: convert(args.checkpoint, args.out))


if __name__ == "__main__":
    sys.exit(main())
