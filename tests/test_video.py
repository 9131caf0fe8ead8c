"""Tests of faml_jax.video / tracking / video_outputs and ``experiments.predict`` on videos, on clips
made here from scikit-image's real photographs (tools.clips: the astronaut and an LFW face) with
PyAV: ids kept through a crossing and a short absence, container times of a variable-frame-rate
clip, a rotated clip's boxes upright, rows for frames without a face, scores equal to
``Predictor.predict`` on the same crops, smoothing equal to a NumPy reference, a truncated file's
rows kept (exit 1), and peak memory that does not grow with the clip's length."""

# PyAV, dlib and scikit-image are in the test extra (`make test` installs them): imported, not
# skipped, so that these tests run wherever the suite does.
import csv
import json
import subprocess
import sys

import av
import dlib  # noqa: F401
import numpy as np
import pytest
import skimage.data  # noqa: F401
from helpers import jittered_variables, program_env, tiny_config, write_run

from experiments.predict import main
from faml_jax import faces, video
from faml_jax.predict import Predictor
from tools.clips import render, sprites, write_clip

SIZE = (416, 240)


def placements(t):
    """Two faces crossing in an X over 2 s (the LFW face drawn over the astronaut where they
    meet); the astronaut away from 2.4 s to 2.8 s, back where its motion had taken it."""
    astronaut, lfw = sprites(0.9)
    width, height = SIZE
    u = min(t / 2.0, 1.0)
    a_side, b_side = astronaut.shape[0], lfw.shape[0]
    a = (u * (width - a_side), u * (height - a_side) * 0.4)
    if t > 2.0:
        a = (width - a_side - (t - 2.0) * 60, (height - a_side) * 0.4)
    if 2.4 < t < 2.8 or t >= 3.4:
        a = None
    b = ((1 - u) * (width - b_side), u * (height - b_side) * 0.4 + 20) if t <= 2.0 else None
    return [(astronaut, a), (lfw, b)]


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    times = [i / 10 for i in range(36)]  # 3.6 s at 10 fps; the last 0.2 s without a face
    write_clip(root / "cross.mp4", times, lambda t: render(SIZE, placements(t)), rate=10)
    return root


@pytest.fixture(scope="session")
def predictor(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-run")
    config = tiny_config(root / "data", 1)
    run = write_run(root / "net", config, jittered_variables(config, 3))
    return Predictor.from_run(run, batch_size=8)


@pytest.fixture(scope="module")
def rows(predictor, clips):
    return list(video.records(predictor, clips / "cross.mp4", every=1, smooth=0.5, gap=1.0))


def test_crossing_faces_and_a_short_absence_keep_their_ids(rows, predictor, clips):
    faced = [r for r in rows if r["face_id"] is not None]
    ids = sorted({r["face_id"] for r in faced})
    assert ids == [0, 1]  # two faces, whatever crossed and whoever was away for 0.4 s
    for face_id in ids:
        x = [(r["box_x0"] + r["box_x1"]) / 2 for r in faced if r["face_id"] == face_id and r["timestamp"] <= 2.0]
        start, end = x[0], x[-1]
        assert abs(end - start) > SIZE[0] / 3  # each id crossed the frame ...
        assert np.all(np.diff(x) * np.sign(end - start) > -3)  # ... one way: never swapped with the other
    astronaut = min((r for r in faced if r["frame"] == 0), key=lambda r: r["box_x0"])["face_id"]  # on the left
    assert {r["face_id"] for r in faced if r["timestamp"] > 2.8} == {astronaut}  # back after 0.4 s < gap
    # With a gap shorter than the absence it is a new face.
    again = list(video.records(predictor, clips / "cross.mp4", every=1, gap=0.2))
    back = {r["face_id"] for r in again if r["timestamp"] > 2.8} - {None}
    assert len(back) == 1 and back.isdisjoint(r["face_id"] for r in again if r["timestamp"] < 2.4)


def test_frames_without_faces_have_rows(rows):
    empty = [r for r in rows if r["timestamp"] >= 3.4]
    assert [r["frame"] for r in empty] == [34, 35]
    assert all(r["face_id"] is None and r["success"] == 0 and "class" not in r for r in empty)
    assert sorted({r["frame"] for r in rows}) == list(range(36))  # every analysed frame has a row


def test_scores_equal_predictor_predict_on_the_same_crops(rows, predictor, clips):
    finder = faces.Finder(faces.mode_for(predictor.dataset), upsample=video.DEFAULT_UPSAMPLE)
    crops, expected_boxes = [], []
    for frame in video.frames(clips / "cross.mp4", every=1):
        for face in finder.find(frame.image):
            crops.append(face.crop)
            expected_boxes.append(list(face.box))
    faced = [r for r in rows if r["face_id"] is not None]
    assert [[r[k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")] for r in faced] == expected_boxes
    prediction = predictor.predict(crops)
    table = np.array([[r[f"score_{c}"] for c in predictor.classes] for r in faced])
    np.testing.assert_allclose(table, prediction.scores, atol=1e-5)
    assert [r["class"] for r in faced] == prediction.labels()


def test_smoothing_equals_a_numpy_reference(rows, predictor):
    faced = [r for r in rows if r["face_id"] is not None]
    raw = np.array([[r[f"score_{c}"] for c in predictor.classes] for r in faced], np.float64)
    times = np.array([r["timestamp"] for r in faced])
    ids = np.array([r["face_id"] for r in faced])
    for i, r in enumerate(faced):
        window = (ids == ids[i]) & (times > times[i] - 0.5) & (times <= times[i])
        expected = raw[window].mean(0)
        got = np.array([r[f"smooth_{c}"] for c in predictor.classes])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert r["smooth_class"] == predictor.classes[int(np.argmax(expected))]


def test_variable_frame_rate_times_are_the_containers(tmp_path):
    times = [0.0, 0.04, 0.1, 0.45, 0.46, 0.5, 1.3, 1.32, 2.0]
    path = write_clip(tmp_path / "vfr.mkv", times, lambda t: np.full((64, 96, 3), int(t * 100), np.uint8))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stored = sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None)
    decoded = [f.time for f in video.frames(path, every=1)]
    np.testing.assert_allclose(decoded, stored, atol=1e-9)
    np.testing.assert_allclose(decoded, times, atol=1e-3)
    # --fps 10 keeps the first frame of each tenth of a second.
    assert [f.time for f in video.frames(path, fps=10)] == pytest.approx([0.0, 0.1, 0.45, 0.5, 1.3, 2.0])


def test_a_rotated_clip_gives_boxes_in_the_shown_orientation(tmp_path, predictor):
    shown = render((240, 400), [(sprites(0.9)[0], (40, 150))])  # a portrait frame as shown
    path = write_clip(tmp_path / "phone.mp4", [0.0, 0.1], lambda t: shown, rotation=90)
    info = video.probe(path)
    assert (info.width, info.height, info.rotation) == (240, 400, 90)
    frame = next(video.frames(path, every=1))
    assert frame.image.shape == shown.shape and np.abs(frame.image.astype(int) - shown).mean() < 3
    (expected,) = faces.Finder("box", upsample=0).find(shown)
    got = [r for r in video.records(predictor, path, every=1) if r["face_id"] is not None]
    assert len(got) == 2
    box = [got[0][k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")]
    assert np.abs(np.subtract(box, expected.box)).max() <= 4


def test_the_program_writes_the_table_summary_timeline_and_annotated_video(tmp_path, clips, predictor, logged):
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("neither\n")
    code = main(
        [*("--run", str(predictor.paths[0]), str(clips / "cross.mp4"), str(tmp_path / "notes.txt")),
         *("--out", str(out), "--every", "2", "--smooth", "0.5", "--annotate", "--no-progress", "--batch-size", "8")]
    )  # fmt: skip
    assert code == 1  # the text file: one line
    assert [m for m in logged if "neither" in m] == [
        f"{tmp_path / 'notes.txt'}: neither an image Pillow opens nor a video FFmpeg decodes"
    ]
    folder = out / "video" / "cross"
    with open(folder / "frames.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted({int(r["frame"]) for r in table}) == list(range(0, 36, 2))
    assert table[0]["frame"] == "0" and "smooth_class" in table[0] and "score_happiness" in table[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["analysed_frames"] == 18 and set(summary["faces"]) == {"0", "1"}
    for face in summary["faces"].values():
        assert sum(face["share_of_time"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["dominant"] == max(face["share_of_time"], key=face["share_of_time"].get)
    with av.open(str(folder / "annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in container.decode(stream)) == 18
    listed = json.loads((out / "predictions.json").read_text())["files"]
    assert {"video/cross/frames.csv", "video/cross/timeline.png", "video/cross/annotated.mp4"} <= set(listed)


def test_a_truncated_video_keeps_its_rows_and_exits_1(tmp_path, clips, predictor, logged):
    whole = tmp_path / "whole.mkv"
    with av.open(str(clips / "cross.mp4")) as source, av.open(str(whole), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    code = main(
        [
            "--run",
            str(predictor.paths[0]),
            str(cut),
            "--out",
            str(out),
            "--every",
            "1",
            "--no-progress",
            "--batch-size",
            "8",
        ]
    )
    assert code == 1
    (line,) = [m for m in logged if "damaged" in m]
    with open(out / "video" / "cut" / "frames.csv") as f:
        table = list(csv.DictReader(f))
    last = max(int(r["frame"]) for r in table)
    assert 5 < last < 35 and f"stopped after frame {last} (" in line
    summary = json.loads((out / "video" / "cut" / "summary.json").read_text())
    assert summary["stopped"]["frame"] == last


RSS_PROGRAM = """
import resource, sys
from experiments.predict import main
for clip in sys.argv[1:3]:
    code = main([*sys.argv[3:], clip, "--out", clip + ".out"])
    print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)
"""


def test_peak_memory_does_not_grow_with_the_clips_length(tmp_path, predictor):
    """One process analyses a clip of 100 frames, then one of 600 (faces in each): the peak
    after the second, six times longer, is the first's (imports, compilation, one batch) plus
    a small margin, less than keeping each of the 500 more frames would take (500 x 27 KiB).
    Frames of 96x96 px: the size proves nothing here, the count does."""
    lfw = sprites(0.7)[1]
    clips = [
        write_clip(
            tmp_path / f"long{n}.mp4",
            [i / 50 for i in range(n)],
            lambda t: render((96, 96), [(lfw, (6 + 4 * np.sin(t), 6))]),
            rate=50,
        )
        for n in (100, 600)
    ]
    result = subprocess.run(
        [sys.executable, "-c", RSS_PROGRAM, *map(str, clips), "--run", str(predictor.paths[0])]
        + ["--every", "1", "--no-progress", "--batch-size", "8"],
        env=program_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    peaks = []
    for line in [x for x in result.stdout.splitlines() if x.startswith("MAXRSS")]:
        _, rss, code = line.split()
        assert code == "0"
        peaks.append(int(rss))
    assert len(peaks) == 2
    for clip, n in zip(clips, (100, 600)):
        table = clip.with_name(clip.name + ".out") / "video" / clip.stem / "frames.csv"
        rows = list(csv.DictReader(table.open()))
        assert len(rows) == n and all(r["success"] == "1" for r in rows)  # a face in every frame
    assert peaks[1] < peaks[0] + 10_000  # KiB: 6x the frames, at most 10 MB more at the peak


def test_a_folders_videos_are_recognised_by_content(tmp_path, clips, logged):
    from PIL import Image

    from faml_jax.inputs import input_files

    (tmp_path / "holiday").write_bytes((clips / "cross.mp4").read_bytes())  # no suffix
    (tmp_path / "b.dat").write_bytes((clips / "cross.mp4").read_bytes())  # a misleading one
    Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("neither\n")
    found = input_files([tmp_path])
    assert found == [tmp_path / "a.png", tmp_path / "b.dat", tmp_path / "holiday"]
    assert video.split_videos(found) == ([tmp_path / "a.png"], [tmp_path / "b.dat", tmp_path / "holiday"], [])
    assert [m for m in logged if "passed over" in m] == [
        f"{tmp_path}: 1 file(s) passed over, not images Pillow can open nor videos FFmpeg decodes (notes.txt)"
    ]
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "clip").write_bytes((clips / "cross.mp4").read_bytes())
    assert input_files([tmp_path / "only"]) == [tmp_path / "only" / "clip"]  # a folder of videos alone


def test_the_timeline_is_drawn_without_overlapping_or_cut_text():
    from faml_jax import figures

    classes = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    times = np.arange(0, 20, 0.1)
    scores = np.random.default_rng(0).dirichlet(np.ones(7), len(times))
    fig = figures.timeline_figure({0: (times, scores), 2: (times[50:], scores[50:])}, classes, title="clip.mp4: scores")
    assert figures.overlapping_text(fig) == [] and figures.text_outside(fig) == []
    texts = [t for t, _ in figures.text_boxes(fig)]
    assert {"Surprise", "Neutral", "time (s)", "face 0\nscore", "face 2\nscore"} <= set(texts)


def test_tracker_and_iou():
    from faml_jax.tracking import Tracker, iou_matrix

    np.testing.assert_allclose(iou_matrix([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]), [[1 / 3, 0]])
    tracker = Tracker(gap=0.5)
    assert tracker.update([(0, 0, 10, 10), (50, 0, 60, 10)], 0.0) == [0, 1]
    assert tracker.update([(52, 0, 62, 10), (2, 0, 12, 10)], 0.1) == [1, 0]
    assert tracker.update([], 0.3) == []
    assert tracker.update([(6, 0, 16, 10)], 0.5) == [0]  # away 0.4 s, moved on as it was moving
    assert tracker.update([(60, 0, 70, 10)], 1.2) == [2]  # face 1 unseen for 1.1 s > gap
