"""Fault benchmark (issue 12): runs that die, and what is left of them. Not a unit test: faults land at
random moments here (the unit tests inject them deterministically).

(a) kill -9: `--kills` runs of a small deterministic `fit` (`trainer.deterministic=true`, the embedded
    digits, 30 images per class, test_resnet from random init, full fine-tune, light augmentation) are
    each killed with SIGKILL at a random moment of their training (a kill time that falls after the run
    has ended is drawn again: only runs killed mid-run are trials), then continued with
    `python -m transferkit fit resume=<run dir>` until they complete. Correct = the final metrics equal
    those of the uninterrupted run of the same seed (identical; also reported: within 1 point of test
    accuracy) and the final weights are bit for bit the same. A kill before the first epoch ended leaves
    nothing to resume (resume says so): that run is started again, as its user would.
(b) kill during save: a writer process (forked from this one, so it imports once) saves a checkpoint
    in a loop through `AtomicCheckpointIO`; `--write-kills` times it gets SIGKILL at a random moment
    inside a write (aimed from its "write begins" signal by the measured write time), then
    `last.ckpt` must load (`torch.load(weights_only=True)`) and hold one whole save. The same kills
    against plain `torch.save` (the control) show that the check does catch torn files.
(c) SIGTERM: a run gets SIGTERM after its first epoch: exit 143, results.json `interrupted`, resume
    completes.
(d) fsync cost: one checkpoint save through `AtomicCheckpointIO` (temporary file, fsync, rename, fsync of
    the folder) against plain `torch.save`, same state, alternated (A B A B), median ms; per epoch a fit
    saves `last.ckpt` and, when it improved, `best.ckpt`.

    python benchmarks/faults.py                                  # all of it (minutes on 2 cores)
    python benchmarks/faults.py --kills 2 --write-kills 20 --fsync-reps 3   # plumbing check

Writes `benchmarks/results/faults.json` and `faults.md` (the README quotes them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from transferkit.runtime.checkpoint_io import AtomicCheckpointIO, checkpoint_meta, checkpoint_problem  # noqa: E402

log = logging.getLogger("faults_benchmark")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIT = ["model.backbone=test_resnet", "model.weights=none", "model.in_chans=3", "data.image_size=32",
       "data.batch_size=16", "data.num_workers=0", "data.train_per_class=30", "finetune=full", "augment=light",
       "optimizer.lr=0.01", "trainer.max_epochs=5", "trainer.deterministic=true", "trainer.accelerator=cpu",
       "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "seed=0"]
TOLERANCE = 0.01  # "within 1 point" of test accuracy


# -- running the CLI in a subprocess ----------------------------------------------------------------
def environment() -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("TRANSFERKIT_RUN_DIR", None)
    return env


def start(args: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
    with log_path.open("a") as out:  # a file, not a pipe: a full pipe would block the run
        return subprocess.Popen([sys.executable, "-m", "transferkit", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=environment(), cwd=cwd)


def fit_command(run_dir: Path) -> list[str]:
    return ["fit", *FIT, f"run_dir={run_dir}"]


def resume_command(run_dir: Path) -> list[str]:
    return ["fit", f"resume={run_dir}"]


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(condition, process: subprocess.Popen, timeout: float = 900) -> float:
    """Seconds until `condition()` holds (the process must still be running)."""
    begin = time.monotonic()
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"the run ended (exit {process.returncode}) before the awaited moment")
        if time.monotonic() - begin > timeout:
            raise TimeoutError("the awaited moment never came")
        time.sleep(0.01)
    return time.monotonic() - begin


def final_state(run_dir: Path) -> tuple[dict, dict]:
    results = json.loads((run_dir / "results.json").read_text())
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return results, weights


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compare(results: dict, weights: dict, reference: tuple[dict, dict]) -> dict:
    ref_results, ref_weights = reference
    diff = abs(results["metrics"]["test/acc"] - ref_results["metrics"]["test/acc"])
    return {"status": results.get("status"), "metrics_identical": results["metrics"] == ref_results["metrics"],
            "weights_identical": same_weights(weights, ref_weights), "test_acc": results["metrics"]["test/acc"],
            "test_acc_diff_points": round(100 * diff, 3), "within_1_point": diff <= TOLERANCE,
            "epochs": results.get("epochs"), "resumes": len(results.get("resumes", []))}


# -- (a) kill -9 at random moments, then resume ------------------------------------------------------
def uninterrupted(work: Path) -> tuple[tuple[dict, dict], float]:
    """The reference run, and how long it runs after results.json appears (the kill window)."""
    run_dir = work / "reference"
    process = start(fit_command(run_dir), work / "reference.log", work)
    wait_for(lambda: status(run_dir) == "running", process)
    opened = time.monotonic()
    if process.wait() != 0:
        raise RuntimeError(f"the reference run failed:\n{(work / 'reference.log').read_text()[-3000:]}")
    window = time.monotonic() - opened
    return final_state(run_dir), window


def resume_until_done(run_dir: Path, log_path: Path, work: Path) -> tuple[Path, list[int], bool]:
    """`fit resume=` until the run completes; a run with nothing to resume starts again (new dir)."""
    codes, restarted = [], False
    for _ in range(3):
        code = start(resume_command(run_dir), log_path, work).wait()
        codes.append(code)
        if code == 0:
            return run_dir, codes, restarted
        if "no checkpoints/last.ckpt" in log_path.read_text():
            restarted, run_dir = True, run_dir.with_name(run_dir.name + "-again")
            code = start(fit_command(run_dir), log_path, work).wait()
            codes.append(code)
            if code == 0:
                return run_dir, codes, restarted
    raise RuntimeError(f"{run_dir} did not complete: exits {codes}; see {log_path}")


def killed_mid_run(code: int, run_dir: Path) -> bool:
    """The kill landed while the run was going: SIGKILL ended it, and results.json never said completed."""
    return code == -signal.SIGKILL and status(run_dir) == "running"


def kill_once(run_dir: Path, log_path: Path, delay: float, work: Path) -> int:
    """Start a fit, SIGKILL it `delay` seconds after results.json says running; its exit code."""
    process = start(fit_command(run_dir), log_path, work)
    wait_for(lambda: status(run_dir) == "running", process)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def kill_trial(i: int, draw, work: Path, reference: tuple[dict, dict], max_draws: int = 20) -> dict:
    """One counted trial: a run killed mid-run, resumed to its end, compared with the reference. A draw
    that lands after the run finished is not a kill: it is thrown away and the kill time drawn again."""
    redrawn = []
    for attempt in range(max_draws):
        delay = draw()
        name = f"kill{i:02d}" + (f"-draw{attempt}" if attempt else "")
        run_dir, log_path = work / name, work / f"{name}.log"
        code = kill_once(run_dir, log_path, delay, work)
        if killed_mid_run(code, run_dir):
            break
        redrawn.append(round(delay, 3))
        log.info("kill %2d at %.2fs: the run had finished (exit %d, %s); drawing again", i, delay, code,
                 status(run_dir))
    else:
        raise RuntimeError(f"trial {i}: {max_draws} draws in a row landed after the run's end; the kill window "
                           "is too long for this machine")
    last = run_dir / "checkpoints" / "last.ckpt"
    epochs_done = None
    if last.is_file() and checkpoint_problem(last) is None:
        epochs_done = checkpoint_meta(last)["epochs_done"]
    final_dir, codes, restarted = resume_until_done(run_dir, log_path, work)
    row = {"trial": i, "kill_after_s": round(delay, 3), "exit_at_kill": code, "status_at_kill": "running",
           "redrawn_after_the_run_ended_s": redrawn, "epochs_done_at_kill": epochs_done,
           "restarted_from_scratch": restarted, "resume_exits": codes, **compare(*final_state(final_dir), reference)}
    row["correct"] = row["metrics_identical"] and row["weights_identical"] and row["status"] == "completed"
    log.info("kill %2d at %.2fs (epochs done %s): %s, test acc %.4f%s", i, delay, epochs_done,
             "identical" if row["correct"] else "DIFFERENT", row["test_acc"], " (restarted)" if restarted else "")
    return row


def kills(n: int, seed: int, work: Path) -> dict:
    """`n` runs killed mid-run (kill times drawn uniformly over the reference run's window, drawn again
    when one lands after its run ended), each resumed and compared with the reference."""
    reference, window = uninterrupted(work)
    log.info("reference run: test acc %.4f; training + test window %.1fs", reference[0]["metrics"]["test/acc"], window)
    rng = random.Random(seed)
    rows = [kill_trial(i, lambda: rng.uniform(0.0, 0.95 * window), work, reference) for i in range(n)]
    assert all(r["exit_at_kill"] == -signal.SIGKILL and r["status_at_kill"] == "running" for r in rows)
    return {"command": "python -m transferkit " + " ".join(fit_command(Path("<dir>"))),
            "resume": "python -m transferkit fit resume=<dir>", "kill_window_s": round(window, 2),
            "reference_metrics": reference[0]["metrics"], "kills": n, "killed_mid_run": len(rows),
            "redrawn_after_the_run_ended": sum(len(r["redrawn_after_the_run_ended_s"]) for r in rows),
            "correct": sum(r["correct"] for r in rows), "within_1_point": sum(r["within_1_point"] for r in rows),
            "restarted_from_scratch": sum(r["restarted_from_scratch"] for r in rows), "trials": rows}


# -- (b) kills inside checkpoint writes -----------------------------------------------------------------
def checkpoint_like(version: int, megabytes: float) -> dict:
    """A Lightning-shaped checkpoint whose every tensor holds `version`, so a mix of saves shows."""
    n = int(megabytes * 2 ** 20 / 4 / 3)
    return {"epoch": version, "global_step": version, "state_dict": {"w": torch.full((n,), float(version))},
            "optimizer_states": [{"exp_avg": torch.full((n,), float(version)),
                                  "exp_avg_sq": torch.full((n,), float(version))}]}


def plain_save(checkpoint: dict, path: Path) -> None:
    torch.save(checkpoint, path)


def writer_loop(path: Path, megabytes: float, atomic: bool, pipe: int, first_version: int) -> None:
    """The forked writer: saves version after version, telling the parent when each write begins/ends."""
    save = AtomicCheckpointIO().save_checkpoint if atomic else plain_save
    version = first_version
    while True:
        checkpoint = checkpoint_like(version, megabytes)
        os.write(pipe, b"B")
        save(checkpoint, path)
        os.write(pipe, b"E")
        version += 1


def fork_writer(path: Path, megabytes: float, atomic: bool, first_version: int) -> tuple[int, int]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns
        os.close(read)
        try:
            writer_loop(path, megabytes, atomic, write, first_version)
        finally:
            os._exit(1)
    os.close(write)
    return pid, read


def read_byte(fd: int) -> bytes:
    byte = os.read(fd, 1)
    if not byte:
        raise RuntimeError("the writer process died")
    return byte


def whole_save(path: Path) -> str | None:
    """None when `path` loads and holds one whole save, else what is wrong."""
    problem = checkpoint_problem(path)
    if problem:
        return problem
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to load is a torn checkpoint here
        return f"does not load: {type(err).__name__}: {err}"
    version = float(saved["global_step"])
    tensors = [saved["state_dict"]["w"], *saved["optimizer_states"][0].values()]
    return None if all(bool((t == version).all()) for t in tensors) else "mixes two saves"


def write_seconds(path: Path, megabytes: float, atomic: bool) -> float:
    """The median time of one write in a writer like the one that will be killed (page cache warm)."""
    save = AtomicCheckpointIO().save_checkpoint if atomic else plain_save
    times = []
    for version in range(5):
        checkpoint = checkpoint_like(version, megabytes)
        begin = time.perf_counter()
        save(checkpoint, path)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def write_kills(n: int, megabytes: float, atomic: bool, seed: int, work: Path) -> dict:
    folder = work / ("atomic" if atomic else "plain")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last.ckpt"
    duration = write_seconds(path, megabytes, atomic)
    rng = random.Random(seed)
    torn, inside, problems, version = 0, 0, {}, 1000
    for _ in range(n):
        pid, fd = fork_writer(path, megabytes, atomic, version)
        for _ in range(rng.randint(0, 2)):  # let 0-2 whole saves go by, then aim inside the next write
            read_byte(fd), read_byte(fd)
        read_byte(fd)  # "B": a write begins
        time.sleep(rng.uniform(0.0, duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        tail = b""
        while chunk := os.read(fd, 64):
            tail += chunk
        os.close(fd)
        inside += not tail.endswith(b"E")  # killed inside a write, not between two
        problem = whole_save(path)
        if problem:
            torn += 1
            problems[problem] = problems.get(problem, 0) + 1
            path.unlink(missing_ok=True)
        for temp in folder.glob(".*.tmp"):
            temp.unlink()
        version += 10
    kind = "AtomicCheckpointIO" if atomic else "plain torch.save (control)"
    log.info("%s: %d/%d kills left an unloadable last.ckpt (%d landed inside a write; write %.1f ms)",
             kind, torn, n, inside, 1000 * duration)
    return {"writer": kind, "kills": n, "torn": torn, "killed_inside_a_write": inside,
            "state_mb": megabytes, "write_ms": round(1000 * duration, 2), "problems": problems}


# -- (c) SIGTERM -> resume ------------------------------------------------------------------------------
def sigterm_round_trip(work: Path) -> dict:
    run_dir, log_path = work / "sigterm", work / "sigterm.log"
    process = start(fit_command(run_dir), log_path, work)
    wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), process)  # the first epoch has ended
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait()
    seconds = time.monotonic() - sent
    record = json.loads((run_dir / "results.json").read_text())
    printed = f"fit resume={run_dir.resolve()}" in log_path.read_text()
    resumed = start(resume_command(run_dir), log_path, work).wait()
    final = json.loads((run_dir / "results.json").read_text())
    row = {"exit_code": code, "stop_seconds": round(seconds, 2), "status": record.get("status"),
           "signal": record.get("signal"), "saved_at_step": record.get("global_step"),
           "epochs_done": record.get("epochs_done"), "resume_command_printed": printed,
           "resume_exit": resumed, "status_after_resume": final.get("status"), "epochs": final.get("epochs")}
    row["ok"] = (code == 143 and row["status"] == "interrupted" and printed and resumed == 0
                 and row["status_after_resume"] == "completed")
    log.info("SIGTERM: exit %d after %.2fs, %s; resume exit %d, %s", code, seconds, row["status"], resumed,
             row["status_after_resume"])
    return row


# -- (d) what fsync costs -----------------------------------------------------------------------------
def fsync_cost(megabytes: list[float], reps: int, work: Path, reference_dir: Path | None) -> list[dict]:
    rows = []
    states = [(mb, checkpoint_like(1, mb)) for mb in megabytes]
    real = reference_dir / "checkpoints" / "last.ckpt" if reference_dir else None
    if real is not None and real.is_file():  # the benchmark model's own checkpoint, as Lightning wrote it
        states.insert(0, (round(real.stat().st_size / 2 ** 20, 2), torch.load(real, map_location="cpu",
                                                                                 weights_only=True)))
    atomic = AtomicCheckpointIO()
    work.mkdir(parents=True, exist_ok=True)
    for mb, state in states:
        times = {"atomic": [], "plain": []}
        for rep in range(reps + 1):  # the first pair warms up
            for name in ("atomic", "plain"):
                path = work / f"{name}.ckpt"
                begin = time.perf_counter()
                atomic.save_checkpoint(state, path) if name == "atomic" else torch.save(state, path)
                if rep:
                    times[name].append(time.perf_counter() - begin)
        a, p = (1000 * statistics.median(times[k]) for k in ("atomic", "plain"))
        row = {"state_mb": mb, "atomic_fsync_ms": round(a, 2), "plain_torch_save_ms": round(p, 2),
               "added_ms_per_save": round(a - p, 2), "ratio": round(a / p, 2),
               "added_ms_per_epoch_max": round(2 * (a - p), 2), "reps": reps}
        log.info("fsync: %.1f MB state: atomic+fsync %.1f ms vs torch.save %.1f ms (x%.2f)", mb, a, p, a / p)
        rows.append(row)
    return rows


def epoch_seconds(run_dir: Path) -> float | None:
    """Median seconds per epoch of the reference run (from its log's 'epoch i/n: ... (x s)' lines)."""
    log_path = run_dir.with_suffix(".log")
    if not log_path.is_file():
        return None
    found = [float(line.rsplit("(", 1)[1].split(" s)")[0]) for line in log_path.read_text().splitlines()
             if line.startswith("epoch ") and line.endswith(" s)")]
    return statistics.median(found) if found else None


def filesystem(path: Path) -> str:
    best = ("", "?")
    for line in Path("/proc/mounts").read_text().splitlines() if Path("/proc/mounts").exists() else []:
        _, mount, kind, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
            best = (mount, kind)
    return best[1]


def markdown(record: dict) -> str:
    a, c = record.get("kill9"), record.get("sigterm")
    lines = [f"# Fault benchmark ({record['date']}, {record['machine']})", ""]
    if a:
        lines += [f"**kill -9 at random moments:** {a['correct']}/{a['killed_mid_run']} runs killed mid-run (SIGKILL "
                  "while results.json said running) resume to the metrics and weights of the uninterrupted run, "
                  f"bit for bit ({a['within_1_point']}/{a['killed_mid_run']} within 1 point of test accuracy; "
                  f"{a['restarted_from_scratch']} killed before their first checkpoint were started again; "
                  f"kill times drawn again because they fell after the run had ended: "
                  f"{a['redrawn_after_the_run_ended']}, not counted).", "",
                  f"    {a['command']}", f"    {a['resume']}", ""]
    for row in record.get("write_kills", []):
        lines.append(f"**kill during save, {row['writer']}:** {row['torn']}/{row['kills']} kills left an unloadable "
                     f"`last.ckpt` ({row['killed_inside_a_write']} landed inside a write of {row['state_mb']} MB, "
                     f"{row['write_ms']} ms).")
    if c:
        lines += ["", f"**SIGTERM:** exit {c['exit_code']} {c['stop_seconds']} s after the signal, status "
                      f"`{c['status']}`, resume exit {c['resume_exit']}, status `{c['status_after_resume']}`."]
    if record.get("fsync"):
        lines += ["", "| state | atomic + fsync | plain torch.save | added per save | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {r['state_mb']} MB | {r['atomic_fsync_ms']} ms | {r['plain_torch_save_ms']} ms | "
                  f"{r['added_ms_per_save']} ms | x{r['ratio']} |" for r in record["fsync"]]
        if record.get("epoch_seconds"):
            lines.append(f"\nReference epoch: {record['epoch_seconds']} s; it saves `last.ckpt` and at most `best.ckpt`.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--write-kills", type=int, default=200)
    parser.add_argument("--control-kills", type=int, default=50, help="kills against plain torch.save")
    parser.add_argument("--write-mb", type=float, default=4.4, help="checkpoint size for (b), MB")
    parser.add_argument("--fsync-mb", type=float, nargs="*", default=[59.0], help="extra state sizes for (d)")
    parser.add_argument("--fsync-reps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="*", default=["writes", "kill9", "sigterm", "fsync"])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--output", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="faults-", dir=args.workdir))
    record = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "python": platform.python_version(), "torch": torch.__version__, "workdir": str(work),
              "filesystem": filesystem(work), "seed": args.seed,
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    import pytorch_lightning

    record["lightning"] = pytorch_lightning.__version__
    begin = time.monotonic()
    if "writes" in args.parts:  # first: the writers are forked from this process before it runs anything else
        record["write_kills"] = [write_kills(args.write_kills, args.write_mb, True, args.seed, work / "writes"),
                                 write_kills(args.control_kills, args.write_mb, False, args.seed, work / "writes")]
    if "kill9" in args.parts:
        record["kill9"] = kills(args.kills, args.seed, work)
    if "sigterm" in args.parts:
        record["sigterm"] = sigterm_round_trip(work)
    if "fsync" in args.parts:
        reference = work / "reference"
        record["fsync"] = fsync_cost(args.fsync_mb, args.fsync_reps, work / "fsync", reference)
        record["epoch_seconds"] = epoch_seconds(reference)
    record["seconds"] = round(time.monotonic() - begin, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(record))
    log.info("%s", markdown(record))
    log.info("Wrote %s (%.0f s)", args.output, record["seconds"])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
