"""Convert a PyTorch ResNet18 checkpoint to a faml_jax backbone:
``python -m tools.convert_torch_resnet18 resnet18_msceleb.pth backbones/msceleb``.

Reads a torchvision-layout ResNet18 state dict (plain, under ``state_dict``, ``module.``-prefixed,
with or without ``fc``) with ``torch.load(weights_only=True)`` (no pickled code runs), converts
it to Flax variables and writes them as an orbax checkpoint into the new folder OUT. Start a
training run from it with ``python -m experiments.train --init OUT``. Needs torch
(``pip install -e '.[torch]'``); training from OUT does not.
"""

from __future__ import annotations

import sys

from experiments.cli import OneLineErrorParser, run_cli
from faml_jax import pretrained


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("tools.convert_torch_resnet18", __doc__)
    parser.add_argument("checkpoint", help="the PyTorch file (.pth, .pth.tar)")
    parser.add_argument("out", help="the folder to create")
    return parser


def convert(checkpoint, out, log=print):
    """Convert ``checkpoint`` into the new folder ``out``; returns the folder."""
    state = pretrained.read_torch_state_dict(checkpoint)
    backbone, head = pretrained.torch_to_flax(state)
    folder = pretrained.save_backbone(backbone, head, out, info={"source": str(checkpoint)})
    head_text = f"fc with {head['kernel'].shape[1]} classes kept" if head is not None else "no fc in the file"
    log(
        f"converted {len(state)} tensors of {checkpoint} into {folder} ({head_text}); "
        f"train with: python -m experiments.train --init {folder}"
    )
    return folder


def main(argv=None) -> int:
    return run_cli(build_parser(), argv, lambda args: convert(args.checkpoint, args.out))


if __name__ == "__main__":
    sys.exit(main())
