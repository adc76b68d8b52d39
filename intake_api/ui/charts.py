"""Small server-rendered SVG bar charts (hourly activity): no chart library, no script."""

from __future__ import annotations

from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD_BOTTOM, PAD_TOP = 480, 120, 18, 14


def bar_chart(points: list[tuple[datetime, int]], label: str, color: str = "#2563eb") -> str:
    """One bar per point, its value as a tooltip, hour labels every six bars; a readable empty state."""
    top = max((v for _, v in points), default=0)
    n = max(len(points), 1)
    slot = WIDTH / n
    bars = []
    for i, (hour, value) in enumerate(points):
        h = 0 if top == 0 else (HEIGHT - PAD_BOTTOM - PAD_TOP) * value / top
        x, y = i * slot + 1, HEIGHT - PAD_BOTTOM - h
        title = f"{hour:%H:00} UTC: {value:,} {label}"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" height="{max(h, 0.5):.1f}" '
            f'fill="{color}"><title>{escape(title)}</title></rect>'
        )
        if i % 6 == 0:
            bars.append(
                f'<text x="{x:.1f}" y="{HEIGHT - 4}" font-size="10" fill="currentColor">{hour:%H:00}</text>'
            )
    peak = f"peak {top:,}/h" if top else f"no {label} in the last 24 h"
    bars.append(
        f'<text x="{WIDTH - 4}" y="10" font-size="10" text-anchor="end" fill="currentColor">{peak}</text>'
    )
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)} per hour">'
        + "".join(bars)
        + "</svg>"
    )
