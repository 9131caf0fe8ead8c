"""Tests of faml_jax.presets and faml_jax.config: presets as functions (what the programs build),
their refusals, and the configuration round trip through config.json."""

import dataclasses
import json
import pickle

import pytest

from experiments import train as train_program
from faml_jax.config import RunConfig
from faml_jax.errors import ConfigError
from faml_jax.presets import preset
from faml_jax.records import from_dict


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
        (dict(dataset="imagenet"), "unknown data set 'imagenet'"),
        (dict(model="r50"), "unknown model 'r50'"),
        (dict(colour="red"), r"no field\(s\) \['colour'\]"),
        (dict(model_name="r18"), "model_options"),
    ],
)
def test_what_preset_does_not_know_is_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        preset(**kwargs)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("model, start", [(None, "a pre-trained ResNet18"), ("vgg16", "pre-trained weights")])
def test_a_real_data_set_without_a_backbone_is_refused_in_the_librarys_own_words(model, start):
    """docs/method.md 2: every network of the paper starts pre-trained. The refusal names preset's
    arguments (init, from_scratch), not the flags of a program the caller may not be using
    (experiments.cli words it with the flags: tests/test_cli.py)."""
    with pytest.raises(ConfigError) as caught:
        preset("rafdb", model)
    message = str(caught.value)
    assert message.startswith(f"rafdb runs start from {start}") and len(message.splitlines()) == 1
    assert "give init=BACKBONE" in message and "pass from_scratch=True" in message
    assert "--init" not in message and "--from-scratch" not in message
    assert pickle.loads(pickle.dumps(caught.value)).args == caught.value.args
    assert preset("rafdb", model, from_scratch=True).init is None
    assert preset("rafdb", model, init="/b").init == "/b"


def test_a_refusal_is_a_value_error_in_python_and_one_line_from_the_program(tmp_path, capsys):
    """docs/training.md: code that catches ``ValueError`` catches a refusal; the program prints it
    as one line, exits with status 2 and creates nothing. --from-scratch is the way out."""
    with pytest.raises(ValueError, match="init=BACKBONE"):
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
    start = readme.index("  from faml_jax.presets import preset\n")
    snippet = "\n".join(line[2:] for line in readme[start : readme.index("  ```", start)].splitlines())
    namespace = {}
    exec(snippet, namespace)
    assert namespace["config"].data.dataset == "rafdb" and namespace["config"].init == "backbones/msceleb"
    assert namespace["r18"].loss.kind == "ce" and namespace["r18"].epochs == 5
    assert namespace["tiny"].model.input_size == 32 and namespace["tiny"].batch_size == 16
