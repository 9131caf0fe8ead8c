"""Test of the Table 2 ablation runner on tiny networks: same seeds and budget for every row,
each row's number recomputed from the runs it names, resume without retraining."""

import json

import numpy as np
import pytest
from helpers import reference_predict, tiny_config

from experiments import ablation
from faml_jax import paper
from faml_jax.config import FGAConfig
from faml_jax.errors import ConfigError
from faml_jax.paper.ablation import variant_config

pytestmark = pytest.mark.slow

FGA = FGAConfig(population=2, generations=1, children=1, new_members=0, parents=2, until_trained=False)


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    base = tiny_config(root / "data", 2)  # seed 7, ML loss with WCE; FA without its blocks (compile time)
    result = paper.table2(base, FGA, 2, root / "ab", progress=False)
    return root / "ab", base, result


def test_single_network_rows_share_seeds_and_budget(ablated):
    workdir, base, result = ablated
    assert result["seeds"] == [7, 8]
    # docs/method.md 2: R18 and R18+FA plain CE on every data set (base weights classes: not these rows).
    for row, model, loss in [("R18", "r18", "ce"), ("R18+FA", "r18_fa", "ce"), ("R18+FAML", "r18_faml", "ml")]:
        accuracies = []
        for seed in (7, 8):
            run_dir = workdir / model / f"seed{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["model_name"], config["loss"]["kind"], config["seed"]) == (model, loss, seed)
            assert config["epochs"] == 2 and config["batch_size"] == base.batch_size
            assert config["schedule"] == json.loads((workdir / "r18" / "seed7" / "config.json").read_text())["schedule"]
            assert not config["model"]["attention"]  # the base's choice (with the blocks: the test below)
            assert bool(config["model"]["fa_regions"]) == (model != "r18")
            accuracies.append(json.loads((run_dir / "summary.json").read_text())["final_test_accuracy"])
        r = result["rows"][row]
        assert r["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12)
        assert r["sd"] == pytest.approx(np.std(accuracies, ddof=1), abs=0.006)
        assert r["best"] == pytest.approx(max(accuracies), abs=0.006)
        assert r["paper"] is None  # no paper number for the synthetic set


def test_fga_and_t2v_rows(ablated):
    workdir, _, result = ablated
    lineage = json.loads((workdir / "fga" / "population.json").read_text())
    given = [m["workdir"] for n, m in lineage["members"].items() if m["origin"] == "given"]
    assert given == [str((workdir / "r18_faml" / f"seed{s}").resolve()) for s in (7, 8)]
    survivors = lineage["generations"][-1]["survivors"]
    mean = np.mean([lineage["members"][n]["test_accuracy"] for n in survivors])
    assert result["rows"]["R18+FAML-FGA"]["accuracy"] == pytest.approx(mean, abs=1e-12)
    # T2V of the R18+FAML networks, recomputed from their own final test logits.
    logits, labels = [], None
    for s in (7, 8):
        with np.load(workdir / "r18_faml" / f"seed{s}" / "test_logits" / "epoch_0002.npz") as f:
            logits.append(f["logits"])
            labels = f["labels"]
    predictions, ambiguous = reference_predict(np.stack(logits), "t2v")
    assert not ambiguous.any()
    assert result["rows"]["R18+FAML-T2V"]["accuracy"] == float(np.mean(predictions == labels))
    report = json.loads((workdir / "reports" / "faml-fga-t2v" / "report.json").read_text())
    assert [m["name"] for m in report["members"]] == survivors
    assert result["rows"]["R18+FAML-FGA-T2V"]["accuracy"] == report["ensemble"]["t2v"]["accuracy"]
    table = (workdir / "table2.md").read_text()
    assert all(f"| {row} |" in table or f"| {row} (2 nets) |" in table for row in paper.ROWS)
    assert json.loads((workdir / "table2.json").read_text())["rows"] == result["rows"]


def test_resume_trains_nothing_again(ablated, logged):
    workdir, base, result = ablated
    again = paper.table2(base, FGA, 2, workdir, resume=True, progress=False)
    assert again["rows"] == result["rows"]
    assert "== R18+FAML-FGA" in logged and "== R18+FAML-T2V" in logged  # the messages are seen
    assert not [line for line in logged if "epoch 1/" in line or line.startswith("== R18,")]
    with pytest.raises(ConfigError, match="--resume"):
        paper.table2(base, FGA, 2, workdir, progress=False)


def test_cli_rejects_model_and_loss(capsys):
    assert ablation.main(["--model", "r18"]) == 2
    assert "chooses each row's --model and --loss" in capsys.readouterr().err
    assert ablation.main(["--networks", "1", "--workdir", "/nonexistent/x"]) == 2
    assert "at least 2 networks" in capsys.readouterr().err


def test_paper_column_takes_the_ensemble_size_that_was_run():
    """docs/method.md 5: the FGA-T2V row by ensemble size; the paper's T2V rows use 6 networks."""
    assert ablation.build_parser().parse_args([]).networks == 6
    assert paper.paper_accuracy("rafdb", "R18+FAML-FGA-T2V", 6) == pytest.approx(0.9159)
    assert paper.paper_accuracy("rafdb", "R18+FAML-FGA-T2V", 4) == pytest.approx(0.9130)
    assert paper.paper_accuracy("affectnet8", "R18+FAML-FGA-T2V", 5) == pytest.approx(0.6299)
    assert paper.paper_accuracy("affectnet7", "R18+FAML-FGA-T2V", 4) is None  # not reported
    assert paper.paper_accuracy("rafdb", "R18+FA", 4) == pytest.approx(0.8872)


def test_variant_rows_are_fa_with_its_blocks_or_keep_them_off_when_asked():
    for attention in (True, False):
        base = tiny_config("/tmp/unused", 1, attention=attention)
        for row, model in paper.VARIANTS.items():
            config = variant_config(base, row)
            assert config.model.attention == (attention and model != "r18")  # FA = fusion stem + attention blocks
            assert bool(config.model.fa_regions) == (model != "r18")
            assert config.loss.kind == ("ml" if model == "r18_faml" else "ce")
            assert config.model.widths == base.model.widths and config.seed == base.seed


def test_resume_refuses_a_finished_run_of_another_row_definition(ablated, tmp_path):
    """An R18+FA row made with another definition of FA (here: the attention blocks switched the
    other way, as when R18+FA was the FA stem alone) is not silently reused."""
    import shutil

    workdir, base, _ = ablated
    copy = tmp_path / "ab"
    shutil.copytree(workdir, copy)
    path = copy / "r18_fa" / "seed7" / "config.json"
    saved = json.loads(path.read_text())
    saved["model"]["attention"] = not saved["model"]["attention"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"r18_fa/seed7 was made with another configuration.*model.attention"):
        paper.table2(base, FGA, 2, copy, resume=True, progress=False)


def test_figure8_of_the_five_rows_in_one_command(ablated, tmp_path):
    """experiments.explain --ablation draws Table 2's five rows (docs/method.md 6)."""
    from experiments import explain

    workdir, _, result = ablated
    out = tmp_path / "figure8.png"
    assert explain.main(["--ablation", str(workdir), "--out", str(out)]) == 0
    with np.load(out.with_suffix(".npz")) as saved:
        rows, maps = list(saved["rows"]), saved["maps"]
    best = result["rows"]["R18+FAML-FGA"]["best_network"]
    assert rows == ["R18", "R18+FA", "R18+FAML", f"R18+FAML-FGA ({best})", "R18+FAML-FGA-T2V"]
    assert maps.shape[:2] == (5, 7)
