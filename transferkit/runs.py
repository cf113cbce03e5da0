"""`Run`: a run directory from Python (its results, config, trained task) and `load` to open one.

Torch and Lightning are imported only when a task is loaded or a prediction made.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import sys
from pathlib import Path

from transferkit.errors import ConfigError

log = logging.getLogger("transferkit")

LOAD_HINT = ("pass a run directory (outputs/<date>/<time>), a checkpoint (<run>/checkpoints/best.ckpt) or an "
             "exported model (model.onnx, model.int8.onnx, model.torchscript.pt, model.xml, model.int8.xml)")


class Run:
    """One run directory: `.dir`, `.results`, `.config`, `.task` (loaded on first use), `.predict`, `.show`.

    Every function of the Python API returns one (`transferkit.fit(...)`), and `transferkit.load` opens
    one from a run directory or a checkpoint.

    Example:
        >>> import transferkit
        >>> run = transferkit.fit(trainer={"max_epochs": 1})  # doctest: +SKIP
        >>> run.results["metrics"]["test/acc"], run.dir        # doctest: +SKIP
    """

    def __init__(self, dir: str | os.PathLike, results: dict | None = None,
                 checkpoint: str | os.PathLike | None = None) -> None:
        self.dir = Path(dir)
        self._results = results
        self._checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._task = None

    @property
    def exported(self) -> Path | None:
        """The exported model file (model.onnx, model.int8.onnx, model.torchscript.pt, model.xml, ...) this run was
        loaded from, else None.

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00/model.onnx").exported  # doctest: +SKIP
        """
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.inference.exported import is_exported_model

        return self._checkpoint if self._checkpoint is not None and is_exported_model(self._checkpoint) else None

    @property
    def results(self) -> dict:
        """The run's results (what the command returned, else its results.json; {} if it wrote none).

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").results["metrics"]  # doctest: +SKIP
        """
        if self._results is None:
            # lazy: plain values only (no torch); the run's own paths read where the directory is now
            from transferkit.runtime.run_paths import read_located

            path = self.dir / "results.json"
            self._results = read_located(json.loads(path.read_text()), self.dir) if path.is_file() else {}
        return self._results

    @property
    def config(self):
        """The run's config.yaml as an OmegaConf `DictConfig` (`run.config.trainer.max_epochs`).

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").config.model.backbone  # doctest: +SKIP
        """
        from omegaconf import OmegaConf

        path = self.dir / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{str(self.dir)!r} has no config.yaml; {LOAD_HINT}.")
        return OmegaConf.load(path)

    @property
    def spec(self):
        """What planning decided for the run (its spec.json) as a `transferkit.planning.spec.RunSpec`, or None
        for a run that has none (written before spec.json existed, or by a command that plans no training).

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").spec.finetune.strategy  # doctest: +SKIP
        """
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.planning.spec import RunSpec
        from transferkit.training.rundir import SPEC_FILE

        path = self.dir / SPEC_FILE
        return RunSpec.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def checkpoints(self) -> list[Path]:
        """The checkpoints this run stands for: the one it was loaded from, a fit run's best, the checkpoint(s)
        a test or predict run used, or a cv run's folds (an ensemble).

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").checkpoints()  # doctest: +SKIP
        """
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.tasks.loading import checkpoint_paths

        if self._checkpoint is not None:
            return [self._checkpoint]
        results = self.results
        best = results.get("best_checkpoint")
        if best and Path(best).is_file():
            return [Path(best)]
        if results.get("checkpoint") and results.get("command") in ("test", "predict"):
            return checkpoint_paths(results["checkpoint"], key="checkpoint")
        return checkpoint_paths(str(self.dir), key="run")

    @property
    def task(self):
        """The trained LightningModule in eval mode, on the CPU (a cv run: the `EnsembleTask` of its folds),
        loaded weights-only through `transferkit.tasks.loading` on first use.

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").task.class_names  # doctest: +SKIP
        """
        if self.exported is not None:
            raise ConfigError(f"{str(self.exported)!r} is an exported model, not a LightningModule: use .predict, or "
                              "transferkit.load the checkpoint it was exported from.")
        if self._task is None:
            # lazy: torch and Lightning load on first use; `import transferkit` stays light
            from transferkit.tasks.loading import load_ensemble, load_task

            paths = self.checkpoints()
            self._task = load_task(paths[0]) if len(paths) == 1 else load_ensemble(paths)[0]
        return self._task

    def predict(self, inputs, top_k: int = 3, tta: str = "none", batch_size: int = 32,
                calibration: str = "temperature"):
        """Predict image files, folders, Pillow images or uint8 numpy arrays (H x W or H x W x C), with the
        preprocessing of `python -m transferkit predict` (`transferkit.inference.predictor`).

        Args:
            inputs: one input or a list of them; a folder stands for every image under it.
            top_k: how many labels the `top_k` column lists.
            tta: test-time augmentation: none | flip | multiscale.
            batch_size: images per forward pass.
            calibration: temperature (the probabilities use the temperature fit stored in the checkpoint or
                model.meta.json; 1 where there is none) | none (the raw softmax).

        Returns:
            Classification: one record per image with the CSV's columns `path`, `label`, `probability`,
            `top_k`, `error` (`path` is the input's index for an image in memory), as a pandas DataFrame
            when pandas is installed, else a list of dicts. Multi-label: the columns `path`, `labels` (the
            `;`-joined set at the tuned thresholds), `p_<class>` (float probabilities), `error`. Segmentation: one class-index mask (an H x W
            numpy array at the image's size) per image, None for an unreadable file.

        Example:
            >>> import numpy as np
            >>> run = transferkit.fit(trainer={"max_epochs": 1})                    # doctest: +SKIP
            >>> run.predict([np.zeros((32, 32), np.uint8), "digit.png"], top_k=2)   # doctest: +SKIP
        """
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.inference.images import expand_inputs
        from transferkit.inference.predictor import (ensemble_predictor, exported_predictor, predict_inputs,
                                                     task_predictor)
        from transferkit.tasks.calibration import check_calibration
        from transferkit.tasks.tta import check_tta

        tta, calibration = check_tta(tta), check_calibration(calibration)
        items, names = expand_inputs(inputs)
        if self.exported is not None:
            if tta != "none":
                raise ConfigError(f"tta={tta!r} needs the checkpoint; an exported model predicts without TTA.")
            return predict_inputs(exported_predictor(self.exported, calibration=calibration), items, names, top_k,
                                  batch_size)
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.tasks.ensemble import EnsembleTask
        from transferkit.tasks.loading import load_ensemble

        if tta == "none" and not isinstance(self.task, EnsembleTask):
            return predict_inputs(task_predictor(self.task, calibration), items, names, top_k, batch_size)
        ensemble = self.task if tta == "none" else load_ensemble(self.checkpoints(), tta)[0]
        return predict_inputs(ensemble_predictor(ensemble, calibration), items, names, top_k, batch_size)

    def show(self) -> None:
        """Show the run in a notebook: its report.html if it has one, else its plots (PNG files) and metrics.
        Outside IPython, writes the report's (or the plots') path and the metrics as text.

        Example:
            >>> transferkit.load("outputs/2026-01-01/12-00-00").show()  # doctest: +SKIP
        """
        report = self.dir / "report.html"
        pngs = sorted(self.dir.glob("*.png"))
        metrics = self.results.get("metrics") or {}
        display = ipython_display()
        if display is None:
            lines = [f"run {self.dir}", *([f"report: {report}"] if report.is_file() else (f"plot: {p}" for p in pngs))]
            lines += [f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in sorted(metrics.items())]
            sys.stdout.write("\n".join(lines) + "\n")
            return
        from IPython.display import HTML, Image, Markdown

        if report.is_file():  # in an iframe: the report's own styles and scripts stay out of the notebook
            page = html.escape(inlined_images(report), quote=True)
            display(HTML(f'<iframe srcdoc="{page}" style="width:100%;height:720px;border:0"></iframe>'))
            return
        display(Markdown(f"**{self.results.get('command', 'run')}** `{self.dir}`"))
        for png in pngs:
            display(Image(filename=str(png)))
        if metrics:
            rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
            display(Markdown("\n".join(["| metric | value |", "|---|---|", *rows])))

    def __repr__(self) -> str:
        metrics = self.results.get("metrics") or {}
        shown = [f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test/") and isinstance(v, float)]
        command = self.results.get("command")
        return f"Run({str(self.dir)!r}{f', command={command!r}' if command else ''}{''.join(', ' + s for s in shown)})"


def load(path: str | os.PathLike) -> Run:
    """Open a finished run: a run directory (fit, cv, test, ...), a checkpoint file, read weights-only
    through `transferkit.tasks.loading` (a file that would run code when loaded is refused), or a model written
    by `export` (predicts through onnxruntime / TorchScript, without the checkpoint).

    Raises:
        FileNotFoundError: no such path, or a folder that holds no run.
        ConfigError: a file that is not a transferkit checkpoint.

    Example:
        >>> import transferkit
        >>> run = transferkit.load("outputs/2026-01-01/12-00-00")        # doctest: +SKIP
        >>> run = transferkit.load("outputs/2026-01-01/12-00-00/checkpoints/best.ckpt")  # doctest: +SKIP
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"transferkit.load: {str(path)!r} does not exist; {LOAD_HINT}.")
    if path.is_file():
        # lazy: torch and Lightning load on first use; `import transferkit` stays light
        from transferkit.inference.exported import is_exported_model
        from transferkit.tasks.loading import read_checkpoint

        if not is_exported_model(path):  # an exported model is checked when it is first used
            read_checkpoint(path, key="transferkit.load")
        run_dir = path.parent.parent if (path.parent.parent / "config.yaml").is_file() else path.parent
        return Run(run_dir, checkpoint=path)
    if not any((path / name).is_file() for name in ("results.json", "config.yaml")):
        raise FileNotFoundError(f"transferkit.load: {str(path)!r} holds no results.json nor config.yaml, so it is "
                                f"not a run directory; {LOAD_HINT}.")
    return Run(path)


def inlined_images(report: Path) -> str:
    """report.html with the images it links (`src="report/x.png"`) inlined as data URIs, so that it shows
    inside a notebook, where its relative links have no folder to resolve against."""
    import base64
    import mimetypes

    def inline(match: re.Match) -> str:
        target = (report.parent / html.unescape(match.group(1))).resolve()
        kind = mimetypes.guess_type(target.name)[0]
        if not kind or not kind.startswith("image/") or not target.is_file() or report.parent.resolve() not in target.parents:
            return match.group(0)
        return f'src="data:{kind};base64,{base64.b64encode(target.read_bytes()).decode()}"'

    return re.sub(r'src="([^":]+)"', inline, report.read_text(encoding="utf-8"))


def ipython_display():
    """IPython's `display` inside an IPython shell or notebook, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None or ipython.get_ipython() is None:
        return None
    from IPython.display import display

    return display
