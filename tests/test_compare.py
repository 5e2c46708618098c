"""Claim check: panel statistics and verdict on planted per-item results, report files."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from workbench.claim import build_panel, curve_tables, verdict, write_report
from workbench.errors import WorkbenchError
from workbench.eval.ensemble import EnsembleLM
from workbench.eval.result import items_frame

PARADIGMS = [f"paradigm_{i}" for i in range(12)]
PER = 60


def _blimp_items(correct: np.ndarray, margin: np.ndarray, ties: np.ndarray | None = None) -> pl.DataFrame:
    n = len(PARADIGMS) * PER
    return items_frame(
        {
            "task": ["blimp"] * n,
            "item_id": [f"{p}/{j}" for p in PARADIGMS for j in range(PER)],
            "group": [p for p in PARADIGMS for _ in range(PER)],
            "field": [("syntax" if i % 2 else "morphology") for i, _ in enumerate(PARADIGMS) for _ in range(PER)],
            "correct": correct.tolist(),
            "tie": (ties if ties is not None else np.zeros(n, dtype=bool)).tolist(),
            "margin": margin.tolist(),
            "loglik": (-20.0 + margin).tolist(),
            "loglik_alt": [-20.0] * n,
        }
    )


def _wiki_items(ll: np.ndarray) -> pl.DataFrame:
    n = ll.shape[0]
    return items_frame(
        {
            "task": ["wikitext"] * n,
            "item_id": [str(i) for i in range(n)],
            "group": [str(i) for i in range(n)],
            "tie": [False] * n,
            "loglik": ll.tolist(),
            "n_bytes": [400 + 10 * i for i in range(n)],
            "n_words": [80] * n,
            "n_tokens": [120] * n,
        }
    )


def _system(rng: np.random.Generator, difficulty: np.ndarray, skill: float = 0.0, wiki_shift: float = 0.0):
    n = difficulty.shape[0]
    margin = rng.normal(0.0, 1.0, n) + 3.0 * (difficulty - 0.5) + skill
    correct = margin > 0
    ll = -np.array([400 + 10 * i for i in range(80)]) * 1.2 + rng.normal(0, 5, 80) + wiki_shift
    return pl.concat([_blimp_items(correct, margin), _wiki_items(ll)], how="vertical")


@pytest.fixture(scope="module")
def difficulty() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, len(PARADIGMS) * PER)


def test_planted_null_identical_merge_gives_no_evidence(difficulty):
    rng = np.random.default_rng(1)
    a, b, c = (_system(rng, difficulty) for _ in range(3))
    results = {"a": a, "b": b, "c": c, "soup": b.clone(), "merge": b.clone(), "ensemble": c.clone()}
    panel = build_panel(results, ingredients=["a", "b", "c"], subject="merge", n_resamples=2000, seed=0)
    cmp = panel.comparisons
    same = cmp.filter((pl.col("subject") == "merge") & pl.col("reference").is_in(["b", "soup"]))
    assert same.height == 6  # (acc, margin, bits_per_byte) x (b, soup)
    assert same["identical"].all() and (same["estimate"] == 0).all()
    assert (same["low"] <= 0).all() and (same["high"] >= 0).all()
    assert (same["call"] == "no evidence").all()
    text = verdict(panel)
    assert "no evidence of a difference" in text
    assert "identical per-item results" in text


def test_verdict_never_calls_a_covering_ci_a_gain(difficulty):
    rng = np.random.default_rng(2)
    ingredients = {k: _system(rng, difficulty) for k in ("a", "b", "c")}
    # a merge that is a tiny bit better: the CI must cover 0 in most comparisons
    merge = _system(rng, difficulty, skill=0.05)
    panel = build_panel({**ingredients, "merge": merge}, ingredients=list(ingredients), n_resamples=2000)
    cmp = panel.comparisons
    for r in cmp.iter_rows(named=True):
        if r["low"] <= 0 <= r["high"]:
            assert r["call"] == "no evidence"
        if r["call"] == "gain":
            assert (r["low"] > 0) if r["higher_is_better"] else (r["high"] < 0)
    text = verdict(panel)
    for line in text.splitlines():
        if line.startswith("| ") and "no evidence" in line:
            assert "gain" not in line
    assert "gain" not in text.lower() or (cmp["call"] == "gain").any()


def test_planted_effect_is_a_gain_with_covering_ci(difficulty):
    rng = np.random.default_rng(3)
    ingredients = {k: _system(rng, difficulty) for k in ("a", "b", "c")}
    merge = _system(rng, difficulty, skill=1.0, wiki_shift=60.0)  # much better on both tasks
    panel = build_panel({**ingredients, "merge": merge}, ingredients=list(ingredients), n_resamples=2000)
    cmp = panel.comparisons
    best = cmp.filter((pl.col("subject") == "merge") & (pl.col("reference") == "best_dev"))
    acc = best.filter(pl.col("metric") == "acc").row(0, named=True)
    assert acc["call"] == "gain" and acc["low"] > 0 and acc["p_mcnemar"] < 0.01
    bpb = best.filter(pl.col("metric") == "bits_per_byte").row(0, named=True)
    assert bpb["call"] == "gain" and bpb["high"] < 0  # lower bits per byte is better
    # the planted wikitext shift, in bits per byte (weights = bytes): 60 nats per document
    sel = panel.selections.filter(pl.col("task") == "wikitext").row(0, named=True)
    assert sel["best_dev"] in ingredients
    text = verdict(panel)
    assert "a significant gain" in text
    # per-group forest rows exist for fields and paradigms, Holm-adjusted
    pg = panel.per_group
    assert set(pg["level"].to_list()) == {"task", "field", "paradigm"}
    assert pg.filter(pl.col("level") == "paradigm").height == 2 * len(PARADIGMS)  # acc and margin
    assert (pg["p_holm"] >= pg["p"] - 1e-12).all()


def test_best_and_median_are_chosen_on_dev_and_reported_on_test(difficulty):
    rng = np.random.default_rng(4)
    results = {
        "weak": _system(rng, difficulty, skill=-1.0),
        "mid": _system(rng, difficulty),
        "strong": _system(rng, difficulty, skill=1.0),
    }
    results["merge"] = results["mid"].clone()
    panel = build_panel(results, ingredients=["weak", "mid", "strong"], n_resamples=500)
    sel = panel.selections.filter(pl.col("task") == "blimp").row(0, named=True)
    assert (sel["best_dev"], sel["median"]) == ("strong", "mid")
    assert sel["n_dev"] + sel["n_test"] == len(PARADIGMS) * PER
    row = panel.comparisons.filter(
        (pl.col("task") == "blimp") & (pl.col("metric") == "acc") & (pl.col("reference") == "median")
    ).row(0, named=True)
    assert row["identical"] and row["split"] == "test" and row["n_items"] == sel["n_test"]
    # the score table's test accuracy is the macro mean over paradigms of the test items
    items = panel.items.filter(
        (pl.col("system") == "strong") & (pl.col("task") == "blimp") & (pl.col("split") == "test")
    )
    macro = items.group_by("group").agg(pl.col("correct").mean()).get_column("correct").mean()
    score = panel.scores.filter(
        (pl.col("system") == "strong")
        & (pl.col("task") == "blimp")
        & (pl.col("metric") == "acc")
        & (pl.col("split") == "test")
    )["value"][0]
    assert score == pytest.approx(macro)
    nf = panel.noise.filter((pl.col("task") == "blimp") & (pl.col("metric") == "acc")).row(0, named=True)
    assert nf["n"] == 3 and nf["spread"] > 0.1


def test_build_panel_rejects_bad_input(difficulty):
    rng = np.random.default_rng(5)
    a = _system(rng, difficulty)
    with pytest.raises(WorkbenchError, match="subject"):
        build_panel({"a": a, "b": a}, ingredients=["a", "b"])
    other = a.with_columns(pl.col("item_id") + "_x")
    with pytest.raises(WorkbenchError, match="share no items"):
        build_panel({"a": a, "b": other, "merge": a}, ingredients=["a", "b"])


def test_curve_tables_barrier_and_holm_across_t(difficulty):
    rng = np.random.default_rng(6)
    frames = []
    for method, dip in (("lerp", 1.5), ("slerp", 0.5)):
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            skill = -dip * (1 - abs(2 * t - 1)) if 0 < t < 1 else 0.0
            frames.append(
                _system(
                    np.random.default_rng(int(t * 100)) if t in (0.0, 1.0) else rng, difficulty, skill=skill
                ).with_columns(pl.lit(method).alias("method"), pl.lit(t).alias("t"))
            )
    curve, barriers, tests = curve_tables(pl.concat(frames), n_resamples=500)
    b = {(r["method"], r["task"]): r for r in barriers.iter_rows(named=True)}
    assert b[("lerp", "blimp")]["barrier"] > b[("slerp", "blimp")]["barrier"] > 0
    assert b[("lerp", "blimp")]["t_max"] == 0.5
    assert 0 < b[("lerp", "blimp")]["low"] <= b[("lerp", "blimp")]["barrier"] <= b[("lerp", "blimp")]["high"]
    lerp = tests.filter((pl.col("method") == "lerp") & (pl.col("task") == "blimp") & (pl.col("metric") == "acc"))
    assert lerp.height == 3 and lerp["selected"].sum() == 1
    assert (lerp["p_holm"] >= lerp["p"]).all()
    assert lerp.filter(pl.col("t") == 0.5)["call"][0] == "loss"
    assert set(curve["split"].to_list()) == {"all", "test"}


def test_write_report_is_atomic_and_complete(tmp_path, difficulty):
    rng = np.random.default_rng(7)
    results = {k: _system(rng, difficulty) for k in ("a", "b")}
    results["merge"] = _system(rng, difficulty, skill=0.3)
    panel = build_panel(results, ingredients=["a", "b"], n_resamples=300)
    out = write_report(panel, tmp_path / "report")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for expected in (
        "verdict.md",
        "report.html",
        "panel.json",
        "figures/deltas.json",
        "figures/forest.json",
        "tables/comparisons.parquet",
        "tables/items.parquet",
        "tables/scores.parquet",
    ):
        assert expected in names
    html = (out / "report.html").read_text()
    # plotly.js is inlined (offline viewing): no external script, the bundle is in the page, once
    assert not re.search(r"<script[^>]*src=", html)
    assert len(html) > 1_000_000 and html.count("Plotly=") <= 2
    assert json.loads((out / "figures/deltas.json").read_text())["data"]
    assert pl.read_parquet(out / "tables/comparisons.parquet").height == panel.comparisons.height
    assert (out / "verdict.md").read_text() == verdict(panel)
    with pytest.raises(WorkbenchError, match="already exists"):
        write_report(panel, out)
    # same inputs, same bytes (tables and verdict)
    out2 = write_report(panel, tmp_path / "report2")
    for rel in ("verdict.md", "tables/comparisons.parquet", "report.html"):
        assert (out / rel).read_bytes() == (out2 / rel).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_ensemble_averages_probabilities():
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(logits))

        def forward(self, input_ids, attention_mask=None):
            return type("O", (), {"logits": self.w.expand(*input_ids.shape, self.w.shape[0])})()

    m1, m2 = Fixed([2.0, 0.0, -1.0]), Fixed([0.0, 1.0, 0.0])
    ens = EnsembleLM([m1, m2])
    ids = torch.zeros(2, 3, dtype=torch.long)
    got = ens(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.exp()
    want = (torch.softmax(m1.w, -1) + torch.softmax(m2.w, -1)) / 2
    assert torch.allclose(got[1, 2], want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(2, 3))
    assert ens.inference_cost == 2
    with pytest.raises(WorkbenchError):
        EnsembleLM([])


def test_verdict_numbers_match_table(difficulty):
    rng = np.random.default_rng(8)
    results = {k: _system(rng, difficulty) for k in ("a", "b")}
    results["merge"] = _system(rng, difficulty, skill=0.8)
    panel = build_panel(results, ingredients=["a", "b"], n_resamples=500)
    text = verdict(panel)
    row = panel.comparisons.filter(
        (pl.col("task") == "blimp") & (pl.col("metric") == "acc") & (pl.col("reference") == "best_dev")
    ).row(0, named=True)
    assert re.search(re.escape(f"{row['estimate'] * 100:+.1f} points"), text)


def test_too_few_items_to_split_is_reported_not_hidden():
    def rows(c):
        return items_frame(
            {
                "task": ["arc_easy"] * 2,
                "item_id": ["q1", "q2"],
                "group": ["arc_easy"] * 2,
                "correct": c,
                "tie": [False, False],
                "margin": [0.1, -0.1],
            }
        )

    # find a seed whose split puts both items on one side
    from workbench.stats import dev_mask

    seed = next(s for s in range(100) if len(set(dev_mask(["arc_easy"] * 2, ["q1", "q2"], seed=s).tolist())) == 1)
    panel = build_panel(
        {"a": rows([True, False]), "b": rows([False, False]), "merge": rows([True, True])},
        ingredients=["a", "b"],
        seed=seed,
        n_resamples=200,
    )
    sel = panel.selections.row(0, named=True)
    assert sel["reported_on"] == "all" and "too few for a dev/test split" in sel["note"]
    assert set(panel.comparisons["split"].to_list()) == {"all"}
    assert "too few for a dev/test split" in verdict(panel)
    curve_items = pl.concat(
        [
            rows([True, t > 0.4]).with_columns(pl.lit("lerp").alias("method"), pl.lit(t).alias("t"))
            for t in (0.0, 0.5, 1.0)
        ]
    )
    curve, barriers, tests = curve_tables(curve_items, seed=seed, n_resamples=100)
    assert "all" in set(curve["split"].to_list()) and barriers.height == 1 and tests.height == 0


# --- headline, power, seed spread, labels --------------------------------------------------


def _text_items(ll: np.ndarray, path: str) -> pl.DataFrame:
    return _wiki_items(ll).with_columns(pl.lit(f"text:{path}").alias("task"))


def _headline_panel(difficulty, *, seeds: bool = True, text_path: str = "/home/someone/data/fam/heldout.txt"):
    """Ingredients, merge, ensemble, control and seeds on BLiMP plus a text: task at a long path."""
    from workbench.claim import System

    rng = np.random.default_rng(9)

    def sys_(skill=0.0, shift=0.0):
        s = _system(rng, difficulty, skill=skill, wiki_shift=shift)
        blimp = s.filter(pl.col("task") == "blimp")
        wiki = s.filter(pl.col("task") == "wikitext")
        return pl.concat([blimp, wiki.with_columns(pl.lit(f"text:{text_path}").alias("task"))])

    results = {k: sys_() for k in ("a", "b", "c")}
    results.update(merge=sys_(0.4, 40.0), ensemble=sys_(0.6, 50.0), control=sys_(0.1, 5.0))
    seed_names = []
    if seeds:
        results.update(s1=sys_(), s2=sys_())
        seed_names = ["a", "s1", "s2"]
    systems = [System("ensemble", "ensemble", "mean of probabilities", inference_cost=3)]
    settings = {
        "claim": "the soup gets 68.7 on BLiMP vs 64.2 for the best checkpoint",
        "recipe_summary": "slerp, t=0.5",
        "ingredient_paths": {k: f"/home/someone/ckpt/{k}" for k in "abc"},
        "control": "/home/someone/ckpt/annealed",
    }
    return build_panel(
        results, ingredients=["a", "b", "c"], systems=systems, seeds=seed_names, n_resamples=300, settings=settings
    )


def test_headline_comes_first_and_answers_every_task(difficulty):
    panel = _headline_panel(difficulty)
    text = verdict(panel)
    head, rest = text.split("## Details", 1)
    assert head.startswith("# Claim check") and "the soup gets 68.7 on BLiMP" in head
    bullets = [line for line in head.splitlines() if line.startswith("- **")]
    tasks = [b.split("**")[1] for b in bullets]
    assert tasks == ["blimp", "heldout.txt", "Cost:"]  # one sentence per task, then the ensemble's cost
    for b in bullets[:2]:
        assert "95% CI" in b and "best-on-dev ingredient" in b and "vs the control checkpoint" in b
        assert any(w in b for w in ("a significant gain", "a significant loss", "no evidence of a difference"))
    assert "3x the inference" in bullets[2]
    assert "(accuracy," in bullets[0] and "(bits per byte," in bullets[1]  # the metric is named
    assert "seed spread" in bullets[0]
    # the sources section at the end says what the labels stand for, without the machine's prefix
    assert "/home/someone" not in text
    sources = text.split("## Sources")[1]
    assert "`heldout.txt`: `text:.../data/fam/heldout.txt`" in sources and "`a`: `.../someone/ckpt/a`" in sources


def test_every_no_evidence_line_says_what_would_have_been_detected(difficulty):
    panel = _headline_panel(difficulty)
    cmp = panel.comparisons
    assert {"mde", "mde_alpha", "se_analytic", "seed_sd", "seed_ratio"} <= set(cmp.columns)
    for metric in ("acc", "margin", "bits_per_byte"):
        fam = cmp.filter(pl.col("metric") == metric)
        assert np.allclose(fam["mde_alpha"].to_numpy(), 0.05 / fam.height)  # Holm's first step
    assert (cmp["mde"] > 0).all()
    text = verdict(panel)
    body = text.split("## All comparisons")[0]
    for line in body.splitlines():
        if "no evidence of a difference" in line and "identical" not in line:
            assert "detect" in line, line
    # the MDE grows with the variance: BLiMP accuracy needs several points here, bits per byte less
    acc = cmp.filter((pl.col("metric") == "acc") & (pl.col("reference") == "best_dev"))["mde"][0]
    assert 0.02 < acc < 0.3


def test_seed_spread_sets_gains_against_it(difficulty):
    panel = _headline_panel(difficulty)
    sn = panel.seed_noise
    assert set(sn["metric"].to_list()) == {"acc", "margin", "bits_per_byte"} and (sn["n"] == 3).all()
    row = panel.comparisons.filter(
        (pl.col("task") == "blimp") & (pl.col("metric") == "acc") & (pl.col("reference") == "best_dev")
    ).row(0, named=True)
    sd = sn.filter((pl.col("task") == "blimp") & (pl.col("metric") == "acc"))["sd"][0]
    assert row["seed_ratio"] == pytest.approx(abs(row["estimate"]) / sd)
    assert f"{row['seed_ratio']:.1f}x the seed spread" in verdict(panel)
    # seeds that are not ingredients are measured, never compared
    assert not panel.comparisons.filter(
        pl.col("subject").is_in(["s1", "s2"]) | pl.col("reference").is_in(["s1", "s2"])
    ).height
    assert set(panel.systems.filter(pl.col("kind") == "seed")["name"].to_list()) == {"s1", "s2"}
    without = _headline_panel(difficulty, seeds=False)
    assert (
        without.seed_noise.height == 0 and without.comparisons["seed_ratio"].null_count() == without.comparisons.height
    )
    assert "seed spread" not in verdict(without)
    with pytest.raises(WorkbenchError, match="seeds"):
        build_panel(
            {
                "a": without.items.filter(pl.col("system") == "a"),
                "merge": without.items.filter(pl.col("system") == "merge"),
            },
            ingredients=["a"],
            seeds=["a"],
        )


def test_every_line_names_its_metric_and_best_t_lines_differ(difficulty):
    rng = np.random.default_rng(6)
    frames = []
    for method in ("lerp", "slerp"):
        for t in (0.0, 0.5, 1.0):
            frames.append(
                _system(np.random.default_rng(int(t * 10)) if t in (0.0, 1.0) else rng, difficulty).with_columns(
                    pl.lit(method).alias("method"), pl.lit(t).alias("t")
                )
            )
    panel = _headline_panel(difficulty)
    panel.curve, panel.barriers, panel.curve_tests = curve_tables(pl.concat(frames), n_resamples=200)
    assert "mde" in panel.curve_tests.columns and (panel.curve_tests["mde_alpha"] == 0.05).all()
    text = verdict(panel)
    best = [line for line in text.splitlines() if line.startswith("- Best t")]
    blimp = [line for line in best if " on blimp," in line and "(lerp" not in line]
    assert any("accuracy (chosen on dev)" in line for line in blimp)
    assert any("log-likelihood margin (chosen on dev)" in line for line in blimp)
    assert len(set(best)) == len(best)
    names = ("accuracy", "log-likelihood margin", "bits per byte", "error")
    for line in text.split("## All comparisons")[0].splitlines():
        if line.startswith("- ") and not line.startswith("- **Cost"):
            assert any(n in line for n in names), line


def test_report_html_headline_first_tables_folded_labels_short(tmp_path, difficulty):
    panel = _headline_panel(difficulty)
    out = write_report(panel, tmp_path / "r")
    page = (out / "report.html").read_text()
    head = page.index('<section id="headline">')
    assert head < page.index("figure-deltas") < page.index('<section id="details">') < page.index("<details")
    assert '<details id="table-comparisons">' in page and 'href="tables/comparisons.csv"' in page
    assert (out / "tables" / "comparisons.csv").is_file() and not (out / "tables" / "items.csv").exists()
    shown = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    first = re.sub(r"<details.*?</details>", "", shown, flags=re.S)
    assert "heldout.txt" in first and "text:" not in first
    # the folded sources block names the file without the machine's prefix; the full path is in panel.json
    assert "/home/someone" not in shown and "text:.../data/fam/heldout.txt" in shown
    assert "text:/home/someone/data/fam/heldout.txt" in (out / "panel.json").read_text()
    fig = json.loads((out / "figures" / "deltas.json").read_text())
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "heldout.txt: bits per byte" in titles and not any("/home" in t for t in titles)


def test_explorer_page_has_a_slider_over_the_curve(tmp_path, difficulty):
    panel = _headline_panel(difficulty, seeds=False)
    frames = [
        _system(np.random.default_rng(int(t * 10)), difficulty).with_columns(
            pl.lit("slerp").alias("method"), pl.lit(t).alias("t")
        )
        for t in (0.0, 0.5, 1.0)
    ]
    panel.curve, panel.barriers, panel.curve_tests = curve_tables(pl.concat(frames), n_resamples=100)
    out = write_report(panel, tmp_path / "r")
    page = (out / "explorer.html").read_text()
    assert '"sliders"' in page and "Plotly.newPlot" in page and 'src="http' not in page
    assert 'href="explorer.html"' in (out / "report.html").read_text()
    no_curve = write_report(_headline_panel(difficulty, seeds=False), tmp_path / "r2")
    assert not (no_curve / "explorer.html").exists()
