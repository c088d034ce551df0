"""Package discovery, the one part of the build pyproject.toml cannot say: conf/ lives at
the top of the repository (one folder per config group, as Hydra users expect) and ships
inside the package as `expkit.conf`. Every package under expkit/ and every folder under
conf/ is found, never listed by hand, so a new one cannot be left out of the wheel
(tests/test_packaging.py compares the wheel with the source tree)."""

from setuptools import find_namespace_packages, find_packages, setup

NOT_PACKAGES = ["__pycache__", "*.__pycache__"]
conf = ["expkit.conf", *(f"expkit.conf.{name}" for name in find_namespace_packages("conf", exclude=NOT_PACKAGES))]
setup(packages=[*find_packages(include=["expkit", "expkit.*"], exclude=NOT_PACKAGES), *conf])
