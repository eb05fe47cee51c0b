"""What runs inside a model-level probe's own process: the task's skeleton at one n, trained and timed.

Order (DESIGN.md's measurement protocol, at the level of a model):

1. the baseline: the process (interpreter, torch, plugins, and a warm-up of two steps at a small n,
   freed: :func:`warm_up`) before the model exists;
2. the skeleton (``attnbench.models.build_model``: a variant that cannot run the model's case is
   ``unsupported`` with the registry's reasons), AdamW as training builds it
   (``attnbench.train.loop.optimizer``), random int64 tokens in [1, vocab) from the seed;
3. the first training step timed apart (AdamW allocates its state), then a second: the peak of
   both above the baseline is ``peak_mem_bytes`` (LRA's peak memory: weights, gradients,
   optimizer state, activations). A max-n probe stops here;
4. one steady step in a memory pass of its own (``step_mem_bytes``), its attention calls recorded;
5. timed steps (``harness.timing.measure``: warm-up, confidence rule, disturbed samples);
6. the same steps with every attention call an identity (``swap.identity``) -> ``attn_share``;
7. forwards under ``inference_mode`` in eval mode -> tokens/s;
8. the kernel alone, fwd+bwd, on the recorded attention case -> ``kernel_ms``.

A failure in 2-5 is the probe's status; a part of 6-8 that fails leaves the row ok, with that
part's fields empty and its reason in ``reasons``.
"""
from __future__ import annotations

import gc
import time
from typing import Any

import torch

from attnbench import catalog
from attnbench.case import Shape
from attnbench.harness import execute, memory, timing
from attnbench.harness.failures import classify
from attnbench.harness.inputs import make_inputs
from attnbench.models import ModelConfig, build_model, count_params
from attnbench.modelbench import swap
from attnbench.train.loop import optimizer
from attnbench.train.metrics import loss_fn


class StepTooSlow(Exception):
    """A max-n probe's training step took longer than its limit."""


def build(job: dict[str, Any]):
    """(model, step, x): the skeleton on its device, one training step as a callable, the inputs."""
    n, B, kind, device = int(job["seq_len"]), int(job["batch"]), job["kind"], job["device"]
    cfg = ModelConfig(**job["model"], variant=job["variant"], params=dict(job["params"]),
                      vocab_size=int(job["vocab_size"]), num_classes=int(job["num_classes"]), max_len=n,
                      causal=kind == "tokens")
    torch.manual_seed(int(job["seed"]))
    model = build_model(kind, cfg, device=device).to(device)
    model.train()
    opt = optimizer(model, job["train"])
    g = torch.Generator().manual_seed(int(job["seed"]))
    x = torch.randint(1, cfg.vocab_size, (B, 2, n) if kind == "pair" else (B, n), generator=g)  # [B, (2,) n]
    y = torch.randint(0, cfg.num_classes, (B, n) if kind == "tokens" else (B,), generator=g)  # [B, (n)]
    x, y = x.to(device), y.to(device)
    clip = job["train"].get("clip_norm")
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x)
        loss_fn(logits, y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, float(clip))
        opt.step()

    return model, step, x


WARM_N = 128  # the warm-up's sequence length: small, yet every lazy initialization of a step happens


def warm_up(job: dict[str, Any]) -> None:
    """Two training steps of the same skeleton at a small n, then everything freed: the one-off
    allocations of a process's first backward and optimizer step (thread pools, kernel caches;
    ~95 MiB on a CPU) happen before the baseline, so the peak counts the model's own memory. A
    failure is left to the probe itself to meet and report."""
    try:
        model, step, x = build({**job, "seq_len": min(int(job["seq_len"]), WARM_N)})
        step()
        step()
        del model, step, x
    except Exception:  # noqa: BLE001 - the probe meets it again and reports it
        pass
    gc.collect()


def first_steps(job: dict[str, Any], base: memory.Watermark, res: dict[str, Any]):
    """Build, then the first two steps: first_step_ms, peak_mem_bytes, n_params. A step slower than
    ``step_timeout_s`` raises StepTooSlow (max-n probes)."""
    model, step, x = build(job)
    res["n_params"] = count_params(model)
    limit = job.get("step_timeout_s")
    for i in range(2):
        ms = timing.time_once(step, job["device"])
        res["first_step_ms" if i == 0 else "step_ms_median"] = ms  # a max-n probe keeps the second as its step
        if limit and ms > 1e3 * float(limit):
            raise StepTooSlow(f"training step {i + 1} took {ms / 1e3:.1f} s: slower than {float(limit):g} s per step "
                              f"(--step-timeout)")
    res["peak_mem_bytes"] = base.peak()
    return model, step, x


def _measure(fn, job: dict[str, Any], warm_ms: float) -> timing.TimingStats:
    threads = torch.get_num_threads() if job["device"] == "cpu" else None
    return timing.measure(fn, device=job["device"], warm_ms=warm_ms, threads=threads, **job["timing"])


def steady(model, step, job: dict[str, Any], res: dict[str, Any]) -> list[swap.Call]:
    """The steady step's memory pass (recording attention calls) and its timing."""
    calls: list[swap.Call] = []
    mark = memory.Watermark(job["device"])
    t0 = time.perf_counter()
    with swap.recording(model, calls):
        step()
    res["step_mem_bytes"] = mark.peak()
    st = _measure(step, job, (time.perf_counter() - t0) * 1e3)
    res.update(step_ms_median=st.median_ms, step_ms_iqr=st.iqr_ms, step_ms_min=st.min_ms, step_ci_rel=st.ci_rel,
               step_repeats=st.repeats, timing_stop=st.stop, steps_per_s=1e3 / st.median_ms,
               samples_ms=[round(s, 6) for s in timing.compact_samples(st.samples_ms)],
               wait_share=st.wait_share, disturbed_samples=st.disturbed, other_cpu_share=st.other_cpu_share,
               noisy=st.noisy if st.wait_share is not None else None)
    _note_noisy(st, "training steps", res)
    return calls


def _note_noisy(st: timing.TimingStats, what: str, res: dict[str, Any]) -> None:
    if st.noisy:
        res["noisy"] = True
        res["reasons"].append(f"noisy: the timed {what} lacked CPU (wait share {st.wait_share or 0:.0%}, other "
                              f"processes {st.other_cpu_share or 0:.0%} of the machine): rerun on a quiet machine")


def identity_part(model, step, job, res) -> None:
    with swap.identity(model):
        t0 = time.perf_counter()
        step()
        st = _measure(step, job, (time.perf_counter() - t0) * 1e3)
    res.update(identity_step_ms=st.median_ms, identity_step_ms_iqr=st.iqr_ms,
               attn_share=min(1.0, max(0.0, 1.0 - st.median_ms / res["step_ms_median"])))
    _note_noisy(st, "identity steps", res)


def inference_part(model, x, job, res) -> None:
    model.eval()
    try:
        def forward():
            with torch.inference_mode():
                return model(x)[0]

        st = _measure(forward, job, 0.0)
    finally:
        model.train()
    tokens = x.numel()  # B x n, or B x 2 x n for pairs
    res.update(infer_ms_median=st.median_ms, infer_ms_iqr=st.iqr_ms, tokens_per_s_infer=tokens / (st.median_ms / 1e3))
    _note_noisy(st, "inference forwards", res)


def kernel_part(calls: list[swap.Call], job, res) -> None:
    """fwd+bwd of the variant alone on the first recorded call's case (every call has the same one
    in these skeletons)."""
    c = calls[0]
    spec = catalog.get(job["variant"])
    shape = Shape(batch=c.q_shape[0], heads=c.q_shape[1], kv_heads=c.kv_shape[1], seq_len=c.q_shape[2],
                  kv_len=c.kv_shape[2], head_dim=c.q_shape[3], dtype="float32", device=job["device"],
                  causal=c.causal, mode="fwd+bwd")
    q, k, v = make_inputs(shape, int(job["seed"]), requires_grad=True)
    _, call = execute.calls(spec, shape, q, k, v, c.kwargs)
    t0 = time.perf_counter()
    call()
    st = _measure(call, job, (time.perf_counter() - t0) * 1e3)
    res.update(kernel_ms=st.median_ms, kernel_ms_iqr=st.iqr_ms,
               attn_share_kernel=len(calls) * st.median_ms / res["step_ms_median"])
    _note_noisy(st, "kernel calls", res)


def _shape_fields(calls: list[swap.Call]) -> dict[str, Any]:
    c = calls[0]
    return dict(attn_batch=c.q_shape[0], heads=c.q_shape[1], kv_heads=c.kv_shape[1], attn_len=c.q_shape[2],
                head_dim=c.q_shape[3], causal=c.causal, attn_calls=len(calls))


def run(job: dict[str, Any], base: memory.Watermark) -> dict[str, Any]:
    """The probe ``job`` (``job['probe']``: measure | max_n); its row's measured fields."""
    res: dict[str, Any] = {"status": "ok", "reasons": []}
    try:
        model, step, x = first_steps(job, base, res)
        if job["probe"] == "max_n":
            return res
        calls = steady(model, step, job, res)
        res.update(_shape_fields(calls))
    except StepTooSlow as e:
        return {**res, "status": "timeout", "reasons": [str(e)]}
    except Exception as exc:  # noqa: BLE001 - every failure becomes the probe's row
        status, reasons = classify(exc)
        return {**res, "status": status, "reasons": reasons}
    for what, part in (("identity step", lambda: identity_part(model, step, job, res)),
                       ("inference", lambda: inference_part(model, x, job, res)),
                       ("kernel alone", lambda: kernel_part(calls, job, res))):
        try:
            part()
        except Exception as exc:  # noqa: BLE001 - the part's fields stay empty, the reason is kept
            res["reasons"].append(f"{what}: {'; '.join(classify(exc)[1])}")
    return res
