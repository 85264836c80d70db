"""Parameters of a scene suite, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

# Clutter level -> (fewest, most) objects in a scene. Tasks that need more objects (a target plus
# distractors) raise the count to their minimum.
DEFAULT_CLUTTER: dict[str, tuple[int, int]] = {"low": (1, 3), "medium": (4, 6), "high": (7, 9)}


@dataclass(frozen=True)
class SceneConfig:
    """Image geometry and scene statistics shared by every sample of a suite.

    image_size: side of the square image in pixels; patch_size: side of one visual token's patch
    (must divide image_size, so the grid is image_size // patch_size squared); object_size: the
    (smallest, largest) object side as a fraction of image_size; gap: minimum free pixels between
    two objects' boxes; box_bins: number of bins of a quantised box coordinate (see boxes.py);
    max_count: largest answer of a counting question.
    """

    image_size: int = 96
    patch_size: int = 8
    object_size: tuple[float, float] = (0.14, 0.26)
    gap: int = 2
    box_bins: int = 32
    max_count: int = 4
    clutter: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_CLUTTER))

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {self.image_size!r}")
        divisors = [d for d in range(1, self.image_size + 1) if self.image_size % d == 0]
        if self.patch_size not in divisors:
            raise ValueError(
                f"patch_size must divide image_size={self.image_size}: allowed values are {divisors}, "
                f"got {self.patch_size!r}"
            )
        low, high = self.object_size
        if not 0 < low <= high < 0.5:
            raise ValueError(f"object_size must satisfy 0 < smallest <= largest < 0.5, got {self.object_size!r}")
        if self.min_object_px < 4:
            raise ValueError(f"object_size gives objects of {self.min_object_px} px; at least 4 px are needed")
        if self.box_bins < 2:
            raise ValueError(f"box_bins must be >= 2, got {self.box_bins!r}")
        if self.max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {self.max_count!r}")
        if not self.clutter or any(not 1 <= lo <= hi for lo, hi in self.clutter.values()):
            raise ValueError(f"clutter must map level names to (fewest, most) with 1 <= fewest <= most, got {self.clutter!r}")

    def to_dict(self) -> dict:
        """JSON-ready form; SceneConfig.from_dict inverts it."""
        return {**self.__dict__, "object_size": list(self.object_size), "clutter": {k: list(v) for k, v in self.clutter.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "SceneConfig":
        return cls(**{**data, "object_size": tuple(data["object_size"]),
                      "clutter": {k: tuple(v) for k, v in data["clutter"].items()}})

    @property
    def grid(self) -> int:
        """Number of patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def min_object_px(self) -> int:
        return round(self.object_size[0] * self.image_size)

    @property
    def max_object_px(self) -> int:
        return round(self.object_size[1] * self.image_size)
