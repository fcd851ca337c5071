"""The report's files: one section per table as Markdown and CSV, an index, and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from risbench.report.compare import DIFF, Comparison

SYNTHREF_BANNER = ("**CPU-size synthref runs** (`scale=tiny data=synthref`): these are the small CPU versions "
                   "of the models, trained for the fixed tiny step budget on the embedded synthetic dataset, "
                   "not the paper's models on its data. Their numbers are **not comparable** with the paper's; "
                   "they show that the whole path (sweep, both protocols, matching, report) works.")


@dataclass
class Section:
    """One table of the report, whatever it came from (a paper table or the leaderboard)."""

    name: str  # file stem
    title: str
    intro: list[str]  # Markdown paragraphs above the table
    headers: list[str]
    records: list[list]
    lists: list[tuple[str, list[str]]] = field(default_factory=list)  # (heading, items) below the table
    plot: Path | None = None
    synthref_tiny: bool = False


def cell_text(header: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:+.2f}" if header.endswith(DIFF) or header.startswith("gap") else f"{value:.2f}"
    return str(value)


def csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return value


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(section: Section) -> str:
    lines = [f"# {section.title}", ""]
    if section.synthref_tiny:
        lines += [f"> {SYNTHREF_BANNER}", ""]
    for paragraph in section.intro:
        lines += [paragraph, ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in section.headers) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(section.headers))) + "|")
    for record in section.records:
        lines.append("| " + " | ".join(_md_escape(cell_text(h, v)) for h, v in zip(section.headers, record)) + " |")
    lines.append("")
    if section.plot is not None:
        lines += [f"![{section.title}]({section.plot.name})", ""]
    for heading, items in section.lists:
        lines += [f"**{heading}** ({len(items)})", ""]
        lines += [f"- {item}" for item in items] or ["- none"]
        lines.append("")
    return "\n".join(lines)


def write_csv(section: Section, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(section.headers)
        writer.writerows([csv_value(v) for v in record] for record in section.records)


def comparison_section(comparison: Comparison, paper_title: str, plot: Path | None, name: str | None = None,
                       data: str | None = None) -> Section:
    """``name``/``data``: the file stem and the data of one of several groups of a table's jobs."""
    table = comparison.table
    protocols = sorted({job.protocol for job in comparison.jobs}) or ["the paper's"]
    where = f" on {table.dataset}" if table.dataset else ""
    intro = [table.caption,
             f"Paper: {paper_title}. Sweep: `python -m risbench -m experiment={table.experiments[0]}`"
             + (f"; counts: `experiment={table.profile_experiments[0]}`" if table.profile_experiments else "")
             + f". Paper numbers{where} in percent.",
             "Columns per metric: `paper` = the paper's number; `ours paper-protocol` = risbench under the "
             f"paper's evaluation protocol (`eval.paper`: {', '.join(protocols)}); `ours common-protocol` = "
             "under the common risbench protocol (`eval.common`); `diff` = ours (paper protocol) minus the paper, "
             "in points. Several jobs on one row are averaged."]
    if comparison.extra_datasets:
        intro.append(f"Datasets the paper does not report ({', '.join(comparison.extra_datasets)}) get their own "
                     "columns, with no paper number to compare.")
    unmatched = [f"`{u.job.path}`: {u.reason} (`{u.job.short_overrides(_common(comparison))}`)"
                 for u in comparison.unmatched]
    if data:
        intro.append(f"Jobs on {data} only: the table's jobs on other data or at another scale are in its other "
                     "sections.")
    title = f"{table.paper} {table.id}" + (f", {data}" if data else "")
    return Section(name or table.name, title, [p for p in intro if p], comparison.headers(),
                   comparison.records(), [("Missing rows (no job ran them)", comparison.missing),
                                          ("Jobs matching no row", unmatched)],
                   plot, comparison.synthref_tiny)


def _common(comparison: Comparison) -> set[str]:
    jobs = comparison.jobs + [u.job for u in comparison.unmatched]
    sets = [set(job.override_strings) for job in jobs]
    return set.intersection(*sets) if len(sets) > 1 else set()


# ---- HTML: one page, plots inline -------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em}
table{border-collapse:collapse;font-size:12px;margin:1em 0}th,td{border:1px solid #ccc;padding:2px 6px}
td.n{text-align:right}th{background:#f3f3f3}.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em}
img{max-width:100%}code{background:#f5f5f5}"""


def _inline_markdown(text: str) -> str:
    """The few Markdown marks the report's paragraphs use, as HTML."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


NUMBER = ' class="n"'


def html_section(section: Section) -> str:
    parts = [f'<h2 id="{html.escape(section.name)}">{html.escape(section.title)}</h2>']
    if section.synthref_tiny:
        parts.append(f'<p class="banner">{_inline_markdown(SYNTHREF_BANNER)}</p>')
    parts += [f"<p>{_inline_markdown(p)}</p>" for p in section.intro]
    parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in section.headers) + "</tr>")
    for record in section.records:
        cells = "".join(f"<td{NUMBER if isinstance(v, (int, float)) else ''}>{html.escape(cell_text(h, v))}</td>"
                        for h, v in zip(section.headers, record))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    if section.plot is not None:
        data = base64.b64encode(section.plot.read_bytes()).decode("ascii")
        parts.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
    for heading, items in section.lists:
        parts.append(f"<p><b>{html.escape(heading)}</b> ({len(items)})</p><ul>"
                     + "".join(f"<li>{_inline_markdown(i)}</li>" for i in items or ["none"]) + "</ul>")
    return "\n".join(parts)


def html_page(title: str, intro: list[str], sections: list[Section], runs: Section | None) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    if any(s.synthref_tiny for s in sections):
        body.append(f'<p class="banner">{_inline_markdown(SYNTHREF_BANNER)}</p>')
    body += [f"<p>{_inline_markdown(p)}</p>" for p in intro]
    body.append("<ul>" + "".join(f'<li><a href="#{html.escape(s.name)}">{html.escape(s.title)}</a></li>'
                                 for s in sections) + "</ul>")
    body += [html_section(s) for s in sections]
    if runs is not None:
        body.append(html_section(runs))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
