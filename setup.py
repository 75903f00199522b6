"""Maps the repository's top-level folders onto the import package ``odvla``.

``platform/``, ``model/`` ... become ``odvla.platform``, ``odvla.model`` ... (docs/architecture.md). The folders are
namespace packages (``platform/`` must never get an ``__init__.py``: it would shadow Python's own ``platform``
module whenever the repo root is on ``sys.path``), so the package list is discovered here rather than declared.
"""
from setuptools import find_namespace_packages, setup

SUBPACKAGES = ["platform", "jobs", "model", "serve", "tune"]
found = find_namespace_packages(where=".", include=[f"{s}*" for s in SUBPACKAGES])
found = [p for p in found if "__pycache__" not in p]

setup(
    packages=["odvla"] + [f"odvla.{p}" for p in found],
    package_dir={"odvla": "."},
    package_data={"odvla.platform.config": ["presets/*.yaml"], "odvla.serve": ["*.yaml"]},
)
