"""How report figures look: sized for a paper's column, colours that stay apart for colour-blind readers
and in grey, integer round ticks, and every figure saved in the formats asked for (PNG, SVG, PDF).

The palette is Okabe and Ito's eight colours ("Color Universal Design", 2008), safe for the common
colour-vision deficiencies; each series also gets its own marker and line style, so that lines stay
apart when printed in grey. A sweep point keeps its style in every figure of a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import StorageError, ValidationError

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
FORMATS = ("png", "svg", "pdf")

# Inches: a single column of a two-column paper (IEEE, ACM) is 3.5 in wide; the full width about 7.1 in.
COLUMN = (3.5, 2.6)
WIDE = (7.1, 2.8)
RC: dict[Any, Any] = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
      "ytick.labelsize": 7, "lines.linewidth": 1.3, "lines.markersize": 3.5, "axes.grid": True, "grid.alpha": 0.3,
      "savefig.bbox": "tight", "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


def series(index: int) -> dict[str, Any]:
    """Colour, marker and line style of series `index` (the same index, the same look, in every figure)."""
    return {"color": OKABE_ITO[index % len(OKABE_ITO)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[(index // len(OKABE_ITO)) % len(LINESTYLES)]}


def parse_formats(text: str) -> tuple[str, ...]:
    """`png,svg,pdf` -> ('png', 'svg', 'pdf'); `html` is accepted (the page is always written) and dropped."""
    asked = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in asked if f not in (*FORMATS, "html")]
    if unknown:
        raise ValidationError(f"unknown figure format '{unknown[0]}'", field="format", hint=f"a comma list of {', '.join(FORMATS)}")
    return tuple(f for f in asked if f != "html") or ("png",)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend with the report style. Imported when a figure is drawn: it
    takes ~0.4 s and ~30 MB, which every other command (and every service) would pay at start otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(RC)
    return plt


def integer_rounds(ax: Any) -> None:
    """Rounds are whole numbers: no tick at 1.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Any, stem: Path, formats: tuple[str, ...] = ("png",), dpi: int = 200) -> list[Path]:
    """Save `fig` as STEM.FORMAT for each format and free it; the paths, the first format's first.
    A full or read-only disk is a StorageError naming the file."""
    paths = []
    try:
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            try:
                fig.savefig(path, dpi=dpi if fmt == "png" else None)
            except OSError as err:
                raise StorageError.from_os_error(err if err.filename else OSError(err.errno, err.strerror, str(path))) from None
            paths.append(path)
    finally:
        pyplot().close(fig)
    return paths
