"""AffectNet-7 and AffectNet-8, read from the folder as distributed (docs/method.md 1).

Two layouts are recognised:

* the original release::

      Manually_Annotated_file_lists/training.csv, validation.csv
      Manually_Annotated_Images/<subDirectory_filePath>          (or Manually_Annotated/Manually_Annotated_Images/)

  CSV columns ``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
  expression, valence, arousal``, with or without that header line. The images are the full
  photographs; ``crop=True`` (the default; ``--no-crop-faces`` turns it off) cuts out the face box
  given in the CSV.

* the re-distributed, cropped one::

      train_set/images/<id>.jpg   train_set/annotations/<id>_exp.npy   (and val_set/)

Expression codes 0..10 are neutral, happy, sad, surprise, fear, disgust, anger, contempt, none,
uncertain, no-face; AffectNet-8 keeps 0..7 and AffectNet-7 keeps 0..6 (class index = code). The
validation set is the test split.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from faml_jax.data.folders import DataError, FolderIndex, Problems, SplitIndex, missing, read_text
from faml_jax.errors import ConfigError

CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
CODE_NAMES = CLASSES + ("none", "uncertain", "no-face")
PAPER_SIZES = {7: {"train": 283901, "test": 3500}, 8: {"train": 287568, "test": 4000}}

LISTS = "Manually_Annotated_file_lists"
IMAGES = "Manually_Annotated_Images"
EXTRA_LEVEL = "Manually_Annotated"
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
NPY_SPLITS = {"train": "train_set", "test": "val_set"}


def classes(num_classes: int) -> tuple[str, ...]:
    if num_classes not in (7, 8):
        raise ConfigError(f"AffectNet has 7 or 8 classes, got {num_classes}")
    return CLASSES[:num_classes]


def read_index(data_dir: str | Path, num_classes: int, progress=None) -> FolderIndex:
    """Find the layout in ``data_dir`` and read its labels (``progress(iterable, total, text)``
    wraps the per-file reading of the cropped layout). Codes beyond the data set's classes are
    left out as ``Problems.excluded``; other problems are recorded, not raised."""
    names = classes(num_classes)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise missing(
            "AffectNet folder",
            [data_dir],
            f"--data-dir is the folder holding {LISTS}/ and {IMAGES}/ (original release) or train_set/ and val_set/",
        )
    list_dirs = [data_dir / LISTS, data_dir / EXTRA_LEVEL / LISTS]
    lists = next((d for d in list_dirs if d.is_dir()), None)
    if lists is not None:
        return _read_original(data_dir, lists, names)
    if (data_dir / NPY_SPLITS["train"]).is_dir():
        return _read_npy_layout(data_dir, names, progress)
    raise missing(
        "AffectNet label lists",
        list_dirs + [data_dir / NPY_SPLITS["train"] / "annotations"],
        "--data-dir is the folder of the original release or of train_set/ and val_set/",
    )


def _code(value: str) -> int | None:
    """An expression code, or None for anything that is not a whole number (text, a fraction,
    NaN, infinity; these are counted as labels out of range)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
MAX_COORDINATE = 2**31 - 1


def _box(row: list[str], column: dict[str, int], path: Path, number: int) -> list[int]:
    """A row's face box (x, y, width, height) in whole pixels; a value that is not a finite number
    of pixels is a ``DataError`` naming the CSV, the line and the column."""
    box = []
    for name in BOX_COLUMNS:
        text = row[column[name]].strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or abs(value) > MAX_COORDINATE:
            raise DataError(f"{path}:{number}: column {name} is {text!r}, not a number of pixels")
        box.append(int(round(value)))
    return box


def _keep(code: int | None, num_classes: int, problems: Problems, where: str) -> bool:
    """Whether an entry with this expression code belongs to the data set (recording why not)."""
    if code is None or not 0 <= code < len(CODE_NAMES):
        problems.out_of_range.append(where)
        return False
    if code >= num_classes:
        problems.excluded[CODE_NAMES[code]] = problems.excluded.get(CODE_NAMES[code], 0) + 1
        return False
    return True


def _in_code_order(excluded: dict[str, int]) -> dict[str, int]:
    return {name: excluded[name] for name in CODE_NAMES if name in excluded}


def _read_original(data_dir: Path, lists: Path, names: tuple[str, ...]) -> FolderIndex:
    image_dirs = [data_dir / IMAGES, data_dir / EXTRA_LEVEL / IMAGES, lists.parent / IMAGES]
    images = next((d for d in image_dirs if d.is_dir()), None)
    if images is None:
        raise missing("AffectNet images", list(dict.fromkeys(image_dirs)), "unpack Manually_Annotated_Images there")
    splits, problems, seen = {}, {}, set()
    for split, file_name in CSV_FILES.items():
        path = lists / file_name
        if not path.is_file():
            raise missing(f"AffectNet {split} list", [path])
        splits[split], problems[split] = _read_csv(path, images, len(names), seen)
    return FolderIndex(images.parent, "affectnet-original", names, splits, problems)


def _read_csv(path: Path, images: Path, num_classes: int, seen: set[str]) -> tuple[SplitIndex, Problems]:
    problems = Problems()
    rel, files, labels, boxes = [], [], [], []
    column = {name: i for i, name in enumerate(COLUMNS)}
    widths: dict[int, int] = {}  # fields per row -> rows
    header = None
    # read_text drops a BOM (not part of the header) and refuses other encodings.
    for number, row in enumerate(csv.reader(io.StringIO(read_text(path), newline="")), 1):
        if not row:
            continue
        if number == 1 and row[0].strip() == COLUMNS[0]:  # the header line
            header = [c.strip() for c in row]
            lacking = [
                c
                for c in ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
                if c not in header
            ]
            if lacking:
                raise DataError(f"{path}:1: header lacks column(s) {', '.join(lacking)}")
            column = {name: header.index(name) for name in header}
            continue
        where = f"{path.name} line {number}"
        widths[len(row)] = widths.get(len(row), 0) + 1
        if len(row) <= max(column["expression"], column["face_height"]):
            raise DataError(f"{path}:{number}: expected the columns {', '.join(COLUMNS)}; got {len(row)} field(s)")
        problems.listed += 1
        name = row[column["subDirectory_filePath"]].strip()
        code_text = row[column["expression"]].strip()
        if not _keep(_code(code_text), num_classes, problems, f"{where}: expression {code_text!r}"):
            continue
        if name in seen:
            problems.duplicates.append(f"{where}: {name}")
            continue
        seen.add(name)
        box = _box(row, column, path, number)
        file = images / name
        if not os.path.isfile(file):
            problems.absent.append(str(file))
            continue
        rel.append(name)
        files.append(str(file))
        labels.append(_code(code_text))
        boxes.append(box)
    if problems.listed and len(problems.out_of_range) > problems.listed / 2:
        expected = len(header) if header else len(COLUMNS)
        shapes = ", ".join(f"{n} with {w} fields" for w, n in sorted(widths.items()))
        raise DataError(
            f"{path}: {len(problems.out_of_range)} of {problems.listed} rows have no valid expression code in column "
            f"{column['expression'] + 1}: the columns look shifted (rows: {shapes}; "
            + (
                f"the header names {expected}"
                if header
                else f"no header line, so AffectNet's {expected} columns {', '.join(COLUMNS)} are expected"
            )
            + ")"
        )
    problems.excluded = _in_code_order(problems.excluded)
    return SplitIndex(rel, files, labels, np.asarray(boxes, np.int32).reshape(-1, 4)), problems


def _sort_key(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _read_npy_layout(data_dir: Path, names: tuple[str, ...], progress) -> FolderIndex:
    splits, problems = {}, {}
    for split, folder in NPY_SPLITS.items():
        images, annotations = data_dir / folder / "images", data_dir / folder / "annotations"
        for d in (images, annotations):
            if not d.is_dir():
                raise missing(f"AffectNet {split} {d.name}", [d])
        p = problems[split] = Problems()
        stems = sorted(
            (e.name[: -len("_exp.npy")] for e in os.scandir(annotations) if e.name.endswith("_exp.npy")), key=_sort_key
        )
        on_disk = {e.name for e in os.scandir(images) if e.is_file()}
        rel, files, labels = [], [], []
        iterable = progress(stems, len(stems), f"reading {split} labels") if progress else stems
        for stem in iterable:
            p.listed += 1
            label_file = annotations / f"{stem}_exp.npy"
            try:
                raw = np.load(label_file, allow_pickle=False).item()
                code = _code(str(raw))
            except (OSError, ValueError) as error:
                raise DataError(f"cannot read label file {label_file}: {error}") from None
            if not _keep(code, len(names), p, f"{label_file.name}: expression {raw!r}"):
                on_disk.discard(f"{stem}.jpg")
                continue
            image = f"{stem}.jpg"
            if image not in on_disk:
                p.absent.append(str(images / image))
                continue
            on_disk.discard(image)
            rel.append(f"{folder}/images/{image}")
            files.append(str(images / image))
            labels.append(code)
        p.unlabelled.extend(str(images / n) for n in sorted(on_disk))
        p.excluded = _in_code_order(p.excluded)
        splits[split] = SplitIndex(rel, files, labels)
    return FolderIndex(data_dir, "affectnet-npy", names, splits, problems)
