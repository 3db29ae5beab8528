"""Package layout that pyproject.toml cannot say alone: the top-level ``resources/`` folder is
installed as the package ``bodyage_resources`` (models, atlases, presets, icon), so a built
wheel carries it and :mod:`bodyage_core.resources` finds it outside the checkout."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["bodyage_core*", "bodyage_gui*"]) + ["bodyage_resources"],
    package_dir={"bodyage_resources": "resources"},
    package_data={"bodyage_resources": ["**/*"], "": ["*.json", "*.png", "*.csv"]},
    exclude_package_data={"bodyage_resources": ["**/__pycache__/*", "**/*.pyc"]},
)
