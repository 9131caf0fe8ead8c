"""Every command the documents show is one the programs accept: each ``python -m <program> ...``
line of a shell block in README.md and docs/*.md is parsed by that program's own argument parser
(not run), so a renamed or mistyped flag breaks the suite, not the reader. Links between the
documents point at files that exist."""

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
NOT_OURS = {"pip", "pytest", "venv", "ruff"}  # python -m of other tools


def shell_blocks(text: str):
    """(first line number, lines) of each fenced shell block."""
    lines = text.splitlines()
    block, start, language = None, 0, ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```\s*(\w*)", line)
        if fence and block is None:
            block, start, language = [], number + 1, fence.group(1).lower()
        elif fence:
            if language in SHELL:
                yield start, block
            block = None
        elif block is not None:
            block.append(line)


def shell_lines(path: Path):
    """(where, line) of every command line in ``path``'s shell blocks, in order (continuation
    lines joined)."""
    for start, lines in shell_blocks(path.read_text()):
        joined, first = "", start
        for offset, line in enumerate(lines):
            if not joined:
                first = start + offset
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            yield f"{path.name}:{first}", joined
            joined = ""


def line_commands(text: str):
    """(module, arguments) of every ``python -m`` command of one shell line (comments and leading
    variable assignments dropped)."""
    for part in re.split(r"&&|\|\||;|\||&", text):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            continue
        # python -m after a launcher (srun, mpirun, time, env X=1, ...) or variable assignments
        starts = [
            i for i in range(len(words) - 2) if re.search(r"(^|/)python[0-9.]*$", words[i]) and words[i + 1] == "-m"
        ]
        if starts:
            module, arguments = words[starts[0] + 2], clean(words[starts[0] + 3 :])
            if module.split(".")[0] not in NOT_OURS:
                yield module, arguments


def commands(path: Path):
    """(where, module, arguments) of every ``python -m`` command in ``path``'s shell blocks."""
    for where, text in shell_lines(path):
        for module, arguments in line_commands(text):
            yield where, module, arguments


def clean(words: list[str]) -> list[str]:
    """A command's arguments without the shell's redirections (``> log 2>&1``), and with a flag
    whose value is a shell variable (``--dataset $DS``) left out (its value is not known here)."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        redirect = re.match(r"^\d*(>>?|<)(&\d+)?(.*)$", word)
        if redirect:
            skip = not redirect.group(2) and not redirect.group(3)  # the target is the next word
            continue
        if word.startswith("$"):
            if out and out[-1].startswith("--"):
                out.pop()
            continue
        out.append(word)
    return out


ALL = [c for path in DOCUMENTS for c in commands(path)]


def parse(module: str, arguments: list[str]) -> None:
    """Parse ``arguments`` with ``module``'s own parser (``build_parser``): a refused command
    raises AssertionError with the parser's message; ``--help`` is accepted."""
    parser = importlib.import_module(module).build_parser()
    parser.allow_abbrev = False  # documents spell flags out: a prefix that works today may not tomorrow
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            parser.parse_args(arguments)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise AssertionError(f"{module} refuses {shlex.join(arguments)!r}: {printed.getvalue().strip()}") from None


def test_the_documents_show_commands():
    assert len(ALL) >= 20, ALL  # the README and the guides show the programs
    modules = {module for _, module, _ in ALL}
    assert {"experiments.train", "experiments.evolve", "experiments.ensemble", "experiments.predict"} <= modules


@pytest.mark.parametrize("where, module, arguments", ALL, ids=[f"{w} {m}" for w, m, _ in ALL])
def test_every_documented_command_parses(where, module, arguments, capsys):
    parse(module, arguments)


def test_the_extraction_reads_commands_as_a_shell_would(tmp_path):
    text = "\n".join(
        [
            "```bash",
            "srun python -m experiments.train --dataset rafdb \\",
            "    --epochs 3 > train.log 2>&1   # a comment",
            "FOO=1 .venv/bin/python -m experiments.ensemble --members a b --out $OUT && echo done",
            "python -m pip install -e .",
            "```",
        ]
    )
    (tmp_path / "doc.md").write_text(text)
    found = list(commands(tmp_path / "doc.md"))
    assert found == [
        ("doc.md:2", "experiments.train", ["--dataset", "rafdb", "--epochs", "3"]),
        ("doc.md:4", "experiments.ensemble", ["--members", "a", "b"]),
    ]


def test_a_wrong_flag_is_caught():
    """The check itself: a flag the program does not have, and a value it refuses, fail."""
    with pytest.raises(AssertionError, match="unrecognized arguments: --epoch 3"):
        parse("experiments.train", ["--epoch", "3"])
    with pytest.raises(AssertionError, match="invalid choice"):
        parse("experiments.ensemble", ["--members", "a", "b", "--checkpoint", "last"])
    parse("tools.export", ["--help"])


def test_links_between_the_documents_exist():
    missing = []
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            if not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not missing, missing
