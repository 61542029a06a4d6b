"""Name -> class registries, as in Dassl (``dassl/utils/registry.py``).

Differences from Dassl, on purpose:

* look-ups are case-insensitive (``coop``, ``CoOp`` and ``COOP`` name the same trainer), so a
  command line can use lower case while classes keep their papers' spelling;
* a duplicate name raises at import time (Dassl does too) and names the class already there;
* an unknown name raises :class:`KeyError` listing close matches (``difflib``) and every
  registered name, so a typo is fixed in one go.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

T = TypeVar("T")


class Registry:
    """A case-insensitive map from names to objects (usually classes).

    Args:
        name: what is registered, used in error messages ("trainer", "dataset", ...).

    Raises:
        KeyError: from :meth:`register` on a duplicate name, from :meth:`get` on an unknown one.
    """

    def __init__(self, name: str):
        self._name = name
        self._obj_map: Dict[str, object] = {}
        self._canonical: Dict[str, str] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: Optional[str] = None, aliases: tuple = ()) -> Callable[[T], T]:
        """Decorator registering a class under ``name`` (default: the class's ``__name__``).

        ``aliases`` are extra names that resolve to it (e.g. ``zsclip`` for ``ZeroShotCLIP``);
        they are not listed by :meth:`names`.
        """

        def deco(obj: T) -> T:
            canonical = name or obj.__name__
            self._do_register(canonical, obj)
            for a in aliases:
                if a.lower() in self._obj_map or a.lower() in self._aliases:
                    raise KeyError(f"{self._name} alias '{a}' clashes with an existing name")
                self._aliases[a.lower()] = canonical.lower()
            return obj

        return deco

    def _do_register(self, name: str, obj: object) -> None:
        key = name.lower()
        if key in self._obj_map or key in self._aliases:
            raise KeyError(
                f"A {self._name} named '{self._canonical[key]}' is already registered "
                f"({self._obj_map[key]!r}); cannot register {obj!r} under '{name}'. "
                "Pick another name."
            )
        self._obj_map[key] = obj
        self._canonical[key] = name

    def _key(self, name: str) -> str:
        key = str(name).lower()
        return self._aliases.get(key, key)

    def get(self, name: str):
        """Return the object registered as ``name`` or one of its aliases (case-insensitive)."""
        key = self._key(name)
        if key not in self._obj_map:
            pool = list(self._obj_map) + list(self._aliases)
            close = difflib.get_close_matches(key, pool, n=3, cutoff=0.5)
            hint = ""
            if close:
                hint = " Did you mean " + " or ".join(
                    f"'{self._canonical[self._aliases.get(c, c)]}'" for c in dict.fromkeys(close)) + "?"
            raise KeyError(
                f"Unknown {self._name} '{name}'.{hint} Registered {self._name}s: "
                f"{', '.join(self.names()) or '(none)'}."
            )
        return self._obj_map[key]

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (raises like :meth:`get`)."""
        self.get(name)
        return self._canonical[self._key(name)]

    def names(self) -> List[str]:
        """Registered names in registration order."""
        return [self._canonical[k] for k in self._obj_map]

    def __contains__(self, name: str) -> bool:
        return self._key(name) in self._obj_map

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._obj_map)


TRAINER_REGISTRY = Registry("trainer")
DATASET_REGISTRY = Registry("dataset")
EVALUATOR_REGISTRY = Registry("evaluator")
