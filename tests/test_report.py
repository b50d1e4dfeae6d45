"""`pipeline report`: one HTML file a person opens in a real browser, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def chromium() -> str:
    """Debian's Chromium; installed with apt-get when missing (CI runs as root on a bare machine)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("the report test needs Chromium: apt-get install chromium")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, photos):
    """A real labeling run over the sample photos, two broken files and one photo copied 30 times."""
    folder = tmp_path_factory.mktemp("report") / "photos"
    folder.mkdir()
    for name, path in photos.items():
        shutil.copy(path, folder / f"{name}{path.suffix}")
    for i in range(30):
        shutil.copy(photos["coffee"], folder / f"coffee_{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    out = folder.parent / "out"
    result = runner.invoke(app, ["label", str(folder), str(out), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_report_opens_in_a_real_browser_with_counts_labels_and_errors(labeled, tmp_path):
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(labeled), str(report), "--max-per-label", "5"])
    assert result.exit_code == 0, result.output
    assert "36 rows" in result.output and "2 errors" in result.output
    browser = chromium()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          report.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'data-rows="36"' in dom and 'data-errors="2"' in dom
    espresso = re.search(r'<section class="label" data-label="espresso" data-count="(\d+)">(.*?)</section>', dom, re.S)
    assert espresso and int(espresso.group(1)) == 31  # 30 copies and the original
    assert espresso.group(2).count('class="thumb"') == 5  # --max-per-label keeps the page small
    assert "least confident 5 shown" in espresso.group(2)
    assert espresso.group(2).count("data:image/jpeg;base64,") == 5
    errors = re.search(r'<section id="errors" data-count="2">(.*?)</section>', dom, re.S).group(1)
    assert "broken.jpg" in errors and "empty.png" in errors and "empty file" in errors
    assert dom.count("data:image/png;base64,") == 2  # score histogram and label counts
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", report.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page with pictures, not a blank one
    assert report.stat().st_size < 2 * 2**20


@pytest.mark.slow
def test_report_for_one_label_and_unknown_label(labeled, tmp_path):
    only = tmp_path / "espresso.html"
    result = runner.invoke(app, ["report", str(labeled), str(only), "--label", "espresso"])
    assert result.exit_code == 0, result.output
    page = only.read_text()
    assert 'data-label="espresso"' in page and page.count('class="label"') == 1
    assert 'data-errors="0"' in page
    missing = runner.invoke(app, ["report", str(labeled), str(tmp_path / "x.html"), "--label", "zebra"])
    assert missing.exit_code == 2 and "no rows with label 'zebra'" in missing.output


@pytest.mark.slow
def test_with_the_truth_the_page_groups_the_mistakes_by_true_and_predicted_class(labeled, tmp_path):
    import pandas as pd

    rows = pd.read_parquet(labeled)
    ok = rows[rows["error"].isna()]
    truth = ok[["path", "label"]].copy()
    relabeled = truth["path"].str.contains(r"coffee_0\d\.png$")  # 10 copies whose truth says otherwise
    truth.loc[relabeled, "label"] = "cup"
    truth = truth[~truth["path"].str.endswith("rocket.jpg")]  # one image with no truth
    truth.to_csv(tmp_path / "truth.csv", index=False)
    report = tmp_path / "mistakes.html"
    result = runner.invoke(app, ["report", str(labeled), str(report), "--truth", str(tmp_path / "truth.csv"),
                                 "--max-per-label", "4"])
    assert result.exit_code == 0, result.output
    assert f"10 wrong of {len(ok) - 1} images with a truth" in result.output
    page = report.read_text()
    assert f'data-scored="{len(ok) - 1}" data-wrong="10"' in page
    assert "rows without a truth: 3." in page  # rocket and the two broken files
    assert 'class="label"' not in page  # the mistakes only
    [section] = re.findall(r'<section class="mistake" data-truth="cup" data-predicted="espresso" data-count="10">'
                           r'(.*?)</section>', page, re.S)
    assert section.count('class="thumb"') == 4 and "most confident 4 shown" in section
    assert section.count("data:image/jpeg;base64,") == 4 and "truth: cup" in section
    assert page.count('<section class="mistake"') == 1
