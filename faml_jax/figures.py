"""The paper's Fig. 8: the attention maps of several models (rows) on one test image per
expression (columns), each image one that every row classifies correctly (``figure_of_maps``;
``python -m experiments.explain``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from faml_jax import runs
from faml_jax.errors import ConfigError
from faml_jax.predict import Predictor


def figure_of_maps(
    rows: Sequence[tuple[str, Predictor]],
    *,
    kind: str = "gradcam",
    indices: Sequence[int] | None = None,
    data_dir: str | None = None,
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
    test = runs.open_dataset(config).test
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


# ---------------------------------------------------------------------------------------------
# Expressions over time (issue 40: a video's faces, ``faml_jax.video_outputs``)


def timeline_figure(series: dict, classes, *, title: str = "", gap: float = 1.0):
    """A face's class scores over time, one panel per face (``series``: id -> (times (T,),
    scores (T, C))), seconds on the x axis, one coloured line per class (the paper's names,
    capitalised), breaks where the face was missing for more than ``gap`` seconds. Sized for a
    slide: 12 in wide, text at least 12 pt. A matplotlib ``Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure

    names = [c.capitalize() for c in classes]
    colours = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#808080"]
    rows = max(len(series), 1)
    figure = Figure(figsize=(12, 1.2 + 2.4 * rows), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    end = max((float(t[-1]) for t, _ in series.values() if len(t)), default=1.0)
    for ax, (face_id, (times, scores)) in zip(axes, series.items()):
        times, scores = np.asarray(times, np.float64), np.asarray(scores, np.float64)
        breaks = np.flatnonzero(np.diff(times) > gap) + 1  # NaN between pieces: no line across an absence
        times = np.insert(times, breaks, np.nan)
        scores = np.insert(scores, breaks, np.nan, axis=0)
        for c, name in enumerate(names):
            ax.plot(times, scores[:, c], color=colours[c % len(colours)], linewidth=2, label=name)
        ax.set_ylabel(f"face {face_id}\nscore", fontsize=13)
        ax.set_ylim(0, max(1.0, float(np.nanmax(scores)) * 1.05) if len(scores) else 1.0)
        ax.set_xlim(0, end)
        ax.tick_params(labelsize=12)
        ax.grid(alpha=0.3)
    if not series:
        axes[0].text(0.5, 0.5, "no face found", ha="center", va="center", fontsize=16, transform=axes[0].transAxes)
    axes[-1].set_xlabel("time (s)", fontsize=13)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=12, frameon=False)
    if title:
        figure.suptitle(title, fontsize=15)
    return figure


def save_figure(figure, path) -> None:
    """``figure`` as a PNG (100 dpi) or, by suffix, PDF/SVG, written atomically."""
    import io
    from pathlib import Path

    from faml_jax.writer import write_atomic

    buffer = io.BytesIO()
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    figure.savefig(buffer, format=suffix, dpi=100)
    write_atomic(Path(path), payload=buffer.getvalue())
