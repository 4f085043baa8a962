"""The report in a real browser: headless Chromium renders the page to a PNG (``screenshot``)
or prints its DOM after layout (``dump_dom``), for the tests and for a look by hand."""

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


def _headless(html_path: str | Path, action: str, *, width: int, height: int,
              timeout_s: float) -> subprocess.CompletedProcess:
    browser = _browser()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", action, Path(html_path).resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise UserError(f"{browser} could not render {html_path}: {proc.stderr.strip()[-500:]}")
    return proc


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 1400,
               height: int = 900, timeout_s: float = 120.0) -> Path:
    """Render the page in headless Chromium and save what a ``width`` x ``height`` window shows
    first (the default: the first screen of a laptop) as a PNG.

    Raises:
        UserError: no Chromium on this machine (install it with ``apt-get install chromium``),
            or the browser failed (its stderr is quoted).
    """
    png_path = Path(png_path).resolve()
    _headless(html_path, f"--screenshot={png_path}", width=width, height=height,
              timeout_s=timeout_s)
    if not png_path.exists():
        raise UserError(f"headless Chromium wrote no screenshot of {html_path} to {png_path}")
    return png_path


def dump_dom(html_path: str | Path, *, width: int = 1400, height: int = 900,
             timeout_s: float = 120.0) -> str:
    """The page's DOM as headless Chromium serialises it after loading (``--dump-dom``)."""
    return _headless(html_path, "--dump-dom", width=width, height=height,
                     timeout_s=timeout_s).stdout
