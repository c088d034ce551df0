"""expkit's version, in one place: pyproject.toml reads it from here (without importing the
package), `expkit --version` and every run's meta.json `versions.expkit` show it."""

__version__ = "0.1.0"
