"""Does the house backbone transfer? Real handwritten digits, with all labels and with 10 per class.

Two measurements, both offline on CPU:

* ``probe``: frozen backbone features (eval mode) of scikit-learn's digits, upsampled to the
  backbone's input size and normalised as recorded in its JSON, + a logistic-regression head
  trained on the fixed train split, scored on the fixed test split; also with only 10 labelled
  images per class (mean over ``--seeds`` draws). ``--update-record`` writes the numbers into the
  backbone's JSON record (how ``transferkit/assets/charnet.json`` got its ``transfer`` entry).
* ``fit``: the README experiment through the public CLI. 10 labelled digits per class (and 10 per
  class for validation) are written as an image folder beside the full test split, then
  ``python -m transferkit fit`` trains, with the same budget (epochs, batch size, optimizer,
  schedule): the house backbone frozen + a new head (``recipe=small_similar``), the house
  backbone fine-tuned end to end, and the same architecture from scratch.

    python benchmarks/house_transfer.py probe --weights transferkit/assets/charnet.safetensors
    python benchmarks/house_transfer.py fit --epochs 30 --output benchmarks/house_transfer.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from transferkit.data.embedded.digits import load_digits_splits, subsample_per_class, upsample  # noqa: E402

log = logging.getLogger("house_transfer")
REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 10


# -- probe: frozen features + logistic regression ------------------------------------------
def load_record(weights: Path) -> dict:
    record_path = weights.with_suffix(".json")
    if not record_path.is_file():
        raise FileNotFoundError(
            f"--weights={str(weights)!r} has no record {str(record_path)!r}; the probe needs its "
            f"backbone, in_chans, image_size, mean and std (pretrain writes them beside the weights)."
        )
    return json.loads(record_path.read_text())


def extract_features(weights: Path, record: dict, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pooled features of the frozen backbone (eval mode) for each array of uint8 images."""
    import torch

    from transferkit.models.backbones import create_backbone
    from transferkit.models.weight_loading import load_backbone_weights

    backbone = create_backbone(record["backbone"], in_chans=record["in_chans"])
    load_backbone_weights(backbone, weights)
    backbone.eval()
    mean = torch.tensor(record["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(record["std"]).view(1, -1, 1, 1)
    features = {}
    with torch.no_grad():
        for name, array in images.items():
            pixels = upsample(array, record["image_size"])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
            batch = batch.repeat(1, record["in_chans"] // batch.shape[1], 1, 1)
            features[name] = backbone((batch - mean) / std).numpy()
    return features


def logistic_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000))
    return float(head.fit(train_x, train_y).score(test_x, test_y))


def probe(weights: Path, seeds: int) -> dict:
    """Digits test accuracy of a linear head on frozen features: all train labels, and 10 per class."""
    record = load_record(weights)
    splits = load_digits_splits()
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    features = extract_features(weights, record, {"train": train_x, "test": test_x})
    full = logistic_accuracy(features["train"], train_y, features["test"], test_y)
    few = []
    for seed in range(seeds):
        index = subsample_per_class(np.arange(len(train_y))[:, None], train_y, PER_CLASS, seed)[0][:, 0]
        few.append(logistic_accuracy(features["train"][index], train_y[index], features["test"], test_y))
    return {
        "target": "sklearn load_digits, fixed split seed 0 (train 1077 / test 360), upsampled "
                  f"to {record['image_size']} px",
        "method": "frozen backbone (eval mode) + logistic regression (C=0.5, standardised features)",
        "digits_test_acc": round(full, 4),
        f"digits_test_acc_{PER_CLASS}_per_class": round(float(np.mean(few)), 4),
        f"digits_test_acc_{PER_CLASS}_per_class_runs": [round(a, 4) for a in few],
    }


# -- fit: the README experiment through the CLI ---------------------------------------------
def write_split(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(target / f"{i:04d}.png")


def write_few_label_folder(root: Path, seed: int) -> Path:
    """``root/{train,val}``: 10 digits per class each; ``root/test``: the whole fixed test split."""
    splits = load_digits_splits()
    write_split(root / "train", *subsample_per_class(*splits["train"], PER_CLASS, seed))
    write_split(root / "val", *subsample_per_class(*splits["val"], PER_CLASS, seed))
    write_split(root / "test", *splits["test"])
    return root


CONTENDERS: dict[str, list[str]] = {
    "house_frozen": ["recipe=small_similar", "finetune.head_solver=sgd"],  # the README row: SGD epochs
    "house_finetuned": ["recipe=small_similar", "finetune=full", "finetune.backbone_lr_scale=0.1"],
    "scratch": ["recipe=small_similar", "model.weights=none", "finetune=full",
                "finetune.backbone_lr_scale=1.0"],
}


def run_fit(name: str, data_root: Path, run_dir: Path, budget: list[str]) -> dict:
    command = [sys.executable, "-m", "transferkit", "fit", *CONTENDERS[name], f"data.root={data_root}",
               f"run_dir={run_dir}", "trainer.enable_progress_bar=false", *budget]
    log.info("%s: %s", name, " ".join(command[1:]))
    start = time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {"test_acc": round(results["metrics"]["test/acc"], 4), "wall_seconds": round(time.time() - start, 1),
            "trainable_params": results["params"]["trainable"], "strategy": results["strategy"],
            "overrides": CONTENDERS[name] + budget}


def fit_experiment(epochs: int, seeds: int, names: list[str]) -> dict:
    budget = [f"trainer.max_epochs={epochs}", "data.batch_size=32"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="house_transfer_") as tmp:
        for seed in range(seeds):
            data_root = write_few_label_folder(Path(tmp) / f"digits_seed{seed}", seed)
            for name in names:
                runs[name].append(run_fit(name, data_root, Path(tmp) / f"{name}_seed{seed}",
                                          [*budget, f"seed={seed}"]))
    summary = {name: round(float(np.mean([r["test_acc"] for r in rs])), 4) for name, rs in runs.items()}
    return {"experiment": f"sklearn digits, {PER_CLASS} labelled images per class (train 100, val 100, "
                          f"test 360 = the fixed test split)", "budget": budget,
            "mean_test_acc": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    probe_args = sub.add_parser("probe", help="frozen features + logistic regression")
    probe_args.add_argument("--weights", type=Path, default=REPO / "transferkit/assets/charnet.safetensors")
    probe_args.add_argument("--seeds", type=int, default=5)
    probe_args.add_argument("--update-record", action="store_true", help="write into the weights' JSON")
    fit_args = sub.add_parser("fit", help="house backbone vs scratch through `transferkit fit`")
    fit_args.add_argument("--epochs", type=int, default=30)
    fit_args.add_argument("--seeds", type=int, default=1)
    fit_args.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    for each in (probe_args, fit_args):
        each.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.mode == "probe":
        result = probe(args.weights, args.seeds)
        if args.update_record:
            record = load_record(args.weights)
            record["transfer"] = result
            args.weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    else:
        result = fit_experiment(args.epochs, args.seeds, args.contenders)
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
