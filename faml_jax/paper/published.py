"""The paper's published Table 6 (RAF-DB): what Table 6's rows and Fig. 7 are put beside
(docs/method.md 7). Below ``architectures`` and ``figure7``, which both read it."""

from __future__ import annotations

# docs/method.md 7 / paper Table 6 (RAF-DB, accuracy %): origin, T2V, T1V, NOI.
PAPER_TABLE6 = {
    "RI18": (85.40, 88.69, 87.94, 88.53),
    "ResNet34": (85.53, 89.24, 88.85, 89.21),
    "VGG16": (83.83, 87.52, 86.67, 87.39),
    "DenseNet121": (86.57, 89.60, 89.11, 89.41),
    "R18": (88.62, 90.42, 89.73, 90.38),
    "R18+FAML": (90.32, 91.46, 90.97, 91.17),
    "R18+FAML-FGA": (90.51, 91.59, 91.19, 91.26),
}
DECISIONS = ("t2v", "t1v", "noi")


def paper_table6(dataset: str, row: str) -> dict | None:
    """The paper's Table 6 numbers of ``row`` as fractions (RAF-DB only; None elsewhere)."""
    numbers = PAPER_TABLE6.get(row) if dataset == "rafdb" else None
    if numbers is None:
        return None
    return dict(zip(("origin", *DECISIONS), (n / 100 for n in numbers)))
