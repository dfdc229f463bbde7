"""Indexed data sources (read sample by sample), one module each; see `stagetune.data.source`."""

from types import ModuleType

from stagetune.data.sources import factory, image_csv, image_folder

INDEXED_SOURCES: dict[str, ModuleType] = {
    "image_folder": image_folder,
    "image_csv": image_csv,
    "factory": factory,
}
"""data.source kind -> module with `open_source(cfg, seed) -> IndexedSource` and `reopen(manifest) -> readers`."""
