"""Prepare a real data set once: ``python -m experiments.prepare --dataset rafdb --data-dir PATH``.

Reads RAF-DB or AffectNet from the folder as distributed (see docs/data.md), decodes
every image once (an unreadable one stops the preparation, naming it, unless --skip-bad-images
leaves it out), and writes TFDS array_record files with the training class counts and weights to
--out (default ~/.cache/faml_jax/prepared, or $FAML_JAX_CACHE/prepared). Each image is stored
ready to train: AffectNet's face box cut out (--no-crop-faces: the whole photograph), resized to
--stored-size (default 224, the paper's input size) by the training pipeline's resize, as a JPEG
of --jpeg-quality (95); --stored-size 0 stores the original files instead:

  raf_db/1.0.0/             RAF-DB basic
  affectnet/7/1.0.0/        AffectNet-7 (the validation set is the test split)
  affectnet/8/1.0.0/        AffectNet-8

The folder appears only when complete. Then train from it with
``python -m experiments.train --dataset rafdb --data-dir <out> --init <backbone>`` (the folder's examples in the
same order: identical with --stored-size 0, within JPEG rounding otherwise). No TensorFlow is needed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, run_cli
from faml_jax import data
from faml_jax.data import prepared
from faml_jax.data.synthetic import default_cache_dir

logger = logging.getLogger("experiments.prepare")

REAL_DATASETS = tuple(d for d in data.DATASETS if d != "synthetic")


def default_out() -> Path:
    return default_cache_dir() / "prepared"


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("experiments.prepare", __doc__)
    parser.add_argument("--dataset", required=True, choices=REAL_DATASETS, help="the data set to prepare")
    parser.add_argument(
        "--data-dir",
        required=True,
        help=f"the data set's folder as distributed: rafdb: {data.DATA_DIR_HELP['rafdb']}; "
        f"affectnet7/8: {data.DATA_DIR_HELP['affectnet8']}",
    )
    parser.add_argument("--out", help="where to write (default ~/.cache/faml_jax/prepared)")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out (and report) unreadable or corrupt images instead of stopping",
    )
    parser.add_argument("--overwrite", action="store_true", help="prepare again over an earlier preparation")
    parser.add_argument(
        "--stored-size",
        type=int,
        default=prepared.STORED_SIZE,
        help=f"side of the stored ready-to-train images (default {prepared.STORED_SIZE}, the paper's input "
        "size: no resizing while training at it); 0: store the original files",
    )
    parser.add_argument(
        "--crop-faces",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AffectNet's original release: store the CSV's face boxes (default) or whole photographs",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=prepared.JPEG_QUALITY,
        help=f"JPEG quality of the stored images (default {prepared.JPEG_QUALITY})",
    )
    parser.add_argument("--threads", type=int, default=4, help="threads decoding images (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(
    dataset: str,
    data_dir,
    out=None,
    *,
    skip_bad_images: bool = False,
    overwrite: bool = False,
    num_threads: int = 4,
    progress: bool = True,
    stored_size: int | None = prepared.STORED_SIZE,
    crop_faces: bool = True,
    quality: int = prepared.JPEG_QUALITY,
) -> Path:
    """Prepare ``dataset`` from ``data_dir`` into ``out``; logs what was opened; returns its folder."""
    out = Path(out).expanduser() if out is not None else default_out()
    if not progress:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    logger.info(f"preparing {dataset} from {data_dir} into {out}")
    folder = prepared.prepare(
        dataset,
        data_dir,
        out,
        skip_bad_images=skip_bad_images,
        num_threads=num_threads,
        overwrite=overwrite,
        bars=progress,
        stored_size=stored_size or None,
        crop=crop_faces,
        quality=quality,
    )
    logger.info(data.open_dataset(dataset, out, crop_faces=crop_faces).describe())
    logger.info(
        f"prepared in {folder}; train with: python -m experiments.train --dataset {dataset} --data-dir {out} "
        "--init BACKBONE (a backbone converted by tools.convert_torch; --from-scratch to train without)"
    )
    return folder


def main(argv=None) -> int:
    def body(args):
        run(
            args.dataset,
            args.data_dir,
            args.out,
            skip_bad_images=args.skip_bad_images,
            overwrite=args.overwrite,
            num_threads=args.threads,
            progress=not args.no_progress,
            stored_size=args.stored_size,
            crop_faces=args.crop_faces,
            quality=args.jpeg_quality,
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
