"""One figure style for every picture the project writes (/work/shared/STYLE.md, "Pictures and
outputs people read"): matplotlib's settings in one place (``STYLE``, applied by ``style``), the
sizes a figure is drawn at (the paper's column, its page, a slide), titles that say what and which
model (``title``), colour bars with a label (``colorbar``, ``JET`` for attention maps), the
renderer's text boxes to find overlapping or cut-off text (``overlapping_text``,
``text_outside``; the tests use them), saving PNG, PDF or SVG (``save``), and the drawings shared
by several writers: a confusion matrix (``confusion_figure``), a face beside its attention map
(``map_panel``), boxes and labels on a photo (``label_photo``), pictures side by side
(``side_by_side``). The paper's own figures live beside their experiments
(``paper.architectures.figure7``, ``paper.figure8``) and draw with these.

    >>> with figures.style():
    ...     fig = figures.new_figure(figures.COLUMN, 2.5)
    ...     ax = fig.add_subplot()
    ...     ...
    ...     png = figures.save(fig, "png")
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

FORMATS = ("png", "pdf", "svg")  # --format of the programs that write the paper's figures
COLUMN = 3.3  # in: the width of one column of the paper (two-column layout)
PAGE = 6.9  # in: the paper's full text width, for figures across both columns
SLIDE = (6.4, 3.6)  # in: a picture for a screen or a slide (16:9)
PNG_DPI = 200  # pixels per inch of PNG files: a column-wide figure is 660 px wide

# Every figure's matplotlib settings: 8 pt text and 9 pt titles (the paper's 8-9 pt at column
# width; on a slide a 3.6 in high figure's 8 pt text is 3 % of its height), thin lines, fonts
# embedded as text in PDF (Type 42), files that do not change between two identical runs.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "image.interpolation": "nearest",
    "savefig.dpi": PNG_DPI,
    "pdf.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "faml_jax",
}
# Metadata left out so that the same figure gives the same bytes (no creation date).
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}, "svg": {"Date": None}}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """``STYLE`` in force for the figures drawn and saved inside (``matplotlib.rc_context``: the
    caller's own settings are back afterwards)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float):
    """A figure ``width`` x ``height`` inches with matplotlib's constrained layout, drawn by Agg
    (no window, no pyplot state). Call inside ``style()``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def title(what: str, model: str | None = None) -> str:
    """A title that says what is shown and which model: "what, model"."""
    return f"{what}, {model}" if model else what


def colorbar(fig, mappable, ax, label: str, **kwargs):
    """A narrow colour bar with ``label`` saying what the colours mean: beside ``ax`` and exactly
    as high as it (an inset, so an image's bar is the image's height), or beside a list of axes."""
    if isinstance(ax, (list, tuple)):
        bar = fig.colorbar(mappable, ax=ax, label=label, **{"fraction": 0.046, "pad": 0.03, "aspect": 25, **kwargs})
    else:
        bar = fig.colorbar(mappable, cax=ax.inset_axes([1.04, 0.0, 0.05, 1.0]), label=label, **kwargs)
    bar.outline.set_linewidth(0.5)
    return bar


def jet_colormap():
    """``maps.jet`` (the colours the attention overlays are drawn in) as a matplotlib colour map,
    so that a colour bar shows exactly the overlay's colours."""
    from matplotlib.colors import ListedColormap

    from faml_jax.maps import jet

    return ListedColormap(jet(np.linspace(0.0, 1.0, 256)) / 255.0, name="faml_jax_jet")


def save(fig, format: str = "png") -> bytes:
    """The figure's file in ``format`` (one of ``FORMATS``), as bytes for ``writer.write_atomic``."""
    if format not in FORMATS:
        from faml_jax.errors import ConfigError

        raise ConfigError(f"unknown figure format {format!r}; expected one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    with style():
        fig.savefig(buffer, format=format, metadata=_METADATA[format])
    return buffer.getvalue()


# -- the renderer's text boxes -------------------------------------------------------------------


def text_boxes(fig) -> list[tuple[str, object]]:
    """Every piece of text the figure draws, as (text, its box in display pixels): titles, axis
    labels, the tick labels of ticks within the axes' limits, legends, annotations, colour bars.
    The figure is drawn first, so the boxes are where the renderer puts them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    if not hasattr(fig.canvas, "get_renderer"):  # a Figure made without a canvas: Agg measures it
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    ticks, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            margin = 1e-9 * max(1.0, abs(high - low))
            for tick in itertools.chain(axis.get_major_ticks(), axis.get_minor_ticks()):
                labels = (tick.label1, tick.label2)
                ticks.update(id(t) for t in labels)
                shown = ax.axison and axis.get_visible() and tick.get_visible()
                if shown and low - margin <= tick.get_loc() <= high + margin:
                    drawn += [t for t in labels if t.get_visible()]
    drawn += [t for t in fig.findobj(Text) if id(t) not in ticks and t.get_visible()]
    boxes = []
    for text in dict.fromkeys(drawn):
        if text.get_text().strip() and text.get_figure(root=True) is fig:
            box = text.get_window_extent(renderer)
            if box.width > 0 and box.height > 0:
                boxes.append((text.get_text(), box))
    return boxes


def overlapping_text(fig, tolerance: float = 0.5) -> list[tuple[str, str]]:
    """The pairs of texts whose boxes overlap by more than ``tolerance`` pixels in both directions
    (a label drawn over another, e.g. "ResNet34" over "RI18 = R18")."""
    boxes = text_boxes(fig)
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > tolerance and height > tolerance:
            found.append((a, b))
    return found


def text_outside(fig, tolerance: float = 0.5) -> list[str]:
    """The texts that reach beyond the figure's edges (cut off in the file)."""
    frame = fig.bbox
    return [
        t
        for t, box in text_boxes(fig)
        if box.x0 < frame.x0 - tolerance
        or box.y0 < frame.y0 - tolerance
        or box.x1 > frame.x1 + tolerance
        or box.y1 > frame.y1 + tolerance
    ]


# -- drawings shared by several writers ----------------------------------------------------------


def confusion_figure(counts: np.ndarray, classes: Sequence[str], what: str, model: str | None = None):
    """A confusion matrix for a paper's column: each cell the share (%) of its true class
    (row-normalised, whole percent; empty cells blank), each row's count of test images beside
    its name, what and which model and the accuracy in the title, a colour bar as high as the matrix."""
    counts = np.asarray(counts, np.int64)
    c = len(classes)
    support = counts.sum(axis=1)
    rates = 100 * np.divide(counts, support[:, None], out=np.zeros(counts.shape), where=support[:, None] > 0)
    accuracy = np.trace(counts) / max(1, counts.sum())
    with style():
        fig = new_figure(COLUMN, 1.1 + 0.3 * c)
        ax = fig.add_subplot()
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
        for i, j in itertools.product(range(c), range(c)):
            if counts[i, j] == 0:
                continue
            shown = f"{rates[i, j]:.0f}" if rates[i, j] >= 0.5 else "<1"
            ax.text(j, i, shown, ha="center", va="center", color="white" if rates[i, j] > 60 else "black")
        ax.set_xticks(range(c), classes, rotation=90)  # upright boxes: none over its neighbour
        ax.set_yticks(range(c), [f"{name} ({n})" for name, n in zip(classes, support)])
        ax.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (test images)")
        fig.suptitle(f"{what}\n{model}\naccuracy {100 * accuracy:.1f} % of {counts.sum()} test images")
        colorbar(fig, image, ax, "% of the true class")
    return fig


def map_panel(face: np.ndarray, heat: np.ndarray, heading: str, model: str, kind: str = "gradcam"):
    """A face as the network saw it beside its attention map (``maps.overlay``), titled with
    ``heading`` (the class and its confidence) and ``model``, the map's colour bar labelled with
    ``kind``. For a screen: ``SLIDE``-high text, the network's pixels shown as squares."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from faml_jax.maps import overlay

    names = {"gradcam": "Grad-CAM", "relevancy": "relevancy"}
    with style():
        fig = new_figure(4.6, 2.6)
        left, right = fig.subplots(1, 2)
        left.imshow(face)
        left.set_title(f"input ({face.shape[0]} px)")
        right.imshow(overlay(face, heat))
        right.set_title(f"{names.get(kind, kind)} map")
        for ax in (left, right):
            ax.set_axis_off()
        colorbar(
            fig,
            ScalarMappable(Normalize(0, 1), jet_colormap()),
            right,
            "attention (0 none, 1 most)",
            ticks=[0, 0.5, 1],
        )
        fig.suptitle(f"{heading}\nmodel: {model}")
    return fig


def side_by_side(pictures: Sequence[np.ndarray], height: int, gap: int = 8) -> np.ndarray:
    """RGB ``pictures`` scaled to one ``height`` and placed left to right on white, ``gap``
    pixels apart (the README's picture: the annotated photo beside its map panel)."""
    from PIL import Image

    scaled = []
    for p in pictures:
        image = Image.fromarray(np.asarray(p)[..., :3])
        width = max(1, round(image.width * height / image.height))
        scaled.append(np.asarray(image.resize((width, height), Image.LANCZOS)))
    canvas = np.full((height, sum(s.shape[1] for s in scaled) + gap * (len(scaled) - 1), 3), 255, np.uint8)
    x = 0
    for s in scaled:
        canvas[:, x : x + s.shape[1]] = s
        x += s.shape[1] + gap
    return canvas


# -- photos ----------------------------------------------------------------------------------------

BOX_COLOUR = (230, 40, 40)


def photo_sizes(shape: Sequence[int]) -> tuple[int, int]:
    """The box line width and the label text height (pixels) for a photo of ``shape`` (H, W, ...):
    both grow with the photo (text 4 % of the geometric mean of its sides, at least 12 px, so that
    it is readable when the photo is shown whole on a screen)."""
    side = float(np.sqrt(shape[0] * shape[1]))
    return max(2, round(side / 250)), max(12, round(0.04 * side))


def font(size: int):
    """A Pillow font ``size`` pixels high: matplotlib's DejaVu Sans, the figures' font."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def label_photo(
    photo: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[str]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``photo`` with each box (x0, y0, x1, y1) outlined and its label on a filled background:
    above the box where there is room, else inside its top, else below, else the nearest free
    height in its column; always inside the photo, and clear of the labels placed before it when
    any such place is. Returns the picture and each
    label's rectangle (x0, y0, x1, y1)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.asarray(photo)[..., :3].copy())
    draw = ImageDraw.Draw(picture)
    height, width = picture.height, picture.width
    line, size = photo_sizes(photo.shape)
    face_font = font(size)
    pad = max(2, size // 4)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([round(x0), round(y0), round(x1), round(y1)], outline=BOX_COLOUR, width=line)
    placed: list[tuple[int, int, int, int]] = []
    for (x0, y0, _, y1), text in zip(boxes, labels):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face_font)
        w, h = min(width, right - left + 2 * pad), min(height, bottom - top + 2 * pad)
        candidates = [(x0, y0 - h), (x0, y0 + line), (x0, y1 + 1), (x0, y1 - h)]
        # then any height in the box's column, nearest first (faces crowded side by side)
        candidates += [(x0, y) for y in sorted(range(0, height - h + 1, max(1, h // 2)), key=lambda y: abs(y - y0))]
        rects = []
        for cx, cy in candidates:
            cx = int(min(max(round(cx), 0), width - w))
            cy = int(min(max(round(cy), 0), height - h))
            rects.append((cx, cy, cx + w, cy + h))
        free = [r for r in rects if not any(_intersect(r, p) for p in placed)]
        rect = (free or rects)[0]
        placed.append(rect)
        draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=BOX_COLOUR)
        draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=(255, 255, 255), font=face_font)
    return np.asarray(picture), placed


def _intersect(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether two rectangles (x0, y0, x1, y1; x1, y1 exclusive) share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# -- expressions over time (issue 40: a video's faces, ``faml_jax.video_outputs``) ----------------


def timeline_figure(series: dict, classes: Sequence[str], *, title: str = "", gap: float = 1.0):
    """Each face's class scores over time, one panel per face (``series``: id -> (times (T,),
    scores (T, C))), seconds on the x axis, one coloured line per class (the paper's names,
    capitalised; the legend beside the first panel), breaks where the face was missing for more
    than ``gap`` seconds. ``SLIDE``-wide, in ``STYLE``; save with ``save``."""
    names = [c.capitalize() for c in classes]
    colours = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#808080"]
    rows = max(len(series), 1)
    with style():
        fig = new_figure(SLIDE[0], 0.7 + 1.3 * rows)
        axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
        end = max((float(t[-1]) for t, _ in series.values() if len(t)), default=1.0)
        for ax, (face_id, (times, scores)) in zip(axes, series.items()):
            times, scores = np.asarray(times, np.float64), np.asarray(scores, np.float64)
            breaks = np.flatnonzero(np.diff(times) > gap) + 1  # NaN between pieces: no line across an absence
            times = np.insert(times, breaks, np.nan)
            scores = np.insert(scores, breaks, np.nan, axis=0)
            for c, name in enumerate(names):
                ax.plot(times, scores[:, c], color=colours[c % len(colours)], linewidth=1.2, label=name)
            ax.set_ylabel(f"face {face_id}\nscore")
            ax.set_ylim(0, max(1.0, float(np.nanmax(scores)) * 1.05) if len(scores) else 1.0)
            ax.set_xlim(0, end)
            ax.grid(alpha=0.3, linewidth=0.5)
        if not series:
            axes[0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0].transAxes)
        axes[-1].set_xlabel("time (s)")
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if title:
            fig.suptitle(title)
    return fig
