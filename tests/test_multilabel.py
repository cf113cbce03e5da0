"""Multi-label classification (issue 26): manifest forms and their errors, thresholds, the one-vs-rest solved
head, planning's refusals, and one tiny fit through predict, Run.predict, export, the report, ensembles,
cv and serve's answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import app as cli
from transferkit.data.discover import discover_images
from transferkit.data.multilabel import multi_hot, positive_weights
from transferkit.errors import ConfigError
from transferkit.tasks.head_solver import solve_multilabel_head
from transferkit.training.thresholds import best_f1_threshold, choose_thresholds, f1_scores

CLASSES = ("blue", "green", "red")  # channel 2, 1, 0 lit


def write_multilabel_set(root: Path, sizes=(("train", 24), ("val", 12), ("test", 12)), seed: int = 0) -> Path:
    """Images whose lit colour channels are their labels; `labels.csv` (path,labels,split). Every class
    appears in every split."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,labels,split"]
    for split, n in sizes:
        for i in range(n):
            labels = {CLASSES[i % 3]} | {c for c in CLASSES if rng.random() < 0.3}
            pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            for name in labels:
                pixels[..., 2 - CLASSES.index(name)] += 150
            Image.fromarray(pixels).save(root / "img" / f"{split}{i}.png")
            rows.append(f"img/{split}{i}.png,{';'.join(sorted(labels))},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def write_images(root: Path, names) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)


# -- manifests ----------------------------------------------------------------------------------------
def test_labels_and_one_hot_manifests_give_the_same_label_sets(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    sets = tmp_path / "sets.csv"
    sets.write_text("path,labels,split\na.png,dog;cat,train\nb.png,,train\nc.png,dog,train\nd.png,cat,val\n")
    hot = tmp_path / "hot.csv"
    hot.write_text("path,dog,cat,split\na.png,1,1,train\nb.png,0,0,train\nc.png,1,0,train\nd.png,0,1,val\n")
    for manifest in (sets, hot):
        listing = discover_images(tmp_path, manifest=manifest)
        assert listing.kind == "multilabel" and listing.classes == ("cat", "dog")
        assert [label for _, label in listing.splits["train"]] == [0b11, 0, 0b10]  # empty = no label
        assert listing.splits["val"] == [(tmp_path / "d.png", 0b01)]
    single = tmp_path / "single.csv"
    single.write_text("path,label\na.png,dog\nb.png,cat\n")
    assert discover_images(tmp_path, manifest=single).kind == "classification"


@pytest.mark.parametrize(("text", "error", "match"), [
    ("path,labels,split\na.png,dog,train\nb.png,dog;bird,val\n", ValueError,
     r"labels \['bird'\] appear in val/test rows but on no train row.*line 3 \(b.png\)"),
    ("path,labels\na.png,dog\nmissing.png,cat\n", FileNotFoundError, r"line 3 \(missing.png\)"),
    ("path,labels\na.png,dog;cat\nb.png,cat\na.png,dog\n", ValueError,
     r"line 2 \(a.png\) says dog/cat in train, line 4 says dog in train"),
    ("path,dog,cat,split\na.png,1,0,train\nb.png,1,0,train\nc.png,1,0,val\n", ValueError,
     r"classes \['cat'\] have no positive train row"),
    ("path,dog,cat\na.png,1,yes\n", ValueError, r"line 2: column 'cat' is 'yes'; one-hot cells must be 0 or 1"),
])
def test_bad_multilabel_manifests_name_the_rows(tmp_path: Path, text: str, error, match: str) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    manifest = tmp_path / "labels.csv"
    manifest.write_text(text)
    with pytest.raises(error, match=match):
        discover_images(tmp_path, manifest=manifest)


def test_a_class_left_without_train_positives_by_the_split_is_named(tmp_path: Path) -> None:
    from transferkit.data.folders import scan_image_folder

    write_images(tmp_path, [f"{i}.png" for i in range(6)])
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,labels,split\n0.png,dog,train\n1.png,dog,train\n2.png,dog,train\n3.png,dog,train\n"
                        "4.png,dog;cat,val\n5.png,cat,train\n")
    with pytest.raises(ValueError, match=r"Classes \['cat'\] have no positive image in train"):
        scan_image_folder(tmp_path, manifest=manifest, val_fraction=0.0, test_fraction=0.5, seed=3)


def test_multi_hot_and_positive_weights() -> None:
    assert multi_hot(np.array([0b101, 0]), 3).tolist() == [[1, 0, 1], [0, 0, 0]]
    assert positive_weights([0b01, 0b01, 0b10, 0b11, 0b01], 2) == [pytest.approx(1 / 4), pytest.approx(1.5)]
    assert positive_weights([0b01] * 200 + [0b11], 2)[1] == 50.0  # capped


# -- thresholds and the solved head -----------------------------------------------------------------
def test_thresholds_maximise_validation_f1_halfway_between_scores() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    assert best_f1_threshold(scores, np.array([1, 1, 0, 0, 0])) == pytest.approx(0.55)
    assert best_f1_threshold(scores, np.array([1, 0, 1, 0, 0])) == pytest.approx(0.25)
    assert best_f1_threshold(scores, np.zeros(5)) == 0.5  # no positive: the default
    probs = np.array([[0.9, 0.4], [0.2, 0.45], [0.6, 0.1]])
    hot = np.array([[1, 1], [0, 1], [1, 0]])
    tuned = choose_thresholds(probs, hot)
    assert f1_scores(probs, hot, tuned) == (1.0, 1.0)
    assert f1_scores(probs, hot, [0.5, 0.5])[0] < 1.0


def test_one_vs_rest_solved_head_separates_each_label() -> None:
    rng = np.random.default_rng(0)
    hot = rng.integers(0, 2, (80, 3)).astype(np.float32)
    features = hot @ rng.normal(size=(3, 16)) * 3 + rng.normal(size=(80, 16)) * 0.3
    solution = solve_multilabel_head(features, hot, seed=0)
    logits = features @ solution.weight.T + solution.bias
    assert solution.weight.shape == (3, 16) and solution.folds == 5
    assert ((logits > 0) == hot.astype(bool)).mean() > 0.95


def test_rows_and_answers_apply_each_class_threshold_at_full_precision(tmp_path: Path) -> None:
    from transferkit.inference.outputs import multilabel_rows, write_multilabel_rows
    from transferkit.serving.answers import labels_answer

    probs = {0: np.array([0.3, 0.7, 0.123456789012]), 1: np.array([0.1, 0.9, 0.6])}
    rows = multilabel_rows(["a.png", "b.png", "c.png"], probs, [(2, "unreadable")], ["x", "y", "z"], [0.2, 0.8, 0.5])
    assert [r["labels"] for r in rows] == ["x", "y;z", ""] and rows[2]["error"] == "unreadable"
    assert multilabel_rows(["a.png"], probs, [], ["x", "y", "z"], None)[0]["labels"] == "y"  # no thresholds: 0.5
    write_multilabel_rows(tmp_path / "p.csv", rows, ["x", "y", "z"])
    written = read_csv(tmp_path / "p.csv")
    assert written[0]["p_z"] == "0.123456789012" and written[2]["p_x"] == ""
    assert labels_answer(probs[0], ["x", "y", "z"], [0.2, 0.8, 0.5]) == {
        "labels": ["x"], "probabilities": {"x": 0.3, "y": 0.7, "z": 0.123456789012}}


# -- planning -----------------------------------------------------------------------------------------
def test_planning_refuses_what_multilabel_cannot_do(tmp_path: Path, fast, image_folder) -> None:
    manifest = write_multilabel_set(tmp_path / "ml", sizes=(("train", 6), ("val", 3)))
    data = [f"data.root={manifest.parent}", f"data.manifest={manifest}"]
    with pytest.raises(ConfigError, match=r"checkpoint.monitor='val/loss' with finetune=auto"):  # it races on val/map
        cli.run(["fit", *fast, *data, "finetune=auto", "checkpoint.monitor=val/loss"])
    with pytest.raises(ConfigError, match="data.balance='weights'"):
        cli.run(["fit", *fast, *data, "data.balance=weights"])
    with pytest.raises(ConfigError, match="checkpoint.monitor='val/acc'"):
        cli.run(["fit", *fast, *data, "checkpoint.monitor=val/acc"])
    with pytest.raises(ConfigError, match="task.pos_weight='bogus' is unknown"):
        cli.run(["fit", *fast, *data, "task=multilabel", "task.pos_weight=bogus"])
    with pytest.raises(ConfigError, match="task=multilabel reads label sets"):
        cli.run(["fit", *fast, f"data.root={image_folder}", "task=multilabel"])


# -- one fit, and everything that reads it ----------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, test_resnet_weights) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("multilabel")
    manifest = write_multilabel_set(root / "data")
    import transferkit  # the Python API: the same config as the command line, a Run back

    run = transferkit.fit(overrides=["model.backbone=test_resnet", f"model.weights={test_resnet_weights}",
                                     "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
                                     "trainer.accelerator=cpu", "trainer.devices=1",
                                     "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"],
                          data={"root": str(manifest.parent), "manifest": str(manifest)}, run_dir=str(root / "run"))
    return run.results, manifest


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_fit_detects_multilabel_and_stores_tuned_thresholds(fitted) -> None:
    from sklearn.metrics import average_precision_score

    from transferkit.runtime.format import THRESHOLDS_KEY
    from transferkit.runtime.torch_files import read_torch_file
    from transferkit.tasks.loading import load_task

    results, _ = fitted
    assert results["task"] == "multilabel" and results["linear_probe"]["positive_weighted"]
    metrics = results["metrics"]
    assert {"test/map", "test/f1_macro", "test/f1_micro", "test/f1_macro_at_0.5", "test/ap_red"} <= set(metrics)
    stored = read_torch_file(results["best_checkpoint"])[THRESHOLDS_KEY]
    assert stored == pytest.approx(list(results["thresholds"]["thresholds"].values()), abs=1e-6)
    assert load_task(results["best_checkpoint"]).thresholds == stored
    run_dir = Path(results["run_dir"])
    rows = read_csv(run_dir / "report" / "predictions.csv")
    hot = np.array([[name in r["true"].split(";") for name in CLASSES] for r in rows])
    probs = np.array([[float(r[f"p_{name}"]) for name in CLASSES] for r in rows])
    assert average_precision_score(hot, probs, average="macro") == pytest.approx(metrics["test/map"], abs=1e-4)
    html = (run_dir / "report.html").read_text()
    assert "Per-class average precision" in html and (run_dir / "report" / "pr_curves.png").is_file()
    ap_rows = read_csv(run_dir / "report" / "per_class_ap.csv")
    assert {r["class"]: float(r["ap"]) for r in ap_rows} == pytest.approx(
        {c: metrics[f"test/ap_{c}"] for c in CLASSES}, abs=1e-4)
    (run_dir / "report.html").unlink()
    rebuilt = cli.run(["report", f"run={run_dir}"])  # the report command redraws it from the run's files
    assert "report/per_class_ap.csv" in rebuilt["files"] and (run_dir / "report.html").read_text() == html


@pytest.mark.slow
def test_predict_run_predict_and_export_agree(fitted, tmp_path: Path) -> None:
    import transferkit

    results, manifest = fitted
    images = sorted((manifest.parent / "img").glob("test*.png"))
    out = cli.run(["predict", f"ckpt_path={results['best_checkpoint']}", f"input={manifest.parent / 'img'}",
                   f"run_dir={tmp_path / 'predict'}"])
    rows = {Path(r["path"]).name: r for r in read_csv(Path(out["output"]))}
    assert list(next(iter(rows.values()))) == ["path", "labels", "p_blue", "p_green", "p_red", "error"]
    thresholds = results["thresholds"]["thresholds"]
    for row in rows.values():  # the set is exactly the classes at or above their threshold
        chosen = [c for c in CLASSES if float(row[f"p_{c}"]) >= thresholds[c]]
        assert (row["labels"].split(";") if row["labels"] else []) == chosen
        assert any(len(row[f"p_{c}"]) > 8 for c in CLASSES)  # not rounded to 4 decimals
    table = transferkit.load(results["run_dir"]).predict([str(p) for p in images])
    records = table.to_dict("records") if hasattr(table, "to_dict") else table
    for record in records:
        expected = rows[Path(record["path"]).name]
        assert record["labels"] == expected["labels"]
        assert record["p_red"] == pytest.approx(float(expected["p_red"]), abs=1e-6)
    export = cli.run(["export", f"ckpt_path={results['best_checkpoint']}", f"run_dir={tmp_path / 'export'}"])
    assert export["parity"]["passed"]
    meta = json.loads((tmp_path / "export" / "model.meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["thresholds"] == pytest.approx(list(thresholds.values()), abs=1e-6)
    exported = cli.run(["predict", f"ckpt_path={tmp_path / 'export' / 'model.onnx'}",
                        f"input={manifest.parent / 'img'}", f"run_dir={tmp_path / 'predict_onnx'}"])
    for row in read_csv(Path(exported["output"])):
        assert row["labels"] == rows[Path(row["path"]).name]["labels"]
        assert float(row["p_green"]) == pytest.approx(float(rows[Path(row["path"]).name]["p_green"]), abs=1e-5)


@pytest.mark.slow
def test_ensembles_and_serve_answers_use_sigmoids_and_thresholds(fitted, tmp_path: Path) -> None:
    from transferkit.inference.predictor import ensemble_predictor, probabilities, task_predictor
    from transferkit.serving.answers import answer_batch
    from transferkit.tasks.loading import load_ensemble, load_task

    results, manifest = fitted
    images = sorted((manifest.parent / "img").glob("test*.png"))[:4]
    single = task_predictor(load_task(results["best_checkpoint"]))
    pair = ensemble_predictor(load_ensemble([results["best_checkpoint"]] * 2)[0])
    one, _ = probabilities(single, images, 4, 0)
    two, _ = probabilities(pair, images, 4, 0)
    assert pair.kind == "multilabel" and pair.thresholds == pytest.approx(single.thresholds)
    for i in one:
        assert np.allclose(one[i], two[i], atol=1e-6) and not np.isclose(one[i].sum(), 1.0)
    answers = answer_batch(single, [Image.open(p).convert("RGB") for p in images], top_k=3)
    for answer, i in zip(answers, sorted(one)):
        assert answer["labels"] == [c for c, p, t in zip(CLASSES, one[i], single.thresholds) if p >= t]
        assert answer["probabilities"]["red"] == pytest.approx(float(one[i][2]), abs=1e-6)
    tested = cli.run(["test", f"ckpt_path=[{results['best_checkpoint']},{results['best_checkpoint']}]",
                      f"run_dir={tmp_path / 'test'}"])
    assert tested["metrics"]["test/map"] == pytest.approx(results["metrics"]["test/map"], abs=1e-5)


@pytest.mark.slow
def test_cv_trains_multilabel_folds_and_their_ensemble(fitted, tmp_path: Path, test_resnet_weights) -> None:
    _, manifest = fitted  # each fold trains its head by SGD on BCE (not the solved head)
    results = cli.run(["cv", "finetune.head_solver=sgd", "trainer.max_epochs=2", f"data.root={manifest.parent}", f"data.manifest={manifest}", "data.num_folds=2",
                       "model.backbone=test_resnet", f"model.weights={test_resnet_weights}", "data.image_size=32",
                       "data.batch_size=4", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
                       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "report.enabled=false",
                       f"run_dir={tmp_path / 'cv'}"])
    assert results["task"] == "multilabel"
    assert "test/map" in results["cv"]["mean"] and "test/map" in results["metrics"]
    for fold in results["cv"]["folds"]:
        assert fold["test/f1_macro"] >= 0.0 and fold["epochs"] == 2  # SGD epochs, not one solving epoch
