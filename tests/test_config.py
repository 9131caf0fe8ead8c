"""Tests of faml_jax.config: presets as functions (what the programs build), their refusals, and
the configuration round trip through config.json."""

import dataclasses
import json

import pytest

from experiments import train as train_program
from faml_jax.config import RunConfig, from_dict, preset
from faml_jax.errors import ConfigError


def test_presets_hold_the_papers_settings():
    """docs/method.md 2.3-2.4: RAF-DB batch 128, ML p 0.8 with CE; AffectNet batch 256, ML p 0.2 with
    WCE, 8 classes for AffectNet-8; Lr1 3e-4 (the optimiser's rate follows it), Lr2 1e-5; SGD's
    rate 0.005; float32 on the CPU, bfloat16 on accelerators."""
    raf = preset("rafdb", init="/b", backend="cpu")
    assert (raf.batch_size, raf.loss.kind, raf.loss.p_lsr, raf.loss.weighted) == (128, "ml", 0.8, False)
    assert raf.schedule.lr1 == 3e-4 and raf.schedule.lr2 == 1e-5
    assert raf.model.num_classes == 7 and raf.model.widths == (64, 128, 256, 512) and raf.model.dtype == "float32"
    an8 = preset("affectnet8", init="/b", backend="gpu")
    assert (an8.batch_size, an8.loss.p_lsr, an8.loss.weighted, an8.model.num_classes) == (256, 0.2, True, 8)
    assert an8.model.dtype == "bfloat16" and preset("affectnet7", init="/b").model.num_classes == 7
    sgd = preset("rafdb", init="/b", optim={"name": "sgd"})
    assert sgd.schedule.lr1 == 0.005
    assert preset("synthetic", optim={"name": "sgd"}, schedule={"lr1": 0.01}).schedule.lr1 == 0.01


def test_model_names_choose_the_rows_loss_and_options_change_the_network():
    assert preset("synthetic", "r18").loss.kind == preset("synthetic", "r18_fa").loss.kind == "ce"
    small = preset("synthetic", "r18_fa", model_options={"widths": (8, 8, 16, 16), "attention": False})
    assert small.model.widths == (8, 8, 16, 16) and not small.model.attention and small.model.fa_regions
    assert small.model_name == "r18_fa"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="rafdb"), "--init BACKBONE.*--from-scratch"),
        (dict(dataset="imagenet"), "unknown data set"),
        (dict(model="r50"), "unknown model"),
        (dict(colour="red"), r"no field\(s\) \['colour'\]"),
        (dict(model_name="r18"), "model_options"),
    ],
)
def test_refusals_are_config_errors_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as raised:
        preset(**kwargs)
    assert len(str(raised.value).splitlines()) == 1


def test_a_refusal_is_a_value_error_in_python_and_one_line_from_the_program(tmp_path, capsys):
    """docs/training.md: code that catches ``ValueError`` catches a refusal; the program prints it
    as one line, exits with status 2 and creates nothing. --from-scratch is the way out."""
    with pytest.raises(ValueError, match="--init BACKBONE"):
        preset("rafdb")
    assert preset("rafdb", from_scratch=True).init is None
    code = train_program.main(["--dataset", "rafdb", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err], err
    assert err.startswith("python -m experiments.train: error: rafdb runs start from a pre-trained") and "--init" in err
    assert not (tmp_path / "run").exists()


def test_a_preset_round_trips_through_its_json():
    config = preset("affectnet8", "r18_fa", from_scratch=True, augment={"erasing_p": 0.5}, data={"balanced": True})
    again = from_dict(RunConfig, json.loads(json.dumps(dataclasses.asdict(config))))
    assert again == config


def test_the_readmes_preset_snippet_runs():
    """docs/training.md's `preset` example, run as written (paths need not exist to build a config)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    start = readme.index("  from faml_jax.config import preset\n")
    snippet = "\n".join(line[2:] for line in readme[start : readme.index("  ```", start)].splitlines())
    namespace = {}
    exec(snippet, namespace)
    assert namespace["config"].data.dataset == "rafdb" and namespace["config"].init == "backbones/msceleb"
    assert namespace["r18"].loss.kind == "ce" and namespace["r18"].epochs == 5
    assert namespace["tiny"].model.input_size == 32 and namespace["tiny"].batch_size == 16
