"""Charts drawn on the server as inline SVG: no script, no external resource, no ``style=`` (the CSP).

Every chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` (named by
``aria-labelledby``); the page puts a table with the same numbers below it (screen readers, print).
Colours are presentation attributes; a bar below its target is also marked in text ("低于目标")
in the table, not by colour alone.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from markupsafe import Markup, escape

INK, MUTED, LINE = "#1f2328", "#59636e", "#d0d7de"
GOOD, BAD, EMPTY, TARGET = "#1a7f37", "#b42318", "#eaeef2", "#9a6700"
FONT = "Microsoft YaHei, PingFang SC, Noto Sans CJK SC, sans-serif"


@dataclass(frozen=True)
class Bar:
    """One rate: its label, numerator / denominator (rate None when the denominator is 0), target."""

    label: str
    numerator: int
    denominator: int
    rate: float | None
    target: float | None = None
    short: str = ""  # a shorter label in the chart (the table has the full one)

    @property
    def shown(self) -> str:
        return percent(self.rate)

    @property
    def target_shown(self) -> str:
        return percent(self.target)

    @property
    def below(self) -> bool:
        return self.rate is not None and self.target is not None and self.rate < self.target


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def value_text(bar: Bar) -> str:
    if bar.rate is None:
        return "无数据（0/0）"
    return f"{percent(bar.rate)}（{bar.numerator}/{bar.denominator}）"


def _id() -> str:
    return "chart-" + secrets.token_hex(4)


def _open(width: int, height: int, title: str, desc: str) -> tuple[list[str], str]:
    cid = _id()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="{cid}-t {cid}-d" font-family="{FONT}">',
        f'<title id="{cid}-t">{escape(title)}</title>',
        f'<desc id="{cid}-d">{escape(desc)}</desc>',
    ]
    return parts, cid


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = 12, fill: str = INK) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{fill}">{escape(text)}</text>'
    )


def bar_chart(title: str, bars: list[Bar]) -> Markup:
    """Horizontal bars from 0 to 100%, each with its target as a dashed tick across the bar."""
    label_w, plot_w, value_w, row_h, top = 270, 330, 150, 26, 24  # 20 CJK characters at 12px fit
    width = label_w + plot_w + value_w
    height = top + row_h * max(len(bars), 1) + 24
    desc = (
        "；".join(
            f"{b.label} {value_text(b)}" + (f"，目标 {percent(b.target)}" if b.target is not None else "")
            for b in bars
        )
        or "没有数据"
    )
    parts, _ = _open(width, height, title, desc)
    x0 = label_w
    for tick in (0, 0.5, 1):
        x = x0 + plot_w * tick
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 20}" stroke="{LINE}"/>')
        parts.append(_text(x, height - 6, f"{tick:.0%}", anchor="middle", size=11, fill=MUTED))
    for i, bar in enumerate(bars):
        y = top + i * row_h
        parts.append(_text(label_w - 8, y + 16, bar.label, anchor="end"))
        parts.append(f'<rect x="{x0}" y="{y + 4}" width="{plot_w}" height="{row_h - 8}" fill="{EMPTY}"/>')
        if bar.rate is not None:
            fill = BAD if bar.below else GOOD
            parts.append(
                f'<rect x="{x0}" y="{y + 4}" width="{plot_w * bar.rate:.1f}" '
                f'height="{row_h - 8}" fill="{fill}"/>'
            )
        if bar.target is not None:
            x = x0 + plot_w * bar.target
            parts.append(
                f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + row_h - 1}" stroke="{TARGET}" '
                'stroke-width="2" stroke-dasharray="3 2"/>'
            )
        parts.append(_text(x0 + plot_w + 8, y + 16, value_text(bar), fill=BAD if bar.below else INK))
    if bars and bars[0].target is not None:
        parts.append(_text(x0, 14, "虚线：目标值", size=11, fill=TARGET))
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_chart(title: str, bars: list[Bar], target: float | None) -> Markup:
    """Vertical bars, one a month (oldest first), with the target as a dashed line across."""
    left, right, top, plot_h, bottom = 44, 16, 20, 170, 40
    col_w = 46
    width = left + right + col_w * max(len(bars), 1)
    height = top + plot_h + bottom
    desc = "；".join(f"{b.label} {value_text(b)}" for b in bars)
    if target is not None:
        desc += f"；目标 {percent(target)}"
    parts, _ = _open(width, height, title, desc)
    base = top + plot_h
    for tick in (0, 0.25, 0.5, 0.75, 1):
        y = base - plot_h * tick
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{LINE}"/>')
        parts.append(_text(left - 6, y + 4, f"{tick:.0%}", anchor="end", size=11, fill=MUTED))
    for i, bar in enumerate(bars):
        x = left + i * col_w
        if bar.rate is not None:
            h = plot_h * bar.rate
            fill = BAD if bar.below else GOOD
            parts.append(
                f'<rect x="{x + 8}" y="{base - h:.1f}" width="{col_w - 16}" height="{h:.1f}" fill="{fill}"/>'
            )
            parts.append(
                _text(x + col_w / 2, base - h - 4, f"{bar.rate * 100:.0f}", anchor="middle", size=10)
            )
        else:
            parts.append(_text(x + col_w / 2, base - 4, "无", anchor="middle", size=10, fill=MUTED))
        parts.append(_text(x + col_w / 2, base + 16, bar.short or bar.label, anchor="middle", size=11))
    if target is not None:
        y = base - plot_h * target
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{TARGET}" '
            'stroke-width="2" stroke-dasharray="6 3"/>'
        )
        parts.append(
            _text(width - right, y - 4, f"目标 {percent(target)}", anchor="end", size=11, fill=TARGET)
        )
    parts.append(_text(left, height - 6, "柱高：比率（%），无：当月无应办事项", size=11, fill=MUTED))
    parts.append("</svg>")
    return Markup("".join(parts))
