"""One registry per kind of component (losses, samplers, schedules), like timm's ``register_model``.

A registry is the only list of names of its kind: config.py takes its ``--flag`` choices from it, so adding
a loss is one ``@LOSSES.register("name")`` builder plus its test. A builder carries its own hyperparameters
as keyword-only parameters named like Config fields (``focal_gamma``, ``cb_beta``); ``build`` hands each
builder those it declares from a settings mapping (a Config's values) and nothing else, so an entry ignores
what it does not need.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .errors import UserError


class Registry(dict):
    """name -> builder. ``flag`` names the command-line option in error messages."""

    def __init__(self, flag: str):
        super().__init__()
        self.flag = flag

    def register(self, name: str) -> Callable:
        def add(builder: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.flag} {name!r} registered twice")
            self[name] = builder
            return builder
        return add

    def lookup(self, name: str) -> Callable:
        if name not in self:
            raise UserError(f"{self.flag} {name!r}: unknown; choose one of {', '.join(self)}")
        return self[name]

    def hyperparameters(self, name: str) -> dict[str, Any]:
        """The keyword-only parameters the builder declares, with their defaults (inspect.Parameter.empty
        where it has none)."""
        params = inspect.signature(self.lookup(name)).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def build(self, name: str, *args, settings: Mapping[str, Any] | None = None) -> Any:
        """builder(*args, **the hyperparameters it declares, taken from settings or its own defaults)."""
        settings = settings or {}
        chosen = {}
        for key, default in self.hyperparameters(name).items():
            if key in settings:
                chosen[key] = settings[key]
            elif default is inspect.Parameter.empty:
                raise UserError(f"{self.flag} {name}: needs a value for {key}")
        return self[name](*args, **chosen)
