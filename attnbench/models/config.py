"""One config for every skeleton: the attention variant, the sizes and the choices, with reasons.

A task gives every variant this same config but ``variant`` and ``params`` (the Long Range
Arena's rule); :func:`attnbench.models.param_report` then checks that the parameter counts stay
within 10% of full attention's, per ``arch``. ``validate()`` refuses a bad value with one line
naming it and what is allowed.

``arch`` picks the skeleton family: ``encoder`` (token sequences: the classifier, the dual encoder,
the causal LM by data kind) or a vision skeleton over images given as pixels (``image`` = C, H, W):
``vit`` (ViT; DeiT with ``distill``), ``swin`` (Swin-style hierarchy), ``pvt`` (PVT-style pyramid).
A vision skeleton's stage structure (patch side, blocks per stage, PVT's reduction per stage) comes
from :data:`LAYOUTS` by ``(arch, layout)`` unless the config sets ``patch`` / ``depths`` /
``sr_ratios`` itself; :meth:`ModelConfig.stage_layout` resolves it, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POSITIONS = ("none", "learned", "sinusoidal", "rotary")
POOLS = ("cls", "mean")
PAIR_HEADS = ("uv", "uvmd")
LM_CONTEXTS = ("full", "segment")
ARCHS = ("encoder", "vit", "swin", "pvt")
VISION_ARCHS = ("vit", "swin", "pvt")
LAYOUT_NAMES = ("small", "paper")
SR_MODES = ("conv", "pool")

# Stage structure of the vision skeletons by (arch, layout). Widths, heads and MLP widths double
# at every stage from d_model, heads and mlp (Swin's rule: C, 2C, 4C, 8C with head_dim fixed);
# PVT's own widths (64, 128, 320, 512) are close to that. ViT is one stage of ``layers`` blocks.
# small (digits upsampled to 32x32): patch 4 gives an 8x8 grid, one token per original digit
# pixel (8x8 -> 32x32 is 4x); the hierarchies go 8x8 -> 4x4 (-> 2x2 for PVT).
# paper (CIFAR-10 32x32): ViT patch 4 -> 64 tokens (the usual CIFAR ViT / DeiT-Ti setting);
# Swin and PVT start finer, patch 2 -> 16x16, as their stride-4 stems on 224 give 56x56, and
# halve from there (Swin-T's 2, 2, 6, 2 without the last stage, which a 2x2 grid makes moot;
# PVT-Tiny's 2, 2, 2, 2 likewise, with its reductions 8, 4, 2, 1 scaled to the smaller grids).
LAYOUTS: dict[tuple[str, str], dict[str, Any]] = {
    ("vit", "small"): {"patch": 4},
    ("vit", "paper"): {"patch": 4},
    ("swin", "small"): {"patch": 4, "depths": (2, 2)},
    ("swin", "paper"): {"patch": 2, "depths": (2, 6, 2)},
    ("pvt", "small"): {"patch": 4, "depths": (1, 1, 1), "sr_ratios": (4, 2, 1)},
    ("pvt", "paper"): {"patch": 2, "depths": (2, 2, 2), "sr_ratios": (4, 2, 1)},
}


@dataclass
class ModelConfig:
    variant: str = "full"  # registry name or bare pattern (its default kernel: accuracy is the pattern's)
    params: dict[str, Any] = field(default_factory=dict)  # the variant's parameters ({"window": 16})
    d_model: int = 64  # LRA's small models use 64..512; 64 trains on a 2-core CPU in minutes
    heads: int = 4  # query heads H; head_dim = d_model / heads
    kv_heads: int | None = None  # K/V heads (None: H); mqa / gqa fix their own (registry rule)
    layers: int = 2
    mlp: int = 128  # hidden width of each block's MLP and of the classifier head (LRA: mlp_dim)
    dropout: float = 0.0  # embeddings, residual branches, MLP, head
    # Fused kernels expose no attention probabilities to drop, and dropping them only where a
    # kernel returns weights would give variants different skeletons. So, for every variant
    # alike: elementwise dropout on the attention OUTPUT [B, H, N, D] before the output
    # projection (recorded as such in ``model.record``), not on the probabilities.
    attn_dropout: float = 0.0
    positions: str = "learned"  # none | learned | sinusoidal | rotary (RoPE on q and k)
    # Variants with their own relative positions (Swin's bias, XL's relative terms) get no
    # absolute positions unless this is set.
    positions_with_relative: bool = False
    pool: str = "cls"  # cls (a CLS token id vocab_size, prepended) | mean (over non-PAD tokens)
    pair_head: str = "uv"  # uv = [u, v] (LRA's released code) | uvmd = [u, v, u*v, u-v] (LRA's paper)
    lm_context: str = "full"  # causal LM without memory: full (the whole input) | segment (each segment_len block alone)
    segment_len: int | None = None  # causal LM: the context unit for lm_context='segment'
    max_len: int = 1024  # longest input (learned positions have this many rows, CLS aside)
    vocab_size: int = 257  # token ids [0, vocab_size), PAD = 0 (data.base)
    num_classes: int = 2  # classes (classify, pair) or the target vocabulary (tokens)
    causal: bool = False  # encoders: causal attention inside the tower (the LM is always causal)
    arch: str = "encoder"  # encoder | vit | swin | pvt (the vision ones classify images)
    # Vision skeletons: the input images (C, H, W), pixels 0..255 flattened channels-first in
    # raster order (attnbench.data.vision); set from the data by the trainer.
    image: tuple[int, int, int] | None = None
    layout: str = "small"  # small | paper: which LAYOUTS entry gives the stage structure
    patch: int | None = None  # patch side of the first embedding (None: the layout's)
    depths: tuple[int, ...] | None = None  # swin, pvt: blocks per stage (None: the layout's)
    sr_ratios: tuple[int, ...] | None = None  # pvt: spatial reduction R per stage (None: the layout's)
    # pvt: conv (PVT v1: a learned R x R stride-R convolution + LayerNorm makes the keys' tokens;
    # the variant runs as cross attention on n / R^2 keys) | pool (no learned reduction: every
    # variant self-attends over the stage's tokens, one that declares ``ratio`` (sra) pools its
    # keys and values R x R itself, as PVTv2's linear variant)
    sr: str = "conv"
    distill: bool = False  # vit: DeiT's distillation token and head (hard distillation, train.teacher)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def stage_layout(self) -> dict[str, Any]:
        """{"patch", "depths", "sr_ratios"} of a vision arch: the config's own, else LAYOUTS'."""
        out = {"patch": None, "depths": (self.layers,), "sr_ratios": None}
        out.update(LAYOUTS.get((self.arch, self.layout), {}))
        for name in ("patch", "depths", "sr_ratios"):
            if getattr(self, name) is not None:
                value = getattr(self, name)
                out[name] = value if name == "patch" else tuple(value)
        if self.arch == "vit":
            out["depths"] = (self.layers,)
        return out

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the bad value and what is allowed; return self."""
        for name, allowed in (("positions", POSITIONS), ("pool", POOLS), ("pair_head", PAIR_HEADS),
                              ("lm_context", LM_CONTEXTS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} {value!r} not allowed; allowed: {', '.join(allowed)}")
        for name in ("d_model", "heads", "layers", "mlp", "max_len", "vocab_size", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r} not allowed; allowed: a positive integer")
        for name in ("kv_heads", "segment_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} {value!r} not allowed; allowed: a positive integer or None")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} {value!r} not allowed; allowed: a number in [0, 1)")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} not allowed with heads={self.heads}; "
                             f"allowed: a multiple of heads")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} not allowed with heads={self.heads}; "
                             f"allowed: a divisor of heads")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"positions 'rotary' not allowed with head_dim={self.head_dim}; "
                             f"allowed: an even head_dim (d_model / heads)")
        if self.lm_context == "segment" and self.segment_len is None:
            raise ValueError("lm_context 'segment' not allowed without segment_len; "
                             "allowed: lm_context 'full', or set segment_len")
        if not isinstance(self.params, dict):
            raise ValueError(f"params {self.params!r} not allowed; allowed: a mapping of the variant's parameters")
        if self.arch in VISION_ARCHS:
            self._validate_vision()
        elif self.distill:
            raise ValueError(f"distill True not allowed with arch {self.arch!r}; allowed: arch 'vit' (DeiT)")
        return self

    def _validate_vision(self) -> None:
        for name, allowed in (("layout", LAYOUT_NAMES), ("sr", SR_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} {value!r} not allowed; allowed: {', '.join(allowed)}")
        img = self.image
        if img is None or len(img) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in img):
            raise ValueError(f"image {img!r} not allowed with arch {self.arch!r}; allowed: (C, H, W) of the "
                             f"input images, positive integers (the trainer sets it from the data)")
        lay = self.stage_layout()
        p = lay["patch"]
        if isinstance(p, bool) or not isinstance(p, int) or p < 1 or img[1] % p or img[2] % p:
            raise ValueError(f"patch {p!r} not allowed with image {img[0]}x{img[1]}x{img[2]}; "
                             f"allowed: a positive divisor of H and W")
        if not lay["depths"] or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in lay["depths"]):
            raise ValueError(f"depths {lay['depths']!r} not allowed; allowed: blocks per stage, positive integers")
        if self.distill and self.arch != "vit":
            raise ValueError(f"distill True not allowed with arch {self.arch!r}; allowed: arch 'vit' (DeiT)")
        if self.arch == "pvt":
            r = lay["sr_ratios"]
            if r is None or len(r) != len(lay["depths"]) or any(isinstance(v, bool) or not isinstance(v, int)
                                                                  or v < 1 for v in r):
                raise ValueError(f"sr_ratios {r!r} not allowed with depths {lay['depths']!r}; allowed: one "
                                 f"positive integer per stage")
            if self.positions == "rotary":
                raise ValueError("positions 'rotary' not allowed with arch 'pvt' (its keys are a reduced grid); "
                                 "allowed: none, learned, sinusoidal")
