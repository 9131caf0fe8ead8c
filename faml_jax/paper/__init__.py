"""The paper's experiments as library calls: Table 2 (the ablation, ``table2``), Table 6 with
Fig. 7 (T2V on other basic networks, ``table6``) and Fig. 8 (``figure8_rows``,
``figure_of_maps``, ``draw_figure8``), each
with its rows, recipes, the paper's published numbers beside ours, and the table and figure
writers. ``experiments.ablation``, ``experiments.architectures`` and ``experiments.explain`` only
parse flags and call these; a notebook can run either table with one call:

    >>> from faml_jax import paper, presets
    >>> result = paper.table6(presets.preset("synthetic"), networks=3, workdir="runs/table6")
    >>> base = presets.preset("rafdb", from_scratch=True, data={"data_dir": "~/RAF-DB"})  # the rows' starts:
    >>> result = paper.table6(base, "runs/table6-rafdb", backbones="backbones")           # one backbone per row

On RAF-DB and AffectNet a table whose networks would start from random weights is refused (no
``backbones`` for Table 6, no ``base.init`` for Table 2) unless ``from_scratch=True`` is passed.

Every run has its own folder under the workdir, so an interrupted table continues with
``resume=True`` (finished runs are kept, and refused when they were made with another
configuration than their row's).

One module each: ``ablation`` (Table 2), ``architectures`` (Table 6, Fig. 7), ``figure8``
(Fig. 8) and ``networks`` (what the tables share: training a row's networks, their refusals).
Here: the calls, and the rows and published numbers they are made of.
"""

from faml_jax.paper.ablation import PAPER, PAPER_ENSEMBLE_SIZES, ROWS, VARIANTS, paper_accuracy, table2
from faml_jax.paper.architectures import FGA_ROW, TABLE6_ROWS, table6
from faml_jax.paper.figure8 import draw_figure8, figure8_rows, figure_of_maps
from faml_jax.paper.published import PAPER_TABLE6, paper_table6

__all__ = [
    "FGA_ROW",
    "PAPER",
    "PAPER_ENSEMBLE_SIZES",
    "PAPER_TABLE6",
    "ROWS",
    "TABLE6_ROWS",
    "VARIANTS",
    "draw_figure8",
    "figure8_rows",
    "figure_of_maps",
    "paper_accuracy",
    "paper_table6",
    "table2",
    "table6",
]
