"""The evaluation HTML report: self-contained (opens offline from disk), with true vs predicted positions
joined by lines on the same base map as the page, the error CDF and reliability PNGs, and the table of
methods with intervals. Opened in Debian's headless Chromium when it is installed."""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from test_evaluate import small_train, three_photographers, toy_data  # noqa: F401 - a fixture, reused
from typer.testing import CliRunner

from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.evaluation.plots import write_plots
from geopin.evaluation.tables import format_methods_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A real cross-validated report on toy embeddings (2 scenarios), its plots written: (report, out)."""
    emb, lat, lon, groups = toy_data(3)
    report = evaluate_cv(emb, lat, lon, groups, EvalConfig(folds=3, train=small_train()))
    out = tmp_path_factory.mktemp("eval")
    write_plots(report, out)
    return report, out


def _scripts_and_links(html: str) -> list[str]:
    return re.findall(r"""<(?:script|link|img)[^>]*(?:src|href)\s*=\s*["']([^"']+)""", html)


def test_report_is_self_contained_and_holds_table_plots_and_lines(evaluated):
    from geopin.evaluation.report import write_report

    report, out = evaluated
    path = write_report(report, out)
    assert path == out / "report.html"
    html = path.read_text()
    # offline: no script, stylesheet or image is fetched from anywhere
    refs = _scripts_and_links(html)
    assert all(r.startswith("data:") for r in refs), refs
    assert "L.map" in html or "geopinBaseMap" in html  # the map code is inlined
    assert '"countries"' in html  # the borders are inlined
    # the CDF and reliability PNGs, embedded
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 2 * len(report["scenarios"])  # error CDF and reliability per scenario
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # the table of methods, with the intervals, as evaluate prints it
    for sc in report["scenarios"]:
        header, table = format_methods_table(report, sc)
        assert header.splitlines()[0].lstrip("= ") in html
        for cell in table["GeoScore"]:
            assert cell in html
    # one line per photo and scenario, as data for the map
    n_lines = sum(len(df) for df in report["per_photo"].values())
    assert html.count('"t":[') == n_lines


def test_report_escapes_text_and_writes_atomically(evaluated, tmp_path):
    from geopin.evaluation.report import write_report

    report, out = evaluated
    for p in out.glob("*.png"):
        shutil.copy(p, tmp_path / p.name)
    ids = [f"<img src=x onerror=alert({i})>" for i in range(report["n"])]
    html = write_report(report, tmp_path, ids=ids).read_text()
    assert "<img src=x" not in html  # photo ids reach the page as data, never as markup
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary file left behind


def test_report_without_plots_says_so_instead_of_failing(evaluated, tmp_path):
    from geopin.evaluation.report import write_report

    report, _ = evaluated
    html = write_report(report, tmp_path).read_text()
    assert "not written" in html and "error_cdf_group.png" in html


def test_evaluate_command_writes_the_report(three_photographers, tmp_path):  # noqa: F811 - the fixture
    from geopin.cli import app

    ds = three_photographers
    r = CliRunner().invoke(app, ["evaluate", str(ds / "manifest.parquet"), "--embeddings", str(ds / "emb"),
                                 "--out", str(tmp_path / "ev"), "--folds", "3", "--scenario", "group"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "report.html" in r.output
    assert html.count('"t":[') == 24
    assert "site0_0.jpg" in html or "photographer0" in html  # the photo ids label the lines


def test_report_opens_offline_in_a_browser_and_draws_one_line_per_photo(evaluated, tmp_path):
    """file:// and no network: the map, the borders and every true-to-predicted line must show."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from geopin.evaluation.report import write_report

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian chromium + chromium-driver are not installed (.ci/run installs them)")
    report, out = evaluated
    path = write_report(report, out)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tmp_path / "chromium-profile"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1300,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        drv.get(path.as_uri())
        deadline = time.monotonic() + 30
        while drv.execute_script("return document.body.dataset.mapsReady") != "1":
            if time.monotonic() > deadline:
                pytest.fail(f"the report's maps did not draw; console: {drv.get_log('browser')[-5:]}")
            time.sleep(0.2)
        for sc, df in report["per_photo"].items():
            lines = drv.find_elements(By.CSS_SELECTOR, f"#map-{sc} path.error-line")
            assert len(lines) == len(df), (sc, len(lines), len(df))
            assert len(drv.find_elements(By.CSS_SELECTOR, f"#map-{sc} path.country")) > 100
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        drv.execute_script("document.querySelector('.map').scrollIntoView()")
        shot = Path(os.environ.get("GEOPIN_ARTIFACTS", tmp_path)) / "eval_report.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
    finally:
        drv.quit()
