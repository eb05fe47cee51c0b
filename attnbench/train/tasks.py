"""Task configs: one YAML per task in the top-level ``tasks/`` directory, a hydra config group.

A task file includes the shared settings (``tasks/_shared.yaml``) and names its code by
``_target_`` (the data builder); it holds no logic. Its keys:

    name, version          what the task is; results of different versions are not comparable
    metric                 {name: accuracy | bits_per_byte, higher_is_better}
    sizes.small            data / model / train / variant_params for a one-minute CPU job
    sizes.paper            the same after the Long Range Arena's released config (GPU runs)

:func:`load` composes the file with hydra, lays the chosen size over the shared settings and
then applies the user's overrides (``train.lr=0.01``), so an override always wins and a key
that does not exist is refused with the keys that do.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf, open_dict

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
SIZES = ("small", "paper")
REQUIRED = ("name", "version", "metric", "data", "model", "train")
METRICS = {"accuracy": True, "bits_per_byte": False}  # metric -> higher is better


class TaskError(ValueError):
    """A bad task name, size or override: one line naming the value and what is allowed."""


def task_names(tasks_dir: Path | None = None) -> list[str]:
    """Every task in ``tasks_dir`` (files starting with '_' are shared settings, not tasks)."""
    d = Path(tasks_dir or TASKS_DIR)
    return sorted(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))


def _compose(name: str, tasks_dir: Path) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tasks_dir.resolve()), version_base="1.3"):
        cfg = compose(config_name=name)
    return OmegaConf.to_container(cfg, resolve=True)


def _apply_overrides(cfg: dict[str, Any], overrides: Iterable[str], where: str) -> dict[str, Any]:
    conf = OmegaConf.create(cfg)
    OmegaConf.set_struct(conf, True)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep:
            raise TaskError(f"override {item!r}: expected key=value (e.g. train.lr=0.001)")
        if OmegaConf.select(conf, key.lstrip("+"), default="__missing__") == "__missing__" and not key.startswith("+"):
            keys = [k for k in _flat_keys(cfg) if k.split(".")[0] in ("data", "model", "train", "variant_params")]
            close = difflib.get_close_matches(key, keys, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise TaskError(f"override {item!r}: {where} has no key {key!r}{hint}; prefix '+' to add one")
        with open_dict(conf):
            conf.merge_with_dotlist([item.lstrip("+")])
    return OmegaConf.to_container(conf, resolve=True)


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def load(name: str, size: str = "small", overrides: Iterable[str] = (), tasks_dir: Path | None = None) -> dict[str, Any]:
    """The resolved config of ``name`` at ``size`` with ``overrides`` applied (a plain dict)."""
    tasks_dir = Path(tasks_dir or TASKS_DIR)
    names = task_names(tasks_dir)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=2)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise TaskError(f"--task {name!r}: no such task{hint}; tasks: {', '.join(names)} (in {tasks_dir})")
    if size not in SIZES:
        raise TaskError(f"--size {size!r}: allowed: {', '.join(SIZES)}")
    raw = _compose(name, tasks_dir)
    sizes = raw.pop("sizes", {}) or {}
    if size not in sizes:
        raise TaskError(f"--size {size!r}: task {name} defines {', '.join(sizes) or 'no sizes'}")
    cfg = OmegaConf.to_container(OmegaConf.merge(raw, sizes[size]), resolve=True)
    cfg = _apply_overrides(cfg, overrides, f"task {name} ({size})")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise TaskError(f"task {name}: {tasks_dir / (name + '.yaml')} lacks {', '.join(missing)}")
    metric = cfg["metric"].get("name")
    if metric not in METRICS or bool(cfg["metric"].get("higher_is_better")) != METRICS[metric]:
        raise TaskError(f"task {name}: metric {cfg['metric']!r}; allowed: "
                        + ", ".join(f"{m} (higher_is_better: {str(h).lower()})" for m, h in METRICS.items()))
    cfg.setdefault("variant_params", {})
    cfg["size"] = size
    return cfg
