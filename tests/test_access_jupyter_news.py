"""A first start of ``desimirror jupyter`` does not greet the user with JupyterLab's
"get notified about official Jupyter news?" prompt: the real server's page config
disables the announcements plugin that asks it, and the user's own config is untouched."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_access_jupyter import Launched, _free_port, _get

NEWS_PLUGIN = "@jupyterlab/apputils-extension:announcements"  # JupyterLab 4's, which asks
pytest_plugins = ["access_fixtures"]
pytestmark = [pytest.mark.s3]


def _page_config(html: str) -> dict:
    match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                      html, re.S)  # fmt: skip
    assert match, html[:2000]
    return json.loads(match.group(1))


def test_jupyterlab_does_not_ask_about_news_on_a_first_start(
    release_bucket, access_env: dict[str, str], tmp_path: Path
) -> None:
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    args = ["--release", "edr", "--local", str(release_bucket.local), "--port",
            str(_free_port()), "--notebook-dir", str(notebooks)]  # fmt: skip
    server = Launched(args, access_env, tmp_path / "jupyter.log")
    try:
        server.wait_ready()
        status, html = _get(server.base + "/lab", server.token)
        assert status == 200, html
        config = _page_config(html)
        assert NEWS_PLUGIN in config["disabledExtensions"]
    finally:
        server.stop()
    assert not (Path(access_env["HOME"]) / ".jupyter").exists()  # nothing of the user's
