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
