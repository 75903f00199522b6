"""Layout rules of DESIGN.md that a refactor could silently break."""
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
