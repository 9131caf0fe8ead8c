"""The embedded data set ``synthetic``: procedurally drawn, aligned faces in RAF-DB's 7 classes.

No download: images are generated from a seed, once, into a cache folder. It is a real learning
problem, not a lookup table:

* each expression is a distribution over face geometry (brow height and tilt, eye openness, mouth
  curve, opening and width, nose wrinkle) whose class means overlap, scaled by a random intensity
  (weak expressions drift towards neutral), so neighbouring expressions are confusable
  (fear/surprise, disgust/anger, sadness/neutral);
* identities vary (face shape, skin tone, hair, feature spacing), as do pose (rotation, scale,
  shift), illumination (direction, strength, brightness), occlusion (bars and patches) and noise;
* the training split has a few percent of wrong labels, and both splits follow RAF-DB's class
  imbalance (scaled down).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from faml_jax.errors import ConfigError
from faml_jax.writer import temporary_folder

CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")

# RAF-DB basic, per class in CLASSES order (docs/method.md 1; train 12,271, test 3,068 images).
RAFDB_TRAIN_COUNTS = (705, 717, 281, 4772, 2524, 1982, 1290)
RAFDB_TEST_COUNTS = (162, 160, 74, 1185, 680, 478, 329)

# Face geometry per expression: brow raise, brow tilt (inner end up > 0), eye openness, mouth curve
# (smile > 0), mouth opening, mouth width, nose wrinkle. Units are "expression strength".
FEATURES = ("brow_raise", "brow_tilt", "eye_open", "mouth_curve", "mouth_open", "mouth_width", "wrinkle")
CLASS_MEANS = np.array(
    [
        [-0.7, -0.9, -0.2, -0.3, 0.1, 0.0, 0.4],  # anger: brows down and in
        [-0.4, -0.5, -0.5, -0.6, 0.2, 0.0, 1.0],  # disgust: like anger, nose wrinkled, mouth down
        [0.7, 0.8, 0.8, -0.3, 0.6, 0.6, 0.0],  # fear: like surprise, brows tilted, mouth stretched
        [0.1, 0.0, -0.3, 1.0, 0.4, 0.6, 0.1],  # happiness: smile
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # neutral
        [-0.1, 0.7, -0.3, -0.6, 0.0, -0.2, 0.0],  # sadness: inner brows up, corners down
        [1.0, 0.2, 1.0, 0.0, 1.0, -0.2, 0.0],  # surprise: brows up, eyes wide, mouth open
    ],
    np.float64,
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and difficulty of the synthetic set. The cache folder is keyed by all fields.

    Attributes:
      train_size, test_size: images per split, divided among classes in RAF-DB's proportions.
      image_size: side of the square images in pixels.
      seed: everything is a function of this seed.
      label_noise: share of training labels replaced by another class.
      feature_sd: per-image spread of each geometry feature around its class mean.
      min_intensity: expressions are drawn with intensity uniform in [min_intensity, 1].
      occlusion: probability of an occluding patch or bar.
    """

    train_size: int = 10000
    test_size: int = 1000
    image_size: int = 64
    seed: int = 0
    label_noise: float = 0.04
    feature_sd: float = 0.3
    min_intensity: float = 0.35
    occlusion: float = 0.25

    def __post_init__(self):
        if self.train_size < len(CLASSES) or self.test_size < len(CLASSES):
            raise ConfigError(f"each split needs at least {len(CLASSES)} images")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.label_noise < 1.0:
            raise ConfigError(f"label_noise must be in [0, 1), got {self.label_noise}")

    def key(self) -> str:
        """A short hash of the configuration: the name of its cache folder."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def class_counts(total: int, proportions) -> np.ndarray:
    """Split ``total`` among classes in the given proportions (largest remainder, each >= 1)."""
    p = np.asarray(proportions, np.float64)
    raw = p / p.sum() * total
    counts = np.maximum(np.floor(raw).astype(int), 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while counts.sum() > total:
        j = int(np.argmax(counts))
        counts[j] -= 1
    return counts


def _smooth_inside(distance: np.ndarray, softness: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, with a linear ramp of width ``softness``."""
    return np.clip(0.5 - distance / softness, 0.0, 1.0)


def _segment_distance(x, y, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _paint(image, alpha, color):
    """Blend ``color`` (3,) into ``image`` (H, W, 3) with per-pixel ``alpha`` (H, W)."""
    image += alpha[..., None] * (np.asarray(color, np.float64) - image)


def render_face(geometry: np.ndarray, rng: np.random.Generator, size: int, occlusion: float = 0.25) -> np.ndarray:
    """Draw one aligned face with the given expression ``geometry`` (len(FEATURES),) and a random
    identity, pose, illumination, noise and, with probability ``occlusion``, an occluder.
    Returns (size, size, 3) uint8."""
    brow_raise, brow_tilt, eye_open, mouth_curve, mouth_open, mouth_width, wrinkle = geometry
    soft = 1.5 / size
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size

    # Pose: rotate, scale and shift the face frame.
    angle = np.deg2rad(rng.normal(0, 7))
    scale = rng.uniform(0.88, 1.12)
    cx, cy = 0.5 + rng.normal(0, 0.025), 0.5 + rng.normal(0, 0.025)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (xx - cx) + sin * (yy - cy)) / scale
    v = (-sin * (xx - cx) + cos * (yy - cy)) / scale

    # Background: a random colour with a gradient.
    image = np.empty((size, size, 3))
    image[:] = rng.uniform(20, 200, 3)
    _paint(image, np.clip(yy * rng.uniform(0, 0.6), 0, 1), rng.uniform(0, 255, 3))

    # Identity: face shape, skin tone, hair, feature spacing.
    a, b = rng.uniform(0.30, 0.38), rng.uniform(0.38, 0.46)
    tone = rng.uniform()
    skin = (1 - tone) * np.array([236.0, 200, 175]) + tone * np.array([105.0, 72, 52]) + rng.normal(0, 8, 3)
    face = _smooth_inside(np.hypot(u / a, v / b) - 1.0, soft / a)
    _paint(image, face, skin)
    hair_line = -b * rng.uniform(0.55, 0.85)
    hair = face * _smooth_inside(v - hair_line, soft)
    _paint(image, hair, rng.uniform(10, 120) * np.array([1.0, 0.8, 0.6]))
    eye_dx, eye_y = rng.uniform(0.12, 0.16), rng.normal(-0.08, 0.015)
    mouth_y = rng.normal(0.22, 0.015)
    dark = skin * 0.35

    # Brows: a thick segment above each eye, raised and tilted by the expression.
    brow_y = eye_y - 0.085 - 0.032 * brow_raise
    for side in (-1.0, 1.0):
        inner = (side * 0.045, brow_y - 0.028 * brow_tilt)
        outer = (side * (eye_dx + 0.07), brow_y + 0.012 * brow_tilt)
        d = _segment_distance(u, v, *inner, *outer) - rng.uniform(0.009, 0.015)
        _paint(image, _smooth_inside(d, soft), dark)

    # Eyes: white ellipse, iris; openness from the expression.
    eye_h = np.clip(0.02 * (1 + 0.7 * eye_open), 0.004, 0.05)
    for side in (-1.0, 1.0):
        ex = side * eye_dx
        white = _smooth_inside(np.hypot((u - ex) / 0.045, (v - eye_y) / eye_h) - 1.0, soft / eye_h)
        _paint(image, white, (235, 235, 230))
        iris_r = min(eye_h, 0.016)
        iris = white * _smooth_inside(np.hypot(u - ex, v - eye_y) - iris_r, soft)
        _paint(image, iris, rng.uniform(20, 90, 3))

    # Nose, and its wrinkle (disgust, anger).
    nose = _smooth_inside(_segment_distance(u, v, 0.0, eye_y + 0.02, 0.0, mouth_y - 0.1) - 0.006, soft)
    _paint(image, nose * 0.5, dark)
    if wrinkle > 0:
        for side in (-1.0, 1.0):
            d = _segment_distance(u, v, side * 0.025, eye_y + 0.01, side * 0.06, eye_y + 0.05) - 0.004
            _paint(image, _smooth_inside(d, soft) * min(float(wrinkle), 1.0), dark)

    # Mouth: a curved lip line, opened below it; corners up for smiles.
    half_w = 0.09 * (1 + 0.35 * mouth_width)
    t = np.clip(u / half_w, -1.0, 1.0)
    lip = mouth_y - 0.045 * mouth_curve * (t * t - 0.3)
    within = _smooth_inside(np.abs(u) - half_w, soft)
    opening = max(float(mouth_open), 0.0) * 0.055 * (1 - t * t)
    inside = within * _smooth_inside(np.abs(v - (lip + opening / 2)) - opening / 2, soft)
    _paint(image, inside * (opening > 0.002), (60, 15, 20))
    line = within * _smooth_inside(np.abs(v - lip) - 0.008, soft)
    _paint(image, line, (150, 60, 60))

    # Illumination: directional gradient and overall brightness.
    phi = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0, 0.7) * (np.cos(phi) * (xx - 0.5) + np.sin(phi) * (yy - 0.5))
    image *= (light * rng.uniform(0.65, 1.2))[..., None]

    # Occlusion: a bar across the eyes (glasses, hair) or a patch (hand, object).
    if rng.uniform() < occlusion:
        if rng.uniform() < 0.4:
            bar = _smooth_inside(np.abs(v - eye_y) - rng.uniform(0.02, 0.04), soft)
            _paint(image, bar * (np.abs(u) < 0.3), rng.uniform(0, 80, 3))
        else:
            h, w = rng.uniform(0.15, 0.35, 2)
            y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
            patch = ((yy > y0) & (yy < y0 + h) & (xx > x0) & (xx < x0 + w)).astype(np.float64)
            _paint(image, patch, rng.uniform(0, 255, 3))

    image += rng.normal(0, rng.uniform(2, 10), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_split(config: SyntheticConfig, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one split. Returns ``(images uint8 (n, S, S, 3), labels int32 (n,), true_labels)``;
    ``labels`` carry the label noise (training split only), ``true_labels`` the drawn classes."""
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
    n = config.train_size if split == "train" else config.test_size
    counts = class_counts(n, RAFDB_TRAIN_COUNTS if split == "train" else RAFDB_TEST_COUNTS)
    rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
    true_labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), counts)).astype(np.int32)
    images = np.empty((n, config.image_size, config.image_size, 3), np.uint8)
    for i, label in enumerate(true_labels):
        intensity = rng.uniform(config.min_intensity, 1.0)
        geometry = intensity * CLASS_MEANS[label] + rng.normal(0, config.feature_sd, len(FEATURES))
        images[i] = render_face(geometry, rng, config.image_size, config.occlusion)
    labels = true_labels.copy()
    if split == "train" and config.label_noise > 0:
        flip = rng.uniform(size=n) < config.label_noise
        shift = rng.integers(1, len(CLASSES), n)
        labels[flip] = (labels[flip] + shift[flip]) % len(CLASSES)
    return images, labels, true_labels


def default_cache_dir() -> Path:
    """``$FAML_JAX_CACHE`` or ``~/.cache/faml_jax``."""
    return Path(os.environ.get("FAML_JAX_CACHE", Path.home() / ".cache" / "faml_jax"))


def materialize(config: SyntheticConfig, cache_dir: str | os.PathLike | None = None, progress=None) -> Path:
    """Generate the data set into ``<cache_dir>/synthetic/<config key>/`` unless it is there.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    generation never leaves a folder that a later run would take for complete.
    ``progress``, if given, is called with a message before generating.
    Returns the folder, holding ``{train,test}_{images,labels}.npy`` and ``info.json``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "synthetic" / config.key()
    if (folder / "info.json").exists():
        return folder
    try:  # the folder it is written in first says whether the cache is writable
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_folder(folder.parent, f".{folder.name}-")
    except OSError as error:
        from faml_jax.errors import DataError

        raise DataError(
            f"cannot write the synthetic data set into {root} ({error.strerror or error}): "
            "give a writable --data-dir or FAML_JAX_CACHE"
        ) from None
    if progress:
        progress(f"generating the synthetic data set into {folder} (once)")
    try:
        info = {"config": dataclasses.asdict(config), "classes": list(CLASSES), "splits": {}}
        for split in ("train", "test"):
            images, labels, true_labels = generate_split(config, split)
            np.save(tmp / f"{split}_images.npy", images)
            np.save(tmp / f"{split}_labels.npy", labels)
            info["splits"][split] = {
                "size": int(len(labels)),
                "class_counts": np.bincount(labels, minlength=len(CLASSES)).tolist(),
                "noisy_labels": int(np.sum(labels != true_labels)),
            }
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "info.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
