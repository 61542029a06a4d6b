"""Dataset readers; importing this package imports every module in it, which registers them.

A reader is a ``DatasetBase`` subclass in its own module here, decorated with
``@DATASET_REGISTRY.register("<id>")``; no central list to edit.
"""
import importlib
import pkgutil

from .synthetic import SeparableSynthetic

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SeparableSynthetic"]
