"""Hydra's and OmegaConf's composition errors, said in one line that names the key and what to do."""

from __future__ import annotations

import re
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from transferkit.config.files import group_options, leaves, package_dir, recipe_names
from transferkit.errors import ConfigError, did_you_mean
from transferkit.config.files import trainer_flags


def explain_config_error(err: Exception) -> str:
    """One line from Hydra/OmegaConf's composition error, with a group's options when one is unknown."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    if message.startswith("Ambiguous value for argument"):
        return f"{message}: to sweep over the values add -m (fit -m key=a,b); for a list write key=[a,b]."
    missing = re.search(r"Could not find '(\w+)/([^']+)'", message)
    known = missing is not None and (missing.group(1) == "recipe" or (package_dir("conf") / missing.group(1)).is_dir())
    if known or missing is None and "recipe" in message:
        group, option = missing.groups() if missing else ("recipe", "")
        options = recipe_names() if group == "recipe" else group_options(group)
        stop = "" if message.endswith((".", ")")) else "."
        message += f"{stop} Available {group} options: {options}.{did_you_mean(option, options)}"
    return message


def hydra_outside_sweep(overrides: list[str]) -> str | None:
    """Hydra's own settings (`hydra.run.dir=...`, `hydra/launcher=...`) do nothing outside a sweep: say so,
    rather than let them pass unused."""
    stray = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if not stray:
        return None
    if stray[0].lstrip("+~").startswith(("hydra.run.", "hydra.output_subdir", "hydra.job.chdir")):
        return (f"{stray[0]}: transferkit does not use Hydra's run directory; a run's directory is "
                "run_dir=... (default outputs/<date>/<time>).")
    return (f"{stray[0]}: Hydra's launcher settings take effect in a sweep only: add -m "
            "(python -m transferkit fit -m hydra/launcher=submitit_local ...).")


def unknown_key_message(err: Exception, overrides: list[str],
                        compose: Callable[[list[str]], DictConfig]) -> str | None:
    """For Hydra's "Could not override 'data.batchsize'" (no option of the group has that key): the
    unknown key, the valid keys beside it and the closest one, read from the config composed without
    that override. None when the error is another one (Hydra's own line is then the message)."""
    found = re.search(r"Could not override '([^']+)'", str(err))
    cause = str(err.__cause__ or err.__context__ or "")
    if found is None or "not in struct" not in cause:
        return None
    key = found.group(1)
    try:
        cfg = compose([o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key])
    except ConfigError:  # another key is unknown too: name that one (the user fixes them one by one)
        raise
    except Exception:  # noqa: BLE001 - another override is wrong in another way: Hydra's line for this one
        return None
    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            break
        node, path = node[part], [*path, part]
    else:
        return None
    unknown, choices = ".".join([*path, part]), sorted(str(k) for k in node.keys())
    if path == ["trainer"]:  # any Lightning Trainer argument is accepted as trainer.<flag>

        return (f"{unknown} is not an option: neither a key of the trainer group {choices} nor an argument of "
                f"pytorch_lightning.Trainer.{did_you_mean(part, {*choices, *trainer_flags()})}")
    return f"{unknown} is not an option; valid keys: {choices}.{did_you_mean(part, choices)}"


# Keys that take a number or one of these words (or null, where that is their default); any other key
# whose default is a number takes a number.
WORDS = {"optimizer.lr": ("find",), "data.image_size": ("auto",), "model.in_chans": ("auto",),
         "data.num_workers": ("auto",),
         **{key: () for key in (
             "model.hidden_dim", "data.fold", "data.num_folds", "data.train_per_class", "finetune.layer_decay",
             "finetune.unfreeze_at_epoch", "trainer.min_epochs", "trainer.limit_train_batches",
             "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.val_check_interval",
             "trainer.gradient_clip_val", "early_stopping.patience", "checkpoint.every_minutes", "ema.decay",
             "swa.epoch_start", "swa.lr", "tune.timeout", "tune.seed", "export.parity_max_images",
             "summary.num_classes")}}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flat_values(cfg: DictConfig) -> dict:
    """{dotted key: value} of a composed config; {} when an interpolation fails (told where it is used)."""
    try:
        return dict(leaves(OmegaConf.to_container(cfg, resolve=True)))
    except Exception:  # noqa: BLE001 - OmegaConf's interpolation errors come in several types
        return {}


def wrong_types(cfg: DictConfig, defaults: dict) -> list[str]:
    """Keys that take a number (their value in `defaults`, the config the same group choices compose to
    without any `key=value`, is one; or `WORDS` says so) given a word (`trainer.max_epochs=1x`), each as a
    line that names the key."""
    problems = []
    for key, value in flat_values(cfg).items():
        default = defaults.get(key)
        numeric = is_number(default) or key in WORDS
        if numeric and value is not None and not is_number(value) and value not in WORDS.get(key, ()):
            words = "".join(f" or {w!r}" for w in WORDS.get(key, ()))
            problems.append(f"{key}={value!r} must be a number{words} (its default is {default!r}).")
    return problems
