"""The savings report in a real browser: headless Chromium (Debian's `chromium` package) opens the
page from a file, as a user would, and draws its charts."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from itertools import pairwise
from pathlib import Path

import pytest
from relay_ops import savings

pytestmark = pytest.mark.integration

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1200, 1600

needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on this machine (apt-get install chromium; .ci/run installs it)"
)


def item(
    rid: str, tier: str, queued: str, done: str, route: str = "batch", **extra: object
) -> dict[str, object]:
    """A completed request, received at 10:00, submitted at `queued`, answered at `done` (HH:MM)."""
    list_usd = 0.002
    paid = list_usd if route == "realtime" else list_usd / 2
    return {
        "kind": "request",
        "request_id": rid,
        "status": "succeeded",
        "tier": tier,
        "model": "claude-haiku-4-5",
        "route": route,
        "received_at": "2026-11-20T10:00:00Z",
        "submitted_at": f"2026-11-20T{queued}:00Z",
        "completed_at": f"2026-11-20T{done}:00Z",
        "usage": {"input_tokens": 100, "output_tokens": 50},
        "cost": {
            "batch_usd": list_usd / 2,
            "list_usd": list_usd,
            "saved_usd": list_usd - paid,
            "paid_usd": paid,
        },
        **extra,
    }


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Minutes against hours: the receipt-to-completion chart goes to a log axis
    items = [
        item("u1", "urgent", "10:01", "10:02", deadline="2026-11-20T10:20:00Z"),
        item("u2", "urgent", "10:02", "10:04", route="realtime", deadline="2026-11-20T10:08:00Z"),
        item("s1", "standard", "10:10", "10:12"),
        item("b1", "bulk", "10:30", "15:40"),
        {"kind": "batch", "batch_id": "msgbatch_1", "tier": "bulk", "request_count": 1,
         "submitted_at": "2026-11-20T10:30:00Z", "ended_at": "2026-11-20T15:40:00Z"},
    ]  # fmt: skip
    report = savings.gather(items, {"urgent": 120, "standard": 600, "bulk": 1800})
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(savings.page(report, notes=["Late batch msgbatch_1 (bulk, made late on purpose)"]))
    return out


def chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            BROWSER or "chromium",
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            # Let the page's scripts run (plotly.js inline, then each chart) before the DOM is read.
            "--virtual-time-budget=15000",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


def _charts(dom: str) -> dict[str, str]:
    """Each chart's part of the rendered page, by its element id."""
    starts = [
        (m.start(), m.group(1)) for m in re.finditer(r'<div class="chart[^"]*" id="(chart-[a-z-]+)"', dom)
    ]
    ends = [s for s, _ in starts[1:]] + [len(dom)]
    return {name: dom[start:end] for (start, name), end in zip(starts, ends, strict=True)}


@needs_browser
def test_every_chart_of_the_report_renders_in_chromium(page: Path) -> None:
    dom = chromium("--dump-dom", page.as_uri()).stdout.decode()
    charts = _charts(dom)
    html = page.read_text()
    # Then every figure the page carries became a drawn chart: Plotly's SVG, with its bars
    assert len(charts) == html.count('class="figure"') >= 7
    for name, part in charts.items():
        assert 'class="main-svg"' in part, f"{name} was not drawn"
        assert re.search(r'class="(point|trace bars|scatterlayer)', part), f"{name} has no data drawn"
    assert "Late batch msgbatch_1" in dom
    # A log axis is labelled with the values it marks: no bare digit stands for 20 or 500
    waits = charts["chart-waits"]
    figure = re.search(r'data-chart="chart-waits">(.*?)</script>', html, re.S)
    assert figure and json.loads(figure[1])["layout"]["yaxis"]["type"] == "log"
    labels = re.findall(r'class="ytick"[^>]*>.*?<text[^>]*>(.*?)</text>', waits)
    assert len(labels) >= 3
    values = [float(label) for label in labels]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(next / prev in (2, 2.5) for prev, next in pairwise(values))


def _png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (filtered) pixel rows of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, width, height = 8, b"", 0, 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    return width, height, zlib.decompress(idat)


@needs_browser
def test_a_screenshot_of_the_report_shows_it(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", page.as_uri())
    width, height, pixels = _png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    # A blank page is a few values repeated; cards, text and coloured bars are many
    assert len(set(pixels)) > 100
