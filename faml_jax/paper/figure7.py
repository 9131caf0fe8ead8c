"""The paper's Fig. 7 (docs/method.md 7): per basic network of Table 6, the gain of T2V, NOI and
T1V over its origin (y) against that origin (x), each decision's points joined in order of origin
so that the trend the paper reads (the gains first increase, then decrease with the origin) can be
read; the paper's published points (RAF-DB) beside ours as hollow markers. The origin drawn is the
paper's, one network's accuracy (``origin="single"``: the network ``table6``'s origin rule chose),
or the networks' mean (``origin="mean"``); the figure says which."""

from __future__ import annotations

from faml_jax import figures
from faml_jax.errors import ConfigError
from faml_jax.paper.published import DECISIONS, PAPER_TABLE6

FIG7_DECISIONS = (("t2v", "o", "T2V", "C0"), ("noi", "s", "NOI", "C1"), ("t1v", "^", "T1V", "C2"))
ORIGINS = ("single", "mean")  # figure7's ``origin``: one network's accuracy (the paper's), or the mean


def figure7_points(result: dict, origin: str = "single") -> list[dict]:
    """Fig. 7's points from a Table 6 result: per basic network its origin accuracy and the gain
    of each decision over it (%), by ``origin`` ("single": the one network, the paper's
    definition; "mean": the networks' mean); rows sharing their networks (RI18 and R18 without
    backbones) as one point labelled "RI18 = R18"."""
    if origin not in ORIGINS:
        raise ConfigError(f"unknown Fig. 7 origin {origin!r}; expected one of {', '.join(ORIGINS)}")
    key, suffix = ("origin_single", "_gain_single") if origin == "single" else ("origin", "_gain")
    points: dict[tuple, dict] = {}
    for row, r in result["rows"].items():
        numbers = (100 * r[key], *(100 * r[f"{s}{suffix}"] for s in DECISIONS))
        point = points.setdefault(
            numbers, {"label": row, "origin": numbers[0], "gains": dict(zip(DECISIONS, numbers[1:]))}
        )
        if point["label"] != row:
            point["label"] += f" = {row}"
    return list(points.values())


def paper_figure7_points(rows) -> list[dict]:
    """The paper's Fig. 7 points (RAF-DB, Table 6) of ``rows``: one network's accuracy and each
    decision's gain over it (the differences of its table, docs/method.md 7)."""
    points = []
    for row in rows:
        if row in PAPER_TABLE6:
            origin, *decided = PAPER_TABLE6[row]
            points.append(
                {"label": row, "origin": origin, "gains": {s: d - origin for s, d in zip(DECISIONS, decided)}}
            )
    return points


def _label_lanes(fig, ax, points: list[dict]) -> float:
    """Each point's label in a lane at the top of ``ax``, starting at the point's origin (x), with
    a thin line down to its highest gain: a label goes one lane below every earlier (further
    left) label that reaches over its origin, so that no label lies on another or on another's
    line. Widens the x range so that the last label ends inside the axes. Returns the share of
    the axes' height that the lanes take."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # the layout, so that sizes are the file's
    box = ax.get_window_extent(renderer)
    pad = 3.0  # px between a line and its label, and between labels
    ordered = sorted(points, key=lambda p: p["origin"])
    sizes = []
    for point in ordered:
        probe = ax.text(0, 0, point["label"])
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((extent.width + 2 * pad, extent.height + pad))
    x0, x1 = ax.get_xlim()
    for point, (width, _) in zip(ordered, sizes):  # the last label inside the axes
        x1 = max(x1, x0 + (point["origin"] - x0) / max(1 - width / box.width, 0.2))
    ax.set_xlim(x0, x1)
    spans, lanes = [], []  # (left, right) px and lane of each label placed
    for point, (width, _) in zip(ordered, sizes):
        left = box.x0 + (point["origin"] - x0) / (x1 - x0) * box.width
        above = [lane for (a, b), lane in zip(spans, lanes) if a <= left <= b]
        lanes.append(1 + max(above) if above else 0)
        spans.append((left, left + width))
    height = max(h for _, h in sizes) / box.height  # one lane, as a share of the axes' height
    for point, lane in zip(ordered, lanes):
        top = 1 - 0.01 - lane * height
        ax.annotate(
            point["label"],
            xy=(point["origin"], top),
            xycoords=("data", "axes fraction"),
            xytext=(pad, 0),
            textcoords="offset pixels",
            ha="left",
            va="top",
        )
        ax.annotate(  # the line from the label down to the point (no text: no box of its own)
            "",
            xy=(point["origin"], max(point["gains"].values())),
            xytext=(point["origin"], top),
            textcoords=("data", "axes fraction"),
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 4},
        )
    return (1 + max(lanes, default=0)) * height + 0.01


def _draw_rules(ax, points: list[dict], hollow: bool) -> None:
    """Each decision's points joined in order of origin (ours filled and solid, the paper's hollow
    and dashed)."""
    ordered = sorted(points, key=lambda p: p["origin"])
    xs = [p["origin"] for p in ordered]
    for strategy, marker, _, colour in FIG7_DECISIONS:
        ys = [p["gains"][strategy] for p in ordered]
        ax.plot(
            xs,
            ys,
            marker=marker,
            color=colour,
            linestyle="--" if hollow else "-",
            markerfacecolor="white" if hollow else colour,
            linewidth=0.8,
        )


def draw_figure7(ours: list[dict], paper: list[dict], ours_title: str, xlabel: str, title: str):
    """Fig. 7 across the page: our points (left: filled markers, solid lines) and the paper's
    (right, RAF-DB: hollow markers, dashed lines), each decision's points joined in order of
    origin, each panel on its own scale (so that the paper's trend shows beside gains of another
    size); the rows named in lanes at the top of each panel (no label
    over another or over another's line), the decisions and ours/paper in one legend below."""
    from matplotlib.lines import Line2D

    with figures.style():
        fig = figures.new_figure(figures.PAGE, 3.6)
        axes = fig.subplots(1, 2)
        panels = [(axes[0], ours, False, ours_title, xlabel)]
        panels.append((axes[1], paper, True, "the paper (RAF-DB, Table 6)", "origin: one network's test accuracy (%)"))
        spans = []
        for ax, points, hollow, heading, label in panels:
            _draw_rules(ax, points, hollow)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set_title(heading)
            ax.set_xlabel(label)
            ax.set_ylabel("gain over the origin (points)")
            origins = [p["origin"] for p in points] or [0.0]
            spread = max(max(origins) - min(origins), 1.0)
            ax.set_xlim(min(origins) - 0.1 * spread, max(origins) + 0.1 * spread)
            gains = [g for p in points for g in p["gains"].values()] or [0.0]
            low, high = min(min(gains), 0.0), max(max(gains), 0.0)
            spans.append((low, max(high - low, 1e-6)))
            ax.set_ylim(low - 0.05 * spans[-1][1], high + 0.05 * spans[-1][1])
        handles = [Line2D([], [], color=c, marker=m, label=n) for _, m, n, c in FIG7_DECISIONS]
        handles += [
            Line2D([], [], color="black", marker="o", label="ours: filled, solid"),
            Line2D(
                [],
                [],
                color="black",
                marker="o",
                markerfacecolor="white",
                linestyle="--",
                label="paper: hollow, dashed",
            ),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=5)
        fig.suptitle(title)
        for (ax, points, _, _, _), (low, span) in zip(panels, spans):
            lanes = _label_lanes(fig, ax, points)
            # The labels' lanes above the data: the data in the axes' lower part.
            share = max(1 - lanes - 0.04, 0.3)
            ax.set_ylim(low - 0.05 * span, low - 0.05 * span + 1.1 * span / share)
    return fig


def figure7(result: dict, format: str = "png", origin: str = "single") -> bytes:
    """Fig. 7 of a Table 6 result as a file in ``format`` (png, pdf or svg), the gains over
    ``origin`` ("single", the paper's definition, or "mean"); the title and the x axis say which."""
    networks = result["networks"]
    if origin == "single":
        rule = result.get("origin_rule", "best")
        chosen = {"best": "the best", "median": "the median", "first": "the first seed's"}[rule]
        xlabel = f"origin: one network's test accuracy ({chosen} of each row's {networks}) (%)"
        what = "over one network (the paper's origin)"
    else:
        xlabel = f"origin: the mean test accuracy of each row's {networks} networks (%)"
        what = "over the networks' mean (not the paper's origin)"
    ours = figure7_points(result, origin)
    paper = paper_figure7_points(result["rows"])
    title = f"Fig. 7 on {result['dataset']}: the gain of T2V, NOI and T1V of {networks} networks {what}"
    fig = draw_figure7(ours, paper, f"ours ({result['dataset']})", xlabel, title)
    return figures.save(fig, format)
