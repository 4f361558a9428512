"""The one registry helper, and the one list of the built-in modules that fill each registry.

Every extension point (op rules, criteria, allocation strategies, subcommands, torch ops) is a
`Registry`: entries are added with its `register` decorator, looked up by name, and listed in
`--help` and in error messages. A registry imports the modules named for it in `BUILTINS` the
first time it is read, so importing a registry never imports its entries (no import cycles, no
"import this module for its side effects" lines scattered over the package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from onnxprune.errors import InputError

T = TypeVar("T")

#: The modules whose import registers each registry's built-in entries.
BUILTINS: dict[str, tuple[str, ...]] = {
    "op rule": tuple(
        f"onnxprune.analysis.rules.{m}"
        for m in ("ops", "attention", "integer", "quant", "nbits", "recurrent", "topology", "residual")
    ),
    "criterion": tuple(f"onnxprune.criteria.{m}" for m in ("magnitude", "activation", "heads")),
    "allocation strategy": tuple(
        f"onnxprune.select.strategies.{m}"
        for m in ("uniform", "global_threshold", "layerwise", "sensitivity_greedy", "random_search")
    ),
    "subcommand": tuple(  # in the order of `onnxprune --help`
        f"onnxprune.commands.{m}"
        for m in ("prune", "analyze", "sensitivity", "finetune", "check", "bench", "profile", "ops")
    ),
    "torch op": ("onnxprune.torch.convert",),
}


class Registry(Mapping, Generic[T]):
    """Named entries of one kind (`kind` names it in messages); built-ins load on first read."""

    def __init__(self, kind: str, parameter: str | None = None):
        self.kind = kind
        #: the option a user sets to choose an entry (named in the unknown-name error)
        self.parameter = parameter
        self._entries: dict[str, T] = {}
        self._loaded = False

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under each of `names`."""

        def decorate(entry: T) -> T:
            for name in names:
                self.add(name, entry)
            return entry

        return decorate

    def get_or_fail(self, name: str) -> T:
        """The entry called `name`, or an InputError that lists the known names."""
        self._load()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise InputError(f"unknown {self.kind} '{name}' (known: {known})", parameter=self.parameter)
        return self._entries[name]

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in BUILTINS.get(self.kind, ()):
                importlib.import_module(module)

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
