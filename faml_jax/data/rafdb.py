"""RAF-DB (basic), read from the folder as distributed (docs/method.md 1).

Layout::

    basic/EmoLabel/list_patition_label.txt     "train_00001.jpg 5", "test_0001.jpg 1" (sic: patition)
    basic/Image/aligned/train_00001_aligned.jpg  aligned 100x100 faces

The split is the file name's prefix. Label codes 1..7 are surprise, fear, disgust, happiness,
sadness, anger, neutral; they are mapped to ``CLASSES`` (alphabetical, the paper's table order).
"""

from __future__ import annotations

from pathlib import Path

from faml_jax.data.folders import DataError, FolderIndex, Problems, SplitIndex, missing, read_text

CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
CODE_NAMES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
CODE_TO_CLASS = {code: CLASSES.index(name) for code, name in CODE_NAMES.items()}
PAPER_SIZES = {"train": 12271, "test": 3068}

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
IMAGE_DIR = Path("Image") / "aligned"
PREFIXES = {"train_": "train", "test_": "test"}


def find_root(data_dir: str | Path) -> Path:
    """The ``basic`` folder: ``data_dir`` itself or its ``basic`` subfolder."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise missing("RAF-DB folder", [data_dir], "--data-dir is RAF-DB's `basic` folder or its parent")
    candidates = [data_dir, data_dir / "basic"]
    for root in candidates:
        if (root / LABEL_FILE).is_file():
            if not (root / IMAGE_DIR).is_dir():
                raise missing("RAF-DB's aligned images", [root / IMAGE_DIR], "unpack basic/Image/aligned.zip there")
            return root
    raise missing(
        "RAF-DB label file", [c / LABEL_FILE for c in candidates], "--data-dir is RAF-DB's `basic` folder or its parent"
    )


def image_path(root: Path, name: str) -> Path:
    """``train_00001.jpg`` -> ``<root>/Image/aligned/train_00001_aligned.jpg``."""
    stem = name.rsplit(".", 1)[0]
    return root / IMAGE_DIR / f"{stem}_aligned.jpg"


def read_index(data_dir: str | Path) -> FolderIndex:
    """Read the label file; every line's image is looked up on disk.

    A line that is not ``<name> <code>`` or whose name has no train_/test_ prefix is an error
    naming the line (the file is not RAF-DB's); codes outside 1..7, repeated names (with the same
    label, or a conflicting one: the first is kept) and images listed but absent are left out and
    recorded in the split's ``Problems``.
    """
    root = find_root(data_dir)
    label_file = root / LABEL_FILE
    entries = {split: ([], [], []) for split in PREFIXES.values()}
    problems = {split: Problems() for split in PREFIXES.values()}
    seen: dict[str, tuple[int, int]] = {}  # name -> (line, code) of its first valid entry
    for number, line in enumerate(read_text(label_file).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{number}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected '<image name> <label 1-7>', got {line.strip()!r}")
        name, code = fields
        split = next((s for prefix, s in PREFIXES.items() if name.startswith(prefix)), None)
        if split is None:
            raise DataError(f"{where}: image name {name!r} starts with neither train_ nor test_")
        p = problems[split]
        p.listed += 1
        try:
            label = CODE_TO_CLASS[int(code)]
        except (ValueError, KeyError):
            p.out_of_range.append(f"line {number}: {name} label {code!r}")
            continue
        if name in seen:
            first, first_code = seen[name]
            if first_code == int(code):
                p.duplicates.append(f"line {number}: {name}")
            else:
                p.conflicts.append(
                    f"{where}: {name} labelled {int(code)} ({CODE_NAMES[int(code)]}), but "
                    f"{first_code} ({CODE_NAMES[first_code]}) on line {first}"
                )
            continue
        seen[name] = (number, int(code))
        path = image_path(root, name)
        if not path.is_file():
            p.absent.append(str(path))
            continue
        names, files, labels = entries[split]
        names.append(name)
        files.append(str(path))
        labels.append(label)
    splits = {split: SplitIndex(*entries[split]) for split in entries}
    return FolderIndex(root, "rafdb-basic", CLASSES, splits, problems)
