"""A variant's parameters: declared once with their default and what is allowed.

Every parameter (window, dilation, block, global tokens, features, hashes, chunk, memory length,
Swin window, ...) is a :class:`Param` in the declaration of its pattern or kernel; the default
is written there and nowhere else. :func:`resolve` turns a user's overrides into the complete,
validated dict a kernel receives, once per case.

The selection syntax, shared by every subcommand that takes variants::

    sliding_window@blocked[window=128]              one setting
    'sliding_window@blocked[window=64,256,1024]'    a list of values: a grid, one case per value
    'bigbird[block=32,64,random_blocks=0,3]'        several keys: the cartesian product
    'full@sdpa,performer@favor[nb_features=64,256]' items separated by commas outside brackets

A token with ``=`` starts a key; the tokens after it (until the next key) are its values.
Values are read as ``none``/``null``, ``true``/``false``, integers, numbers, else text (a Swin
grid is ``grid=32x64``). Quote the whole argument in the shell: brackets are glob characters.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


class ParamError(ValueError):
    """A bad parameter: one line naming the variant, the key, the value and what is allowed."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default, what is allowed (in words), and ``convert(value)``, which
    returns the normalized value or raises ValueError when the value is not allowed."""

    default: Any
    allowed: str
    convert: Callable[[Any], Any]
    doc: str = ""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_int(x: Any) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not _is_int(x):
        raise ValueError
    return x


def integer(default: int | None, minimum: int = 0, doc: str = "", *, optional: str | None = None) -> Param:
    """An integer >= ``minimum``; ``optional``: None is allowed too and means this (in words)."""
    allowed = f"an integer >= {minimum}" + (f", or none ({optional})" if optional else "")

    def convert(x):
        if x is None and optional:
            return None
        v = _as_int(x)
        if v < minimum:
            raise ValueError
        return v

    return Param(default, allowed, convert, doc)


def number(default: float, minimum: float = 0.0, doc: str = "", *, exclusive: bool = False) -> Param:
    allowed = f"a number {'>' if exclusive else '>='} {minimum:g}"

    def convert(x):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError
        if x < minimum or (exclusive and x == minimum):
            raise ValueError
        return float(x)

    return Param(default, allowed, convert, doc)


def boolean(default: bool, doc: str = "") -> Param:
    def convert(x):
        if not isinstance(x, bool):
            raise ValueError
        return x

    return Param(default, "true or false", convert, doc)


def choice(default: str, options: tuple[str, ...], doc: str = "") -> Param:
    def convert(x):
        if x not in options:
            raise ValueError
        return x

    return Param(default, "one of " + ", ".join(repr(o) for o in options), convert, doc)


def int_or_auto(default: int | str, minimum: int = 1, doc: str = "") -> Param:
    def convert(x):
        return "auto" if x == "auto" else integer(0, minimum).convert(x)

    return Param(default, f"'auto' or an integer >= {minimum}", convert, doc)


def grid(doc: str = "") -> Param:
    """None (the most nearly square factorization of n) or H x W: '32x64' or [32, 64]."""
    def convert(x):
        if x is None:
            return None
        if isinstance(x, str):
            m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", x)
            if not m:
                raise ValueError
            x = (int(m.group(1)), int(m.group(2)))
        h, w = (_as_int(v) for v in x)
        if h < 1 or w < 1:
            raise ValueError
        return (h, w)

    return Param(None, "none (most nearly square H x W = n) or HxW such as 32x64", convert, doc)


def positions(default: int, doc: str = "") -> Param:
    """An integer k >= 0 (the first k positions) or a list of positions >= 0."""
    def convert(x):
        if isinstance(x, (list, tuple)):
            vals = tuple(_as_int(v) for v in x)
            if any(v < 0 for v in vals):
                raise ValueError
            return vals
        return integer(0, 0).convert(x)

    return Param(default, "an integer k >= 0 (the first k positions) or a list of positions >= 0", convert, doc)


def layout(default: str, presets: tuple[str, ...], doc: str = "") -> Param:
    """A preset name or an explicit bool matrix (Python and YAML only)."""
    def convert(x):
        if isinstance(x, str):
            if x not in presets:
                raise ValueError
            return x
        rows = [list(r) for r in (x.tolist() if hasattr(x, "tolist") else x)]
        if not rows or len({len(r) for r in rows}) != 1 or not all(isinstance(v, bool) or v in (0, 1) for r in rows for v in r):
            raise ValueError
        return tuple(tuple(bool(v) for v in r) for r in rows)

    return Param(default, " or ".join(repr(p) for p in presets) + " or a bool matrix [query blocks x key blocks]",
                 convert, doc)


# ---------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------
def describe(declared: Mapping[str, Param]) -> str:
    """'window (default 256), dilation (default 4)' or 'none'."""
    return ", ".join(f"{k} (default {p.default!r})" for k, p in declared.items()) or "none"


def resolve(variant: str, declared: Mapping[str, Param], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared key with the override or the default, validated; in declaration order.

    Raises :class:`ParamError` naming the variant, the key, the value and what is allowed.
    """
    for key in overrides:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParamError(f"{variant}: unknown parameter {key!r}{hint}; its parameters: {describe(declared)}")
    out: dict[str, Any] = {}
    for key, p in declared.items():
        if key not in overrides:
            out[key] = p.default
            continue
        value = overrides[key]
        try:
            out[key] = p.convert(value)
        except (ValueError, TypeError, OverflowError):
            raise ParamError(f"{variant}: {key}={_show(value)} is not allowed; allowed: {p.allowed}") from None
    return out


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def non_default(declared: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that differ from the declared defaults (what a label shows)."""
    from attnbench.case import freeze

    return {k: v for k, v in params.items() if k not in declared or freeze(v) != freeze(declared[k].default)}


def format_params(params: Mapping[str, Any]) -> str:
    """'k=v,k2=v2' in the selection syntax ('' for none)."""
    return ",".join(f"{k}={format_value(v)}" for k, v in params.items())


def label(variant: str, params: Mapping[str, Any]) -> str:
    """``variant[k=v,...]`` for the given (usually non-default) params; the name alone if none."""
    return f"{variant}[{format_params(params)}]" if params else variant


def format_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) for x in v):
        return f"{v[0]}x{v[1]}"
    if isinstance(v, (list, tuple)):
        return "[" + ";".join(format_value(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------------------------------------
# the selection syntax
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """One item of a selection: a name, bare pattern, glob or 'all', and a grid of parameter
    values (key -> list of values; one case per combination)."""

    name: str
    grid: dict[str, list] = field(default_factory=dict)

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values (one empty setting when there is no grid)."""
        return expand(self.grid)


def expand(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def parse_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return t


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_grid(item: str, inner: str) -> dict[str, list]:
    grid: dict[str, list] = {}
    key = None
    for tok in (t.strip() for t in inner.split(",")):
        if not tok:
            continue
        if "=" in tok:
            key, _, val = tok.partition("=")
            key = key.strip()
            if not re.fullmatch(r"[A-Za-z_]\w*", key) or key in grid:
                raise ParamError(f"{item!r}: bad or repeated parameter name {key!r}; write name[key=value,value,key2=value]")
            grid[key] = [] if not val.strip() else [parse_value(val)]
        elif key is None:
            raise ParamError(f"{item!r}: a value before any key; write name[key=value,value,key2=value]")
        else:
            grid[key].append(parse_value(tok))
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ParamError(f"{item!r}: no value for {empty[0]!r}; write name[{empty[0]}=value]")
    return grid


def parse_selection(text: str | list) -> list[Selector]:
    """'a,b[k=1,2],c*' (or a list of such items) -> selectors, in order.

    A trailing ``[...]`` holding ``=`` is a parameter grid; brackets without ``=`` stay part of
    the name (an fnmatch character class such as ``full@[fm]*``).
    """
    items = [text] if isinstance(text, str) else [str(t) for t in text]
    out: list[Selector] = []
    for chunk in items:
        for item in _split_top(chunk):
            m = re.fullmatch(r"(.*?)\[([^\[\]]*=[^\[\]]*)\]", item)
            if m:
                out.append(Selector(m.group(1).strip(), _parse_grid(item, m.group(2))))
            elif item.count("[") != item.count("]"):
                raise ParamError(f"{item!r}: unbalanced brackets; write name[key=value,...]")
            else:
                out.append(Selector(item))
    return out


def row_filter(selection: str | list) -> Callable[[str, Mapping[str, Any] | None], bool]:
    """A predicate on (variant, params) of stored rows for ``--variants`` filters (report,
    compare): a name, an fnmatch glob or 'all', where a bare pattern stands for every kernel of
    it; a bracket grid keeps the rows whose parameter is one of the listed values."""
    import fnmatch

    from attnbench.case import freeze

    selectors = parse_selection(selection)

    def name_ok(sel: Selector, variant: str) -> bool:
        if sel.name == "all":
            return True
        if "@" not in sel.name and not any(c in sel.name for c in "*?["):
            return variant.split("@", 1)[0] == sel.name
        return fnmatch.fnmatchcase(variant, sel.name)

    def grid_ok(sel: Selector, params: Mapping[str, Any]) -> bool:
        return all(k in params and freeze(params[k]) in {freeze(convert_like(v, params[k])) for v in vals}
                   for k, vals in sel.grid.items())

    def keep(variant: str, params: Mapping[str, Any] | None) -> bool:
        return any(name_ok(s, variant) and grid_ok(s, params or {}) for s in selectors)

    return keep


def convert_like(value: Any, stored: Any) -> Any:
    """A filter value read from text, as the stored value's type (grid '32x64' vs [32, 64])."""
    if isinstance(stored, (list, tuple)) and isinstance(value, str):
        try:
            return grid().convert(value)
        except ValueError:
            return value
    if isinstance(stored, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
