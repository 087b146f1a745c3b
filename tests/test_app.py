"""The dashboard starts and its home page lists the runs (pages arrive with the dashboard issue)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from conftest import REPO


def test_home_page_renders_without_runs():
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "fvr" in at.title[0].value
    assert any("No runs yet" in i.value for i in at.info)


def test_home_page_lists_a_run(tmp_path, monkeypatch):
    from fvr_core.config import TrainConfig
    from fvr_core.runs import RunStore

    monkeypatch.setenv("FVR_RUNS_DIR", str(tmp_path))
    run = RunStore(tmp_path).create(TrainConfig(data="/x", model="resnet18"))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run"]) == [run.id] and list(table["model"]) == ["resnet18"]
