"""Small data set folders in the exact layouts of the real RAF-DB and AffectNet releases, with
generated JPEG faces (``synthetic.render_face``), for tests and loading benchmarks.

File names, label file formats and CSV columns are those of the distributed data sets (see
``rafdb`` and ``affectnet``); the faces show the labelled expression, so a network can learn them.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from faml_jax.data import affectnet, rafdb, synthetic

# The synthetic renderer's expression for each AffectNet code (none/uncertain/no-face: neutral).
_AFFECTNET_TO_SYNTHETIC = {
    "neutral": "neutral",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "anger": "anger",
    "contempt": "disgust",
}


def face(expression: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 face showing one of ``synthetic.CLASSES`` (others: neutral)."""
    label = (
        synthetic.CLASSES.index(expression) if expression in synthetic.CLASSES else synthetic.CLASSES.index("neutral")
    )
    geometry = synthetic.CLASS_MEANS[label] + rng.normal(0, 0.2, len(synthetic.FEATURES))
    return synthetic.render_face(geometry, rng, size, occlusion=0.0)


def save_jpeg(pixels: np.ndarray, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def write_rafdb(
    folder: str | Path, train_codes: Sequence[int], test_codes: Sequence[int], size: int = 100, seed: int = 0
) -> Path:
    """RAF-DB basic under ``folder/basic``: ``EmoLabel/list_patition_label.txt`` (codes 1..7)
    and ``Image/aligned/<name>_aligned.jpg``. Returns the ``basic`` folder."""
    basic = Path(folder) / "basic"
    rng = np.random.default_rng(seed)
    lines = []
    for prefix, codes, digits in (("train", train_codes, 5), ("test", test_codes, 4)):
        for i, code in enumerate(codes, 1):
            name = f"{prefix}_{i:0{digits}d}.jpg"
            lines.append(f"{name} {code}\n")
            pixels = face(rafdb.CODE_NAMES.get(int(code), "neutral"), size, rng)
            save_jpeg(pixels, rafdb.image_path(basic, name))
    label_file = basic / rafdb.LABEL_FILE
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(lines))
    return basic


def _photo(code: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """A ``size``-pixel photograph with a face inside a box: (pixels, [x, y, w, h])."""
    photo = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR))
    side = int(size * rng.uniform(0.45, 0.7))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
    photo = photo.copy()
    photo[y : y + side, x : x + side] = face(
        _AFFECTNET_TO_SYNTHETIC.get(affectnet.CODE_NAMES[code], "neutral"), side, rng
    )
    return photo, [x, y, side, side]


def write_affectnet_original(
    folder: str | Path,
    train_codes: Sequence[int],
    test_codes: Sequence[int],
    size: int = 400,
    seed: int = 0,
    header: bool = True,
    extra_level: bool = False,
) -> Path:
    """AffectNet's original release under ``folder``: ``Manually_Annotated_file_lists/
    {training,validation}.csv`` (the nine columns; the header line when ``header``) and
    ``Manually_Annotated_Images/<dir>/<sha1>.jpg`` (under ``Manually_Annotated/`` when
    ``extra_level``). Images are photographs with the face in the CSV's box. Returns ``folder``."""
    folder = Path(folder)
    base = folder / affectnet.EXTRA_LEVEL if extra_level else folder
    rng = np.random.default_rng(seed)
    for split, codes in (("train", train_codes), ("test", test_codes)):
        rows = []
        for i, code in enumerate(codes):
            digest = hashlib.sha1(f"{split}{i}".encode()).hexdigest()
            rel = f"{1 + i % 3}/{digest}.jpg"
            pixels, box = _photo(int(code), size, rng)
            save_jpeg(pixels, base / affectnet.IMAGES / rel)
            landmarks = ";".join(f"{v:.2f}" for v in rng.uniform(0, size, 136))
            rows.append([rel, *box, landmarks, int(code), f"{rng.uniform(-1, 1):.6f}", f"{rng.uniform(-1, 1):.6f}"])
        path = base / affectnet.LISTS / affectnet.CSV_FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            if header:
                writer.writerow(affectnet.COLUMNS)
            writer.writerows(rows)
    return folder


def write_affectnet_npy(
    folder: str | Path, train_codes: Sequence[int], test_codes: Sequence[int], size: int = 224, seed: int = 0
) -> Path:
    """AffectNet's cropped layout under ``folder``: ``{train,val}_set/images/<id>.jpg`` and
    ``annotations/<id>_{exp,val,aro,lnd}.npy`` (the expression stored as a string, as released).
    Returns ``folder``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for split, codes in (("train", train_codes), ("test", test_codes)):
        root = folder / affectnet.NPY_SPLITS[split]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        for i, code in enumerate(codes):
            name = affectnet.CODE_NAMES[int(code)] if 0 <= int(code) < len(affectnet.CODE_NAMES) else "neutral"
            save_jpeg(face(_AFFECTNET_TO_SYNTHETIC.get(name, "neutral"), size, rng), root / "images" / f"{i}.jpg")
            np.save(root / "annotations" / f"{i}_exp.npy", np.array(str(int(code))))
            np.save(root / "annotations" / f"{i}_val.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            np.save(root / "annotations" / f"{i}_aro.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            np.save(root / "annotations" / f"{i}_lnd.npy", rng.uniform(0, size, 136).astype(np.float32))
    return folder
