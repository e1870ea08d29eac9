"""The package metadata builds with the setuptools that pyproject.toml asks for, without deprecation warnings."""

from __future__ import annotations

import warnings

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

from longtail.paths import PROJECT_ROOT


def test_pyproject_metadata_builds_without_deprecation_warnings(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # the readme and package paths are relative to the project
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distribution = apply_configuration(Distribution(), "pyproject.toml")
    assert distribution.metadata.license_expression == "MIT"

