"""Dataset metadata: class names, palettes, the void label."""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares: its name, class names and one RGB colour per class; for the
    binary and multilabel tasks (atrous.data.tasks) the names are those of the labels, one per
    model output (binary: the foreground alone)."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    extra: dict = field(default_factory=dict)
    task: str = "multiclass"  # multiclass (one class per pixel), binary or multilabel

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """PASCAL VOC's bit-interleaved colour map, for datasets that declare no colours."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)
