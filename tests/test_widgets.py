"""The merge explorer's callbacks, without a browser: setting a widget's value re-merges,
re-evaluates and changes the FigureWidget's data."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.widgets import ExplorerSession, MergeExplorer, notebook_models, t_parameter


@pytest.fixture(scope="module")
def session(tiny_family, shared_data: Path) -> ExplorerSession:
    return ExplorerSession(
        [tiny_family.siblings[0], tiny_family.independent[0]],
        tasks=["blimp"],
        limit=1,
        seed=0,
        device="cpu",
        data_dir=shared_data,
    )


def _state(fig) -> list:
    return [(tuple(tr.x or ()), tuple(tr.y or ())) for tr in fig.data]


def test_session_subsample_is_a_stratified_dev_half(session: ExplorerSession) -> None:
    ids = session.item_ids["blimp"]
    assert 0 < len(ids) <= 67  # at most one item per paradigm, then the dev half
    assert len(set(ids)) == len(ids)
    assert len(session.baselines) == 2 and session.fields
    assert all(0.0 <= b.metrics["blimp"] <= 1.0 for b in session.baselines)


def test_slider_change_remerges_reevaluates_and_updates_the_figure(session: ExplorerSession) -> None:
    ex = MergeExplorer(session, t_grid=[0.0, 0.5, 1.0], t=0.5, debounce_s=0.01)
    try:
        assert ex.wait(300), "first setting not drawn"
        before = _state(ex.figure)
        merges, evals, drawn = session.merges, session.evaluations, len(ex.latencies)
        assert before[1][0] == (0.5,)  # the current point sits at t = 0.5

        ex.t_slider.value = 0.1
        assert ex.wait(300)
        after = _state(ex.figure)
        assert session.merges > merges and session.evaluations > evals
        assert len(ex.latencies) > drawn and all(x > 0 for x in ex.latencies)
        assert after[1][0] == (0.1,) and after != before
        assert ex.results[-1].t == pytest.approx(0.1) and ex.results[-1].method == "slerp"
        assert "latency" in ex.readout.value and "slerp t = 0.10" in ex.readout.value
        assert ex.attn_slider.value == pytest.approx(0.1)  # groups follow t until separated

        # per-group t: the recipe gets a filter list; the figure title says so
        ex.per_group.value = True
        ex.attn_slider.value = 0.9
        assert ex.wait(300)
        last = ex.results[-1]
        assert (last.t_attn, last.t_mlp) == (pytest.approx(0.9), pytest.approx(0.1))
        assert "attention 0.90" in ex.figure.layout.title.text

        # method dropdown
        ex.method.value = "lerp_norm_restore"
        assert ex.wait(300)
        assert ex.results[-1].method == "lerp_norm_restore"
        assert ex.error is None

        # the t grid fills in the background (endpoints = ingredients) and feeds the static slider figure
        assert ex.wait(600, grid=True)
        assert ex.curves["lerp_norm_restore"][1.0].metrics == session.baselines[1].metrics
        curve, deltas = ex.grid_tables("lerp_norm_restore")
        assert curve["t"].to_list() == [0.0, 0.5, 1.0]
        assert set(deltas["ingredient"].to_list()) == set(session.labels)
    finally:
        ex.close()


def test_burst_of_changes_keeps_only_the_latest(session: ExplorerSession) -> None:
    ex = MergeExplorer(session, t_grid=[0.0, 1.0], t=0.5, debounce_s=0.3)  # endpoints: no extra evaluation
    try:
        assert ex.wait(300)
        merges = session.merges
        for v in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4):
            ex.t_slider.value = v  # a drag: callbacks return at once
        assert ex.wait(300)
        assert ex.results[-1].t == pytest.approx(0.4)
        # the burst was coalesced: far fewer merges than changes (grid points may add a few)
        assert session.merges - merges < 6
    finally:
        ex.close()


def test_foreground_mode_and_endpoints_match_ingredients(session: ExplorerSession) -> None:
    ex = MergeExplorer(session, t_grid=[0.0, 1.0], t=0.0, method="lerp", background=False)
    try:
        # lerp at t = 0 is the first ingredient: same items, same accuracy
        assert ex.results[-1].metrics == session.baselines[0].metrics
        ex.t_slider.value = 1.0
        assert ex.results[-1].metrics == session.baselines[1].metrics
        assert ex.results[-1].fields == session.baselines[1].fields
    finally:
        ex.close()


def test_bad_inputs_are_one_clear_error(tiny_family) -> None:
    with pytest.raises(WorkbenchError, match="exactly two models"):
        ExplorerSession([tiny_family.siblings[0]])
    with pytest.raises(WorkbenchError, match="no models given"):
        notebook_models([], None)
    with pytest.raises(WorkbenchError, match="takes 2 models"):
        notebook_models(["a", "b", "c"], count=2)
    assert t_parameter(0.3, None, 0.7) == [{"filter": "mlp", "value": 0.7}, {"value": 0.3}]


def test_session_on_a_model_whose_layout_differs_from_its_files(tmp_path, shared_data: Path) -> None:
    """Mixtral's in-memory layout fuses the experts the files store one by one: the explorer's
    model must hold every merged tensor (rebuilt through transformers' conversion), not silently
    keep the first ingredient's experts."""
    import torch

    from workbench.checkpoints import model_from_state_dict, open_checkpoint
    from workbench.merge import merge_in_memory
    from workbench.testing import write_random_model

    a = write_random_model("mixtral", tmp_path / "a", seed=0)
    b = write_random_model("mixtral", tmp_path / "b", seed=1)
    s = ExplorerSession([a, b], tasks=["blimp_adjunct_island"], limit=2, device="cpu", data_dir=shared_data)
    s.point("slerp", 0.5)
    want = model_from_state_dict(open_checkpoint(a), merge_in_memory(s.recipe("slerp", 0.5)))
    got = dict(s.model.state_dict())
    for name, tensor in want.state_dict().items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
