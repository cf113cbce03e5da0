"""`audit`: its output files on a tiny folder with planted faults, its bad-input errors, the folder left
byte-identical; and the pieces (alignment, label ranking, outliers) on hand-made inputs."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.evaluation.audit.alignment import aligned_distances
from transferkit.evaluation.audit.label_issues import rank_label_issues
from transferkit.evaluation.audit.options import audit_options
from transferkit.evaluation.audit.outliers import outlier_scores

CLASSES = ("cat", "dog", "fox")


def picture(seed: int, label: int, size: int = 32) -> Image.Image:
    """A smooth random picture (8 x 8 noise, upsampled) tinted by its class."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8)
    small[..., label] += 100  # at most 199: brightened by 1.2, no channel clips
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def planted_folder(root: Path) -> Path:
    """train/val/test of three classes, with an exact copy (as BMP) of a train image in test, a brightened
    copy of another in val, a mislabelled image and a noise image."""
    seed = 0
    for split, count in (("train", 8), ("val", 3), ("test", 3)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                picture(seed := seed + 1, label).save(root / split / name / f"{i}.png")
    Image.open(root / "train/cat/0.png").save(root / "test/cat/copy.bmp")
    ImageEnhance.Brightness(Image.open(root / "train/dog/1.png")).enhance(1.2).save(root / "val/dog/brighter.png")
    picture(999, CLASSES.index("fox")).save(root / "train/cat/actually_fox.png")
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        root / "train/dog/noise.png")
    return root


def folder_state(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def audit_args(root: Path, weights: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["audit", f"data.root={root}", "model.backbone=test_resnet", f"model.weights={weights}",
            "model.in_chans=3", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
            "audit.folds=2", f"run_dir={run_dir}", *extra]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, test_resnet_weights) -> tuple[Path, Path, dict, dict]:
    root = planted_folder(tmp_path_factory.mktemp("data") / "images")
    before = folder_state(root)
    run_dir = tmp_path_factory.mktemp("runs") / "audit"
    results = cli.run(audit_args(root, test_resnet_weights, run_dir))
    return root, run_dir, results, before


def test_duplicates_csv_lists_the_planted_copies_cross_split_first(audited):
    _, run_dir, _, _ = audited
    columns, rows = read_csv(run_dir / "duplicates.csv")
    assert columns == ["path_a", "path_b", "split_a", "split_b", "kind", "distance"]
    pairs = {(r["path_a"], r["path_b"]): r for r in rows}
    exact = pairs[("train/cat/0.png", "test/cat/copy.bmp")]  # same pixels, another format: exact
    assert (exact["split_a"], exact["split_b"], exact["kind"], float(exact["distance"])) == ("train", "test", "exact", 0.0)
    near = pairs[("train/dog/1.png", "val/dog/brighter.png")]
    assert near["kind"] == "near" and float(near["distance"]) <= 0.007
    crossing = [r["split_a"] != r["split_b"] for r in rows]
    assert crossing == sorted(crossing, reverse=True)  # every cross-split pair before any other


def test_label_issues_csv_ranks_every_labelled_image(audited):
    _, run_dir, results, _ = audited
    columns, rows = read_csv(run_dir / "label_issues.csv")
    assert columns == ["path", "split", "given", "suggested", "score"]
    assert len(rows) == results["counts"]["images"] == len({r["path"] for r in rows})
    assert {r["given"] for r in rows} <= set(CLASSES) and {r["suggested"] for r in rows} <= set(CLASSES)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert results["labels"]["source"] == "k-fold solved head" and results["labels"]["folds"] == 2


def test_outliers_csv_scores_every_image_farthest_first(audited):
    _, run_dir, results, _ = audited
    columns, rows = read_csv(run_dir / "outliers.csv")
    assert columns == ["path", "split", "score"]
    assert len(rows) == results["counts"]["images"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_results_json_html_and_an_untouched_folder(audited):
    root, run_dir, results, before = audited
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["counts"] == results["counts"] and saved["command"] == "audit"
    counts = saved["counts"]
    assert counts["exact_pairs"] >= 1 and counts["near_pairs"] >= 1 and counts["cross_split_pairs"] >= 2
    assert counts["leaked_images"] == {"val": 1, "test": 1}
    assert saved["leak"] is None  # no ckpt_path: no model to measure the leak on
    assert saved["duplicates"]["near_threshold"] == 0.007
    html = (run_dir / "audit.html").read_text()
    assert "test/cat/copy.bmp" in html and "data:image/png;base64," in html and "<script" not in html
    for name in ("config.yaml", "spec.json", "splits.json"):
        assert (run_dir / name).is_file()
    assert folder_state(root) == before


def test_audit_html_opens_in_chromium_without_console_errors(audited):
    from chromium import console_messages

    _, run_dir, _, _ = audited
    problems, shown = console_messages(run_dir / "audit.html")
    assert problems == [] and shown >= 4


@pytest.mark.parametrize("extra, match", [
    (["audit.folds=1"], "audit.folds=1"),
    (["audit.near_threshold=3"], "audit.near_threshold=3"),
    (["+audit.colour=red"], "audit.colour"),
    (["task=segmentation"], "task.kind='segmentation'"),
])
def test_bad_audit_settings_name_their_key(tmp_path, test_resnet_weights, extra, match):
    root = planted_folder(tmp_path / "images")
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        cli.run(audit_args(root, test_resnet_weights, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_empty_folder_one_class_and_unreadable_files_are_refused(tmp_path, test_resnet_weights):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        cli.run(audit_args(tmp_path / "empty", test_resnet_weights, tmp_path / "r1"))
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    for i in range(4):
        picture(i, 0).save(one / f"{i}.png")
    with pytest.raises(ValueError, match="at least 2 class folders"):
        cli.run(audit_args(tmp_path / "one", test_resnet_weights, tmp_path / "r2"))
    root = planted_folder(tmp_path / "images")
    for i in range(3):
        (root / "train" / "cat" / f"broken{i}.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken0\.png.*\n.*broken1\.png|broken1\.png"):
        cli.run(audit_args(root, test_resnet_weights, tmp_path / "r3"))
    for name in ("r1", "r2", "r3"):
        assert not (tmp_path / name).exists()  # nothing written for data that cannot be audited


def test_a_cv_directory_of_other_data_is_refused(tmp_path, test_resnet_weights):
    root = planted_folder(tmp_path / "images")
    fold = tmp_path / "cv" / "folds" / "0"
    fold.mkdir(parents=True)
    np.savez(fold / "audit_outputs.npz", names=np.array(["train/cat/0.png"]), digests=np.array([b"x" * 16]),
             splits=np.array(["val"]), probs=np.ones((1, 2)) / 2, class_names=np.array(["ant", "bee"]),
             root=np.array(str(root)))
    with pytest.raises(ConfigError, match=r"classes \['ant', 'bee'\]"):
        cli.run(audit_args(root, test_resnet_weights, tmp_path / "run", f"cv={tmp_path / 'cv'}"))
    with pytest.raises(ConfigError, match="holds no folds"):
        cli.run(audit_args(root, test_resnet_weights, tmp_path / "run2", f"cv={tmp_path}"))


# -- the pieces ---------------------------------------------------------------------------------
def test_a_cropped_brightened_copy_is_near_and_another_picture_is_not():
    base = np.asarray(picture(1, 0).convert("L"), dtype=np.float32)
    cropped = Image.fromarray(base.astype(np.uint8)).crop((1, 1, 31, 30)).resize((32, 32), Image.Resampling.BILINEAR)
    brighter = np.clip(np.asarray(cropped, dtype=np.float32) * 1.2 + 10, 0, 255)
    other = np.asarray(picture(2, 0).convert("L"), dtype=np.float32)
    distance = aligned_distances(np.stack([base, brighter, other]), np.array([[0, 1], [0, 2]]))
    assert distance[0] < 0.007 < 0.05 < distance[1]


def test_confident_learning_ranks_the_flipped_label_first_and_outliers_last():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.05, 0.95], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 1, 0, 1])  # image 4 looks like class 1 but is labelled 0
    ranking = rank_label_issues(probs, labels, outlier=np.array([False] * 5 + [True]))
    assert ranking.order[0] == 4 and ranking.order[-1] == 5
    assert ranking.flagged.tolist() == [False, False, False, False, True, False]
    assert ranking.suggested[4] == 1 and ranking.score[4] > 0.9


def test_an_image_far_from_every_class_scores_highest():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:2] * 5
    features = np.concatenate([centres[0] + rng.normal(0, 0.3, (10, 4)), centres[1] + rng.normal(0, 0.3, (10, 4)),
                               [[0, 0, 5, 5]]])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.array([0] * 10 + [1] * 10 + [0])
    assert outlier_scores(features, labels, 2, k=3).argmax() == 20


def test_audit_options_defaults_and_errors():
    assert audit_options(None)["near_threshold"] == 0.007
    with pytest.raises(ConfigError, match="audit.shown"):
        audit_options({"shown": -1})


@pytest.mark.slow
def test_with_a_checkpoint_the_leak_is_measured_and_cv_probabilities_score_the_labels(tmp_path, fast,
                                                                                     test_resnet_weights):
    import transferkit

    root = planted_folder(tmp_path / "images")
    fit = cli.run(["fit", *fast, f"data.root={root}"])
    run = transferkit.audit(overrides=audit_args(root, test_resnet_weights, tmp_path / "leak",
                                                 f"ckpt_path={fit['best_checkpoint']}")[1:])
    leak = run.results["leak"]
    assert leak["test_images"] == 10 and leak["leaked_test_images"] == 1  # test/cat/copy.bmp
    assert 0 <= leak["test_acc_without_leaked"] <= 1 and leak["test_acc_on_leaked"] in (0.0, 1.0)
    assert "test acc without leaked images" in (run.dir / "audit.html").read_text()

    fast_cv = [o for o in fast if not o.startswith("run_dir=")]
    cv = cli.run(["cv", *fast_cv, f"data.root={root}", "data.num_folds=2", f"run_dir={tmp_path / 'cv'}"])
    assert all((Path(cv["run_dir"]) / "folds" / str(k) / "audit_outputs.npz").is_file() for k in range(2))
    scored = cli.run(audit_args(root, test_resnet_weights, tmp_path / "from_cv", f"cv={cv['run_dir']}"))
    assert scored["labels"]["source"] == f"cv run {cv['run_dir']}" and scored["labels"]["folds"] == 2
    _, rows = read_csv(tmp_path / "from_cv" / "label_issues.csv")
    assert len(rows) == scored["counts"]["images"]
