"""The report's content model: sections made of headings, paragraphs, tables and figures.

Section builders return these values; the template renders them in order. Nothing here knows about
matplotlib or HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SECTION_KEYS = ("summary", "search", "operating", "profile", "validation", "inputs")


@dataclass(frozen=True)
class Heading:
    text: str
    kind: Literal["heading"] = "heading"


@dataclass(frozen=True)
class Paragraph:
    text: str
    kind: Literal["paragraph"] = "paragraph"


@dataclass(frozen=True)
class Table:
    """A table of preformatted cells; ``highlight`` marks row indices to emphasise."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    highlight: tuple[int, ...] = ()
    kind: Literal["table"] = "table"

    def __post_init__(self) -> None:
        for row in self.rows:
            assert len(row) == len(self.header), f"row {row} does not match header {self.header}"


@dataclass(frozen=True)
class Figure:
    """An inline SVG figure; ``key`` is its stable id in the page (``data-figure``)."""

    key: str
    caption: str
    svg: str
    kind: Literal["figure"] = "figure"


Item = Heading | Paragraph | Table | Figure


@dataclass(frozen=True)
class Section:
    """One report section. ``absent`` says why it has no content, when it has none."""

    key: str
    title: str
    items: tuple[Item, ...] = ()
    absent: str | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.key in SECTION_KEYS, f"unknown section key {self.key!r}"
        assert bool(self.items) != bool(self.absent), "a section has content or a reason, not both"

    @property
    def figure_keys(self) -> tuple[str, ...]:
        return tuple(item.key for item in self.items if isinstance(item, Figure))
