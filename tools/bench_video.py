"""Frames/s end to end on a video (decode, detect, cut, predict, track: ``faml_jax.video.records``,
every frame analysed) for one R18+FAML (full widths, 224 px, random weights) and a 6-network T2V
ensemble, against the ``fer`` package's ``Video.analyze`` (its Haar cascade and mini-Xception, every
frame, no outputs written) on the same clip (``tools.clips.standard_clip``: 640x360, 25 fps, 20 s,
the astronaut and an LFW face), in the same run on the same machine.

    python -m tools.bench_video --fer-python /work/wt/fer-venv/bin/python

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
                    zip_images=False)
print("FER", json.dumps({"seconds": time.perf_counter() - start, "rows": len(rows)}))
"""


def faml_rate(clip: Path, members: int, frames: int) -> tuple[float, int]:
    """(frames/s, rows) of ``video.records`` on ``clip`` with ``members`` R18+FAML networks, after a
    warm-up call that compiles."""
    from faml_jax import models, video
    from faml_jax.predict import Predictor
    from faml_jax.presets import preset

    config = preset("rafdb", from_scratch=True)
    variables = []
    for seed in range(members):
        v = models.init(models.network(config.model), jax.random.key(seed))
        leaves, tree = jax.tree.flatten(v["params"])  # not the zero-initialised blocks (NOTES)
        moved = [leaf + 0.01 * np.random.default_rng(seed).standard_normal(leaf.shape) for leaf in leaves]
        variables.append({"params": jax.tree.unflatten(tree, moved), "batch_stats": v["batch_stats"]})
    predictor = Predictor(config, variables, [f"net{i}" for i in range(members)], batch_size=32)
    predictor.predict(np.zeros((32, 100, 100, 3), np.uint8))  # compile
    start = time.perf_counter()
    rows = sum(1 for _ in video.records(predictor, clip, every=1))
    return frames / (time.perf_counter() - start), rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer-python", help="the python of an environment with fer installed")
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length (default 20)")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 6], help="ensemble sizes (default 1 6)")
    args = parser.parse_args(argv)
    from tools import benchmarking
    from tools.clips import standard_clip

    folder = Path(tempfile.mkdtemp())
    clip = standard_clip(folder / "clip.mp4", args.seconds)
    frames = round(args.seconds * 25)
    lines = [
        f"Video, end to end, every frame of a 640x360 25 fps {args.seconds:g} s clip ({frames} frames), "
        f"{benchmarking.device()}",
        "",
        "| tool | model | frames/s | rows |",
        "|---|---|---|---|",
    ]
    for members in args.members:
        rate, rows = faml_rate(clip, members, frames)
        name = "R18+FAML (224 px)" if members == 1 else f"{members} x R18+FAML, T2V"
        lines.append(f"| faml_jax | {name} | {rate:.2f} | {rows} |")
        print(lines[-1], flush=True)
    if args.fer_python:
        result = subprocess.run(
            [args.fer_python, "-c", FER_SCRIPT, str(clip), str(folder / "fer")], capture_output=True, text=True
        )
        found = [line for line in result.stdout.splitlines() if line.startswith("FER ")]
        if found:
            fer = json.loads(found[0][4:])
            lines.append(
                f"| fer 25.10.3 | Haar cascade + mini-Xception | {frames / fer['seconds']:.2f} | {fer['rows']} |"
            )
        else:
            lines.append(f"| fer | failed: {result.stderr.strip().splitlines()[-1:]} | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
