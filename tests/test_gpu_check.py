"""tools/gpu_check.py's dry run (``--cpu-smoke``): every section of the GPU check runs here, on
the CPU with tiny sizes, so the kit cannot rot between the rare sessions with a GPU; and
tools/wheelhouse.py's choice of wheels."""

import json
import re
import statistics

import pytest
from helpers import require_torch


@pytest.mark.slow
def test_the_cpu_smoke_run_fills_every_section(tmp_path, capsys):
    require_torch()
    from tools import gpu_check

    assert gpu_check.main(["--out", str(tmp_path), "--cpu-smoke"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    assert all(s["status"] == "ok" for s in sections.values()), {k: s.get("error") for k, s in sections.items()}

    assert sections["environment"]["result"]["versions"]["jax"]
    # Every test marked gpu lives in the modules the check collects: 14 collected, the rest of
    # those modules deselected, no error.
    summary = sections["tests"]["result"]["summary"]
    counts = re.fullmatch(r"14/(\d+) tests collected \((\d+) deselected\) in [\d.]+s", summary)
    assert counts and int(counts[1]) - int(counts[2]) == 14, summary
    rows = sections["train_step"]["result"]["results"]
    labels = [r["label"] for r in rows]
    assert labels[:2] == ["faml_jax r18", "faml_jax r18_faml"]
    assert "PyTorch twin r18_faml eager" in labels and "PyTorch twin r18 eager" in labels
    for row in rows:  # the rate is the batch over the median of the timed steps
        assert row["median_s"] == statistics.median(row["times"]), row["label"]
        assert row["images_per_s"] == pytest.approx(8 / row["median_s"]) and row["size"] == 32, row["label"]
    faml = next(r for r in rows if r["label"] == "faml_jax r18_faml")
    twin = next(r for r in rows if r["label"] == "PyTorch twin r18_faml eager")
    assert faml["vs_torch_eager"] == pytest.approx(faml["median_s"] / twin["median_s"])
    # XLA's cost analysis of the compiled step: the FA stem adds its convolutions to the ResNet's.
    plain = next(r for r in rows if r["label"] == "faml_jax r18")
    assert faml["flops_per_image"] > plain["flops_per_image"] > 0
    assert len(sections["ensemble"]["result"]["table"]) == 7  # title, blank, header, rule, 3 contenders
    assert any("prepared" in line for line in sections["data"]["result"]["table"])
    end = sections["end_to_end"]["result"]
    assert [e["epoch"] for e in end["epochs"]] == [1, 2]
    for epoch, rate in zip(end["epochs"], end["images_per_s"]):  # 96 training images an epoch
        assert rate == pytest.approx(96 / epoch["epoch_s"])

    text = (tmp_path / "gpu_check.md").read_text()
    assert "## train_step: ok" in text and "| faml_jax r18_faml |" in text
    assert "6 of 6 sections ok" in capsys.readouterr().out


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    from tools import gpu_check

    def broken(args):
        raise RuntimeError("no such device\nsecond line")

    monkeypatch.setitem(gpu_check.RUNNERS, "ensemble", broken)
    code = gpu_check.main(["--out", str(tmp_path), "--cpu-smoke", "--sections", "environment", "ensemble"])
    assert code == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["environment"]["status"] == "ok"
    assert report["sections"]["ensemble"]["status"] == "failed"
    assert report["sections"]["ensemble"]["error"].startswith("RuntimeError: no such device")
    assert "## ensemble: failed" in (tmp_path / "gpu_check.md").read_text()


def test_sections_past_the_budget_are_skipped_not_run(tmp_path):
    from tools import gpu_check

    assert (
        gpu_check.main(
            ["--out", str(tmp_path), "--cpu-smoke", "--budget", "0", "--sections", "environment", "train_step"]
        )
        == 0
    )
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert {s["status"] for s in sections.values()} == {"skipped"}


def test_the_wheelhouse_keeps_only_what_the_image_lacks():
    from tools import wheelhouse

    image = wheelhouse.image_packages()
    assert {"jax", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "torch", "pyarrow"} <= image
    assert not {"grain", "tensorflow-datasets", "array-record", "tensorboardx", "promise"} & image
    assert wheelhouse.wheel_project("tensorflow_datasets-4.9.10-py3-none-any.whl") == "tensorflow-datasets"
    assert wheelhouse.wheel_project("array_record-0.8.6-cp312-cp312-manylinux2014_x86_64.whl") == "array-record"
    pins = wheelhouse.pins()
    for name in wheelhouse.WANTED + wheelhouse.SOURCE_ONLY:  # the kit takes the versions the suite tests
        assert wheelhouse.normalise(name) in pins, name
