"""Predict the expressions of faces in photos and videos with trained networks:
``python -m experiments.predict --run DIR [--run DIR ...] | --population EVOLVE_DIR  IMAGE|VIDEO|FOLDER|GLOB ...``.

The preprocessing is the training run's own, read from its config.json: faces are found with
dlib (``--faces detect``, the ``faces`` extra) and cut out as the run's data set shows faces
(RAF-DB: aligned on five landmarks; AffectNet and the synthetic set: the face box with a margin;
``--crop`` overrides), then resized to the run's input size as training resized its images and
normalised inside the compiled call. ``--faces aligned`` takes every image as one face already cut
out. Several runs, or an evolution's final population, vote with T2V (``--strategy``).

The output folder (``--out``) holds:

  predictions.csv    one row per face: file, face index, box, landmarks, decided class, its
                     confidence (the networks' mean probability), every class's score under the
                     strategy, every network's top-1 class
  predictions.json   the same, with the runs, checkpoints, classes, files without a face and
                     unreadable files
  annotated/         each photo with its faces' boxes and labels (PNG)
  maps/              with --explain: each face as the networks saw it beside its attention map
                     (JET overlay), and maps.npz with the raw maps

predictions.json lists every file written: an earlier prediction is replaced whole with
``--overwrite`` (its old annotated/ and maps/ files go); a folder that is not a prediction is
never written into.

Videos (files or globs recognised by content: any container and codec FFmpeg decodes; the
``video`` extra) are sampled (``--fps``, default 10, or ``--every N``), their faces tracked, and
each written to video/<name>/: frames.csv (one row per face per analysed frame, a row for a frame
without a face; ``--smooth SECONDS`` adds smoothed columns), summary.json, timeline.png and, with
``--annotate``, annotated.mp4 (H.264). A damaged video keeps its rows; where it stopped is said.

Unreadable images, damaged videos and files that are neither are named (listed at the end; exit
status 1 if any); a photo without a face is reported, not an error.
"""

from __future__ import annotations

import logging
import sys

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import add_predictor_arguments, predictor_from_args
from faml_jax import faces, inputs, photos, video, video_outputs

logger = logging.getLogger("experiments.predict")


def build_parser():
    parser = OneLineErrorParser.for_program("experiments.predict", __doc__)
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE", help="image files, folders (searched recursively) or globs"
    )
    add_predictor_arguments(parser)
    parser.add_argument(
        "--faces",
        choices=list(photos.FACE_SOURCES),
        default="detect",
        help="detect faces in photos (default) or take each image as one face already cut out",
    )
    parser.add_argument(
        "--crop",
        choices=list(faces.MODES),
        help="how detected faces are cut (default: as the run's data set: align for RAF-DB, box otherwise)",
    )
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier prediction in --out (a folder that is not one is never replaced)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="faces per compiled call (default 32)")
    parser.add_argument("--no-annotated", action="store_true", help="do not write annotated photos")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also write where the networks look (maps/); ensembles: weighted by the members' T2V votes (docs/method.md 6)",
    )
    parser.add_argument(
        "--map",
        choices=["gradcam", "relevancy"],
        default="gradcam",
        help="with --explain: Grad-CAM of the last stage (default) or the attention blocks' "
        "relevancy (models with attention blocks)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    videos = parser.add_argument_group("videos")
    sampling = videos.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=int, metavar="N", help="analyse every N-th frame")
    sampling.add_argument(
        "--fps", type=float, metavar="F", help=f"analyse F frames per second (default {video.DEFAULT_FPS:g})"
    )
    videos.add_argument(
        "--smooth", type=float, default=0.0, metavar="SECONDS", help="add each face's scores averaged over SECONDS"
    )
    videos.add_argument(
        "--gap",
        type=float,
        default=video.DEFAULT_GAP,
        metavar="SECONDS",
        help=f"a face missing this long keeps its id (default {video.DEFAULT_GAP:g})",
    )
    videos.add_argument(
        "--upsample",
        type=int,
        default=video.DEFAULT_UPSAMPLE,
        help="double video frames this often before detection (finds smaller faces, slower; default 0)",
    )
    videos.add_argument("--annotate", action="store_true", help="write annotated.mp4 (H.264) per video")
    return parser


def main(argv=None) -> int:
    failed = []

    def body(args):
        predictor = predictor_from_args(args, args.batch_size)
        if args.explain:
            predictor.check_explainable(args.map)  # before anything is written
        photos.check_output(args.out, args.overwrite)  # before predicting (asked again when writing)
        files, videos, neither = video.split_videos(inputs.input_files(args.inputs, exclude=args.out))
        if videos:
            video.check_sampling(args.every, args.fps)
            if args.faces == "aligned":
                raise UsageError("--faces aligned takes photos of faces; videos are searched for faces")
        results = photos.predict_photos(
            predictor, files, faces=args.faces, mode=args.crop, progress=not args.no_progress
        )
        command = "python -m experiments.predict " + " ".join(sys.argv[1:] if argv is None else argv)

        def write_videos(folder):
            for name, path in zip(photos.unique_stems([str(v) for v in videos]), videos):
                summary, stopped = video_outputs.write_video(
                    folder / "video" / name,
                    predictor,
                    path,
                    **dict(
                        every=args.every,
                        fps=args.fps,
                        smooth=args.smooth,
                        gap=args.gap,
                        mode=args.crop,
                        upsample=args.upsample,
                    ),
                    annotate=args.annotate,
                    command=command,
                    progress=not args.no_progress,
                )
                seen = ", ".join(f"face {i}: {f['dominant']}" for i, f in summary["faces"].items()) or "no face"
                logger.info(f"{path}: {summary['analysed_frames']} frame(s) analysed; {seen}")
                if stopped is not None:
                    logger.warning(f"damaged: {stopped}")
                    failed.append(str(stopped))

        photos.write_predictions(
            args.out,
            results,
            predictor,
            annotated=not args.no_annotated,
            command=command,
            explain=args.map if args.explain else None,
            overwrite=args.overwrite,
            also=write_videos if videos else None,
        )
        for line in neither:
            logger.warning(line)
        failed.extend(neither)
        logger.info(
            f"{len(predictor.names)} network(s) ({', '.join(predictor.names)}), {predictor.dataset}, "
            f"{predictor.input_size} px, strategy {predictor.strategy}"
        )
        width = max([len(r["file"]) for r in results.records] + [4])
        if results.records:
            logger.info(f"{'file':<{width}}  face  class        confidence")
        for r in results.records:
            logger.info(f"{r['file']:<{width}}  {r['face']:>4}  {r['class']:<12} {r['confidence']:.3f}")
        for f in results.no_face:
            logger.info(f"no face found: {f}")
        for _, error in results.failures:
            logger.warning(f"unreadable: {error}")
        logger.info(
            f"{len(results.records)} face(s) in {len(files) - len(results.failures)} image(s)"
            + (f", {len(videos)} video(s)" if videos else "")
            + f"; written to {args.out}"
        )
        failed.extend(results.failures)

    code = run_cli(build_parser(), argv, body)
    return 1 if code == 0 and failed else code


if __name__ == "__main__":
    sys.exit(main())
