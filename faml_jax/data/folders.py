"""Image lists read from a data set's own folders, what was wrong with them, and decoding.

The readers of the distributed layouts (``rafdb``, ``affectnet``) turn label files into a
``SplitIndex`` per split (file, label, optional face box) and a ``Problems`` record of what they
left out and why: labels out of range, duplicate entries, images listed but absent, images without
a label, and (after ``check_images``) images that cannot be decoded. Nothing is dropped silently:
``Problems.lines`` is printed when a data set is opened and stored with prepared data.

``decode_image`` is the one way an image becomes pixels, whether it is read from its file
(``FolderSource``) or from prepared records (``faml_jax.data.prepared``), so both give identical
examples. JPEGs are decoded by libjpeg-turbo through ``simplejpeg`` with the accurate DCT and
upsampling (the pixels Pillow gives, about twice as fast, and without the GIL); anything else,
and any JPEG it refuses, through Pillow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from faml_jax.errors import DataError  # noqa: F401  (defined with the library's other errors; re-exported)

SPLITS = ("train", "test")
EXAMPLES_SHOWN = 5  # entries named per kind of problem in messages


class CorruptImageError(DataError):
    """An image file that cannot be read or decoded (its path is in the message)."""


def read_text(path: Path) -> str:
    """A label file's text (UTF-8, a byte-order mark dropped); another encoding is a
    ``DataError`` naming the file."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise DataError(
            f"{path} is not UTF-8 text ({'UTF-16, by its byte-order mark' if utf16 else error.reason} "
            f"at byte {error.start}): save it as UTF-8"
        ) from None


def missing(what: str, expected: Sequence[Path], hint: str = "") -> DataError:
    """The error for a missing file or folder: what it is and every place it was looked for."""
    places = " or ".join(str(p) for p in expected)
    return DataError(f"{what} not found: expected {places}" + (f"; {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# Decoding


MAX_PIXELS = 80_000_000  # default limit on an image's pixels (width x height), below Pillow's own bomb check
REDUCE_FROM = 2  # a JPEG is decoded at reduced scale only when its face is at least twice the size needed


class ImageTooLargeError(CorruptImageError):
    """An image with more pixels than the limit (``max_pixels``)."""


def max_pixels() -> int:
    """The pixel limit of ``decode_image``: ``$FAML_JAX_MAX_PIXELS`` if set, else ``MAX_PIXELS``."""
    value = os.environ.get("FAML_JAX_MAX_PIXELS")
    if value is None:
        return MAX_PIXELS
    try:
        limit = int(float(value))
        if limit < 1:
            raise ValueError
    except (ValueError, OverflowError):
        raise DataError(f"FAML_JAX_MAX_PIXELS={value!r} is not a positive number of pixels") from None
    return limit


def decode_image(
    data: bytes, where: str, box: Sequence[int] | None = None, *, min_size: int | None = None
) -> np.ndarray:
    """Decode image file bytes to (H, W, 3) uint8 RGB (grey and RGBA images are converted; 16-bit
    images are scaled to 8 bits by their high byte, as Pillow does for 16-bit colour).

    ``box`` = (x, y, width, height) in pixels crops the face (clamped to the image; AffectNet's
    face boxes may reach past the border). ``min_size``: the smallest side the face (the box, or
    the whole image) is needed at; a JPEG whose face is at least ``REDUCE_FROM`` times larger is
    decoded at reduced scale by libjpeg's DCT scaling (1/8 steps), its face still at least
    ``min_size`` on its shorter side (the box is scaled with it). ``where`` names the image in
    errors: a file that is not a decodable image, or truncated, is a ``CorruptImageError``, never a
    silent black or white image; one of more pixels than ``max_pixels()`` is an
    ``ImageTooLargeError``, refused before it is decoded.
    """
    pixels, scale = _decode(data, where, box, min_size)
    if box is None:
        return pixels
    x, y, w, h = (int(v) for v in box)
    if w < 2 or h < 2:
        raise CorruptImageError(
            f"face box (x={x}, y={y}, w={w}, h={h}) of image {where} is too small: "
            "a face box needs a width and height of 2 pixels or more"
        )
    height, width = pixels.shape[:2]
    sx, sy = scale
    x0, y0 = max(round(x * sx), 0), max(round(y * sy), 0)
    x1, y1 = min(round((x + w) * sx), width), min(round((y + h) * sy), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        full = (round(width / sx), round(height / sy))
        raise CorruptImageError(
            f"face box (x={x}, y={y}, w={w}, h={h}) of image {where} lies outside its {full[0]}x{full[1]} pixels"
        )
    return pixels[y0:y1, x0:x1]


def decode_photo(data: bytes, where: str, min_size: int | None = None) -> tuple[np.ndarray, float]:
    """A whole photo as ``decode_image`` decodes it, and the scale it was decoded at (decoded
    width / the file's width: 1 unless a large JPEG was decoded at reduced scale for ``min_size``)."""
    pixels, (sx, _) = _decode(data, where, None, min_size)
    return pixels, sx


def _decode(data: bytes, where: str, box, min_size: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    limit = max_pixels()
    decoded = _decode_jpeg(data, where, box, min_size, limit)
    return decoded if decoded is not None else (_decode_other(data, where, limit), (1.0, 1.0))


def _too_large(where: str, width: int, height: int, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {where} is {width}x{height} pixels ({width * height / 1e6:.4g} megapixels), "
        f"over the limit of {limit / 1e6:.4g} (set FAML_JAX_MAX_PIXELS to raise it)"
    )


def _decode_jpeg(data: bytes, where: str, box, min_size: int | None, limit: int):
    """A JPEG's ((H, W, 3) uint8 RGB pixels, (x scale, y scale)) by libjpeg-turbo (equal to
    Pillow's at full scale, tested), or None for anything else, a CMYK JPEG, or one it cannot
    decode (Pillow then decodes it or names the fault). Truncated data is an error here too
    (``strict``), never a partly grey image."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr", "RGB"):
            return None
    except ValueError:
        return None
    if width * height > limit:
        raise _too_large(where, width, height, limit)
    minimum = {}
    if min_size:
        if box is None:
            face = min(width, height)
        else:  # the part of the box inside the image: what is cut out
            x, y, w, h = (int(v) for v in box)
            face = max(min(min(x + w, width) - max(x, 0), min(y + h, height) - max(y, 0)), 1)
        if face >= REDUCE_FROM * min_size:
            factor = (min_size + 1) / face  # one pixel spare for the box's rounding
            minimum = dict(min_height=int(np.ceil(height * factor)), min_width=int(np.ceil(width * factor)))
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True, **minimum
        )
    except ValueError:
        return None
    return pixels, (pixels.shape[1] / width, pixels.shape[0] / height)


def _decode_other(data: bytes, where: str, limit: int) -> np.ndarray:
    """Any image Pillow reads, as (H, W, 3) uint8 RGB; 16-bit greyscale (modes "I;16" and "I") by
    its high byte (Pillow's own conversion clips it to white); 32-bit integer images only when
    their values fit 16 bits."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limit:
                raise _too_large(where, image.width, image.height, limit)
            if image.mode.startswith("I") or image.mode == "F":
                grey = np.asarray(image)  # decodes the whole file: truncation fails here
                if image.mode == "F" or grey.min() < 0 or grey.max() > 65535:
                    raise CorruptImageError(
                        f"cannot decode image {where}: {image.mode} pixels from {grey.min()} to "
                        f"{grey.max()} are not 8- or 16-bit grey levels; save it as an 8-bit image"
                    )
                grey = grey.astype(np.uint32) >> 8  # 16-bit levels (Pillow's "I" holds them too: 16-bit PGM)
                return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"))  # decodes the whole file: truncation fails here
    except CorruptImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        message = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error)) or type(error).__name__
        if isinstance(error, Image.UnidentifiedImageError):
            message = _tiff_layout(data) or "not an image format Pillow can read"
        raise CorruptImageError(f"cannot decode image {where}: {message}") from None


TIFF_SAMPLES = {1: "unsigned-integer", 2: "signed-integer", 3: "floating-point"}  # tag 339, SampleFormat
TIFF_COLOURS = {0: "grey", 1: "grey", 2: "RGB", 3: "palette", 5: "CMYK", 6: "YCbCr"}  # tag 262, Photometric


def _tiff_layout(data: bytes) -> str | None:
    """What a TIFF that Pillow cannot identify holds, from its first directory (e.g. RGBA of
    32-bit floats, a layout Pillow has no mode for); None for anything else."""
    from PIL import TiffImagePlugin

    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    try:
        tags = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = io.BytesIO(data)
        stream.seek(tags.next)
        tags.load(stream)
        samples = int(tags.get(277, 1))
        bits = "/".join(str(b) for b in sorted(set(tags.get(258, (1,)))))
        kind = "/".join(sorted({TIFF_SAMPLES.get(k, f"format-{k}") for k in tags.get(339, (1,))}))
        colours = TIFF_COLOURS.get(tags.get(262), "unknown colour") + ("A" if tags.get(338) else "")
    except (OSError, ValueError, TypeError, KeyError, struct.error):  # a damaged header: Pillow's refusal says enough
        return None
    return (
        f"a TIFF of {bits}-bit {kind} {colours} pixels ({samples} samples each), a layout Pillow cannot read; "
        "save it as 8-bit RGB or grey"
    )


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; an unreadable file is a ``CorruptImageError`` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise CorruptImageError(f"cannot read image {path}: {error.strerror or error}") from None


# ---------------------------------------------------------------------------------------------
# What a reader found


@dataclasses.dataclass(eq=False)
class SplitIndex:
    """The images of one split, in the label file's order.

    Attributes:
      names: each image's name relative to the data set folder (unique; the key of prepared data).
      files: each image's path.
      labels: int32 class indices in the project's class order.
      boxes: (n, 4) int32 face boxes (x, y, width, height), or None when the layout has none.
    """

    names: list[str]
    files: list[str]
    labels: np.ndarray
    boxes: np.ndarray | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if not len(self.names) == len(self.files) == len(self.labels):
            raise ValueError("names, files and labels differ in length")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, np.int32).reshape(len(self.labels), 4)

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, indices: Iterable[int]) -> SplitIndex:
        """This index without the given positions (order kept)."""
        drop = set(int(i) for i in indices)
        keep = [i for i in range(len(self)) if i not in drop]
        return SplitIndex(
            [self.names[i] for i in keep],
            [self.files[i] for i in keep],
            self.labels[keep],
            None if self.boxes is None else self.boxes[keep],
        )

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes).astype(np.int64)

    def image(self, i: int, crop: bool = False, min_size: int | None = None) -> np.ndarray:
        """Image ``i`` read from its file and decoded (``decode_image``, at reduced scale when
        much larger than ``min_size``), face-cropped when ``crop`` and the layout has boxes."""
        box = self.boxes[i] if crop and self.boxes is not None else None
        return decode_image(read_bytes(self.files[i]), self.files[i], box, min_size=min_size)


@dataclasses.dataclass
class Problems:
    """What a reader left out of one split, by kind; each list holds one entry per case (a line
    reference or a path, with the reason), so messages can name them.

    Attributes:
      listed: entries in the label file (or label files found).
      excluded: entries left out by the data set's definition, by class code name (AffectNet's
        none/uncertain/no-face, and contempt for AffectNet-7): expected, not errors.
      out_of_range: labels that are no class code of the data set.
      duplicates: entries naming an image already listed (the first entry is kept).
      conflicts: entries naming an image already listed with another label (the first is kept).
      absent: images listed but not on disk.
      unlabelled: images on disk without a label (layouts with one label file per image).
      bad_images: images that could not be read or decoded (skipped under ``skip_bad_images``).
    """

    listed: int = 0
    excluded: dict[str, int] = dataclasses.field(default_factory=dict)
    out_of_range: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    absent: list[str] = dataclasses.field(default_factory=list)
    unlabelled: list[str] = dataclasses.field(default_factory=list)
    bad_images: list[str] = dataclasses.field(default_factory=list)

    KINDS = {
        "out_of_range": "labels out of range",
        "duplicates": "duplicate entries",
        "conflicts": "images listed again with a conflicting label, the first kept",
        "absent": "images listed but absent",
        "unlabelled": "images without a label",
        "bad_images": "unreadable or corrupt images skipped",
    }

    def lines(self, split: str) -> list[str]:
        """One line per kind of problem found (none when the split is clean)."""
        out = []
        if self.excluded:
            parts = ", ".join(f"{n} {name}" for name, n in self.excluded.items())
            out.append(f"{split}: left out by the data set's definition: {parts}")
        for field, title in self.KINDS.items():
            entries = getattr(self, field)
            if entries:
                shown = "; ".join(entries[:EXAMPLES_SHOWN]) + ("; ..." if len(entries) > EXAMPLES_SHOWN else "")
                out.append(f"{split}: {len(entries)} {title} ({shown})")
        return out

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Problems:
        return cls(**values)


@dataclasses.dataclass
class FolderIndex:
    """A data set found in a folder: its class names, the index and problems of each split."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    splits: dict[str, SplitIndex]
    problems: dict[str, Problems]

    @property
    def has_boxes(self) -> bool:
        return all(s.boxes is not None for s in self.splits.values())


def training_class_weights(classes: Sequence[str], counts, where: str) -> np.ndarray:
    """The class weights of docs/method.md 1 from the training split's class counts; a class without a
    training image is an error naming it (it could neither be learnt nor weighted)."""
    from faml_jax.losses import class_weights

    absent = [c for c, n in zip(classes, counts) if n == 0]
    if absent:
        raise DataError(f"{where} has no training image of class(es) {', '.join(absent)}")
    return class_weights(counts)


# ---------------------------------------------------------------------------------------------
# Checking every image


def progress_bar(iterable, total: int, description: str):
    """A tqdm bar over per-image work (shown on terminals only)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="img", disable=None, leave=False)


def check_images(
    index: SplitIndex,
    crop: bool,
    num_threads: int = 4,
    progress: Callable[[Iterable, int, str], Iterable] | None = None,
    description: str = "checking images",
) -> list[tuple[int, str]]:
    """Read and decode every image of ``index`` (cropped when ``crop``), on ``num_threads``
    threads (PIL releases the GIL while decoding). Returns ``(position, message)`` for each image
    that fails, in order. ``progress(iterable, total, description)`` wraps the work (a tqdm)."""

    def check(i: int) -> str | None:
        try:
            index.image(i, crop)
        except CorruptImageError as error:
            return str(error)
        return None

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        results = pool.map(check, range(len(index)), chunksize=64)
        if progress is not None:
            results = progress(results, len(index), description)
        return [(i, message) for i, message in enumerate(results) if message is not None]


def drop_bad_images(index: FolderIndex, crop: bool, skip: bool, num_threads: int = 4, progress=None) -> None:
    """Check every image of every split of ``index``; with ``skip``, leave the bad ones out of
    ``index.splits`` (recorded in ``index.problems``), otherwise fail naming them all."""
    bad = {
        split: check_images(index.splits[split], crop, num_threads, progress, f"checking {split} images")
        for split in index.splits
    }
    if any(bad.values()) and not skip:
        messages = [message for split in bad for _, message in bad[split]]
        counts = ", ".join(f"{len(b)} {split}" for split, b in bad.items() if b)
        raise CorruptImageError(
            f"unreadable or corrupt images ({counts}): "
            + "; ".join(messages[:EXAMPLES_SHOWN])
            + (" ..." if len(messages) > EXAMPLES_SHOWN else "")
            + "; remove or replace them, or pass --skip-bad-images to leave them out"
        )
    for split, found in bad.items():
        index.problems[split].bad_images.extend(message for _, message in found)
        index.splits[split] = index.splits[split].without(i for i, _ in found)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource:
    """Random access to one split's images, read from their files: ``source[i] ->
    {"image": uint8 (H, W, 3), "label": int32}``, cut to its face box when ``crop`` and the layout
    has boxes (a layout without boxes holds faces already and is read as it is). ``min_size``: the
    side the pipeline resizes faces to (a large JPEG is then decoded at reduced scale,
    ``decode_image``)."""

    index: SplitIndex
    crop: bool = False
    min_size: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """Every example's label (int32), without reading an image."""
        return self.index.labels

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        try:
            image = self.index.image(i, self.crop, self.min_size)
        except CorruptImageError as error:
            raise CorruptImageError(
                f"{error} (--skip-bad-images checks every image first and leaves out unreadable ones)"
            ) from None
        return {"image": image, "label": np.int32(self.index.labels[i])}
