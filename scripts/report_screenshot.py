"""The README's screenshot: report.html in headless Chromium at 1,280 px, the top of the page
(title, banner, leaderboard) above the per-sample viewer opened from a leaderboard cell with two
models side by side.

Usage: python scripts/report_screenshot.py runs/demo/report/report.html docs/report_screenshot.png
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from matplotlib import image as mpimg  # noqa: E402
import numpy as np  # noqa: E402

from support.browser import Browser  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--top", default="table.detail", help="the page's top down to this element (or a height in px)")
    ap.add_argument("--viewer", type=int, default=900, help="pixels of the viewer (0: leave it out)")
    ap.add_argument("--cell", type=int, default=0, help="which leaderboard cell opens the viewer")
    args = ap.parse_args()
    with Browser() as b, tempfile.TemporaryDirectory() as tmp:
        page = b.open(args.report.resolve().as_uri(), width=1280, height=1000)
        height = int(args.top) if args.top.isdigit() else int(page.eval(
            f"document.querySelector({json.dumps(args.top)}).getBoundingClientRect().bottom") + 24)
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        top = page.screenshot(Path(tmp) / "top.png")
        parts = [mpimg.imread(top)[:, :, :3]]
        if args.viewer:
            page.click("table.glance td.sv-link", args.cell)
            page.click("#sv-body button", 0)
            shot = page.screenshot(Path(tmp) / "viewer.png", "#samples", max_height=args.viewer)
            rule = np.full((6, 1280, 3), 0.8, dtype=parts[0].dtype)
            parts += [rule, mpimg.imread(shot)[:, :, :3]]
        errors = page.errors()
        if errors:
            raise SystemExit(f"console errors: {errors}")
        mpimg.imsave(args.out, np.concatenate(parts))
    print(args.out)


if __name__ == "__main__":
    main()
