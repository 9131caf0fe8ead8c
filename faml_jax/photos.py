"""Photos and folders in, predictions out: what ``python -m experiments.predict`` runs on top of a
``predict.Predictor``. Image files (found by ``inputs.input_files``) are read upright
(``read_photo``: EXIF orientation undone), their faces found and cut as the run's data set shows
faces (``predict_photos``, ``faml_jax.faces``), and the records written as CSV, JSON, annotated
photos and attention maps (``write_predictions``, ``write_maps``).

    >>> results = photos.predict_photos(predictor, inputs.input_files(["photos/"]))
    >>> photos.write_predictions("predictions", results, predictor, overwrite=True)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faml_jax.errors import ConfigError, DataError
from faml_jax.predict import Prediction, Predictor
from faml_jax.versions import stamped
from faml_jax.workdir import WorkdirLock, check_replaceable, recognise_listed
from faml_jax.writer import folder_written_whole, write_atomic, write_json

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FACE_SOURCES = ("detect", "aligned")


# Photos whose shorter side is at least twice this are searched for faces in a copy reduced by a
# whole factor to at least this side (a face small enough to be lost there is below what the
# detector finds anyway: an 8000 x 8000 photo is searched at 2000 x 2000); the faces found are cut
# from the photo at full resolution. Annotated photos are drawn at the same reduced scale.
PHOTO_MIN_SIDE = 1600


def search_copy(photo: np.ndarray) -> np.ndarray:
    """``photo`` reduced by the largest whole factor that keeps its shorter side at least
    ``PHOTO_MIN_SIDE`` (box filter, Pillow's ``reduce``), or ``photo`` itself."""
    from PIL import Image

    factor = min(photo.shape[:2]) // PHOTO_MIN_SIDE
    return np.asarray(Image.fromarray(photo).reduce(factor)) if factor >= 2 else photo


def read_photo(path: str | os.PathLike, min_size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, upright as its EXIF orientation says (phone photos);
    ``data.folders.CorruptImageError`` naming an unreadable one. ``min_size``: see
    ``read_photo_scaled``."""
    return read_photo_scaled(path, min_size)[0]


def read_photo_scaled(path: str | os.PathLike, min_size: int | None = None) -> tuple[np.ndarray, float]:
    """``read_photo`` and the scale it was decoded at: a JPEG whose shorter side is at least
    twice ``min_size`` is decoded at reduced scale, its shorter side still at least ``min_size``
    (``data.folders.decode_photo``); scale = decoded / the file's pixels."""
    from faml_jax.data.folders import read_bytes

    return photo_from_bytes(read_bytes(path), str(path), min_size)


def photo_from_bytes(payload: bytes, where: str, min_size: int | None = None) -> tuple[np.ndarray, float]:
    """``read_photo_scaled`` of an image file's bytes (the served model's uploads): ``where``
    names it in errors."""
    import io

    from PIL import Image, ImageOps

    from faml_jax.data.folders import decode_photo

    pixels, scale = decode_photo(payload, where, min_size)
    with Image.open(io.BytesIO(payload)) as image:
        exif = image.getexif()
    if exif.get(0x0112, 1) in (None, 1):
        return pixels, scale
    decoded = Image.fromarray(pixels)
    decoded.info["exif"] = exif.tobytes()  # the orientation Pillow's exif_transpose reads and undoes
    return np.asarray(ImageOps.exif_transpose(decoded)), scale


@dataclasses.dataclass
class PhotoResults:
    """What ``predict_photos`` found: one record per face (file, face index, box, landmarks, the
    decision, its confidence, every class's score, every network's top-1), the crops the
    networks saw (in record order), the files without a face and the unreadable files."""

    records: list[dict]
    crops: list[np.ndarray]
    no_face: list[str]
    failures: list[tuple[str, str]]
    prediction: Prediction | None


def predict_photos(
    predictor: Predictor,
    files: Sequence[str | os.PathLike],
    *,
    faces: str = "detect",
    mode: str | None = None,
    finder=None,
    progress: bool = False,
) -> PhotoResults:
    """Find the faces in ``files`` and predict them (``faces="detect"``), or take every file as
    one face already cut out (``"aligned"``). ``mode``: how detected faces are cut ("align" or
    "box"; default: as the run's data set, ``faces.mode_for``). Unreadable files are listed in
    ``failures`` (the others are still processed); files without a face in ``no_face``."""
    from tqdm import tqdm

    from faml_jax import faces as face_module

    if faces not in FACE_SOURCES:
        raise ConfigError(f"unknown face source {faces!r}; expected one of {', '.join(FACE_SOURCES)}")
    if faces == "detect" and finder is None:
        finder = face_module.Finder(mode or face_module.mode_for(predictor.dataset))
    records, crops, no_face, failures = [], [], [], []
    for path in tqdm(
        list(files), desc="reading photos", unit="file", disable=not progress, leave=False, dynamic_ncols=True
    ):
        try:
            # A face file is needed at the input size (a large JPEG is decoded at reduced scale); a
            # photo is searched at reduced scale if large, its faces cut at full resolution.
            photo = read_photo(path, predictor.input_size if faces == "aligned" else None)
        except DataError as error:
            failures.append((str(path), str(error)))
            continue
        found = photo_faces(photo, faces, finder)
        if not found and faces == "detect":
            no_face.append(str(path))
        for i, face in enumerate(found):
            records.append({"file": str(path), **face_record(face, i, faces)})
            crops.append(face.crop)
    prediction = predictor.predict(crops) if crops else None
    if prediction is not None:
        describe_faces(records, prediction, predictor.names)
    return PhotoResults(records, crops, no_face, failures, prediction)


def photo_faces(photo: np.ndarray, faces: str, finder=None) -> list:
    """The faces (``faces.Face``) of an upright photo: found by ``finder`` (``faces="detect"``;
    a large photo searched in a reduced copy, ``search_copy``, its faces cut at full
    resolution), or the whole photo as one face already cut out (``"aligned"``)."""
    from faml_jax import faces as face_module

    if faces == "aligned":
        return [face_module.Face((0, 0, photo.shape[1], photo.shape[0]), 1.0, np.zeros((0, 2)), photo)]
    return finder.find(search_copy(photo), full=photo)


def face_record(face, index: int, faces: str) -> dict:
    """A face's record before prediction: its index, box and landmarks in the (upright) photo's
    pixels (None for a face already cut out)."""
    return {
        "face": index,
        "box": [int(v) for v in face.box] if faces == "detect" else None,
        "landmarks": np.round(face.landmarks, 1).tolist() if faces == "detect" else None,
    }


def describe_faces(records: list[dict], prediction: Prediction, names: Sequence[str]) -> None:
    """Add to each face's record (in the prediction's order) the decided class, its confidence,
    every class's score and every network's top-1."""
    for i, record in enumerate(records):
        k = int(prediction.decision[i])
        record.update(
            {
                "class": prediction.classes[k],
                "confidence": round(float(prediction.confidence[i]), 6),
                "scores": {c: round(float(s), 6) for c, s in zip(prediction.classes, prediction.scores[i])},
                "networks": {n: prediction.classes[int(t)] for n, t in zip(names, prediction.member_top1[:, i])},
            }
        )


def csv_rows(results: PhotoResults, classes: Sequence[str], names: Sequence[str]) -> tuple[list[str], list[list]]:
    """The header and rows of predictions.csv: one row per face."""
    header = [
        "file",
        "face",
        "box_x0",
        "box_y0",
        "box_x1",
        "box_y1",
        "landmarks",
        "class",
        "confidence",
        *[f"score_{c}" for c in classes],
        *[f"top1_{n}" for n in names],
    ]
    rows = []
    for r in results.records:
        box = r["box"] or [""] * 4
        marks = " ".join(f"{x:g},{y:g}" for x, y in r["landmarks"]) if r["landmarks"] else ""
        rows.append(
            [
                r["file"],
                r["face"],
                *box,
                marks,
                r["class"],
                r["confidence"],
                *[r["scores"][c] for c in classes],
                *[r["networks"][n] for n in names],
            ]
        )
    return header, rows


def annotate(photo: np.ndarray, records: list[dict], scale: float = 1.0) -> np.ndarray:
    """``photo`` (decoded at ``scale`` of its file's pixels) with each face's box and "class
    confidence" on a label (``figures.label_photo``: line and text sized for the photo, labels
    inside it and clear of each other)."""
    from faml_jax import figures

    boxes = [
        [v * scale for v in r["box"]] if r["box"] else (0, 0, photo.shape[1] - 1, photo.shape[0] - 1) for r in records
    ]
    return figures.label_photo(photo, boxes, [f"{r['class']} {r['confidence']:.2f}" for r in records])[0]


def describe(predictor: Predictor) -> str:
    """Which model, in a title: "demo (r18_faml)" for one network, "T2V of 6 networks (r18_faml)"
    for an ensemble."""
    architectures = ", ".join(dict.fromkeys(c.model_name for c in predictor.configs))
    if len(predictor.names) == 1:
        return f"{predictor.names[0]} ({architectures})"
    return f"{predictor.strategy.upper()} of {len(predictor.names)} networks ({architectures})"


PREDICTIONS_KIND = "faml_jax.predictions"  # predictions.json's "kind": how a prediction folder is recognised


def recognise_predictions(folder: Path) -> str | None:
    """None for a folder ``write_predictions`` wrote (everything in it listed by its
    predictions.json), else what in ``folder`` is not its own."""
    return recognise_listed(folder, "predictions.json", PREDICTIONS_KIND, lambda index: set(index.get("files", [])))


def check_output(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Whether ``write_predictions`` may write ``out``: absent or empty, or (with ``overwrite``)
    an earlier prediction; anything else is refused in one line naming what is there. Programs
    ask before predicting; ``write_predictions`` asks again under the folder's lock."""
    check_replaceable(Path(out), "prediction", recognise_predictions, overwrite)


def write_predictions(
    out: str | os.PathLike,
    results: PhotoResults,
    predictor: Predictor,
    *,
    annotated: bool = True,
    command: str = "",
    explain: str | None = None,
    overwrite: bool = False,
    also=None,
) -> list[str]:
    """The folder ``out``: predictions.csv, predictions.json, (``annotated``) annotated/<file>.png
    and (``explain``: "gradcam" or "relevancy") maps/ (``write_maps``). Written whole under a
    temporary name, then renamed: an earlier prediction there is replaced (only with
    ``overwrite``: its annotated/ and maps/ files go with it), a folder that is not one never is
    (``check_output``). predictions.json lists every file, so the next prediction recognises the
    folder as its own. ``also(folder)``: writes more into the temporary folder first (videos'
    outputs, ``video_outputs.write_video``). Returns those files ("/"-joined paths inside ``out``)."""
    out = Path(out).absolute()
    with WorkdirLock(out.parent, f"prediction folder {out.name} in", name=f".{out.name}.lock"):
        check_output(out, overwrite)
        with folder_written_whole(out) as tmp:
            _write_tables(tmp, results, predictor, annotated)
            if explain is not None:
                write_maps(tmp, results, predictor, explain)
            if also is not None:
                also(tmp)
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
            write_json(tmp / "predictions.json", stamped(_summary(results, predictor, command, files)))
    return files


def _summary(results: PhotoResults, predictor: Predictor, command: str, files: list[str]) -> dict:
    return {
        "kind": PREDICTIONS_KIND,
        "command": command,
        "networks": list(predictor.names),
        "runs": [str(p) for p in predictor.paths],
        "checkpoint": predictor.checkpoint,
        "epochs": predictor.epochs,
        "dataset": predictor.dataset,
        "classes": list(predictor.classes),
        "input_size": predictor.input_size,
        "strategy": predictor.strategy,
        "faces": results.records,
        "no_face": results.no_face,
        "failures": [{"file": f, "error": e} for f, e in results.failures],
        "files": files,
    }


def _write_tables(out: Path, results: PhotoResults, predictor: Predictor, annotated: bool) -> None:
    """predictions.csv and (``annotated``) annotated/<file>.png in the folder ``out``."""
    import csv
    import io

    header, rows = csv_rows(results, predictor.classes, predictor.names)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    write_atomic(out / "predictions.csv", text.getvalue())
    if not annotated:
        return
    (out / "annotated").mkdir(exist_ok=True)
    by_file: dict[str, list[dict]] = {}
    for r in results.records:
        by_file.setdefault(r["file"], []).append(r)
    for name, (file, records) in zip(unique_stems(list(by_file)), by_file.items()):
        photo, scale = read_photo_scaled(file, PHOTO_MIN_SIDE)
        save_png(out / "annotated" / f"{name}.png", annotate(photo, records, scale))


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write a PNG atomically (``writer.write_atomic``)."""
    write_atomic(path, png=np.asarray(pixels))


def unique_stems(files: Sequence[str]) -> list[str]:
    """A distinct output name per file: its stem, or stem_2, stem_3 ... when stems repeat."""
    used: set[str] = set()
    names = []
    for f in files:
        stem, name, k = Path(f).stem, Path(f).stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        names.append(name)
    return names


def write_maps(
    out: str | os.PathLike, results: PhotoResults, predictor: Predictor, kind: str = "gradcam"
) -> list[Path]:
    """maps/<file>_face<i>.png in the folder ``out`` (``write_predictions(explain=kind)`` writes
    them into its prediction folder): each face as the networks saw it beside its map as a JET
    overlay (``Predictor.explain``), titled with the decided class, its confidence and the model,
    with the map's colour bar (``figures.map_panel``); and maps.npz with the raw maps (N, S, S) in
    record order."""
    from faml_jax import figures

    folder = Path(out) / "maps"
    folder.mkdir(parents=True, exist_ok=True)
    if not results.crops:
        return []
    combined, members, _ = predictor.explain(results.crops, kind)
    seen = predictor.preprocess(results.crops)
    stems = dict(
        zip(
            dict.fromkeys(r["file"] for r in results.records),
            unique_stems(list(dict.fromkeys(r["file"] for r in results.records))),
        )
    )
    written = []
    model = describe(predictor)
    for record, face, heat in zip(results.records, seen, combined):
        path = folder / f"{stems[record['file']]}_face{record['face']}.png"
        heading = f"{Path(record['file']).name} face {record['face']}: {record['class']} {record['confidence']:.2f}"
        figure = figures.map_panel(face, heat, heading, model, kind)
        write_atomic(path, payload=figures.save(figure, "png"))
        written.append(path)
    write_atomic(folder / "maps.npz", arrays={"maps": combined, "member_maps": members, "kind": np.asarray(kind)})
    return written
