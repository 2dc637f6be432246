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


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
thead th { background: #f2f2f2; } tbody th { text-align: left; }
dl.protocol { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.protocol dt { font-weight: bold; } dl.protocol dd { margin: 0; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


def html_page(title: str, sections: list[str], extra_css: str = "") -> str:
    """A self-contained report page: the title as heading, then the sections (HTML) in order."""
    body = "\n".join(section for section in sections if section)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_CSS}{extra_css}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
