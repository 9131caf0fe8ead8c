"""``make wheelhouse``: the offline GPU kit's wheels, downloaded here (with internet) for a GPU
machine without it.

    python -m tools.wheelhouse                      # into wheelhouse/ (git-ignored)
    python -m tools.wheelhouse --out /tmp/kit --python 3.12

A typical GPU image (clusters, cloud images; the target is listed in
``tools/gpu_image_packages.txt``) has CUDA, jax with its CUDA plugin, flax, optax,
orbax-checkpoint, chex, numpy, torch and onnxruntime, but not grain, tensorflow-datasets,
array_record or tensorboardX. This resolves faml_jax's needs that such an image lacks, at the
versions ``constraints.txt`` pins, for CPython ``--python`` on manylinux x86_64, downloads them
with their dependencies, and keeps only the wheels whose project the image does not have.
``promise`` (tensorflow-datasets needs it) is published as a source archive only: it is built
into a wheel here first. Writes ``MANIFEST.txt`` (each wheel and its size) beside the wheels.
On the GPU machine, ``make gpu-install`` installs them with ``pip install --no-index --no-deps``
into a folder on ``PYTHONPATH`` (site-packages there may be read-only).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What faml_jax imports that the image lacks (the rest of its dependencies come with these).
WANTED = ("grain", "tensorflow-datasets", "array-record", "tensorboardX", "importlib-resources", "simplejpeg")
SOURCE_ONLY = ("promise",)  # no wheel on PyPI: built here
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """``constraints.txt``'s ``name==version`` lines, by normalised name."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[normalise(name)] = version.strip()
    return found


def image_packages(path: Path = ROOT / "tools" / "gpu_image_packages.txt") -> set[str]:
    return {
        normalise(line.strip()) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    }


def wheel_project(filename: str) -> str:
    return normalise(filename.split("-", 1)[0])


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: {' '.join(command[3:6])} ... failed:\n{tail}")


def build(out: Path, python: str) -> list[Path]:
    pinned = pins()
    requirements = [f"{name}=={pinned[normalise(name)]}" if normalise(name) in pinned else name for name in WANTED]
    with tempfile.TemporaryDirectory(prefix="faml_jax-wheelhouse-") as tmp:
        built, downloaded = Path(tmp) / "built", Path(tmp) / "downloaded"
        for name in SOURCE_ONLY:
            spec = f"{name}=={pinned[name]}" if name in pinned else name
            print(f"building {spec} (source only on PyPI) ...", file=sys.stderr)
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), spec)
        print(f"downloading {', '.join(requirements)} and their dependencies for CPython {python} ...", file=sys.stderr)
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        pip(
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            *platforms,
            "--find-links",
            str(built),
            "--dest",
            str(downloaded),
            *requirements,
        )
        have = image_packages()
        keep = sorted(w for w in downloaded.glob("*.whl") if wheel_project(w.name) not in have)
        left = sorted(w.name for w in downloaded.glob("*.whl") if wheel_project(w.name) in have)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.whl"):
            old.unlink()
        for wheel in keep:
            shutil.copy2(wheel, out / wheel.name)
    wheels = sorted(out.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    (out / "MANIFEST.txt").write_text(
        f"# {len(wheels)} wheels, {total / 2**20:.1f} MiB, for CPython {python} manylinux x86_64 "
        f"(python -m tools.wheelhouse)\n# left out (on the GPU image): {', '.join(left)}\n"
        + "".join(f"{w.name}\t{w.stat().st_size}\n" for w in wheels)
    )
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {out} (left out, on the image: {len(left)})")
    return wheels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "wheelhouse"), help="folder for the wheels (default wheelhouse/)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version (default 3.12)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    build(Path(args.out), args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
