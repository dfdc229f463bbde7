"""What a report is: sections of HTML and Markdown, plus the key numbers both show."""

from dataclasses import dataclass, field
from typing import Any

from stagetune.report.markup import Numbers, Scalar, html_page

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class Section:
    """One numbered section: an anchor id, a heading, its HTML body and its Markdown summary."""

    id: str
    title: str
    html: str
    markdown: str


@dataclass(frozen=True)
class Report:
    """A pipeline run explained: what was tried, what was learned, what to do next."""

    run_id: str
    name: str
    status: str
    headline: str
    header_html: str
    sections: list[Section]
    numbers: Numbers = field(default_factory=Numbers)

    def html(self) -> str:
        """The self-contained HTML document (inline CSS, images as data URIs, no script)."""
        parts = [(s.id, s.title, s.html) for s in self.sections]
        return html_page(f"stagetune report: {self.name} ({self.run_id})", self.header_html, parts)

    def markdown(self) -> str:
        """The Markdown summary: headline and every section's key figures (no images)."""
        lines = [f"# Tuning report: {self.name}", "", f"MLflow run `{self.run_id}`, status **{self.status}**.", ""]
        lines += [self.headline, ""]
        for section in self.sections:
            lines += [f"## {section.title}", "", section.markdown.strip(), ""]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """The key numbers as JSON-ready data: raw values and the text the HTML shows for them."""
        values: dict[str, Scalar] = dict(self.numbers.values)
        return {
            "version": SUMMARY_VERSION,
            "run_id": self.run_id,
            "name": self.name,
            "status": self.status,
            "headline": self.headline,
            "sections": [{"id": s.id, "title": s.title} for s in self.sections],
            "numbers": values,
            "texts": self.numbers.texts(),
        }
