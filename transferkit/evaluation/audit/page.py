"""`audit.html`: one self-contained page (inline CSS and thumbnails, no script): the counts, the class
balance, the top duplicate pairs side by side, the top label issues (given vs suggested), the top outliers."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.decode import UnreadableImageError, open_image
from transferkit.evaluation.audit.duplicates import Duplicate
from transferkit.evaluation.audit.images import SPLITS, AuditImages
from transferkit.evaluation.audit.label_issues import LabelRanking
from transferkit.evaluation.reports.html_page import STYLE, cell, table

THUMB = 64
EXTRA_STYLE = ".pair{display:flex;gap:4px}.thumb{width:64px;height:64px;object-fit:contain;background:#f4f4f4}"


def thumbnail(images: AuditImages, i: int) -> str:
    """Image `i` as an inline PNG (at most 64 px a side), or a dash when it cannot be read any more."""
    try:
        item = images.pixels(i)
        picture = open_image(item).convert("RGB") if isinstance(item, Path) else \
            Image.fromarray(np.squeeze(np.asarray(item, dtype=np.uint8)))
    except UnreadableImageError:
        return "-"
    picture.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS if min(picture.size) > THUMB else Image.Resampling.NEAREST)
    if max(picture.size) < THUMB:
        scale = THUMB / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="thumb" alt="{escape(images.names[i])}" src="data:image/png;base64,{data}">'


def rows_with_images(header: list[str], rows: list[tuple[str, list]]) -> str:
    """A table whose first cell holds raw HTML (the thumbnails) and the rest plain values."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f"<tr><td>{html}</td>" + "".join(cell(v) for v in values) + "</tr>" for html, values in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def counts_section(results: dict) -> str:
    counts = results["counts"]
    rows = [(key.replace("_", " "), value) for key, value in counts.items() if not isinstance(value, dict)]
    rows += [(f"leaked {split} images", n) for split, n in counts.get("leaked_images", {}).items()]
    leak = results.get("leak")
    if leak:
        rows += [("test acc", leak["test_acc"]), ("test acc without leaked images", leak["test_acc_without_leaked"])]
    return "<div><h2>Findings</h2>" + table(["what", "count"], rows) + "</div>"


def balance_section(images: AuditImages) -> str:
    present = [s for s in SPLITS if (images.splits == s).any()]
    rows = [(name, *[int(((images.labels == c) & (images.splits == s)).sum()) for s in present])
            for c, name in enumerate(images.class_names)]
    return "<div><h2>Class balance</h2>" + table(["class", *present], rows) + "</div>"


def duplicates_section(images: AuditImages, pairs: list[Duplicate], shown: int) -> str:
    rows = [(f'<div class="pair">{thumbnail(images, p.a)}{thumbnail(images, p.b)}</div>',
             [images.names[p.a], images.names[p.b], f"{images.splits[p.a]} / {images.splits[p.b]}", p.kind,
              float(p.distance)]) for p in pairs[:shown]]
    if not rows:
        return "<h2>Duplicates</h2><p>No duplicate pairs found.</p>"
    return (f"<h2>Duplicates (top {len(rows)} of {len(pairs)}; cross-split first)</h2>"
            + rows_with_images(["images", "path a", "path b", "splits", "kind", "distance"], rows)
            + '<p>All pairs: <a href="duplicates.csv">duplicates.csv</a></p>')


def labels_section(images: AuditImages, ranking: LabelRanking, shown: int) -> str:
    rows = [(thumbnail(images, i), [images.names[i], images.splits[i], images.class_names[images.labels[i]],
                                    images.class_names[ranking.suggested[i]], float(ranking.score[i])])
            for i in ranking.order[:shown]]
    return (f"<h2>Likely label issues (top {len(rows)}; {int(ranking.flagged.sum())} flagged)</h2>"
            + rows_with_images(["image", "path", "split", "given", "suggested", "score"], rows)
            + '<p>Every labelled image, most suspicious first: <a href="label_issues.csv">label_issues.csv</a></p>')


def outliers_section(images: AuditImages, scores: np.ndarray, shown: int) -> str:
    order = np.argsort(-scores, kind="stable")[:shown]
    rows = [(thumbnail(images, i), [images.names[i], images.splits[i], images.class_names[images.labels[i]],
                                    float(scores[i])]) for i in order]
    return (f"<h2>Outliers (top {len(rows)})</h2>" + rows_with_images(["image", "path", "split", "label", "score"], rows)
            + '<p>Every image, farthest first: <a href="outliers.csv">outliers.csv</a></p>')


def write_page(run_dir: Path, images: AuditImages, results: dict, pairs: list[Duplicate], ranking: LabelRanking,
               scores: np.ndarray, shown: int) -> Path:
    source = images.root or f"embedded:{results['data'].get('embedded')}"
    body = [f"<h1>transferkit audit</h1><p class=\"sub\">{escape(str(source))} &middot; {escape(str(run_dir))}</p>",
            '<div class="row">', counts_section(results), balance_section(images), "</div>",
            duplicates_section(images, pairs, shown), labels_section(images, ranking, shown),
            outliers_section(images, scores, shown),
            '<h2>Files</h2><p><a href="results.json">results.json</a> · <a href="config.yaml">config.yaml</a> · '
            '<a href="splits.json">splits.json</a></p>']
    html = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>transferkit audit</title>'
            f"<style>{STYLE}{EXTRA_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = Path(run_dir) / "audit.html"
    path.write_text(html, encoding="utf-8")
    return path
