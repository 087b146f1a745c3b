"""Train: settings as sliders, presets, a time estimate, background launches and a live view of
the runs that train (a fragment that re-runs every second: reloading re-attaches, nothing restarts)."""

import time

import streamlit as st

from fvr_core.data.augment import AUGMENTATIONS
from fvr_core.report.charts import run_curves_figure
from fvr_core.config import (CLASS_WEIGHTS, OPTIMIZERS, ORIGINAL_MODELS, ORIGINAL_RECIPE_DIFFERENCES, PRESET_NOTES, PRESETS,
                             SCHEDULES, SELECT_METRICS, ConfigError, TrainConfig, check_limits, config_fields, from_query_params,
                             original_four, preset_settings_within, to_query_params, within_limits)
from fvr_core.data.dataset import DataError, is_cached
from fvr_core.workspace.datasources import dataset_title, split_sizes
from fvr_core.training.estimate import estimate_run, estimate_runs, format_duration, speed_for
from fvr_core.training.launcher import launch, prewarm, resume_in_background, stop
from fvr_core.training.searches import TRAIN_PAGE_OPTIONS
from fvr_core.report.live import batch_summary, ended_badly, live_poll_seconds, run_choice_label, run_to_follow
from fvr_core.models.registry import MODELS
from fvr_core.runs.store import ACTIVE_STATES, COMPLETED, DIVERGED, FAILED, INTERRUPTED, QUEUED, RUNNING, STOPPED, RunError, RunStore
from fvr_core.runs.store import RESUMABLE
from fvr_core.settings import worker_idle_seconds
from pages._common import data_overview, demo_banner, limits, session_id, show_current_dataset

st.title("Train")
demo_banner()
lim = limits()

# the sliders' steps, shared with the Search page's "Train the best settings" (it rounds to them)
LR_CHOICES = list(TRAIN_PAGE_OPTIONS["lr"])
BATCH_CHOICES = list(TRAIN_PAGE_OPTIONS["batch_size"])
WEIGHT_DECAY_CHOICES = list(TRAIN_PAGE_OPTIONS["weight_decay"])
CLIP_CHOICES = list(TRAIN_PAGE_OPTIONS["grad_clip"])
EMA_CHOICES = list(TRAIN_PAGE_OPTIONS["ema"])
SIZE_CHOICES = [s for s in TRAIN_PAGE_OPTIONS["image_size"] if s <= lim.max_image_size]
MODEL_CHOICES = [m for m in MODELS if lim.allows_model(m)]
FIELDS = ("model", "epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "augment", "image_size",
          "seed", "patience", "grad_clip", "ema", "label_smoothing", "warmup_epochs", "class_weights", "select_metric", "pretrained",
          "name")
HELP = {f.name: f.metadata["help"] for f in config_fields()}


PICKED_KEY, LAUNCHED_KEY, BATCH_KEY, ANNOUNCED_KEY = "live_picked", "live_launched", "live_batch", "live_announced"


def _snap(value, choices):
    return min(choices, key=lambda c: abs(c - value))


def fit_widgets(values: dict) -> dict:
    """Values (already within this app's limits) the widgets can show: numbers snapped to a
    slider's choices or kept within its range."""
    values = dict(values)
    for key, choices in (("lr", LR_CHOICES), ("batch_size", BATCH_CHOICES), ("weight_decay", WEIGHT_DECAY_CHOICES),
                         ("grad_clip", CLIP_CHOICES), ("ema", EMA_CHOICES), ("image_size", SIZE_CHOICES)):
        if key in values:
            values[key] = _snap(values[key], choices)
    if "epochs" in values:
        values["epochs"] = max(1, min(values["epochs"], 100))
    for key, top in (("patience", 20), ("warmup_epochs", 5.0), ("label_smoothing", 0.3)):
        if key in values:
            values[key] = min(max(values[key], 0), top)
    if "name" in values:
        values["name"] = str(values["name"])[:60]
    return values


FIRST_PRESET = "Quick look"  # a first visit starts from settings that finish in about a minute


def preset_values(name: str, model: str) -> dict:
    """Widget values of a preset for `model`, within this app's limits."""
    return fit_widgets(preset_settings_within(name, model, lim))


def apply_preset(name: str) -> None:
    model = st.session_state.get("cfg_model", TrainConfig.model)  # a preset without a model keeps the chosen one
    values = preset_values(name, model)
    for key in FIELDS:
        st.session_state[f"cfg_{key}"] = values[key]
    st.session_state["applied_preset"] = name


if "cfg_model" not in st.session_state:
    apply_preset(FIRST_PRESET)  # unless the link carries settings (a reload, a new tab, a shared link): those win
    linked, link_problems = from_query_params(st.query_params.to_dict(), FIELDS)
    for key, value in fit_widgets(within_limits(linked, lim)).items():
        st.session_state[f"cfg_{key}"] = value
    if linked:
        st.session_state["applied_preset"] = None
    for problem in link_problems:
        st.warning(problem)

# ---------------------------------------------------------------- data
data_path = show_current_dataset()
if data_path is not None:
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
    if MODELS[st.session_state["cfg_model"]].fit is not None:
        st.caption(f"{st.session_state['cfg_model']} is fitted in one pass (features, then a logistic regression with "
                   "its strength chosen on the validation split): epochs, learning rate, batch size, schedule and "
                   "augmentation do not apply. Use the images' native size (300 px for the shared set).")
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
    st.selectbox("Best checkpoint by", SELECT_METRICS, key="cfg_select_metric", help=HELP["select_metric"])
    st.slider("Early stopping patience (epochs, 0 = off)", 0, 20, key="cfg_patience", help=HELP["patience"])
    st.selectbox("Class weights", CLASS_WEIGHTS, key="cfg_class_weights", help=HELP["class_weights"])
    st.select_slider("Gradient clipping (max norm, 0 = off)", CLIP_CHOICES, key="cfg_grad_clip", format_func=lambda v: f"{v:g}")
    st.slider("Label smoothing", 0.0, 0.3, step=0.05, key="cfg_label_smoothing")
    st.select_slider("Weight averaging (EMA decay, 0 = off)", EMA_CHOICES, key="cfg_ema", format_func=lambda v: f"{v:g}",
                     help=HELP["ema"])
    st.checkbox("Start from ImageNet weights", key="cfg_pretrained", disabled=lim.demo or not MODELS[st.session_state["cfg_model"]].pretrained_available,
                help="downloads the weights once (needs internet)")
st.text_input("Run name (optional)", key="cfg_name", max_chars=60)

# the settings go into the link, so a reload, a new tab or a shared link keep them
chosen_settings = {k: st.session_state[f"cfg_{k}"] for k in FIELDS}
wanted_params = to_query_params(chosen_settings, base=preset_values(FIRST_PRESET, TrainConfig.model))
for key in FIELDS:
    if key in st.query_params and key not in wanted_params:
        del st.query_params[key]
st.query_params.update({k: v for k, v in wanted_params.items() if st.query_params.get(k) != v})

config = None
problem = None
try:
    config = TrainConfig(data=str(data_path or ""), **chosen_settings).validate()
    check_limits(config, lim)
except ConfigError as exc:
    problem = str(exc)
    st.error(problem)

# ---------------------------------------------------------------- estimate
store = RunStore()
overview = None
if config is not None and data_path is not None:
    try:
        overview = data_overview(str(data_path), tuple(config.split), config.seed)
    except DataError as exc:
        problem = f"the data set cannot be used: {exc}"
        st.error(f"The data set cannot be used: {exc}. Choose another on the Data page.")

four_allowed = all(lim.allows_model(m) for m in ORIGINAL_MODELS)
four_estimate = None
if config is not None and overview is not None:
    sizes = {name: sum(c.values()) for name, c in split_sizes(overview.data.labels, config.split, config.seed,
                                                              overview.data.strata()).items()}
    decoded = is_cached(data_path, config.image_size)
    finished = store.list(state=COMPLETED)
    with st.spinner(f"Measuring {config.model} at {config.image_size} px on this machine (once a day per model and size)..."):
        speed = speed_for(config, finished)
    estimate = estimate_run(config, sizes, decoded=decoded, speed=speed)
    busy = any(r.state == RUNNING for r in store.list())
    note = " Another run is training now, so this run waits in the queue first." if busy else ""
    text = f"Estimated time: {estimate.describe()}.{note}"
    if estimate.total_seconds > 3600:
        st.warning(text + " Consider a smaller image size, fewer epochs or a GPU.")
    else:
        st.info(text)
    if four_allowed:
        four = original_four(config, preset=st.session_state.get("applied_preset"))
        speeds = [speed_for(c, finished, measure=False) for c in four]  # never a minute of measuring on a page view
        if all(speeds):
            four_estimate = estimate_runs(four, sizes, decoded=decoded, speeds=speeds)

# ---------------------------------------------------------------- launch
b1, b2, b3 = st.columns([1, 1, 3])
can_launch = config is not None and overview is not None and problem is None


def _launched(runs: list) -> None:
    """Follow the runs this click queued (a pick in "Run shown" gives way to them)."""
    st.session_state[LAUNCHED_KEY] = st.session_state.get(LAUNCHED_KEY, []) + [r.id for r in runs]
    st.session_state.pop(PICKED_KEY, None)


if data_path is not None:
    size = f", {len(overview.data)} images" if overview is not None else ""
    b3.markdown(f":material/dataset: Trains on **{dataset_title(data_path)}**{size}  \n`{data_path}` · change it on the Data page")
if b1.button("Train", type="primary", disabled=not can_launch, width="stretch"):
    try:
        run = launch(config, limits=lim, owner=session_id())
        _launched([run])
        st.session_state.pop(BATCH_KEY, None)
        st.toast(f"Queued {run.id}")
    except (ConfigError, RunError, DataError) as exc:
        st.error(str(exc))
four_help = "queue cnn, resnet18, vgg19 and vgg19_bn with these settings, one after the other: the original comparison"
if not four_allowed:
    four_help += " (not offered in this app: vgg19 is too heavy for it)"
elif four_estimate is not None:
    four_help += f". All four: {four_estimate.describe()}"
else:
    four_help += ". Its time is estimated once each of the four models has been measured or trained at these settings"
if b2.button("Train all four", disabled=not can_launch or not four_allowed, width="stretch", help=four_help):
    try:
        configs = original_four(config, preset=st.session_state.get("applied_preset"))
        for c in configs:
            check_limits(c.validate(), lim)
        launched = [launch(c, limits=lim, owner=session_id()) for c in configs]
        _launched(launched)
        st.session_state[BATCH_KEY] = [r.id for r in launched]
        st.toast(f"Queued {len(launched)} runs")
    except (ConfigError, RunError, DataError) as exc:
        st.error(str(exc))
if four_estimate is not None:
    low, high = four_estimate.range_seconds()
    b2.caption(f"all four: about {format_duration(four_estimate.total_seconds)} ({format_duration(low)}-{format_duration(high)})")

# ---------------------------------------------------------------- live view
st.divider()
st.subheader("Live")


def _describe_progress(p: dict) -> str:
    parts = [f"step {p['step']}/{p['total_steps'] or '?'}", f"epoch {p['epoch']}/{p['epochs']}"]
    if p["phase"] and p["phase"] != "training":
        parts.append(p["phase"])
    if p["eta_seconds"] is not None:
        parts.append(f"about {format_duration(p['eta_seconds'])} of training left")
    return " · ".join(parts)


def _pick() -> None:
    st.session_state[PICKED_KEY] = st.session_state["live_pick"]


def _announce(runs: list) -> None:
    """A run this session queued that diverged, failed or was interrupted gets a toast and a line, once."""
    announced = st.session_state.setdefault(ANNOUNCED_KEY, [])
    for run, line in ended_badly(runs, st.session_state.get(LAUNCHED_KEY, []), announced):
        announced.append(run.id)
        st.toast(line, icon=":material/error:")
        st.session_state.setdefault("live_notices", []).append(line)
    for line in st.session_state.get("live_notices", [])[-4:]:
        st.error(line, icon=":material/error:")


def live_view() -> None:
    runs = store.list()
    run = run_to_follow(runs, st.session_state.get(PICKED_KEY), st.session_state.get(LAUNCHED_KEY, []))
    if run is None:
        st.info("No runs yet: press Train.")
        return
    _announce(runs)
    active = [r for r in runs if r.state in ACTIVE_STATES]
    if len(runs) > 1:
        shown = runs[:30] if run in runs[:30] else [run] + runs[:29]
        labels = {r.id: run_choice_label(r) for r in shown}  # states as they are now, on every redraw
        st.session_state["live_pick"] = run.id  # the box shows the run below it, not the one it first showed
        st.selectbox("Run shown", list(labels), key="live_pick", on_change=_pick, format_func=labels.get,
                     help="follows the run that trains; a run picked here stays shown until you press Train again")
    if active:
        st.caption(f"{len(active)} run(s) queued or training: " + ", ".join(run_choice_label(r) for r in active))
    summary = batch_summary(runs, st.session_state.get(BATCH_KEY, []))
    if summary:
        st.markdown("**Train all four: all ended**")
        st.dataframe(summary, hide_index=True, width="stretch", column_config={
            "test balanced accuracy": st.column_config.NumberColumn(format="percent")})
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
    mine = run.may_change("stop", lim, session_id())  # in demo mode, others' runs are read-only
    if not mine and lim.demo:
        st.caption("Started by another visitor: you can watch it, not stop or resume it.")
    if state in ACTIVE_STATES and mine and st.button("Stop", key=f"stop_{run.id}", icon=":material/stop_circle:"):
        try:
            stop(run, lim, session_id())
            st.toast(f"Asked {run.id} to stop")
        except RunError as exc:
            st.error(str(exc))
    if state in RESUMABLE and mine and st.button("Resume", key=f"resume_{run.id}"):
        try:
            resume_in_background(run, limits=lim, owner=session_id())
            st.session_state[PICKED_KEY] = run.id
        except RunError as exc:
            st.error(str(exc))
        else:
            # the fragment's polling was decided by the last full run of the page (nothing was active
            # then): run the whole page again, so the resumed run is followed live to its end
            st.rerun(scope="app")
    if run.step_rows():
        st.plotly_chart(run_curves_figure(run), width="stretch", key="live_chart")
    elif state in ACTIVE_STATES:
        st.caption(f"Waiting for the first step ({p['phase'] or 'starting'})...")
    was_active = st.session_state.get("live_was_active", False)
    st.session_state["live_was_active"] = bool(active)
    if was_active and not active:
        st.rerun()  # the last run ended: redraw the page once, which also stops the polling


st.fragment(live_view, run_every=live_poll_seconds(store.list()))()
