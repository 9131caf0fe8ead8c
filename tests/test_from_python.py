"""The README's "From Python" snippet, run as written: train, evolve, vote, predict and export
with library calls only (in a temporary folder, with the synthetic data's cache there too)."""

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_from_python_snippet_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## From Python") : text.index("## Guides")]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "import experiments" not in snippet and "from experiments" not in snippet
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAML_JAX_CACHE", str(tmp_path / "cache"))
    namespace = {}
    exec(compile(snippet, "README.md (From Python)", "exec"), namespace)
    assert namespace["summary"]["epochs"] == 2
    assert (tmp_path / "runs" / "py-train" / "summary.json").exists()
    assert len(namespace["members"]) == 2
    assert (tmp_path / "runs" / "py-evolve" / "ensemble" / "report.md").exists()
    assert namespace["prediction"].probabilities.shape == (2, 3, 7)
    assert (tmp_path / "runs" / "py-export" / "py-train.onnx").exists()
    assert (tmp_path / "runs" / "py-export" / "model.stablehlo").exists()
    printed = capsys.readouterr().out.splitlines()
    assert len([line for line in printed if line and line[0].isdigit()]) >= 2
    assert os.path.isdir(tmp_path / "cache")
    # Run again as a user would: every call replaces what the first run wrote (overwrite=True).
    exec(compile(snippet, "README.md (From Python)", "exec"), {})
    assert (tmp_path / "runs" / "py-export" / "model.stablehlo").exists()
