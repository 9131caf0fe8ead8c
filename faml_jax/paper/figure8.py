"""The paper's Fig. 8: the attention maps of several models (rows) on one test image per
expression (columns): the rows of a finished ablation (``figure8_rows``), the maps and the
images chosen (``figure_of_maps``: per expression the test image that the most rows classify
correctly, docs/method.md 6) and the figure drawn in the project's style (``draw_figure8``;
``python -m experiments.explain``)."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faml_jax import figures, runs
from faml_jax.errors import ConfigError
from faml_jax.paper.ablation import VARIANTS


def figure8_rows(ablation_dir: str | os.PathLike, checkpoint: str = "final") -> list:
    """The rows of the paper's Fig. 8 from a finished ablation (``table2``'s workdir): R18,
    R18+FA and R18+FAML (each row's first network), R18+FAML-FGA (the best network of the final
    population) and R18+FAML-FGA-T2V (the final population voting), as ``(label, Predictor)``
    pairs for ``figure_of_maps``."""
    from faml_jax.predict import Predictor

    ablation_dir = Path(ablation_dir)
    table = runs.read_json(ablation_dir / "table2.json", "the ablation's table (a finished experiments.ablation)")
    first_seed = table["seeds"][0]
    rows = [
        (row, Predictor.from_run(ablation_dir / VARIANTS[row] / f"seed{first_seed}", checkpoint)) for row in VARIANTS
    ]
    population = runs.population_members(ablation_dir / "fga")
    best = table["rows"]["R18+FAML-FGA"]["best_network"]
    best_dir = dict(population)[best]
    rows.append((f"R18+FAML-FGA ({best})", Predictor.from_run(best_dir, checkpoint)))
    rows.append(("R18+FAML-FGA-T2V", Predictor._from_members(population, checkpoint)))
    return rows


def choose_columns(right: np.ndarray, confidence: np.ndarray, labels: np.ndarray, classes: int) -> list[int]:
    """Fig. 8's image per expression: among the test images of that class, the one the most rows
    classify correctly (``right``: (rows, N) bool), ties broken by the rows' mean probability of
    the true class (``confidence``: (rows, N)), then by the lowest index; -1 for a class without
    a test image. Every column shows a face, even when no image is right for every row."""
    chosen = []
    for c in range(classes):
        candidates = np.flatnonzero(labels == c)
        if len(candidates) == 0:
            chosen.append(-1)
            continue
        votes, sure = right[:, candidates].sum(0), confidence[:, candidates].mean(0)
        best = np.lexsort((candidates, -sure, -votes))[0]  # most rows right, surest, first
        chosen.append(int(candidates[best]))
    return chosen


def figure_of_maps(
    rows: Sequence[tuple[str, object]],
    *,
    kind: str = "gradcam",
    indices: Sequence[int] | None = None,
    data_dir: str | None = None,
) -> dict:
    """The maps of every model in ``rows`` ((label, Predictor): a run or an ensemble each) on one
    test image per expression (``choose_columns``, or ``indices``: one test index per class).
    Returns ``{"maps": (rows, classes, S, S), "images": (classes, S, S, 3), "indices",
    "right": (rows, classes) bool (the row decides the image's class), "classes", "rows"}``."""
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
    if indices is not None:
        chosen = _checked_indices(indices, labels, classes)
    else:
        right = np.zeros((len(rows), len(labels)), bool)
        confidence = np.zeros((len(rows), len(labels)), np.float32)
        for start in range(0, len(labels), first.batch_size):
            span = np.arange(start, min(start + first.batch_size, len(labels)))
            faces = first.preprocess([test[int(i)]["image"] for i in span])
            for r, (_, predictor) in enumerate(rows):
                prediction = predictor.predict(faces)
                right[r, span] = prediction.decision == labels[span]
                confidence[r, span] = prediction.probabilities.mean(0)[np.arange(len(span)), labels[span]]
        chosen = choose_columns(right, confidence, labels, len(classes))
    size = first.input_size
    shown = [k for k, i in enumerate(chosen) if i >= 0]
    images = np.zeros((len(classes), size, size, 3), np.uint8)
    grid_maps = np.zeros((len(rows), len(classes), size, size), np.float32)
    decided = np.zeros((len(rows), len(classes)), bool)
    if shown:
        images[shown] = first.preprocess([test[chosen[k]]["image"] for k in shown])
        for r, (_, predictor) in enumerate(rows):
            combined, _, prediction = predictor.explain(images[shown], kind)
            grid_maps[r, shown] = combined
            decided[r, shown] = prediction.decision == np.asarray(shown)
    return {
        "maps": grid_maps,
        "images": images,
        "indices": chosen,
        "right": decided,
        "classes": list(classes),
        "rows": [label for label, _ in rows],
        "kind": kind,
        "dataset": first.dataset,
    }


def _checked_indices(indices: Sequence[int], labels: np.ndarray, classes: Sequence[str]) -> list[int]:
    """``indices`` (one test index per class), each inside the test split and of its class."""
    if len(indices) != len(classes):
        raise ConfigError(f"give one test index per expression ({len(classes)}), got {len(indices)}")
    for c, index in enumerate(indices):
        if not 0 <= index < len(labels):
            raise ConfigError(f"test index {index} is outside the test split (0..{len(labels) - 1})")
        if labels[index] != c:
            raise ConfigError(
                f"test image {index} shows {classes[labels[index]]}, not {classes[c]} (the "
                f"{c + 1}. index is for {classes[c]})"
            )
    return [int(i) for i in indices]


def draw_figure8(figure: dict):
    """Fig. 8 across the paper's page: a column per expression (its name and test index above),
    a row per model (its label on the left), each cell the image with the row's map as a JET
    overlay, a cross-marked cell where the row decides another class, one colour bar below."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from faml_jax.maps import overlay

    grid_maps, images = figure["maps"], figure["images"]
    n_rows, n_cols = grid_maps.shape[:2]
    cell = min(0.78, (figures.PAGE - 1.6) / n_cols)
    with figures.style():
        fig = figures.new_figure(figures.PAGE, 1.3 + cell * n_rows)
        axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02}))
        for r, c in np.ndindex(n_rows, n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            index = figure["indices"][c]
            if index >= 0:
                ax.imshow(overlay(images[c], grid_maps[r, c]), interpolation="bilinear")
                if not figure["right"][r, c]:
                    ax.text(0.96, 0.96, "x", transform=ax.transAxes, ha="right", va="top", color="white")
            if r == 0:
                ax.set_title(f"{figure['classes'][c]}\n#{index}" if index >= 0 else f"{figure['classes'][c]}\nno image")
            if c == 0:
                label = "\n".join(textwrap.wrap(figure["rows"][r], 16))
                ax.set_ylabel(label, rotation=0, ha="right", va="center")
        name = {"gradcam": "Grad-CAM", "relevancy": "relevancy"}.get(figure["kind"], figure["kind"])
        figures.colorbar(
            fig,
            ScalarMappable(Normalize(0, 1), figures.jet_colormap()),
            axes.ravel().tolist(),
            f"{name} (0 none, 1 most)",
            ticks=[0, 0.5, 1],
            location="bottom",
            fraction=0.05,
            shrink=0.35,
            aspect=30,
        )
        fig.suptitle(
            f"Fig. 8 on {figure['dataset']}: {name} map of each model's decision, one test image per expression\n"
            "(x: the model decides another expression)"
        )
    return fig
