"""`fit` against a hand-written PyTorch loop on one GPU, side by side in one process (issue 14).

Both train the same model (transferkit's `create_backbone` + `create_head`: timm, random init), with the
same optimizer (AdamW over transferkit's param groups, built by `build_optimizer`: fused on both sides
since `optimizer.fused=auto`), precision (bf16 autocast / `bf16-mixed`),
memory format (channels last), batch size and synthetic GPU-resident data (`data.embedded=synthetic`).
Throughput is steady-state img/s over the training steps `[--start, --end)`, timed with
`torch.cuda.synchronize()` at the window's edges (for `fit` by a callback), so warm-up and compilation
are left out. Beside it: each side's whole time for the same work (fit: the whole `cli.run`, with its
checkpoints, validation and test; the loop: build + steps + one validation and one test pass).
Cases, most important first, each skipped when `--budget` seconds would run out:
resnet50 eager, frozen resnet50 with the feature cache vs one no_grad forward pass over its training
set, resnet50 eager without the non-finite-loss check (what that check costs), resnet50 compiled,
convnext_tiny eager, convnext_tiny compiled.

    python benchmarks/gpu_fit.py [--budget 200] [--output benchmarks/results/gpu_fit.json] [--cases frozen ...]
    python benchmarks/gpu_fit.py --smoke      # CPU, tiny model and sizes: checks the script works
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from transferkit.cli import app as cli  # noqa: E402

from transferkit.training import builders
from transferkit.data.embedded.synthetic import SyntheticImages  # noqa: E402
from transferkit.tasks.finetune import FinetunePlan, build_param_groups  # noqa: E402
from transferkit.models.backbones import create_backbone  # noqa: E402
from transferkit.models.heads import create_head  # noqa: E402
from transferkit.tasks.optim import build_optimizer  # noqa: E402

log = logging.getLogger("gpu_fit")
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_fit.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time of the training steps `[start, end)` (global steps), synchronised at both edges, and
    of the whole `trainer.fit`: from its `setup` (before the optimizer is configured, which is when a
    frozen run's feature cache is computed) to `on_fit_end`."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.t0 = self.t1 = None
        self.images = 0
        self.fit_seconds = self.setup_t0 = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.setup_t0 is None:
            self.setup_t0 = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.fit_seconds = time.perf_counter() - (self.setup_t0 or time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None and trainer.global_step == self.start:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None and self.t1 is None:
            self.images += int(batch[0].shape[0])
            if trainer.global_step >= self.end:
                sync(pl_module.device)
                self.t1 = time.perf_counter()

    def rate(self) -> float | None:
        return None if self.t1 is None else self.images / (self.t1 - self.t0)


@contextmanager
def extra_callback(callback: pl.Callback, drop: tuple[type, ...] = ()):
    """Add `callback` to the trainer `fit` builds, and leave out callbacks of the `drop` types
    (benchmark instrumentation only)."""
    original = builders.build_callbacks

    def build_callbacks(*args, **kwargs):
        return [*(c for c in original(*args, **kwargs) if not isinstance(c, drop)), callback]

    builders.build_callbacks = build_callbacks
    try:
        yield callback
    finally:
        builders.build_callbacks = original


def versions() -> dict:
    import timm
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


class Settings:
    """Sizes of one benchmark run (the GPU defaults, or tiny CPU ones with --smoke)."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.batch = 8 if smoke else 256
        self.image_size = 32 if smoke else 224
        self.start, self.end = (2, 6) if smoke else (20, 200)
        self.steps = self.end + (1 if smoke else 10)  # the epoch: a few steps after the window
        self.classes = 10 if smoke else 1000
        self.eval_fraction = 0.25 if smoke else 0.02  # val and test: this fraction of the train set each
        self.precision = "bf16-mixed"
        self.models = ["resnet10t"] if smoke else ["resnet50", "convnext_tiny"]
        self.compile = not smoke

    @property
    def train_size(self) -> int:
        return self.steps * self.batch


def fit_overrides(s: Settings, backbone: str, run_dir: Path, *extra: str) -> list[str]:
    """`fit` on synthetic GPU-resident data, one epoch of `s.steps` steps, default outputs on."""
    return [f"model.backbone={backbone}", "model.weights=none", "finetune=full", "model.channels_last=true",
            "data.embedded=synthetic", f"data.synthetic_classes={s.classes}", f"data.image_size={s.image_size}",
            f"data.embedded_length={s.train_size}", f"data.val_fraction={s.eval_fraction}",
            f"data.test_fraction={s.eval_fraction}", f"data.batch_size={s.batch}", "trainer.max_epochs=1",
            f"trainer.precision={s.precision}", f"trainer.accelerator={s.device.type}", "trainer.devices=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"run_dir={run_dir}",
            *extra]


def run_fit(s: Settings, backbone: str, run_dir: Path, *extra: str, drop: tuple[type, ...] = ()) -> dict:
    timer = StepTimer(s.start, s.end)
    start = time.perf_counter()
    with extra_callback(timer, drop):
        results = cli.run(["fit", *fit_overrides(s, backbone, run_dir, *extra)])
    wall = time.perf_counter() - start
    return {"img_per_s": timer.rate(), "wall_seconds": round(wall, 2),
            "fit_loop_seconds": round(timer.fit_seconds or 0.0, 2), "status": results.get("status"),
            "test_acc": results["metrics"].get("test/acc")}


def hand_loop(s: Settings, backbone: str, compile_model: bool, step_hook=None) -> dict:
    """The same training as `fit`, written out: model, AdamW, bf16 autocast, channels last, GPU data.
    `step_hook(step)`, if given, runs before each training step and once after the last."""
    start = time.perf_counter()
    torch.manual_seed(0)
    device = s.device
    encoder = create_backbone(backbone, in_chans=3, image_size=s.image_size)
    head = create_head(encoder.num_features, s.classes)
    model = torch.nn.Sequential(encoder, head).to(device).to(memory_format=torch.channels_last)
    groups = build_param_groups(encoder, head, FinetunePlan(strategy="full", backbone_lr_scale=1.0), 0.01)
    optimizer = build_optimizer(groups, name="adamw", lr=1e-3, weight_decay=0.01)
    if compile_model:
        encoder.compile()
    data = SyntheticImages(s.train_size, s.image_size, 3, s.classes, seed=0).to_device(device)
    evaluate = SyntheticImages(max(1, round(s.train_size * s.eval_fraction)), s.image_size, 3, s.classes,
                               seed=1).to_device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    model.train()
    t0 = None
    order = torch.randperm(s.train_size)
    for step in range(s.steps):
        if step_hook is not None:
            step_hook(step)
        if step == s.start:
            sync(device)
            t0 = time.perf_counter()
        if step == s.end:
            sync(device)
            t1 = time.perf_counter()
        x, y = data.__getitems__(order[step * s.batch:(step + 1) * s.batch].tolist())
        with autocast:
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if step_hook is not None:
        step_hook(s.steps)
    model.eval()
    with torch.no_grad(), autocast:  # one validation and one test pass, as fit runs them
        for _ in range(2):
            for i in range(0, len(evaluate), s.batch):
                x, y = evaluate.__getitems__(list(range(i, min(i + s.batch, len(evaluate)))))
                F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    sync(device)
    wall = time.perf_counter() - start
    return {"img_per_s": (s.end - s.start) * s.batch / (t1 - t0), "wall_seconds": round(wall, 2),
            "final_loss": float(loss.detach())}


def fresh_compiler() -> None:
    """Forget what torch.compile saw earlier in this process, as a new process would. Otherwise the
    shapes one side saw (its evaluation's smaller last batch) make the other side's training graph
    compile with a dynamic batch size. (Inductor's on-disk caches stay: they change compile time only.)"""
    torch._dynamo.reset()


def pair(s: Settings, backbone: str, compile_model: bool, workdir: Path, drop: tuple[type, ...] = (),
         name: str | None = None) -> dict:
    """The loop and `fit` side by side; `fit` without callbacks of the `drop` types when given."""
    name = name or f"{backbone}{'_compiled' if compile_model else ''}"
    if compile_model:
        fresh_compiler()
    loop = hand_loop(s, backbone, compile_model)
    log.info("%s hand-written loop: %.0f img/s (%.1f s)", name, loop["img_per_s"], loop["wall_seconds"])
    extra = ["model.compile=true"] if compile_model else []
    if compile_model:
        fresh_compiler()
    fit = run_fit(s, backbone, workdir / name, *extra, drop=drop)
    ratio = fit["img_per_s"] / loop["img_per_s"] if fit["img_per_s"] else None
    log.info("%s fit: %.0f img/s (%.1f s whole) -> ratio %.3f", name, fit["img_per_s"] or 0, fit["wall_seconds"],
             ratio or 0)
    return {"case": name, "backbone": backbone, "compile": compile_model, "hand_loop": loop, "fit": fit,
            "ratio": ratio, "wall_ratio": fit["wall_seconds"] / loop["wall_seconds"]}


def guard_case(s: Settings, workdir: Path) -> dict:
    """What the non-finite-loss check costs: eager `fit` without `FiniteLossGuard`, against the loop."""
    from transferkit.runtime.guards import FiniteLossGuard

    backbone = s.models[0]
    return pair(s, backbone, False, workdir, drop=(FiniteLossGuard,), name=f"{backbone}_no_loss_guard")


def forward_pass(s: Settings, backbone: str, weights: Path, size: int) -> dict:
    """One no_grad bf16 channels-last forward pass of the backbone over `size` GPU-resident images."""
    from safetensors.torch import load_file

    encoder = create_backbone(backbone, in_chans=3, image_size=s.image_size)
    encoder.load_state_dict(load_file(str(weights)), strict=False)
    encoder = encoder.to(s.device).to(memory_format=torch.channels_last).eval()
    data = SyntheticImages(size, s.image_size, 3, s.classes, seed=0).to_device(s.device)
    with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16):
        x, _ = data.__getitems__(list(range(s.batch)))
        encoder(x.contiguous(memory_format=torch.channels_last))  # warm-up (cuDNN algorithm choice)
        sync(s.device)
        start = time.perf_counter()
        for i in range(0, size, s.batch):
            x, _ = data.__getitems__(list(range(i, min(i + s.batch, size))))
            encoder(x.contiguous(memory_format=torch.channels_last))
        sync(s.device)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "img_per_s": size / seconds, "images": size}


def frozen_case(s: Settings, workdir: Path) -> dict:
    """A frozen-backbone run on cached features vs one forward pass over its training set."""
    import timm
    from safetensors.torch import save_file

    backbone = s.models[0]
    weights = workdir / f"{backbone}_random.safetensors"
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    size = s.train_size * (1 if s.smoke else 3)
    forward = forward_pass(s, backbone, weights, size)
    log.info("frozen %s: forward pass over %d images %.2f s (%.0f img/s)", backbone, size, forward["seconds"],
             forward["img_per_s"])
    timer = StepTimer(0, 1)
    start = time.perf_counter()
    overrides = fit_overrides(s, backbone, workdir / "frozen", f"model.weights={weights}", "finetune=freeze",
                              "finetune.head_solver=sgd", "finetune.cache_features=true", "augment=none",
                              "trainer.max_epochs=3")
    dropped = ("model.weights=none", "finetune=full", "trainer.max_epochs=1", f"data.embedded_length={s.train_size}")
    overrides = [o for o in overrides if o not in dropped] + [f"data.embedded_length={size}"]
    with extra_callback(timer):
        results = cli.run(["fit", *overrides])
    wall = time.perf_counter() - start
    cache = results.get("feature_cache", {})
    # fit_loop_seconds: the whole trainer.fit, the training split's features computed inside it.
    return {"case": f"{backbone}_frozen_feature_cache", "train_images": size, "forward_pass": forward,
            "fit": {"wall_seconds": round(wall, 2), "fit_loop_seconds": round(timer.fit_seconds or 0.0, 2),
                    "epochs": 3, "feature_cache": cache},
            "ratio": (timer.fit_seconds or 0.0) / forward["seconds"],
            "wall_ratio": wall / forward["seconds"]}


# Rough seconds each case needs on an H200 (compile included), to decide what fits the budget.
COSTS = {"eager": 40, "frozen": 60, "compiled": 120, "guard": 40}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and sizes, no compile")
    parser.add_argument("--budget", type=float, default=190.0, help="seconds; cases that would not fit are skipped")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--cases", nargs="*", choices=sorted(COSTS), default=sorted(COSTS),
                        help="kinds of case to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transferkit", "pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    s = Settings(args.smoke)
    output = args.output or (Path(tempfile.gettempdir()) / "gpu_fit_smoke.json" if s.smoke else RESULTS)
    if not s.smoke and not torch.cuda.is_available():
        sys.exit("gpu_fit.py needs a CUDA GPU; use --smoke on a CPU machine.")
    if s.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    deadline = time.perf_counter() + args.budget
    report = {"benchmark": "gpu_fit", "smoke": s.smoke, "versions": versions(), "batch_size": s.batch,
              "image_size": s.image_size, "precision": s.precision, "channels_last": True,
              "window_steps": [s.start, s.end], "steps_per_run": s.steps, "classes": s.classes,
              "cases": [], "skipped": []}
    plan = [("eager", s.models[0], False), ("frozen", s.models[0], None), ("guard", s.models[0], None)]
    if s.compile:
        plan.append(("compiled", s.models[0], True))
    plan += [("eager", m, False) for m in s.models[1:]]
    if s.compile:
        plan += [("compiled", m, True) for m in s.models[1:]]
    plan = [step for step in plan if step[0] in args.cases]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_fit_") as tmp:
        for kind, backbone, compiled in plan:
            left = deadline - time.perf_counter()
            if not s.smoke and left < COSTS[kind]:
                report["skipped"].append(f"{kind} {backbone}: {left:.0f} s of budget left")
                continue
            try:
                case = (frozen_case(s, Path(tmp)) if kind == "frozen" else guard_case(s, Path(tmp)) if kind == "guard"
                        else pair(s, backbone, compiled, Path(tmp)))
            except Exception as err:  # noqa: BLE001 - keep the other cases' numbers
                log.exception("%s %s failed", kind, backbone)
                case = {"case": f"{kind} {backbone}", "error": f"{type(err).__name__}: {err}"}
            report["cases"].append(case)
            summarise(report)
            report["seconds"] = round(time.perf_counter() - started, 1)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", json.dumps({k: report.get(k) for k in ("fit_ratio", "compiled_ratio", "convnext_fit_ratio",
                                                          "convnext_compiled_ratio", "frozen_cache_ratio",
                                                          "no_loss_guard_ratio")}))
    log.info("Wrote %s", output)


def summarise(report: dict) -> None:
    """The headline ratios, keyed as issue 14 asks."""
    by_name = {c["case"]: c for c in report["cases"] if "error" not in c}
    models = ("resnet50", "convnext_tiny") if not report["smoke"] else ("resnet10t", "")
    keys = {"fit_ratio": models[0], "compiled_ratio": f"{models[0]}_compiled",
            "convnext_fit_ratio": models[1], "convnext_compiled_ratio": f"{models[1]}_compiled",
            "frozen_cache_ratio": f"{models[0]}_frozen_feature_cache",
            "no_loss_guard_ratio": f"{models[0]}_no_loss_guard"}
    for key, name in keys.items():
        case = by_name.get(name)
        report[key] = round(case["ratio"], 4) if case and case.get("ratio") is not None else None
        if case and "wall_ratio" in case:
            report[key.replace("ratio", "wall_ratio")] = round(case["wall_ratio"], 3)


if __name__ == "__main__":
    main()
