"""`report.html`: one self-contained page (inline CSS, no script, relative links) over a run's
results and the report's pictures and tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

from transferkit.evaluation.reports.race_section import race_section

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{background:#f6f8fa;border-radius:3px}code{padding:.1em .3em}pre{padding:.8em;overflow:auto}
img{max-width:100%;border:1px solid #eee}.row img{max-width:520px}.figs{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.row h2{margin-top:.6em}
.bad{color:#b00020}
"""
KEY_METRICS_FIRST = ("test/", "best/", "val/")


def cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def link(run_dir: Path, path: Path | str, text: str | None = None) -> str:
    relative = Path(path).relative_to(run_dir).as_posix() if Path(path).is_absolute() else str(path)
    return f'<a href="{escape(relative)}">{escape(text or relative)}</a>'


def figure(run_dir: Path, path: Path, alt: str) -> str:
    relative = path.relative_to(run_dir).as_posix()
    return f'<a href="{escape(relative)}"><img src="{escape(relative)}" alt="{escape(alt)}"></a>'


def wall_time(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    minutes, rest = divmod(float(seconds), 60)
    return f"{int(minutes)} min {rest:04.1f} s" if minutes else f"{rest:.1f} s"


def plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def overview(results: dict, command: str) -> str:
    data = results.get("data") or {}
    source = data.get("root") or (f"embedded:{data['embedded']}" if data.get("embedded") else None)
    rows = [("command", f"<code>{escape(command)}</code>"), ("status", escape(str(results.get("status", "")))),
            ("task", escape(str(results.get("task", "")))), ("recipe", escape(str(results.get("recipe") or "-"))),
            ("data", escape(str(source or "-"))), ("backbone", escape(str(results.get("backbone", "-")))),
            ("weights", escape(str(results.get("weights", "-")))),
            ("strategy", escape(str(results.get("strategy", "-")))),
            ("epochs", escape(str(results.get("epochs", "-")))),
            ("wall time", escape(wall_time(results.get("wall_seconds")))),
            ("started", escape(str(results.get("started", "-"))))]
    if results.get("checkpoint"):
        rows.append(("checkpoint", escape(str(results["checkpoint"]))))
    return '<div style="max-width:34em"><h2>Run</h2><table>' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table></div>"


def metrics_section(results: dict) -> str:
    metrics = results.get("metrics") or {}
    headline = [k for k in results.get("headline") or [] if k in metrics]  # long-tailed: balanced acc, macro F1
    order = headline + sorted((k for k in metrics if k not in headline),
                              key=lambda k: (next((i for i, p in enumerate(KEY_METRICS_FIRST) if k.startswith(p)),
                                                  len(KEY_METRICS_FIRST)), k))
    return "<div><h2>Metrics</h2>" + table(["metric", "value"], [(k, float(metrics[k])) for k in order]) + "</div>"


def data_section(results: dict) -> str:
    data = results.get("data") or {}
    sizes = [(split, data[f"{split}_size"]) for split in ("train", "val", "test") if f"{split}_size" in data]
    names = data.get("class_names") or []
    text = table(["split", "images"], sizes)
    if names:
        shown = ", ".join(map(str, names[:40])) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        text += f'<p style="max-width:22em">{len(names)} classes: {escape(shown)}</p>'
    skipped = data.get("skipped_files") or []
    if skipped:
        text += f"<p class=\"bad\">{len(skipped)} unreadable file(s) skipped (see results.json).</p>"
    return "<div><h2>Data</h2>" + text + "</div>"


def plan_section(results: dict) -> str:
    plan, finetune = results.get("plan") or {}, results.get("finetune") or {}
    if not plan and not finetune:
        return ""
    parts = ["<h2>Plan and strategy</h2>", '<div class="row">']
    if finetune:
        parts.append(table(["finetune", "value"], [(k, plain(v)) for k, v in finetune.items()]))
    if plan.get("input"):
        parts.append(table(["input", "value"], [(k, plain(v)) for k, v in plan["input"].items()]))
    parts.append("</div>")
    notes = list(plan.get("notes") or [])
    if notes:
        parts.append("<ul>" + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>")
    auto = results.get("auto")
    if auto:
        parts.append(f"<p>finetune=auto race winner: <b>{escape(str(auto.get('winner')))}</b> "
                     f"({len(auto.get('candidates', []))} candidates, {auto.get('seconds')} s)</p>" + race_section(auto))
    probe = results.get("linear_probe")
    if probe:
        parts.append(f"<p>Solved head ({escape(str(probe.get('solver')))}): C={probe.get('c')}, "
                     f"cv acc {max((probe.get('cv_acc') or {0: 0}).values()):.4f}</p>")
    params = results.get("params")
    if params:
        parts.append(f"<p>Parameters: {params.get('trainable'):,} trainable of {params.get('total'):,}.</p>")
    return "".join(parts)


def classification_sections(run_dir: Path, files: dict, tables: dict) -> str:
    per_class = [(r["class"], r["precision"], r["recall"], r["f1"], r["support"]) for r in tables["per_class"]]
    top = [(k + 1, r["index"], r["path"] or "-", r["true"], r["predicted"], r["probability"])
           for k, r in enumerate(tables["top_losses"])]
    return "".join([
        recall_section(tables.get("recall") or []),
        '<div class="row"><div><h2>Confusion matrix (test)</h2>',
        figure(run_dir, files["confusion_png"], "confusion matrix"),
        f"<p>{link(run_dir, files['confusion_csv'])} (rows: true class, columns: predicted)</p></div>",
        "<div><h2>Per class (test)</h2>", table(["class", "precision", "recall", "F1", "support"], per_class),
        f"<p>{link(run_dir, files['per_class_csv'])}<br>all test images: {link(run_dir, files['predictions_csv'])}</p>",
        "</div></div>",
        "<h2>Top losses (test)</h2>", figure(run_dir, files["top_losses"], "top losses"),
        table(["#", "index", "path", "true", "predicted", "probability"], top),
    ])


def multilabel_sections(run_dir: Path, files: dict, tables: dict) -> str:
    rows = [(r["class"], "n/a" if r["ap"] is None else r["ap"], r["support"], r["threshold"], r["precision"],
             r["recall"], r["f1"]) for r in tables["per_class_ap"]]
    return "".join([
        "<h2>Per-class average precision (test), lowest first</h2>", '<div class="figs">',
        figure(run_dir, files["pr_png"], "precision-recall curves"),
        table(["class", "AP", "support", "threshold", "precision", "recall", "F1"], rows), "</div>",
        f"<p>{link(run_dir, files['ap_csv'])} (precision, recall and F1 at each class's tuned threshold)<br>"
        f"all test images: {link(run_dir, files['predictions_csv'])}</p>",
    ])


def recall_section(rows: list[dict]) -> str:
    """Per-class recall, lowest first; classes the model never predicts are flagged."""
    if not rows:
        return ""
    never = [r["class"] for r in rows if r["never_predicted"]]
    flag = (f'<p class="bad">Never predicted on test: {escape(", ".join(never))}. Accuracy hides this; see '
            "balanced accuracy (mean recall) and data.balance / logit_adjust.</p>" if never else "")
    shown = [(r["class"], r["recall"], r["support"], r["predicted"], "never predicted" if r["never_predicted"] else "")
             for r in rows]
    return ("<div><h2>Recall per class (test), lowest first</h2>" + flag
            + table(["class", "recall", "support", "predicted", ""], shown) + "</div>")


def segmentation_sections(run_dir: Path, files: dict, tables: dict) -> str:
    rows = [(r["class"], "n/a" if r["iou"] is None else float(r["iou"]), r["true_pixels"], r["predicted_pixels"])
            for r in tables["per_class_iou"]]
    grid = run_dir / "seg_grid.png"
    return "".join([
        "<h2>Per-class IoU (test)</h2>",
        '<div class="figs">', figure(run_dir, files["iou_png"], "per-class IoU"),
        table(["class", "IoU", "true pixels", "predicted pixels"], rows), "</div>",
        f"<p>{link(run_dir, files['iou_csv'])}</p>",
        "<h2>Pixel confusion matrix (test)</h2>", figure(run_dir, files["confusion_png"], "confusion matrix"),
        f"<p>{link(run_dir, files['confusion_csv'])}</p>",
        *(["<h2>Validation samples</h2>", figure(run_dir, grid, "segmentation grid")] if grid.is_file() else []),
    ])


def calibration_section(run_dir: Path, files: dict, results: dict) -> str:
    """`calibration=temperature`: the temperature, test ECE and NLL before and after (95 % bootstrap
    intervals) and the reliability diagrams."""
    calibration = results.get("calibration") or {}
    if "reliability" not in files or "temperature" not in calibration:
        return ""
    metrics, ci = results.get("metrics") or {}, calibration.get("ci95") or {}
    rows = [(key, metrics.get(key), "[{:.4f}, {:.4f}]".format(*ci[key]) if key in ci else "")
            for key in ("test/ece_uncalibrated", "test/ece", "test/nll_uncalibrated", "test/nll")]
    return "".join([
        f"<h2>Calibration (test)</h2><p>Temperature T = {float(calibration['temperature']):.3f}, fitted on the "
        f"{escape(str(calibration.get('val_images', '')))} validation images; predict divides the logits by it "
        "(<code>calibration=none</code> turns it off). Accuracy is unchanged.</p>",
        '<div class="figs">', figure(run_dir, files["reliability"], "reliability diagrams"),
        table(["metric", "value", "95 % bootstrap interval"], rows), "</div>",
    ])


def files_section(run_dir: Path) -> str:
    names = ["config.yaml", "results.json", "metrics.csv", "splits.json", "checkpoints/best.ckpt",
             "checkpoints/last.ckpt"]
    present = [link(run_dir, name) for name in names if (run_dir / name).is_file()]
    return "<h2>Files</h2><p>" + " · ".join(present) + "</p>" if present else ""


def render_page(run_dir: Path, results: dict, command: str, task: str, files: dict, tables: dict) -> str:
    run_dir = Path(run_dir)
    body = [f"<h1>transferkit {escape(str(results.get('command', 'run')))} report</h1>",
            f'<p class="sub">{escape(str(run_dir))}</p>',
            '<div class="row">', overview(results, command), metrics_section(results), data_section(results), "</div>"]
    if "curves" in files:
        body += ["<h2>Training curves</h2>", figure(run_dir, files["curves"], "loss and metric per epoch")]
    sections = {"segmentation": segmentation_sections, "multilabel": multilabel_sections}
    body.append(sections.get(task, classification_sections)(run_dir, files, tables))
    body += [calibration_section(run_dir, files, results), plan_section(results), files_section(run_dir)]
    config = run_dir / "config.yaml"
    if config.is_file():
        body.append(f"<details><summary>config.yaml</summary><pre>{escape(config.read_text())}</pre></details>")
    title = f"transferkit report: {run_dir.name}"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
