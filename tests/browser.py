"""Render the built book in Debian's headless Chromium and report what a reader would see on each page."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]

# After load, wait for MathJax to finish typesetting (when the page has maths), then measure the page.
PAGE_REPORT = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const text = document.querySelector('main') ? document.querySelector('main').innerText : document.body.innerText;
  return {
    heading: (document.querySelector('main h1') || {}).innerText || '',
    images: document.querySelectorAll('main img').length,
    broken: [...document.querySelectorAll('main img')].filter(i => !(i.complete && i.naturalWidth > 0))
              .map(i => i.getAttribute('src')),
    maths: document.querySelectorAll('mjx-container').length,
    rawTex: (text.match(/\\\\\\(|\\\\\\[|\\$\\$|\\\\begin\\{/g) || []).length,
    mathjaxErrors: document.querySelectorAll('mjx-merror').length,
  };
}"""


@dataclass
class PageReport:
    path: str
    heading: str
    images: int
    broken: list[str]
    maths: int
    raw_tex: int
    mathjax_errors: int
    requests_outside: list[str]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(html_root: Path, pages: list[str], screenshot_dir: Path | None = None) -> list[PageReport]:
    """Open each page (relative to ``html_root``) over file://, with every non-file request blocked and logged."""
    from playwright.sync_api import sync_playwright

    reports = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=chromium(), args=CHROMIUM_FLAGS,
                                                       headless=True)
        page = browser.new_page()
        outside: list[str] = []

        def guard(route):
            if not route.request.url.startswith("file://"):
                outside.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", guard)
        for rel in pages:
            outside.clear()
            page.goto((html_root / rel).resolve().as_uri(), wait_until="load")
            r = page.evaluate(PAGE_REPORT)
            if screenshot_dir is not None:
                page.screenshot(path=str(screenshot_dir / (rel.replace("/", "_") + ".png")), full_page=False)
            reports.append(PageReport(rel, r["heading"], r["images"], r["broken"], r["maths"], r["rawTex"],
                                      r["mathjaxErrors"], list(outside)))
        browser.close()
    return reports
