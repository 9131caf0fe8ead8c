"""RAF-DB and AffectNet prepared once into ``array_record`` files with TensorFlow Datasets, and
read back as random-access TFDS data sources (no TensorFlow at any point).

``prepare`` runs a ``tfds.core.GeneratorBasedBuilder`` whose ``manual_dir`` is the user's folder:
it reads the label files (``rafdb`` / ``affectnet``), decodes every image once (a corrupt one fails
the preparation naming it, or is left out under ``skip_bad_images``), then stores each example
with its label, name and face box, in the label file's order. By default the example is stored
ready to train: the face crop (AffectNet's box, docs/method.md 1; ``crop=False``: the whole photograph)
resized to ``stored_size`` (224, the paper's input size) by the training pipeline's own resize
(``pipeline.resize``) and JPEG-encoded at ``quality`` 95, so training decodes a small JPEG and
neither crops nor resizes a large photograph. ``stored_size=None`` stores the original file bytes
instead (reading them is then identical to reading the folder). The training class counts, the
class weights (docs/method.md 1), what was left out and the stored form go into the data set's metadata.
TFDS writes into an ``incomplete.*`` folder renamed when complete, so an interrupted preparation
never looks finished.

Reading (``open_prepared``) goes around TFDS's per-record feature decoding (measured 0.17 ms
per record, against 0.04 ms here): grain's ``ArrayRecordDataSource`` reads the records and each
one is parsed as the ``tf.train.Example`` it is, with protobuf's C parser. The metadata carries
``format_version``: a preparation of another version is refused, with what to do.

Layout under ``out_dir``: ``raf_db/1.0.0/`` and ``affectnet/{7,8}/1.0.0/``.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import functools
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.proto import tf_example_generated_pb2

from faml_jax.data import affectnet, rafdb
from faml_jax.data.distributed import read_folder
from faml_jax.data.folders import (
    SPLITS,
    DataError,
    FolderIndex,
    Problems,
    SplitIndex,
    decode_image,
    drop_bad_images,
    progress_bar,
    read_bytes,
    training_class_weights,
)
from faml_jax.data.pipeline import resize
from faml_jax.errors import ConfigError
from faml_jax.versions import PREPARED_VERSION

NO_BOX = (-1, -1, -1, -1)
STORED_SIZE = 224  # the paper's input size: stored crops need no resize when training at it
JPEG_QUALITY = 95


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes, 4:2:0 chroma as the releases' own JPEGs (measured on our
    400 px fixture faces at 224 px, quality 95: decoding 0.33 ms against 0.42 ms with 4:4:4, mean
    error 1.6 against 1.2 grey levels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()


def ready_to_train(data: bytes, where: str, box, stored_size: int, quality: int = JPEG_QUALITY) -> bytes:
    """An image file's bytes as stored ready to train: decoded, cut to ``box`` (None: whole),
    resized to ``stored_size`` by the training pipeline's resize, JPEG-encoded."""
    return encode_jpeg(resize(decode_image(data, where, box, min_size=stored_size), stored_size), quality)


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A data set prepared from the user's folder (``download_config.manual_dir``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Image (ready-to-train JPEG crop, or the original bytes: see the metadata's "
        "'stored'), label, name and face box, in label-file order."
    }

    def __init__(
        self,
        *,
        skip_bad_images: bool = False,
        num_threads: int = 4,
        bars: bool = True,
        stored_size: int | None = STORED_SIZE,
        crop: bool = True,
        quality: int = JPEG_QUALITY,
        **kwargs,
    ):
        self.skip_bad_images = skip_bad_images
        self.num_threads = num_threads
        self.bars = bars
        self.stored_size = stored_size
        self.crop = crop
        self.quality = quality
        super().__init__(**kwargs)

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared":
    # nothing is downloaded here, and experiments.prepare says what it prepares, and where.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    @property
    @abc.abstractmethod
    def dataset(self) -> str:
        """The data set's name in ``faml_jax.data.DATASETS``."""

    @property
    @abc.abstractmethod
    def classes(self) -> tuple[str, ...]:
        """The class names in label order."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # the file's bytes
                    "label": tfds.features.ClassLabel(names=list(self.classes)),
                    "name": tfds.features.Text(),
                    "box": tfds.features.Tensor(shape=(4,), dtype=np.int32),  # x, y, w, h; -1: none
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # the label file's order: prepared and folder examples match by index
        )

    def _split_generators(self, dl_manager):
        progress = progress_bar if self.bars else None
        index = read_folder(self.dataset, Path(dl_manager.manual_dir), progress)
        # Checked as training reads them by default (cut to the face box where the layout has boxes), so
        # a box outside its image is found now, not mid-epoch; the crop stays a read-time option
        # (the whole files and their boxes are stored).
        drop_bad_images(index, crop=True, skip=self.skip_bad_images, num_threads=self.num_threads, progress=progress)
        self.info.metadata.update(metadata(index, where=f"{self.name} in {index.root}"))
        self.info.metadata["stored"] = {
            "size": self.stored_size,
            "crop": bool(self.crop and index.has_boxes),
            "quality": self.quality if self.stored_size else None,
        }
        return {split: self._generate_examples(index.splits[split]) for split in SPLITS}

    def _stored_image(self, index: SplitIndex, i: int) -> bytes:
        data = read_bytes(index.files[i])
        if not self.stored_size:
            return data
        box = index.boxes[i] if self.crop and index.boxes is not None else None
        return ready_to_train(data, f"{index.files[i]}", box, self.stored_size, self.quality)

    def _generate_examples(self, index: SplitIndex):
        # Decoding, resizing and encoding release the GIL: threads, in order, a chunk at a time.
        with concurrent.futures.ThreadPoolExecutor(max(1, self.num_threads)) as pool:
            for start in range(0, len(index.names), 256):
                chunk = range(start, min(start + 256, len(index.names)))
                for i, image in zip(chunk, pool.map(functools.partial(self._stored_image, index), chunk)):
                    box = NO_BOX if index.boxes is None else index.boxes[i]
                    yield (
                        index.names[i],
                        {
                            "image": image,
                            "label": int(index.labels[i]),
                            "name": index.names[i],
                            "box": np.asarray(box, np.int32),
                        },
                    )


class RafDb(_FolderBuilder):
    """RAF-DB basic (7 classes), from the folder holding EmoLabel/ and Image/aligned/."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Request RAF-DB from its authors; pass the `basic` folder (or its parent)."

    dataset = "rafdb"
    classes = rafdb.CLASSES


class Affectnet(_FolderBuilder):
    """AffectNet (configs 7 and 8 classes); the validation set is the test split."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request AffectNet from its authors; pass the folder holding "
        "Manually_Annotated_file_lists/ and Manually_Annotated_Images/, "
        "or train_set/ and val_set/."
    )
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="7", description="7 classes: codes 0-6 (contempt left out)"),
        tfds.core.BuilderConfig(name="8", description="8 classes: codes 0-7"),
    ]

    @property
    def dataset(self):
        return f"affectnet{self.builder_config.name}"

    @property
    def classes(self):
        return affectnet.classes(int(self.builder_config.name))


# How each data set name is prepared: (builder, config).
BUILDERS = {"rafdb": (RafDb, None), "affectnet7": (Affectnet, "7"), "affectnet8": (Affectnet, "8")}


def metadata(index: FolderIndex, where: str) -> dict[str, Any]:
    """What is stored beside the records: class counts and weights (from the training split,
    docs/method.md 1), what the reader left out, and where the data came from."""
    counts = {split: index.splits[split].counts(len(index.classes)).tolist() for split in SPLITS}
    return {
        "format_version": PREPARED_VERSION,
        "classes": list(index.classes),
        "class_counts": counts,
        "class_weights": training_class_weights(index.classes, counts["train"], where).tolist(),
        "problems": {split: index.problems[split].to_json() for split in SPLITS},
        "source": str(index.root),
        "layout": index.layout,
        "has_boxes": index.has_boxes,
        # Every example's label, so the class-balanced sampler need not read every record.
        "labels": {split: index.splits[split].labels.tolist() for split in SPLITS},
    }


def _builder(dataset: str, out_dir, **kwargs) -> _FolderBuilder:
    if dataset not in BUILDERS:
        raise ConfigError(f"no prepared form of data set {dataset!r}; available: {', '.join(BUILDERS)}")
    cls, config = BUILDERS[dataset]
    return cls(data_dir=str(out_dir), config=config, **kwargs)


def dataset_dir(dataset: str, out_dir) -> Path:
    """Where ``prepare`` puts ``dataset`` under ``out_dir`` (``<name>[/<config>]/<version>``)."""
    cls, config = BUILDERS[dataset]
    parts = [cls.name] + ([config] if config else []) + [str(cls.VERSION)]
    return Path(out_dir).expanduser().joinpath(*parts)


def is_prepared(dataset: str, out_dir) -> bool:
    """Whether ``out_dir`` holds a complete preparation of ``dataset``."""
    return dataset in BUILDERS and (dataset_dir(dataset, out_dir) / "dataset_info.json").is_file()


def unfinished(dataset: str, out_dir) -> list[Path]:
    """Folders of interrupted preparations of ``dataset`` under ``out_dir`` (TFDS's temporaries)."""
    if dataset not in BUILDERS:
        return []
    parent = dataset_dir(dataset, out_dir).parent
    return sorted(parent.glob(f"incomplete.*_{BUILDERS[dataset][0].VERSION}")) if parent.is_dir() else []


def prepare(
    dataset: str,
    data_dir,
    out_dir,
    *,
    skip_bad_images: bool = False,
    num_threads: int = 4,
    overwrite: bool = False,
    bars: bool = True,
    stored_size: int | None = STORED_SIZE,
    crop: bool = True,
    quality: int = JPEG_QUALITY,
) -> Path:
    """Prepare ``dataset`` from the user's folder ``data_dir`` into ``out_dir``; returns its folder.

    A complete earlier preparation is an error unless ``overwrite`` (it is then replaced only once
    the new one is complete). Every image is decoded once first: corrupt ones fail the
    preparation (naming them) or, with ``skip_bad_images``, are left out and recorded.
    ``stored_size``: the side of the stored ready-to-train images (None: the original files);
    ``crop``: store AffectNet's face boxes (docs/method.md 1) rather than whole photographs; ``quality``:
    their JPEG quality.
    """
    if not Path(data_dir).expanduser().is_dir():
        raise DataError(f"{dataset} folder not found: {data_dir}")
    if stored_size is not None and stored_size < 8:
        raise DataError(
            f"the stored image size must be at least 8 pixels (or none: the original files), got {stored_size}"
        )
    if not 1 <= quality <= 100:
        raise DataError(f"the JPEG quality must be in 1..100, got {quality}")
    from faml_jax.workdir import WorkdirLock, remove_outputs

    with WorkdirLock(Path(out_dir).expanduser(), "preparation folder"):  # one preparation at a time there
        if is_prepared(dataset, out_dir) and not overwrite:
            raise DataError(
                f"{dataset} is already prepared in {dataset_dir(dataset, out_dir)}; "
                "pass --overwrite to prepare it again"
            )
        for leftover in unfinished(dataset, out_dir):  # of a preparation that was killed (it held no lock now)
            remove_outputs(leftover.parent, [leftover.name], "preparation folder")
        builder = _builder(
            dataset,
            out_dir,
            skip_bad_images=skip_bad_images,
            num_threads=num_threads,
            bars=bars,
            stored_size=stored_size,
            crop=crop,
            quality=quality,
        )
        downloads = Path(tempfile.mkdtemp(prefix="faml_jax-prepare-"))
        mode = (
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        )
        try:
            builder.download_and_prepare(
                download_dir=str(downloads),
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(
                    manual_dir=str(Path(data_dir).expanduser()), download_mode=mode
                ),
            )
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
            for leftover in unfinished(dataset, out_dir):  # an interrupted one's temporaries (Ctrl-C)
                remove_outputs(leftover.parent, [leftover.name], "preparation folder")
    return dataset_dir(dataset, out_dir)


def parse_example(record: bytes) -> tuple[bytes, int, str, tuple[int, ...]]:
    """A stored record (a serialised ``tf.train.Example``) -> (image bytes, label, name, box)."""
    example = tf_example_generated_pb2.Example()
    example.ParseFromString(record)
    feature = example.features.feature
    return (
        feature["image"].bytes_list.value[0],
        int(feature["label"].int64_list.value[0]),
        feature["name"].bytes_list.value[0].decode(),
        tuple(feature["box"].int64_list.value),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedSource:
    """Random access to one prepared split: ``source[i] -> {"image": uint8 (H, W, 3), "label":
    int32}``. Ready-to-train crops are decoded as stored; original bytes are decoded (and cut to
    their face box when ``crop``) exactly as ``folders.FolderSource`` decodes the same file."""

    records: Any  # grain.sources.ArrayRecordDataSource over the split's shards
    where: str
    crop: bool
    stored_labels: Any  # every example's label, stored in the metadata
    min_size: int | None = None  # as ``FolderSource.min_size``

    def __len__(self) -> int:
        return len(self.records)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Every example's label (int32), for the balanced sampler, as stored in the metadata."""
        return np.asarray(self.stored_labels, np.int32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label, name, box = parse_example(self.records[int(i)])
        return {
            "image": decode_image(
                image, f"{name} (prepared in {self.where})", box if self.crop else None, min_size=self.min_size
            ),
            "label": np.int32(label),
        }


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An opened preparation: its sources and stored metadata (``stored``: ``{"size": side of the
    stored ready-to-train images or None for original files, "crop", "quality"}``)."""

    folder: Path
    classes: tuple[str, ...]
    sources: dict[str, PreparedSource]
    class_counts: dict[str, np.ndarray]
    class_weights: np.ndarray
    problems: dict[str, Problems]
    source: str
    has_boxes: bool = False
    stored: dict | None = None


def shards(folder: Path, split: str) -> list[str]:
    """The array_record files of ``split`` in ``folder``, in shard order (TFDS names them
    ``<name>-<split>.array_record-<i>-of-<n>``), checked complete."""
    files = sorted(folder.glob(f"*-{split}.array_record-*-of-*"))
    if not files:
        raise DataError(f"prepared data in {folder} has no {split} records: run experiments.prepare again")
    total = int(files[0].name.rsplit("-of-", 1)[1])
    if len(files) != total:
        raise DataError(
            f"prepared data in {folder} has {len(files)} of the {total} {split} record files: "
            "run experiments.prepare again"
        )
    return [str(f) for f in files]


def open_prepared(dataset: str, out_dir, crop: bool = False, min_size: int | None = None) -> Prepared:
    """Open a complete preparation of ``dataset`` under ``out_dir`` (see ``is_prepared``).

    ``crop``: train on AffectNet's face boxes. Ready-to-train images were cut (or not) when
    prepared: a different request is a ``DataError`` saying to prepare again."""
    folder = dataset_dir(dataset, out_dir)
    try:
        meta = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder / 'metadata.json'} cannot be read ({error}): prepare the data set again") from None
    if not isinstance(meta, dict) or meta.get("format_version") != PREPARED_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise DataError(
            f"{folder} was prepared in format version {version} (this faml_jax reads {PREPARED_VERSION}): "
            "prepare it again with experiments.prepare --overwrite"
        )
    has_boxes = bool(meta["has_boxes"])
    stored = meta["stored"]
    ready = bool(stored["size"])
    if ready and has_boxes and bool(stored.get("crop")) != bool(crop):
        if stored.get("crop"):
            raise DataError(
                f"{folder} stores the face boxes ready to train, not whole photographs: drop "
                "--no-crop-faces, or prepare again with experiments.prepare --no-crop-faces --overwrite"
            )
        raise DataError(
            f"{folder} stores whole photographs ready to train, not the face boxes: pass "
            "--no-crop-faces, or prepare again with experiments.prepare --overwrite (face boxes by default)"
        )
    labels = meta["labels"]
    sources = {}
    for split in SPLITS:
        records = grain.sources.ArrayRecordDataSource(shards(folder, split))
        expected = meta["class_counts"][split]
        if len(records) != sum(expected):
            raise DataError(
                f"prepared data in {folder} holds {len(records)} {split} records, its metadata "
                f"{sum(expected)}: run experiments.prepare again"
            )
        sources[split] = PreparedSource(records, str(folder), crop and has_boxes and not ready, labels[split], min_size)
    return Prepared(
        folder=folder,
        classes=tuple(meta["classes"]),
        sources=sources,
        class_counts={split: np.asarray(meta["class_counts"][split], np.int64) for split in SPLITS},
        class_weights=np.asarray(meta["class_weights"], np.float32),
        problems={split: Problems.from_json(meta["problems"][split]) for split in SPLITS},
        source=meta["source"],
        has_boxes=has_boxes,
        stored=stored,
    )
