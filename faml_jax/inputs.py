"""The files a user's inputs name (``experiments.predict IMAGE|VIDEO|FOLDER|GLOB ...``): photos
and videos, a folder's recognised by their content (``is_image``: Pillow; ``video.is_video``:
FFmpeg), the other files counted. Above ``photos`` and ``video``, which it asks.

    >>> files = inputs.input_files(["photos/", "clip.mp4"])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from faml_jax import video
from faml_jax.errors import DataError
from faml_jax.photos import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)


def is_image(path: Path) -> bool:
    """Whether a folder's file is taken as an image: a usual image suffix, or else content that
    Pillow recognises (its header only: a .gif, a file without a suffix)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True  # an image, refused with its size when it is read
    except (OSError, SyntaxError, ValueError):
        return False


def _is_video(path: Path) -> bool:
    """Whether a folder's file is a video (by content: FFmpeg finds a video stream; needs PyAV)."""
    return video._has_av() and video.is_video(path)


def input_files(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image and video files named by ``inputs``: files, folders (their images, ``is_image``, and
    videos, recognised by content too, ``video.is_video``; recursively, sorted; none under ``exclude``, e.g. the output folder of an earlier prediction;
    the other files counted in one logged line) and glob patterns. A file named, or matched, is
    taken whatever it holds (``predict_photos`` reports one it cannot read). An input that names
    nothing is a ``DataError`` naming it."""
    import glob

    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for given in map(str, inputs):
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not (skip is not None and p.resolve().is_relative_to(skip))
            )
            images, others = [], []
            for p in files:
                if is_image(p) or _is_video(p):
                    images.append(p)
                else:
                    others.append(p.relative_to(path).as_posix())
            videos = video._has_av()
            if not images:
                what = "an image Pillow opens or a video FFmpeg decodes" if videos else "one Pillow can open"
                raise DataError(
                    f"no image{' or video' if videos else ''} in {given}: none of its {len(files)} file(s) is {what}"
                )
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                what = "images Pillow can open nor videos FFmpeg decodes" if videos else "images Pillow can open"
                logger.info(f"{given}: {len(others)} file(s) passed over, not {what} ({shown})")
            found += images
        elif path.is_file():
            found.append(path)
        elif any(ch in given for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(given, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"no file matches {given}")
            found += matches
        else:
            raise DataError(f"{given} not found")
    return list(dict.fromkeys(found))  # each file once, in the order given
