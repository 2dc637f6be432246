"""What every HTML report with matplotlib figures needs: a figure saved beside its page, and safe labels."""

import html
from pathlib import Path

from matplotlib.figure import Figure


def save_figure(fig: Figure, path: Path, alt: str) -> str:
    """Save `fig` as PNG at `path`; the <img> tag that shows it, relative to the page."""
    fig.savefig(path, format="png")
    return f'<img src="{html.escape(path.name)}" alt="{html.escape(alt)}">'


def plain_label(text: str, width: int) -> str:
    """`text` shortened to `width` characters, with `$` escaped so matplotlib does not read it as math."""
    short = text if len(text) <= width else text[: width - 1] + "…"
    return short.replace("$", r"\$")
