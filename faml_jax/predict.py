"""Trained networks applied to new faces, with the preprocessing they were trained with.

A ``Predictor`` is built from run folders, never from the caller's idea of the preprocessing: the
run's config.json gives the input size, the data set (hence the class names and how faces are cut
from photos, ``faml_jax.faces``) and the model; the resize is the training pipeline's own
(``data.pipeline.resize``: antialiased bilinear) and the normalisation happens inside the compiled
call, as in training and evaluation (``preprocess.normalize``). Members of an ensemble are
evaluated together in one compiled call per batch (``ensemble.ensemble_logits``), and batches are
padded to a fixed size, so a folder of any length compiles once.

    >>> predictor = Predictor.from_population("runs/evolve-rafdb")      # or from_run / from_runs
    >>> result = predictor.predict(faces)                               # uint8 RGB, any size
    >>> result.classes[result.decision[0]], result.confidence[0]
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np

from faml_jax import data, ensemble, fga, models, runs
from faml_jax.config import EnsembleConfig, RunConfig
from faml_jax.data.pipeline import resize
from faml_jax.errors import ConfigError, DataError
from faml_jax.evaluate import check_compatible, named_members, pad_batch

STRATEGIES = ensemble.STRATEGIES
# One compiled call per shape of logits (eagerly, softmax is several small compiled calls).
_softmax = jax.jit(functools.partial(jax.nn.softmax, axis=-1))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What a predictor says about N faces (M networks, C classes).

    Attributes:
      classes: the class names, in label order.
      logits: (M, N, C) each network's logits.
      probabilities: (M, N, C) each network's softmax.
      scores: (N, C) the ensemble's scores under ``strategy``: T2V's weighted votes (Eq. 12),
        T1V's vote counts, or NOI's summed softmax (Eq. 13); for one network, its softmax.
      decision: (N,) the decided class (ties broken as in ``faml_jax.ensemble``: NOI, then the
        lowest class index).
      confidence: (N,) the members' mean probability of the decided class.
      member_top1: (M, N) each network's own top-1 class.
      strategy: "t2v", "t1v" or "noi".
    """

    classes: tuple[str, ...]
    logits: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    decision: np.ndarray
    confidence: np.ndarray
    member_top1: np.ndarray
    strategy: str

    def labels(self) -> list[str]:
        """The decided class names."""
        return [self.classes[k] for k in self.decision]


class Predictor:
    """One trained network or an ensemble of networks of one configuration, ready for faces.

    Args:
      config: the (first) run's configuration (all members share model and data set).
      variables: the members' ``{"params", "batch_stats"}``.
      names: a name per member (its run folder's name).
      strategy: how an ensemble decides (docs/method.md 4): "t2v" (default), "t1v" or "noi".
      ensemble_config: T2V's weights (``EnsembleConfig``: alpha 1.9, beta 1.0).
      batch_size: at most this many faces per compiled call (the last batch is padded to it;
        fewer faces in all are one call of their own number).
    """

    def __init__(
        self,
        config: RunConfig,
        variables: Sequence[dict],
        names: Sequence[str],
        *,
        strategy: str = "t2v",
        ensemble_config: EnsembleConfig = EnsembleConfig(),
        batch_size: int = 32,
        epochs: Sequence[int] | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if not variables:
            raise ConfigError("a predictor needs at least one network")
        self.config, self.names, self.strategy = config, list(names), strategy
        self.paths, self.checkpoint = [], None  # set by the from_* constructors
        self.epochs = list(epochs) if epochs is not None else None
        self.alpha, self.beta = ensemble_config.alpha, ensemble_config.beta
        self.batch_size = batch_size
        self.model = models.ResNet(config.model)
        self.variables = jax.device_put(fga.stack(jax.device_get(list(variables))))
        self._step = ensemble.make_ensemble_step(self.model)
        self._explainers: dict = {}

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_runs(cls, workdirs: Iterable[str | os.PathLike], checkpoint: str = "final", **kwargs) -> Predictor:
        """The networks trained in ``workdirs`` (``experiments.train`` run folders), at their
        ``checkpoint`` ("final" or "best")."""
        return cls._from_members(named_members([Path(p) for p in workdirs]), checkpoint, **kwargs)

    @classmethod
    def from_run(cls, workdir: str | os.PathLike, checkpoint: str = "final", **kwargs) -> Predictor:
        """The network trained in ``workdir``."""
        return cls.from_runs([workdir], checkpoint, **kwargs)

    @classmethod
    def from_population(
        cls,
        evolve_dir: str | os.PathLike,
        checkpoint: str = "final",
        *,
        all_networks: bool = False,
        generation: int | None = None,
        **kwargs,
    ) -> Predictor:
        """A finished evolution's final population (``experiments.evolve``'s workdir) as a T2V
        ensemble; ``all_networks``: every network it trained; ``generation``: that generation's
        survivors instead (``runs.population_members``)."""
        return cls._from_members(runs.population_members(evolve_dir, all_networks, generation), checkpoint, **kwargs)

    @classmethod
    def _from_members(cls, members: list[tuple[str, Path]], checkpoint: str, **kwargs) -> Predictor:
        if not members:
            raise ConfigError("no run folder given")
        loaded = [runs.load(path, checkpoint) for _, path in members]
        check_compatible(members, [c for c, _, _ in loaded])
        predictor = cls(
            loaded[0][0], [v for _, v, _ in loaded], [n for n, _ in members], epochs=[e for _, _, e in loaded], **kwargs
        )
        predictor.paths, predictor.checkpoint = [p for _, p in members], checkpoint
        return predictor

    # -- what training decided ---------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self.config.model.input_size

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return data.class_names(self.dataset)[: self.config.model.num_classes]

    @property
    def num_members(self) -> int:
        return len(self.names)

    # -- prediction --------------------------------------------------------------------------------

    def preprocess(self, faces) -> np.ndarray:
        """Face crops (one (H, W, 3) uint8 RGB image, a list of them of any sizes, or an
        (N, H, W, 3) array) -> (N, S, S, 3) uint8 at the model's input size, resized exactly as the
        training pipeline resizes (``data.pipeline.resize``)."""
        if isinstance(faces, np.ndarray) and faces.ndim == 3:
            faces = [faces]
        out = []
        for i, face in enumerate(faces):
            face = np.asarray(face)
            if face.ndim != 3 or face.shape[-1] != 3 or face.dtype != np.uint8:
                raise DataError(f"face {i}: expected an (H, W, 3) uint8 RGB image, got {face.dtype} {face.shape}")
            out.append(resize(np.ascontiguousarray(face), self.input_size))
        size = self.input_size
        return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)

    def call_size(self, count: int) -> int:
        """Faces per compiled call for ``count`` faces: ``batch_size``, or ``count`` when fewer (a
        short input is never padded up to a large batch)."""
        return max(1, min(self.batch_size, count))

    def logits(self, faces) -> np.ndarray:
        """(M, N, C) float32 logits of every member for ``faces`` (see ``preprocess``), in
        compiled calls of ``call_size`` faces (the last one padded)."""
        images = self.preprocess(faces)
        n, b = len(images), self.call_size(len(images))
        chunks = []
        for start in range(0, n, b):
            chunk = images[start : start + b]
            chunk, pad = pad_batch(chunk, b)
            chunks.append(np.asarray(self._step(self.variables, chunk))[:, : b - pad])
        if not chunks:
            return np.zeros((self.num_members, 0, self.config.model.num_classes), np.float32)
        return np.concatenate(chunks, axis=1)

    def decide(self, logits: np.ndarray, strategy: str | None = None) -> Prediction:
        """The ``Prediction`` of members' logits (M, N, C) (pure: no network is run)."""
        strategy = strategy or self.strategy
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        logits = np.asarray(logits, np.float32)
        probabilities = np.asarray(_softmax(logits))
        if len(logits[0]) == 0:
            empty = np.zeros((0,), np.int32)
            return Prediction(
                self.classes,
                logits,
                probabilities,
                probabilities.sum(0),
                empty,
                np.zeros((0,), np.float32),
                np.zeros((len(logits), 0), np.int32),
                strategy,
            )
        scores = {
            "t2v": lambda: ensemble.t2v_scores(logits, self.alpha, self.beta),
            "t1v": lambda: ensemble.t1v_scores(logits),
            "noi": lambda: ensemble.noi_scores(logits),
        }[strategy]()
        decision = np.asarray(ensemble.predict(logits, strategy, self.alpha, self.beta), np.int32)
        if len(logits) == 1:
            scores = probabilities[0]
        confidence = probabilities.mean(0)[np.arange(len(decision)), decision]
        return Prediction(
            self.classes,
            logits,
            probabilities,
            np.asarray(scores, np.float32),
            decision,
            confidence.astype(np.float32),
            np.argmax(logits, -1).astype(np.int32),
            strategy,
        )

    def explain(
        self, faces, kind: str = "gradcam", strategy: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, Prediction]:
        """Where the networks look (docs/method.md 6): ``(map (N, S, S), member maps (M, N, S, S),
        prediction)`` for ``faces`` at the model's input size, each member's ``kind`` map
        ("gradcam" or "relevancy") of the decided class; for an ensemble the map is the members'
        maps weighted by their T2V votes for it (Eq. 12, ``maps.vote_weighted``)."""
        from faml_jax import maps

        if kind == "relevancy" and not self.config.model.attention:
            raise ConfigError(
                f"relevancy maps need a model with attention blocks; {self.config.model_name} has none (use gradcam)"
            )
        images = self.preprocess(faces)
        prediction = self.predict(images, strategy)
        key = kind
        if key not in self._explainers:
            self._explainers[key] = maps.make_explainer(self.model, kind)
        explainer, b = self._explainers[key], self.call_size(len(images))
        member_maps = []
        for start in range(0, len(images), b):
            chunk, decided = images[start : start + b], prediction.decision[start : start + b]
            chunk, pad = pad_batch(chunk, b)
            decided, _ = pad_batch(np.asarray(decided, np.int32), b)
            member_maps.append(np.asarray(explainer(self.variables, chunk, decided)[0])[:, : b - pad])
        size = self.input_size
        member_maps = np.concatenate(member_maps, 1) if member_maps else np.zeros((self.num_members, 0, size, size))
        combined = (
            np.asarray(maps.vote_weighted(member_maps, prediction.logits, prediction.decision, self.alpha, self.beta))
            if self.num_members > 1
            else member_maps[0]
        )
        return combined, member_maps, prediction

    def predict(self, faces, strategy: str | None = None) -> Prediction:
        """Probabilities, ensemble scores and decisions for ``faces`` (face crops as ``preprocess``
        takes them; ``strategy`` overrides the predictor's)."""
        return self.decide(self.logits(faces), strategy)


# ---------------------------------------------------------------------------------------------
# Photos and folders (what ``python -m experiments.predict`` runs)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FACE_SOURCES = ("detect", "aligned")


def image_files(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image files named by ``inputs``: files, folders (their images, recursively, sorted;
    none under ``exclude``, e.g. the output folder of an earlier prediction) and glob patterns.
    An input that names nothing is a ``DataError`` naming it."""
    import glob

    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for given in map(str, inputs):
        path = Path(given)
        if path.is_dir():
            images = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not (skip is not None and p.resolve().is_relative_to(skip))
            )
            if not images:
                raise DataError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in {given}")
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
    import io

    from PIL import Image, ImageOps

    from faml_jax.data.folders import decode_photo, read_bytes

    payload = read_bytes(path)
    pixels, scale = decode_photo(payload, str(path), min_size)
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
            photo, _ = read_photo_scaled(path, predictor.input_size if faces == "aligned" else None)
        except DataError as error:
            failures.append((str(path), str(error)))
            continue
        if faces == "aligned":
            found = [face_module.Face((0, 0, photo.shape[1], photo.shape[0]), 1.0, np.zeros((0, 2)), photo)]
        else:
            found = finder.find(search_copy(photo), full=photo)
            if not found:
                no_face.append(str(path))
        for i, face in enumerate(found):
            records.append(
                {
                    "file": str(path),
                    "face": i,  # in the (upright) photo's pixels
                    "box": [int(v) for v in face.box] if faces == "detect" else None,
                    "landmarks": np.round(face.landmarks, 1).tolist() if faces == "detect" else None,
                }
            )
            crops.append(face.crop)
    prediction = predictor.predict(crops) if crops else None
    if prediction is not None:
        for i, record in enumerate(records):
            k = int(prediction.decision[i])
            record.update(
                {
                    "class": prediction.classes[k],
                    "confidence": round(float(prediction.confidence[i]), 6),
                    "scores": {c: round(float(s), 6) for c, s in zip(prediction.classes, prediction.scores[i])},
                    "networks": {
                        n: prediction.classes[int(t)] for n, t in zip(predictor.names, prediction.member_top1[:, i])
                    },
                }
            )
    return PhotoResults(records, crops, no_face, failures, prediction)


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
    confidence" drawn on it."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(photo)
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(photo.shape[:2]) / 250))
    for r in records:
        x0, y0, x1, y1 = (
            [round(v * scale) for v in r["box"]] if r["box"] else (0, 0, photo.shape[1] - 1, photo.shape[0] - 1)
        )
        draw.rectangle((x0, y0, x1, y1), outline=(255, 64, 64), width=width)
        text = f"{r['class']} {r['confidence']:.2f}"
        tx, ty = x0, max(y0 - 14, 0)
        draw.rectangle(draw.textbbox((tx, ty), text), fill=(255, 64, 64))
        draw.text((tx, ty), text, fill=(255, 255, 255))
    return np.asarray(picture)


def write_predictions(
    out: str | os.PathLike, results: PhotoResults, predictor: Predictor, *, annotated: bool = True, command: str = ""
) -> None:
    """predictions.csv, predictions.json and (``annotated``) annotated/<file>.png in ``out``;
    each file written whole or not at all."""
    import csv
    import io

    from faml_jax.writer import write_atomic, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = csv_rows(results, predictor.classes, predictor.names)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    write_atomic(out / "predictions.csv", text.getvalue())
    summary = {
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
    }
    write_json(out / "predictions.json", summary)
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
    from faml_jax.writer import write_atomic

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


MAP_PANEL = 256  # the least height of a face and its map in maps/*.png


def write_maps(
    out: str | os.PathLike, results: PhotoResults, predictor: Predictor, kind: str = "gradcam"
) -> list[Path]:
    """maps/<file>_face<i>.png in ``out``: each face as the networks saw it beside its map as a
    JET overlay (``Predictor.explain``), each at least ``MAP_PANEL`` pixels high (small inputs
    are enlarged, pixel for pixel), and maps.npz with the raw maps (N, S, S) in record order."""
    from faml_jax.maps import overlay
    from faml_jax.writer import write_atomic

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
    for record, face, heat in zip(results.records, seen, combined):
        path = folder / f"{stems[record['file']]}_face{record['face']}.png"
        panel = np.concatenate([face, overlay(face, heat)], axis=1)
        zoom = -(-MAP_PANEL // panel.shape[0])  # whole-pixel enlargement: the network's pixels stay visible
        save_png(path, np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1))
        written.append(path)
    write_atomic(folder / "maps.npz", arrays={"maps": combined, "member_maps": members, "kind": np.asarray(kind)})
    return written


# ---------------------------------------------------------------------------------------------
# Paper Fig. 8: maps of several models on one test image per expression


def figure_of_maps(
    rows: Sequence[tuple[str, Predictor]],
    *,
    kind: str = "gradcam",
    indices: Sequence[int] | None = None,
    data_dir: str | None = None,
    log=print,
) -> dict:
    """The maps of every model in ``rows`` ((label, predictor): a run or an ensemble each) on one
    test image per expression: the first test image of that class that every row classifies
    correctly, or ``indices`` (one test index per class). Returns ``{"grid": (H, W, 3) uint8,
    "maps": (rows, classes, S, S), "images": (classes, S, S, 3), "indices", "classes", "rows"}``;
    a class without such an image gets an empty column (index -1)."""

    first = rows[0][1]
    config = first.config
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data_dir))
    test = runs.open_dataset(config, log).test
    labels = np.asarray(test.labels)
    classes = first.classes
    for label, predictor in rows[1:]:
        if predictor.classes != classes or predictor.input_size != first.input_size:
            raise ConfigError(f"{label} was trained on other classes or another input size than {rows[0][0]}")
    if indices is not None and len(indices) != len(classes):
        raise ConfigError(f"give one test index per expression ({len(classes)}), got {len(indices)}")
    chosen = []
    for c in range(len(classes)):
        if indices is not None:
            index = int(indices[c])
            if not 0 <= index < len(labels):
                raise ConfigError(f"test index {index} is outside the test split (0..{len(labels) - 1})")
            if labels[index] != c:
                raise ConfigError(
                    f"test image {index} shows {classes[labels[index]]}, not {classes[c]} (the "
                    f"{c + 1}. index is for {classes[c]})"
                )
            chosen.append(index)
            continue
        candidates, found = np.flatnonzero(labels == c), -1
        for start in range(0, len(candidates), first.batch_size):
            chunk = candidates[start : start + first.batch_size]
            faces = [test[int(i)]["image"] for i in chunk]
            correct = np.ones(len(chunk), bool)
            for _, predictor in rows:
                correct &= predictor.predict(faces).decision == c
            if correct.any():
                found = int(chunk[np.argmax(correct)])
                break
        chosen.append(found)
    size = first.input_size
    images = np.zeros((len(classes), size, size, 3), np.uint8)
    present = [i for i in chosen if i >= 0]
    if present:
        images[[k for k, i in enumerate(chosen) if i >= 0]] = first.preprocess([test[i]["image"] for i in present])
    grid_maps = np.zeros((len(rows), len(classes), size, size), np.float32)
    for r, (_, predictor) in enumerate(rows):
        if present:
            combined, _, _ = predictor.explain(images[[k for k, i in enumerate(chosen) if i >= 0]], kind)
            grid_maps[r, [k for k, i in enumerate(chosen) if i >= 0]] = combined
    grid = _grid(images, grid_maps, [label for label, _ in rows], classes, chosen)
    return {
        "grid": grid,
        "maps": grid_maps,
        "images": images,
        "indices": chosen,
        "classes": list(classes),
        "rows": [label for label, _ in rows],
    }


def _grid(
    images: np.ndarray, grid_maps: np.ndarray, row_labels: list[str], classes: Sequence[str], chosen: list[int]
) -> np.ndarray:
    """Overlays in a table: a header row of class names, a first column of row labels."""
    from PIL import Image, ImageDraw

    from faml_jax.maps import overlay

    size = images.shape[1]
    cell = max(size, 112)
    label_width, header = 120, 20
    rows, cols = grid_maps.shape[:2]
    canvas = Image.new("RGB", (label_width + cols * cell, header + rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(classes):
        draw.text((label_width + c * cell + 4, 4), name if chosen[c] >= 0 else f"{name} (none)", fill=(0, 0, 0))
    for r, label in enumerate(row_labels):
        draw.text((4, header + r * cell + cell // 2 - 6), label[:18], fill=(0, 0, 0))
        for c in range(cols):
            if chosen[c] < 0:
                continue
            tile = Image.fromarray(overlay(images[c], grid_maps[r, c])).resize((cell, cell), Image.BILINEAR)
            canvas.paste(tile, (label_width + c * cell, header + r * cell))
    return np.asarray(canvas)
