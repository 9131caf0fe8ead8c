"""RAF-DB and AffectNet from folders in the layouts of the real releases (built here with generated
JPEGs): split sizes, class mapping, filtering, face crops, prepared TFDS data identical to the
folder, and every kind of bad input producing its message."""

import csv
import io
import json
import os

import numpy as np
import pytest
from helpers import png16
from PIL import Image

from experiments import prepare as prepare_program
from experiments import train as train_program
from faml_jax import data
from faml_jax.data import CorruptImageError, DataError, fixtures, prepared
from faml_jax.trainer import TIMING_FIELDS
from faml_jax.versions import PREPARED_VERSION

# The releases' label codes, written out from their documentation (docs/method.md 1), not imported.
RAFDB_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
AFFECTNET_CODES = [
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
    "none",
    "uncertain",
    "no-face",
]

RAF_TRAIN = [1, 2, 3, 4, 5, 6, 7, 4, 4, 7, 5, 1]  # 12 images: every code, imbalanced
RAF_TEST = [7, 6, 5, 4, 3, 2, 1, 4]
AN_TRAIN = list(range(11)) * 2 + [1, 1, 0]  # every code 0..10 twice, then more happy/neutral
AN_TEST = list(range(8)) + [8]  # the validation set has no codes 9-10; one 8 to filter


def names(dataset, split):
    source = getattr(dataset, split)
    return [dataset.classes[int(source[i]["label"])] for i in range(len(source))]


def quiet_prepare(dataset, folder, out, **kwargs):
    return prepared.prepare(dataset, folder, out, bars=False, **kwargs)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return {
        "rafdb": fixtures.write_rafdb(root / "RAF-DB", RAF_TRAIN, RAF_TEST, size=40).parent,
        "original": fixtures.write_affectnet_original(root / "AffectNet", AN_TRAIN, AN_TEST, size=64),
        "npy": fixtures.write_affectnet_npy(root / "AffectNet-npy", AN_TRAIN[:22:2] + [1], AN_TEST, size=40),
    }


# ---------------------------------------------------------------------------------------------
# Split sizes, class mapping, filtering


@pytest.mark.parametrize("level", ["basic", "parent"])
def test_rafdb_split_sizes_and_class_of_every_code(folders, level):
    folder = folders["rafdb"] / "basic" if level == "basic" else folders["rafdb"]
    dataset = data.open_dataset("rafdb", folder)
    assert (len(dataset.train), len(dataset.test)) == (len(RAF_TRAIN), len(RAF_TEST))
    assert names(dataset, "train") == [RAFDB_CODES[c] for c in RAF_TRAIN]
    assert names(dataset, "test") == [RAFDB_CODES[c] for c in RAF_TEST]
    assert dataset.classes == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    assert dataset.train[0]["image"].shape == (40, 40, 3) and dataset.train[0]["image"].dtype == np.uint8
    # Split sizes and class counts are in the description printed when a data set is opened.
    text = dataset.describe()
    assert f"train {len(RAF_TRAIN)} / test {len(RAF_TEST)} images" in text
    assert "happiness 3" in text and "12,271 / 3,068" in text


@pytest.mark.parametrize("classes", [7, 8])
@pytest.mark.parametrize("header,extra_level", [(True, False), (False, True)])
def test_affectnet_original_keeps_the_data_sets_codes(tmp_path, classes, header, extra_level):
    folder = fixtures.write_affectnet_original(
        tmp_path / "an", AN_TRAIN, AN_TEST, size=48, header=header, extra_level=extra_level
    )
    dataset = data.open_dataset(f"affectnet{classes}", folder)
    for split, codes in (("train", AN_TRAIN), ("test", AN_TEST)):
        kept = [AFFECTNET_CODES[c] for c in codes if c < classes]
        assert names(dataset, split) == kept
    assert dataset.classes == tuple(AFFECTNET_CODES[:classes])
    excluded = ["none", "uncertain", "no-face"] + (["contempt"] if classes == 7 else [])
    train_note = next(n for n in dataset.notes if n.startswith("train: left out"))
    for name in excluded:
        assert f"2 {name}" in train_note  # each code appears twice in AN_TRAIN
    assert ("contempt" in train_note) == (classes == 7)


def test_affectnet_npy_layout(folders):
    codes = AN_TRAIN[:22:2] + [1]  # 0,2,4,6,8,10,1,3,5,7,9 and 1
    dataset = data.open_dataset("affectnet8", folders["npy"])
    assert names(dataset, "train") == [AFFECTNET_CODES[c] for c in codes if c < 8]
    assert names(dataset, "test") == [AFFECTNET_CODES[c] for c in AN_TEST if c < 8]
    dataset7 = data.open_dataset("affectnet7", folders["npy"])
    assert names(dataset7, "train") == [AFFECTNET_CODES[c] for c in codes if c < 7]


def test_crop_faces_cuts_out_the_csv_box(folders):
    folder = folders["original"]
    with open(folder / "Manually_Annotated_file_lists" / "training.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["expression"]) < 8]
    whole = data.open_dataset("affectnet8", folder, crop_faces=False)
    cropped = data.open_dataset("affectnet8", folder)  # docs/method.md 1 [choice]: the face boxes by default
    for i in (0, 5, len(rows) - 1):
        x, y, w, h = (int(rows[i][k]) for k in ("face_x", "face_y", "face_width", "face_height"))
        np.testing.assert_array_equal(cropped.train[i]["image"], whole.train[i]["image"][y : y + h, x : x + w])
    assert any("face boxes" in note for note in cropped.notes)
    assert any("whole photographs" in note for note in whole.notes)
    # Layouts of faces (no boxes) are read as they are either way.
    for name, layout in (("rafdb", "rafdb"), ("affectnet8", "npy")):
        a = data.open_dataset(name, folders[layout], crop_faces=True)
        b = data.open_dataset(name, folders[layout], crop_faces=False)
        np.testing.assert_array_equal(a.train[0]["image"], b.train[0]["image"])
        assert a.notes == b.notes


# ---------------------------------------------------------------------------------------------
# Prepared TFDS data


@pytest.mark.parametrize("dataset,folder", [("rafdb", "rafdb"), ("affectnet7", "original"), ("affectnet8", "npy")])
def test_prepared_data_is_identical_to_the_folder(folders, tmp_path, dataset, folder):
    quiet_prepare(dataset, folders[folder], tmp_path, stored_size=None)  # the original files
    from_folder = data.open_dataset(dataset, folders[folder])
    from_prepared = data.open_dataset(dataset, tmp_path)
    assert from_prepared.origin.startswith("prepared")
    for split in ("train", "test"):
        a, b = getattr(from_folder, split), getattr(from_prepared, split)
        assert len(a) == len(b)
        for i in range(len(a)):
            np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
            assert a[i]["label"] == b[i]["label"]
        # Labels without reading images (the balanced sampler's input), alike from both.
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.labels, [a[i]["label"] for i in range(len(a))])
    # Class counts and weights are stored: weight of c = N / (C n_c) over the training split.
    meta = json.loads((prepared.dataset_dir(dataset, tmp_path) / "metadata.json").read_text())
    counts = np.bincount(
        [int(from_folder.train[i]["label"]) for i in range(len(from_folder.train))], minlength=from_folder.num_classes
    )
    assert meta["class_counts"]["train"] == counts.tolist()
    assert meta["labels"]["train"] == from_folder.train.labels.tolist()  # for the balanced sampler
    np.testing.assert_allclose(meta["class_weights"], counts.sum() / (len(counts) * counts), rtol=1e-6)
    np.testing.assert_allclose(from_prepared.class_weights, from_folder.class_weights, rtol=1e-6)
    assert from_prepared.notes == from_folder.notes


def test_crop_faces_from_prepared_data(folders, tmp_path):
    quiet_prepare("affectnet8", folders["original"], tmp_path, stored_size=None)
    a = data.open_dataset("affectnet8", folders["original"])
    b = data.open_dataset("affectnet8", tmp_path)
    for i in range(len(a.train)):
        np.testing.assert_array_equal(a.train[i]["image"], b.train[i]["image"])
    assert a.notes == b.notes
    whole = data.open_dataset("affectnet8", tmp_path, crop_faces=False)
    assert whole.train[0]["image"].shape != b.train[0]["image"].shape
    quiet_prepare("affectnet8", folders["npy"], tmp_path / "npy", stored_size=None)
    npy = data.open_dataset("affectnet8", tmp_path / "npy")  # already faces: read as they are
    np.testing.assert_array_equal(
        npy.train[0]["image"], data.open_dataset("affectnet8", folders["npy"]).train[0]["image"]
    )
    with pytest.raises(DataError, match="holds prepared affectnet8 but not affectnet7: run experiments.prepare"):
        data.open_dataset("affectnet7", tmp_path / "npy")


@pytest.mark.parametrize(
    "dataset,folder,flags",
    [
        ("rafdb", "rafdb", []),  # the RAF-DB preset: ML with CE
        ("affectnet8", "original", []),  # the AffectNet preset: ML with WCE (stored class weights), face boxes
    ],
)
def test_training_from_the_folder_and_from_prepared_data_is_identical(folders, tmp_path, dataset, folder, flags):
    """One epoch of the training program on each: the same losses and accuracies (original files
    stored; ready-to-train images: test_ready_to_train_batches_are_the_folders_within_jpeg_rounding)."""
    quiet_prepare(dataset, folders[folder], tmp_path / "prepared", stored_size=None)
    common = [
        "--dataset",
        dataset,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--widths",
        "4,4,8,8",
        "--input-size",
        "32",
        "--threads",
        "2",
        "--no-progress",
        "--from-scratch",
        "--no-attention",
    ] + flags  # (the data is tested)
    runs = {}
    for kind, path in (("folder", folders[folder]), ("prepared", tmp_path / "prepared")):
        workdir = tmp_path / kind
        assert train_program.main(common + ["--data-dir", str(path), "--workdir", str(workdir)]) == 0
        line = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
        runs[kind] = {k: v for k, v in line.items() if k not in TIMING_FIELDS}
    assert runs["folder"] == runs["prepared"]
    assert np.isfinite(runs["folder"]["train_loss"])
    loss = json.loads((tmp_path / "folder" / "config.json").read_text())["loss"]
    assert loss["weighted"] == (dataset != "rafdb")


@pytest.mark.parametrize("dataset,folder", [("rafdb", "rafdb"), ("affectnet8", "original")])
def test_ready_to_train_images_are_the_folders_crops_resized_within_jpeg_rounding(folders, tmp_path, dataset, folder):
    """The default preparation stores each face crop resized to the stored size by the training
    pipeline's resize: the same pixels as reading the folder and resizing, up to JPEG rounding."""
    from faml_jax.data.pipeline import resize

    quiet_prepare(dataset, folders[folder], tmp_path, stored_size=48)
    from_folder, ready = data.open_dataset(dataset, folders[folder]), data.open_dataset(dataset, tmp_path)
    meta = json.loads((prepared.dataset_dir(dataset, tmp_path) / "metadata.json").read_text())
    assert meta["stored"] == {"size": 48, "crop": dataset != "rafdb", "quality": 95}
    assert any("stored ready to train: 48 px" in note for note in ready.notes)
    for split in ("train", "test"):
        a, b = getattr(from_folder, split), getattr(ready, split)
        assert len(a) == len(b)
        for i in range(len(a)):
            expected, got = resize(a[i]["image"], 48).astype(np.int16), b[i]["image"].astype(np.int16)
            assert got.shape == (48, 48, 3) and a[i]["label"] == b[i]["label"]
            assert np.mean(np.abs(got - expected)) < 4 and np.max(np.abs(got - expected)) < 40


def test_ready_to_train_batches_are_the_folders_within_jpeg_rounding(folders, tmp_path):
    """The training loader over ready crops stored at the input size: the folder's batches, in
    the same order, up to JPEG rounding (no resize left to do)."""
    quiet_prepare("affectnet8", folders["original"], tmp_path, stored_size=32)
    batches = []
    for path in (folders["original"], tmp_path):
        loader = data.TrainLoader(data.open_dataset("affectnet8", path).train, 8, 32, seed=3, num_threads=2)
        batches.append(next(loader.iterate(0)))
    np.testing.assert_array_equal(batches[0]["label"], batches[1]["label"])
    difference = np.abs(batches[0]["image"].astype(np.int16) - batches[1]["image"].astype(np.int16))
    assert np.mean(difference) < 4


def test_ready_crops_refuse_the_other_crop_request(folders, tmp_path):
    from faml_jax.data.pipeline import resize

    quiet_prepare("affectnet8", folders["original"], tmp_path / "boxes", stored_size=48)
    with pytest.raises(DataError, match="stores the face boxes ready to train, not whole photographs"):
        data.open_dataset("affectnet8", tmp_path / "boxes", crop_faces=False)
    quiet_prepare("affectnet8", folders["original"], tmp_path / "whole", stored_size=48, crop=False)
    with pytest.raises(DataError, match="stores whole photographs ready to train, not the face boxes"):
        data.open_dataset("affectnet8", tmp_path / "whole")
    whole = data.open_dataset("affectnet8", tmp_path / "whole", crop_faces=False).train[0]["image"]
    expected = resize(data.open_dataset("affectnet8", folders["original"], crop_faces=False).train[0]["image"], 48)
    assert np.mean(np.abs(whole.astype(np.int16) - expected)) < 4
    # Faces without boxes (RAF-DB) are stored as they are whatever the flag.
    quiet_prepare("rafdb", folders["rafdb"], tmp_path / "raf", stored_size=48, crop=False)
    assert data.open_dataset("rafdb", tmp_path / "raf", crop_faces=True).train[0]["image"].shape == (48, 48, 3)


def test_a_preparation_of_another_format_version_is_refused(folders, tmp_path, capsys):
    """The metadata carries format_version; a preparation without one (a development version
    made it) or of another version is refused in one line saying to prepare again."""
    quiet_prepare("affectnet8", folders["original"], tmp_path, stored_size=None)
    info = prepared.dataset_dir("affectnet8", tmp_path) / "metadata.json"
    meta = json.loads(info.read_text())
    assert meta["format_version"] == PREPARED_VERSION and len(data.open_dataset("affectnet8", tmp_path).train) > 0
    for version in (None, PREPARED_VERSION + 1):
        info.write_text(json.dumps({**meta, "format_version": version}))
        with pytest.raises(
            DataError,
            match=f"was prepared in format version {version} \\(this faml_jax reads {PREPARED_VERSION}\\): "
            "prepare it again with experiments.prepare --overwrite",
        ):
            data.open_dataset("affectnet8", tmp_path)


def test_missing_or_short_record_files_are_data_errors(folders, tmp_path):
    quiet_prepare("rafdb", folders["rafdb"], tmp_path, stored_size=32)
    folder = prepared.dataset_dir("rafdb", tmp_path)
    (shard,) = folder.glob("*-test.array_record-*")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["class_counts"]["test"][0] += 1
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="holds 8 test records, its metadata 9: run experiments.prepare again"):
        data.open_dataset("rafdb", tmp_path)
    shard.unlink()
    with pytest.raises(DataError, match="has no test records: run experiments.prepare again"):
        data.open_dataset("rafdb", tmp_path)


@pytest.mark.parametrize(
    "flags,message",
    [(["--stored-size", "4"], "at least 8 pixels"), (["--jpeg-quality", "0"], "JPEG quality must be in 1..100")],
)
def test_prepare_refuses_bad_storage_flags(folders, tmp_path, capsys, flags, message):
    out = tmp_path / "prepared"
    args = ["--dataset", "rafdb", "--data-dir", str(folders["rafdb"]), "--out", str(out), "--no-progress", *flags]
    assert prepare_program.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not prepared.is_prepared("rafdb", out)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_missing_folders_and_files_are_named(folders, tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}"):
        data.open_dataset("rafdb", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"basic/EmoLabel/list_patition_label\.txt"):
        data.open_dataset("rafdb", tmp_path / "empty")
    with pytest.raises(DataError, match="Manually_Annotated_file_lists.*train_set/annotations"):
        data.open_dataset("affectnet8", tmp_path / "empty")
    with pytest.raises(DataError, match="not embedded: give --data-dir"):
        data.open_dataset("affectnet7", None)
    # A label file without its images folder; a CSV list without the other.
    (tmp_path / "raf" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    with pytest.raises(DataError, match=r"Image/aligned"):
        data.open_dataset("rafdb", tmp_path / "raf")
    lists = tmp_path / "an" / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    with pytest.raises(DataError, match="Manually_Annotated_Images"):
        data.open_dataset("affectnet8", tmp_path / "an")
    (tmp_path / "an" / "Manually_Annotated_Images").mkdir()
    (lists / "training.csv").write_text("")
    with pytest.raises(DataError, match=r"test list not found: expected .*validation\.csv"):
        data.open_dataset("affectnet8", tmp_path / "an")


def test_label_problems_are_counted_and_reported(tmp_path):
    basic = fixtures.write_rafdb(tmp_path, [1, 2, 3, 4, 5, 6, 7, 1], [1, 2, 3, 4, 5, 6, 7], size=24)
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    with open(label_file, "a") as f:  # after lines 1-15 (8 train, 7 test)
        f.write("train_00001.jpg 3\n")  # listed again with a conflicting label (line 1: 1, surprise)
        f.write("train_00008.jpg 0\n")  # duplicate name too, but first: its label is out of range
        f.write("train_00099.jpg 9\n")  # out of range (no image either: the label is checked first)
        f.write("train_00100.jpg 4\n")  # listed, absent
        f.write("test_0099.jpg 2\n")  # listed, absent
        f.write("test_0002.jpg 2\n")  # a duplicate entry, the same label as line 10's
    dataset = data.open_dataset("rafdb", tmp_path)
    assert (len(dataset.train), len(dataset.test)) == (8, 7)
    notes = "\n".join(dataset.notes)
    assert (
        "train: 2 labels out of range (line 17: train_00008.jpg label '0'; line 18: train_00099.jpg label '9')" in notes
    )
    assert (
        "train: 1 images listed again with a conflicting label, the first kept "
        f"({label_file}:16: train_00001.jpg labelled 3 (disgust), but 1 (surprise) on line 1)"
    ) in notes
    assert "train: 1 duplicate entries" not in notes and "test: 1 duplicate entries (line 21: test_0002.jpg)" in notes
    assert f"train: 1 images listed but absent ({basic / 'Image' / 'aligned' / 'train_00100_aligned.jpg'})" in notes
    assert "test: 1 images listed but absent" in notes
    assert all(line in dataset.describe() for line in dataset.notes)
    # A line that is not "<name> <code>" is not RAF-DB's format: an error naming the line.
    with open(label_file, "a") as f:
        f.write("train_00001.jpg\n")
    with pytest.raises(DataError, match=r"list_patition_label\.txt:22: expected '<image name> <label 1-7>'"):
        data.open_dataset("rafdb", tmp_path)


def test_affectnet_label_problems(tmp_path):
    folder = fixtures.write_affectnet_original(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], size=32)
    train_csv = folder / "Manually_Annotated_file_lists" / "training.csv"
    rows = list(csv.reader(open(train_csv, newline="")))
    rows.append(rows[1][:6] + ["12"] + rows[1][7:])  # out of range code (and a duplicate path)
    rows.append(rows[2])  # duplicate
    rows.append(["9/absent.jpg"] + rows[3][1:])  # absent
    with open(train_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    npy = fixtures.write_affectnet_npy(tmp_path / "npy", [0, 1, 2, 3, 4, 5, 6, 7], list(range(8)), size=24)
    fixtures.save_jpeg(np.zeros((24, 24, 3), np.uint8), npy / "train_set" / "images" / "100.jpg")  # no label
    os.remove(npy / "val_set" / "images" / "3.jpg")  # a label without its image
    notes = "\n".join(data.open_dataset("affectnet8", folder).notes)
    assert "train: 1 labels out of range (training.csv line 10: expression '12')" in notes
    assert "train: 1 duplicate entries (training.csv line 11:" in notes
    assert "train: 1 images listed but absent (" in notes and "9/absent.jpg" in notes
    npy_notes = "\n".join(data.open_dataset("affectnet8", npy).notes)
    assert "train: 1 images without a label (" in npy_notes and "100.jpg" in npy_notes
    assert "test: 1 images listed but absent (" in npy_notes


def test_a_label_file_in_another_encoding_is_named(tmp_path):
    basic = fixtures.write_rafdb(tmp_path, [1, 2, 3, 4, 5, 6, 7], [1, 2], size=24)
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text(), encoding="utf-16")  # as Windows' Notepad may save it
    with pytest.raises(DataError, match=rf"{label_file} is not UTF-8 text \(UTF-16, by its byte-order mark"):
        data.open_dataset("rafdb", tmp_path)


def test_an_affectnet_csv_with_shifted_columns_says_so(tmp_path):
    """No header and the landmarks column missing: every row's "expression" is a valence."""
    folder = fixtures.write_affectnet_original(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], size=32)
    train_csv = folder / "Manually_Annotated_file_lists" / "training.csv"
    rows = list(csv.reader(open(train_csv, newline="")))[1:]
    with open(train_csv, "w", newline="") as f:
        csv.writer(f).writerows(row[:5] + row[6:] for row in rows)
    with pytest.raises(
        DataError,
        match=r"training\.csv: 8 of 8 rows have no valid expression code in column 7: the "
        r"columns look shifted \(rows: 8 with 8 fields; no header line, so AffectNet's 9",
    ):
        data.open_dataset("affectnet8", folder)


RAF_WITH_BAD = [1, 2, 3, 4, 5, 6, 7, 3]  # the 3rd (corrupted below) is not the only disgust image


def corrupt(folder):
    """Truncate one RAF-DB training image (written with RAF_WITH_BAD); returns its path."""
    path = folder / "basic" / "Image" / "aligned" / "train_00003_aligned.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return path


def test_corrupt_image_fails_or_is_skipped_and_reported(tmp_path):
    fixtures.write_rafdb(tmp_path / "raf", RAF_WITH_BAD, [1, 2, 3, 4, 5, 6, 7], size=24)
    bad = corrupt(tmp_path / "raf")
    dataset = data.open_dataset("rafdb", tmp_path / "raf")
    with pytest.raises(CorruptImageError, match=f"cannot decode image {bad}.*--skip-bad-images"):
        dataset.train[2]
    skipped = data.open_dataset("rafdb", tmp_path / "raf", skip_bad_images=True)
    assert len(skipped.train) == len(dataset.train) - 1
    assert any(n.startswith("train: 1 unreadable or corrupt images skipped") and str(bad) in n for n in skipped.notes)
    # An image that is not an image at all, and a file that cannot be read.
    with pytest.raises(CorruptImageError, match="cannot decode image x.jpg"):
        data.folders.decode_image(b"not a jpeg", "x.jpg")
    with pytest.raises(CorruptImageError, match="cannot read image"):
        data.folders.read_bytes(tmp_path / "absent.jpg")


def test_prepare_fails_on_a_corrupt_image_leaving_nothing_complete(tmp_path, capsys):
    folder = tmp_path / "raf"
    fixtures.write_rafdb(folder, RAF_WITH_BAD, [1, 2, 3, 4, 5, 6, 7], size=24)
    bad = corrupt(folder)
    bad_test = folder / "basic" / "Image" / "aligned" / "test_0001_aligned.jpg"
    bad_test.write_bytes(b"not an image")
    out = tmp_path / "prepared"
    args = ["--dataset", "rafdb", "--data-dir", str(folder), "--out", str(out), "--no-progress"]
    assert prepare_program.main(args) == 2
    printed, err = capsys.readouterr()
    assert "download" not in printed.lower()  # TFDS's "Downloading and preparing": nothing is downloaded
    assert f"unreadable or corrupt images (1 train, 1 test): cannot decode image {bad}" in err
    assert f"cannot decode image {bad_test}" in err and "--skip-bad-images" in err
    assert not prepared.is_prepared("rafdb", out) and not prepared.unfinished("rafdb", out)
    with pytest.raises(DataError):
        data.open_dataset("rafdb", out)
    # With the flag: prepared without it, and the skipped image recorded with the data.
    assert prepare_program.main(args + ["--skip-bad-images"]) == 0
    printed = capsys.readouterr().out
    assert "download" not in printed.lower() and f"preparing rafdb from {folder} into {out}" in printed, printed
    dataset = data.open_dataset("rafdb", out)
    assert (len(dataset.train), len(dataset.test)) == (len(RAF_WITH_BAD) - 1, 6)
    assert any(str(bad) in n for n in dataset.notes) and any(str(bad_test) in n for n in dataset.notes)
    # Prepared already: an error unless --overwrite.
    assert prepare_program.main(args) == 2
    assert "already prepared" in capsys.readouterr().err


def test_interrupted_prepare_leaves_nothing_taken_for_complete(folders, tmp_path, monkeypatch):
    out = tmp_path / "prepared"

    def interrupted(self, index):
        yield index.names[0], {"image": b"", "label": 0, "name": index.names[0], "box": np.full(4, -1, np.int32)}
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared._FolderBuilder, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quiet_prepare("rafdb", folders["rafdb"], out)
    assert not prepared.is_prepared("rafdb", out)
    # A process killed outright leaves TFDS's temporary folder: named, never read.
    (out / "raf_db" / "incomplete.ABC123_1.0.0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"unfinished preparation of rafdb .*incomplete\.ABC123_1\.0\.0.*prepare again"):
        data.open_dataset("rafdb", out)
    # ... and the next preparation there removes it.
    monkeypatch.undo()
    quiet_prepare("rafdb", folders["rafdb"], out)
    assert prepared.is_prepared("rafdb", out) and not prepared.unfinished("rafdb", out)


def test_a_class_without_training_images_is_named(tmp_path):
    fixtures.write_rafdb(tmp_path, [1, 2, 3, 4, 5, 6, 6], [1, 2], size=24)  # no neutral (code 7)
    with pytest.raises(DataError, match=r"has no training image of class\(es\) neutral"):
        data.open_dataset("rafdb", tmp_path)
    with pytest.raises(DataError, match=r"has no training image of class\(es\) neutral"):
        quiet_prepare("rafdb", tmp_path, tmp_path / "out")
    assert not prepared.is_prepared("rafdb", tmp_path / "out")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert prepare_program.main(["--dataset", "affectnet8", "--data-dir", str(tmp_path / "none")]) == 2
    assert f"affectnet8 folder not found: {tmp_path / 'none'}" in capsys.readouterr().err
    args = ["--dataset", "rafdb", "--epochs", "1", "--workdir", str(tmp_path / "run"), "--from-scratch"]
    assert train_program.main(args) == 2
    assert "rafdb is not embedded: give --data-dir" in capsys.readouterr().err


def test_decode_converts_grey_and_rgba_to_rgb():
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (5, 4)).save(buffer, format="PNG")
        assert data.folders.decode_image(buffer.getvalue(), "x.png").shape == (4, 5, 3)


@pytest.mark.parametrize(
    "mode,options",
    [
        ("RGB", dict(quality=90)),
        ("RGB", dict(quality=95, subsampling=0)),
        ("RGB", dict(quality=75, subsampling=1)),
        ("RGB", dict(quality=85, progressive=True)),
        ("L", dict(quality=90)),
        ("CMYK", dict(quality=90)),
    ],
    ids=["420", "444", "422", "progressive", "grey", "cmyk"],
)
def test_jpeg_decoding_gives_pillows_pixels(mode, options):
    """decode_image's libjpeg-turbo path (simplejpeg) gives exactly what Pillow gives, on a real
    photograph (scikit-image's astronaut) in every JPEG flavour; CMYK goes through Pillow."""
    from skimage import data as samples

    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).convert(mode).save(buffer, "JPEG", **options)
    jpeg = buffer.getvalue()
    with Image.open(io.BytesIO(jpeg)) as image:
        expected = np.asarray(image.convert("RGB"))
    assert (data.folders._decode_jpeg(jpeg, "x.jpg", None, None, 10**9) is None) == (mode == "CMYK")
    np.testing.assert_array_equal(data.folders.decode_image(jpeg, "x.jpg"), expected)
    for cut in (len(jpeg) // 2, len(jpeg) - 100):  # truncated: an error either way, never part of an image
        with pytest.raises(CorruptImageError, match="cannot decode image x.jpg"):
            data.folders.decode_image(jpeg[:cut], "x.jpg")


def test_a_face_box_outside_its_image_is_found_when_preparing(tmp_path):
    """Training cuts AffectNet's face boxes by default, so preparing checks the boxes too: a box
    outside its image stops the preparation naming the image (not an epoch later), or is left
    out and recorded with --skip-bad-images."""
    folder = fixtures.write_affectnet_original(
        tmp_path / "an", [0, 1, 2, 3, 4, 5, 6, 7] * 2, [0, 1, 2, 3, 4, 5, 6, 7], size=48
    )
    csv_path = folder / "Manually_Annotated_file_lists" / "training.csv"
    lines = csv_path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[1] = "900"  # face_x beyond the 48 px image
    lines[1] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"face box \\(x=900.*of image .*{cells[0]}.*lies outside"):
        quiet_prepare("affectnet8", folder, tmp_path / "out")
    quiet_prepare("affectnet8", folder, tmp_path / "out", skip_bad_images=True)
    dataset = data.open_dataset("affectnet8", tmp_path / "out")
    assert len(dataset.train) == 15 and any(cells[0] in note for note in dataset.notes)


def test_16_bit_images_are_their_8_bit_levels():
    """A 16-bit image decodes to the 8-bit image it was made from (v * 257, the exact 16-bit
    counterpart of each 8-bit level), greyscale (it was all white) and colour; 32-bit images with
    levels beyond 16 bits are refused naming the file."""
    reference = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    colour = data.folders.decode_image(png16(reference.astype(np.uint16) * 257), "colour.png")
    np.testing.assert_array_equal(colour, reference)
    grey = data.folders.decode_image(png16(reference[..., 0].astype(np.uint16) * 257), "grey.png")
    np.testing.assert_array_equal(grey, np.repeat(reference[..., :1], 3, axis=-1))
    # 16-bit TIFF (mode I;16), 32-bit integer holding 16-bit levels (mode I), and beyond.
    for array in (reference[..., 0].astype(np.uint16) * 257, reference[..., 0].astype(np.int32) * 257):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="TIFF")
        np.testing.assert_array_equal(data.folders.decode_image(buffer.getvalue(), "x.tif"), grey)
    for array in (np.full((4, 4), 70000, np.int32), np.full((4, 4), 0.5, np.float32)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="TIFF")
        with pytest.raises(CorruptImageError, match="cannot decode image x.tif: .* save it as an 8-bit image"):
            data.folders.decode_image(buffer.getvalue(), "x.tif")


def test_a_16_bit_photo_is_predicted_as_its_8_bit_version(tmp_path):
    from faml_jax.photos import read_photo

    reference = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    (tmp_path / "grey16.png").write_bytes(png16(reference[..., 1].astype(np.uint16) * 257))
    np.testing.assert_array_equal(read_photo(tmp_path / "grey16.png"), np.repeat(reference[..., 1:2], 3, axis=-1))


def test_decode_errors_name_the_file_not_a_buffer():
    with pytest.raises(CorruptImageError) as caught:
        data.folders.decode_image(b"GIF89a not really", "faces/x.gif")
    assert str(caught.value) == "cannot decode image faces/x.gif: not an image format Pillow can read"
    with pytest.raises(CorruptImageError, match=r"face box \(x=3, y=3, w=0, h=10\) of image x.png is too small"):
        buffer = io.BytesIO()
        Image.new("RGB", (100, 100)).save(buffer, format="PNG")
        data.folders.decode_image(buffer.getvalue(), "x.png", (3, 3, 0, 10))


def float_rgba_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF of 32-bit float RGBA pixels (one strip), written by hand: a layout
    Pillow has no mode for."""
    import struct

    pixels = np.full((height, width, 4), 0.5, "<f4").tobytes()
    tags = [  # (tag, type 3 SHORT / 4 LONG, count, value; None: the 4 values written after the directory)
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 4, None), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, None), (277, 3, 1, 4), (278, 3, 1, height), (279, 4, 1, len(pixels)),
        (338, 3, 1, 2), (339, 3, 4, None),
    ]  # fmt: skip
    extra = 8 + 2 + 12 * len(tags) + 4  # the 8 bytes of BitsPerSample, then SampleFormat's, then pixels
    offsets = {258: extra, 339: extra + 8, 273: extra + 16}

    def entry(tag, kind, count, value):
        if value is None:
            return struct.pack("<HHII", tag, kind, count, offsets[tag])
        return struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, count, value, *([0] if kind == 3 else []))

    directory = b"".join(entry(*tag) for tag in tags)
    head = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + directory + struct.pack("<I", 0)
    return head + struct.pack("<4H", *[32] * 4) + struct.pack("<4H", *[3] * 4) + pixels


def test_a_float_rgba_tiff_is_refused_saying_what_it_holds(tmp_path):
    """Pillow cannot identify it: the refusal says what the file holds, not 'not an image format'."""
    from faml_jax.photos import read_photo

    (tmp_path / "float.tif").write_bytes(float_rgba_tiff(5, 4))
    with pytest.raises(CorruptImageError) as caught:
        read_photo(tmp_path / "float.tif")
    assert str(caught.value) == (
        f"cannot decode image {tmp_path / 'float.tif'}: a TIFF of 32-bit floating-point RGBA pixels (4 samples "
        "each), a layout Pillow cannot read; save it as 8-bit RGB or grey"
    )


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from faml_jax.photos import read_photo

    monkeypatch.setenv("FAML_JAX_MAX_PIXELS", "2000")
    for fmt, name in (("JPEG", "big.jpg"), ("PNG", "big.png")):
        Image.new("RGB", (50, 41)).save(tmp_path / name, format=fmt)
        with pytest.raises(
            data.folders.ImageTooLargeError,
            match=f"image .*{name} is 50x41 pixels \\(0.00205 megapixels\\), over the limit of 0.002 "
            "\\(set FAML_JAX_MAX_PIXELS to raise it\\)",
        ):
            read_photo(tmp_path / name)
    Image.new("RGB", (50, 40)).save(tmp_path / "ok.png")
    assert read_photo(tmp_path / "ok.png").shape == (40, 50, 3)
    monkeypatch.setenv("FAML_JAX_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="FAML_JAX_MAX_PIXELS='lots' is not a positive number"):
        read_photo(tmp_path / "ok.png")
    monkeypatch.delenv("FAML_JAX_MAX_PIXELS")
    assert data.folders.max_pixels() == data.folders.MAX_PIXELS == 80_000_000


def test_a_large_jpeg_is_decoded_at_reduced_scale_where_the_face_is_small():
    """libjpeg's DCT scaling: the face (whole image or box) still at least the size needed, its
    pixels those of the full decode shrunk by area averaging (within a few grey levels), the box
    scaled with the image; a face less than twice the size needed is decoded at full scale."""
    from skimage import data as samples

    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buffer, "JPEG", quality=95)
    jpeg = buffer.getvalue()
    full = data.folders.decode_image(jpeg, "a.jpg")
    for min_size, expected in ((60, 64), (100, 128), (200, 256), (256, 320), (300, 512)):
        reduced = data.folders.decode_image(jpeg, "a.jpg", min_size=min_size)
        assert reduced.shape == (expected, expected, 3), min_size
        shrunk = np.asarray(Image.fromarray(full).resize((expected, expected), Image.BOX), np.float32)
        assert np.abs(reduced.astype(np.float32) - shrunk).mean() < 3.0
    box = (180, 60, 160, 200)  # the astronaut's face
    face = data.folders.decode_image(jpeg, "a.jpg", box, min_size=40)
    assert face.shape[:2] == (76, 60)  # decoded at 3/8 (2/8 would leave the box 40 x 50: one pixel short)
    photo, scale = data.folders.decode_photo(jpeg, "a.jpg", 150)  # the whole photo at 3/8
    assert scale == 0.375 and photo.shape == (192, 192, 3)
    np.testing.assert_array_equal(
        face, photo[round(60 * scale) : round(260 * scale), round(180 * scale) : round(340 * scale)]
    )
    shrunk = np.asarray(Image.fromarray(full).resize((192, 192), Image.BOX), np.float32)
    assert np.abs(photo.astype(np.float32) - shrunk).mean() < 3.0


def test_training_reads_large_jpegs_at_reduced_scale(folders, tmp_path):
    """The data set a run opens decodes with its input size as the size needed: RAF-DB's 40 px
    faces for a 12 px input are decoded at 3/8 (15 px, the smallest scale keeping 12 + 1), for a
    32 px input at full size (40 is less than twice 32)."""
    small = data.open_dataset("rafdb", folders["rafdb"], min_size=12)
    assert small.train[0]["image"].shape == (15, 15, 3)
    assert data.open_dataset("rafdb", folders["rafdb"], min_size=32).train[0]["image"].shape == (40, 40, 3)


@pytest.mark.parametrize(
    "column, value",
    [
        ("expression", "inf"),
        ("expression", "1e400"),
        ("expression", "nan"),
        ("expression", "-inf"),
        ("face_width", "inf"),
        ("face_height", "1e30"),
        ("face_x", "nan"),
        ("face_y", "ten"),
    ],
)
def test_non_finite_or_huge_csv_numbers_are_named_by_file_row_and_column(tmp_path, capsys, column, value):
    """A label that is no whole number is left out and reported like any code out of range; a face
    box number that is not a finite pixel count stops with one line naming the CSV, its line and
    the column (they ended in OverflowError tracebacks)."""
    folder = fixtures.write_affectnet_original(
        tmp_path / "an", [0, 1, 2, 3, 4, 5, 6, 7] * 2, [0, 1, 2, 3, 4, 5, 6, 7], size=24
    )
    train_csv = folder / "Manually_Annotated_file_lists" / "training.csv"
    rows = list(csv.reader(open(train_csv, newline="")))
    rows[3][rows[0].index(column)] = value
    with open(train_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    if column == "expression":
        notes = "\n".join(data.open_dataset("affectnet8", folder).notes)
        assert f"train: 1 labels out of range (training.csv line 4: expression {value!r})" in notes
        return
    with pytest.raises(DataError, match=f"^{train_csv}:4: column {column} is {value!r}, not a number of pixels$"):
        data.open_dataset("affectnet8", folder)
    assert (
        train_program.main(
            [
                "--dataset",
                "affectnet8",
                "--data-dir",
                str(folder),
                "--from-scratch",
                "--epochs",
                "1",
                "--workdir",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.strip().endswith(f"{train_csv}:4: column {column} is {value!r}, not a number of pixels")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
