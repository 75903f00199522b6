"""Layout rules of docs/architecture.md that a refactor could silently break."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_platform_not_shadowed_with_repo_root_on_path():
    # `ray job submit --working-dir .` puts the repo root on sys.path; platform/ must stay a namespace folder.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_subpackages_import_as_odvla():
    import odvla.model.config  # noqa: F401
    import odvla.platform.config

    assert Path(odvla.platform.config.__file__).resolve().is_relative_to(ROOT / "platform")


def test_model_code_imports_no_cluster_or_tracking_library():
    bad = re.compile(r"^\s*(import|from)\s+(ray|mlflow|deepspeed|odvla\.platform)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "model").rglob("*.py") if bad.search(p.read_text())]
    assert offenders == []


def test_dependencies_point_one_way():
    upward = re.compile(r"^\s*(import|from)\s+odvla\.(jobs|tune|serve)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "platform").rglob("*.py") if upward.search(p.read_text())]
    assert offenders == []


def _import_graph() -> dict:
    """Subpackage -> {imported subpackage: [files]}, from every import statement (lazy ones inside functions too).
    A subpackage is ``model``, ``tune``, ``serve``, ``jobs`` or ``platform.<folder or module>``."""
    import ast

    def unit(mod: str):
        parts = mod.split(".")
        if parts[0] != "odvla" or len(parts) < 2:
            return None
        return f"platform.{parts[2]}" if parts[1] == "platform" and len(parts) > 2 else parts[1]

    graph: dict = {}
    for folder in ("model", "platform", "jobs", "tune", "serve"):
        for path in (ROOT / folder).rglob("*.py"):
            here = unit("odvla." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    there = unit(name)
                    if there and there != here:
                        graph.setdefault(here, {}).setdefault(there, []).append(str(path.relative_to(ROOT)))
    return graph


def test_no_import_cycles_between_subpackages():
    graph = _import_graph()
    assert "platform.train" in graph and "platform.config" in graph["platform.train"]  # the graph sees imports

    def reaches(start: str) -> set:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [f"{a} -> {b} (in {sorted(set(files))[:2]})" for a in sorted(graph) for b, files in graph[a].items()
              if a in reaches(b)]
    assert cycles == [], "import cycles between subpackages:\n" + "\n".join(cycles)


def test_eval_and_serve_do_not_import_training():
    graph = _import_graph()
    for user in ("platform.eval", "serve"):
        assert "platform.train" not in graph.get(user, {}), graph[user].get("platform.train")


# Only entry points see the root ``Config``; every other function takes the sections it reads (docs/architecture.md).
ROOT_CONFIG_FILES = ("platform/cli/", "jobs/", "platform/config/", "tune/trial.py", "tune/sweep.py")
"""Whole files that may take the root: the CLI, jobs/, the config package itself, the trial driver and the sweep."""
ROOT_CONFIG_FUNCTIONS = {
    # run-level entry points: they log the whole config to MLflow or write it into an export
    ("platform/train/trainer.py", "run_stage"), ("platform/train/pipeline.py", "run_pipeline"),
    ("platform/eval/evaluate.py", "run_eval"), ("platform/export.py", "save_export"),
    ("platform/tracking/sweep_runs.py", "open_sweep_run"), ("platform/tracking/sweep_runs.py", "TrialRun.open"),
    ("tune/recipe.py", "SweepRecipe.resolve"),
    # a stage's root config from the pipeline's root, and the demo driver (``odvla demo``)
    ("platform/train/stages.py", "stage_config"), ("platform/demo.py", "run_demo"), ("platform/demo.py", "_run_demo"),
}


def _root_sections(schema_source: str) -> set:
    """The field names of ``class Config`` (the root) in the schema module's source."""
    import ast

    root = next(n for n in ast.parse(schema_source).body if isinstance(n, ast.ClassDef) and n.name == "Config")
    return {s.target.id for s in root.body if isinstance(s, ast.AnnAssign)}


def _functions(tree):
    """(qualified name, FunctionDef) of every function and method, nested ones too."""
    import ast

    todo = [("", tree)]
    while todo:
        prefix, node = todo.pop()
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + ch.name, ch
                todo.append((prefix + ch.name + ".", ch))
            elif isinstance(ch, ast.ClassDef):
                todo.append((prefix + ch.name + ".", ch))
            else:
                todo.append((prefix, ch))


def root_config_takers(sources: dict, sections: set) -> dict:
    """{(file, qualified name): parameter} of every function in ``sources`` ({file: source}) that takes the root
    config: a parameter annotated ``Config`` (not ``DataConfig`` & co.), or one named ``cfg`` / ``config`` whose
    function reads a root section of it (``cfg.data``) or hands it on to a function that takes the root (by name,
    to a fixed point)."""
    import ast

    funcs = [(f, q, fn) for f, src in sources.items() for q, fn in _functions(ast.parse(src))]

    def params(fn):
        a = fn.args
        return a.posonlyargs + a.args + a.kwonlyargs

    def annotated_root(p) -> bool:
        return p.annotation is not None and "Config" in re.findall(r"\w+", ast.unparse(p.annotation))

    def callee(call) -> str:
        f = call.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""

    found: dict = {}
    changed = True
    while changed:
        changed = False
        takers = {q.split(".")[-1] for _, q in found} | {q.split(".")[-1] for _, q in ROOT_CONFIG_FUNCTIONS}
        for f, q, fn in funcs:
            if (f, q) in found:
                continue
            for p in params(fn):
                hit = annotated_root(p)
                if not hit and p.arg in ("cfg", "config"):
                    for n in ast.walk(fn):
                        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == p.arg
                                and n.attr in sections):
                            hit = True  # reads cfg.<root section>
                        elif isinstance(n, ast.Call) and callee(n) in takers and any(
                                isinstance(a, ast.Name) and a.id == p.arg
                                for a in list(n.args) + [k.value for k in n.keywords]):
                            hit = True  # hands cfg on to a function that takes the root
                        if hit:
                            break
                if hit:
                    found[(f, q)] = p.arg
                    changed = True
                    break
    return found


def test_root_config_detector_sees_reads_hand_ons_and_annotations():
    sections = {"data", "model", "train"}
    src = ("def reads(cfg):\n    return cfg.data.shards\n"
           "def hands_on(config, n):\n    return reads(config)\n"
           "def annotated(c: 'Config'):\n    return c\n"
           "def a_section(cfg: 'ModelConfig', data: 'DataConfig'):\n    return cfg.vision, data.shards\n"
           "class K:\n    def method(self, cfg):\n        return cfg.train.lr\n")
    assert root_config_takers({"x.py": src}, sections) == {
        ("x.py", "reads"): "cfg", ("x.py", "hands_on"): "config", ("x.py", "annotated"): "c",
        ("x.py", "K.method"): "cfg"}


def test_only_entry_points_take_the_root_config():
    sources = {str(p.relative_to(ROOT)): p.read_text()
               for folder in ("model", "platform", "jobs", "tune", "serve") for p in (ROOT / folder).rglob("*.py")}
    sections = _root_sections(sources["platform/config/schema.py"])
    assert {"data", "model", "stage", "train", "eval", "tracking"} <= sections
    found = root_config_takers(sources, sections)
    assert ("platform/train/trainer.py", "run_stage") in found  # the detector sees a real entry point
    stale = sorted(k for k in ROOT_CONFIG_FUNCTIONS if k not in found)
    assert stale == [], f"allow-listed entry points that no longer take the root config (remove them): {stale}"
    offenders = sorted(f"{f}: {q}({p})" for (f, q), p in found.items()
                       if (f, q) not in ROOT_CONFIG_FUNCTIONS and not f.startswith(ROOT_CONFIG_FILES))
    assert offenders == [], ("functions that take the root Config outside the entry points; pass the sections "
                             "they read (data, model.vision, eval, ...) instead:\n" + "\n".join(offenders))


# Roots made, not taken: ``from_dict``/``load_config`` (and an export's config read back) build a root ``Config``;
# outside the entry points a function holds the sections it reads, never the root, not even on an object.
ROOT_MAKERS = {"from_dict": None, "load_config": None, "load_export_config": 1, "load_export": 1}
"""Calls (by bare name) that give a root config: the value itself (None) or its position in the returned tuple."""
ROOT_CONFIG_COMMAND_FILES = ("platform/bench/", "serve/cli.py", "serve/bench.py", "serve/fault_bench.py")
"""Commands outside ``platform/cli/`` (``odvla bench ...``, ``odvla serve``/``plan``, the serve benchmarks): they
build their config from their own arguments, as the CLI does."""
ROOT_CONFIG_MAKERS = {
    # `serve run serve/config.yaml` builds the app from its YAML arguments; a sweep trial's config, for its driver
    ("serve/app.py", "build_app"), ("tune/recipe.py", "SweepRecipe.trial_config"),
    # the demo driver reads a stage preset's sections
    ("platform/demo.py", "demo_steps"), ("platform/demo.py", "demo_stage_overrides"),
    # an export's whole config.yaml read back (the counterpart of save_export); callers keep its model section
    ("platform/export.py", "load_export_config"), ("platform/export.py", "load_export"),
    # the final checkpoint writes the whole config into the export (save_export): rebuilt once from the job's dict
    ("platform/train/loop.py", "report_checkpoint"),
}
"""Functions besides the entry points above that may make a root config (they take none as a parameter)."""


def _own_nodes(fn):
    """The nodes of ``fn``'s body, nested functions and classes excluded (they are checked on their own)."""
    import ast

    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def root_config_holders(sources: dict, takers: dict) -> dict:
    """{(file, qualified name): [what, ...]} of every function in ``sources`` that makes a root config (a
    ``ROOT_MAKERS`` call whose root is not thrown away as ``_``) or stores one on an object (``self.cfg = <root>``,
    ``Worker(cfg=<root>)``: an attribute target, or an argument of a call to a class). ``takers``: the result of
    ``root_config_takers``, whose root parameters count as roots too."""
    import ast

    def maker(node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ROOT_MAKERS:
            return node.func.id
        return None

    found: dict = {}
    for f, src in sources.items():
        for q, fn in _functions(ast.parse(src)):
            notes: list = []
            roots = {takers[(f, q)]} if (f, q) in takers else set()
            thrown = set()  # maker calls whose root is assigned to `_`
            assigns = [n for n in _own_nodes(fn) if isinstance(n, ast.Assign)]
            for a in assigns:
                name = maker(a.value)
                if name is None:
                    continue
                pos = ROOT_MAKERS[name]
                for target in a.targets:
                    held = target if pos is None else (target.elts[pos] if isinstance(target, ast.Tuple)
                                                       and len(target.elts) > pos else None)
                    if held is None:
                        continue
                    if isinstance(held, ast.Name) and held.id == "_":
                        thrown.add(id(a.value))
                    elif isinstance(held, ast.Name):
                        roots.add(held.id)
                    elif isinstance(held, ast.Attribute):
                        notes.append(f"stores the root of {name}(...) on {ast.unparse(held)} (line {a.lineno})")
            for node in _own_nodes(fn):
                name = maker(node)
                if name is not None and id(node) not in thrown:
                    notes.append(f"makes a root with {name}(...) (line {node.lineno})")

            def is_root(v) -> bool:
                return (isinstance(v, ast.Name) and v.id in roots) or (maker(v) is not None
                                                                      and ROOT_MAKERS[maker(v)] is None)

            for node in _own_nodes(fn):
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and is_root(node.value):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    notes += [f"stores a root on {ast.unparse(t)} (line {node.lineno})" for t in targets
                              if isinstance(t, ast.Attribute)]
                elif isinstance(node, ast.Call):
                    callee = node.func.id if isinstance(node.func, ast.Name) else (
                        node.func.attr if isinstance(node.func, ast.Attribute) else "")
                    if callee[:1].isupper():
                        notes += [f"stores a root in {callee}({k.arg or '**'}=...) (line {node.lineno})"
                                  for k in node.keywords if is_root(k.value)]
                        notes += [f"stores a root in {callee}(<arg {i}>) (line {node.lineno})"
                                  for i, a in enumerate(node.args) if is_root(a)]
            if notes:
                found[(f, q)] = sorted(set(notes))
    return found


def test_root_config_holder_detector_sees_makers_and_stores():
    src = ("def rebuilds(job):\n    cfg = from_dict(job['cfg'])\n    return Worker(job=job, cfg=cfg)\n"
           "class Replica:\n    def __init__(self, ref):\n        self.model, self.cfg = load_export(ref)\n"
           "    def fine(self, ref):\n        self.model, _ = load_export(ref)\n"
           "def a_section(stage):\n    return load_config(stage=stage).stage\n"
           "def takes(cfg):\n    return Holder(cfg)\n")
    found = root_config_holders({"x.py": src}, {("x.py", "takes"): "cfg"})
    assert set(found) == {("x.py", "rebuilds"), ("x.py", "Replica.__init__"), ("x.py", "a_section"),
                          ("x.py", "takes")}
    assert any("Worker(cfg=...)" in n for n in found[("x.py", "rebuilds")])
    assert any("on self.cfg" in n for n in found[("x.py", "Replica.__init__")])
    assert found[("x.py", "takes")] == ["stores a root in Holder(<arg 0>) (line 12)"]


def test_only_entry_points_make_or_hold_the_root_config():
    sources = {str(p.relative_to(ROOT)): p.read_text()
               for folder in ("model", "platform", "jobs", "tune", "serve") for p in (ROOT / folder).rglob("*.py")}
    takers = root_config_takers(sources, _root_sections(sources["platform/config/schema.py"]))
    found = root_config_holders(sources, takers)
    assert ("platform/train/stages.py", "stage_config") in found  # the detector sees a real entry point
    stale = sorted(k for k in ROOT_CONFIG_MAKERS if k not in found)
    assert stale == [], f"allow-listed root makers that no longer make a root config (remove them): {stale}"
    # the training loop's one root: rebuilt from the job's dict for save_export, kept in no variable or attribute
    notes = found[("platform/train/loop.py", "report_checkpoint")]
    assert len(notes) == 1 and notes[0].startswith("makes a root with from_dict(...)"), notes
    allowed = ROOT_CONFIG_FILES + ROOT_CONFIG_COMMAND_FILES
    offenders = sorted(f"{f}: {q}: {note}" for (f, q), notes in found.items() for note in notes
                       if (f, q) not in ROOT_CONFIG_FUNCTIONS | ROOT_CONFIG_MAKERS and not f.startswith(allowed))
    assert offenders == [], ("functions that make or hold the root Config outside the entry points; hold the "
                             "sections they read (train, data, model, ...) instead:\n" + "\n".join(offenders))
