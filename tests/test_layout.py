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
