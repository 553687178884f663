"""The model catalog: known GGUF models by short name."""

from kronk.catalog.catalog import CAPABILITIES, Catalog, CatalogEntry, PypiSource, UnknownModel

__all__ = ["CAPABILITIES", "Catalog", "CatalogEntry", "PypiSource", "UnknownModel"]
