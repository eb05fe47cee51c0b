"""What a task's skeleton takes, known without its data: the kind, the vocabulary, the classes.

Model-level runs feed the task's skeleton random token ids; they never build the data (a paper
size reads release files that need not be on this machine, and generating a small size's data
takes minutes). A task's inputs come from, in this order:

1. an ``inputs:`` block in its YAML, ``{kind: classify, vocab_size: 257, num_classes: 2}``: a
   task of your own declares them there;
2. the data builder its ``data._target_`` names, from that module's constants and the data
   config's own knobs (mqar's ``vocab_size``), one entry per builder in :data:`BUILDERS`.

Anything else is refused with one line naming the builder and what is supported. Only the head
and the embedding depend on these numbers; the attention and the blocks, which a model-level run
measures, do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from attnbench.data.base import KINDS


class InputsError(ValueError):
    """A task whose inputs a model-level run cannot know: one line, exit 2."""


@dataclass(frozen=True)
class TaskInputs:
    kind: str  # data.base.KINDS
    vocab_size: int  # token ids in [0, vocab_size); random inputs use [1, vocab_size) (0 is PAD)
    num_classes: int  # classes (classify, pair) or the target vocabulary (tokens)
    source: str  # how these were known, recorded in every row


def _text(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import corpus, text

    if data.get("root"):  # LRA's Text reads IMDB: neg / pos (a folder of other classes would differ)
        return TaskInputs("classify", corpus.VOCAB_SIZE, 2, "attnbench.data.text: bytes, IMDB's 2 classes (neg, pos)")
    packages = data.get("packages") or text.PACKAGES
    return TaskInputs("classify", corpus.VOCAB_SIZE, len(packages),
                      f"attnbench.data.text: bytes, {len(packages)} stdlib packages")


def _listops(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import listops

    return TaskInputs("classify", listops.VOCAB_SIZE, listops.NUM_CLASSES, "attnbench.data.listops constants")


def _image(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import image

    return TaskInputs("classify", image.PIXEL_VOCAB, 10, "attnbench.data.image: grey pixels, 10 classes")


def _pathfinder(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import image

    return TaskInputs("classify", image.PIXEL_VOCAB, 2, "attnbench.data.pathfinder: grey pixels, 2 classes")


def _retrieval(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import corpus

    return TaskInputs("pair", corpus.VOCAB_SIZE, 2, "attnbench.data.retrieval: byte pairs, 2 classes")


def _lm(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import corpus

    return TaskInputs("tokens", corpus.VOCAB_SIZE, corpus.VOCAB_SIZE, "attnbench.data.lm: bytes")


def _mqar(data: dict[str, Any]) -> TaskInputs:
    from attnbench.data import mqar

    v = int(data.get("vocab_size") or mqar.DEFAULTS["vocab_size"])
    return TaskInputs("tokens", v, v, f"attnbench.data.mqar: data.vocab_size {v}")


BUILDERS: dict[str, Callable[[dict[str, Any]], TaskInputs]] = {
    "attnbench.data.text.build": _text,
    "attnbench.data.listops.build": _listops,
    "attnbench.data.image.build": _image,
    "attnbench.data.pathfinder.build": _pathfinder,
    "attnbench.data.retrieval.build": _retrieval,
    "attnbench.data.lm.build": _lm,
    "attnbench.data.mqar.build": _mqar,
}


def declared(task: str, block: Any) -> TaskInputs:
    """A task's own ``inputs:`` block, checked."""
    want = "inputs: {kind: classify | pair | tokens, vocab_size: int > 1, num_classes: int > 0}"
    if not isinstance(block, dict):
        raise InputsError(f"task {task}: inputs {block!r} is not a mapping; allowed: {want}")
    kind, v, c = block.get("kind"), block.get("vocab_size"), block.get("num_classes")
    if kind not in KINDS or not isinstance(v, int) or v < 2 or not isinstance(c, int) or c < 1:
        raise InputsError(f"task {task}: inputs {block!r}; allowed: {want}")
    return TaskInputs(kind, v, c, "the task's declared inputs block")


def task_inputs(task: str, cfg: dict[str, Any]) -> TaskInputs:
    """The inputs of the resolved task config ``cfg`` (``attnbench.train.tasks.load``)."""
    if cfg.get("inputs") is not None:
        return declared(task, cfg["inputs"])
    target = str((cfg.get("data") or {}).get("_target_"))
    known = BUILDERS.get(target)
    if known is None:
        raise InputsError(f"task {task}: data builder {target!r} is not one a model-level run knows the inputs of "
                          f"without building the data; supported: {', '.join(BUILDERS)}; or declare them in the "
                          f"task's YAML: inputs: {{kind: classify, vocab_size: 257, num_classes: 2}}")
    return known(cfg["data"])
