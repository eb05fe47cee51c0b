"""Hydra's side of a sweep: the multirun of ``attnbench/conf/sweep.yaml``, and room for a job's
command to compose configs of its own.

The multirun is hydra's own app (``hydra.main``, ``version_base="1.3"``) called with a
constructed ``sys.argv`` (``attnbench -m <words>``), so hydra's override grammar, its sweepers and
launchers (basic, joblib, submitit) do the work; ``sys.argv`` is restored after. With
``HYDRA_FULL_ERROR`` set during the call, hydra raises what ended the multirun (the first
failed job's exception, raised after every job ran; a bad override) instead of printing a
traceback and exiting.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from attnbench.config import CONF_DIR

CONFIG_NAME = "sweep"


def multirun(words: list[str], task: Callable[[Any], Any]) -> BaseException | None:
    """Hydra's multirun of ``task`` over ``words`` (its command line less ``-m``): the exception
    that ended it, None when every job ended well."""
    import hydra

    app = hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")(task)
    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["attnbench", "-m", *words]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the caller says what it means
        return e
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return None


def job_count(swept: list[str]) -> int | None:
    """Jobs of hydra's basic sweeper over ``swept`` (the product of every sweep's length);
    None when hydra cannot parse them (it will say why when it runs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(swept))
        return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in parsed)
    except Exception:  # noqa: BLE001 - hydra's grammar errors come from hydra itself
        return None


@contextmanager
def outside_hydra() -> Iterator[None]:
    """The sweep's hydra app set aside while a job's command runs: ``run`` and ``train`` compose
    their own configs with ``hydra.initialize_config_dir``, which refuses while an app is set up."""
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    app = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        yield
    finally:
        now = GlobalHydra.instance()  # initialize_config_dir may have put another instance in place
        now.clear()
        if app is not None:
            now.initialize(app)
