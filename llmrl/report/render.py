"""The report as a list of blocks, rendered to Markdown and to self-contained HTML.

Both renderings walk the same blocks, so the two files cannot drift apart;
the HTML embeds its figures as base64 so that one file can be mailed.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]  # first column text, the others numbers (right-aligned)


@dataclass(frozen=True)
class Figure:
    alt: str
    name: str  # PNG file name beside report.md
    png: bytes


Block = Heading | Para | Bullets | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        match block:
            case Heading(level, text):
                out.append("#" * level + " " + _md(text))
            case Para(text):
                out.append(_md(text))
            case Bullets(items):
                out.append("\n".join("- " + _md(item) for item in items))
            case Table(header, rows):
                out.append("\n".join(["| " + " | ".join(_md(h) for h in header) + " |",
                                      "|---" + "|---:" * (len(header) - 1) + "|"]
                                     + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]))
            case Figure(alt, name, _):
                out.append(f"![{_md(alt)}]({name})")
    return "\n\n".join(out) + "\n"


def _md(text: str) -> str:
    """Escape the characters that would turn plain text into markdown (run ids are full of ``__``)."""
    return re.sub(r"([\\`*_<>|])", r"\\\1", text)


def to_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    body = []
    for block in blocks:
        match block:
            case Heading(level, text):
                body.append(f"<h{level}>{esc(text)}</h{level}>")
            case Para(text):
                body.append(f"<p>{esc(text)}</p>")
            case Bullets(items):
                body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>")
            case Table(header, rows):
                body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
                            "<tbody>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                                                for row in rows) + "</tbody></table>")
            case Figure(alt, _, png):
                body.append(f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,'
                            f'{base64.b64encode(png).decode("ascii")}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}"
             "td+td,th+th{text-align:right}th{background:#f3f3f3}img{max-width:100%}li{margin:.4em 0}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def num(x: float, signed: bool = False) -> str:
    """Returns of hundreds keep one decimal; small returns and normalised scores two."""
    return format(x, ("+" if signed else "") + (",.1f" if abs(x) >= 10 else ".2f"))


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def slug(env: str) -> str:
    """A file-name-safe form of an environment id (``ALE/Pong-v5`` -> ``ALE_Pong-v5``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", env)
