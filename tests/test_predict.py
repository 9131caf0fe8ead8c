"""Tests of faml_jax.predict and ``python -m experiments.predict``: the predictor's logits equal
the ensemble evaluator's on the same images, its resize is the training pipeline's, padding and
batching change nothing, its decisions are the ensemble's; scikit-image's LFW crops and the
astronaut photo go through it; the program's CSV equals the library's output; one-line errors."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import jittered_variables, tiny_config, write_run

from faml_jax import ensemble, fga, runs, train
from faml_jax.data.pipeline import resize
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.evaluate import EnsembleEvaluator
from faml_jax.photos import predict_photos
from faml_jax.predict import Predictor

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three R18+FAML networks of the tiny configuration (32 px, synthetic), written by hand."""
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config(root / "data", 1, attention=True)  # the maps need the blocks
    variables = [jittered_variables(config, seed) for seed in range(3)]
    paths = [write_run(root / f"net{i}", config, v) for i, v in enumerate(variables)]
    return root, config, variables, paths


def images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_logits_equal_the_ensemble_evaluators_with_padding_and_resize(three_runs, devices):
    _, config, variables, paths = three_runs
    predictor = Predictor.from_runs(paths, batch_size=4)
    assert predictor.input_size == 32 and predictor.classes[3] == "happiness" and predictor.num_members == 3
    faces = images(7, 32)  # two compiled calls, the second padded
    evaluator = EnsembleEvaluator(predictor.model, 8, devices)
    expected, _ = evaluator(
        train.replicate(fga.stack(variables), devices), [{"image": faces, "label": np.zeros(7, np.int32)}]
    )
    np.testing.assert_allclose(predictor.logits(faces), expected, rtol=1e-5, atol=1e-5)
    # Faces of other sizes go through the training pipeline's resize; one face at a time is the same.
    large = [images(1, 57, seed=i)[0] for i in range(3)]
    resized = np.stack([resize(face, 32) for face in large])
    np.testing.assert_allclose(predictor.logits(large), predictor.logits(resized), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(predictor.logits(large[1])[:, 0], predictor.logits(large)[:, 1], rtol=1e-5, atol=1e-5)


def test_a_short_input_is_not_padded_up_to_a_large_batch(three_runs):
    """One photo with --batch-size 200000 took 8.9 GB: the call holds as many faces as there are,
    up to the batch size, and the logits are those of the usual batch."""
    _, _, _, paths = three_runs
    large, small = Predictor.from_runs(paths, batch_size=5000), Predictor.from_runs(paths, batch_size=2)
    seen = []
    (group,) = large.groups
    step = group.step
    group.step = lambda variables, chunk: (seen.append(chunk.shape[0]), step(variables, chunk))[1]
    faces = images(3, 32, seed=5)
    np.testing.assert_allclose(large.logits(faces), small.logits(faces), rtol=1e-5, atol=1e-5)
    assert seen == [3]
    large.explain(faces[:1])
    assert seen == [3, 1]


def test_decisions_follow_the_strategy_and_one_network_takes_its_argmax(three_runs):
    _, _, _, paths = three_runs
    faces = images(9, 32, seed=3)
    for strategy in ensemble.STRATEGIES:
        predictor = Predictor.from_runs(paths, strategy=strategy)
        logits = predictor.logits(faces)
        result = predictor.predict(faces)
        np.testing.assert_array_equal(result.decision, ensemble.predict(logits, strategy))
        np.testing.assert_allclose(result.probabilities.sum(-1), 1.0, rtol=1e-5)
        mean = result.probabilities.mean(0)
        np.testing.assert_allclose(result.confidence, mean[np.arange(9), result.decision], rtol=1e-6)
        np.testing.assert_array_equal(result.member_top1, logits.argmax(-1))
    single = Predictor.from_run(paths[0])
    result = single.predict(faces)
    np.testing.assert_array_equal(result.decision, single.logits(faces)[0].argmax(-1))
    np.testing.assert_allclose(result.scores, result.probabilities[0])


def test_lfw_crops_and_the_astronaut_photo_go_through(three_runs):
    import skimage

    _, _, _, paths = three_runs
    lfw = np.load(os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"))[:100]  # the faces
    crops = np.repeat((lfw * 255).round().astype(np.uint8)[..., None], 3, axis=-1)  # grey 25 x 25
    predictor = Predictor.from_runs(paths, batch_size=32)
    result = predictor.predict(list(crops))
    assert result.probabilities.shape == (3, 100, 7) and result.decision.shape == (100,)
    assert set(result.labels()) <= set(predictor.classes)
    photo = predict_photos(predictor, [_astronaut_file(paths[0].parent)], faces="detect")
    (record,) = photo.records  # one face; a synthetic run cuts faces by their box
    assert record["box"][0] > 150 and record["class"] in predictor.classes and len(record["landmarks"]) == 5


def test_a_large_photo_is_searched_at_reduced_scale_and_its_boxes_are_the_files(three_runs, tmp_path, monkeypatch):
    """A photo much larger than PHOTO_MIN_SIDE is searched for faces in a reduced copy; the face's
    box and landmarks are still given in the photo's pixels (those found at full scale, within
    the reduction's resolution), the face is cut at full resolution, and the annotated photo is
    drawn at the reduced scale."""
    from PIL import Image

    from faml_jax import photos

    _, _, _, paths = three_runs
    predictor = Predictor.from_runs(paths[:1])
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.jpg", quality=95)
    at_full = predict_photos(predictor, [tmp_path / "astronaut.jpg"])
    (full,) = at_full.records
    monkeypatch.setattr(photos, "PHOTO_MIN_SIDE", 200)  # 512 px searched at 256 px, decoded at 4/8 to annotate
    results = predict_photos(predictor, [tmp_path / "astronaut.jpg"])
    (reduced,) = results.records
    np.testing.assert_allclose(reduced["box"], full["box"], atol=8)
    np.testing.assert_allclose(reduced["landmarks"], full["landmarks"], atol=8)
    (crop,), (crop_at_full,) = results.crops, at_full.crops  # cut from the 512 px photo, not the 256 px copy
    assert abs(crop.shape[0] - crop_at_full.shape[0]) <= 0.1 * crop_at_full.shape[0]
    photos.write_predictions(tmp_path / "out", results, predictor)
    with Image.open(tmp_path / "out" / "annotated" / "astronaut.png") as annotated:
        assert annotated.size == (256, 256)


def _astronaut_file(folder):
    from PIL import Image

    path = folder / "astronaut.png"
    if not path.exists():
        Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def test_the_programs_files_equal_the_librarys_output(three_runs, tmp_path, capsys):
    from PIL import Image

    from experiments import predict as program

    root, _, _, paths = three_runs
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, face in enumerate(images(5, 40, seed=9)):
        Image.fromarray(face).save(folder / f"face{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = program.main(
        [
            "--run",
            str(paths[0]),
            "--run",
            str(paths[1]),
            "--run",
            str(paths[2]),
            "--faces",
            "aligned",
            "--out",
            str(out),
            "--no-progress",
            "--explain",
            str(folder),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and f"cannot decode image {folder / 'broken.jpg'}" in captured.err  # the rest still done
    assert "5 face(s) in 5 image(s)" in captured.out
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    predictor = Predictor.from_runs(paths)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    result = predictor.predict([np.asarray(Image.open(p).convert("RGB")) for p in files])
    assert [r["file"] for r in rows] == [str(p) for p in files]
    assert [r["class"] for r in rows] == result.labels()
    for row, i in zip(rows, range(5)):
        for k, c in enumerate(predictor.classes):
            assert float(row[f"score_{c}"]) == pytest.approx(float(result.scores[i, k]), abs=1e-6)
        assert row["top1_net2"] == predictor.classes[result.member_top1[2, i]]
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["classes"] == list(predictor.classes) and saved["failures"][0]["file"] == str(folder / "broken.jpg")
    assert sorted(p.name for p in (out / "annotated").iterdir()) == [f"face{i}.png" for i in range(5)]
    # --explain: each face beside its map; the raw maps are the predictor's vote-weighted maps.
    combined, members, _ = predictor.explain([np.asarray(Image.open(p).convert("RGB")) for p in files])
    with np.load(out / "maps" / "maps.npz") as saved_maps:
        np.testing.assert_allclose(saved_maps["maps"], combined, rtol=1e-5, atol=1e-6)
        assert saved_maps["member_maps"].shape == (3, 5, 32, 32)
    assert Image.open(out / "maps" / "face0_face0.png").size[1] >= 256  # a panel readable on a screen


def test_the_figure_of_maps_takes_the_images_the_most_rows_get_right(three_runs, tmp_path, capsys):
    from experiments import explain as program

    root, config, _, paths = three_runs
    out = tmp_path / "fig.png"
    ensemble_arg = ",".join(str(p) for p in paths)
    assert program.main(["--run", str(paths[0]), "--ensemble", ensemble_arg, "--out", str(out)]) == 0
    with np.load(out.with_suffix(".npz")) as figure:
        indices, grid_maps, right = figure["indices"], figure["maps"], figure["right"]
    assert grid_maps.shape == (2, 7, 32, 32) and float(grid_maps.max()) <= 1.0

    # Every column shows a face of its class: the one the most rows get right (docs/method.md 6).
    test = runs.open_dataset(config).test
    labels = np.asarray(test.labels)
    rows = [Predictor.from_run(paths[0]), Predictor.from_runs(paths)]
    everything = [p.predict([test[i]["image"] for i in range(len(labels))]).decision == labels for p in rows]
    most = np.sum(everything, axis=0)
    for c, index in enumerate(indices):
        assert index >= 0 and labels[index] == c
        assert most[index] == most[labels == c].max()
        for r, predictor in enumerate(rows):
            assert right[r, c] == (predictor.predict(test[int(index)]["image"]).decision[0] == c)
    printed = capsys.readouterr().out
    assert "test-split index of the image shown per expression: anger " in printed
    # The same map choice as experiments.predict: --map, not another flag name.
    assert program.build_parser().parse_args(["--map", "relevancy"]).map == "relevancy"
    with pytest.raises(SystemExit):
        program.build_parser().parse_args(["--kind", "relevancy"])


def test_one_line_errors(three_runs, tmp_path, capsys):
    from experiments import predict as program

    _, config, _, paths = three_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((paths[0] / "config.json").read_text())
    cases = [
        (["--run", str(empty), str(paths[0])], f"no checkpoint in {empty / 'checkpoints'}"),
        (["--run", str(tmp_path / "nowhere"), "x.png"], f"run folder {tmp_path / 'nowhere'} not found"),
        (["--run", str(paths[0]), str(tmp_path / "missing.png")], f"{tmp_path / 'missing.png'} not found"),
        (["x.png"], "give --run DIR (one or more) or --population DIR"),
    ]
    for args, message in cases:
        assert program.main(args + ["--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (message, err)
    with pytest.raises(ConfigError, match="unknown strategy 'best'"):
        Predictor.from_run(paths[0], strategy="best")
    with pytest.raises(WorkdirError):
        Predictor.from_population(tmp_path)


def test_photo_files_names_and_orientation(tmp_path):
    from PIL import Image

    from faml_jax.data.folders import CorruptImageError
    from faml_jax.errors import DataError
    from faml_jax.inputs import input_files
    from faml_jax.photos import read_photo, unique_stems

    assert unique_stems(["x/a.jpg", "y/a.jpg", "z/a_2.jpg"]) == ["a", "a_2", "a_2_2"]
    upright = np.zeros((20, 10, 3), np.uint8)
    upright[:5] = 255  # a bright top
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # as a phone stores a portrait photo ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to view"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    pixels = read_photo(tmp_path / "phone.jpg")
    assert pixels.shape == (20, 10, 3) and pixels[:5].mean() > 200 and pixels[5:].mean() < 50
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        input_files([tmp_path / "empty"])
    (tmp_path / "out" / "annotated").mkdir(parents=True)
    Image.fromarray(upright).save(tmp_path / "out" / "annotated" / "old.png")
    assert input_files([tmp_path], exclude=tmp_path / "out") == [tmp_path / "phone.jpg"]
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(CorruptImageError, match="bad.png"):
        read_photo(tmp_path / "bad.png")


def test_a_folder_takes_images_by_content_and_counts_the_other_files(tmp_path, logged):
    """A .gif (and an image without a suffix) in a folder is taken, as it is when named; the
    files that are no image are counted and named in one line; none taken is an error."""
    from PIL import Image

    from faml_jax.errors import DataError
    from faml_jax.inputs import input_files
    from faml_jax.photos import read_photo

    face = np.full((12, 10, 3), 90, np.uint8)
    Image.fromarray(face).save(tmp_path / "a.jpg")
    Image.fromarray(face).save(tmp_path / "b.gif")
    Image.fromarray(face).save(tmp_path / "c", format="PNG")
    (tmp_path / "notes.txt").write_text("not a photo\n")
    assert input_files([tmp_path]) == [tmp_path / "a.jpg", tmp_path / "b.gif", tmp_path / "c"]
    assert input_files([tmp_path / "b.gif"]) == [tmp_path / "b.gif"]
    assert read_photo(tmp_path / "b.gif").shape == (12, 10, 3)
    assert [m for m in logged if "passed over" in m] == [
        f"{tmp_path}: 1 file(s) passed over, not images Pillow can open nor videos FFmpeg decodes (notes.txt)"
    ]
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not a photo\n")
    with pytest.raises(
        DataError,
        match=r"no image or video in .*text: none of its 1 file\(s\) is an image Pillow opens or a video FFmpeg",
    ):
        input_files([tmp_path / "text"])


def test_refusals_of_the_explainer_and_of_duplicate_runs(three_runs, tmp_path):
    from helpers import TINY_MODEL

    from faml_jax.paper import figure_of_maps
    from faml_jax.presets import preset

    root, config, _, paths = three_runs
    with pytest.raises(ConfigError, match="a member is given twice"):
        Predictor.from_runs([paths[0], paths[0]])
    r18 = preset(
        "synthetic",
        "r18",
        model_options=TINY_MODEL,
        data=dict(data_dir=str(root / "data"), synthetic=dict(train_size=96, test_size=40, image_size=32)),
    )
    plain = Predictor.from_run(write_run(tmp_path / "r18", r18, jittered_variables(r18, 0)))
    with pytest.raises(ConfigError, match="relevancy maps need a model with attention blocks"):
        plain.explain(images(1, 32), "relevancy")
    with pytest.raises(ConfigError, match="outside the test split"):
        figure_of_maps([("a", plain)], indices=[10**6] * 7)


def test_the_output_folder_is_replaced_only_when_it_is_an_earlier_prediction(three_runs, tmp_path, capsys):
    """--out replaced a user's predictions.csv and annotated/ files (exit 0), and a second
    prediction left the first one's annotated/ and maps/ files beside a CSV that no longer listed
    them. Now: a folder that is not a prediction is refused in one line naming what is there
    (also with --overwrite); an earlier prediction is replaced whole, only with --overwrite."""
    from PIL import Image

    from experiments import predict as program

    _, _, _, paths = three_runs
    for i, face in enumerate(images(2, 32, seed=4)):
        Image.fromarray(face).save(tmp_path / f"face{i}.png")
    mine = tmp_path / "mine"
    (mine / "annotated").mkdir(parents=True)
    (mine / "predictions.csv").write_text("mine")
    (mine / "annotated" / "face0.png").write_text("mine")

    def predict(out, *inputs, flags=()):
        args = ["--run", str(paths[0]), "--faces", "aligned", "--out", str(out), "--no-progress", *flags]
        code = program.main(args + [str(tmp_path / name) for name in inputs])
        return code, capsys.readouterr().err.strip()

    for flags in ((), ("--overwrite",)):
        code, err = predict(mine, "face0.png", flags=flags)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{mine} is not a prediction written by faml_jax (it holds annotated, predictions.csv)" in err
    assert (mine / "predictions.csv").read_text() == "mine" and (mine / "annotated" / "face0.png").read_text() == "mine"

    out = tmp_path / "out"
    assert predict(out, "face0.png", "face1.png", flags=["--explain"]) == (0, "")
    listed = json.loads((out / "predictions.json").read_text())["files"]
    assert "annotated/face1.png" in listed and "maps/face1_face0.png" in listed
    code, err = predict(out, "face0.png")
    assert code == 2 and "holds an earlier prediction: pass --overwrite to replace it" in err
    assert predict(out, "face0.png", flags=["--overwrite"]) == (0, "")
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert written == ["annotated", "annotated/face0.png", "predictions.csv", "predictions.json"]
    assert json.loads((out / "predictions.json").read_text())["files"] == [
        "annotated",
        "annotated/face0.png",
        "predictions.csv",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "face0.png",
        "face1.png",
        "mine",
        "out",
    ]  # no lock, no temporary
