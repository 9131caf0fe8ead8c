"""Videos in, expressions over time out: decode (PyAV, the ``video`` extra), sample, find and cut
faces exactly as photos are (``faces.Finder``, ``photos.search_copy``), track them
(``tracking.Tracker``), predict with the ``Predictor`` (the same preprocessing and compiled call as
photos; faces of several frames in one call of ``predictor.batch_size``, padded: one compilation
for any video) and smooth per face. Frames are streamed: memory stays flat however long the video.

**[choice]** PyAV: a maintained binding of FFmpeg's libraries whose wheels bundle FFmpeg (every
codec FFmpeg decodes, libx264 to write browser-playable H.264; nothing to install beside pip),
which gives each frame's container time stamp (variable frame rates are right) and its display
matrix (phone videos' rotation). OpenCV's VideoCapture gives neither reliably, imageio-ffmpeg pipes
raw frames from an ffmpeg process without time stamps.

    >>> for row in video.records(predictor, "clip.mp4", fps=10):   # one dict per face per frame
    ...     print(row["frame"], row["timestamp"], row["face_id"], row["class"])
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import math
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from faml_jax.errors import ConfigError, DataError
from faml_jax.tracking import Smoother, Tracker

logger = logging.getLogger(__name__)

# **[choice]** 10 analysed frames per second: an expression's onset and apex last a few tenths of a
# second, so 10/s resolves them, while a 30 or 60 fps phone video costs 3-6x less than every frame.
DEFAULT_FPS = 10.0
DEFAULT_GAP = 1.0  # seconds a face may be missing and keep its id
# **[choice]** dlib's detector on the frame as it is (photos: doubled first): on a 640x360 frame
# 0.09 s instead of 0.52 s (this 2-core CPU), and it finds faces from about 80 px, the size of a
# face in a webcam or phone video; ``upsample=1`` finds faces from about 40 px.
DEFAULT_UPSAMPLE = 0
INSTALL = "pip install 'faml_jax[video]' (PyAV, FFmpeg bundled)"


def _av():
    try:
        return importlib.import_module("av")
    except ImportError:
        raise ConfigError(f"reading videos needs PyAV: {INSTALL}") from None


class DamagedVideoError(DataError):
    """Decoding stopped before the end the container declares; the rows before it are kept."""

    def __init__(self, message: str, frame: int, time: float | None):
        super().__init__(message)
        self.frame, self.time = frame, time


# ---------------------------------------------------------------------------------------------
# Inputs


def is_video(path: str | os.PathLike) -> bool:
    """Whether FFmpeg (through PyAV) opens ``path`` and finds a video stream in it (by content;
    callers ask Pillow first, so that a photo stays a photo)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video) and container.format.name not in IMAGE_FORMATS
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return False


# FFmpeg's demuxers of single pictures: such a file is an image for Pillow, or a failure.
IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "gif", "gif_pipe"}


def _is_photo(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def split_videos(files: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path], list[str]]:
    """(photos, videos, neither) of ``files`` (``inputs.input_files``' list), each recognised by its
    content: Pillow opens it (a photo), else FFmpeg finds a video stream in it (a video). One with
    an image suffix that neither opens stays a photo (the photo path reports it as unreadable); any
    other is one line in ``neither``."""
    from faml_jax.photos import IMAGE_SUFFIXES

    photos: list[Path] = []
    videos: list[Path] = []
    neither: list[str] = []
    for p in map(Path, files):
        if _is_photo(p):
            photos.append(p)
        elif _has_av() and is_video(p):
            videos.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            photos.append(p)
        else:
            hint = "" if _has_av() else f" (videos need PyAV: {INSTALL})"
            neither.append(f"{p}: neither an image Pillow opens nor a video FFmpeg decodes{hint}")
    return photos, videos, neither


def _has_av() -> bool:
    return importlib.util.find_spec("av") is not None


# ---------------------------------------------------------------------------------------------
# Decoding and sampling


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the video (0-based, every frame counted), its container
    time stamp in seconds, and its pixels ((H, W, 3) uint8 RGB, turned as the video is shown)."""

    index: int
    time: float
    image: np.ndarray


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container declares: size as shown, rotation (degrees counter-clockwise), average
    frame rate, duration (s) and frame count (None where unknown)."""

    path: str
    width: int
    height: int
    rotation: int
    fps: float | None
    duration: float | None
    frames: int | None

    def expected_frames(self, every: int | None, fps: float | None) -> int | None:
        """How many frames sampling will keep (for the progress bar), if the container says."""
        total = self.frames or (round(self.duration * self.fps) if self.duration and self.fps else None)
        if total is None:
            return None
        if every:
            return -(-total // every)
        return min(total, math.ceil(self.duration * fps)) if fps and self.duration else total


def _open(path):
    av = _av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise DataError(f"{path}: not a video FFmpeg can open ({error})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """The ``VideoInfo`` of ``path`` (its first frame is decoded for the rotation)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rotation = 0
        try:
            first = next(container.decode(stream))
            rotation = _quarter_turns(first.rotation) * 90
        except Exception:  # noqa: BLE001 - a video that does not decode is reported by frames()
            pass
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation % 180:
            width, height = height, width
        rate = float(stream.average_rate) if stream.average_rate else None
        duration = container.duration / 1e6 if container.duration else None
        return VideoInfo(str(path), width, height, rotation, rate, duration, stream.frames or None)
    finally:
        container.close()


def _quarter_turns(degrees) -> int:
    return int(round((degrees or 0) / 90)) % 4


def upright(image: np.ndarray, rotation) -> np.ndarray:
    """A decoded frame turned as the display matrix says (``rotation``: degrees counter-clockwise,
    PyAV's ``VideoFrame.rotation``), as EXIF orientation is undone for photos."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def check_sampling(every: int | None, fps: float | None) -> None:
    if every is not None and fps is not None:
        raise ConfigError("give --every N or --fps F, not both")
    if every is not None and every < 1:
        raise ConfigError(f"--every must be at least 1, got {every}")
    if fps is not None and not fps > 0:
        raise ConfigError(f"--fps must be positive, got {fps}")


def frames(path: str | os.PathLike, every: int | None = None, fps: float | None = None) -> Iterator[Frame]:
    """The sampled frames of the video ``path``, upright, with their container times: every
    ``every``-th frame, or the first frame in each 1/``fps`` of a second (default ``DEFAULT_FPS``).
    Decoding one frame at a time: nothing accumulates. A video that stops decoding, or ends before
    the duration its container declares, raises ``DamagedVideoError`` after its last good frame."""
    av = _av()
    if every is None and fps is None:
        fps = DEFAULT_FPS
    check_sampling(every, fps)
    container = _open(path)
    index, last_time, last_slot = -1, None, None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        declared = container.duration / 1e6 if container.duration else None
        try:
            for decoded in container.decode(stream):
                index += 1
                time = decoded.time if decoded.time is not None else (last_time or 0.0) + 1 / (rate or 25)
                last_time = float(time)
                if every is not None:
                    if index % every:
                        continue
                else:
                    slot = math.floor(last_time * fps + 1e-6)
                    if last_slot is not None and slot <= last_slot:
                        continue
                    last_slot = slot
                image = upright(decoded.to_ndarray(format="rgb24"), decoded.rotation)
                yield Frame(index, last_time, image)
        except (av.FFmpegError, OSError) as error:
            raise _damaged(path, index, last_time, f"decoding failed: {error}") from None
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if declared is not None and last_time is not None:
            interval = 1 / rate if rate else 0.04
            if last_time + 3 * interval < start + declared - interval:
                raise _damaged(path, index, last_time, f"the file ends before its declared {declared:.2f} s")
        if index < 0:
            raise _damaged(path, -1, None, "no frame decodes")
    finally:
        container.close()


def _damaged(path, index: int, time: float | None, reason: str) -> DamagedVideoError:
    where = f"after frame {index} ({time:.3f} s)" if time is not None else "before its first frame"
    return DamagedVideoError(f"{path}: stopped {where}: {reason}", index, time)


# ---------------------------------------------------------------------------------------------
# Faces over time


@dataclasses.dataclass
class Analysed:
    """One analysed frame (its image only when asked for, ``keep_images``) and its rows: one per
    face, or one row with ``face_id`` None when it has none."""

    frame: Frame
    rows: list[dict]


def columns(classes: Sequence[str], smoothed: bool) -> list[str]:
    """The table's columns (OpenFace's ``frame, face_id, timestamp, success`` names; a box, the
    detector's score, the decision, its confidence and every class's score; with smoothing the
    smoothed scores and decision after the raw ones)."""
    names = ["frame", "timestamp", "face_id", "success", "box_x0", "box_y0", "box_x1", "box_y1", "face_score"]
    names += ["class", "confidence", *[f"score_{c}" for c in classes]]
    if smoothed:
        names += ["smooth_class", "smooth_confidence", *[f"smooth_{c}" for c in classes]]
    return names


_END = object()


def analyse(
    predictor,
    path: str | os.PathLike,
    *,
    every: int | None = None,
    fps: float | None = None,
    smooth: float = 0.0,
    gap: float = DEFAULT_GAP,
    mode: str | None = None,
    upsample: int = DEFAULT_UPSAMPLE,
    finder=None,
    keep_images: bool = False,
    progress: bool = False,
) -> Iterator[Analysed]:
    """The analysed frames of the video ``path`` in order, with their rows (``columns``).

    Decoding, detection and tracking run in a thread ahead of the network (a queue of a few
    frames), so the device works while the next frames are decoded; faces of consecutive frames
    go through ``predictor.predict`` together, ``predictor.batch_size`` at a time (padded: one
    compiled shape). ``smooth``: seconds of each face's scores averaged (``tracking.Smoother``);
    ``gap``: seconds a face may be missing and keep its id; ``upsample``: the detector's (see
    ``DEFAULT_UPSAMPLE``; faces are cut as photos' are, ``faces.Finder``). A damaged video yields what decoded,
    then raises ``DamagedVideoError``."""
    from tqdm import tqdm

    from faml_jax import faces as face_module

    check_sampling(every, fps)
    if every is None and fps is None:
        fps = DEFAULT_FPS
    info = probe(path)
    finder = finder or face_module.Finder(mode or face_module.mode_for(predictor.dataset), upsample=upsample)
    smoother = Smoother(smooth) if smooth else None
    items: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(path, every, fps, gap, finder, keep_images, items, stop))
    thread.daemon = True
    thread.start()
    bar = tqdm(
        total=info.expected_frames(every, fps),
        desc=Path(path).name,
        unit="frame",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    pending: list = []
    try:
        while True:
            item = items.get()
            if item is _END or isinstance(item, BaseException):
                break
            pending.append(item)
            if sum(len(found) for _, found, _ in pending) >= predictor.batch_size or len(pending) >= 64:
                yield from _predicted(predictor, pending, smoother, bar)
                pending = []
        yield from _predicted(predictor, pending, smoother, bar)
        if isinstance(item, BaseException):
            raise item
    finally:
        bar.close()
        stop.set()
        while thread.is_alive():  # unblock the producer if it waits on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _produce(path, every, fps, gap, finder, keep_images, items: queue.Queue, stop: threading.Event) -> None:
    """Decode, find faces, track (in frame order): the producer thread of ``analyse``."""
    from faml_jax.photos import search_copy

    tracker = Tracker(gap)
    try:
        for frame in frames(path, every, fps):
            if stop.is_set():
                return
            found = finder.find(search_copy(frame.image), full=frame.image)
            ids = tracker.update([f.box for f in found], frame.time)
            kept = frame if keep_images else dataclasses.replace(frame, image=None)
            items.put((kept, [dataclasses.replace(f, landmarks=None) for f in found], ids))
        items.put(_END)
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
        items.put(error)


def _predicted(predictor, pending: list, smoother: Smoother | None, bar) -> Iterator[Analysed]:
    """Rows of ``pending`` (frame, faces, ids) after one ``predict`` of all their faces, padded
    to a multiple of the batch size (every compiled call has the same shape)."""
    crops = [f.crop for _, found, _ in pending for f in found]
    prediction = None
    if crops:
        b = predictor.batch_size
        padding = [np.zeros_like(crops[0])] * (-len(crops) % b)
        prediction = predictor.predict(crops + padding)
    classes = predictor.classes
    k = 0
    for frame, found, ids in pending:
        rows = []
        if not found:
            rows.append({"frame": frame.index, "timestamp": round(frame.time, 6), "face_id": None, "success": 0})
        for face, face_id in zip(found, ids):
            decided = int(prediction.decision[k])
            scores = prediction.scores[k]
            row = {
                "frame": frame.index,
                "timestamp": round(frame.time, 6),
                "face_id": int(face_id),
                "success": 1,
                **dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), (int(v) for v in face.box))),
                "face_score": round(face.score, 4),
                "class": classes[decided],
                "confidence": round(float(prediction.confidence[k]), 6),
                **{f"score_{c}": round(float(s), 6) for c, s in zip(classes, scores)},
            }
            if smoother is not None:
                smoothed = smoother.add(face_id, frame.time, scores)
                best = int(np.argmax(smoothed))
                row["smooth_class"] = classes[best]
                row["smooth_confidence"] = round(float(smoothed[best] / max(smoothed.sum(), 1e-12)), 6)
                row.update({f"smooth_{c}": round(float(s), 6) for c, s in zip(classes, smoothed)})
            rows.append(row)
            k += 1
        bar.update(1)
        yield Analysed(frame, rows)


def records(predictor, path: str | os.PathLike, **kwargs) -> Iterator[dict]:
    """The table's rows of the video ``path`` (``analyse``'s arguments), one dict per face per
    analysed frame and one per frame without a face: what a notebook iterates over."""
    for analysed in analyse(predictor, path, **kwargs):
        yield from analysed.rows
