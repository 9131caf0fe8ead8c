"""The README.md of an export folder (``export.export_runs``): what goes in, what comes out, and
the face cutting a deployment must do as training did (``faml_jax.faces``), with a snippet that
does it and what to do without faml_jax."""

from __future__ import annotations

import textwrap

from faml_jax.faces import ALIGNED_SIZE, BOX_MARGIN, PADDING, mode_for

_CUTS = {
    "align": (
        "aligned: dlib's five landmarks (`shape_predictor_5_face_landmarks.dat`) on the face that "
        "dlib's frontal face detector finds are mapped by a similarity transform onto dlib's 5-point "
        f"mean face with padding {PADDING}, and the face is sampled at {ALIGNED_SIZE} x {ALIGNED_SIZE} "
        "(bilinear), as RAF-DB's aligned faces are"
    ),
    "box": (
        f"cut by the face detector's box grown by {BOX_MARGIN:.0%} of its size on every side, made square "
        "(centred on the box) and clamped to the photo, at the photo's own resolution"
    ),
}

_WITHOUT = {
    "align": (
        "Without faml_jax, dlib alone cuts the same face within about 2 grey levels (faml_jax's tests "
        "check it): `dlib.get_face_chip(photo, shape, size={size}, padding={padding})`, `shape` from "
        "`dlib.shape_predictor('shape_predictor_5_face_landmarks.dat')` (shipped by the "
        "face-recognition-models package) on the box of `dlib.get_frontal_face_detector()`."
    ),
    "box": (
        "Without faml_jax, with any face detector giving a box (x0, y0, x1, y1): side = max(x1 - x0, "
        "y1 - y0) x {grow}, a square of that side centred on the box, clamped to the photo. faml_jax "
        "uses dlib's frontal face detector (HOG), whose box is tight (brows to lips): another "
        "detector's box may need another margin."
    ),
}
WIDTH = 100


def _fill(text: str) -> str:
    """A paragraph (or a "- " item) wrapped at ``WIDTH`` columns."""
    indent = "  " if text.startswith("- ") else ""
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _run_snippet(files: dict) -> str:
    """The lines of the snippet that run the exported model on ``images``."""
    onnx = [name for name in files if name.endswith(".onnx")]
    if not onnx:
        return (
            "from faml_jax.export import load_stablehlo\n\n"
            'outputs = load_stablehlo(".")(images)  # this folder: model.stablehlo and its weights'
        )
    session = f'import onnxruntime  # pip install onnxruntime\n\nsession = onnxruntime.InferenceSession("{onnx[0]}")\n'
    if onnx[0] == "ensemble.onnx":
        return session + 'logits, scores, decision, confidence = session.run(None, {"images": images})'
    return session + '(probabilities,) = session.run(None, {"images": images})'


def readme(description: dict) -> str:
    """README.md for the export described by ``description`` (export.json's content)."""
    size, dataset = description["input_size"], description["dataset"]
    mode = mode_for(dataset)
    files = description["files"]
    networks = len(description["networks"])
    classes = ", ".join(f"{i} {name}" for i, name in enumerate(description["classes"]))
    intro = (
        f"The input `images` is uint8 RGB, shape (batch, {size}, {size}, 3): faces cut out of photos as "
        f"the training data shows faces, then resized to {size} x {size}. The normalisation is inside "
        f"the model: do not normalise. Classes: {classes}."
    )
    cut = (
        "The model's scores mean what its test accuracy says only on faces cut the way its training "
        "faces were. A face cropped by hand scored 0.788 where faml_jax's own crop of the same face "
        f"scored 0.744: the crop, not the face, made the difference. This model was trained on "
        f"{dataset}, whose faces are {_CUTS[mode]}. Each crop is then resized to {size} x {size} with "
        "PIL's antialiased bilinear resize (`Image.resize((size, size), Image.BILINEAR)`), as training "
        "resized."
    )
    snippet = f"""```python
import numpy as np
from PIL import Image

from faml_jax import faces
from faml_jax.data.pipeline import resize

photo = np.asarray(Image.open("photo.jpg").convert("RGB"))
found = faces.Finder("{mode}").find(photo)  # "{mode}": how {dataset} cuts faces (faces.mode_for)
images = np.stack([resize(face.crop, {size}) for face in found])  # (faces, {size}, {size}, 3) uint8

{_run_snippet(files)}
```"""
    without = _WITHOUT[mode].format(size=ALIGNED_SIZE, padding=PADDING, grow=1 + 2 * BOX_MARGIN)
    without += f" Then resize each crop to {size} x {size} as above."
    blocks = [
        f"# {description['model']} ({networks} network{'s' if networks > 1 else ''}, {dataset}), exported by faml_jax",
        _fill(intro),
        "## Cut faces as training did",
        _fill(cut),
        "With faml_jax (`pip install 'faml_jax[faces]'` installs dlib and its landmark model):",
        snippet,
        _fill(without),
        _fill(
            "Or skip the export: `faml_jax.predict.Predictor.from_runs(runs).predict(crops)` resizes "
            "the crops itself, and `python -m experiments.predict` finds and cuts the faces in photos."
        ),
        "## What comes out",
        "\n".join(_fill(f"- `{name}`: {what}") for name, what in files.items() if name != "README.md"),
        _fill(
            "`export.json` lists the networks (their runs and epochs"
            + (
                ", in the order of the members' outputs), the classes, the input, and T2V's weights and tie rule."
                if networks > 1
                else "), the classes and the input."
            )
        ),
    ]
    return "\n\n".join(blocks) + "\n"
