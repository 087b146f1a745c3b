"""Train: settings as sliders, presets, a time estimate, background launches and a live view of
the runs that train (a fragment that re-runs every second: reloading re-attaches, nothing restarts)."""

import time

import streamlit as st

from fvr_core.augment import AUGMENTATIONS
from fvr_core.charts import run_curves_figure
from fvr_core.config import (OPTIMIZERS, ORIGINAL_MODELS, ORIGINAL_RECIPE_DIFFERENCES, PRESET_NOTES, PRESETS, SCHEDULES,
                             ConfigError, TrainConfig, check_limits, original_four, preset_settings)
from fvr_core.dataset import DataError, is_cached
from fvr_core.datasources import split_sizes
from fvr_core.estimate import estimate_run, format_duration, measure_speed
from fvr_core.launcher import launch, prewarm, resume_in_background, stop
from fvr_core.models import MODELS
from fvr_core.runs import ACTIVE_STATES, COMPLETED, DIVERGED, FAILED, INTERRUPTED, QUEUED, RUNNING, STOPPED, RunError, RunStore
from fvr_core.training import RESUMABLE
from fvr_core.settings import worker_idle_seconds
from pages._common import WATCH_KEY, current_dataset, data_overview, demo_banner, limits

st.title("Train")
demo_banner()
lim = limits()

LR_CHOICES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
BATCH_CHOICES = [4, 8, 16, 32, 64, 128]
WEIGHT_DECAY_CHOICES = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1]
CLIP_CHOICES = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0]
SIZE_CHOICES = [s for s in (48, 64, 96, 128, 160, 192, 224, 256, 300) if s <= lim.max_image_size]
MODEL_CHOICES = [m for m in MODELS if lim.allows_model(m)]
FIELDS = ("model", "epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "augment", "image_size",
          "seed", "patience", "grad_clip", "label_smoothing", "warmup_epochs", "pretrained", "name")


def _snap(value, choices):
    return min(choices, key=lambda c: abs(c - value))


def apply_preset(name: str) -> None:
    """Widget values from TrainConfig's defaults, a preset's changes, and this app's limits."""
    model = st.session_state.get("cfg_model", TrainConfig.model)  # a preset without a model keeps the chosen one
    values = {**TrainConfig().to_dict(), "model": model, **preset_settings(name, model)}
    values["epochs"] = min(values["epochs"], lim.max_epochs)
    values["image_size"] = _snap(min(values["image_size"], lim.max_image_size), SIZE_CHOICES)
    if values["model"] not in MODEL_CHOICES:
        values["model"] = MODEL_CHOICES[0]
    for key in FIELDS:
        st.session_state[f"cfg_{key}"] = values[key]
    st.session_state["applied_preset"] = name


if "cfg_model" not in st.session_state:
    apply_preset("Quick look")  # a first visit starts from settings that finish in about a minute

# ---------------------------------------------------------------- data
data_path = current_dataset()
if data_path is None:
    st.warning("No data set chosen: pick one on the Data page first (the demo set needs no download).")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/photo_library:")
else:
    st.caption(f"Data: `{data_path}` (change it on the Data page)")
    idle = worker_idle_seconds()
    if idle and time.time() - st.session_state.get("prewarmed", 0.0) > idle / 2:
        # a worker loads torch while the settings are chosen: the first curve comes seconds sooner
        prewarm(max_concurrent=lim.max_concurrent_runs, idle_seconds=idle)
        st.session_state["prewarmed"] = time.time()

# ---------------------------------------------------------------- settings
preset_cols = st.columns(len(PRESETS) + 1)
for col, name in zip(preset_cols, PRESETS):
    col.button(f"Preset: {name}", on_click=apply_preset, args=(name,), help=PRESET_NOTES[name], width="stretch")
st.caption(" · ".join(f"**{n}**: {PRESET_NOTES[n]}" for n in PRESETS))
with st.expander("Where the Original recipe differs from the write-up (each was a bug there)"):
    st.markdown("\n".join(f"- {line}" for line in ORIGINAL_RECIPE_DIFFERENCES))

c1, c2, c3 = st.columns(3)
with c1:
    st.selectbox("Model", MODEL_CHOICES, key="cfg_model",
                 format_func=lambda m: f"{m} ({MODELS[m].parameter_count / 1e6:.1f} M parameters)",
                 help="; ".join(f"{m}: {MODELS[m].description}" for m in MODEL_CHOICES))
    st.slider("Epochs", 1, min(100, lim.max_epochs), key="cfg_epochs", help="passes over the training split")
    st.select_slider("Image size (px)", SIZE_CHOICES, key="cfg_image_size",
                     help="side of the square input; images are resized and centre-cropped, never stretched")
    st.select_slider("Batch size", BATCH_CHOICES, key="cfg_batch_size")
    st.number_input("Seed", 0, 2**31 - 1, key="cfg_seed", help="split, initial weights and batch order")
with c2:
    st.select_slider("Learning rate (log scale)", LR_CHOICES, key="cfg_lr", format_func=lambda v: f"{v:g}")
    st.selectbox("Optimizer", OPTIMIZERS, key="cfg_optimizer")
    st.selectbox("Schedule", SCHEDULES, key="cfg_schedule", help="none: constant; cosine: decays to 0; onecycle: warm-up then decay")
    st.select_slider("Weight decay", WEIGHT_DECAY_CHOICES, key="cfg_weight_decay", format_func=lambda v: f"{v:g}")
    st.slider("Warm-up (epochs)", 0.0, 5.0, step=0.5, key="cfg_warmup_epochs")
with c3:
    st.selectbox("Augmentation", list(AUGMENTATIONS), key="cfg_augment",
                 help="; ".join(f"{k}: {v.description}" for k, v in AUGMENTATIONS.items()))
    st.slider("Early stopping patience (epochs, 0 = off)", 0, 20, key="cfg_patience")
    st.select_slider("Gradient clipping (max norm, 0 = off)", CLIP_CHOICES, key="cfg_grad_clip", format_func=lambda v: f"{v:g}")
    st.slider("Label smoothing", 0.0, 0.3, step=0.05, key="cfg_label_smoothing")
    st.checkbox("Start from ImageNet weights", key="cfg_pretrained", disabled=lim.demo or not MODELS[st.session_state["cfg_model"]].pretrained_available,
                help="downloads the weights once (needs internet)")
st.text_input("Run name (optional)", key="cfg_name", max_chars=60)

config = None
problem = None
try:
    config = TrainConfig(data=str(data_path or ""), **{k: st.session_state[f"cfg_{k}"] for k in FIELDS}).validate()
    check_limits(config, lim)
except ConfigError as exc:
    problem = str(exc)
    st.error(problem)

# ---------------------------------------------------------------- estimate


@st.cache_data(show_spinner=False, max_entries=64)
def _speed(model: str, image_size: int, batch_size: int):
    return measure_speed(model, image_size, batch_size)


overview = None
if config is not None and data_path is not None:
    try:
        overview = data_overview(str(data_path), tuple(config.split), config.seed)
    except DataError as exc:
        problem = f"the data set cannot be used: {exc}"
        st.error(f"The data set cannot be used: {exc}. Choose another on the Data page.")

if config is not None and overview is not None:
    sizes = {name: sum(c.values()) for name, c in split_sizes(overview.data.labels, config.split, config.seed).items()}
    with st.spinner(f"Measuring {config.model} at {config.image_size} px on this machine (once per model and size)..."):
        speed = _speed(config.model, config.image_size, config.batch_size)
    estimate = estimate_run(config, sizes, decoded=is_cached(data_path, config.image_size), speed=speed)
    busy = any(r.state == RUNNING for r in RunStore().list())
    note = " Another run is training now, so this run waits in the queue first." if busy else ""
    text = f"Estimated time: {estimate.describe()}.{note}"
    if estimate.total_seconds > 3600:
        st.warning(text + " Consider a smaller image size, fewer epochs or a GPU.")
    else:
        st.info(text)

# ---------------------------------------------------------------- launch
b1, b2, _ = st.columns([1, 1, 3])
can_launch = config is not None and overview is not None and problem is None
if b1.button("Train", type="primary", disabled=not can_launch, width="stretch"):
    try:
        run = launch(config, limits=lim)
        st.session_state[WATCH_KEY] = run.id
        st.toast(f"Queued {run.id}")
    except (ConfigError, RunError, DataError) as exc:
        st.error(str(exc))
four_allowed = all(lim.allows_model(m) for m in ORIGINAL_MODELS)
if b2.button("Train all four", disabled=not can_launch or not four_allowed, width="stretch",
             help="queue cnn, resnet18, vgg19 and vgg19_bn with these settings: the original comparison"
             + ("" if four_allowed else " (not offered in this app: vgg19 is too heavy for it)")):
    try:
        configs = original_four(config, preset=st.session_state.get("applied_preset"))
        for c in configs:
            check_limits(c.validate(), lim)
        launched = [launch(c, limits=lim) for c in configs]
        st.session_state[WATCH_KEY] = launched[0].id
        st.toast(f"Queued {len(launched)} runs")
    except (ConfigError, RunError, DataError) as exc:
        st.error(str(exc))

# ---------------------------------------------------------------- live view
st.divider()
st.subheader("Live")
store = RunStore()


def _watched():
    runs = store.list()
    wanted = st.session_state.get(WATCH_KEY)
    for run in runs:
        if run.id == wanted:
            return run, runs
    active = [r for r in runs if r.state in ACTIVE_STATES]
    return (active[-1] if active else runs[0] if runs else None), runs


def _describe_progress(p: dict) -> str:
    parts = [f"step {p['step']}/{p['total_steps'] or '?'}", f"epoch {p['epoch']}/{p['epochs']}"]
    if p["phase"] and p["phase"] != "training":
        parts.append(p["phase"])
    if p["eta_seconds"] is not None:
        parts.append(f"about {format_duration(p['eta_seconds'])} left")
    return " · ".join(parts)


def live_view() -> None:
    run, runs = _watched()
    if run is None:
        st.info("No runs yet: press Train.")
        return
    active = [r for r in runs if r.state in ACTIVE_STATES]
    if len(runs) > 1:
        ids = [r.id for r in runs[:30]]
        st.selectbox("Run shown", ids, index=ids.index(run.id) if run.id in ids else 0, key="live_pick",
                     on_change=lambda: st.session_state.update({WATCH_KEY: st.session_state["live_pick"]}),
                     format_func=lambda i: f"{i} ({next(r.state for r in runs if r.id == i)})")
    if active:
        st.caption(f"{len(active)} run(s) queued or training: " + ", ".join(f"{r.id} ({r.state})" for r in active))
    p = run.progress()
    state = p["state"]
    status = run.status()
    if state == QUEUED:
        st.info(f"{run.id} is queued: it starts when the runs before it finish.")
    elif state == RUNNING:
        st.progress(p["fraction"], text=_describe_progress(p))
    elif state == COMPLETED:
        test = run.test_metrics() or {}
        st.success(f"{run.id} completed in {format_duration(status.get('train_seconds', 0))}: test accuracy "
                   f"{test.get('accuracy', float('nan')):.1%}, balanced accuracy {test.get('balanced_accuracy', float('nan')):.1%}, "
                   f"ROC AUC {test.get('roc_auc') or float('nan'):.3f}. See it on Compare.")
    elif state == DIVERGED:
        st.error(f"{run.id} diverged: {status.get('message', '')}. Try this: {status.get('hint', '')}.")
    elif state == FAILED:
        hint = f" {status['hint']}" if status.get("hint") else ""
        st.error(f"{run.id} failed: {status.get('message', 'no message')}.{hint}")
    elif state in (STOPPED, INTERRUPTED):
        st.warning(f"{run.id} is {state}: {status.get('message', '')}")
    if state in ACTIVE_STATES and st.button("Stop", key=f"stop_{run.id}", icon=":material/stop_circle:"):
        stop(run)
        st.toast(f"Asked {run.id} to stop")
    if state in RESUMABLE and not run.is_reference and st.button("Resume", key=f"resume_{run.id}"):
        try:
            resume_in_background(run, limits=lim)
        except RunError as exc:
            st.error(str(exc))
    if run.step_rows():
        st.plotly_chart(run_curves_figure(run), width="stretch", key="live_chart")
    elif state in ACTIVE_STATES:
        st.caption(f"Waiting for the first step ({p['phase'] or 'starting'})...")
    was_active = st.session_state.get("live_was_active", False)
    st.session_state["live_was_active"] = bool(active)
    if was_active and not active:
        st.rerun()  # the last run ended: redraw the page once, which also stops the polling


any_active = any(r.state in ACTIVE_STATES for r in store.list())
st.fragment(live_view, run_every=1 if any_active else None)()
