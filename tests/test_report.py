"""Tests of faml_jax.report and the ensemble program: numbers checked against the members' own training-time
evaluations and a numpy vote, the report files, population input, errors and atomic writes."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from helpers import reference_predict, tiny_config

from experiments import ensemble as ensemble_program
from faml_jax import report as report_module
from faml_jax import trainer
from faml_jax.config import EnsembleConfig
from faml_jax.errors import WorkdirError
from faml_jax.runs import final_checkpoint, population_members
from faml_jax.versions import EVOLUTION_VERSION, stamped

SEEDS = (1, 2, 3)
quiet = dict(progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three tiny networks of 3 epochs each (different seeds)."""
    root = tmp_path_factory.mktemp("ensemble")
    members = []
    for seed in SEEDS:
        config = dataclasses.replace(tiny_config(root / "data", 3), seed=seed)
        workdir = root / f"net{seed}"
        trainer.fit(config, workdir, **quiet)
        members.append((f"net{seed}", workdir))
    report = report_module.ensemble_report(members, root / "report", **quiet)
    return root, members, report


def stored_logits(workdir, epoch):
    with np.load(workdir / "test_logits" / f"epoch_{epoch:04d}.npz") as f:
        return f["logits"], f["labels"]


def test_report_numbers_match_the_members_own_evaluations(trained):
    root, members, report = trained
    logits, labels = zip(*(stored_logits(w, 3) for _, w in members))
    logits, labels = np.stack(logits), labels[0]
    for (name, workdir), row, evaluated in zip(members, report["members"], report["members_evaluated"]):
        summary = json.loads((workdir / "summary.json").read_text())
        assert row["name"] == name and evaluated["epoch"] == 3
        assert row["accuracy"] == summary["final_test_accuracy"]  # one unit: fractions
        assert evaluated["stored_logits_max_abs_diff"] < 1e-4
    for strategy in ("t1v", "noi", "t2v"):
        predictions, ambiguous = reference_predict(logits, strategy)
        # A sample whose decision rests on two NOI sums equal up to rounding may go either way.
        sure = int(np.sum((predictions == labels) & ~ambiguous))
        low, high = (n / len(labels) for n in (sure, sure + int(ambiguous.sum())))
        assert low <= report["ensemble"][strategy]["accuracy"] <= high
        assert ambiguous.sum() <= 2
    # Ensemble sizes 2..3 in the given order; the full size equals the whole ensemble.
    assert [s["size"] for s in report["sizes"]] == [2, 3]
    assert [s["added"] for s in report["sizes"]] == ["net2", "net3"]
    assert report["sizes"][-1]["t2v"] == report["ensemble"]["t2v"]["accuracy"]
    pair, _ = reference_predict(logits[:2], "t2v")
    assert report["sizes"][0]["t2v"] == float(np.mean(pair == labels))
    # Table 1: the first rank is each member's accuracy, every row sums to 1.
    for row, ranks in zip(report["members"], report["ranks"]["members"].values()):
        assert ranks[0] == pytest.approx(row["accuracy"], abs=1e-4)
        assert sum(ranks) == pytest.approx(1.0, abs=1e-3)


def test_report_files(trained):
    root, members, report = trained
    out = root / "report"
    expected = {
        "report.md",
        "report.json",
        "members.csv",
        "sizes.csv",
        "ranks.csv",
        "logits.npz",
        "confusion_best_member.csv",
        "confusion_best_member.png",
        "confusion_t2v.csv",
        "confusion_t2v.png",
    }
    assert {p.name for p in out.iterdir()} == expected
    assert not [p for p in root.iterdir() if p.name.startswith(".report")]  # no temporary folder left
    assert json.loads((out / "report.json").read_text())["ensemble"] == report["ensemble"]
    with np.load(out / "logits.npz") as f:
        assert f["logits"].shape == (3, 40, 7)
        np.testing.assert_allclose(f["logits"][0], stored_logits(members[0][1], 3)[0], atol=1e-4)
    md = (out / "report.md").read_text()
    for heading in ("paper Table 6", "paper Table 4", "paper Table 1", "row-normalised"):
        assert heading in md
    rows = list(csv.reader((out / "confusion_t2v.csv").open()))
    assert rows[0][1:] == report["classes"]
    counts = np.asarray(report["confusion_counts"]["t2v"])
    for row, count in zip(rows[1:], counts):
        values = np.asarray(row[1:], float)
        if count.sum():
            assert values.sum() == pytest.approx(1, abs=5e-4)
            np.testing.assert_allclose(values, count / count.sum(), atol=6e-5)
    import matplotlib.image

    image = matplotlib.image.imread(out / "confusion_t2v.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 200


def test_best_checkpoint_and_accuracy_order(trained, tmp_path):
    root, members, _ = trained
    report = report_module.ensemble_report(
        members, tmp_path / "best", EnsembleConfig(checkpoint="best", order="accuracy"), **quiet
    )
    for (_, workdir), evaluated, row in zip(members, report["members_evaluated"], report["members"]):
        summary = json.loads((workdir / "summary.json").read_text())
        history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        # The best epoch's checkpoint is kept (or one of equal accuracy, when epochs tie).
        assert history[evaluated["epoch"] - 1]["test_accuracy"] == summary["best_epoch_test_accuracy"]
        assert row["accuracy"] == summary["best_epoch_test_accuracy"]
    accuracies = {m["name"]: m["accuracy"] for m in report["members"]}
    order = sorted(accuracies, key=lambda n: (-accuracies[n], [m[0] for m in members].index(n)))
    assert [s["added"] for s in report["sizes"]] == order[1:]
    assert "checkpoint (selected on the test split: optimistic)" in (tmp_path / "best" / "report.md").read_text()


def given_record(workdir) -> dict:
    """A network given to an evolution as population.json records it (its final checkpoint)."""
    epoch, digest = final_checkpoint(workdir)
    record = {"generation": 0, "origin": "given", "workdir": str(workdir), "seed": None, "status": "trained"}
    return {**record, "checkpoint_epoch": epoch, "checkpoint_digest": digest}


def write_evolution(folder, members, generations: int, recorded: int):
    """An evolution's population.json and evolve.json: ``generations`` configured after the
    initial population, ``recorded`` generations (the initial one included) finished."""
    folder.mkdir(exist_ok=True)
    survivors = [["net1", "net2", "net3"], ["net3", "net1"], ["net2", "net3"]]
    lineage = {
        "members": {name: given_record(w) for name, w in members},
        "generations": [{"generation": g, "survivors": survivors[g]} for g in range(recorded)],
        "plans": {str(g): {} for g in range(1, recorded)},
    }
    (folder / "population.json").write_text(json.dumps(stamped(lineage, EVOLUTION_VERSION)))
    (folder / "evolve.json").write_text(
        json.dumps(stamped({"run": {}, "fga": {"generations": generations}, "members": []}))
    )


def test_population_members(trained, tmp_path):
    root, members, _ = trained
    write_evolution(tmp_path, members, generations=1, recorded=2)
    found = population_members(tmp_path)
    assert found == [("net3", members[2][1]), ("net1", members[0][1])]
    assert [n for n, _ in population_members(tmp_path, all_networks=True)] == ["net1", "net2", "net3"]
    assert [n for n, _ in population_members(tmp_path, generation=0)] == ["net1", "net2", "net3"]
    with pytest.raises(WorkdirError, match="generation 2 is not in .*population.json: it records generations 0 to 1"):
        population_members(tmp_path, generation=2)
    # Killed after generation 0 of 1, or lengthened to 2 generations on resume: not the final population.
    for generations, recorded in ((1, 1), (2, 2)):
        write_evolution(tmp_path, members, generations, recorded)
        with pytest.raises(
            WorkdirError,
            match=f"evolution not finished: {recorded} of {generations + 1} generations "
            "in .*; resume it .*, or pass --generation N to use an earlier one",
        ):
            population_members(tmp_path)
    assert [n for n, _ in population_members(tmp_path, generation=1)] == ["net3", "net1"]


def test_an_unfinished_evolution_is_refused_by_every_program(trained, tmp_path, capsys):
    from experiments import predict as predict_program
    from tools import export as export_program

    root, members, _ = trained
    evolution = tmp_path / "evo"
    write_evolution(evolution, members, generations=1, recorded=1)
    for program, argv in (
        (ensemble_program, ["--population", str(evolution), "--out", str(tmp_path / "r")]),
        (predict_program, ["--population", str(evolution), str(tmp_path), "--out", str(tmp_path / "p")]),
        (export_program, ["--population", str(evolution), str(tmp_path / "x")]),
    ):
        assert program.main([*argv, "--no-progress"] if program is not export_program else argv) == 2
        err = capsys.readouterr().err
        assert "evolution not finished: 1 of 2 generations" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evo"]
    # The explicit choice of an earlier generation is taken.
    assert (
        ensemble_program.main(
            ["--population", str(evolution), "--generation", "0", "--out", str(tmp_path / "r"), "--no-progress"]
        )
        == 0
    )
    assert [m["name"] for m in json.loads((tmp_path / "r" / "report.json").read_text())["members"]] == [
        "net1",
        "net2",
        "net3",
    ]


def test_a_report_never_replaces_what_it_did_not_write(trained, tmp_path, capsys):
    """--overwrite replaces an earlier report only: never a run (even one of the members), a
    folder with a user's file in it, or a folder of other files."""
    root, members, _ = trained
    dirs = [str(w) for _, w in members]
    run = members[0][1]
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    status, err = cli(["--members", *dirs, "--out", str(run), "--overwrite"], capsys)
    assert status == 2 and f"{run} is not a report written by faml_jax (it holds checkpoints, config.json" in err
    assert len(err.splitlines()) == 1
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before
    report = tmp_path / "report"
    shutil.copytree(root / "report", report)
    status, err = cli(["--members", *dirs, "--out", str(report)], capsys)
    assert status == 2 and "holds an earlier report: pass --overwrite to replace it" in err
    (report / "notes.txt").write_text("mine")
    status, err = cli(["--members", *dirs, "--out", str(report), "--overwrite"], capsys)
    assert status == 2 and f"{report} is not a report written by faml_jax (it holds notes.txt)" in err
    assert (report / "notes.txt").read_text() == "mine"


def cli(argv, capsys):
    status = ensemble_program.main([*argv, "--no-progress"])
    return status, capsys.readouterr().err


def test_cli_errors(trained, tmp_path, capsys):
    root, members, _ = trained
    dirs = [str(w) for _, w in members]
    status, err = cli(["--members", dirs[0], "--out", str(tmp_path / "one")], capsys)
    assert status == 0 and (tmp_path / "one" / "report.json").exists()  # one run: its Table 1
    status, err = cli(["--members", dirs[0], dirs[0], "--out", str(tmp_path / "a")], capsys)
    assert status == 2 and "given twice" in err
    status, err = cli(["--members", *dirs, "--out", str(root / "report")], capsys)
    assert status == 2 and "--overwrite" in err
    status, err = cli(["--members", *dirs, "--generation", "0", "--out", str(tmp_path / "a")], capsys)
    assert status == 2 and "--generation needs --population" in err
    status, err = cli(["--population", str(tmp_path), "--out", str(tmp_path / "a")], capsys)
    assert status == 2 and str(tmp_path / "population.json") in err
    status, err = cli(["--members", dirs[0], str(tmp_path), "--out", str(tmp_path / "a")], capsys)
    assert status == 2 and str(tmp_path / "config.json") in err
    # A member of another data set (another test split): named with the differing field. (Another
    # architecture is a mixed ensemble: tests/test_mixed_ensembles.py.)
    other = tmp_path / "other"
    shutil.copytree(members[1][1], other)
    config = json.loads((other / "config.json").read_text())
    config["data"]["crop_faces"] = not config["data"]["crop_faces"]
    (other / "config.json").write_text(json.dumps(config))
    status, err = cli(["--members", dirs[0], str(other), "--out", str(tmp_path / "a")], capsys)
    assert status == 2 and "member other differs from net1 in: data.crop_faces" in err
    assert not (tmp_path / "a").exists()


def test_failed_write_keeps_the_earlier_report(trained, tmp_path, monkeypatch):
    root, members, report = trained
    out = tmp_path / "kept"
    shutil.copytree(root / "report", out)
    before = (out / "report.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_confusion", broken)
    with pytest.raises(OSError, match="disk full"):
        report_module.ensemble_report(members, out, overwrite=True, **quiet)
    assert (out / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no temporary folder left
