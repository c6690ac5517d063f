"""The web view in a real headless Chromium: ``serve`` shows what ``status --json`` says,
clicking a directory shows its children with their sizes and states, the page follows a
real upload without a reload, and ``report --html`` shows the same numbers offline. Then
the bad input: a foreign db, a port in use, another address without a token."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from desimirror.state.manifest import CHANGED, CORRUPT, FAILED, Manifest
from helpers import DESIMIRROR, assert_clean_error, run_cli
from view_helpers import (
    card_value,
    chromium,
    firefox,
    page_ready,
    rows,
    serving,
    text_of,
    wait_for,
)

FILES = {
    "spectro/data/20201214/a.fits": b"a" * 3000,
    "spectro/data/20201214/b.fits": b"b" * 2000,
    "spectro/data/20201215/c.fits": b"c" * 1000,
    "spectro/redux/r.fits": b"r" * 500,
    "target/t1.fits": b"t" * 300,
    "target/t2.fits": b"u" * 200,
    "doc/readme.txt": b"hello",
}
REMAP = ("--remap", "edr/spectro/data=raw_spectro_data", "--remap", "edr/target=target")


def _release(tmp_path: Path) -> Path:
    root = tmp_path / "edr"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    return root


def _crawled(tmp_path: Path, max_batch: str = "1MB") -> Path:
    db = tmp_path / "m.db"
    run_cli("crawl", str(_release(tmp_path)), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", max_batch, "--min-batch-size", "1",
            check=True)  # fmt: skip
    return db


def _with_failures(db: Path) -> None:
    """Three files not mirrored, each for another reason, as an upload records them."""
    with Manifest.open(db, writer="upload") as manifest, manifest.atomic():
        manifest.record_failure("spectro/data/20201214/a.fits", CORRUPT, "not the published bytes")
        manifest.record_failure("target/t2.fits", FAILED, "HTTP 503 SlowDown")
        manifest.record_failure("doc/readme.txt", CHANGED, "changed since the crawl")


def _status(db: Path) -> dict:
    return json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)


def _assert_totals_shown(driver, status: dict) -> None:
    assert card_value(driver, "done-files") == status["done_files"]
    assert card_value(driver, "done-bytes") == status["done_bytes"]
    assert card_value(driver, "pending-files") == status["pending_files"]
    assert card_value(driver, "failed-files") == sum(status["failed"].values())
    assert card_value(driver, "done-files", "total") == status["files"]
    assert card_value(driver, "done-bytes", "total") == status["bytes"]
    assert f"of {status['files']:,}" in text_of(driver, "#done-files")


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_the_status_totals_and_the_failures(tmp_path: Path, browser) -> None:
    db = _crawled(tmp_path)
    _with_failures(db)
    with serving(db) as url:
        page_ready(browser, url)
        _assert_totals_shown(browser, _status(db))
        failures = browser.find_elements("css selector", "#failures tbody tr")
        assert {r.get_attribute("data-reason") for r in failures} == {"corrupt", "error", "changed"}
        box = browser.find_element("id", "failure-filter")
        box.send_keys("slowdown")
        wait_for(lambda: len(browser.find_elements("css selector", "#failures tbody tr")) == 1)
        shown = browser.find_element("css selector", "#failures tbody tr")
        assert shown.get_attribute("data-path") == "target/t2.fits"
        assert "HTTP 503 SlowDown" in shown.text


def test_clicking_a_directory_shows_its_children_with_their_sizes_and_states(
    tmp_path: Path, browser
) -> None:
    _click_through_the_tree(tmp_path, browser)


def test_the_same_in_firefox(tmp_path: Path) -> None:
    """The page works in Firefox too (Debian's firefox-esr), not only in Chromium."""
    driver = firefox()
    try:
        _click_through_the_tree(tmp_path, driver)
    finally:
        driver.quit()


def _click_through_the_tree(tmp_path: Path, browser) -> None:
    """Into a directory and one further, each level's sizes and states as status counts
    them, and back to the root by the breadcrumbs."""
    db = _crawled(tmp_path)
    _with_failures(db)
    with serving(db) as url:
        page_ready(browser, url)
        top = rows(browser)
        assert set(top) == {"spectro", "target", "doc", "empty"}
        assert top["spectro"]["files"] == "4"
        assert "→" not in top["spectro"]["text"]  # no upload yet: no layout pinned
        assert top["spectro"]["bytes"] == "6500"
        assert top["empty"]["files"] == "0"
        link = browser.find_element("css selector", '#children tr[data-name="spectro"] a')
        link.click()
        wait_for(lambda: "data" in rows(browser), message="the children of spectro")
        assert text_of(browser, "#crumbs") == "(root)/spectro"
        browser.find_element("css selector", '#children tr[data-name="data"] a').click()
        wait_for(lambda: "20201214" in rows(browser), message="the children of spectro/data")
        inside = rows(browser)
        with Manifest.open(db) as manifest:  # status's own definition, path by path
            for name, row in inside.items():
                totals = manifest.totals(f"spectro/data/{name}")
                assert int(row["files"]) == totals["files"], name
                assert int(row["bytes"]) == totals["bytes"], name
        assert inside["20201214"]["states"].split() == ["corrupt", "pending"]
        assert inside["20201215"]["states"].split() == ["pending"]
        browser.find_element("css selector", '#crumbs a[data-path=""]').click()
        wait_for(lambda: "target" in rows(browser), message="back at the root")


@pytest.mark.slow
def test_the_done_count_rises_during_a_real_upload_without_a_reload(
    tmp_path: Path, browser, s3, bucket: str, cli_env: dict
) -> None:
    db = _crawled(tmp_path, max_batch="2kB")  # several batches: the upload goes by steps
    target = ("--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url, *REMAP)
    with serving(db, "--refresh", "0.5") as url:
        page_ready(browser, url)
        browser.execute_script("window.loadedOnce = 'yes'")  # gone if the page reloads
        assert card_value(browser, "done-files") == 0
        first = run_cli("upload", "--db", str(db), *target, "--max-batches", "1", env=cli_env)
        assert first.returncode == 0, first.stderr  # the view never held the write lock
        partial = _status(db)["done_files"]
        assert 0 < partial < len(FILES)
        wait_for(lambda: card_value(browser, "done-files") == partial, message="first batch")
        rest = subprocess.Popen([DESIMIRROR, "upload", "--db", str(db)], env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert rest.wait(timeout=120) == 0, rest.stderr.read()
        finally:
            rest.stderr.close()
        wait_for(lambda: card_value(browser, "done-files") == len(FILES), message="all done")
        assert browser.execute_script("return window.loadedOnce") == "yes"
        _assert_totals_shown(browser, _status(db))
        remapped = rows(browser)["target"]
        assert remapped["path"] == "target"
        assert (
            "→ target"
            in browser.find_element("css selector", '#children tr[data-name="target"]').text
        )


def test_the_exported_file_shows_the_same_numbers_with_the_network_off(
    tmp_path: Path, browser
) -> None:
    db = _crawled(tmp_path)
    _with_failures(db)
    out = tmp_path / "report.html"
    written = run_cli("report", "--db", str(db), "--html", str(out), check=True)
    assert "wrote" in written.stdout
    browser.set_network_conditions(
        offline=True, latency=0, download_throughput=0, upload_throughput=0
    )
    try:
        page_ready(browser, out.as_uri())
        _assert_totals_shown(browser, _status(db))
        loaded = browser.execute_script("return performance.getEntriesByType('resource').length")
        assert loaded == 0  # the chart library, the style and the data are all in the file
        assert browser.execute_script("return !!window.echarts")
        browser.find_element("css selector", '#children tr[data-name="spectro"] a').click()
        wait_for(lambda: "redux" in rows(browser), message="a directory of the export")
        assert rows(browser)["data"]["bytes"] == "6000"
        assert len(browser.find_elements("css selector", "#failures tbody tr")) == 3
    finally:
        browser.delete_network_conditions()


# -- bad input ---------------------------------------------------------------------------


def test_a_db_that_is_not_ours_is_refused_as_a_state_error(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    for command in (["serve", "--port", "0"], ["report", "--html", str(tmp_path / "r.html")]):
        proc = run_cli(*command, "--db", str(foreign))
        assert proc.returncode == 3
        assert_clean_error(proc, "not a desimirror state db")
    assert foreign.read_bytes() == before
    assert not (tmp_path / "r.html").exists()


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    db = _crawled(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--db", str(db), "--port", str(port))
    assert proc.returncode == 2
    assert_clean_error(proc, f"port {port} on 127.0.0.1 is in use")


def test_another_address_needs_a_token_and_the_token_is_checked(tmp_path: Path) -> None:
    db = _crawled(tmp_path)
    proc = run_cli("serve", "--db", str(db), "--ip", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert_clean_error(proc, "give --token")
    with serving(db, "--token", "s3cret") as url:
        assert url.endswith("?token=s3cret")
        base = url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/summary", timeout=10)
        assert refused.value.code == 403
        assert refused.value.headers.get("Set-Cookie") is None  # the token is never handed out
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(base + "api/summary?token=guess", timeout=10)
        assert wrong.value.code == 403
        assert wrong.value.headers.get("Set-Cookie") is None
        with urllib.request.urlopen(base + "api/summary?token=s3cret", timeout=10) as reply:
            assert json.load(reply)["status"]["files"] == len(FILES)
            cookie = reply.headers["Set-Cookie"]
        request = urllib.request.Request(base + "api/tree?path=", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=10) as reply:  # the page's later requests
            assert {c["name"] for c in json.load(reply)["children"]} >= {"spectro", "target"}


def test_serve_reads_a_db_while_a_writer_holds_it_and_never_writes(tmp_path: Path) -> None:
    db = _crawled(tmp_path)
    with Manifest.open(db, writer="upload") as writer, serving(db) as url:
        with urllib.request.urlopen(url + "api/tree?path=spectro", timeout=10) as reply:
            names = {c["name"] for c in json.load(reply)["children"]}
        assert names == {"data", "redux"}
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "api/tree?path=nowhere", timeout=10)
        assert missing.value.code == 404
        writer.set_meta("still", "mine")  # the writer goes on writing beside the view


def test_a_missing_chart_library_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from desimirror.cli import main
    from desimirror.view import page

    monkeypatch.setattr(page, "CHART_LIBRARY", tmp_path / "echarts.min.js")
    with pytest.raises(SystemExit) as ended:
        main(["serve", "--db", str(tmp_path / "m.db")])
    assert ended.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("desimirror: error: the web view's chart library is not built")
    assert "make all" in err[0]
