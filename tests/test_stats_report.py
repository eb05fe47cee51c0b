"""The attention-statistics report section (attnbench.report.stats_level) on synthetic rows whose
numbers are known by hand.

Text group (task listops, encoder): full@sdpa, performer@favor at nb_features=16 and 64; 2 layers x
2 heads at n = 64, 128. A head-scope value is ``BASE[column] + setting + 0.1 layer + 0.2 head +
n / 6400`` (setting: 0, 1, 2 in that order), so the mean over the two heads adds 0.1. Performer's
coverage is unsupported (one row per layer, column None); performer[16]'s spectrum failed at n=128,
layer 1. ViT group (checkpoint, 8 x 8 patch grid, n = 65): full@sdpa and sliding_window@blocked,
CLS maps, rollout over the grid and the runner's 32 x 32 input image.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnbench.report import stats_level as SL
from attnbench.report import stats_rows as R
from attnbench.stats.schema import make_row

BASE = {"entropy": 2.0, "entropy_norm": 0.5, "distance": 10.0, "distance_px": 40.0, "top_k_mass": 0.3,
        "keys_90": 20.0, "effective_rank": 5.0, "rank_90": 7.0, "rel_err": 0.2, "kl": 0.05, "tv": 0.1,
        "coverage": 0.9, "rollout_cls_entropy": 3.0}
STATS = {"entropy": ("entropy", "entropy_norm"), "distance": ("distance",),
         "concentration": ("top_k_mass", "keys_90"), "spectrum": ("effective_rank", "rank_90"),
         "error": ("rel_err",), "divergence": ("kl", "tv"), "coverage": ("coverage",)}
OWN = "own"  # _row: each setting read its own model (a task source: one model per variant)
TEXT = dict(source="task", input="listops", task="listops", arch="encoder", model_variant=OWN, device="cpu")
VIT = dict(source="checkpoint", input="runs/vit/full", task="cifar10", arch="vit", model_variant="full@sdpa",
           device="cpu")
SETTINGS = [("full@sdpa", "dense", {}, ""), ("performer@favor", "linear", {"nb_features": 16}, "nb_features=16"),
            ("performer@favor", "linear", {"nb_features": 64}, "nb_features=64")]
COVERAGE_WHY = "coverage needs the keys the variant may attend (its pattern, bucket-mates)"
SVD_WHY = "LinAlgError: svd did not converge"
TEXT_SLUG = "task_listops_encoder_cpu"
VIT_SLUG = "checkpoint_cifar10_vit_cpu"


def expect(column: str, setting: int, layer: float, head: float, n: int) -> float:
    return BASE[column] + setting + 0.1 * layer + 0.2 * head + n / 6400


def _row(group: dict, setting: tuple, **kw) -> dict:
    variant, family, params, label = setting
    pattern, kernel = variant.split("@")
    group = dict(group, model_variant=variant) if group["model_variant"] == OWN else group
    return make_row(**group, variant=variant, pattern=pattern, kernel=kernel, family=family, params=params,
                    param_label=label, stage=0, seed=0, dtype="float64", batch=2, heads=2, head_dim=8, **kw)


def band_map(shift: int) -> list[float]:
    return [float(np.exp(-abs(i - j - shift))) for i in range(8) for j in range(8)]


def text_rows() -> list[dict]:
    rows = []
    for si, st in enumerate(SETTINGS):
        for n in (64, 128):
            for layer in (0, 1):
                for stat, cols in STATS.items():
                    if stat == "coverage" and si > 0:
                        rows.append(_row(TEXT, st, seq_len=n, layer=layer, stat=stat, status="unsupported",
                                         reasons=[COVERAGE_WHY]))
                    elif stat == "spectrum" and si == 1 and n == 128 and layer == 1:
                        rows.append(_row(TEXT, st, seq_len=n, layer=layer, stat=stat, status="error", reasons=[SVD_WHY]))
                    else:
                        rows += [_row(TEXT, st, seq_len=n, layer=layer, head=h, stat=stat, column=c, status="ok",
                                      value=expect(c, si, layer, h, n)) for c in cols for h in (0, 1)]
                rows += [_row(TEXT, st, seq_len=n, layer=layer, head=h, stat="map", column="map", status="ok",
                              series=band_map(h), series_shape=[8, 8]) for h in (0, 1)]
            cls = list(np.linspace(1, 2, n - 1) / np.linspace(1, 2, n - 1).sum())
            rows += [_row(TEXT, st, seq_len=n, stat="rollout", column="rollout_cls", status="ok", series=cls,
                          series_shape=[n - 1]),
                     _row(TEXT, st, seq_len=n, stat="rollout", column="rollout_cls_entropy", status="ok",
                          value=expect("rollout_cls_entropy", si, 0, 0, n))]
    return rows


def vit_rows() -> list[dict]:
    yy, xx = np.mgrid[0:8, 0:8]
    blob = np.exp(-((yy - 3) ** 2 + (xx - 5) ** 2) / 4.0)  # [8, 8]
    img = np.add.outer(np.linspace(0, 1, 32), np.linspace(0, 0.5, 32)) / 1.5  # [32, 32]
    rows = [make_row(**VIT, stat="input", column="image", status="ok", seq_len=65, series=img.ravel().tolist(),
                     series_shape=[32, 32])]
    for si, st in enumerate([SETTINGS[0], ("sliding_window@blocked", "window", {"window": 3}, "window=3")]):
        for layer in (0, 1):
            for h in (0, 1):
                rows += [_row(VIT, st, seq_len=65, layer=layer, head=h, stat=stat, column=c, status="ok",
                              value=expect(c, si, layer, h, 65))
                         for stat, c in (("entropy", "entropy"), ("distance", "distance"), ("distance", "distance_px"))]
                rows += [_row(VIT, st, seq_len=65, layer=layer, head=h, stat="cls_map", column=c, status="ok",
                              series=np.roll(blob, layer + h, axis=1).ravel().tolist(), series_shape=[8, 8])
                         for c in ("cls", "cls_first")]
        rows += [_row(VIT, st, seq_len=65, stat="rollout", column=c, status="ok", series=(blob ** (1 + si)).ravel()
                      .tolist(), series_shape=[8, 8]) for c in ("rollout_cls", "rollout_cls_first")]
    return rows


def all_rows() -> list[dict]:
    return text_rows() + vit_rows()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats")
    files, text = SL.section(all_rows(), out, figures=False)
    return out, files, text


def _csv(out, name) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def test_tables_written(report):
    out, files, text = report
    names = {p.name for p in files}
    for t in ("stats_layers", "stats_fidelity", "stats_params", "stats_model"):
        assert {f"{t}_{TEXT_SLUG}.{e}" for e in ("md", "tex", "csv")} <= names
    assert f"stats_layers_{VIT_SLUG}.md" in names and f"stats_fidelity_{VIT_SLUG}.md" not in names
    assert not any(p.suffix in (".png", ".pdf") for p in files) and not (out / "figures").exists()
    assert "## Attention statistics" in text and text.count("### ") == 2
    assert all(p.exists() for p in files)


def test_figures_written(tmp_path):
    """The ViT group's full@sdpa through section() (saving takes about a second a figure); the
    text group's figures built, not saved."""
    rows = [dict(r, rows_file="results.jsonl.gz") for r in vit_rows() if r["variant"] in (None, "full@sdpa")]
    files, text = SL.section(rows, tmp_path, figures=True)  # rows as the loader marks a compacted run's
    assert "their numbers are in results.jsonl.gz." in text
    pngs = {p.name for p in files if p.suffix == ".png"}
    assert pngs == {f"stats_layers_{VIT_SLUG}.png", f"stats_cls_{VIT_SLUG}_full-sdpa.png"}
    assert {n[:-4] + ".pdf" for n in pngs} <= {p.name for p in files}
    assert all(f"(figures/{p})" in text for p in pngs)
    g = next(g for g in R.groups(text_rows()))
    built = {stem: build() for _, stem, build in SL._figures(g)}
    assert {stem for stem, fig in built.items() if fig is not None} == {
        *(f"stats_maps_{TEXT_SLUG}_{s}" for s in ("full-sdpa", "performer-favor-nb-features-16",
                                                   "performer-favor-nb-features-64")),
        f"stats_layers_{TEXT_SLUG}", f"stats_clsline_{TEXT_SLUG}", f"stats_fidelity_{TEXT_SLUG}",
        f"stats_fidparams_{TEXT_SLUG}_performer-favor"}
    panels = built[f"stats_fidparams_{TEXT_SLUG}_performer-favor"].axes
    assert [ax.get_ylabel() for ax in panels] == ["rel_err", "KL (solid) / TV (dashed)"]  # coverage: n/a


def test_layer_table_is_the_mean_over_heads_at_the_largest_n(report):
    out = report[0]
    d = _csv(out, f"stats_layers_{TEXT_SLUG}")
    assert set(d["seq_len"]) == {128}
    for setting, si in (("full@sdpa", 0), ("performer@favor[nb_features=64]", 2)):
        for col in ("entropy", "keys_90"):
            r = d[(d["setting"] == setting) & (d["layer"] == 1) & (d["column"] == col)].iloc[0]
            assert r["mean"] == pytest.approx(expect(col, si, 1, 0.5, 128), rel=1e-6)
            assert (r["min"], r["max"]) == pytest.approx((expect(col, si, 1, 0, 128), expect(col, si, 1, 1, 128)))
            assert r["units"] == 2
    md = (out / "tables" / f"stats_layers_{TEXT_SLUG}.md").read_text()
    assert "| full@sdpa | 1 | 128 | 2.22 | 0.720 |" in md  # 2 + 0.1 (layer) + 0.1 (heads) + 0.02 (n)


def test_fidelity_table_means_over_layers_and_heads_and_marks(report):
    out = report[0]
    d = _csv(out, f"stats_fidelity_{TEXT_SLUG}")
    r = d[(d["setting"] == "performer@favor[nb_features=16]") & (d["column"] == "kl") & (d["seq_len"] == 64)].iloc[0]
    assert r["mean"] == pytest.approx(expect("kl", 1, 0.5, 0.5, 64), rel=1e-6) and r["units"] == 4
    cov = d[(d["setting"] == "performer@favor[nb_features=16]") & (d["column"] == "coverage")]
    assert set(cov["status"]) == {"unsupported"} and cov["mean"].isna().all()
    md = (out / "tables" / f"stats_fidelity_{TEXT_SLUG}.md").read_text()
    assert "| performer@favor[nb_features=16] | coverage | n/a | n/a |" in md
    assert COVERAGE_WHY in md and "`n/a`" in md


def test_unsupported_and_error_rows_listed_once_with_reasons(report):
    text = report[2]
    cov = [ln for ln in text.splitlines() if COVERAGE_WHY in ln]
    assert cov == [f"- performer@favor[nb_features=16] · coverage (n/a, n = 64, 128): {COVERAGE_WHY}",
                   f"- performer@favor[nb_features=64] · coverage (n/a, n = 64, 128): {COVERAGE_WHY}"]
    assert f"- performer@favor[nb_features=16] · spectrum (err, n = 128): {SVD_WHY}" in text
    d = _csv(report[0], f"stats_layers_{TEXT_SLUG}")
    bad = d[(d["setting"] == "performer@favor[nb_features=16]") & (d["layer"] == 1) & (d["column"] == "rank_90")]
    assert list(bad["status"]) == ["error"]


def test_params_table_per_setting(report):
    d = _csv(report[0], f"stats_params_{TEXT_SLUG}")
    assert set(d["setting"]) == {"performer@favor[nb_features=16]", "performer@favor[nb_features=64]"}
    md = (report[0] / "tables" / f"stats_params_{TEXT_SLUG}.md").read_text()
    assert "| performer@favor | nb_features=64 | 128 |" in md


def test_same_rows_same_bytes_in_any_order(report, tmp_path):
    out, files, text = report
    files2, text2 = SL.section(list(reversed(all_rows())), tmp_path, figures=False)
    assert text2 == text and [p.name for p in files2] == [p.name for p in files]
    for p in files2:
        assert p.read_bytes() == (out / "tables" / p.name).read_bytes(), p.name


def test_latest_keeps_the_last_row_per_key():
    rows = text_rows()[:3]
    again = dict(rows[0], value=99.0)
    kept, notes = SL.latest(rows + [again, {"row_kind": "model"}])
    assert len(kept) == 3 and kept[0]["value"] == 99.0 and notes


def test_checkpoints_of_a_task_share_a_group_and_foreign_settings_name_the_model():
    other = [dict(r, input="runs/vit/other", checkpoint_sha="abc") for r in vit_rows()]
    groups = R.groups(vit_rows() + other)
    assert len(groups) == 1  # one task, arch and device: every checkpoint side by side
    labels = [s.label for s in groups[0].settings]
    assert labels == ["full@sdpa", "sliding_window@blocked[window=3] on full@sdpa"]
