"""Analysed frames/s end to end on a video (decode, detect, cut, predict, track:
``faml_jax.video.records``, sampled at ``--fps``, default the program's 10) for R18+FAML networks
(random weights: ``demo``, the synthetic preset's 64 px network that ``make demo`` trains; ``r18``,
the paper's at 224 px; ``t2v6``, six of those voting with T2V), against the ``fer`` package's
``Video.analyze`` (its Haar cascade and mini-Xception, every ``25 / fps``-th frame, no outputs
written) on the same clip (``tools.clips.standard_clip``: 640x360, 25 fps, 20 s, the astronaut and
an LFW face), in the same run on the same machine. Also the split: decoding alone, and decoding
plus dlib's detection and cutting (no network).

    python -m tools.bench_video --fer-python /work/wt/fer-venv/bin/python --models demo r18 t2v6

fer needs TensorFlow, opencv-contrib, facenet-pytorch (torch), moviepy<2 and pandas: it lives in a
separate environment (``python3 -m venv fer-venv && fer-venv/bin/pip install fer``), never in the
project's. Measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

FER_SCRIPT = """
import json, sys, time
from fer.fer import FER
from fer.classes import Video
detector = FER(mtcnn=False)
clip = Video(sys.argv[1], outdir=sys.argv[2])
start = time.perf_counter()
rows = clip.analyze(detector, display=False, save_frames=False, save_video=False, annotate_frames=False,
                    zip_images=False, frequency=int(sys.argv[3]))
print("FER", json.dumps({"seconds": time.perf_counter() - start, "rows": len(rows)}))
"""


MODELS = {
    "demo": ("synthetic", 1, "R18+FAML, demo size (synthetic preset, 64 px)"),
    "r18": ("rafdb", 1, "R18+FAML, the paper's (224 px)"),
    "t2v6": ("rafdb", 6, "6 x R18+FAML (224 px), T2V"),
}


def faml_rate(clip: Path, model: str, fps: float | None) -> tuple[float, int, int]:
    """(analysed frames/s, frames, rows) of ``video.records`` on ``clip`` with ``model``
    (``MODELS``), after a warm-up call that compiles."""
    from faml_jax import models, video
    from faml_jax.predict import Predictor
    from faml_jax.presets import preset

    name, members, _ = MODELS[model]
    config = preset(name, from_scratch=True) if name == "rafdb" else preset(name)
    variables = []
    for seed in range(members):
        v = models.init(models.network(config.model), jax.random.key(seed))
        leaves, tree = jax.tree.flatten(v["params"])  # not the zero-initialised blocks (NOTES)
        moved = [leaf + 0.01 * np.random.default_rng(seed).standard_normal(leaf.shape) for leaf in leaves]
        variables.append({"params": jax.tree.unflatten(tree, moved), "batch_stats": v["batch_stats"]})
    predictor = Predictor(config, variables, [f"net{i}" for i in range(members)], batch_size=32)
    predictor.predict(np.zeros((32, 100, 100, 3), np.uint8))  # compile
    start = time.perf_counter()
    rows = list(video.records(predictor, clip, **_sampling(fps)))
    frames = len({r["frame"] for r in rows})
    return frames / (time.perf_counter() - start), frames, len(rows)


def _sampling(fps: float | None) -> dict:
    return {"fps": fps} if fps else {"every": 1}


def host_rates(clip: Path, fps: float | None) -> tuple[float, float, int]:
    """(decoded frames/s, decoded-and-searched frames/s, faces) without a network: decoding the
    sampled frames alone, then with dlib's detection and cutting as ``video.records`` does."""
    from faml_jax import faces, video
    from faml_jax.photos import search_copy

    start = time.perf_counter()
    frames = sum(1 for _ in video.frames(clip, **_sampling(fps)))
    decoded = frames / (time.perf_counter() - start)
    finder = faces.Finder("box", upsample=video.DEFAULT_UPSAMPLE)
    start = time.perf_counter()
    found = sum(len(finder.find(search_copy(f.image), full=f.image)) for f in video.frames(clip, **_sampling(fps)))
    return decoded, frames / (time.perf_counter() - start), found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer-python", help="the python of an environment with fer installed")
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length (default 20)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["demo", "r18", "t2v6"])
    parser.add_argument("--fps", type=float, default=10.0, help="frames analysed per second (default 10; 0: all)")
    args = parser.parse_args(argv)
    from tools import benchmarking
    from tools.clips import standard_clip

    folder = Path(tempfile.mkdtemp())
    clip = standard_clip(folder / "clip.mp4", args.seconds)
    every = max(1, round(25 / args.fps)) if args.fps else 1
    lines = [
        f"Video, end to end: a 640x360 25 fps {args.seconds:g} s clip ({round(args.seconds * 25)} frames), "
        f"analysed at {f'{args.fps:g} fps' if args.fps else 'every frame'} (fer: every {every}. frame), "
        f"{benchmarking.device()}",
        "",
        "| tool | model | analysed frames/s | frames | rows |",
        "|---|---|---|---|---|",
    ]
    decoded, searched, found = host_rates(clip, args.fps or None)
    lines.append(f"| faml_jax | decoding only | {decoded:.1f} | | |")
    lines.append(f"| faml_jax | decoding + dlib detection and cutting, no network | {searched:.2f} | | {found} faces |")
    print("\n".join(lines[-2:]), flush=True)
    for model in args.models:
        rate, frames, rows = faml_rate(clip, model, args.fps or None)
        lines.append(f"| faml_jax | {MODELS[model][2]} | {rate:.2f} | {frames} | {rows} |")
        print(lines[-1], flush=True)
    if args.fer_python:
        start = time.perf_counter()
        result = subprocess.run(
            [args.fer_python, "-c", FER_SCRIPT, str(clip), str(folder / "fer"), str(every)],
            capture_output=True,
            text=True,
            cwd=folder,  # fer writes data.csv into its working folder whatever it is told
        )
        found = [line for line in result.stdout.splitlines() if line.startswith("FER ")]
        if found:
            fer = json.loads(found[0][4:])
            frames = -(-round(args.seconds * 25) // every)
            lines.append(
                f"| fer 25.10.3 | Haar cascade + mini-Xception | {frames / fer['seconds']:.2f} | {frames} | "
                f"{fer['rows']} |"
            )
            lines.append(f"(fer's process, imports included: {time.perf_counter() - start:.0f} s)")
        else:
            lines.append(f"| fer | failed: {result.stderr.strip().splitlines()[-1:]} | | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
