"""HTML and Markdown building blocks of the report: numbers the tests can find, tables, images, the page.

Every key number goes through `Numbers`: the HTML shows it in a `<span data-key=...>`, the summary
JSON holds its raw value and displayed text, so a browser test can check one against the other.
"""

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Scalar = int | float | str | bool | None


def format_value(value: Scalar) -> str:
    """How a number is shown everywhere (HTML, Markdown, console): ints exact, floats to 4 significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return value


@dataclass
class Numbers:
    """The report's key numbers by dotted key: raw values (for the summary JSON) and their displayed text."""

    values: dict[str, Scalar] = field(default_factory=dict)

    def put(self, key: str, value: Scalar) -> str:
        """Record `value` under `key`; return its displayed text."""
        if key in self.values and self.values[key] != value:
            raise ValueError(f"report number {key!r} recorded twice with different values")
        self.values[key] = value
        return format_value(value)

    def span(self, key: str, value: Scalar) -> str:
        """Record `value` and return it as HTML that a test can find by `data-key`."""
        return f'<span class="num" data-key="{esc(key)}">{esc(self.put(key, value))}</span>'

    def text(self, key: str) -> str:
        """Displayed text of a recorded key."""
        return format_value(self.values[key])

    def texts(self) -> dict[str, str]:
        """Displayed text per key."""
        return {key: format_value(value) for key, value in self.values.items()}


def esc(text: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


def md_cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table from plain cell text."""
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def key_value_rows(numbers: Numbers, prefix: str, items: Mapping[str, tuple[str, Scalar]]) -> list[list[str]]:
    """Rows `label | value` for a table, each value recorded as `prefix.key`."""
    return [[esc(label), numbers.span(f"{prefix}.{key}", value)] for key, (label, value) in items.items()]


def svg_image(svg: str, alt: str, css_class: str = "plot") -> str:
    """An `<img>` holding an SVG document inline (a data URI: the page's policy allows images from data: only)."""
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img class="{css_class}" alt="{esc(alt)}" src="{uri}">'


def paragraph(text: str) -> str:
    """An escaped paragraph."""
    return f"<p>{esc(text)}</p>"


_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d0d7de; --accent: #0969da; --bad: #cf222e; --good: #1a7f37; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0;
  background: #f6f8fa; }
header, main > section { max-width: 1180px; margin: 16px auto; padding: 16px 24px; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; }
h1 { font-size: 1.6em; margin: 0 0 8px; } h2 { margin-top: 0; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } caption { text-align: left; font-weight: 600; padding: 4px 0; }
.num { font-variant-numeric: tabular-nums; font-weight: 600; }
.muted { color: var(--muted); } .bad { color: var(--bad); } .good { color: var(--good); }
.plots { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
img.plot { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
img.small { width: 260px; height: auto; border: 1px solid var(--line); border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 10px; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.9em; }
"""

# No script, no remote source: the page must render the same offline, and the policy makes sure of it.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def html_page(title: str, header_html: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole self-contained document: (id, heading, body HTML) per section."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(
        f'<section id="{esc(sid)}"><h2>{esc(heading)}</h2>{content}</section>' for sid, heading, content in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header>{header_html}<nav>{nav}</nav></header><main>{body}</main></body></html>"
    )
