"""The words of ``attnbench COMMAND -m ...`` sorted into what hydra sweeps and what each job gets.

    --flag value, --flag       FIXED: every job's command gets it as given
    key=a,b                    key a flag of the command (its argparse dest, with underscores):
                               a sweep over the flag, hydra's ``+flag.<key>=a,b``
    hydra/... | hydra.*        hydra's own (launcher, sweeper, their settings): unchanged
    key=a,b  (any other key)   the command's override, swept: hydra's ``+set.<key>=a,b``; the job
                               gives the command ``key=a`` with the prefix the user wrote (+, ++)
    ~key                       the command's override, fixed
    --out DIR, --resume        the sweep directory, and continuing it (not the command's)

The flags come from the command's own parser (``attnbench.cli.build_parser()``), so a new option
of run, train or stats can be swept the moment it exists. No hydra here: the words only.
"""
from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from typing import Any

FLAG_NS, SET_NS = "flag", "set"  # the sweep config's two namespaces (attnbench/conf/sweep.yaml)
SWEEP_OWN = ("out", "resume")  # the sweep's own flags (every command's sweep has them; stats has no --resume)


class SweepUsageError(ValueError):
    """A bad word in a sweep: one line naming it and what is allowed (exit 2)."""


@dataclass(frozen=True)
class Flag:
    """One option of the command: how a job writes it."""
    dest: str
    option: str  # the longest option string, '--seq-lens'
    takes_value: bool
    repeat: bool = False  # an append action: a list value gives the option once per item

    def words(self, value: Any) -> list[str]:
        """The option and its value as command-line words ([] for None, or False on a switch)."""
        if not self.takes_value:
            return [self.option] if value else []
        if value is None:
            return []
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if self.repeat:
            return [w for v in items for w in (self.option, text(v))]
        return [self.option, ",".join(text(v) for v in items)]


def text(value: Any) -> str:
    """A config value as the command-line text the command parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Sweep:
    """A sweep's words, sorted (see the module docstring)."""
    command: str
    fixed: tuple[str, ...]  # the command's words for every job
    swept: tuple[str, ...]  # hydra overrides: +flag.<dest>=..., +set.<key>=...
    hydra: tuple[str, ...]  # hydra's own words, unchanged
    given: tuple[str, ...] = ()  # the user's words less --out DIR and --resume
    flags: dict[str, Flag] = field(default_factory=dict)  # every option of the command, by dest
    prefixes: dict[str, str] = field(default_factory=dict)  # command override key -> the user's prefix
    out: str | None = None
    resume: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        """What the sweep runs, in the user's words (hydra's and the directory's left out)."""
        return tuple(w for w in self.given if not is_hydra_word(w))


def swept_words(overrides: list[str]) -> list[str]:
    """hydra's overrides of a job in the user's words: '+flag.seed=1' -> 'seed=1'."""
    out = []
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        for ns in (FLAG_NS, SET_NS):
            key = key.removeprefix(f"{ns}.")
        out.append(f"{key}={value}")
    return out


def command_options(parser: argparse.ArgumentParser, command: str) -> dict[str, Flag]:
    """option string -> Flag, for every option of ``command``'s subparser (argparse has no
    public way to list them: its ``_actions`` are read)."""
    subs = [a.choices for a in parser._actions if isinstance(getattr(a, "choices", None), dict)]
    sub = next((s[command] for s in subs if command in s), None)
    if sub is None:
        raise SweepUsageError(f"{command!r}: not a command of this parser")
    return {s: Flag(a.dest, max(a.option_strings, key=len), a.nargs != 0, isinstance(a, argparse._AppendAction))
            for a in sub._actions for s in a.option_strings}


def is_hydra_word(word: str) -> bool:
    key = word.split("=", 1)[0].lstrip("+~")
    return key.startswith(("hydra/", "hydra."))


def split_prefix(key: str) -> tuple[str, str]:
    """'+params.x' -> ('+', 'params.x'); '++a' -> ('++', 'a'); 'a.b' -> ('', 'a.b')."""
    bare = key.lstrip("+")
    return key[: len(key) - len(bare)], bare


def translate(command: str, argv: list[str], parser: argparse.ArgumentParser) -> Sweep:
    """Sort ``argv`` (the words after ``COMMAND -m``); SweepUsageError names a bad word."""
    by_option = {**command_options(parser, command), "--out": Flag("out", "--out", True),
                 "--resume": Flag("resume", "--resume", False)}
    flags = {f.dest: f for f in by_option.values()}
    fixed: list[str] = []
    swept: list[str] = []
    hydra: list[str] = []
    given: list[str] = []
    prefixes: dict[str, str] = {}
    own: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("-") and len(word) > 1:
            flag, words = _option(word, argv[i + 1] if i + 1 < len(argv) else None, by_option, command)
            i += 2 if flag.takes_value and "=" not in word else 1
            if flag.dest in SWEEP_OWN:
                own[flag.dest] = words[-1] if flag.takes_value else True
            else:
                fixed += words
                given += words
            continue
        i += 1
        if is_hydra_word(word):
            hydra.append(word)
        elif word.startswith("~"):
            fixed.append(word)
        elif "=" in word:
            swept.append(_swept(word, flags, prefixes, command))
        else:
            raise SweepUsageError(f"{command} -m: unexpected argument {word!r}; allowed: --flag value (every job), "
                                  f"key=a,b (a sweep), hydra/... and hydra.* (hydra's own)")
        given.append(word)
    _check_twice(fixed, swept, by_option)
    return Sweep(command, tuple(fixed), tuple(swept), tuple(hydra), tuple(given), flags, prefixes,
                 own.get("out"), bool(own.get("resume")))


def _option(word: str, following: str | None, by_option: dict[str, Flag], command: str) -> tuple[Flag, list[str]]:
    """The flag of ``word`` and its words as the job gives them ('--seed 1', '--seed=1', '--causal')."""
    name, eq, value = word.partition("=")
    flag = by_option.get(name)
    if flag is None:
        close = difflib.get_close_matches(name, list(by_option), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SweepUsageError(f"{command} -m: unknown option {name!r}{hint}; see python -m attnbench {command} --help")
    if flag.dest == "help":
        raise SweepUsageError(f"{command} -m: --help is not a sweep; see python -m attnbench {command} --help "
                              "and the docstring of attnbench.sweep")
    if not flag.takes_value:
        if eq:
            raise SweepUsageError(f"{command} -m: {name} takes no value; got {word!r}")
        return flag, [name]
    if not eq and following is None:
        raise SweepUsageError(f"{command} -m: {name} needs a value")
    return flag, [name, value if eq else following]


def _swept(word: str, flags: dict[str, Flag], prefixes: dict[str, str], command: str) -> str:
    """``key=a,b`` as the hydra override of the sweep config's namespace it belongs to."""
    key, _, value = word.partition("=")
    prefix, bare = split_prefix(key)
    if not bare:
        raise SweepUsageError(f"{command} -m: {word!r}: no key before '='")
    if bare in flags and not prefix:
        if bare in SWEEP_OWN or bare == "help":
            what = {"out": "give --out DIR, the sweep's directory (each job writes in a directory of its own)",
                    "resume": "give --resume to continue a sweep"}.get(bare, "")
            raise SweepUsageError(f"{command} -m: {bare} cannot be swept; {what or 'it takes no value'}")
        return f"+{FLAG_NS}.{bare}={value}"
    dashed = bare.replace("-", "_")
    if "-" in bare and dashed in flags:
        raise SweepUsageError(f"{command} -m: {word!r}: sweep keys are written with underscores (did you mean "
                              f"{dashed}={value}?)")
    prefixes[bare] = prefix
    return f"+{SET_NS}.{bare}={value}"


def _check_twice(fixed: list[str], swept: list[str], by_option: dict[str, Flag]) -> None:
    """A flag given as ``--flag`` and swept as ``flag=...``: one of the two."""
    given = {by_option[w].dest for w in fixed if w in by_option}
    for s in swept:
        dest = s.split("=", 1)[0].removeprefix(f"+{FLAG_NS}.")
        if s.startswith(f"+{FLAG_NS}.") and dest in given:
            option = next(o for o, f in by_option.items() if f.dest == dest and o.startswith("--"))
            raise SweepUsageError(f"{option} is given as a flag and swept as {dest}=...; give one of them")
