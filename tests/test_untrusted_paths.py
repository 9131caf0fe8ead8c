"""Names read from records become paths only through ``faml_jax.safenames``: the guard of the rule
"a record written elsewhere is untrusted input". Every program and library call that turns a
name from a record into a path (an evolution's member names into exported files; the files an
export, a report or a prediction lists when its folder is replaced) is run here on crafted
records holding ``../`` names and absolute names, and nothing may be written or deleted outside
the folders it was given."""

import json
import re

import pytest
from helpers import TINY_MODEL, jittered_variables, write_run

from faml_jax import export, photos, report
from faml_jax.errors import WorkdirError
from faml_jax.presets import preset
from faml_jax.safenames import plain_name, relative_path
from faml_jax.versions import EVOLUTION_VERSION, stamped
from faml_jax.workdir import check_replaceable


def tree(root):
    """Every path under ``root`` with its content (files) or None (folders and links)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../x", "path separator"),
        ("/etc/x", "path separator"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("", "empty"),
        ("a\0b", "NUL character"),
        ("a\\b", "path separator"),
        ("x" * 201, "longer than 200 bytes"),
        (7, "not a string"),
    ],
)
def test_a_name_from_a_record_is_one_plain_component(name, problem):
    with pytest.raises(WorkdirError, match=f"population.json: member name .* \\(.*{re.escape(problem)}\\)") as caught:
        plain_name(name, "population.json", "member name")
    assert len(str(caught.value).splitlines()) == 1
    assert plain_name("net0_g1", "population.json", "member name") == "net0_g1"
    assert str(relative_path("annotated/a.png", "predictions.json", "files")) == "annotated/a.png"
    with pytest.raises(WorkdirError, match="predictions.json: files"):
        relative_path("annotated/../../a.png", "predictions.json", "files")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = preset("synthetic", "r18", model_options=TINY_MODEL)
    return write_run(tmp_path_factory.mktemp("untrusted") / "net", config, jittered_variables(config, 0))


def crafted_evolution(folder, names, run):
    """An evolution's workdir by hand whose population.json names its members ``names``."""
    folder.mkdir()
    (folder / "evolve.json").write_text(json.dumps(stamped({"fga": {"generations": 0}})))
    lineage = {
        "members": {n: {"workdir": str(run), "status": "trained"} for n in names},
        "generations": [{"generation": 0, "survivors": list(names)}],
    }
    (folder / "population.json").write_text(json.dumps(stamped(lineage, EVOLUTION_VERSION)))
    return folder


def test_tools_export_writes_no_member_name_outside_its_folder(tiny_run, tmp_path, capsys):
    """A member name of population.json such as ../../elsewhere/x or an absolute path was the
    path of <name>.onnx (exit 0, the file written there)."""
    from tools import export as program

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for names in (["../../elsewhere/x"], [str(elsewhere / "y")]):
        evolution = crafted_evolution(tmp_path / f"evolution{len(names[0])}", names, tiny_run)
        out = tmp_path / "deep" / "out"
        before = tree(tmp_path)
        code = program.main(["--population", str(evolution), "--generation", "0", str(out), "--format", "onnx"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "member name" in err and "population.json" in err
        assert list(elsewhere.iterdir()) == [] and not (tmp_path / "elsewhere" / "x.onnx").exists()
        assert not out.exists()
        assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("deep")} == before
    with pytest.raises(WorkdirError, match="network name '../x' is not a plain file name"):
        export.export_runs([tiny_run], tmp_path / "out2", formats=("onnx",), names=["../x"])
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("what", ["export", "report", "prediction"])
def test_a_listing_never_reaches_outside_its_folder(tmp_path, what):
    """A folder whose index lists ../ or absolute names, or holds a link to a file that is
    listed, is not the program's own: it is refused (so never replaced), and the files outside
    that the listing names are untouched."""
    index_file, kind, recognise = {
        "export": ("export.json", export.EXPORT_KIND, export.recognise_export),
        "report": ("report.json", report.REPORT_KIND, report.recognise_report),
        "prediction": ("predictions.json", "faml_jax.predictions", getattr(photos, "recognise_predictions", None)),
    }[what]
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    folder = tmp_path / "out"
    folder.mkdir()
    listing = ["../victim.txt", str(victim), "report.md", "predictions.csv"]
    (folder / index_file).write_text(json.dumps({"kind": kind, "files": listing}))
    assert recognise(folder) is None  # names that are not there do not matter ...
    (folder / "notes.txt").write_text("")  # ... what is there and unlisted does
    assert recognise(folder) == "notes.txt"
    (folder / "notes.txt").unlink()
    (folder / "report.md").symlink_to(victim)  # a listed name that is a link out of the folder
    (folder / "predictions.csv").symlink_to(victim)
    with pytest.raises(WorkdirError, match=f"is not an? {what} written by faml_jax .*report.md"):
        check_replaceable(folder, what, recognise, overwrite=True)
    assert victim.read_text() == "mine"
