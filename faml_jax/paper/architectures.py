"""Table 6 and Fig. 7, T2V on other basic networks (docs/method.md 7): per row, networks of one
architecture (one per seed, from its converted backbone or a random start), the origin both ways
(their mean ± sd, and one network chosen by ``ORIGIN_RULES``: the paper's column is one
network's accuracy), the T2V, T1V and NOI ensembles of all of them and their gains over both,
with the paper's numbers beside; ``table6`` trains, evaluates and writes it all in one workdir."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from faml_jax import ensemble, report, runs
from faml_jax.config import EnsembleConfig, LossConfig, RunConfig
from faml_jax.errors import ConfigError
from faml_jax.paper.networks import (
    check_fresh_workdir,
    check_networks,
    check_pretrained_starts,
    mean_sd,
    row_seeds,
    train_networks,
)
from faml_jax.paper.published import DECISIONS, paper_table6
from faml_jax.presets import preset
from faml_jax.records import config_to_json
from faml_jax.writer import write_atomic, write_json

logger = logging.getLogger(__name__)

# Row: (model preset, the backbone's folder name under ``backbones``). RI18 is ResNet18 from
# ImageNet weights; R18 and R18+FAML start from the MS-Celeb-1M ResNet18.
TABLE6_ROWS = {
    "RI18": ("r18", "ri18"),
    "ResNet34": ("resnet34", "resnet34"),
    "VGG16": ("vgg16", "vgg16"),
    "DenseNet121": ("densenet121", "densenet121"),
    "R18": ("r18", "msceleb"),
    "R18+FAML": ("r18_faml", "msceleb"),
}
FGA_ROW = "R18+FAML-FGA"  # the final population of an evolution (``fga_workdir``)
# The one network that gives a row's single-network origin (docs/method.md 7 [choice]): the paper's
# origin is one network's accuracy (R18's 88.62 and R18+FAML's 90.32 are Tables 2 and 5's
# single-model numbers, the network a paper reports). "best": the most accurate member (the first
# of equals; selected on the test split, so its gains are the smallest: default); "median": the
# lower of the middle members by accuracy; "first": the member of the first seed (an unselected draw).
ORIGIN_RULES = ("best", "median", "first")
# What the paper's origin column is: one network's accuracy, not a mean over networks.
PAPER_ORIGIN = "single"


def origin_network(singles: list[float], rule: str = "best") -> int:
    """The index of the member that gives the single-network origin by ``rule`` (``ORIGIN_RULES``)."""
    if rule not in ORIGIN_RULES:
        raise ConfigError(f"unknown origin rule {rule!r}; expected one of {', '.join(ORIGIN_RULES)}")
    if rule == "first":
        return 0
    if rule == "best":
        return int(np.argmax(singles))  # the first of equals
    by_accuracy = sorted(range(len(singles)), key=lambda i: (singles[i], i))
    return by_accuracy[(len(singles) - 1) // 2]


def table6_row(
    logits: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    beta: float,
    *,
    names: list[str] | None = None,
    origin: str = "best",
    ties: str = "noi",
) -> dict:
    """One row of Table 6 from its members' test logits (M, N, C): the origin both ways (the
    members' mean accuracy and standard deviation; the accuracy of the member that ``origin``
    chooses, ``ORIGIN_RULES``), the accuracy of T2V, T1V and NOI over all M (Eq. 10-13; T2V and
    T1V ties broken by ``ties``), and each decision's gain over the mean (``<d>_gain``) and over
    the one network (``<d>_gain_single``)."""
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
    names = list(names) if names is not None else [f"member{i}" for i in range(len(logits))]
    singles = [float(np.mean(np.argmax(member, -1) == labels)) for member in logits]
    mean, sd = mean_sd(singles)
    chosen = origin_network(singles, origin)
    row = {
        "networks": len(singles),
        "origin": mean,
        "origin_sd": sd,
        "origin_single": singles[chosen],
        "origin_network": names[chosen],
        "origin_rule": origin,
        "members": singles,
        "member_names": names,
    }
    for strategy in DECISIONS:
        decided = np.asarray(ensemble.predict(logits, strategy, alpha, beta, ties))
        row[strategy] = float(np.mean(decided == labels))
        row[f"{strategy}_gain"] = row[strategy] - mean
        row[f"{strategy}_gain_single"] = row[strategy] - singles[chosen]
    return row


def table6_config(base: RunConfig, row: str, backbones: str | os.PathLike | None) -> RunConfig:
    """The configuration of one Table 6 row: ``base`` (the data set, optimiser, schedule, batch,
    epochs and augmentation: the R18 row's recipe, docs/method.md 7) with the row's network, its
    loss (plain CE; R18+FAML its data set's ML loss) and its backbone (``backbones/<name>``, or a
    random start without ``backbones``)."""
    model, backbone = TABLE6_ROWS[row]
    fresh = preset(base.data.dataset, model, from_scratch=True, data={"data_dir": base.data.data_dir})
    kept = {k: getattr(base.model, k) for k in ("dtype", "matmul_precision", "head_init", "input_size")}
    return dataclasses.replace(
        base,
        model_name=model,
        model=dataclasses.replace(fresh.model, **kept),
        loss=base.loss if model == "r18_faml" else LossConfig(kind="ce"),
        init=str(Path(backbones, backbone).absolute()) if backbones is not None else None,
    )


def table6(
    base: RunConfig,
    workdir: str | os.PathLike,
    *,
    rows: tuple[str, ...] | None = None,
    networks: int = 6,
    backbones: str | os.PathLike | None = None,
    fga_workdir: str | os.PathLike | None = None,
    from_scratch: bool = False,
    any_fga_size: bool = False,
    origin: str = "best",
    ties: str = "noi",
    resume: bool = False,
    progress: bool = True,
    keep_recorded: tuple[str, ...] = (),
    figure_format: str = "png",
) -> dict:
    """Train ``networks`` networks per row (seeds ``base.seed`` ..) and write Table 6
    (``table6.md``, ``table6.json``) and Fig. 7 (``fig7.<figure_format>``: png, pdf or svg) in ``workdir``, with a report
    folder per row (``reports/<row>``: its ensemble and Table 1 ranks). Returns the table.

    Args:
      rows: default the paper's five basic networks and R18+FAML, and R18+FAML-FGA (the final
        population of ``fga_workdir``, an ``experiments.evolve`` workdir) when given.
      backbones: a folder holding one converted backbone per row (``TABLE6_ROWS``' names: ri18,
        resnet34, vgg16, densenet121, msceleb). On a real data set a table without it is refused
        unless ``from_scratch``: then every network starts from random weights, and rows whose
        configuration is another row's (RI18 and R18) share that row's networks.
      any_fga_size: accept an R18+FAML-FGA population of another size than ``networks`` (refused
        otherwise: by the paper's Table 4, 4 networks instead of 6 cost about 0.3 points).
      origin: the rule that chooses the one network of the single-network origin (``ORIGIN_RULES``;
        the paper's column is one network's accuracy); the mean ± sd is given beside it.
      ties: how T2V and T1V break a tie (``ensemble.TIES``: "noi" or "lowest").
    """
    workdir = Path(workdir)
    rows = _requested_rows(rows, fga_workdir)
    check_networks(networks)
    origin_network([0.0], origin)  # an unknown rule is refused before anything trains
    ensemble_config = EnsembleConfig(ties=ties)
    trained_rows = [r for r in rows if r != FGA_ROW]
    if backbones is not None and from_scratch:
        raise ConfigError("Table 6 takes backbones or from_scratch=True (--backbones or --from-scratch), not both")
    check_pretrained_starts(
        "Table 6",
        base.data.dataset,
        backbones is not None or not trained_rows,
        from_scratch,
        "backbones=DIR",
        " (one converted backbone per row: " + ", ".join(sorted({TABLE6_ROWS[r][1] for r in trained_rows})) + ")",
    )
    _check_backbones(backbones, rows)
    fga_members = _fga_members(fga_workdir, networks, any_fga_size) if FGA_ROW in rows else []
    check_fresh_workdir(workdir, resume, "an earlier Table 6")
    seeds = row_seeds(base, networks)
    folders = _configuration_folders(base, backbones)
    trained_by_config: dict[str, tuple[str, list]] = {}
    result_rows: dict[str, dict] = {}
    for row in rows:
        if row == FGA_ROW:
            members = fga_members
            what = f"the final population of {fga_workdir} ({len(members)} networks)"
        else:
            config = table6_config(base, row, backbones)
            members, what = _row_networks(
                row, config, seeds, workdir / folders[_key(config)], trained_by_config, progress, keep_recorded
            )
        out = workdir / "reports" / _folder_name(row)
        numbers = _evaluate_row(row, members, out, ensemble_config, origin, progress, figure_format)
        result_rows[row] = {**numbers, "what": what, "report": str(out), "paper": paper_table6(base.data.dataset, row)}
    result = {
        "dataset": base.data.dataset,
        "networks": networks,
        "seeds": seeds,
        "epochs": base.epochs,
        "origin_rule": origin,
        "paper_origin": PAPER_ORIGIN,
        "ties": ties,
        "figure": f"fig7.{figure_format}",
        "rows": result_rows,
    }
    write_json(workdir / "table6.json", result)
    write_atomic(workdir / "table6.md", table6_markdown(result))
    from faml_jax.paper.figure7 import figure7  # matplotlib only when a figure is drawn

    write_atomic(workdir / f"fig7.{figure_format}", payload=figure7(result, figure_format))
    logger.info(table6_markdown(result))
    return result


def _fga_members(fga_workdir, networks: int, any_fga_size: bool) -> list[tuple[str, Path]]:
    """The R18+FAML-FGA row's networks: the final population of ``fga_workdir``, refused when its
    size is not ``networks`` unless ``any_fga_size``."""
    members = runs.population_members(fga_workdir)
    if len(members) != networks and not any_fga_size:
        raise ConfigError(
            f"the {FGA_ROW} row's population ({fga_workdir}/population.json) holds {len(members)} networks, the other "
            f"rows {networks}: evolve a population of {networks} (experiments.evolve --population {networks}), or "
            "accept its size (any_fga_size=True, --fga-any-size; the paper's Table 4: 4 networks instead of 6 cost "
            "about 0.3 points)"
        )
    return members


def _requested_rows(rows: tuple[str, ...] | None, fga_workdir) -> tuple[str, ...]:
    """The rows to make: ``rows``, or every row of ``TABLE6_ROWS`` (and ``FGA_ROW`` with an
    evolution's workdir); an unknown row, or ``FGA_ROW`` without that workdir, is refused."""
    rows = tuple(rows or TABLE6_ROWS) + ((FGA_ROW,) if fga_workdir is not None and not rows else ())
    unknown = [r for r in rows if r not in TABLE6_ROWS and r != FGA_ROW]
    if unknown:
        raise ConfigError(
            f"unknown Table 6 row(s) {', '.join(unknown)}; available: {', '.join(TABLE6_ROWS)}, {FGA_ROW}"
        )
    if FGA_ROW in rows and fga_workdir is None:
        raise ConfigError(f"the {FGA_ROW} row needs an evolution's workdir (--fga-workdir)")
    return rows


def _check_backbones(backbones: str | os.PathLike | None, rows: tuple[str, ...]) -> None:
    """``backbones`` (when given) holds the backbone of every row to train."""
    if backbones is None:
        return
    missing = sorted({TABLE6_ROWS[r][1] for r in rows if r in TABLE6_ROWS} - set(os.listdir(backbones)))
    if missing:
        raise ConfigError(
            f"--backbones {backbones} has no {', '.join(missing)}: convert each with python -m tools.convert_torch "
            "(docs/tables.md names them)"
        )


def _key(config: RunConfig) -> str:
    """What identifies a row's recipe: rows of one key share their networks."""
    return repr(config_to_json(config))


def _folder_name(row: str) -> str:
    """A row's folder name (its networks', its report's): ``R18+FAML`` -> ``r18_faml``."""
    return row.lower().replace("+", "_")


def _configuration_folders(base: RunConfig, backbones) -> dict[str, str]:
    """The folder of each configuration's networks: rows of one configuration train in the folder
    of the first of them in ``TABLE6_ROWS``' order, whatever the order of the rows requested (so a
    later call finds them there)."""
    folders: dict[str, str] = {}
    for row in TABLE6_ROWS:
        folders.setdefault(_key(table6_config(base, row, backbones)), _folder_name(row))
    return folders


def _row_networks(
    row: str,
    config: RunConfig,
    seeds: list[int],
    folder: Path,
    trained_by_config: dict[str, tuple[str, list]],
    progress: bool,
    keep_recorded: tuple[str, ...],
) -> tuple[list[tuple[str, Path]], str]:
    """A row's networks as ``(name, run folder)`` and what they are: trained in ``folder`` (or
    continued, or reused when finished), or an earlier row's of the same configuration
    (``trained_by_config``, which this adds to)."""
    key = _key(config)
    if key in trained_by_config:  # the same recipe as an earlier row: its networks
        earlier, trained = trained_by_config[key]
        what = f"the networks of row {earlier} (the same configuration)"
    else:
        trained = train_networks(config, seeds, folder, row, progress, keep_recorded)
        trained_by_config[key] = (row, trained)
        start = "random start" if config.init is None else f"backbone {Path(config.init).name}"
        what = f"{config.model_name}, {start}, seeds {seeds[0]}..{seeds[-1]}"
    return [(f"seed{seed}", run_dir) for seed, (run_dir, _) in zip(seeds, trained)], what


def _evaluate_row(
    row: str,
    members: list[tuple[str, Path]],
    out: Path,
    ensemble_config: EnsembleConfig,
    origin: str,
    progress: bool,
    figure_format: str,
) -> dict:
    """The ensemble report of a row's networks in ``out``, and the row's numbers from its logits."""
    logger.info(f"== {row}: evaluating {len(members)} networks")
    report.ensemble_report(
        members,
        out,
        ensemble_config,
        overwrite=True,
        progress=progress,
        command=f"paper.table6 ({row})",
        figure_format=figure_format,
    )
    saved = runs.read_arrays(out / "logits.npz", {"logits": ("f", 3), "labels": ("iu", 1)}, "the report's logits")
    return table6_row(
        saved["logits"],
        saved["labels"],
        ensemble_config.alpha,
        ensemble_config.beta,
        names=[name for name, _ in members],
        origin=origin,
        ties=ensemble_config.ties,
    )


ORIGIN_RULE_WORDS = {  # ORIGIN_RULES, as table6.md says them
    "best": "the most accurate of the row's networks (selected on the test split: its gains are the smallest)",
    "median": "the row's network of median accuracy (the lower of the middle two for an even number)",
    "first": "the row's network of the first seed (unselected)",
}
TIE_WORDS = {  # ensemble.TIES, as table6.md says them
    "noi": "broken by NOI, then the lowest class: with an even number of networks T1V ties often (3-3 of 6), "
    "and NOI deciding those ties pulls the T1V (Bagging) column toward NOI's",
    "lowest": "broken by the lowest class index (no pull of the T1V (Bagging) column toward NOI's)",
}


def table6_markdown(result: dict) -> str:
    """Table 6 as Markdown (percentages): per row its size, the origin both ways (one network;
    mean ± sd), T2V, T1V and NOI with their gains over both, and the paper's numbers beside."""
    dataset = result["dataset"]
    rule = result.get("origin_rule", "best")
    lines = [
        f"# Table 6 on `{dataset}`: T2V on other basic networks\n",
        f"{result['networks']} networks per row (seeds {result['seeds'][0]}..{result['seeds'][-1]}; the nets column "
        f"gives each row's), at most {result['epochs']} epoch(s) each; test accuracy % (table6.json: fractions).\n",
        f"Origin both ways: **one network**, {ORIGIN_RULE_WORDS[rule]}: the paper's origin column is one network's "
        "accuracy (R18's 88.62 and R18+FAML's 90.32 are its single-model numbers), so this is the column to "
        "compare with the paper's; and the **mean ± sd** of the row's networks. T2V, T1V (Bagging) and NOI: the "
        "ensemble of all the row's networks, with its gain over the one network / over the mean "
        f"(docs/method.md 7). T2V and T1V ties {TIE_WORDS[result.get('ties', 'noi')]}. Fig. 7: "
        f"{result.get('figure', 'fig7.png')} (gains over the one network).\n",
        "| basic network | nets | origin: one network | origin: mean ± sd | T2V (gain: one / mean) | "
        "T1V, Bagging (gain: one / mean) | NOI (gain: one / mean) | paper (RAF-DB): origin / T2V / T1V / NOI | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(x):
        return f"{100 * x:.2f}"

    for row, r in result["rows"].items():
        paper = "-" if r["paper"] is None else " / ".join(pct(r["paper"][k]) for k in ("origin", *DECISIONS))
        decisions = " | ".join(
            f"{pct(r[k])} ({100 * r[k + '_gain_single']:+.2f} / {100 * r[k + '_gain']:+.2f})" for k in DECISIONS
        )
        lines.append(
            f"| {row} | {r['networks']} | {pct(r['origin_single'])} ({r['origin_network']}) | "
            f"{pct(r['origin'])} ± {pct(r['origin_sd'])} | {decisions} | {paper} | {r['what']} |"
        )
    return "\n".join(lines) + "\n"
