"""The README's picture, docs/images/predict-demo.png, from a prediction folder written with
--explain (``make predict-demo``'s runs/predict-demo): the annotated photo beside the map panel of
its first face, at one height (``figures.side_by_side``), so the picture is made by a command,
not by hand: ``python -m tools.readme_picture runs/predict-demo docs/images/predict-demo.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HEIGHT = 520  # px: the map panel's own height, so its text is shown at the size it was drawn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.readme_picture", description=__doc__)
    parser.add_argument("prediction", help="a prediction folder written with --explain")
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args(argv)
    from PIL import Image

    from faml_jax import figures
    from faml_jax.writer import write_atomic

    folder = Path(args.prediction)
    panels = sorted((folder / "maps").glob("*_face0.png"))
    if not panels:
        print(f"no maps/*_face0.png in {folder}: predict with --explain first", file=sys.stderr)
        return 2
    photo = folder / "annotated" / (panels[0].name[: -len("_face0.png")] + ".png")
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in (photo, panels[0])]
    write_atomic(Path(args.out), png=figures.side_by_side(pictures, HEIGHT))
    print(f"written {args.out} from {photo} and {panels[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
