"""Face identities across video frames: a tracker that matches each frame's boxes to the faces
seen before by overlap (IoU) with where each face is expected to be, and by distance between
centres, and smoothing of a face's scores over time.

A face keeps its id while it moves, while it crosses another face (each track's box is moved on
by its velocity before matching, so two faces passing each other are matched to their own
tracks), and through an absence shorter than ``gap`` seconds; after a longer absence it gets a
new id. Pure NumPy, no detector: ``faml_jax.video`` feeds it the boxes of each analysed frame.

    >>> tracker = Tracker(gap=1.0)
    >>> tracker.update([(10, 10, 60, 60)], time=0.0)
    [0]
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from faml_jax.errors import ConfigError


def iou_matrix(a, b) -> np.ndarray:
    """(n, m) intersection over union of boxes ``a`` (n, 4) and ``b`` (m, 4), (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def centres(boxes) -> np.ndarray:
    """(n, 2) centres of boxes (n, 4)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


@dataclasses.dataclass
class Track:
    """One face followed over time: its id, last box and time, and velocity (pixels/s)."""

    id: int
    box: np.ndarray
    time: float
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))

    def expected(self, time: float, horizon: float) -> np.ndarray:
        """The box moved on by the velocity to ``time`` (at most ``horizon`` seconds ahead)."""
        shift = self.velocity * min(time - self.time, horizon)
        return self.box + np.concatenate([shift, shift])


class Tracker:
    """Give each face of each analysed frame an id (0, 1, ... in order of first appearance).

    Args:
      gap: seconds a face may be missing and keep its id (a face unseen for longer is forgotten).
      min_iou: a box overlapping a face's expected box at least this much may be that face.
      max_shift: ... or one whose centre is at most this many box sides from the expected centre.
    """

    def __init__(self, gap: float = 1.0, min_iou: float = 0.2, max_shift: float = 0.75):
        if gap < 0 or min_iou <= 0 or max_shift < 0:
            raise ConfigError(f"tracker: gap {gap} and max shift {max_shift} must be >= 0, min IoU {min_iou} > 0")
        self.gap, self.min_iou, self.max_shift = gap, min_iou, max_shift
        self.tracks: list[Track] = []
        self.next_id = 0

    def update(self, boxes: Sequence, time: float) -> list[int]:
        """The ids of ``boxes`` (n, 4) found at ``time`` seconds (times increase from call to call)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.tracks = [t for t in self.tracks if time - t.time <= self.gap]
        ids = [-1] * len(boxes)
        if self.tracks and len(boxes):
            expected = np.stack([t.expected(time, self.gap) for t in self.tracks])
            overlap = iou_matrix(expected, boxes)
            sides = np.maximum(expected[:, 2] - expected[:, 0], expected[:, 3] - expected[:, 1])
            distance = np.linalg.norm(centres(expected)[:, None] - centres(boxes)[None], axis=-1) / sides[:, None]
            allowed = (overlap >= self.min_iou) | (distance <= self.max_shift)
            pairs = sorted(zip(*np.nonzero(allowed)), key=lambda p: (-overlap[p], distance[p]))
            used_tracks: set[int] = set()
            for t, d in pairs:  # greedy: the best-overlapping pair first, each track and box once
                if t in used_tracks or ids[d] >= 0:
                    continue
                used_tracks.add(t)
                ids[d] = self.tracks[t].id
                self._move(self.tracks[t], boxes[d], time)
        for d, box in enumerate(boxes):
            if ids[d] < 0:
                ids[d] = self.next_id
                self.tracks.append(Track(self.next_id, box.copy(), time))
                self.next_id += 1
        return ids

    @staticmethod
    def _move(track: Track, box: np.ndarray, time: float) -> None:
        dt = time - track.time
        if dt > 0:
            velocity = (centres(box)[0] - centres(track.box)[0]) / dt
            track.velocity = 0.5 * track.velocity + 0.5 * velocity if track.velocity.any() else velocity
        track.box, track.time = box.copy(), time


class Smoother:
    """The mean of a face's scores over its last ``seconds`` (causal: rows at times in
    (t - seconds, t]; ``seconds`` 0 leaves the scores as they are), face by face."""

    def __init__(self, seconds: float):
        if seconds < 0:
            raise ConfigError(f"--smooth must be >= 0 seconds, got {seconds}")
        self.seconds = seconds
        self._windows: dict[int, collections.deque] = {}

    def add(self, face_id: int, time: float, scores) -> np.ndarray:
        """The smoothed scores of ``face_id`` at ``time`` once ``scores`` (C,) are added."""
        window = self._windows.setdefault(face_id, collections.deque())
        window.append((time, np.asarray(scores, np.float64)))
        while window and window[0][0] <= time - self.seconds and len(window) > 1:
            window.popleft()
        return np.mean([s for _, s in window], axis=0)
