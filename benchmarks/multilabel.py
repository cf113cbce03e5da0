"""Multi-label classification on real photographs: tiles of 2 x 2 crops, labelled by which sources appear.

The sources are benchmarks/photo_sets.py's bundled real images (scikit-learn's china and flower photos,
matplotlib's grace_hopper photo, MRI slice and terrain elevation). Each source is cut into a grid of cells
and every cell goes to one split (`photo_sets.grid_cells` / `assign_cells`), so no region of a source is
seen in two splits. A tile draws its label set (each source with its own probability, so some labels are
rare; at least one), fills its four 32 px quadrants with crops of those sources (each at least once) from
the split's cells, and is labelled with that set. Per seed: 300 train, 100 val, 200 test tiles of 64 px,
written with `labels.csv` (`path,labels,split`).

Per seed, through the public CLI on CPU:

    python -m transferkit fit recipe=small_similar model.weights=charnet data.image_size=64 \\
        data.root=<set> data.manifest=<set>/labels.csv            # detected as task=multilabel
    python -m transferkit predict ckpt_path=<run>/checkpoints/best.ckpt input=<set>/test

Rows: `lbfgs` (the recipe as shipped: frozen backbone, one-vs-rest heads solved by L-BFGS), `sgd`
(`finetune.head_solver=sgd`: 15 epochs of BCE with per-class positive weights on cached features),
`lbfgs-unweighted` (`task=multilabel task.pos_weight=none`: plain BCE, no positive weights) and `auto`
(`finetune=auto`: the race of freeze, full-llrd and scratch scored on val/map; the run's model is the
ensemble of the finishers within 2 paired SE of the winner, with its own thresholds; predicted with
`ckpt_path=<run dir>`, which loads that ensemble), and the race's two paid candidates trained alone as
fixed strategies: `full-llrd` (`finetune=full finetune.backbone_lr_scale=1 finetune.layer_decay=0.75`) and
`scratch` (`finetune=full finetune.backbone_lr_scale=1 model.weights=none` with charnet's architecture and
input format: `model.backbone=resnet10t model.in_chans=1 data.mean=[0.449] data.std=[0.226]`).
Checked per run, from the files a user gets: results.json's `test/map` equals scikit-learn's
`average_precision_score(average="macro")` on predictions.csv's `p_<class>` columns (4 decimals), and
test macro F1 at the thresholds tuned on val (predictions.csv's `labels`) against F1 at 0.5.

    python benchmarks/multilabel.py [--seeds 0 1 2] [--rows lbfgs sgd] [--merge]

Writes `benchmarks/results/multilabel.json` (every run, each with the commit it ran at) and `multilabel.md`
(the docs' table). `--merge` keeps the runs already in multilabel.json that are not run now (row and seed).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import photo_sets  # noqa: E402 - benchmarks/ is not a package

log = logging.getLogger("multilabel_benchmark")
RESULTS = Path(__file__).resolve().parent / "results"
INCLUDE = {"china": 0.5, "flower": 0.4, "hopper": 0.3, "mri": 0.2, "terrain": 0.12}  # P(source in a tile)
TILES = {"train": 300, "val": 200, "test": 200}
QUADRANT = 32  # px; a tile is 2 x 2 quadrants
COMMON = ["recipe=small_similar", "model.weights=charnet", "data.image_size=64", "trainer.accelerator=cpu",
          "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
          "data.num_workers=0"]
ROWS = {"lbfgs": [], "sgd": ["finetune.head_solver=sgd"],
        "lbfgs-unweighted": ["task=multilabel", "task.pos_weight=none"], "auto": ["finetune=auto"],
        # the race's paid candidates trained alone, as fixed strategies (the same plans, the same seed)
        "full-llrd": ["finetune=full", "finetune.backbone_lr_scale=1", "finetune.layer_decay=0.75"],
        # model.weights=none alone would let the model follow the data (resnet50, 3 channels): the race's
        # scratch is charnet's architecture and input format from random init
        "scratch": ["finetune=full", "finetune.backbone_lr_scale=1", "model.weights=none", "model.backbone=resnet10t",
                    "model.in_chans=1", "data.mean=[0.449]", "data.std=[0.226]", "data.interpolation=bilinear"]}
FIRST_COMMIT = "379f77f"  # the commit the first three rows ran at (records without a `commit`)


def draw_labels(rng: np.random.Generator) -> list[str]:
    """A tile's label set: each source with its INCLUDE probability, at least one, at most four."""
    names = list(INCLUDE)
    chosen = [n for n in names if rng.random() < INCLUDE[n]][:4]
    return chosen or [names[int(rng.integers(len(names)))]]


def compose_tile(labels: list[str], cells: dict[str, list], sources: dict, rng: np.random.Generator) -> np.ndarray:
    """2 x 2 crops: every source of `labels` in at least one quadrant, the rest drawn from `labels`."""
    fill = list(labels) + [labels[int(rng.integers(len(labels)))] for _ in range(4 - len(labels))]
    fill = [fill[i] for i in rng.permutation(4)]
    quads = []
    for name in fill:
        cell = cells[name][int(rng.integers(len(cells[name])))]
        crop, _ = photo_sets.random_crop(sources[name], cell, rng)
        quads.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((QUADRANT, QUADRANT),
                                                                                  Image.Resampling.BILINEAR)))
    return np.vstack([np.hstack(quads[:2]), np.hstack(quads[2:])])


def build_set(out: Path, seed: int) -> Path:
    """`<out>/{train,val,test}/<n>.png` and `<out>/labels.csv` for this seed (regions split by cell)."""
    if (out / "done").is_file():
        return out
    rng = np.random.default_rng([200 + seed, 26])
    sources = photo_sets.load_sources()
    by_split: dict[str, dict[str, list]] = {s: {} for s in photo_sets.SPLITS}
    for name, image in sources.items():
        cells = photo_sets.textured(photo_sets.grid_cells(name, image.shape, 4, 4), sources)
        for split, chosen in photo_sets.assign_cells(cells, rng).items():
            by_split[split][name] = chosen
    rows = ["path,labels,split"]
    for split, count in TILES.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            labels = draw_labels(rng)
            Image.fromarray(compose_tile(labels, by_split[split], sources, rng)).save(out / split / f"{n:04d}.png")
            rows.append(f"{split}/{n:04d}.png,{';'.join(sorted(labels))},{split}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    (out / "done").write_text("ok")
    return out


def truth_of(root: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """Test file name -> its multi-hot row, from labels.csv."""
    with (root / "labels.csv").open(newline="") as handle:
        return {Path(r["path"]).name: np.array([c in r["labels"].split(";") for c in classes], dtype=int)
                for r in csv.DictReader(handle) if r["split"] == "test"}


def score_predictions(csv_path: Path, root: Path, classes: list[str]) -> dict:
    """mAP and macro/micro F1 (tuned thresholds and 0.5) from predictions.csv, computed by scikit-learn."""
    from sklearn.metrics import average_precision_score, f1_score

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = truth_of(root, classes)
    y = np.stack([truth[Path(r["path"]).name] for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    tuned = np.array([[c in r["labels"].split(";") for c in classes] for r in rows], dtype=int)
    half = (probs >= 0.5).astype(int)
    return {"map_sklearn": float(average_precision_score(y, probs, average="macro")),
            "f1_macro_tuned": float(f1_score(y, tuned, average="macro", zero_division=0)),
            "f1_macro_0.5": float(f1_score(y, half, average="macro", zero_division=0)),
            "f1_micro_tuned": float(f1_score(y, tuned, average="micro", zero_division=0)),
            "f1_micro_0.5": float(f1_score(y, half, average="micro", zero_division=0)),
            "test_images": len(rows), "positives": dict(zip(classes, y.sum(0).tolist()))}


def run_one(root: Path, row: str, seed: int, workdir: Path) -> dict:
    from transferkit.cli import app as cli

    run_dir = workdir / f"{row}-{seed}"
    start = time.perf_counter()
    common = [c for c in COMMON if c.split("=")[0] not in {o.split("=")[0] for o in ROWS[row]}]
    results = cli.run(["fit", *common, *ROWS[row], f"data.root={root}", f"data.manifest={root / 'labels.csv'}",
                       f"seed={seed}", f"run_dir={run_dir}"])
    fit_seconds = time.perf_counter() - start
    model = results["run_dir"] if row == "auto" else results["best_checkpoint"]  # auto: the run's ensemble
    predicted = cli.run(["predict", f"ckpt_path={model}", f"input={root / 'test'}",
                         f"run_dir={workdir / f'{row}-{seed}-predict'}"])
    classes = results["data"]["class_names"]
    scores = score_predictions(Path(predicted["output"]), root, classes)
    metrics = results["metrics"]
    record = {"row": row, "seed": seed, "task": results["task"], "fit_seconds": round(fit_seconds, 2),
              "test_map": metrics["test/map"], **scores,
              "map_equal_4dp": round(metrics["test/map"], 4) == round(scores["map_sklearn"], 4),
              "results_f1_macro": metrics["test/f1_macro"], "results_f1_macro_at_0.5": metrics["test/f1_macro_at_0.5"],
              "thresholds": results["thresholds"]["thresholds"],
              "per_class_ap": {c: metrics.get(f"test/ap_{c}") for c in classes},
              "monitor": results["monitor"]["metric"], "epochs": results["epochs"], "commit": commit()}
    if "auto" in results:
        auto = results["auto"]
        record["auto"] = {"winner": auto["winner"], "ensemble": auto.get("ensemble", [auto["winner"]]),
                          "winner_test_map": auto.get("winner_metrics", metrics)["test/map"],
                          "val_map": {c["name"]: c["rungs"][-1]["score"] for c in auto["candidates"]},
                          "behind": {c["name"]: c["rungs"][-1].get("verdict", {}).get("behind")
                                     for c in auto["candidates"]},
                          "se_behind": {c["name"]: c["rungs"][-1].get("verdict", {}).get("se_behind")
                                        for c in auto["candidates"]}}
    log.info("%s seed %d: test mAP %.4f (sklearn %.4f), macro F1 tuned %.4f vs 0.5 %.4f (%.0f s)", row, seed,
             record["test_map"], record["map_sklearn"], record["f1_macro_tuned"], record["f1_macro_0.5"], fit_seconds)
    return record


def commit() -> str:
    """The commit this run measured (`+dirty:<paths>` with uncommitted changes under transferkit/)."""
    here = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "transferkit", "benchmarks/multilabel.py"],
                           cwd=here, capture_output=True, text=True).stdout.strip()
    paths = sorted(line[3:] for line in dirty.splitlines())
    return head.strip() + (f"+dirty:{','.join(paths)}" if paths else "")


def stats(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def markdown(records: list[dict], rows: list[str], seeds: list[int]) -> str:
    lines = [f"Test metrics in % (mean ± std over seeds {seeds}); 5 labels (sources), {TILES['train']} train / "
             f"{TILES['val']} val / {TILES['test']} test tiles of 64 px, `recipe=small_similar model.weights=charnet`.",
             "", "| row | mAP (results.json) | mAP (sklearn, predictions.csv) | equal to 4 dp | macro F1 tuned | "
             "macro F1 at 0.5 | micro F1 tuned | micro F1 at 0.5 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = [r for r in records if r["row"] == row]
        equal = sum(r["map_equal_4dp"] for r in runs)
        lines.append(f"| {row} | {stats([r['test_map'] for r in runs])} | {stats([r['map_sklearn'] for r in runs])} | "
                     f"{equal}/{len(runs)} | {stats([r['f1_macro_tuned'] for r in runs])} | "
                     f"{stats([r['f1_macro_0.5'] for r in runs])} | {stats([r['f1_micro_tuned'] for r in runs])} | "
                     f"{stats([r['f1_micro_0.5'] for r in runs])} |")
    commits = {row: sorted({r.get("commit", FIRST_COMMIT).split("+")[0] for r in records if r["row"] == row})
               for row in rows}
    dirty = sorted({p for r in records for p in r.get("commit", "").partition("+dirty:")[2].split(",") if p})
    lines += ["", "Commits: " + "; ".join(f"{row} {', '.join(c)}" for row, c in commits.items()) + "."
              + (f" Uncommitted in the working tree then (another engineer's work): {', '.join(dirty)}." if dirty else "")]
    return "\n".join(lines) + "\n" + auto_markdown(records, rows)


def auto_markdown(records: list[dict], rows: list[str]) -> str:
    """finetune=auto against each fixed row: test mAP difference per seed (same set), and its picks."""
    autos = {r["seed"]: r for r in records if r["row"] == "auto"}
    if not autos:
        return ""
    lines = ["", "finetune=auto minus each fixed row, test mAP in points (paired by seed: the same tiles), "
             "mean ± std over seeds:", "", "| fixed row | auto − row |", "|---|---|"]
    for row in [r for r in rows if r != "auto"]:
        pairs = [autos[r["seed"]]["test_map"] - r["test_map"] for r in records if r["row"] == row and r["seed"] in autos]
        if pairs:
            lines.append(f"| {row} | {stats(pairs)} |")
    lines += ["", "| seed | winner | ensemble | val mAP per candidate | test mAP: ensemble / winner alone |",
              "|---|---|---|---|---|"]
    for seed, r in sorted(autos.items()):
        auto = r["auto"]
        val = ", ".join(f"{n} {v:.3f}" for n, v in auto["val_map"].items())
        lines.append(f"| {seed} | {auto['winner']} | {', '.join(auto['ensemble'])} | {val} | "
                     f"{100 * r['test_map']:.1f} / {100 * auto['winner_test_map']:.1f} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import pytorch_lightning
    import sklearn
    import torch

    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "lightning": pytorch_lightning.__version__, "sklearn": sklearn.__version__}


def auto_summary(records: list[dict]) -> dict:
    """The docs' numbers: auto's test mAP and its paired difference to each fixed row (points, over seeds)."""
    autos = {r["seed"]: r for r in records if r["row"] == "auto"}
    if not autos:
        return {}
    summary = {"map_mean_pt": round(100 * statistics.fmean(r["test_map"] for r in autos.values()), 1),
               "map_std_pt": round(100 * statistics.stdev([r["test_map"] for r in autos.values()]), 1)
               if len(autos) > 1 else 0.0, "minus": {}}
    for row in sorted({r["row"] for r in records} - {"auto"}):
        pairs = [100 * (autos[r["seed"]]["test_map"] - r["test_map"]) for r in records
                 if r["row"] == row and r["seed"] in autos]
        if pairs:
            summary["minus"][row] = {"mean_pt": round(statistics.fmean(pairs), 1),
                                     "std_pt": round(statistics.stdev(pairs), 1) if len(pairs) > 1 else 0.0}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="keep multilabel.json's runs of the rows not run now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="multilabel-"))
    start = time.perf_counter()
    records = [run_one(build_set(workdir / f"set-{seed}", seed), row, seed, workdir)
               for seed in args.seeds for row in args.rows]
    rows, earlier = list(args.rows), {}
    if args.merge and (args.out / "multilabel.json").is_file():
        before = json.loads((args.out / "multilabel.json").read_text())
        earlier = {k: before.get(k) for k in ("command", "environment", "wall_seconds", "earlier")}
        kept = [r for r in before["runs"] if r["row"] not in rows or r["seed"] not in args.seeds]
        records = [{**r, "commit": r.get("commit", FIRST_COMMIT)} for r in kept] + records
        rows = [r for r in ROWS if r in {k["row"] for k in records}]
    table = markdown(records, rows, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "multilabel", "command": "python benchmarks/multilabel.py " + " ".join(argv or sys.argv[1:]),
               "seeds": args.seeds, "rows": {r: ROWS[r] for r in rows}, "common": COMMON, "tiles": TILES,
               "include_probability": INCLUDE, "environment": environment(),
               "wall_seconds": round(time.perf_counter() - start, 1), "runs": records, "table": table,
               "auto_summary": auto_summary(records), **({"earlier": earlier} if earlier else {})}
    (args.out / "multilabel.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "multilabel.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
