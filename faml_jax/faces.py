"""Faces in photographs: detection, five landmarks, and the face crop a run was trained on.

Detection and landmarks come from dlib (the optional ``faces`` extra: ``dlib-bin`` and
``face-recognition-models``, whose wheel ships dlib's 5-point landmark model; dlib's frontal face
detector, HOG + linear SVM, is built into dlib). Nothing is downloaded at run time.

Two ways to cut a face out, chosen by the data set a run was trained on (``mode_for``):

* ``"align"`` (RAF-DB, whose faces are distributed aligned at 100 x 100): a similarity transform
  (rotation, uniform scale, translation; least squares, Umeyama 1991) maps the five landmarks onto
  ``TEMPLATE``, and the crop is sampled at ``ALIGNED_SIZE``. **[choice]** The template is dlib's
  own 5-point mean face (``dlib.get_face_chip_details``: outer and inner corners of both eyes and
  the base of the nose, in the unit square) with dlib's default padding of 0.25 on every side: the
  eyes land at 31 % of the height, 35 % of the width apart, the crop runs from the brows' top to
  below the chin, as RAF-DB's aligned faces do. Using dlib's template keeps our crops within about
  2 grey levels (mean) of ``dlib.get_face_chip``'s (checked by the tests; the pixel-centre
  conventions differ by a fraction of a pixel) and of every code base that aligns with dlib.
* ``"box"`` (AffectNet, whose images are cut by a face box; the synthetic set, whose faces fill
  their image): the detector's box grown by ``BOX_MARGIN`` of its size on every side **[choice]:
  dlib's HOG box is tight (brows to lips); grown by 25 % it covers forehead to chin like
  AffectNet's boxes** and made square, cropped at the photo's own resolution.

Either crop is then resized by the predictor exactly as the training pipeline resized its images.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from faml_jax.errors import ConfigError

# dlib's 5-point mean face in the unit square (dlib/image_transforms/interpolation.h,
# get_face_chip_details), in the order of shape_predictor_5_face_landmarks.dat's points: the
# outer and inner corner of the eye on the image's right, the outer and inner corner of the other
# eye, the base of the nose.
MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526144],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
PADDING = 0.25  # dlib's default padding of a face chip, as a fraction of the template's side
TEMPLATE = (MEAN_FACE_5 + PADDING) / (1 + 2 * PADDING)  # in the unit square of the aligned crop
ALIGNED_SIZE = 100  # RAF-DB's aligned faces are 100 x 100
BOX_MARGIN = 0.25
MODES = ("align", "box")
INSTALL = "pip install 'faml_jax[faces]' (dlib-bin and face-recognition-models)"


def mode_for(dataset: str) -> str:
    """How faces are cut for a run trained on ``dataset``: "align" for RAF-DB, "box" otherwise."""
    return "align" if dataset == "rafdb" else "box"


@dataclasses.dataclass(frozen=True)
class Face:
    """One face found in a photo.

    Attributes:
      box: (x0, y0, x1, y1) the detector's box in the photo's pixels.
      score: the detector's score.
      landmarks: (5, 2) x, y of the five points in the photo's pixels (pixel centres at integers).
      crop: (H, W, 3) uint8 the face as the run's data set shows faces (``Finder.mode``).
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray
    crop: np.ndarray


# ---------------------------------------------------------------------------------------------
# Geometry (pure NumPy / PIL)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix ``[sR | t]`` of the similarity (rotation, uniform scale, translation;
    no reflection) that maps ``source`` points (n, 2) onto ``target`` points (n, 2) with the least
    squared error (Umeyama 1991)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / s.var(0).sum()
    translation = mu_t - scale * rotation @ mu_s
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The (size, size) crop whose pixel (x, y) shows the photo's point ``matrix^-1 (x, y)``
    (pixel centres at integers in both), bilinear. A strong reduction first shrinks the photo by
    an integer factor with a box filter, so the crop is not aliased."""
    matrix = np.asarray(matrix, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    picture = Image.fromarray(np.ascontiguousarray(image))
    factor = int(1 / scale) if scale < 0.5 else 1
    if factor > 1:  # photo pixels -> reduced pixels: x' = (x + 0.5) / f - 0.5
        picture = picture.reduce(factor)
        shrink = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])
        matrix = (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(shrink))[:2]
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    # PIL samples output pixel (i, j) at its centre (i + 0.5, j + 0.5) in continuous coordinates,
    # where a pixel centre sits at +0.5: shift into and out of our integer-centred coordinates.
    to_centres = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    from_centres = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    pil = from_centres @ inverse @ to_centres
    out = picture.transform((size, size), Image.AFFINE, data=tuple(pil[:2].ravel()), resample=Image.BILINEAR)
    return np.asarray(out)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The aligned (size, size, 3) face and the transform used: five landmarks (5, 2) mapped onto
    ``TEMPLATE`` scaled to the crop (``size * TEMPLATE - 0.5`` in pixel-centre coordinates)."""
    matrix = similarity_transform(landmarks, template_pixels(size))
    return warp(image, matrix, size), matrix


def template_pixels(size: int) -> np.ndarray:
    """``TEMPLATE`` in the pixel coordinates of a (size, size) crop (pixel centres at integers)."""
    return TEMPLATE * size - 0.5


def box_crop(image: np.ndarray, box, margin: float = BOX_MARGIN) -> np.ndarray:
    """The square around ``box`` (x0, y0, x1, y1) grown by ``margin`` of its size on every side,
    clamped to the photo."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = image.shape[:2]
    left, top = int(round(max(cx - side / 2, 0))), int(round(max(cy - side / 2, 0)))
    right, bottom = int(round(min(cx + side / 2, w))), int(round(min(cy + side / 2, h)))
    return np.ascontiguousarray(image[top:bottom, left:right])


# ---------------------------------------------------------------------------------------------
# dlib (the ``faces`` extra)


def _dlib():
    try:
        return importlib.import_module("dlib")
    except ImportError:
        raise ConfigError(
            f"finding faces in photos needs dlib: {INSTALL}; or pass faces that are already cut out (--faces aligned)"
        ) from None


def landmark_model_path() -> Path:
    """dlib's 5-point landmark model as shipped by ``face-recognition-models`` (found without
    importing that package, whose import needs the retired ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"dlib's 5-point landmark model is missing: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    if not path.exists():
        raise ConfigError(f"{path} not found: reinstall face-recognition-models ({INSTALL})")
    return path


@functools.cache
def _dlib_models():
    """dlib's detector and landmark model, loaded once per process (about a second each time:
    a program makes a Finder for its photos and one per video; both models are read-only)."""
    dlib = _dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmark_model_path())), dlib.rectangle


class Finder:
    """Find faces in a photo and cut each out as ``mode`` says ("align" or "box").

    Args:
      mode: "align" (five landmarks onto ``TEMPLATE``, ``ALIGNED_SIZE``) or "box" (the
        detector's box grown by ``margin``).
      upsample: how often dlib's detector doubles the photo first (finds smaller faces).
      min_score: detections scoring lower are dropped (dlib's HOG detector scores false positives
        near 0; a frontal face well above 0.5).
    """

    def __init__(
        self,
        mode: str = "align",
        *,
        size: int = ALIGNED_SIZE,
        margin: float = BOX_MARGIN,
        upsample: int = 1,
        min_score: float = 0.5,
    ):
        if mode not in MODES:
            raise ConfigError(f"unknown face mode {mode!r}; expected one of {', '.join(MODES)}")
        _dlib()  # named when missing, even after the models were loaded
        self.mode, self.size, self.margin, self.upsample, self.min_score = mode, size, margin, upsample, min_score
        self._detector, self._landmarks, self._rectangle = _dlib_models()

    def landmarks(self, image: np.ndarray, box) -> np.ndarray:
        """(5, 2) landmarks of the face in ``box`` (x0, y0, x1, y1)."""
        shape = self._landmarks(image, self._rectangle(*(int(v) for v in box)))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)

    def find(self, image: np.ndarray, full: np.ndarray | None = None) -> list[Face]:
        """Every face in ``image`` ((H, W, 3) uint8 RGB), best score first. ``full``: the same
        photo at a higher resolution (``image`` a reduced copy to search quickly): boxes and
        landmarks are then given, and the faces cut, in ``full``'s pixels."""
        image = np.ascontiguousarray(image)
        source = image if full is None else full
        scale = source.shape[1] / image.shape[1]
        rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
        faces = []
        for rect, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
            if score < self.min_score:
                continue
            found = (rect.left(), rect.top(), rect.right(), rect.bottom())
            points = self.landmarks(image, found)
            if scale != 1:  # pixel centres map as (x + 0.5) * scale - 0.5, box edges as x * scale
                box = tuple(int(round(v * scale)) for v in found)
                points = (points + 0.5) * scale - 0.5
            else:
                box = found
            crop = align(source, points, self.size)[0] if self.mode == "align" else box_crop(source, box, self.margin)
            faces.append(Face(box, float(score), points, crop))
        return faces
