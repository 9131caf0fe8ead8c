"""Facial regions of the FA stem (docs/method.md 2.1): a rectangle as fractions of the aligned
face box, its pixels at an input size, and the default upper- and lower-face regions."""

from __future__ import annotations

import dataclasses

from faml_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Region:
    """A facial region as fractions of the (aligned) face box, for the FA stem (docs/method.md 2.1).

    ``top``/``left`` are the region's upper-left corner and ``height``/``width`` its size, all
    in [0, 1] relative to the input image. The pixel rectangle is rounded to even coordinates so
    that it maps exactly onto the stride-2 feature map of the first convolution.
    """

    name: str
    top: float
    left: float
    height: float
    width: float

    def __post_init__(self):
        for field in ("top", "left", "height", "width"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"Region {self.name!r}: {field}={value} is not in [0, 1]")
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"Region {self.name!r} is empty (height={self.height}, width={self.width})")
        if self.top + self.height > 1.0 + 1e-9 or self.left + self.width > 1.0 + 1e-9:
            raise ConfigError(f"Region {self.name!r} extends past the face box")

    def pixels(self, size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in pixels of a ``size`` x ``size`` image, all even."""

        def even(fraction: float) -> int:
            return min(size, 2 * round(fraction * size / 2))

        top, left = even(self.top), even(self.left)
        bottom, right = even(self.top + self.height), even(self.left + self.width)
        if bottom <= top or right <= left:
            raise ConfigError(f"Region {self.name!r} is empty at input size {size}")
        return top, left, bottom, right


# [choice] docs/method.md 2.1: default regions from the proportions of an aligned face (RAF-DB's aligned
# crops: brows at about 30% of the height, eyes at about 40%, nose tip at 60%, mouth at 75-80%).
UPPER_FACE = Region("upper_face", top=0.15, left=0.05, height=0.40, width=0.90)
LOWER_FACE = Region("lower_face", top=0.50, left=0.20, height=0.45, width=0.60)
DEFAULT_REGIONS = (UPPER_FACE, LOWER_FACE)
