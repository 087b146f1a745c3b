"""Crashes and faults lose nothing. A training process killed (SIGKILL) at named points (in the
first epoch, with a checkpoint half written, with half a metrics row appended, during test
evaluation and calibration) and at random times leaves a readable run folder that reads as
interrupted and resumes to the test results of an uninterrupted run with the same seed; a full
disk while a checkpoint is written fails the run with what to do and keeps the last checkpoint;
the Streamlit server restarted while a run trains leaves the run training, and the new server's
Train page re-attaches to it.

The named points are `files.crash_point` calls (FVR_TEST_KILL_AT="<point>:<n>" kills the process the
n-th time it gets there); "checkpoint-temp", inside checkpoint.save_checkpoint, is set up by this
file in the child process instead."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, write_image
from fvr_core.runs.checkpoint import load_checkpoint
from fvr_core.config import TrainConfig
from fvr_core.training.launcher import launch, resume_in_background, wait
from fvr_core.runs.store import COMPLETED, FAILED, INTERRUPTED, RUNNING, Run, RunStore, process_alive
from fvr_core.files import read_jsonl
from fvr_core.training.trainer import Trainer, resume, train

# for the summary: what each kill left and the largest difference in a test probability from the
# uninterrupted run; random kills; full disk and server restart
pytestmark = pytest.mark.slow  # training in child processes, killed and resumed: about half of the suite's time

SURVIVED: dict[str, tuple[str, float]] = {}
RANDOM_KILLS: list[str] = []
FAULTS: dict[str, str] = {}

# point, n-th time reached, where that is with 3 epochs of 3 steps (epoch 2 improves on epoch 1)
KILL_POINTS = {
    "step": (2, "in the first epoch, after step 2"),
    "checkpoint": (2, "epoch 2's last.* written, its best.* and last_state.pt not"),
    "state": (2, "epoch 2's last_state.pt in its temporary file, not renamed"),
    "checkpoint-temp": (3, "half of epoch 2's last.safetensors temporary file written"),
    "metrics": (8, "half of epoch 2's metrics row appended"),
    "test": (1, "during test evaluation: predictions written, metrics not"),
    "calibration": (1, "calibrating: the temperature in best.json, calibration.json not written"),
}

# the child for "checkpoint-temp": dies inside checkpoint.save_checkpoint, its weights half written
# to the temporary file and not renamed (a file these tests do not put a crash point in)
CHECKPOINT_TEMP_CHILD = """
import os, signal, sys
import fvr_core.runs.checkpoint as checkpoint
real, calls = checkpoint.save_file, []
def save_file(tensors, path, metadata=None):
    calls.append(path)
    real(tensors, path, metadata=metadata)
    if len(calls) == int(os.environ["KILL_AT_SAVE"]):
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_file = save_file
from fvr_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two classes of nearly the same colour: test probabilities stay near 0.5, so they show
    any difference in the weights (an easy set would give 0 and 1 whatever happened)."""
    root = tmp_path_factory.mktemp("crash-data")
    for i in range(15):
        write_image(root / "fake" / f"f{i}.png", (32, 32), (130, 120, 120))
        write_image(root / "real" / f"r{i}.png", (32, 32), (120, 120, 130))
    return root


def config(data, **changes) -> TrainConfig:
    # the real cnn: its best epoch (2) is not its last, so best and last checkpoints differ at every kill
    # point (tiny_cnn kept improving to the last epoch); each run folder (~100 MB) goes once checked
    base = dict(data=str(data), model="cnn", epochs=3, image_size=48, batch_size=8, threads=1, seed=7)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """The uninterrupted run every crashed run must end up matching."""
    folder = tmp_path_factory.mktemp("baseline")
    run = train(config(data), runs_dir=folder)
    assert run.state == COMPLETED, run.status()
    assert run.status()["steps_per_epoch"] == 3 and run.test_metrics()["best_epoch"] == 2
    yield run
    shutil.rmtree(folder, ignore_errors=True)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def kill_during_training(data, root: Path, point: str, n: int, child_env: dict[str, str]) -> Run:
    """Train in a child process that kills itself at `point` the n-th time; returns the run."""
    config_file = root / "config.json"
    config_file.write_text(config(data).to_json())
    args = ["train", "--config", str(config_file), "--runs-dir", str(root / "runs")]
    if point == "checkpoint-temp":
        cmd, extra = [sys.executable, "-c", CHECKPOINT_TEMP_CHILD, *args], {"KILL_AT_SAVE": str(n)}
    else:
        cmd, extra = [sys.executable, "-m", "fvr_core", *args], {"FVR_TEST_KILL_AT": f"{point}:{n}"}
    proc = subprocess.run(cmd, env={**child_env, **extra}, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}:{n}:\n{proc.stdout}\n{proc.stderr}"
    (run,) = RunStore(root / "runs").list()
    return run


def temp_files(run: Run) -> list[str]:
    return sorted(p.name for p in run.path.iterdir() if p.name.endswith(".tmp"))


def assert_readable_and_interrupted(run: Run) -> str:
    """Everything a reader opens parses or loads; returns what the kill left, in words."""
    assert run.state == INTERRUPTED, run.status()
    assert "resume" in run.status()["message"]
    for path in run.path.glob("*.json"):
        json.loads(path.read_text())
    metrics = run.path / "metrics.jsonl"  # absent when killed before the first step
    lines = metrics.read_text().split("\n") if metrics.is_file() else [""]
    for line in lines[:-1]:
        json.loads(line)  # every complete line parses; the piece after the last newline may be partial
    assert len(read_jsonl(metrics)) == len(lines) - 1
    for which in ("best", "last"):
        if (run.path / f"{which}.safetensors").is_file():
            load_checkpoint(run.checkpoint(which))
    if (run.path / "last_state.pt").is_file():
        torch.load(run.path / "last_state.pt", weights_only=True)
    run.summary(), run.progress()  # the tables and the live view read it
    left = []
    if lines[-1]:
        left.append("a partial metrics line")
    if temp_files(run):
        left.append(f"{len(temp_files(run))} temporary file(s) ({', '.join(temp_files(run))})")
    return ", ".join(left) or "no partial file"


def prob_fake(run: Run) -> dict[str, float]:
    with open(run.path / "test_predictions.csv") as fh:
        return {row["id"]: float(row["prob_fake"]) for row in csv.DictReader(fh)}


def assert_matches_uninterrupted(run: Run, baseline: Run) -> float:
    """The same epochs, steps, weights and test results; returns the largest probability difference."""
    assert run.state == COMPLETED, run.status()
    assert [e["epoch"] for e in run.epoch_rows()] == [1, 2, 3]
    assert [s["step"] for s in run.step_rows()] == list(range(1, 10))
    for which in ("best", "last"):
        a, b = load_file(baseline.path / f"{which}.safetensors"), load_file(run.path / f"{which}.safetensors")
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), f"{which} weights differ"
        assert json.loads((run.path / f"{which}.json").read_text())["epoch"] == json.loads((baseline.path / f"{which}.json").read_text())["epoch"]
    test, expected = run.test_metrics(), baseline.test_metrics()
    assert test["accuracy"] == expected["accuracy"] and test["confusion_matrix"] == expected["confusion_matrix"]
    assert test["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert prob_fake(run) == pytest.approx(prob_fake(baseline), abs=1e-4)
    calibration = json.loads((run.path / "calibration.json").read_text())
    assert calibration["temperature"] == pytest.approx(json.loads((baseline.path / "calibration.json").read_text())["temperature"], rel=1e-3)
    assert not temp_files(run), "temporary files left behind"
    return max(abs(p - prob_fake(baseline)[i]) for i, p in prob_fake(run).items())


@pytest.fixture(scope="module")
def killed(request, data, tmp_path_factory):
    """The runs killed at each selected point, trained two at a time in the background (each child
    mostly waits for one core) while the tests check and resume the ones already killed."""
    points = [item.callspec.params["point"] for item in request.session.items
              if item.originalname == "test_killed_at_a_point_resumes_to_the_uninterrupted_result"]
    child_env = env()  # taken now: the tests change their own environment while the children start
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {point: pool.submit(kill_during_training, data, tmp_path_factory.mktemp(f"kill-{point}"), point,
                                  KILL_POINTS[point][0], child_env)
               for point in points}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_at_a_point_resumes_to_the_uninterrupted_result(baseline, killed, point):
    run = killed[point].result()
    left = assert_readable_and_interrupted(run)
    resume(run)
    SURVIVED[point] = (f"{KILL_POINTS[point][1]}; left {left}", assert_matches_uninterrupted(run, baseline))
    shutil.rmtree(run.path.parent.parent, ignore_errors=True)  # its kill-<point> folder: checked, ~100 MB


def test_killed_at_random_times_in_a_background_worker(data, baseline, tmp_path):
    """A run of the background queue killed twice at random moments (the seed is printed)."""
    seed = int(os.environ.get("FVR_CRASH_SEED") or time.time())
    rng = random.Random(seed)
    run = launch(config(data), tmp_path)
    kills = []
    for _ in range(2):
        deadline = time.time() + 120
        # until the worker has loaded the data (before, it has written nothing a resume needs), then
        # any moment of the time the whole run takes on this machine
        while (state := run.state) == "queued" or (state == RUNNING and run.raw_status().get("phase") == "loading data"):
            assert time.time() < deadline, run.status()
            time.sleep(0.02)
        if state == COMPLETED:
            break
        assert state == RUNNING, run.status()
        time.sleep(rng.uniform(0.0, 0.8 * baseline.status()["train_seconds"]))
        status = run.raw_status()
        os.kill(status["pid"], signal.SIGKILL)
        while process_alive(status["pid"], status.get("pid_start")):
            time.sleep(0.05)
        if run.state == COMPLETED:  # it finished before the signal came
            break
        steps = [s["step"] for s in run.metrics() if s.get("kind") == "step"]
        kills.append(f"step {steps[-1] if steps else 0} ({run.raw_status().get('phase') or 'starting'})")
        RANDOM_KILLS.append(f"seed {seed}: killed at {kills[-1]}")
        assert_readable_and_interrupted(run)
        resume_in_background(run)
    if run.state != COMPLETED:
        assert wait(run, timeout=240) == COMPLETED, run.status()
    difference = assert_matches_uninterrupted(run, baseline)
    SURVIVED[f"random (seed {seed})"] = ("killed at " + ", ".join(kills) if kills else "finished before the first kill", difference)


@pytest.mark.parametrize("writing", ["weights", "optimizer state"])
def test_a_full_disk_while_writing_a_checkpoint_fails_cleanly(data, baseline, tmp_path, monkeypatch, writing):
    """ENOSPC in epoch 2's checkpoint: the run fails saying the disk is full and what to do, epoch
    1's checkpoint is kept as it was, and after space is freed it resumes to the uninterrupted result."""
    import fvr_core.runs.checkpoint as checkpoint
    import fvr_core.training.trainer as training

    kept: dict[str, bytes] = {}

    def fill_disk(path):
        for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last_state.pt"):
            kept[name] = (run.path / name).read_bytes()
        Path(path).write_bytes(b"\0" * 4096)  # what fitted before the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if writing == "weights":
        saves = []
        real_save_file = checkpoint.save_file

        def save_file(tensors, path, metadata=None):
            saves.append(path)
            if len(saves) == 3:  # epoch 1 saved last and best; epoch 2's last does not fit
                fill_disk(path)
            real_save_file(tensors, path, metadata=metadata)

        monkeypatch.setattr(checkpoint, "save_file", save_file)
    else:
        states = []
        real_save = torch.save

        def save(obj, path, *args, **kwargs):
            states.append(path)
            if len(states) == 2:
                fill_disk(path)
            real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(training.torch, "save", save)
    real_write = training.atomic_write_text

    def write_text(path, text):  # the traceback does not fit either
        if Path(path).name == "error.txt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, text)

    monkeypatch.setattr(training, "atomic_write_text", write_text)
    run = RunStore(tmp_path).create(config(data))
    with pytest.raises(OSError):
        Trainer(run).fit()
    status = run.status()
    assert status["state"] == FAILED, status
    assert "disk is full" in status["message"] and "free" in status["hint"] and "resume" in status["hint"]
    assert kept and all((run.path / name).read_bytes() == content for name, content in kept.items()), "epoch 1's checkpoint changed"
    for which in ("best", "last"):
        load_checkpoint(run.checkpoint(which))
    assert torch.load(run.path / "last_state.pt", weights_only=True)["epoch"] == 1  # where a resume starts
    assert not temp_files(run)
    assert [e["epoch"] for e in run.epoch_rows()] == [1]
    monkeypatch.undo()  # space freed
    resume(run)
    assert_matches_uninterrupted(run, baseline)
    FAULTS[f"full disk ({writing})"] = (f"failed ({status['message'].split(' (')[0]}), {len(kept)} checkpoint files "
                                        "unchanged and loadable, no temporary file left, resumed to the uninterrupted result")


def test_a_run_that_stopped_early_resumes_to_its_test_without_more_epochs(data, tmp_path, monkeypatch):
    """Early stopping ended training, then the process died in the test evaluation: resuming
    tests the run; it does not train the epochs that early stopping skipped."""
    calls = []
    real_test, real_evaluate = Trainer._test_best, Trainer._evaluate

    def test_best(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the process died here")
        return real_test(self)

    def evaluate(self, split, logits=None):  # validation never improves after epoch 1
        metrics, probs, loss = real_evaluate(self, split, logits)
        return metrics, probs, (1.0 if split == "val" else loss)

    monkeypatch.setattr(Trainer, "_test_best", test_best)
    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    run = RunStore(tmp_path).create(config(data, epochs=6, patience=1))
    with pytest.raises(RuntimeError):
        Trainer(run).fit()
    assert [e["epoch"] for e in run.epoch_rows()] == [1, 2]
    resume(run)
    assert run.state == COMPLETED
    assert [e["epoch"] for e in run.epoch_rows()] == [1, 2]
    assert run.test_metrics() is not None


# ---------------------------------------------------------------- server restart


def start_server(tmp_path: Path, name: str) -> tuple[subprocess.Popen, str]:
    """`streamlit run` in a process group of its own (as in a terminal, where Ctrl-C reaches the group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                return proc, url
        except OSError:
            assert time.time() < deadline and proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def test_a_run_outlives_a_server_restart_and_the_new_page_reattaches(data, tmp_path):
    from streamlit.testing.v1 import AppTest

    server, _ = start_server(tmp_path, "first-server")
    try:
        # launched from a process in the server's process group, as the Train page's button does it
        launcher = ("import json, sys; from fvr_core.config import TrainConfig; from fvr_core.training.launcher import launch; "
                    "print(launch(TrainConfig.from_dict(json.loads(sys.argv[1]))).path)")
        out = subprocess.run([sys.executable, "-c", launcher, config(data, epochs=3, batch_size=2).to_json()],
                             env=env(), cwd=REPO, check=True, capture_output=True, text=True,
                             preexec_fn=lambda: os.setpgid(0, server.pid), timeout=60).stdout
        run = Run(Path(out.strip().splitlines()[-1]))
        deadline = time.time() + 120
        while not run.step_rows():
            assert time.time() < deadline and run.state in ("queued", RUNNING), run.status()
            time.sleep(0.1)
    finally:
        stop_server(server, signal.SIGINT)  # Ctrl-C in the server's terminal reaches its whole group
    killed_at = time.time()
    step_at_kill = run.step_rows()[-1]["step"]
    status = run.status()
    assert status["state"] == RUNNING and process_alive(status["pid"], status.get("pid_start")), status
    deadline = time.time() + 60
    while not [s for s in run.step_rows() if s["time"] > killed_at]:
        assert time.time() < deadline and run.state == RUNNING, run.status()
        time.sleep(0.05)
    steps_after_kill = run.step_rows()[-1]["step"]

    # the worker waits (SIGSTOP) while the new server starts and the page opens, so that a fast
    # machine cannot finish the run first; it goes on right after
    os.kill(status["pid"], signal.SIGSTOP)
    try:
        server, url = start_server(tmp_path, "second-server")
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120).run()
        at = at.switch_page("pages/train.py").run()
    finally:
        os.kill(status["pid"], signal.SIGCONT)
    try:
        assert not at.exception, [e.value for e in at.exception]
        captions = "\n".join(str(c.value) for c in at.caption)
        assert f"{run.id[-6:]} · running" in captions, captions  # the new session's live view found the run by itself
        assert wait(run, timeout=240) == COMPLETED, run.status()
        at.run()
        assert f"{run.id} completed" in "\n".join(str(s.value) for s in at.success)
        assert urllib.request.urlopen(url, timeout=5).status == 200
    finally:
        stop_server(server)
    steps = [s["step"] for s in run.step_rows()]
    assert steps == list(range(1, 3 * 9 + 1))  # no step lost or trained twice
    assert not [r for r in run.metrics() if r.get("kind") == "resume"]  # it never restarted
    FAULTS["server restart"] = (f"run went on (steps {step_at_kill} to {steps_after_kill} with no server), "
                                f"re-attached, completed all {len(steps)} steps once")


def test_summary(baseline, capsys, request):
    """The printed line states what this session's tests showed: every kill point selected was
    survived (a failed one fails the summary as well, so the line never claims it), each resumed
    run's test probabilities within 1e-4 of the uninterrupted run's."""
    mine = [item for item in request.session.items if item.module is request.node.module and item is not request.node]
    failed = [item.nodeid for item in mine if getattr(item, "fvr_failed", False)]
    assert not failed, f"not survived: {failed}"
    selected = [item.callspec.params["point"] for item in mine
                if item.originalname == "test_killed_at_a_point_resumes_to_the_uninterrupted_result"]
    assert all(point in SURVIVED for point in selected), (selected, list(SURVIVED))
    assert all(difference <= 1e-4 for _, difference in SURVIVED.values()), SURVIVED
    named = [p for p in KILL_POINTS if p in SURVIVED]
    test = baseline.test_metrics()
    disk = [f for f in FAULTS if f.startswith("full disk")]
    summary = (
        f"kill points survived: {len(named) + len(RANDOM_KILLS)} ({', '.join(named + [f'{len(RANDOM_KILLS)} at random times'])})"
        ", resumed to completed with test metrics "
        f"equal to an uninterrupted run (accuracy {test['accuracy']:.3f}, ROC AUC {test['roc_auc']:.3f}, largest "
        f"difference in a test probability {max((d for _, d in SURVIVED.values()), default=float('nan')):.1e}); "
        f"full disk: {f'failed cleanly, previous checkpoint kept ({len(disk)} cases)' if disk else 'not run'}; "
        f"server restart: {FAULTS.get('server restart', 'not run')}"
    )
    lines = [f"  {point}: {what}" for point, (what, _) in SURVIVED.items()]
    lines += [f"  {fault}: {what}" for fault, what in FAULTS.items()]
    with capsys.disabled():
        print("\n" + summary + "\n" + "\n".join(lines))
