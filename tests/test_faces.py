"""Tests of faml_jax.faces on real photographs that ship with scikit-image: the astronaut's face is
found once and aligned onto the template (checked against the landmarks found again in the crop,
and against dlib's own face chip); a face moved, scaled and rotated by a known similarity aligns
back to the same crop; the geometry by hand; one-line errors naming what to install."""

import importlib

import numpy as np
import pytest

from faml_jax import faces
from faml_jax.errors import ConfigError

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
dlib = importlib.import_module("dlib")  # the faces extra is part of the test extra


@pytest.fixture(scope="module")
def astronaut():
    photo = skimage_data.astronaut()
    finder = faces.Finder("align")
    return photo, finder, finder.find(photo)


def test_the_astronauts_face_is_found_once_and_aligned_onto_the_template(astronaut):
    photo, finder, found = astronaut
    assert len(found) == 1
    face = found[0]
    assert face.crop.shape == (faces.ALIGNED_SIZE, faces.ALIGNED_SIZE, 3) and face.score > 0.5
    x0, y0, x1, y1 = face.box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # her face, not the mission patch
    # The landmarks found again in the aligned crop sit on the template: eyes within 2 px.
    size = faces.ALIGNED_SIZE
    again = finder.landmarks(face.crop, (0, 0, size - 1, size - 1))
    error = np.linalg.norm(again - faces.template_pixels(size), axis=1)
    assert error[:4].max() < 2.0, error  # the four eye corners
    assert error[4] < 3.0, error  # the nose base
    # dlib's own aligner (get_face_chip, same template and padding) gives the same crop.
    shape = dlib.full_object_detection(
        dlib.rectangle(*face.box), [dlib.point(int(x), int(y)) for x, y in face.landmarks]
    )
    chip = dlib.get_face_chip(photo, shape, size=size, padding=faces.PADDING)
    assert np.abs(chip.astype(float) - face.crop).mean() < 2.0


def test_a_moved_scaled_rotated_face_aligns_back_to_the_same_crop(astronaut):
    photo, finder, (face,) = astronaut
    angle, scale, shift = np.deg2rad(5.0), 0.8, np.array([40.0, -25.0])  # HOG scores it 1.17 (12 degrees: 0.43)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([256.0, 256.0])
    matrix = np.concatenate([rotation, (centre + shift - rotation @ centre)[:, None]], axis=1)  # photo -> moved
    moved = faces.warp(photo, matrix, 512)
    points = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    crop, _ = faces.align(moved, points)
    assert np.abs(crop.astype(float) - face.crop).mean() < 6.0  # resampled twice, bilinear
    # Found in the moved photo by the detector and the landmark model, too.
    (refound,) = finder.find(moved)
    assert np.linalg.norm(refound.landmarks - points, axis=1).max() < 4.0
    assert np.abs(refound.crop.astype(float) - face.crop).mean() < 8.0


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([5.0, -3.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = source @ r.T + t
    np.testing.assert_allclose(
        faces.similarity_transform(source, target), np.concatenate([r, t[:, None]], 1), atol=1e-9
    )
    mirrored = target * np.array([-1.0, 1.0])  # no reflection: the best rotation instead
    assert np.linalg.det(faces.similarity_transform(source, mirrored)[:, :2]) > 0


def test_warp_samples_pixel_centres_and_box_crop_by_hand():
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    shift = np.array([[1.0, 0, -2], [0, 1.0, -3]])  # crop pixel (x, y) shows photo pixel (x + 2, y + 3)
    np.testing.assert_array_equal(faces.warp(image, shift, 4), image[3:7, 2:6])
    half = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25]])  # photo halved: a 2x2 box filter
    expected = image.astype(float).reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(faces.warp(image, half, 4), expected, atol=1.0)
    photo = np.zeros((100, 200, 3), np.uint8)
    assert faces.box_crop(photo, (50, 20, 70, 60), margin=0.25).shape == (60, 60, 3)  # 40 * 1.5, square
    assert faces.box_crop(photo, (0, 0, 40, 40), margin=0.25).shape == (50, 50, 3)  # clamped at the border
    assert faces.mode_for("rafdb") == "align" and faces.mode_for("affectnet8") == "box"


def test_missing_dlib_or_model_names_what_to_install(monkeypatch):
    real_import = importlib.import_module
    monkeypatch.setattr(
        importlib,
        "import_module",
        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "dlib" else real_import(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'faml_jax\[faces\]'.*--faces aligned"):
        faces.Finder()
    monkeypatch.undo()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="5-point landmark model is missing: pip install"):
        faces.landmark_model_path()
    with pytest.raises(ConfigError, match="unknown face mode 'eyes'"):
        faces.Finder("eyes")
