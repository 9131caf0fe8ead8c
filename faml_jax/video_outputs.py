"""What a video's analysis leaves in a prediction folder (``experiments.predict`` with video
inputs), written as the frames arrive: ``video/<name>/frames.csv`` (``video.columns``),
``summary.json`` (per face: frames, time span, share of time per decided class, dominant class),
``timeline.png`` (``figures.timeline_figure``) and, with ``annotate``, ``annotated.mp4`` (H.264,
yuv420p, the analysed frames at their own times: browsers play it).

    >>> writer = VideoOutput(folder, video.probe(path), predictor.classes, smoothed=True, annotate=True)
    >>> for analysed in video.analyse(predictor, path, smooth=1.0, keep_images=True):
    ...     writer.add(analysed)
    >>> summary = writer.close()
"""

from __future__ import annotations

import csv
import fractions
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faml_jax.video import Analysed, DamagedVideoError, VideoInfo, columns
from faml_jax.writer import write_atomic, write_json

SUMMARY_KIND = "faml_jax.video_summary"
# One colour per face id (cycled): boxes and labels in the annotated video, lines' ids in the CSV.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


class VideoOutput:
    """The outputs of one video in ``folder`` (created), fed one ``Analysed`` frame at a time;
    only the per-face scores for the timeline are kept (8 bytes a class a row)."""

    def __init__(self, folder: Path, info: VideoInfo, classes: Sequence[str], *, smoothed: bool, annotate: bool):
        self.folder, self.info, self.classes, self.smoothed = Path(folder), info, list(classes), smoothed
        self.folder.mkdir(parents=True, exist_ok=True)
        self._csv_file = open(self.folder / "frames.csv", "w", newline="")  # noqa: SIM115 - closed by close()
        self._csv = csv.DictWriter(self._csv_file, columns(classes, smoothed), restval="", lineterminator="\n")
        self._csv.writeheader()
        self._series: dict[int, tuple[list, list]] = {}  # id -> (times, scores)
        self._faces: dict[int, dict] = {}
        self._previous: Analysed | None = None
        self._intervals: list[float] = []
        self.analysed = 0
        self._video = _AnnotatedVideo(self.folder / "annotated.mp4", info) if annotate else None

    def add(self, analysed: Analysed) -> None:
        for row in analysed.rows:
            self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        if self._previous is not None:
            interval = analysed.frame.time - self._previous.frame.time
            self._intervals.append(interval)
            self._credit(self._previous, interval)
        for row in analysed.rows:
            if row["face_id"] is None:
                continue
            prefix = "smooth_" if self.smoothed else "score_"
            times, scores = self._series.setdefault(row["face_id"], ([], []))
            times.append(row["timestamp"])
            scores.append(np.array([row[prefix + c] for c in self.classes], np.float32))
            face = self._faces.setdefault(
                row["face_id"], {"frames": 0, "first": row["timestamp"], "seconds": dict.fromkeys(self.classes, 0.0)}
            )
            face["frames"] += 1
            face["last"] = row["timestamp"]
        if self._video is not None:
            self._video.write(analysed, self.smoothed)
        self._previous = analysed
        self.analysed += 1

    def _credit(self, analysed: Analysed, seconds: float) -> None:
        for row in analysed.rows:
            if row["face_id"] is not None:
                decided = row["smooth_class"] if self.smoothed else row["class"]
                self._faces[row["face_id"]]["seconds"][decided] += seconds

    def close(self, stopped: DamagedVideoError | None = None, command: str = "") -> dict:
        """Finish the files; returns the summary (also written as summary.json)."""
        from faml_jax.figures import save, timeline_figure
        from faml_jax.versions import stamped

        if self._previous is not None:  # the last frame counts for the usual interval
            self._credit(self._previous, float(np.median(self._intervals)) if self._intervals else 0.0)
        self._csv_file.close()
        if self._video is not None:
            self._video.close()
        faces = {}
        for face_id, face in sorted(self._faces.items()):
            total = sum(face["seconds"].values())
            shares = {c: round(s / total, 4) if total else 0.0 for c, s in face["seconds"].items()}
            faces[str(face_id)] = {
                "frames": face["frames"],
                "first_seen": face["first"],
                "last_seen": face["last"],
                "share_of_time": shares,
                "dominant": max(shares, key=shares.get) if total else None,
            }
        summary = {
            "kind": SUMMARY_KIND,
            "video": self.info.path,
            "command": command,
            "width": self.info.width,
            "height": self.info.height,
            "rotation": self.info.rotation,
            "analysed_frames": self.analysed,
            "decision": "smoothed" if self.smoothed else "raw",
            "faces": faces,
            "stopped": None
            if stopped is None
            else {"frame": stopped.frame, "time": stopped.time, "error": str(stopped)},
        }
        write_json(self.folder / "summary.json", stamped(summary))
        series = {i: (np.asarray(t), np.stack(s)) for i, (t, s) in sorted(self._series.items())}
        which = "smoothed scores" if self.smoothed else "scores"
        figure = timeline_figure(series, self.classes, title=f"{Path(self.info.path).name}: {which} per face")
        write_atomic(self.folder / "timeline.png", payload=save(figure, "png"))
        return summary


class _AnnotatedVideo:
    """H.264 (libx264, yuv420p, even sides) of the analysed frames at their own times."""

    def __init__(self, path: Path, info: VideoInfo):
        from faml_jax.video import _av

        av = _av()
        self._av, self.path = av, path
        self.container = av.open(str(path), "w", options={"movflags": "faststart"})
        self.stream = self.container.add_stream("libx264", rate=max(1, round(info.fps or 25)))
        self.stream.width, self.stream.height = info.width // 2 * 2, info.height // 2 * 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = fractions.Fraction(1, 1000)
        self.stream.options = {"crf": "23", "preset": "veryfast"}
        self.last_pts = -1

    def write(self, analysed: Analysed, smoothed: bool) -> None:
        image = annotate_frame(analysed.frame.image, analysed.rows, smoothed)
        image = np.ascontiguousarray(image[: self.stream.height, : self.stream.width])
        frame = self._av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = max(round(analysed.frame.time * 1000), self.last_pts + 1)
        frame.time_base = self.stream.codec_context.time_base
        self.last_pts = frame.pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def annotate_frame(image: np.ndarray, rows: Sequence[dict], smoothed: bool = False) -> np.ndarray:
    """``image`` with each face's box in its id's colour and "id N class confidence" above it."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height = image.shape[0]
    font = ImageFont.load_default(size=max(12, height // 24))
    width = max(2, round(height / 180))
    for row in rows:
        if row["face_id"] is None:
            continue
        colour = PALETTE[row["face_id"] % len(PALETTE)]
        box = (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
        draw.rectangle(box, outline=colour, width=width)
        decided, confidence = (
            (row["smooth_class"], row["smooth_confidence"]) if smoothed else (row["class"], row["confidence"])
        )
        text = f"{row['face_id']}: {decided} {confidence:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = min(max(box[0], 0), max(image.shape[1] - (right - left) - 4, 0))
        y = box[1] - (bottom - top) - 6 if box[1] - (bottom - top) - 6 >= 0 else box[3] + 2
        draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 4), fill=colour)
        draw.text((x + 2, y + 2 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def write_video(
    folder: Path, predictor, path, *, annotate: bool = False, command: str = "", **kwargs
) -> tuple[dict, DamagedVideoError | None]:
    """Analyse the video ``path`` (``video.analyse``'s ``kwargs``) into ``folder``; returns its
    summary and, for a damaged video, the ``DamagedVideoError`` that stopped it (its rows kept)."""
    from faml_jax.video import analyse, probe

    output = VideoOutput(folder, probe(path), predictor.classes, smoothed=bool(kwargs.get("smooth")), annotate=annotate)
    stopped = None
    try:
        for analysed in analyse(predictor, path, keep_images=annotate, **kwargs):
            output.add(analysed)
    except DamagedVideoError as error:
        stopped = error
    return output.close(stopped, command), stopped
