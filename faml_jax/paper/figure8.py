"""Fig. 8 from a finished ablation (``paper.table2``'s workdir): the attention maps of Table 2's
five rows, drawn by ``figures.figure_of_maps``."""

from __future__ import annotations

import os
from pathlib import Path

from faml_jax import runs
from faml_jax.paper.ablation import VARIANTS


def figure8_rows(ablation_dir: str | os.PathLike, checkpoint: str = "final") -> list:
    """The rows of the paper's Fig. 8 from a finished ablation (``table2``'s workdir): R18,
    R18+FA and R18+FAML (each row's first network), R18+FAML-FGA (the best network of the final
    population) and R18+FAML-FGA-T2V (the final population voting), as ``(label, Predictor)``
    pairs for ``figures.figure_of_maps``."""
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
