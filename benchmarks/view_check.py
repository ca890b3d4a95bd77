"""Check an `nmkevc view` page as a person would: headless Chromium opens the file (file://, no
server, no network), runs its script, and we read back the DOM it rendered and every console
message; optionally a screenshot of each view (#history/<commit>, #compare, #drift).

Needs Debian's `chromium` package; tests/test_view.py skips its browser test without it.

    python benchmarks/view_check.py PAGE.html [--shots DIR --name PREFIX --views history,compare,drift
                                               --commit ID --palette]

docs/view/*.png were made so, from the demo repository (`make demo`, then the commands in
docs/view.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
#: Chromium logs a page's console as `...:CONSOLE(line)] "message", source: url (line)` (newer
#: builds: `...:CONSOLE:line] "message", source: ...`); errors and uncaught exceptions among them
CONSOLE = re.compile(r'CONSOLE[(:]\d*\)?\]?\s*"(.*)", source: (.*)')


def browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("view_check: Chromium is not installed (apt-get install chromium)")
    return exe


def _run(args: list[str], profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)


def check_page(page: Path, profile: Path | None = None, fragment: str = "") -> dict:
    """Load `page` (+ `#fragment`) and report whether its script finished (the body's
    data-rendered mark) and the console messages it logged (any at all is a failure: the page
    logs nothing when it works)."""
    profile = Path(profile or tempfile.mkdtemp(prefix="nmkevc-chromium-"))
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    done = _run(["--dump-dom", "--virtual-time-budget=5000", url], profile)
    console = [m.group(0) for m in CONSOLE.finditer(done.stderr)]
    return {"url": url, "rendered": 'data-rendered="1"' in done.stdout, "console_errors": console,
            "dom": done.stdout, "exit": done.returncode}


def screenshot(page: Path, out: Path, fragment: str, size: str = "1400,900", profile: Path | None = None) -> Path:
    """A PNG of the page at `#fragment`, as a window of `size` shows it."""
    profile = Path(profile or tempfile.mkdtemp(prefix="nmkevc-chromium-"))
    url = Path(page).resolve().as_uri() + f"#{fragment}"
    _run([f"--screenshot={Path(out).resolve()}", f"--window-size={size}", "--virtual-time-budget=5000", url], profile)
    if not Path(out).exists():
        raise SystemExit(f"view_check: no screenshot written for {url}")
    return Path(out)


def shrink(png: Path) -> None:
    """Rewrite a screenshot with a 256-colour palette (Pillow, from matplotlib's dependencies):
    the page's flat colours survive it, and the file is a third of the size."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--shots", type=Path, default=None, help="directory for one PNG per view")
    ap.add_argument("--name", default="view")
    ap.add_argument("--commit", default="", help="the commit the history shot selects")
    ap.add_argument("--views", default="history,drift", help="views to shoot: history, compare, drift")
    ap.add_argument("--palette", action="store_true", help="shrink each PNG to 256 colours (for docs/)")
    args = ap.parse_args()
    report = {"load": check_page(args.page), "shots": []}
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
        for view in args.views.split(","):
            frag = f"history/{args.commit[:12]}" if view == "history" and args.commit else view
            shot = screenshot(args.page, args.shots / f"{args.name}-{view}.png", frag)
            if args.palette:
                shrink(shot)
            report["shots"].append(str(shot))
            report[f"load#{frag}"] = check_page(args.page, fragment=frag)
    for v in report.values():
        if isinstance(v, dict):
            v["dom"] = f"{len(v['dom'])} characters"
    print(json.dumps(report, indent=2))
    bad = [k for k, v in report.items() if isinstance(v, dict) and (not v["rendered"] or v["console_errors"])]
    if bad:
        raise SystemExit(f"view_check: {', '.join(bad)} failed")


if __name__ == "__main__":
    main()
