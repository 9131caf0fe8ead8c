"""Tests of experiments/cli.py's error boundary: errors a user can cause (``faml_jax.errors.FamlError``,
``OSError``) are one line with exit status 2 or 1; any other exception, even a ``ValueError``, is a bug
and keeps its traceback. And of experiments/flags.py: the library's words turned into the flags'."""

import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, program_env

from experiments import train
from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import resolve_config
from faml_jax.checkpoint import CheckpointDamaged
from faml_jax.errors import ConfigError, DataError, WorkdirError
from faml_jax.pretrained import ConversionError


def run(body, capsys):
    parser = OneLineErrorParser.for_program("probe", "")
    status = run_cli(parser, [], lambda args: body())
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad flag value"),
        DataError("bad data"),
        WorkdirError("bad folder"),
        ConversionError("bad backbone"),
        CheckpointDamaged("bad checkpoint"),
        UsageError("bad command line"),
    ],
)
def test_the_library_errors_are_one_line_with_status_2(error, capsys):
    """Each error class a user can cause, raised by a program's body, is one line and status 2
    (an exception not caught as one would propagate out of run_cli instead)."""

    def body():
        raise error

    status, err = run(body, capsys)
    assert (status, err) == (2, f"python -m probe: error: {error}\n")


def test_os_errors_are_one_line_with_status_1(tmp_path, capsys):
    status, err = run(lambda: open(tmp_path / "absent.txt").read(), capsys)
    assert (status, err) == (1, f"python -m probe: error: No such file or directory: {tmp_path / 'absent.txt'}\n")


@pytest.mark.parametrize(
    "error",
    [
        ValueError("operands could not be broadcast"),
        TypeError("bad operand"),
        KeyError("params"),
        ZeroDivisionError("division by zero"),
    ],
)
def test_any_other_exception_is_a_bug_and_keeps_its_traceback(error, capsys):
    def body():
        raise error

    with pytest.raises(type(error)):
        run(body, capsys)


def test_a_programs_bug_prints_its_traceback():
    """As a user sees it: a ValueError from inside the library (say NumPy's) ends the program with
    Python's traceback naming where it came from, not one line hiding it."""
    script = textwrap.dedent("""
        import numpy as np
        from experiments.cli import OneLineErrorParser, run_cli

        def body(args):
            np.zeros(3) + np.zeros(4)  # a bug: operands could not be broadcast

        raise SystemExit(run_cli(OneLineErrorParser.for_program("probe", ""), [], body))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], env=program_env(), capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "in body" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ValueError: operands could not be broadcast")


@pytest.mark.parametrize("model", [[], ["--model", "vgg16"]])
def test_a_refusal_in_the_librarys_words_is_said_with_the_programs_flags(model):
    """faml_jax.presets refuses a real data set without a backbone naming preset()'s arguments
    (init, from_scratch); a program says the same with its flags."""
    args = train.build_parser().parse_args(["--dataset", "rafdb", *model])
    with pytest.raises(UsageError) as caught:
        resolve_config(args)
    message = str(caught.value)
    assert "give --init BACKBONE" in message and "pass --from-scratch to train" in message
    assert "init=BACKBONE" not in message and "from_scratch" not in message
