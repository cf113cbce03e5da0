"""Pages made from the code and the results when the Sphinx build starts, into docs/_generated/:

* `cli.md`: every command of the one command table (transferkit/commands/table.py);
* `config.md`: every config group and key of conf/ with its default, type and meaning (the meanings'
  one home: transferkit/planning/keys.py);
* `benchmarks/`: one page per generated table of benchmarks/results/*.md, with the JSON it came from,
  the command, the date and the commit;
* `quickstart.ipynb`: the notebook as the test suite last executed it (docs/_executed/, written by
  tests/test_quickstart_notebook.py), else the committed copy without outputs.

Also importable without Sphinx (tests/test_docs_reference.py reads `config_keys` and `documented_keys`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from transferkit.commands.table import COMMANDS
from transferkit.config.explain import WORDS
from transferkit.config.files import group_options, leaves, load_group_option, package_dir
from transferkit.planning.keys import GROUPS, KEYS

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
OUT = DOCS / "_generated"
RESULTS = REPO / "benchmarks" / "results"
WIDGET = "application/vnd.jupyter.widget-view+json"


# -- config ---------------------------------------------------------------------------------------------
def root_config() -> tuple[dict, dict]:
    """conf/config.yaml: its keys (defaults list left out) and each group's default option."""
    node = OmegaConf.to_container(OmegaConf.load(package_dir("conf") / "config.yaml"))
    chosen = {}
    for entry in node.pop("defaults"):
        if isinstance(entry, dict):
            chosen.update(entry)
    return node, chosen


def groups() -> list[str]:
    return sorted(p.name for p in package_dir("conf").iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def group_values(group: str) -> dict[str, dict]:
    """{key: {option: value}} over every option of a config group."""
    values: dict[str, dict] = {}
    for option in group_options(group):
        for key, value in load_group_option(group, option).items():
            values.setdefault(key, {})[option] = value
    return values


def config_keys() -> set[str]:
    """Every key conf/ defines: `seed`, `export.opset` (config.yaml), `data.root` (a group's options)."""
    root, _ = root_config()
    keys = {key for key, _ in leaves(root)}
    return keys | {f"{group}.{key}" for group in groups() for key in group_values(group)}


def documented_keys() -> set[str]:
    return set(KEYS)


def type_of(key: str, values: list) -> str:
    present = [v for v in values if v is not None and not (isinstance(v, str) and v.startswith("${"))]
    words = WORDS.get(key, ())
    if key in WORDS:
        return "number" + "".join(f" or `{w}`" for w in words)
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (list, "list"), (dict, "mapping")):
        if present and all(isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in present):
            return "number" if kind is int and any(isinstance(v, float) for v in present) else name
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "number"
    return "str" if present else "any"


def show(value) -> str:
    text = "null" if value is None else json.dumps(value) if isinstance(value, (bool, list, dict)) else str(value)
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")  # <date> is not an HTML tag


def option_summary(group: str, option: str) -> str:
    """The header comment of conf/<group>/<option>.yaml (what the option is), without the pointer line."""
    lines = []
    for line in (package_dir("conf") / group / f"{option}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(line for line in lines if line and not line.startswith(("Each key's meaning", "@package")))


def config_page() -> str:
    root, chosen = root_config()
    lines = ["# Configuration keys", "",
             "Generated from `conf/` (defaults) and `transferkit/planning/keys.py` (meanings) when the site is "
             "built. Set any key on the command line (`python -m transferkit fit data.batch_size=32`) or as a "
             "keyword of the Python API (`transferkit.fit(data={\"batch_size\": 32})`); choose a group's option "
             "with `group=option` (`optimizer=sgd`). See [Configuration](../concepts/configuration.md).", "",
             "## Top-level keys", "", "| key | default | type | meaning |", "|---|---|---|---|"]
    for key, value in leaves(root):
        lines.append(f"| `{key}` | {cell(show(value))} | {type_of(key, [value])} | {cell(KEYS.get(key, ''))} |")
    for group in groups():
        values, default = group_values(group), chosen.get(group)
        options = group_options(group)
        lines += ["", f"## {group}", "", GROUPS.get(group, ""), "",
                  f"Options (`{group}=...`): " + ", ".join(
                      f"**`{o}`**" if o == default else f"`{o}`" for o in options)
                  + (f" (default: `{default}`)." if default else " (none chosen by default)."), "",
                  "| option | what it is |", "|---|---|",
                  *[f"| `{o}` | {cell(option_summary(group, o))} |" for o in options], "",
                  "| key | default | type | meaning |", "|---|---|---|---|"]
        for key, per_option in values.items():
            dotted = f"{group}.{key}"
            base = per_option.get(default, per_option[next(iter(per_option))])
            others = [f"{o}: {show(v)}" for o, v in per_option.items()
                      if o != default and (v != base or default not in per_option)]
            default_text = show(base) if default in per_option else "—"
            if others:
                default_text += " (" + ", ".join(others) + ")"
            lines.append(f"| `{dotted}` | {cell(default_text)} | {type_of(dotted, list(per_option.values()))} "
                         f"| {cell(KEYS.get(dotted, ''))} |")
    return "\n".join(lines) + "\n"


# -- commands ---------------------------------------------------------------------------------------------
def command_keys(command) -> list[str]:
    """Keys a command has for itself: its own section (`audit.*`, `serve.*`), or a key whose meaning
    starts by naming it (`input`: "predict (and show-features): ...")."""
    names = (command.name, command.api_name)
    own = [k for k in KEYS if k.split(".")[0] in names and "." in k]
    named = [k for k, text in KEYS.items() if k not in own and re.match(
        rf"^(?:[\w-]+(?:/| and | or |, ))*({'|'.join(map(re.escape, names))})\b", text)]
    return own + named


def cli_page() -> str:
    lines = ["# Commands", "",
             "Generated from the one command table, `transferkit/commands/table.py`. Each command runs as "
             "`python -m transferkit <command> [recipe=NAME] [key=value ...]` and as the Python function "
             "`transferkit.<name>(...)`, which returns a `Run`.", "",
             "| command | Python | what it does |", "|---|---|---|"]
    lines += [f"| [`{c.name}`](#{c.name}) | `transferkit.{c.api_name}` | {cell(c.summary)} |"
              for c in COMMANDS.values()]
    for c in COMMANDS.values():
        notes = [text for flag, text in (
            (c.sweeps, f"`{c.name} -m key=a,b` runs a grid of runs ([sweeps](../guides/sweeps-tuning.md))."),
            (c.resumes, f"`{c.name} resume=<run dir>` continues a run in place "
                        "([faults and resume](../guides/faults-resume.md))."),
            (c.checkpoint_run, "With `ckpt_path=...` it starts from the config of the checkpoint's run."),
        ) if flag]
        keys = command_keys(c)
        lines += ["", f"({c.name})=", f"## {c.name}", "", c.summary, "",
                  "```bash", f"python -m transferkit {c.name} [recipe=NAME] [key=value ...]", "```", "",
                  "```python", "import transferkit", "", c.example, "```"]
        lines += ["", *[f"* {n}" for n in notes]] if notes else []
        if keys:
            lines += ["", "Its own keys ([configuration reference](config.md)): "
                      + ", ".join(f"`{k}`" for k in keys) + "."]
    return "\n".join(lines) + "\n"


def api_summary() -> str:
    """The autosummary of every function of transferkit.api (reference/api.md includes it)."""
    names = [c.api_name for c in COMMANDS.values()] + ["load", "run_command"]
    return "\n".join([".. currentmodule:: transferkit.api", "", ".. autosummary::", "   :nosignatures:", "",
                      *[f"   {name}" for name in names]]) + "\n"


# -- benchmarks -----------------------------------------------------------------------------------------------
def commit_of(path: Path) -> str:
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def find_value(record, names: tuple[str, ...]):
    """The first of `names` in the record or in its `environment`/`machine` part."""
    if not isinstance(record, dict):
        return None
    for part in (record, record.get("environment"), record.get("machine")):
        for name in names:
            if isinstance(part, dict) and part.get(name):
                return part[name]
    return None


def scripts_of(table: Path) -> list[str]:
    """The benchmark scripts that write this table: named like it, or naming its file; else the script whose
    name starts it (serve_load_64px_threads1.md: serve_load.py)."""
    scripts = sorted((REPO / "benchmarks").glob("*.py"))
    found = [p.name for p in scripts if p.stem == table.stem or table.name in p.read_text(encoding="utf-8")]
    return found or [p.name for p in scripts if table.stem.startswith(p.stem)]


def benchmark_page(table: Path) -> str:
    source = table.with_suffix(".json")
    record = json.loads(source.read_text()) if source.is_file() else {}
    command, date = find_value(record, ("command",)), find_value(record, ("date",))
    commit = commit_of(source if source.is_file() else table)
    if not date:  # the JSON records no date: the day it was committed (outside a git checkout: unknown)
        date = f"{commit.split()[-1]} (committed; the JSON records no date)" if commit else "not recorded"
    title = table.stem.replace("_", " ")
    facts = [f"* **JSON**: `benchmarks/results/{source.name}`" if source.is_file() else
             "* **JSON**: none beside this table"]
    scripts = scripts_of(table)
    if scripts:
        facts.append("* **script**: " + ", ".join(f"`benchmarks/{name}`" for name in scripts))
    if command:
        facts.append(f"* **command**: `{command if isinstance(command, str) else ' '.join(map(str, command))}`")
    if date:
        facts.append(f"* **date**: {date}")
    if commit:
        facts.append(f"* **commit** (last change of the results): `{commit}`")
    relative = Path("../../../benchmarks/results") / table.name
    return "\n".join([f"# {title}", "", *facts, "", f"```{{include}} {relative.as_posix()}", "```", ""])


def write_benchmarks(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables = sorted(RESULTS.glob("*.md"))
    for table in tables:
        (out / table.name).write_text(benchmark_page(table), encoding="utf-8")
    index = ["# Result tables", "",
             "Every table in `benchmarks/results/*.md`, written by the benchmark scripts in `benchmarks/` "
             "and read here at build time, with the JSON record each came from.", "",
             "```{toctree}", ":maxdepth: 1", "", *[t.stem for t in tables], "```", ""]
    (out / "index.md").write_text("\n".join(index), encoding="utf-8")


# -- the notebook -------------------------------------------------------------------------------------------
def shown(output: dict) -> bool:
    """An output the site can show: text, or data besides a widget's placeholder `Output()`."""
    data = output.get("data") or {}
    placeholder = set(data) == {"text/plain"} and "".join(data["text/plain"]) == "Output()"
    return output.get("output_type") == "stream" or (bool(data) and not placeholder)


def write_notebook(out: Path) -> None:
    executed = DOCS / "_executed" / "quickstart.ipynb"
    source = executed if executed.is_file() else DOCS / "quickstart.ipynb"
    notebook = json.loads(source.read_text(encoding="utf-8"))
    for cell_ in (c for c in notebook["cells"] if c["cell_type"] == "code"):
        for output in cell_.get("outputs", []):  # a live widget needs a kernel: the site shows the rest
            output.get("data", {}).pop(WIDGET, None)
        cell_["outputs"] = [o for o in cell_.get("outputs", []) if shown(o)]
    notebook.get("metadata", {}).pop("widgets", None)
    (out / "quickstart.ipynb").write_text(json.dumps(notebook, indent=1), encoding="utf-8")


def write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def generate(out: Path = OUT) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_if_changed(out / "config.md", config_page())
    write_if_changed(out / "cli.md", cli_page())
    write_if_changed(out / "api_summary.txt", api_summary())  # .txt: not a page of its own
    write_benchmarks(out / "benchmarks")
    write_notebook(out)


def bench_value(spec: str) -> str:
    """`gpu_fit.json:cases.0.ratio:.3f`: a value of a benchmarks/results JSON, formatted (the `bench` role)."""
    name, _, rest = spec.partition(":")
    path, _, form = rest.partition(":")
    value = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return format(value, form) if form else str(value)


def bench_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """{bench}`file.json:path.to.value:format` in a page: the number as the JSON holds it now; a missing
    file or field is a build error (-W), so a page cannot quote a number the results no longer have."""
    from docutils import nodes  # lazy: docutils only inside a Sphinx build

    try:
        return [nodes.inline(rawtext, bench_value(text), classes=["benchmark-value"])], []
    except (OSError, KeyError, IndexError, ValueError, TypeError) as err:
        message = inliner.reporter.error(f"{{bench}}`{text}`: {type(err).__name__}: {err}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]


def setup(app) -> dict:
    app.connect("config-inited", lambda app, config: generate())
    app.add_role("bench", bench_role)
    return {"version": "1", "parallel_read_safe": True}
