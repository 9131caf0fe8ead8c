"""faml_jax.paper's Table 6 and Fig. 7 (docs/method.md 7): the writer against hand-made member
logits, the program end to end on a tiny synthetic run, and its one-line refusals."""

import json

import numpy as np
import pytest
from helpers import reference_predict, tiny_config

from experiments import architectures
from faml_jax import paper
from faml_jax.errors import ConfigError
from faml_jax.paper.architectures import table6_row
from faml_jax.paper.networks import train_networks


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
    row = table6_row(logits, labels, alpha=1.9, beta=1.0)
    singles = [np.mean(np.argmax(m, -1) == labels) for m in logits]
    assert singles == [0.25, 0.75, 0.25] and row["members"] == singles and row["first"] == 0.25
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


def test_the_program_writes_table6_and_fig7(tmp_path, capsys):
    """Two rows of two tiny networks each, end to end: the table's numbers are the reports'."""
    base = tiny_config(tmp_path / "data", 1)
    data = base.data
    args = [
        "--workdir", str(tmp_path / "t6"), "--networks", "2", "--rows", "R18,VGG16", "--epochs", "1",
        "--input-size", "32", "--train-size", "96", "--test-size", "40",
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
