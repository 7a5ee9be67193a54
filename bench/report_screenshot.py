"""A PNG of a Snakemake report (``snakemake --report report.html``) as a browser shows it.

Opens the report in headless Chromium at a given window size and saves a screenshot: its start page
(the workflow's description beside the rule graph), or with ``--show fewshot.html`` the report opened
on that result, as after a click on its eye icon. A ``.zip`` report is unpacked to a temporary folder
first. Not a benchmark: a tool for the picture in docs/ and for tests/test_workflow.py.

    python bench/report_screenshot.py report.html --out docs/report.png --show fewshot.html
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Opens one result the way a click on its eye icon does. It drives the report's own page script: the
# global `app` and its setView, the `results` and `categories` tables, as Snakemake 9's report defines
# them. With a report whose script differs (another Snakemake version) the page stays on its start.
_SHOW_SCRIPT = """<script>
(function show(tries) {
  if (typeof app === "undefined" || !app) {
    if (tries > 0) setTimeout(() => show(tries - 1), 50);
    return;
  }
  const name = %s;
  const path = Object.keys(results).find((p) => p.split("/").pop() === name);
  for (const [category, subcategories] of Object.entries(categories)) {
    for (const [subcategory, paths] of Object.entries(subcategories)) {
      if (path !== undefined && paths.includes(path)) {
        app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory,
                     content: "html", contentPath: results[path].data_uri, resultPath: path});
      }
    }
  }
})(100);
</script>
"""


def find_browser() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def report_page(report: Path, workdir: Path) -> Path:
    """The report's HTML page: the file itself, or report.html unpacked from a zip report."""
    if report.suffix != ".zip":
        return report
    with zipfile.ZipFile(report) as archive:
        archive.extractall(workdir)
    pages = sorted(workdir.glob("*/report.html"))
    if not pages:
        raise ValueError(f"{report}: no <name>/report.html inside (not a Snakemake report zip?)")
    return pages[0]


def result_names(page: Path) -> list[str]:
    """The file names of the results a report page holds (from its ``var results = {...}``)."""
    text = page.read_text(encoding="utf-8")
    marker = '<script id="results">'  # the bundled libraries have a `var results` of their own
    if marker not in text:
        raise ValueError(f"{page}: no table of results in it (not a Snakemake report?)")
    start = text.index("var results = ", text.index(marker)) + len("var results = ")
    results, _ = json.JSONDecoder().raw_decode(text, start)
    return [Path(path).name for path in results]


def show_result_page(page: Path, name: str, shown: Path) -> Path:
    """Write to ``shown`` a copy of ``page`` that opens on the result whose file name is ``name``.

    Raises:
        ValueError: the report holds no result of that name (the message lists those it holds).
    """
    names = result_names(page)
    if name not in names:
        raise ValueError(f"no result named {name!r} in {page} (choose from {', '.join(sorted(names))})")
    text = page.read_text(encoding="utf-8")
    end = text.rindex("</body>")
    shown.write_text(text[:end] + _SHOW_SCRIPT % json.dumps(name) + text[end:], encoding="utf-8")
    return shown


def screenshot(page: Path, png: Path, width: int, height: int, browser: str) -> None:
    """Save ``page`` as shown in a ``width`` x ``height`` window to ``png`` (headless, fresh profile)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # needed as root (containers, CI); the page is our own file
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",  # let the report's script render before the shot
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not png.is_file():
        raise RuntimeError(f"{browser} failed ({result.returncode}): {result.stderr[-2000:]}")


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1400x900, not {text!r}")
    return int(width), int(height)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html or report.zip from snakemake --report")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--size", type=parse_size, default=(1400, 900), help="window, WIDTHxHEIGHT")
    parser.add_argument("--show", metavar="NAME", help="open this result first, e.g. fewshot.html")
    parser.add_argument("--browser", help=f"browser executable (default: the first of {', '.join(BROWSERS)})")
    args = parser.parse_args(argv)
    browser = args.browser or find_browser()
    if browser is None:
        print(f"error: no browser found (install one of: {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            page = report_page(args.report, Path(tmp))
            if args.show:
                # An unpacked zip's page next to its data/ folder, which it links to; an .html
                # report holds its results and can go anywhere.
                folder = page.parent if page.is_relative_to(tmp) else Path(tmp)
                page = show_result_page(page, args.show, folder / "shown.html")
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.out, *args.size, browser)
    print(f"wrote {args.out} ({args.size[0]}x{args.size[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
