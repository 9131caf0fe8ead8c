"""The guides, followed in order, chain: every folder under ``runs/`` that a command reads
(``--run``, ``--population``, ``--members``, ``--fga-workdir``, ``--ablation``, a resumed
``--workdir``, tools.export's runs) is one that a command before it writes (``--workdir`` or the
program's default workdir, ``--out``, tools.export's output), in the README and every guide in
the order a new user reads them, ``make`` targets read from the Makefile's recipes. Commands are
parsed by the programs' own parsers, not run."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

from test_docs import ROOT, line_commands, shell_lines

# The order a new user follows: quick start, one network, real data, a population, its ensemble,
# the paper's tables, using a model, then the reference guides (any other guide last).
ORDER = ["README.md", "docs/training.md", "docs/data.md", "docs/fga.md", "docs/t2v.md", "docs/tables.md"]
ORDER += ["docs/using-a-model.md", "docs/gpu.md", "docs/faults.md", "docs/pytorch.md", "docs/development.md"]
GUIDES = ORDER + sorted({str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} - set(ORDER))

# The programs' default workdirs (experiments/<program>.py), from their parsed arguments.
DEFAULT_WORKDIR = {
    "experiments.train": "runs/{dataset}-{model}-seed{seed}",
    "experiments.evolve": "runs/evolve-{dataset}-{model}-seed{seed}",
    "experiments.ablation": "runs/ablation-{dataset}-seed{seed}",
    "experiments.architectures": "runs/table6-{dataset}-seed{seed}",
}
READ_FLAGS = ("run", "population", "members", "fga_workdir", "ablation")  # folders (evolve's --population: a size)


def folders(module: str, arguments: list[str]) -> tuple[list[str], list[str]]:
    """(read, written): the folders one command reads and writes (none for ``--help``)."""
    if "--help" in arguments or "-h" in arguments:
        return [], []
    args = importlib.import_module(module).build_parser().parse_args(arguments)
    read, written = [], []
    for flag in READ_FLAGS:
        value = getattr(args, flag, None)
        read += [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
    if module == "tools.export":
        read, written = read + args.paths[:-1], [args.paths[-1]]
    if getattr(args, "out", None):
        written.append(args.out)
    if module in DEFAULT_WORKDIR:
        if args.workdir and getattr(args, "resume", False):
            read.append(args.workdir)
        model = getattr(args, "model", None) or "r18_faml"
        written.append(
            args.workdir or DEFAULT_WORKDIR[module].format(dataset=args.dataset, model=model, seed=args.seed)
        )
    return read, written


def makefile_recipes(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines with ``$(PY)`` as ``python``)."""
    recipes, target = {}, None
    for line in text.splitlines():
        rule = re.match(r"^([\w./-]+):(?!=)\s*(.*)$", line)
        if rule:
            target = rule.group(1)
            recipes[target] = (rule.group(2).split(), [])
        elif line.startswith("\t") and target:
            recipes[target][1].append(line.strip().replace("$(PY)", "python"))
        elif not line.strip().startswith("#"):
            target = None
    return recipes


def steps(line: str, recipes: dict) -> list[tuple[str, list[str]]]:
    """The python commands one shell line runs: its own, or a make target's (prerequisites first)."""
    words = shlex.split(line, comments=True)
    if words[:1] == ["make"]:
        found = []
        for target in words[1:]:
            prerequisites, recipe = recipes.get(target, ([], []))
            for prerequisite in prerequisites:
                found += steps(f"make {prerequisite}", recipes) if prerequisite in recipes else []
            for command in recipe:
                if command.startswith("$(MAKE) "):
                    found += steps("make " + command.split(maxsplit=1)[1], recipes)
                else:
                    found += list(line_commands(command))
        return found
    return list(line_commands(line))


def unread(guides: list[Path], makefile: str) -> list[str]:
    """Every ``runs/`` folder read before a command wrote it, as ``where: folder``."""
    recipes, written, missing = makefile_recipes(makefile), [], []
    for guide in guides:
        for where, line in shell_lines(guide):
            for module, arguments in steps(line, recipes):
                read, wrote = folders(module, arguments)
                for folder in read:
                    folder = folder.rstrip("/")
                    known = any(folder == w or folder.startswith(w + "/") for w in written)
                    if folder.startswith("runs/") and not known:
                        missing.append(f"{where}: {module} reads {folder}, which no command before it writes")
                written += [w.rstrip("/") for w in wrote]
    return missing


def test_the_guides_followed_in_order_read_only_what_they_wrote():
    assert not unread([ROOT / g for g in GUIDES], (ROOT / "Makefile").read_text())


def test_a_folder_no_guide_before_writes_is_caught(tmp_path):
    """The check itself: the issue's case (fga.md's plain evolve, t2v.md reading evolve-demo)
    fails; the make target that writes the folder, a default workdir and --out satisfy it."""
    makefile = "evolve-demo: $(STAMP)\n\t$(PY) -m experiments.evolve --workdir runs/evolve-demo --overwrite\n"
    fga, t2v = tmp_path / "fga.md", tmp_path / "t2v.md"
    fga.write_text("```bash\npython -m experiments.evolve      # a comment\n```\n")
    t2v.write_text("```bash\npython -m experiments.ensemble --population runs/evolve-demo\n```\n")
    assert unread([fga, t2v], makefile) == [
        "t2v.md:2: experiments.ensemble reads runs/evolve-demo, which no command before it writes"
    ]
    assert unread([t2v, fga], makefile) != []  # the order matters
    fga.write_text("```bash\nmake evolve-demo\npython -m experiments.train --model r18 --seed 2\n```\n")
    t2v.write_text(
        "```bash\npython -m experiments.ensemble --population runs/evolve-demo --out runs/e\n"
        "python -m tools.export runs/synthetic-r18-seed2 runs/e runs/x\n"
        "python -m experiments.train --workdir runs/y --resume\n```\n"
    )
    assert unread([fga, t2v], makefile) == [
        "t2v.md:4: experiments.train reads runs/y, which no command before it writes"
    ]


def test_folders_reads_the_programs_flags():
    assert folders("experiments.evolve", ["--members", "runs/a", "runs/b"]) == (
        ["runs/a", "runs/b"],
        ["runs/evolve-synthetic-r18_faml-seed0"],
    )
    assert folders("experiments.predict", ["--run", "runs/a", "photo.jpg"]) == (["runs/a"], ["predictions"])
    assert isinstance(importlib.import_module("experiments.train").build_parser(), argparse.ArgumentParser)
