"""Pages in a real browser: headless Chromium renders a report file or an ``http(s)://`` URL
(the MLflow UI) to a PNG (``screenshot``) or prints its DOM after layout (``dump_dom``), for the
tests and for a look by hand."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from trainables.errors import UserError

__all__ = ["BROWSERS", "screenshot", "dump_dom"]

BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    browser = next((b for b in (shutil.which(n) for n in BROWSERS) if b), None)
    if browser is None:
        raise UserError(f"no headless Chromium found (looked for {list(BROWSERS)}); install it "
                        f"with `apt-get install chromium` to check the report in a browser")
    return browser


def _headless(target: str | Path, action: str, *, width: int, height: int,
              wait_ms: int | None, timeout_s: float) -> subprocess.CompletedProcess:
    """Run headless Chromium on a file or an ``http(s)://`` URL with one action flag.
    ``wait_ms`` lets a single-page app (the MLflow UI) fetch and render before the capture."""
    browser = _browser()
    url = str(target) if "://" in str(target) else Path(target).resolve().as_uri()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", action, url]
    if wait_ms is not None:
        cmd.insert(-1, f"--virtual-time-budget={wait_ms}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise UserError(f"{browser} could not render {target}: {proc.stderr.strip()[-500:]}")
    return proc


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 1280,
               height: int = 4000, timeout_s: float = 120.0, wait_ms: int | None = None) -> Path:
    """Render a page (an HTML file, or an ``http(s)://`` URL) in headless Chromium and save what
    a ``width`` x ``height`` window shows first as a PNG (1400 x 900: a laptop's first screen).

    Raises:
        UserError: no Chromium on this machine (install it with ``apt-get install chromium``),
            or the browser failed (its stderr is quoted).
    """
    png_path = Path(png_path).resolve()
    _headless(html_path, f"--screenshot={png_path}", width=width, height=height,
              wait_ms=wait_ms, timeout_s=timeout_s)
    if not png_path.exists():
        raise UserError(f"headless Chromium wrote no screenshot of {html_path} to {png_path}")
    return png_path


def dump_dom(target: str | Path, *, width: int = 1280, height: int = 4000,
             wait_ms: int | None = None, timeout_s: float = 120.0) -> str:
    """The page's DOM after loading (and ``wait_ms`` of virtual time for its scripts), as HTML.

    Raises:
        UserError: no Chromium, or the browser failed.
    """
    return _headless(target, "--dump-dom", width=width, height=height, wait_ms=wait_ms,
                     timeout_s=timeout_s).stdout
