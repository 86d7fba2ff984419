"""Line charts of daily figures as inline SVG, drawn on the server.

Written here rather than taken from a charting library: the dashboard must work offline, with no
script and no asset from elsewhere, and a line chart over a few dozen days is a polyline, a few
grid lines and labels. Each point carries a ``<title>`` (the browser's tooltip) with its day and
value; colours come from the page's CSS classes (``series-0``, ``series-1``, …).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 560
HEIGHT = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 16, 12, 28  # room for the axis labels


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: Sequence[float]


def _fmt(number: float) -> str:
    return f"{number:.1f}".rstrip("0").rstrip(".")


def line_chart(
    chart_id: str, days: Sequence[str], series: Sequence[Series], value_text: Callable[[float], str]
) -> Markup:
    """An SVG line chart of ``series`` over ``days`` (one value per day each); the y axis starts at 0."""
    top = max((value for s in series for value in s.values), default=0.0) or 1.0
    plot_width = WIDTH - _LEFT - _RIGHT
    plot_height = HEIGHT - _TOP - _BOTTOM

    def x(index: int) -> float:
        return _LEFT + (plot_width / 2 if len(days) == 1 else plot_width * index / (len(days) - 1))

    def y(value: float) -> float:
        return _TOP + plot_height * (1 - value / top)

    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' xmlns="http://www.w3.org/2000/svg" aria-label="{escape(", ".join(s.label for s in series))}">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        level = y(top * fraction)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{_fmt(level)}" y2="{_fmt(level)}"/>')
        parts.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{_fmt(level + 4)}" text-anchor="end">'
            f"{escape(value_text(top * fraction))}</text>"
        )
    shown = sorted({0, len(days) // 2, len(days) - 1}) if days else []
    for index in shown:
        # The first and last labels are kept inside the frame, so neither is cut off.
        anchor = "middle" if len(days) == 1 or 0 < index < len(days) - 1 else "start" if index == 0 else "end"
        parts.append(
            f'<text class="axis" x="{_fmt(x(index))}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
            f"{escape(days[index])}</text>"
        )
    for number, line in enumerate(series):
        points = " ".join(f"{_fmt(x(i))},{_fmt(y(v))}" for i, v in enumerate(line.values))
        parts.append(f'<polyline class="series-{number}" fill="none" points="{points}"/>')
        for i, value in enumerate(line.values):
            tip = f"{days[i]} {line.label}: {value_text(value)}"
            parts.append(
                f'<circle class="series-{number}" cx="{_fmt(x(i))}" cy="{_fmt(y(value))}" r="3">'
                f"<title>{escape(tip)}</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
