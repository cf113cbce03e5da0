"""The audit of a scanned data set: duplicates, label issues, outliers, the leak's effect on a model;
the CSV files and audit.html in the run directory, the results (the command writes results.json)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transferkit.data.curation import curation_summary
from transferkit.errors import ConfigError
from transferkit.evaluation.audit import duplicates, label_issues, outliers
from transferkit.evaluation.audit.duplicates import find_duplicates
from transferkit.evaluation.audit.features import frozen_features
from transferkit.evaluation.audit.fold_outputs import cv_probabilities
from transferkit.evaluation.audit.images import SPLITS, AuditImages, audit_images
from transferkit.evaluation.audit.leaks import leak_effect, leaked_images
from transferkit.evaluation.audit.page import write_page
from transferkit.evaluation.audit.probabilities import solved_head_probabilities
from transferkit.evaluation.reports.run_report import write_csv
from transferkit.inference.spec import CheckpointSpec
from transferkit.planning.spec import RunSpec

log = logging.getLogger("transferkit")


def data_record(spec: RunSpec, datamodule, images: AuditImages) -> dict:
    sizes = {f"{s}_size": int((images.splits == s).sum()) for s in SPLITS}
    return {"root": spec.data.root, "embedded": spec.data.embedded, "num_classes": len(images.class_names),
            "class_names": images.class_names, **sizes,
            "skipped_files": [[str(p), r] for p, r in getattr(datamodule, "skipped", [])],
            **curation_summary(getattr(datamodule, "split_record", {}))}


def run_audit(spec: RunSpec, datamodule, options: dict, run_dir: Path, checkpoint: CheckpointSpec | None = None,
              cv_dir: str | None = None) -> dict:
    """Audit the scanned `datamodule` into `run_dir`; returns the results (counts, settings, leak effect)."""
    start = time.perf_counter()
    images = audit_images(datamodule)
    features, tiny = frozen_features(spec, datamodule, images)
    pairs, search = find_duplicates(images, features, tiny, options)
    oos = cv_probabilities(cv_dir, images) if cv_dir else solved_head_probabilities(
        features, images.labels, images.class_names, options["folds"], spec.seed)
    scores = outliers.outlier_scores(features, images.labels, len(images.class_names), options["outlier_neighbours"])
    flagged = outliers.flag_outliers(scores)
    ranking = label_issues.rank_label_issues(oos.probs, images.labels, flagged)
    leaked = leaked_images(images, pairs)
    files = {"duplicates_csv": write_csv(run_dir / "duplicates.csv", duplicates.COLUMNS,
                                         duplicates.duplicate_rows(images, pairs)),
             "label_issues_csv": write_csv(run_dir / "label_issues.csv", label_issues.COLUMNS, label_issues.label_rows(
                 images.names, images.splits, images.labels, images.class_names, ranking)),
             "outliers_csv": write_csv(run_dir / "outliers.csv", outliers.COLUMNS,
                                       outliers.outlier_rows(images.names, images.splits, scores))}
    counts = {"images": len(images), "duplicate_pairs": len(pairs),
              "exact_pairs": sum(p.kind == "exact" for p in pairs), "near_pairs": sum(p.kind == "near" for p in pairs),
              "cross_split_pairs": sum(p.cross for p in pairs),
              "leaked_images": {split: len(found) for split, found in leaked.items()},
              "flagged_labels": int(ranking.flagged.sum()), "outliers": int(flagged.sum())}
    results = {"command": "audit", "task": spec.task.kind, "backbone": spec.model.backbone,
               "weights": str(spec.model.options.get("weights")), "data": data_record(spec, datamodule, images),
               "counts": counts, "duplicates": search,
               "labels": {**oos.record, "thresholds": dict(zip(images.class_names, ranking.thresholds.round(4).tolist()))},
               "outliers": {"neighbours": options["outlier_neighbours"], "rule": "score > median + 5 x MAD"},
               "leak": None, "run_dir": str(run_dir)}
    if checkpoint is not None:
        results["leak"] = leak_effect(checkpoint, images, leaked.get("test", []), spec.data.batch_size, 0)
    results["wall_seconds"] = round(time.perf_counter() - start, 2)
    files["html"] = write_page(run_dir, images, results, pairs, ranking, scores, options["shown"])
    results["files"] = {key: str(path) for key, path in files.items()}
    log.info("audit: %d duplicate pairs (%d across splits), %d flagged labels, %d outliers: %s", len(pairs),
             counts["cross_split_pairs"], counts["flagged_labels"], counts["outliers"], files["html"])
    return results


def check_audit_task(kind: str) -> None:
    """Audit reads class labels; segmentation masks have none."""
    if kind != "classification":
        raise ConfigError(f"task.kind={kind!r}: audit checks classification data (labelled images); use "
                          "task=classification.")
