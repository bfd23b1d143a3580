"""Files the installed package needs are declared in pyproject.toml (a non-editable install
only carries what its package-data patterns match)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_data_patterns_cover_the_shipped_checkpoints():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["pimgpt.mapping"]
    base = ROOT / config["tool"]["setuptools"]["package-dir"]["pimgpt.mapping"]
    matched = {p for pattern in patterns for p in base.glob(pattern) if p.is_file()}
    shipped = {p for p in (base / "data").rglob("*") if p.is_file()}
    assert shipped, "no shipped data found"
    assert shipped <= matched, f"not packaged: {sorted(str(p) for p in shipped - matched)}"


def test_every_subpackage_is_declared():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = set(config["tool"]["setuptools"]["packages"])
    dirs = config["tool"]["setuptools"]["package-dir"]
    assert declared == set(dirs)
    for package, folder in dirs.items():
        assert (ROOT / folder / "__init__.py").is_file(), package
