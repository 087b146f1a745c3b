"""Concurrency and load: sessions pressing Train at the same moment each get one run, trained once by
one process; launches racing for the last places of a capped queue never pass the cap; twenty
predictions at once through the Predict page's code all answer as one alone does, with one shared
model and bounded memory. Each test prints what it held (shown without -s too)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.training.launcher import launch, wait
from fvr_core.runs.store import COMPLETED, RunError, RunStore
from fvr_core.files import read_jsonl
from fvr_core.settings import AppLimits

SUMMARY: dict[str, str] = {}  # what each test held, for the summary line the last one prints


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("concurrent"), n_fake=10, n_real=10, size=(32, 32))


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


class Writers:
    """Watches every run folder of a root while runs train and records which processes wrote each
    one's status.json (pid and start time): one trainer per run means one entry."""

    def __init__(self, root: Path):
        self.root, self.seen, self._stop = root, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for status_file in self.root.glob("*/status.json"):
                try:
                    status = json.loads(status_file.read_text())
                except (OSError, ValueError):
                    continue
                if status.get("pid"):
                    self.seen.setdefault(status_file.parent.name, set()).add((status["pid"], status.get("pid_start")))
            time.sleep(0.01)

    def stop(self) -> dict[str, set]:
        self._stop.set()
        self._thread.join()
        return self.seen


def assert_trained_once(runs, writers: dict[str, set]) -> None:
    """Every run completed, its rows written once in order (no second trainer, no restart), by one process."""
    for run in runs:
        assert run.state == COMPLETED, run.status()
        raw = read_jsonl(run.path / "metrics.jsonl")  # every row ever appended, a restart's included
        steps = [r["step"] for r in raw if r.get("kind") == "step"]
        assert steps == list(range(1, len(steps) + 1)) and steps, f"{run.id} was trained twice or restarted: {steps}"
        assert [r["epoch"] for r in raw if r.get("kind") == "epoch"] == list(range(1, run.config.epochs + 1))
        assert not [r for r in raw if r.get("kind") == "resume"], f"{run.id} restarted"
        assert (run.path / "claimed").is_dir()
        assert len(writers.get(run.id, ())) == 1, f"{run.id} was written by {writers.get(run.id)}"
        assert not list(run.path.glob("*.tmp")) and not list(run.path.glob(".*.tmp"))


# ---------------------------------------------------------------- Train pressed at the same moment

N_SESSIONS = 3

SESSION = """
import json, sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}]
from streamlit.testing.v1 import AppTest

data, ready, go = sys.argv[1:4]
at = AppTest.from_file({app!r}, default_timeout=120)
at.session_state["data_path"] = data
at.run()
at.switch_page("pages/train.py").run()
at.selectbox(key="cfg_model").set_value("tiny_cnn")  # the page's whole path, with 6 KB checkpoints
at.slider(key="cfg_epochs").set_value(1)
at.select_slider(key="cfg_image_size").set_value(48).run()
train = next(b for b in at.button if b.label == "Train")
assert not train.disabled, [e.value for e in at.error]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
clicked = time.time()
train.click().run()
launched = at.session_state["live_launched"] if "live_launched" in at.session_state else [None]
print(json.dumps({{"run": launched[-1], "clicked": clicked,
                  "errors": [str(e.value) for e in [*at.error, *at.exception]]}}))
"""


@pytest.mark.slow
def test_sessions_pressing_train_at_the_same_moment_each_get_one_run_trained_once(data, tmp_path, capsys):
    """Separate Train page sessions (AppTest, one per process, so nothing in them is shared but the
    runs folder) wait for one signal and click Train together."""
    from fvr_core.training.estimate import measure_speed

    for size in (64, 48):  # the page's estimate, measured once here instead of in every session
        measure_speed("tiny_cnn", size, 32, budget_seconds=0.2)
    script = SESSION.format(repo=str(REPO), app=str(REPO / "streamlit_app.py"))
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(N_SESSIONS)]
    sessions = [subprocess.Popen([sys.executable, "-c", script, str(data), str(r), str(go)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    try:
        deadline = time.time() + 180
        while not all(r.exists() for r in ready):
            assert time.time() < deadline and all(s.poll() is None for s in sessions), [s.communicate() for s in sessions]
            time.sleep(0.05)
        root = RunStore().root
        writers = Writers(root)
        go.touch()
        outputs = [s.communicate(timeout=180) for s in sessions]
    finally:
        for s in sessions:
            if s.poll() is None:
                s.kill()
    for (out, err), s in zip(outputs, sessions):
        assert s.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert not [r["errors"] for r in results if r["errors"]]
    ids = [r["run"] for r in results]
    runs = RunStore().list()
    assert sorted(ids) == sorted(r.id for r in runs) and len(set(ids)) == N_SESSIONS  # one run per click, each its own folder
    for run in runs:
        assert wait(run, timeout=240) == COMPLETED, run.status()
    assert_trained_once(runs, writers.stop())
    spread = max(r["clicked"] for r in results) - min(r["clicked"] for r in results)
    SUMMARY["train"] = f"{N_SESSIONS} Train clicks -> {len(runs)} runs, each trained once"
    report(capsys, f"concurrent Train: {N_SESSIONS} sessions clicked within {spread * 1000:.0f} ms -> {len(runs)} runs in "
                   f"{len(set(ids))} folders, each completed, trained once by one process "
                   f"(trainer pids {sorted({p for w in writers.seen.values() for p, _ in w})})")


def test_launches_racing_for_a_capped_queue_never_pass_the_cap_and_workers_never_share_a_run(data, tmp_path, capsys):
    """Threads (as a Streamlit server's sessions are) launch at one barrier through the page's call,
    more than the queue holds; two workers then race to claim the runs that were queued."""
    limits = AppLimits(max_queued_runs=3, max_concurrent_runs=2)
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list = [None] * n

    def press(i: int) -> None:
        config = TrainConfig(data=str(data), model="tiny_cnn", epochs=1, image_size=48, batch_size=8, threads=1, seed=i)
        barrier.wait()
        try:
            outcomes[i] = launch(config, tmp_path, limits=limits)
        except RunError as exc:
            outcomes[i] = exc

    writers = Writers(tmp_path)
    threads = [threading.Thread(target=press, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    launched = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, RunError)]
    assert len(launched) == limits.max_queued_runs and len(refused) == n - limits.max_queued_runs, outcomes
    assert all("already queued or running" in str(e) for e in refused)
    runs = RunStore(tmp_path).list()
    assert sorted(r.id for r in runs) == sorted(r.id for r in launched)
    for run in runs:
        assert wait(run, timeout=240) == COMPLETED, run.status()
    seen = writers.stop()
    assert_trained_once(runs, seen)
    pids = {p for w in seen.values() for p, _ in w}
    SUMMARY["queue"] = f"{n} launches at once against a queue of {limits.max_queued_runs} -> {len(launched)} runs, {len(refused)} refused"
    report(capsys, f"concurrent launches: {SUMMARY['queue']}; {len(pids)} worker(s) racing for them, "
                   "each run trained once by one process")


def test_a_run_still_being_created_is_not_claimed_before_its_status_is_written(data, tmp_path):
    """RunStore.create writes config.json, then status.json: a prewarmed worker polling in between
    must not take the run, or the creator's "queued" would overwrite the trainer's "running"."""
    from fvr_core.training.launcher import next_queued

    store = RunStore(tmp_path)
    half = tmp_path / "20250101-000000-000-cnn-abcdef"
    half.mkdir()
    (half / "config.json").write_text(TrainConfig(data=str(data), model="tiny_cnn").to_json())
    assert [r.id for r in store.list(state="queued")] == [half.name]  # it reads as queued...
    assert next_queued(store) is None and not (half / "claimed").exists()  # ...but is left alone
    whole = store.create(TrainConfig(data=str(data), model="tiny_cnn"))
    assert next_queued(store).id == whole.id


# ---------------------------------------------------------------- twenty predictions at once

N_THREADS, ROUNDS = 20, 3


def rss_mb() -> tuple[float, float]:
    """(resident, peak resident) MB of this process, from /proc: the peak is reset there (reset_peak_rss), which psutil cannot do."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) starts again from now
    except OSError:
        pass


def photo_bytes(path: Path, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize((size, size)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="memory is read from /proc (Linux)")
def test_twenty_concurrent_predictions_answer_correctly_with_one_shared_model_and_bounded_memory(demo_data, monkeypatch, capsys):
    from fvr_core.inference.predict import Predictor, photo_cache, predict_with_each
    from fvr_core.settings import bound_thread_memory, page_predictions, prediction_slot
    from fvr_core.training.trainer import train
    from pages import _common
    from pages._common import heatmap_overlay, predictor, prepared_photo

    bound_thread_memory()  # what streamlit_app.py does for the server's process
    run = train(TrainConfig(data=str(demo_data), model="tiny_cnn", epochs=1, image_size=48, batch_size=16, threads=1))
    loads = []
    real_load = Predictor.from_checkpoint.__func__
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    _common._predictor.clear()
    running, most = [0], [0]  # models judging at this moment, and the most at once
    real_predict = Predictor.predict_prepared

    def counted(self, *a, **k):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            return real_predict(self, *a, **k)
        finally:
            running[0] -= 1

    monkeypatch.setattr(Predictor, "predict_prepared", counted)
    photos = sorted((demo_data / "fake").glob("*.jpg"))[:4] + sorted((demo_data / "real").glob("*.jpg"))[:4]
    images = [(f"{p.parent.name}-{p.name}", photo_bytes(p, 160 + 20 * i)) for i, p in enumerate(photos)]
    band = (0.35, 0.65)

    def job(i: int, k: int) -> tuple[tuple, list[dict]]:
        """What one session's rerun does: the cached model, the cached photo, every model's rows,
        and for some a saliency map (captum on a copy that shares the cached model's weights)."""
        name, data = images[(i + k) % len(images)]
        face_crop, tta = i % 2 == 0, (i + k) % 3 == 0
        prepared = [prepared_photo(data, name, face_crop)]
        with prediction_slot():
            # judged even without a face: the demo set's synthetic pictures have none
            rows = predict_with_each({"cnn": predictor(run)}, prepared, tta, band, judge_without_face=True)
        if i % 4 == 0 and prepared[0].subjects:
            heatmap_overlay(run, prepared[0].subjects[0].image, "fake")
        return (name, face_crop, tta), rows

    expected = dict(job(i, k) for i in range(N_THREADS) for k in range(ROUNDS))  # one at a time
    assert all(r["prob_fake"] is not None for rows in expected.values() for r in rows)
    before, _ = rss_mb()
    answers: dict = {}
    shared: set = set()
    failures: list = []
    latencies: list = []

    def session(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            for k in range(ROUNDS):
                start = time.perf_counter()
                key, rows = job(i, k)
                latencies.append(time.perf_counter() - start)
                answers.setdefault(key, []).append(rows)
                shared.add(id(predictor(run)))
        except Exception as exc:  # noqa: BLE001 (reported below with its thread)
            failures.append((i, repr(exc)))

    after = []
    for burst in range(2):  # a second burst shows whether memory keeps growing
        photo_cache().clear()  # faces are found again and maps drawn again, by the threads at once
        _common._heatmap.clear()
        reset_peak_rss()
        barrier = threading.Barrier(N_THREADS)
        threads = [threading.Thread(target=session, args=(i, barrier)) for i in range(N_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after.append(rss_mb())
    assert not failures, failures
    assert len(loads) == 1 and len(shared) == 1, "every session should share the one cached model"
    assert 1 <= most[0] <= page_predictions()
    for key, results in answers.items():
        for rows in results:
            got = [(r["face_index"], r["prob_fake"], r["verdict"]) for r in rows]
            want = [(r["face_index"], r["prob_fake"], r["verdict"]) for r in expected[key]]
            assert [g[0] for g in got] == [w[0] for w in want] and [g[2] for g in got] == [w[2] for w in want], (key, got, want)
            np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=0, atol=1e-6, err_msg=str(key))
    predictions = sum(len(r) for r in answers.values())
    assert predictions == 2 * N_THREADS * ROUNDS
    growth, second = after[0][0] - before, after[1][0] - after[0][0]
    peak = max(p for _, p in after)
    assert growth < 300, f"RSS grew {growth:.0f} MB under {N_THREADS} concurrent sessions"
    assert second < 50, f"RSS grew another {second:.0f} MB in a second burst: memory is not bounded"
    p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
    SUMMARY["predict"] = f"{N_THREADS} concurrent predictions correct, one shared model, RSS {growth:+.0f} MB"
    report(capsys, f"concurrent Predict: {N_THREADS} threads x {ROUNDS} rounds x 2 bursts = {predictions} predictions equal to "
                   f"one-at-a-time answers; model loaded {len(loads)} time(s), {len(shared)} shared object, at most {most[0]} "
                   f"predicting at once (page_predictions {page_predictions()}); RSS {before:.0f} MB "
                   f"before, {after[0][0]:.0f} MB after burst 1 ({growth:+.0f} MB), {after[1][0]:.0f} MB after burst 2 "
                   f"({second:+.0f} MB), peak {peak:.0f} MB; latency per session rerun p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    report(capsys, "concurrent sessions held: " + "; ".join(SUMMARY[k] for k in ("train", "queue", "predict") if k in SUMMARY)
           + "; nothing lost")


def test_prediction_slots_are_taken_in_arrival_order(monkeypatch):
    """Sessions waiting for a place to predict get it first come, first served (none starves)."""
    from fvr_core.settings import prediction_slot

    monkeypatch.setenv("FVR_PAGE_PREDICTIONS", "1")
    order, waiting = [], []

    def session(i: int) -> None:
        with prediction_slot():
            order.append(i)

    with prediction_slot():
        for i in range(6):
            waiting.append(threading.Thread(target=session, args=(i,)))
            waiting[-1].start()
            time.sleep(0.05)  # queued one after the other
        assert order == []  # the one place is taken
    for t in waiting:
        t.join(timeout=10)
    assert order == list(range(6))
