"""The layout checker's own tests (tests/test_layout.py): each rule fires on a fake package in tmp_path."""

from __future__ import annotations

from pathlib import Path

from layout_reader import ROOT, read_package
from test_layout import (command_size_violations, config_parameter_violations, cycle_violations,
                         function_level_imports, layer_violations, lazy_import_violations, size_violations,
                         top_module_violations)


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / ROOT


def test_checker_resolves_relative_and_lazy_imports_and_finds_cycles(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "def f():\n    from transferkit.data.c import g  # lazy: test\n",
        "data/c.py": ("from .a import x\nimport numpy\nfrom typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    import torch\n"),
        "tasks/__init__.py": "",
        "tasks/t.py": "from ..data import a\n",
        "cli/__init__.py": "",
        "cli/app.py": "import importlib\nTABLE = {'c': 'transferkit.commands.c'}\nlog_name = 'transferkit'\n",
        "commands/__init__.py": "",
        "commands/c.py": "def run():\n    from transferkit.cli import app  # lazy: test\n",
    })
    modules = read_package(package)
    assert {i.module for i in modules["transferkit.data.c"].imports} == {"transferkit.data.a", "numpy", "typing",
                                                                         "torch"}
    assert [i.type_only for i in modules["transferkit.data.c"].imports if i.module == "torch"] == [True]
    assert [i.in_function for i in modules["transferkit.data.b"].imports] == [True]
    assert {i.module for i in modules["transferkit.tasks.t"].imports} == {"transferkit.data.a"}
    assert {(i.module, i.statement) for i in modules["transferkit.cli.app"].imports} == {
        ("importlib", True), ("transferkit.commands.c", False)}
    assert cycle_violations(modules) == [
        "import cycle: transferkit.cli.app -> transferkit.commands.c -> transferkit.cli.app",
        "import cycle: transferkit.data.a -> transferkit.data.b -> transferkit.data.c -> transferkit.data.a"]
    assert layer_violations(modules) == [
        "transferkit/commands/c.py:2: imports transferkit.cli.app (cli sits above commands in LAYERS: "
        "pass a callable down instead)"]


def test_checker_counts_top_level_modules_and_sizes(tmp_path: Path) -> None:
    files = {f"m{i}.py": "" for i in range(6)} | {
        "__init__.py": "", "big.py": "x = 1\n" * 401, "commands/__init__.py": "",
        "commands/fit.py": "x = 1\n" * 81, "commands/test.py": "x = 1\n" * 80}
    modules = read_package(write_package(tmp_path, files))
    assert top_module_violations(modules) == [
        "transferkit/ holds 8 top-level modules (__init__.py, big.py, m0.py, m1.py, m2.py, m3.py, m4.py, m5.py); "
        "keep at most 6: a concept gets a package"]
    assert size_violations(modules) == [
        "transferkit/big.py: 401 lines (over 400: it holds more than one concept; split it by concept)"]
    assert command_size_violations(modules) == [
        "transferkit/commands/fit.py: 81 lines (a command is its entry only, at most 80: read cfg, call planning, "
        "call the package that does the work)"]


def test_checker_reports_layer_crossings(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "cli/__init__.py": "import hydra\n",
        "cli/app.py": "from hydra import compose\nfrom transferkit.commands import fit\n",
        "commands/__init__.py": "",
        "commands/fit.py": "from transferkit.planning.plan import plan_run\n",
        "planning/__init__.py": "",
        "planning/plan.py": "from transferkit.planning.spec import RunSpec\nfrom transferkit.training import session\n",
        "planning/spec.py": "from transferkit.errors import ConfigError\nfrom transferkit.models import weights\n",
        "training/__init__.py": "",
        "training/session.py": "from transferkit.planning.spec import RunSpec\n"
                               "def f():\n    from transferkit.commands import fit  # lazy: test\n",
        "data/__init__.py": "",
        "data/d.py": "from transferkit.errors import lookup\nfrom transferkit.planning.spec import DataSpec\n",
        "models/__init__.py": "",
        "models/weights.py": ("def f():\n    import pytorch_lightning as pl  # lazy\n"
                              "    from transferkit.tasks import loading\n"),
        "runtime/__init__.py": "",
        "runtime/io.py": "",
        "inference/__init__.py": "",
        "inference/run.py": "from transferkit.inference import images\ndef f():\n    import timm  # lazy: test\n",
        "inference/images.py": "from transferkit.tasks.loading import load_task\n",
        "tasks/__init__.py": "",
        "tasks/loading.py": "import hydra.utils\nimport pytorch_lightning\n",
        "widgets/__init__.py": "",
    })
    assert layer_violations(read_package(package)) == [
        "transferkit/data/d.py:2: imports transferkit.planning.spec (data imports nothing from transferkit but "
        "transferkit.errors)",
        "transferkit/inference/images.py: loads pytorch_lightning via transferkit.inference.images -> "
        "transferkit.tasks.loading -> pytorch_lightning (inference imports neither Lightning nor timm at module "
        "level: predicting from an exported model needs neither)",
        "transferkit/inference/run.py: loads pytorch_lightning via transferkit.inference.run -> "
        "transferkit.inference.images -> transferkit.tasks.loading -> pytorch_lightning (inference imports neither "
        "Lightning nor timm at module level: predicting from an exported model needs neither)",
        "transferkit/models/weights.py:2: imports pytorch_lightning (models never import Lightning: a backbone is "
        "a plain nn.Module, also for inference)",
        "transferkit/models/weights.py:3: imports transferkit.tasks.loading (tasks sits above models in LAYERS: "
        "pass a callable down instead)",
        "transferkit/planning/spec.py:2: imports transferkit.models.weights (a shared leaf imports from transferkit "
        "only other shared leaves (see SHARED_LEAVES))",
        "transferkit/tasks/loading.py:1: imports hydra.utils (only transferkit/cli/ imports hydra)",
        "transferkit/training/session.py:3: imports transferkit.commands.fit (commands sits above training in "
        "LAYERS: pass a callable down instead)",
        "transferkit/widgets/__init__.py: package widgets is on no line of LAYERS: place it there",
    ]


def test_checker_reports_the_composed_config_below_planning(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "planning/__init__.py": "",
        "planning/plan.py": "def plan_run(cfg: DictConfig, command): ...\n",
        "training/__init__.py": "",
        "training/session.py": "from omegaconf import DictConfig\n"
                               "def train(spec, cfg): ...\n"
                               "def test(spec, config: 'DictConfig | None' = None): ...\n"
                               "class A:\n    def m(self, *, node: omegaconf.DictConfig): ...\n"
                               "def fine(spec: RunSpec, data: dict): ...\n",
    })
    assert config_parameter_violations(read_package(package)) == [
        f"transferkit/training/session.py:{line}: {shown} takes the composed config; only cli/, config/, planning/ "
        "and commands/ see it: pass the spec part it needs"
        for line, shown in [(2, "train(cfg)"), (3, "test(config: 'DictConfig | None')"),
                            (5, "m(node: omegaconf.DictConfig)")]]


def test_checker_reports_lazy_imports_without_reason_and_over_budget(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "tasks/__init__.py": "",
        "tasks/t.py": ("import json\n"
                       "def a():\n    import os\n    from transferkit.errors import ConfigError\n"  # 4: no reason
                       "def b():\n    # lazy: keeps --help light\n    from transferkit import errors\n"  # 7
                       "    from transferkit.errors import lookup\n"  # 8: shares line 7's reason
                       "def c():\n    from transferkit.errors import (  # lazy: import cost\n        lookup)\n"
                       "def d():\n    from transferkit.errors import x  # noqa: F401\n"),  # 13: a pragma only
    })
    modules = read_package(package)
    assert [(imp.line, reasoned) for _, imp, reasoned in function_level_imports(modules)] == [
        (4, False), (7, True), (8, True), (10, True), (13, False)]
    why = "without a reason: add `# lazy: <why>` on its line or the line above, or move it to the top of the module"
    assert lazy_import_violations(modules, budget=5) == [
        f"transferkit/tasks/t.py:4: function-level import of transferkit.errors {why}",
        f"transferkit/tasks/t.py:13: function-level import of transferkit.errors {why}"]
    assert lazy_import_violations(modules, budget=4)[-1].startswith(
        "5 function-level imports of transferkit modules (budget 4)")
    assert lazy_import_violations(modules, budget=4)[-1].endswith(
        "They are: transferkit/tasks/t.py (5): 4, 7, 8, 10, 13")
