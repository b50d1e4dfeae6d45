"""A self-contained HTML review page for a labeling job's OUTPUT: see the images, not just the paths.

One file, no server and no external resource: thumbnails and charts are inlined as
data URIs, so it opens from a laptop's disk or an object store's web view alike.
Per label, the least confident images come first (they are the ones worth a look),
at most ``max_per_label`` of them, so the page stays a sensible size at any scale.
With the right answers (``truth``), the page shows the mistakes instead: grouped by
true -> predicted class, the most frequent confusion first and the most confident
mistakes first within it (a wrong answer or a wrong truth, either is worth a look).
Thumbnails are read through the same storage layer as the job (``s3://`` works) and
made in parallel.
"""

from __future__ import annotations

import base64
import html
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import simplejpeg

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.images import decode_or_error
from pipeline.results import read_results

THUMBNAIL = 160  # pixels, square, centre-cropped
MAX_ERRORS = 200  # error rows listed; the count says how many there are in all


@dataclass
class ReportSummary:
    rows: int  # rows in OUTPUT (after --label/--min-score)
    errors: int
    labels: int  # distinct labels shown
    thumbnails: int  # images drawn
    bytes: int  # size of the HTML file
    scored: int | None = None  # with a truth: rows that decoded and have a truth
    wrong: int | None = None  # with a truth: those whose top-1 label is not the truth


def build_report(output: str, report: str, label: str | None = None, max_per_label: int = 24,
                 min_score: float | None = None, threads: int = 16,
                 truth: dict[str, str] | None = None) -> ReportSummary:
    """Write ``report`` (a local path or URL) for the labeling job in ``output``; UserError (before any
    thumbnail is made) when ``report`` cannot be written, JobFailedError when the final write fails.
    ``truth`` ({image identity: true class}, ``pipeline.evaluation.read_truth``) shows the mistakes."""
    storage.prepare_file_target(report, "REPORT", suggested_name="report.html")
    frame = read_results(output, ["path", "label", "score", "top_labels", "top_scores", "error"])
    if label is not None:
        frame = frame[frame["label"] == label]
        if frame.empty:
            raise UserError(f"no rows with label '{label}' in '{output}'; see 'pipeline show {output}'")
    if min_score is not None:
        frame = frame[frame["score"].isna() | (frame["score"] >= min_score)]
    frame = frame.assign(truth=frame["path"].map(truth) if truth is not None else None)
    ok = frame[frame["error"].isna()]
    failed = frame[frame["error"].notna()]
    counts = ok["label"].value_counts()
    scored = wrong = None
    if truth is None:
        shown = ok.sort_values("score").groupby("label", sort=False).head(max_per_label)
        by_label = dict(tuple(shown.groupby("label", sort=False)))
        groups = [_label_group(name, count, by_label[name]) for name, count in counts.items()]
    else:
        judged = ok[ok["truth"].notna()]
        mistakes = judged[judged["label"] != judged["truth"]]
        shown = mistakes.sort_values("score", ascending=False).groupby(["truth", "label"], sort=False).head(
            max_per_label)
        by_pair = dict(tuple(shown.groupby(["truth", "label"], sort=False)))
        pairs = mistakes.groupby(["truth", "label"]).size().sort_values(ascending=False, kind="stable")
        groups = [_mistake_group(true, predicted, count, by_pair[(true, predicted)])
                  for (true, predicted), count in pairs.items()]
        scored, wrong = len(judged), len(mistakes)
    with ThreadPoolExecutor(threads) as pool:
        thumbs = dict(zip(shown["path"], pool.map(_thumbnail, shown["path"])))
    page = _page(output, frame, ok, failed, counts, groups, thumbs, scored, wrong)
    data = page.encode("utf-8")
    try:
        storage.publish(report, data)
    except OSError as err:
        raise JobFailedError(f"could not write REPORT '{report}' ({type(err).__name__}: {err}); the page was "
                             "built but not saved: check the location and permissions, then run again") from err
    return ReportSummary(len(frame), len(failed), len(counts), sum(v is not None for v in thumbs.values()), len(data),
                         scored, wrong)


@dataclass
class Group:
    """One section of thumbnails: its heading, its data attributes, its rows and how many it stands for."""

    title: str
    attributes: dict[str, str]
    rows: pd.DataFrame
    count: int
    order: str  # which of the group's images come first


def _label_group(name, count: int, rows: pd.DataFrame) -> Group:
    return Group(str(name), {"class": "label", "data-label": str(name)}, rows, count, "least confident")


def _mistake_group(true: str, predicted: str, count: int, rows: pd.DataFrame) -> Group:
    return Group(f"{true} \u2192 {predicted}", {"class": "mistake", "data-truth": str(true), "data-predicted":
                                                str(predicted)}, rows, count, "most confident")


def _thumbnail(path: str) -> str | None:
    """A JPEG data URI of the image's centre, or None when it cannot be read now."""
    try:
        data = storage.read_bytes(path)
    except Exception:  # noqa: BLE001 - a report shows what it can; the row itself is in the page
        return None
    result = decode_or_error(data, (THUMBNAIL, THUMBNAIL), resize_mode="center-crop")
    if result.image is None:
        return None
    jpeg = simplejpeg.encode_jpeg(result.image, quality=80, colorspace="RGB")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _chart(draw) -> str:
    """Run ``draw(axes)`` on a small matplotlib figure; a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _score_histogram(ok: pd.DataFrame) -> str:
    def draw(axes):
        axes.hist(ok["score"].astype(float), bins=20, range=(0, 1), color="#4c72b0")
        axes.set_xlabel("top-1 score")
        axes.set_ylabel("images")
        axes.set_title("How confident the model was")
    return _chart(draw)


def _label_bars(counts: pd.Series) -> str:
    top = counts.head(25)[::-1]

    def draw(axes):
        axes.barh([str(k) for k in top.index], top.values, color="#55a868")
        axes.set_xlabel("images")
        axes.set_title(f"Label counts (top {len(top)} of {len(counts)})")
        axes.tick_params(axis="y", labelsize=7)
    return _chart(draw)


def _figure(row, thumb: str | None) -> str:
    top = ", ".join(f"{name} {score:.0%}" for name, score in zip(row.top_labels[:3], row.top_scores[:3]))
    truth = f"truth: {row.truth}; " if isinstance(row.truth, str) else ""
    tip = html.escape(f"{row.path}\n{truth}{top}")
    image = (f'<img src="{thumb}" alt="{html.escape(row.label)}" loading="lazy">' if thumb
             else '<div class="missing">not readable now</div>')
    return (f'<figure class="thumb" title="{tip}" data-path="{html.escape(row.path)}">{image}'
            f'<figcaption><b>{row.score:.0%}</b> {html.escape(top)}</figcaption></figure>')


def _section(group: Group, thumbs: dict[str, str | None]) -> str:
    grid = "".join(_figure(r, thumbs.get(r.path)) for r in group.rows.itertuples())
    more = f", {group.order} {len(group.rows)} shown" if len(group.rows) < group.count else ""
    attributes = " ".join(f'{key}="{html.escape(value)}"' for key, value in group.attributes.items())
    return (f'<section {attributes} data-count="{group.count}">'
            f'<h2>{html.escape(group.title)} <small>{group.count} images{more}</small></h2>'
            f'<div class="grid">{grid}</div></section>')


def _page(output, frame, ok, failed, counts, groups, thumbs, scored, wrong) -> str:
    sections = [_section(group, thumbs) for group in groups]
    error_rows = "".join(f"<tr><td>{html.escape(r.path)}</td><td>{html.escape(r.error)}</td></tr>"
                         for r in failed.head(MAX_ERRORS).itertuples())
    errors = (f'<section id="errors" data-count="{len(failed)}"><h2>Errors <small>{len(failed)} images'
              f'{f", first {MAX_ERRORS} listed" if len(failed) > MAX_ERRORS else ""}</small></h2>'
              f'<table><tr><th>path</th><th>error</th></tr>{error_rows}</table></section>'
              if len(failed) else '<section id="errors" data-count="0"><h2>Errors <small>none</small></h2></section>')
    charts = (f'<img class="chart" src="{_score_histogram(ok)}" alt="score histogram">'
              f'<img class="chart" src="{_label_bars(counts)}" alt="label counts">' if len(ok) else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Labels: {html.escape(output)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h2 small {{ color: #777; font-weight: normal; font-size: 0.6em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.thumb {{ margin: 0; width: {THUMBNAIL}px; }}
.thumb img, .missing {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; border-radius: 4px; background: #eee; }}
.missing {{ display: flex; align-items: center; justify-content: center; color: #999; font-size: 0.8em; }}
figcaption {{ font-size: 0.72em; line-height: 1.25; overflow-wrap: anywhere; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border: 1px solid #ddd; padding: 3px 6px; }}
.chart {{ max-width: 48%; }}
</style></head><body>
<h1>Labels of <code>{html.escape(output)}</code></h1>
<p id="totals" data-rows="{len(frame)}" data-errors="{len(failed)}" data-labels="{len(counts)}"\
{_truth_data(scored, wrong)}>
{len(frame)} images, {len(counts)} labels, {len(failed)} errors. {_truth_text(frame, scored, wrong)}</p>
<div>{charts}</div>
{''.join(sections)}
{errors}
</body></html>
"""


def _truth_data(scored: int | None, wrong: int | None) -> str:
    return "" if scored is None else f' data-scored="{scored}" data-wrong="{wrong}"'


def _truth_text(frame: pd.DataFrame, scored: int | None, wrong: int | None) -> str:
    if scored is None:
        return "Least confident first; hover for the path and the top 3."
    accuracy = f" (accuracy {1 - wrong / scored:.1%})" if scored else ""
    untruthed = int(frame["truth"].isna().sum())
    return (f"{wrong} of the {scored} images with a truth are labeled wrong{accuracy}, grouped by true \u2192 "
            f"predicted class, most confident first; rows without a truth: {untruthed}. Hover for the path, "
            "the truth and the top 3.")
