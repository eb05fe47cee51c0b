"""The one loader: fills the registry with the builtins, installed entry points and plugin files,
then answers every lookup (``get``, ``names``, ``select``, ``all_specs``).

Nothing below this module imports a variant; the CLI, the harness, the reports and the tests
ask here. Loading is idempotent and happens on the first lookup.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from attnbench import params as P
from attnbench import registry
from attnbench.case import freeze
from attnbench.registry import UnknownVariant, VariantSpec

ENTRY_POINT_GROUP = "attnbench.variants"
_LOADED = False


def load() -> None:
    """Register the builtin variants and the installed entry points (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    importlib.import_module("attnbench.variants")
    load_entry_points()


def load_entry_points() -> None:
    """Import third-party kernels declared under the ``attnbench.variants`` entry-point group
    (a module whose import registers, or a function to call)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        with registry.source(f"entry point {ep.name}"):
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()


class PluginError(ValueError):
    """A plugin file that cannot be loaded: one line naming the file, the line and what is wrong."""


class PluginNotFound(PluginError, FileNotFoundError):
    pass


def _plugin_error(path: str | Path, exc: Exception) -> PluginError:
    """``--plugin FILE: line N: SyntaxError: ...; fix the file`` (the line in the plugin, if any)."""
    p = Path(path).resolve()
    if isinstance(exc, SyntaxError):
        elsewhere = exc.filename and Path(exc.filename).resolve() != p
        line, what = exc.lineno, f"syntax error: {exc.msg}" + (f" (in {exc.filename}, which it imports)" if elsewhere else "")
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == p]
        line, what = (frames[-1].lineno if frames else None), f"{type(exc).__name__}: {exc}"
    where = f" line {line}:" if line else ""
    return PluginError(" ".join(f"--plugin {path}:{where} {what}; fix the file".split()))


def load_plugin(path: str | Path) -> None:
    """Import a Python file whose ``@register`` decorators add variants (``--plugin FILE``).
    A missing file, a syntax error or a failed registration raises :class:`PluginError`."""
    p = Path(path)
    if not p.is_file():
        raise PluginNotFound(f"--plugin {path}: no such file (give a path to a .py file)")
    load()
    mod_name = f"attnbench_plugin_{abs(hash(str(p.resolve())))}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    with registry.source(f"plugin {p}"):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of the file is the file's
            sys.modules.pop(mod_name, None)  # a fixed file can be loaded again in this process
            raise _plugin_error(path, exc) from exc
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise


def all_specs() -> list[VariantSpec]:
    load()
    return registry.specs()


def get(name: str) -> VariantSpec:
    """The spec for ``pattern@kernel`` or a bare ``pattern`` (its default kernel)."""
    load()
    return registry.lookup(name)


@dataclass(frozen=True)
class Choice:
    """A selected variant and the parameter settings (overrides) to run it with."""

    spec: VariantSpec
    settings: tuple[tuple[tuple[str, Any], ...], ...]  # each a frozen override dict

    def overrides(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.settings]


def _grid_for(spec: VariantSpec, grid: Mapping[str, list], config: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """Config params (by pattern, then by variant name), then the selector's own grid. In a
    config a list is a grid of values: a list-valued parameter (global token positions) is
    written as a list of lists, ``global_tokens: [[0, 100]]``; a Swin grid as ``32x64``."""
    out: dict[str, list] = {}
    for key in (spec.pattern, spec.name):
        for k, v in (config.get(key) or {}).items():
            if k in spec.params:
                out[k] = list(v) if isinstance(v, (list, tuple)) else [v]
    out.update({k: list(v) for k, v in grid.items()})
    return out


def _check_config(config: Mapping[str, Mapping[str, Any]], chosen: list[VariantSpec]) -> None:
    """Every key of a config params entry must be declared by some selected kernel it names."""
    for who, kv in config.items():
        targets = [s for s in chosen if who in (s.pattern, s.name)]
        if not targets:
            raise P.ParamError(f"params.{who}: no selected variant is {who!r} or of pattern {who!r}")
        for k in kv or {}:
            if not any(k in s.params for s in targets):
                P.resolve(targets[0].name, targets[0].params, {k: kv[k]})  # raises: unknown parameter


def select(selection: str | list, config: Mapping[str, Mapping[str, Any]] | None = None) -> list[Choice]:
    """Selected variants with their validated parameter settings, in selection order.

    ``selection``: the ``--variants`` text (``params`` module docstring: names, bare patterns,
    globs, 'all', each with an optional ``[key=values]`` grid). ``config``: parameter grids by
    pattern or variant name (the ``params:`` mapping of a config). A glob's grid applies to the
    matched variants that declare every key (an error if none does); a name's grid must fit it.
    """
    load()
    selectors = P.parse_selection(selection)
    if not selectors:
        raise UnknownVariant("no variants selected; use 'all', names or globs such as 'full@*'")
    config = dict(config or {})
    picked: dict[str, list] = {}
    for sel in selectors:
        names = registry.expand(sel.name)
        if sel.grid and len(names) > 1:
            names = [n for n in names if set(sel.grid) <= set(registry.lookup(n).params)] or names[:1]
        for n in names:
            spec = registry.lookup(n)
            for setting in P.expand(_grid_for(spec, sel.grid, config)):
                resolved = spec.resolve_params(setting)  # raises ParamError naming variant, key, value
                frozen = tuple(sorted((k, freeze(resolved[k])) for k in setting))
                if frozen not in picked.setdefault(n, []):
                    picked[n].append(frozen)
    _check_config(config, [registry.lookup(n) for n in picked])
    return [Choice(registry.lookup(n), tuple(s)) for n, s in picked.items()]


def names(selection: str | list = "all") -> list[str]:
    """Registered names a selection stands for (each once, in selection order; globs sorted)."""
    return [c.spec.name for c in select(selection)]
