import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from modules.engine.metrics import mean_with_ci
from modules.engine.tracking import effect_heatmap, effects_table, log_engine_run, top_effects


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One tmp sqlite store for the module (creating its schema takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the sqlite store puts artifacts under ./mlartifacts
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield MlflowClient(uri)


@pytest.fixture
def per_example():
    """Per-example effects [n, layers, positions] with a strong cell at (1, 3)."""
    values = torch.randn(30, 3, 5, generator=torch.Generator().manual_seed(0)) * 0.1
    values[:, 1, 3] += 2.0
    values[:, 2, 0] -= 1.0
    return values


def test_effects_table_long_format():
    effects = torch.arange(6.0).reshape(2, 3)
    low, high = effects - 1, effects + 1
    table = effects_table(effects, ("layer", "head"), (low, high))
    assert list(table.columns) == ["layer", "position", "head", "value", "ci_low", "ci_high"]
    assert len(table) == 6 and table["position"].isna().all()
    for row in table.itertuples():  # independent check cell by cell
        assert row.value == effects[row.layer, row.head] and row.ci_low == row.value - 1 and row.ci_high == row.value + 1
    three = effects_table(torch.randn(2, 3, 4), ("layer", "position", "head"))
    assert len(three) == 24 and three["ci_low"].isna().all() and three["head"].max() == 3
    with pytest.raises(ValueError, match="dims must be distinct names"):
        effects_table(effects, ("layer", "neuron"))
    with pytest.raises(ValueError, match="effects has 2 dims"):
        effects_table(effects, ("layer",))
    with pytest.raises(ValueError, match="ci \\(low, high\\)"):
        effects_table(effects, ("layer", "head"), (low[:1], high))


def test_top_effects_by_magnitude():
    effects = torch.tensor([[0.1, -3.0, 0.5], [2.0, 0.0, -0.2]])
    assert top_effects(effects, ("layer", "position"), k=3) == \
        {"effect.layer_0.position_1": -3.0, "effect.layer_1.position_0": 2.0, "effect.layer_0.position_2": 0.5}


def test_heatmap_axes():
    fig = effect_heatmap(torch.randn(3, 4), "layer", "position", col_ticks=["a", "b", "c", "d"], title="t")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("position", "layer", "t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi and ax.images[0].get_cmap().name == "RdBu_r"  # centred diverging scale
    assert len(ax.texts) == 12  # a small grid carries its values
    with pytest.raises(ValueError, match="rows, cols"):
        effect_heatmap(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="scale must be"):
        effect_heatmap(torch.rand(2, 3), scale="log")


def test_unit_heatmaps_share_one_sequential_scale_and_mark_chance():
    """Rates and attention weights: [0, 1] in every figure (not rescaled to each one's range), a
    sequential colour map, chance on the colour bar; a long title wraps instead of being cut off."""
    values = torch.tensor([[0.2, 0.3], [0.25, 0.4]])
    title = "seed0, linear-chain queries: attention from the last position to the queried rule's conclusion"
    fig = effect_heatmap(values, "layer", "head", scale="unit", chance=0.5, title=title)
    ax, bar = fig.axes
    assert ax.images[0].get_clim() == (0.0, 1.0) and ax.images[0].get_cmap().name == "viridis"
    assert [t.get_text() for t in ax.texts] == ["0.20", "0.30", "0.25", "0.40"]
    assert ax.get_title().replace("\n", " ") == title and "\n" in ax.get_title()
    assert [line.get_ydata()[0] for line in bar.lines] == [0.5]
    big = effect_heatmap(torch.rand(12, 30), scale="unit")
    assert not big.axes[0].texts  # too many cells to read their values


def test_log_engine_run_roundtrip(mlflow_store, tmp_path, per_example):
    ci = mean_with_ci(per_example, n_boot=200, seed=0)
    run_id = log_engine_run("patching", ci.mean, model="tiny-gpt2", dataset_hash="abc123",
                            sites=["resid_post.0", "resid_post.1", "resid_post.2"], ci=(ci.low, ci.high),
                            tick_labels={"position": ["The", "cat", "sat", "on", "mat"]},
                            params={"metric": "logit_diff"}, top_k=2, study="engine-test")
    run = mlflow_store.get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["model"] == "tiny-gpt2" and params["dataset_hash"] == "abc123" and params["kind"] == "patching"
    assert params["sites"] == "resid_post.0,resid_post.1,resid_post.2" and params["metric"] == "logit_diff"
    assert params["shape"] == "3x5" and run.info.run_name == "patching"
    assert set(metrics) == {"max_abs_effect", "mean_effect", "effect.layer_1.position_3", "effect.layer_2.position_0"}
    assert metrics["effect.layer_1.position_3"] == pytest.approx(per_example[:, 1, 3].double().mean().item())
    assert metrics["max_abs_effect"] == pytest.approx(ci.mean.abs().max().item())

    artifacts = {a.path for top in ("figures", "effects") for a in mlflow_store.list_artifacts(run_id, top)}
    assert artifacts == {"figures/heatmap.png", "effects/effects.csv", "effects/effects.safetensors"}
    local = mlflow_store.download_artifacts(run_id, "effects", str(tmp_path / "dl"))
    table = pd.read_csv(f"{local}/effects.csv")
    assert len(table) == 15 and table["head"].isna().all()
    row = table[(table.layer == 1) & (table.position == 3)].iloc[0]
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx((ci.mean[1, 3].item(), ci.low[1, 3].item(),
                                                                 ci.high[1, 3].item()))
    stored = load_file(f"{local}/effects.safetensors")
    assert torch.equal(stored["effects"], ci.mean) and torch.equal(stored["ci_high"], ci.high)


def test_log_head_sweep_3d_and_bad_kind(mlflow_store):
    effects = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    run_id = log_engine_run("ablation", effects, model="m", dataset_hash="h", sites=["head_out"],
                            dims=("layer", "position", "head"), study="engine-test",
                            tensors={"clean_logits": torch.randn(4, 7)}, run_name="ablation head_out")
    assert mlflow_store.get_run(run_id).info.run_name == "ablation head_out"
    figures = {a.path for a in mlflow_store.list_artifacts(run_id, "figures")}
    assert figures == {"figures/heatmap_layer_0.png", "figures/heatmap_layer_1.png"}
    assert len(mlflow_store.get_run(run_id).data.metrics) == 2 + 10
    with pytest.raises(ValueError, match="kind must be one of"):
        log_engine_run("painting", effects, model="m", dataset_hash="h", sites=[], dims=("layer", "position", "head"))
