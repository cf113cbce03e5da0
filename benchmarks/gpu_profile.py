"""Where a training step's time goes: `fit` against the hand-written loop of `gpu_fit.py`, profiled.

Runs both (same model, precision, memory format, batch and synthetic GPU-resident data as gpu_fit.py)
and records a window of steps with `torch.profiler` (CPU and CUDA activity). For each it reports the
wall time per step, the device busy time per step (the sum of kernel and copy times), the number of
kernels per step and how many came from `torch.compile` (Triton), the top device kernels and the top
host operations by self time. A step whose device busy time is well under its wall time is bound by
the host (Python, kernel launches, synchronisations); the host table says by what.

    python benchmarks/gpu_profile.py [--backbone resnet50] [--compile] [--output gpu_profile.json]
    python benchmarks/gpu_profile.py --smoke     # CPU, tiny: checks the script works
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpu_fit import Settings, extra_callback, fit_overrides, hand_loop, sync  # noqa: E402
from transferkit.cli import app as cli  # noqa: E402

log = logging.getLogger("gpu_profile")


class Window:
    """Profiles the steps `[start, start + steps)` given by `at(step)` calls (one before each step)."""

    def __init__(self, start: int, steps: int, device: torch.device) -> None:
        self.start, self.stop, self.device = start, start + steps, device
        self.prof = None
        self.seconds = None

    def at(self, step: int) -> None:
        if step == self.start and self.prof is None:
            sync(self.device)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=activities)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif step == self.stop and self.prof is not None and self.seconds is None:
            sync(self.device)
            self.seconds = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)

    def summary(self, top: int = 15) -> dict:
        if self.prof is None or self.seconds is None:
            return {"error": "the window was not reached"}
        steps = self.stop - self.start
        averages = self.prof.key_averages()

        def device_us(avg) -> float:
            return float(getattr(avg, "self_device_time_total", 0.0) or getattr(avg, "self_cuda_time_total", 0.0))

        # Kernels and copies only: the host ops (aten::..., Optimizer.step) also carry the device time of
        # the kernels they launched, which would count it twice.
        from torch.autograd import DeviceType

        device_rows = [a for a in averages if device_us(a) > 0 and getattr(a, "device_type", None) != DeviceType.CPU]
        kernels = sum(a.count for a in device_rows)
        triton = sum(a.count for a in device_rows if "triton" in a.key)
        busy = sum(device_us(a) for a in device_rows) / 1e6
        host = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
        return {
            "steps": steps, "wall_ms_per_step": round(1000 * self.seconds / steps, 3),
            "device_busy_ms_per_step": round(1000 * busy / steps, 3),
            "device_busy_fraction": round(busy / self.seconds, 3) if self.seconds else None,
            "kernels_per_step": round(kernels / steps, 1), "triton_kernels_per_step": round(triton / steps, 1),
            "top_device": [{"name": a.key[:90], "ms_per_step": round(device_us(a) / 1000 / steps, 3),
                            "calls_per_step": round(a.count / steps, 2)}
                           for a in sorted(device_rows, key=device_us, reverse=True)[:top]],
            "top_host": [{"name": a.key[:90], "self_ms_per_step": round(a.self_cpu_time_total / 1000 / steps, 3),
                          "calls_per_step": round(a.count / steps, 2)} for a in host],
        }


class FitWindow(pl.Callback):
    """Drives a `Window` from `fit`'s training loop (global steps)."""

    def __init__(self, window: Window) -> None:
        self.window = window

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.window.at(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.window.stop:
            self.window.at(trainer.global_step)


def dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {group: dict(values) for group, values in counters.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="steps profiled")
    parser.add_argument("--only", choices=("fit", "loop", "both"), default="both")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--extra", nargs="*", default=[], help="more fit overrides")
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transferkit", "pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    s = Settings(a.smoke)
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("gpu_profile.py needs a CUDA GPU; use --smoke on a CPU machine.")
    if s.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    backbone = a.backbone or s.models[0]
    s.start, s.end = (2, 4) if a.smoke else (40, 45)
    s.steps = s.start + a.steps + 2
    report = {"benchmark": "gpu_profile", "backbone": backbone, "compile": a.compile, "batch_size": s.batch,
              "extra": a.extra}
    if a.only in ("fit", "both"):
        window = Window(s.start, a.steps, s.device)
        with tempfile.TemporaryDirectory(prefix="gpu_profile_") as tmp, extra_callback(FitWindow(window)):
            cli.run(["fit", *fit_overrides(s, backbone, Path(tmp) / "fit", *(["model.compile=true"] if a.compile
                                                                              else []), *a.extra)])
        report["fit"] = window.summary()
        report["dynamo_after_fit"] = dynamo_counters()
    if a.only in ("loop", "both"):
        window = Window(s.start, a.steps, s.device)
        hand_loop(s, backbone, a.compile, step_hook=window.at)
        report["hand_loop"] = window.summary()
        report["dynamo_after_loop"] = dynamo_counters()
    for side in ("fit", "hand_loop"):
        if side in report and "error" not in report[side]:
            r = report[side]
            log.info("%s: %.2f ms/step wall, %.2f ms device busy (%.0f %%), %.0f kernels/step (%.0f Triton)", side,
                     r["wall_ms_per_step"], r["device_busy_ms_per_step"], 100 * (r["device_busy_fraction"] or 0),
                     r["kernels_per_step"], r["triton_kernels_per_step"])
            for row in r["top_host"][:10]:
                log.info("    host %-60s %8.3f ms  x%.1f", row["name"], row["self_ms_per_step"], row["calls_per_step"])
    output = a.output or Path(tempfile.gettempdir()) / "gpu_profile.json"
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log.info("Wrote %s", output)


if __name__ == "__main__":
    main()
