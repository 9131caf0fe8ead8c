"""faml_jax.paper's Table 6 and Fig. 7 (docs/method.md 7): the writer against hand-made member
logits (the origin both ways), the program end to end on a tiny synthetic run, and its one-line
refusals (a real data set without pre-trained starts, an FGA population of another size)."""

import json

import numpy as np
import pytest
from helpers import reference_predict, tiny_config

from experiments import architectures
from faml_jax import paper, presets
from faml_jax.config import FGAConfig
from faml_jax.data import fixtures
from faml_jax.errors import ConfigError
from faml_jax.paper.architectures import origin_network, table6_markdown, table6_row
from faml_jax.paper.networks import PretrainedStartsMissing, train_networks


def test_a_table6_row_from_hand_made_logits():
    """Three members, four images, three classes: origin, T2V, T1V and NOI by hand and by the
    independent NumPy vote."""
    logits = np.array(
        [
            [[3, 2, 0], [0, 3, 2], [2, 0, 3], [3, 0, 2]],
            [[2, 3, 0], [0, 2, 3], [3, 0, 2], [2, 0, 3]],
            [[2, 3, 0], [3, 2, 0], [0, 3, 2], [3, 2, 0]],
        ],
        np.float32,
    )
    labels = np.array([1, 1, 0, 2])
    row = table6_row(logits, labels, alpha=1.9, beta=1.0, names=["a", "b", "c"])
    singles = [np.mean(np.argmax(m, -1) == labels) for m in logits]
    assert singles == [0.25, 0.75, 0.25] and row["members"] == singles and row["networks"] == 3
    assert row["origin"] == pytest.approx(np.mean(singles)) and row["origin_sd"] == pytest.approx(
        np.std(singles, ddof=1)
    )
    for strategy in ("t2v", "t1v", "noi"):
        expected, ambiguous = reference_predict(logits, strategy)
        assert not ambiguous.any()
        assert row[strategy] == np.mean(expected == labels)
        assert row[f"{strategy}_gain"] == pytest.approx(row[strategy] - row["origin"])
    # By hand: T2V scores image 0: class 1 gets 1.9 + 1.9 + 1.0, class 0 gets 1.9 + 1.0 + 1.0 -> 1 (right).
    assert expected[0] == 1


def origin_logits():
    """Four members, eight images, three classes, each member right on a stated number of the
    images (its argmax the label there, the next class elsewhere): 2, 6, 4 and 5 of 8."""
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    right = [2, 6, 4, 5]
    logits = np.zeros((4, 8, 3), np.float32)
    for m, k in enumerate(right):
        for i, label in enumerate(labels):
            logits[m, i, label if i < k else (label + 1) % 3] = 1.0
    return logits, labels


def test_the_origin_both_ways_by_hand():
    """The members' accuracies are 2/8, 6/8, 4/8 and 5/8 (0.25, 0.75, 0.5, 0.625): mean 0.53125,
    sample sd 0.2135; the best network is the second (0.75), the median the third (0.5, the lower
    of the middle two 0.5 and 0.625), the first 0.25. T2V, T1V and NOI gain over each."""
    logits, labels = origin_logits()
    names = ["s0", "s1", "s2", "s3"]
    for rule, network, single in (("best", "s1", 0.75), ("median", "s2", 0.5), ("first", "s0", 0.25)):
        row = table6_row(logits, labels, 1.9, 1.0, names=names, origin=rule)
        assert row["members"] == [0.25, 0.75, 0.5, 0.625]
        assert row["origin"] == 0.53125 and row["origin_sd"] == pytest.approx(0.21347, abs=1e-5)
        assert (row["origin_network"], row["origin_single"], row["origin_rule"]) == (network, single, rule)
        for strategy in ("t2v", "t1v", "noi"):
            assert row[f"{strategy}_gain_single"] == pytest.approx(row[strategy] - single)
            assert row[f"{strategy}_gain"] == pytest.approx(row[strategy] - 0.53125)
    for strategy in ("t2v", "t1v", "noi"):  # the decisions by the independent NumPy vote
        expected, _ = reference_predict(logits, strategy)
        assert row[strategy] == np.mean(expected == labels)
    assert origin_network([0.5, 0.7, 0.7], "best") == 1  # the first of equals
    assert origin_network([0.5, 0.7], "median") == 0  # an even number: the lower of the middle two
    with pytest.raises(ConfigError, match="unknown origin rule 'mean'"):
        origin_network([0.5], "mean")


def test_the_markdown_gives_the_origin_both_ways_and_each_rows_size():
    logits, labels = origin_logits()
    row = table6_row(logits, labels, 1.9, 1.0, names=["s0", "s1", "s2", "s3"], origin="median")
    result = {
        "dataset": "rafdb", "networks": 6, "seeds": [0, 5], "epochs": 1, "origin_rule": "median", "ties": "lowest",
        "rows": {"R18": {**row, "what": "w", "paper": paper.paper_table6("rafdb", "R18")}},
    }  # fmt: skip
    md = table6_markdown(result)
    t2v = row["t2v"]
    assert f"| R18 | 4 | 50.00 (s2) | 53.12 ± 21.35 | {100 * t2v:.2f} ({100 * (t2v - 0.5):+.2f} / " in md
    assert "network of median accuracy" in md and "the paper's origin column is one network's accuracy" in md
    assert "ties broken by the lowest class index" in md and "88.62 / 90.42 / 89.73 / 90.38" in md


def test_the_program_writes_table6_and_fig7(tmp_path, capsys):
    """Two rows of two networks each (full widths, 32 px, 32 training images: the sizes prove
    nothing here), end to end: the table's numbers are the reports'."""
    base = tiny_config(tmp_path / "data", 1)
    data = base.data
    args = [
        "--workdir", str(tmp_path / "t6"), "--networks", "2", "--rows", "R18,VGG16", "--epochs", "1",
        "--input-size", "32", "--train-size", "32", "--test-size", "16",
        "--batch-size", "16", "--data-dir", data.data_dir, "--threads", "2", "--no-progress",
    ]  # fmt: skip
    assert architectures.main(args) == 0
    result = json.loads((tmp_path / "t6" / "table6.json").read_text())
    assert list(result["rows"]) == ["R18", "VGG16"] and result["networks"] == 2
    # Without backbones R18 is RI18's configuration: its networks live in RI18's folder, whatever --rows says.
    assert (tmp_path / "t6" / "ri18" / "seed0" / "summary.json").exists() and not (tmp_path / "t6" / "r18").exists()
    for row, folder in (("R18", "r18"), ("VGG16", "vgg16")):
        report = json.loads((tmp_path / "t6" / "reports" / folder / "report.json").read_text())
        r = result["rows"][row]
        assert r["t2v"] == report["ensemble"]["t2v"]["accuracy"] and r["noi"] == report["ensemble"]["noi"]["accuracy"]
        assert r["members"] == [m["accuracy"] for m in report["members"]]
        assert r["paper"] is None  # the paper's numbers are RAF-DB's
    md = (tmp_path / "t6" / "table6.md").read_text()
    assert "| R18 |" in md and "| VGG16 |" in md
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "t6" / "fig7.png").ndim == 3
    # Resumed: nothing trains again; the same table.
    capsys.readouterr()
    assert architectures.main(args + ["--resume"]) == 0
    assert "epoch 1/1" not in capsys.readouterr().out
    assert json.loads((tmp_path / "t6" / "table6.json").read_text()) == result


def test_a_rows_network_started_afresh_is_not_called_a_resume(tmp_path, logged):
    """The tables train each network as a resume if there is one to continue (and reuse it when
    finished): a fresh start says nothing of a resume that found no earlier run."""
    config = tiny_config(tmp_path / "data", 1)
    ((run_dir, summary),) = train_networks(config, [7], tmp_path / "row", "R18", progress=False)
    assert run_dir == tmp_path / "row" / "seed7" and summary["finished"] and summary["epochs"] == 1
    assert not [m for m in logged if "resume" in m], logged
    logged.clear()
    assert train_networks(config, [7], tmp_path / "row", "R18", progress=False) == [(run_dir, summary)]
    assert not [m for m in logged if "== R18" in m]  # finished: reused, not trained again


def test_refusals_are_one_line(tmp_path, capsys):
    def run(*args):
        code = architectures.main(["--workdir", str(tmp_path / "w"), *args])
        return code, capsys.readouterr().err.strip()

    code, err = run("--rows", "AlexNet")
    assert code == 2 and "unknown Table 6 row(s) AlexNet" in err and len(err.splitlines()) == 1
    code, err = run("--model", "vgg16")
    assert code == 2 and "each row chooses its --model" in err
    code, err = run("--widths", "8,16,16,32")
    assert code == 2 and "would apply to one architecture only" in err
    (tmp_path / "backbones" / "ri18").mkdir(parents=True)
    code, err = run("--backbones", str(tmp_path / "backbones"), "--rows", "RI18,VGG16")
    assert code == 2 and "has no vgg16: convert each with python -m tools.convert_torch" in err
    code, err = run("--rows", "R18+FAML-FGA")
    assert code == 2 and "needs an evolution's workdir (--fga-workdir)" in err
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="at least 2 networks"):
        paper.table6(tiny_config(tmp_path / "data", 1), tmp_path / "w", networks=1)


def test_paper_numbers_are_fractions_of_raf_db_only():
    assert paper.paper_table6("rafdb", "VGG16") == pytest.approx(
        {"origin": 0.8383, "t2v": 0.8752, "t1v": 0.8667, "noi": 0.8739}
    )
    assert paper.paper_table6("affectnet8", "VGG16") is None


@pytest.fixture(scope="module")
def fake_rafdb(tmp_path_factory):
    """A RAF-DB folder in the release's layout (a few generated images), without any backbone."""
    return fixtures.write_rafdb(tmp_path_factory.mktemp("release") / "RAF-DB", [1, 2, 3, 4], [5, 6], size=40).parent


def test_tables_on_a_real_data_set_without_pretrained_starts_are_refused(fake_rafdb, tmp_path, capsys):
    """paper.table6 and paper.table2 refuse RAF-DB without backbones in one line, as the programs
    do; nothing is written. from_scratch=True is the one way around (not run here: it trains)."""
    base = presets.preset("rafdb", "r18", from_scratch=True, data={"data_dir": str(fake_rafdb)})
    with pytest.raises(PretrainedStartsMissing) as refused:
        paper.table6(base, tmp_path / "t6", rows=("RI18", "VGG16"), networks=2)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "Table 6 on rafdb starts its networks from pre-trained" in message
    assert "give backbones=DIR (one converted backbone per row: ri18, vgg16)" in message
    assert "from_scratch=True" in message
    faml = presets.preset("rafdb", from_scratch=True, data={"data_dir": str(fake_rafdb)})
    with pytest.raises(PretrainedStartsMissing, match=r"^Table 2 on rafdb starts .* give base.init"):
        paper.table2(faml, FGAConfig(population=2), 2, tmp_path / "t2")
    with pytest.raises(ConfigError, match="backbones or from_scratch=True"):
        paper.table6(base, tmp_path / "t6", networks=2, backbones=tmp_path, from_scratch=True)
    assert not (tmp_path / "t6").exists() and not (tmp_path / "t2").exists()
    # The program: the same refusal, with its flags.
    code = architectures.main(["--dataset", "rafdb", "--data-dir", str(fake_rafdb), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "give --backbones DIR (one converted backbone per row: densenet121, msceleb, resnet34, ri18, vgg16)" in err
    assert "or pass --from-scratch" in err and not (tmp_path / "w").exists()


def test_an_fga_population_of_another_size_is_refused_unless_accepted(tmp_path, monkeypatch, capsys):
    """The R18+FAML-FGA row's population must hold --networks networks (the table's other rows');
    --fga-any-size accepts it, and the row reports its size."""
    from faml_jax import runs
    from faml_jax.paper import architectures as table6_module

    population = [(f"g1n{i}", tmp_path / f"net{i}") for i in range(4)]
    monkeypatch.setattr(runs, "population_members", lambda workdir: population)
    with pytest.raises(ConfigError, match=r"population \(.*\) holds 4 networks, the other rows 6: evolve"):
        table6_module._fga_members(tmp_path / "evolve", 6, any_fga_size=False)
    assert table6_module._fga_members(tmp_path / "evolve", 6, any_fga_size=True) == population
    code = architectures.main(
        ["--rows", "R18+FAML-FGA", "--fga-workdir", str(tmp_path), "--workdir", str(tmp_path / "w"), "--networks", "6"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--fga-any-size" in err and "holds 4 networks" in err, err
    assert not (tmp_path / "w").exists()


def test_fig7_joins_each_rule_in_order_of_origin_beside_the_papers_hollow_points(monkeypatch):
    """Fig. 7 of a hand-made table: each decision's points joined in order of origin (ours
    filled, the paper's hollow, its gains the differences of its Table 6), the paper's origin
    (one network) drawn by default and said in the title; the mean on request, said too; labels
    of rows whose origins lie close together clear of each other."""
    from matplotlib.colors import to_rgba

    from faml_jax import figures
    from faml_jax.paper.figure7 import draw_figure7, figure7_points, paper_figure7_points

    logits, labels = origin_logits()
    rows = {}
    for k, row in enumerate(["VGG16", "R18", "ResNet34", "RI18"]):  # not in order of origin
        r = table6_row(logits[k:], labels, 1.9, 1.0, names=["a", "b", "c", "d"][k:])
        rows[row] = r
    result = {"dataset": "synthetic", "networks": 4, "origin_rule": "best", "rows": rows}
    ours = figure7_points(result)
    assert [p["origin"] for p in ours] == [100 * r["origin_single"] for r in rows.values()]
    assert ours[0]["gains"]["t2v"] == pytest.approx(100 * (rows["VGG16"]["t2v"] - rows["VGG16"]["origin_single"]))
    assert figure7_points(result, "mean")[0]["origin"] == 100 * rows["VGG16"]["origin"]
    paper = paper_figure7_points(rows)
    assert {p["label"]: p["origin"] for p in paper} == {"VGG16": 83.83, "R18": 88.62, "ResNet34": 85.53, "RI18": 85.40}
    assert paper[2]["gains"] == pytest.approx({"t2v": 3.71, "t1v": 3.32, "noi": 3.68})  # 89.24 - 85.53, ...
    fig = draw_figure7(ours, paper, "ours", "origin (%)", "Fig. 7")
    for ax, hollow in zip(fig.axes, (False, True)):
        lines = [line for line in ax.get_lines() if line.get_marker() in ("o", "s", "^")]
        assert len(lines) == 3  # one per decision
        for line in lines:
            xs = list(line.get_xdata())
            assert xs == sorted(xs) and len(xs) == 4
            face = to_rgba(line.get_markerfacecolor())
            assert (face == to_rgba("white")) == hollow and (line.get_linestyle() == "--") == hollow
    assert figures.overlapping_text(fig) == [] and figures.text_outside(fig) == []
    titles = {"single": "over one network (the paper's origin)", "mean": "over the networks' mean (not the paper's"}
    import faml_jax.paper.figure7 as figure7_module

    seen = []
    drawn = figure7_module.draw_figure7
    monkeypatch.setattr(figure7_module, "draw_figure7", lambda *args: seen.append(args) or drawn(*args))
    assert figure7_module.figure7(result).startswith(b"\x89PNG")
    assert figure7_module.figure7(result, "svg", origin="mean").startswith(b"<?xml")
    (_, _, _, xlabel, title), (_, _, _, mean_xlabel, mean_title) = seen
    assert titles["single"] in title and "one network's test accuracy (the best of each row's 4)" in xlabel
    assert titles["mean"] in mean_title and "the mean test accuracy of each row's 4 networks" in mean_xlabel
    # Seven rows whose origins lie within 0.3 points: their labels stack in lanes, none over another.
    crowded = [
        {"label": f"row number {i}", "origin": 85.0 + 0.05 * i, "gains": dict.fromkeys(("t2v", "t1v", "noi"), 1.0 + i)}
        for i in range(7)
    ]
    fig = draw_figure7(crowded, paper, "ours", "origin (%)", "Fig. 7")
    assert figures.overlapping_text(fig) == [] and figures.text_outside(fig) == []
