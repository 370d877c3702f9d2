"""`make status`: one line a pipeline, never-run stages (not in its dvc.lock) told from stale ones."""
from modules.core.pipeline_status import describe, locked_stages, stage_states


def test_never_run_and_stale_stages_are_told_apart(tmp_path, monkeypatch):
    (tmp_path / "pipelines/x").mkdir(parents=True)
    (tmp_path / "pipelines/x/dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python train.py\n")
    monkeypatch.chdir(tmp_path)
    locked = locked_stages("pipelines/x/dvc.yaml")
    assert locked == {"train"} and locked_stages("pipelines/none/dvc.yaml") == set()
    status = {"pipelines/x/dvc.yaml:train": [{"changed deps": {"modules/engine": "modified"}}],
              "pipelines/x/dvc.yaml:report": [{"changed outs": {"reports/x": "deleted"}}]}
    states = stage_states(status, locked)
    assert states == {"train": "stale", "report": "never run"}
    assert describe("pipelines/x/dvc.yaml", "make x", states) == (
        "pipelines/x/dvc.yaml: 1 stale (train); 1 never run (report) -> make x")
    assert describe("dvc.yaml", "make pipeline", {}) == "dvc.yaml: up to date"
