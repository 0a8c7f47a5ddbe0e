"""Size of report.html and its time to render in headless Chromium, with the per-sample viewer.

Usage: OMP_NUM_THREADS=1 python benchmarks/report_render.py [--models 20] [--instances 1000] [--report FILE]

Builds report_speed.py's synthetic run (20 models x its benchmarks x 1,000 instances by default;
B=1,000 bootstrap rounds, which does not change the page) or takes an existing report.html, then
prints the file size, the viewer's data block, and in Chromium at 1,280 px: the time to the load
event, the page's own DOMContentLoaded (parse plus the inline script: JSON.parse and the first
100 rows), one filter change and one side-by-side comparison.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from report_speed import TASKS, make_run  # noqa: E402
from support.browser import Browser  # noqa: E402

from reports.report import make_report  # noqa: E402

TIMED = """(function () {
  var t0 = performance.now(), sel = document.getElementById('sv-model');
  sel.value = sel.options[sel.options.length - 1].value;
  sel.dispatchEvent(new Event('change'));
  var t1 = performance.now();
  document.querySelector('#sv-body button').click();
  var t2 = performance.now();
  return {filter_ms: t1 - t0, compare_ms: t2 - t1, rows: document.querySelectorAll('#sv-body tr').length};
})()"""


def measure(report: Path) -> None:
    page_text = report.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="sv-data">(.*?)</script>', page_text, re.S)
    note = re.search(r'<p class="muted" id="sv-note">(.*?)</p>', page_text, re.S)
    print(f"{report}: {report.stat().st_size / 1e6:.2f} MB, viewer data {len(block.group(1)) / 1e6 if block else 0:.2f} MB")
    print(f"  {note.group(1) if note else 'no viewer'}")
    with Browser(timeout=300) as b:
        t0 = time.perf_counter()
        page = b.open(report.resolve().as_uri(), width=1280)
        wall = time.perf_counter() - t0
        nav = page.eval("(function () { var n = performance.getEntriesByType('navigation')[0];"
                        " return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd}; })()")
        timed = page.eval(TIMED)
        errors = page.errors()
    print(f"  Chromium: load event after {wall:.2f} s (tab opening included); DOMContentLoaded {nav['dcl']:.0f} ms, "
          f"load {nav['load']:.0f} ms; filter to one model {timed['filter_ms']:.0f} ms ({timed['rows']} rows shown), "
          f"open a comparison {timed['compare_ms']:.0f} ms; console errors: {len(errors)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--max-instances", type=int, default=200, help="instances per benchmark in the viewer")
    ap.add_argument("--report", type=Path, help="measure this report.html instead of building one")
    args = ap.parse_args()
    if args.report:
        measure(args.report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.models, args.instances)
        t0 = time.perf_counter()
        path = make_report([run], Path(tmp) / "out", baseline="model-00", B=args.bootstrap,
                           max_instances=args.max_instances)
        print(f"make_report: {args.models} models x {len(TASKS)} benchmarks x {args.instances} instances, "
              f"B={args.bootstrap}: "
              f"{time.perf_counter() - t0:.1f} s")
        measure(path)


if __name__ == "__main__":
    main()
