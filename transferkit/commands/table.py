"""The one command table: each command's CLI name, module, Python API name, summary, example, and how the
CLI prepares its config. `transferkit.cli`, `transferkit.api` and sweeps read it; modules are named, not
imported, so `--help` and config errors stay light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str                # on the command line: python -m transferkit <name>
    api_name: str            # in Python: transferkit.<api_name>(...)
    summary: str
    example: str             # a runnable Python example (the API function's docstring shows it)
    sweeps: bool = False     # `<name> -m key=a,b`: a grid of runs
    resumes: bool = False    # `<name> resume=<run dir>` continues a run in place
    checkpoint_run: bool = False  # with ckpt_path=..., start from the config of the checkpoint's run
    composes: bool = False   # runs further commands itself (tune's trials): gets the CLI's compose function

    @property
    def module(self) -> str:
        return f"transferkit.commands.{self.name.replace('-', '_')}"


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("fit", "fit", "Train a model (a recipe and/or config keys), test its best checkpoint.",
            'run = transferkit.fit("small_similar", trainer={"max_epochs": 1})', sweeps=True, resumes=True),
    Command("cv", "cv", "k-fold cross-validation: one fit per fold, mean +- std of the metrics.",
            'run = transferkit.cv("small_similar", data={"num_folds": 2}, trainer={"max_epochs": 1})', resumes=True),
    Command("test", "test", "Evaluate a checkpoint (or a run directory: its best, a cv run: its folds) on its test split.",
            'run = transferkit.test(ckpt_path=transferkit.fit(trainer={"max_epochs": 1}).dir)',
            sweeps=True, checkpoint_run=True),
    Command("predict", "predict", "Write predictions.csv (or masks) for an image file or folder; see also Run.predict.",
            'run = transferkit.predict(ckpt_path="outputs/<date>/<time>", input="my_images/", top_k=2)'),
    Command("pretrain", "pretrain", "Pretrain a house backbone and export its weights (backbone.safetensors).",
            'run = transferkit.pretrain("house_charnet", trainer={"max_epochs": 1})', sweeps=True),
    Command("advise", "advise", "Score the data set's size and similarity to the weights; recommend a strategy.",
            'run = transferkit.advise(advise={"max_images": 200})', checkpoint_run=True),
    Command("show-augs", "show_augs", "Draw a grid of training images under the train augmentation (augmentations.png).",
            'run = transferkit.show_augs(augment="strong")', checkpoint_run=True),
    Command("plot-lr", "plot_lr", "Plot the learning-rate schedule of a config (lr_schedule.png), without training.",
            'run = transferkit.plot_lr("small_similar", scheduler="onecycle")'),
    Command("lr-find", "lr_find", "Lightning's LR range test on the planned run (lr_find.png, a suggested LR).",
            'run = transferkit.lr_find("small_similar", lr_find={"num_training": 20})'),
    Command("tune", "tune", "An Optuna hyperparameter search; each trial is a fit run.",
            'run = transferkit.tune("small_similar", tune={"n_trials": 2}, trainer={"max_epochs": 1})', composes=True),
    Command("summary", "summary", "The model's arithmetic: shapes, parameters, memory, FLOPs, receptive field.",
            'run = transferkit.summary(model="resnet18")'),
    Command("show-features", "show_features", "First-layer filters and feature maps of one image (features.png).",
            'run = transferkit.show_features(model="charnet", input="digit.png")', checkpoint_run=True),
    Command("export", "export",
            "Export a checkpoint as model.onnx or model.torchscript.pt (+ model.meta.json), checked for parity.",
            'run = transferkit.export(ckpt_path="outputs/<date>/<time>/checkpoints/best.ckpt", format="onnx")',
            checkpoint_run=True),
    Command("audit", "audit",
            "Find what is wrong with a data set: duplicates and leaks across splits, likely wrong labels, outliers.",
            'run = transferkit.audit(data={"root": "my_images/"}, model={"weights": "charnet"})'),
    Command("serve", "serve",
            "Serve a model over HTTP with dynamic batching (LitServe): POST /predict, GET /health, GET /info.",
            'transferkit.serve(ckpt_path="outputs/<date>/<time>", serve={"port": 8000})  # blocks until Ctrl+C'),
    Command("optimize", "optimize", "Write a folder (local or s3://...) in LitData's optimized format for streaming.",
            'run = transferkit.optimize(data={"root": "my_images/"}, out="my_images_optimized/")'),
    Command("report", "report", "Rebuild a run's report.html from the files the run saved (no re-evaluation).",
            'run = transferkit.report(run="outputs/<date>/<time>")'),
)}
