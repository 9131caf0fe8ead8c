"""Video clips made from real photographs (scikit-image's astronaut and a face of its LFW subset)
moving over a grey frame, written with PyAV: the clips of ``tools.bench_video`` and of the video
tests (tests/test_video.py), with known face positions, times, rotation and gaps.

    python -m tools.clips clip.mp4            # the benchmark's clip: 640x360, 25 fps, 20 s
"""

from __future__ import annotations

import argparse
import fractions
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


@functools.cache
def sprites(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two real faces as (S, S, 3) uint8 pictures: the astronaut's head (150 px at ``scale`` 1,
    from skimage.data.astronaut) and an LFW face (scikit-image's lfw_subset.npy, 25 px grey,
    enlarged to 120 px at ``scale`` 1)."""
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut()[40:220, 130:310])  # dlib's box (179, 83)-(266, 170) inside
    lfw = np.load(Path(data.__file__).parent / "lfw_subset.npy")[1]
    lfw = Image.fromarray((lfw * 255).astype(np.uint8)).convert("RGB")
    a, b = round(150 * scale), round(120 * scale)
    return np.asarray(astronaut.resize((a, a), Image.BICUBIC)), np.asarray(lfw.resize((b, b), Image.BICUBIC))


def render(size: tuple[int, int], placements: Sequence[tuple[np.ndarray, tuple[float, float] | None]]) -> np.ndarray:
    """A (H, W, 3) grey frame of ``size`` (W, H) with each sprite's top-left corner at its (x, y)
    (None: not shown; parts outside the frame are cut)."""
    width, height = size
    frame = np.full((height, width, 3), 110, np.uint8)
    for sprite, where in placements:
        if where is None:
            continue
        x, y = int(round(where[0])), int(round(where[1]))
        h, w = sprite.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = sprite[y0 - y : y1 - y, x0 - x : x1 - x]
    return frame


def standard_placements(t: float, duration: float = 20.0, size=(640, 360), scale: float = 1.0):
    """The benchmark's scene at ``t`` s: the astronaut crosses left to right in the first 40 %,
    leaves at the right edge, is away for 10 % and comes back from the right; the LFW face crosses
    right to left over the whole clip, below it, their paths crossing in the middle."""
    astronaut, lfw = sprites(scale)
    width, height = size
    u = t / duration
    if u < 0.4:
        a = (-0.1 * width + (u / 0.4) * 1.05 * width, 0.08 * height)
    elif u < 0.5:
        a = None
    else:
        a = (width - astronaut.shape[1] - (u - 0.5) / 0.5 * (width - astronaut.shape[1]) * 0.9, 0.08 * height)
    b = (width - lfw.shape[1] - u * (width - lfw.shape[1]), 0.5 * height)
    return [(astronaut, a), (lfw, b)]


def write_clip(
    path: str | Path,
    times: Sequence[float],
    draw: Callable[[float], np.ndarray],
    *,
    rotation: int = 0,
    codec: str = "libx264",
    options: dict | None = None,
    rate: int = 25,
) -> Path:
    """Write ``draw(t)`` for each time of ``times`` (seconds, increasing: any frame rate, variable
    too) as a video stream whose frames carry those times (1/1000 s time base). ``rotation``
    (degrees counter-clockwise, multiple of 90): the frames are stored turned the other way, with a
    display matrix that turns them back, as a phone stores a portrait video."""
    import av

    k = (rotation // 90) % 4
    first = draw(times[0])
    height, width = np.rot90(first, -k).shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for t in times:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(draw(t), -k)), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def standard_clip(path, seconds: float = 20.0, fps: int = 25, size=(640, 360), scale: float = 1.0) -> Path:
    """The benchmark's clip (``standard_placements``) of ``seconds`` at ``fps``."""
    times = [i / fps for i in range(round(seconds * fps))]
    return write_clip(path, times, lambda t: render(size, standard_placements(t, seconds, size, scale)), rate=fps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the clip to write (.mp4)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args(argv)
    standard_clip(args.out, args.seconds, args.fps)


if __name__ == "__main__":
    main()
