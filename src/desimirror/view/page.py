"""The page itself: our HTML, CSS and JS (committed) and ECharts (built from npm, never
committed; ``make all`` copies it here). Served as separate files, or inlined into one
self-contained HTML file that opens with no server and no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desimirror.errors import DesimirrorError

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "echarts.min.js": "text/javascript; charset=utf-8",
}
CHART_LIBRARY = STATIC / "echarts.min.js"


def check_assets() -> None:
    """Refuse to start without the chart library, in one line that says how to build it."""
    if not CHART_LIBRARY.is_file():
        raise DesimirrorError(
            f"the web view's chart library is not built ({CHART_LIBRARY} is missing): "
            "run 'make all' in the desimirror checkout (it needs npm)"
        )


def asset(name: str) -> bytes | None:
    """One static file's bytes, None if it is not one of ours."""
    if name not in ASSETS:
        return None
    path = STATIC / name
    return path.read_bytes() if path.is_file() else None


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '</script>', no '<!--'."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline_script(code: str) -> str:
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def live_page(refresh_seconds: float) -> bytes:
    """The page the server sends: it loads its data from the server's API."""
    config = {"mode": "live", "refresh": refresh_seconds}
    return _render(
        config,
        style='<link rel="stylesheet" href="static/app.css">',
        scripts='<script src="static/echarts.min.js"></script>\n'
        '<script src="static/app.js"></script>',
    ).encode()


def report_page(snapshot: dict[str, Any]) -> bytes:
    """One HTML file holding the page, the chart library and the data: it fetches nothing."""
    check_assets()
    code = [(STATIC / name).read_text(encoding="utf-8") for name in ("echarts.min.js", "app.js")]
    style = (STATIC / "app.css").read_text(encoding="utf-8")
    return _render(
        {"mode": "report", "snapshot": snapshot},
        style=f"<style>\n{style}</style>",
        scripts="\n".join(_inline_script(c) for c in code),
    ).encode()


def _render(config: dict[str, Any], *, style: str, scripts: str) -> str:
    template = (STATIC / "index.html").read_text(encoding="utf-8")
    config_script = f"<script>window.DESIMIRROR = {_script_json(config)};</script>"
    # one pass over the template: the inserted code may itself contain the placeholders
    parts = {"<!--STYLE-->": style, "<!--CONFIG-->": config_script, "<!--SCRIPTS-->": scripts}
    out, rest = [], template
    for marker, text in parts.items():
        before, found, rest = rest.partition(marker)
        if not found:
            raise AssertionError(f"{marker} missing from index.html")
        out += [before, text]
    return "".join([*out, rest])
