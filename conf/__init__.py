"""expkit's config groups. Importing this package (Hydra does, to read pkg://expkit.conf)
registers the schemas that the YAML files here name as their bases (base_<name>)."""

from expkit.config.schema import store_schemas

store_schemas()
