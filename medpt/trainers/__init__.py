"""Method trainers; importing this package imports every module in it, which registers them.

To add a method: write ``medpt/trainers/<method>.py`` with a ``TrainerX`` subclass decorated by
``@TRAINER_REGISTRY.register("<Name>")`` and add ``medpt/configs/trainers/<Name>/vit_b16.yaml``.
There is no central list to edit; the registry-parametrised tests then cover the new method.
"""
import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
