"""Search: an Optuna hyperparameter search over ordinary runs. Ranges as sliders and multiselects
built from TrainConfig's fields, an estimate of the time, Start in the background queue, a live
table of trials and Optuna's plotly figures as trials finish, and "Train the best settings"."""

import secrets

import streamlit as st

from fvr_core.config import ConfigError, TrainConfig
from fvr_core.data.dataset import DataError, is_cached
from fvr_core.workspace.datasources import split_sizes
from fvr_core.training.estimate import estimate_run, format_duration, measure_speed
from fvr_core.runs.store import COMPLETED, INTERRUPTED, QUEUED, RUNNING, STOPPED, RunError
from fvr_core.training.search import launch_search, resume_search_in_background
from fvr_core.training.searches import DEFAULT_TRIALS, OBJECTIVES, PRUNERS, SearchSpec, SearchStore, estimate_seconds, make_range, search_widget, TRAIN_PAGE_FIELDS, searchable_fields, stop_search, study_figures, train_page_values
from pages._common import data_overview, demo_banner, limits, show_current_dataset

st.title("Search")
demo_banner()
lim = limits()
WATCH_SEARCH = "watch_search"
# in demo mode a search belongs to the visitor session that started it
owner = st.session_state.setdefault("search_owner", secrets.token_hex(8))
store = SearchStore()


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- settings
data_path = show_current_dataset()

st.write("Each trial trains an ordinary run with values drawn from the ranges below; Optuna picks the next values "
         "from the trials so far and its pruner stops hopeless trials early.")
models = list(search_widget("model", lim).options)
c1, c2, c3 = st.columns(3)
model = c1.selectbox("Model (every trial)", models, key="search_model")
epochs = c1.slider("Epochs per trial", 1, min(30, lim.max_epochs), min(5, lim.max_epochs), key="search_epochs")
sizes = list(search_widget("image_size", lim).options)
image_size = c1.select_slider("Image size (px, every trial)", sizes, value=64 if 64 in sizes else sizes[0], key="search_image_size")
trials = c2.number_input("Trials", 1, lim.max_trials if lim.demo else 200, DEFAULT_TRIALS, key="search_trials",
                         help=f"at most {lim.max_trials} in this app" if lim.demo else "how many runs the search trains")
objective = c2.selectbox("Objective", list(OBJECTIVES), format_func=lambda o: f"{OBJECTIVES[o].label} ({OBJECTIVES[o].direction})",
                         key="search_objective", help="each trial's score at its best checkpoint (lowest validation loss)")
pruner = c2.selectbox("Pruner", list(PRUNERS), key="search_pruner", help="; ".join(f"{k}: {v[0]}" for k, v in PRUNERS.items()))
choosable = [f for f in searchable_fields() if f not in ("model", "image_size")]
fields = c3.multiselect("Settings to search", choosable, default=["lr", "batch_size", "augment"], key="search_fields")

space, problem = {}, None
if fields:
    st.subheader("Ranges")
cols = st.columns(3)
for i, name in enumerate(fields):
    widget = search_widget(name, lim)
    col = cols[i % 3]
    try:
        if widget.kind == "log":
            low, high = col.select_slider(f"{name} (log scale)", widget.options, value=widget.default,
                                          format_func=lambda v: f"{v:g}", key=f"search_range_{name}")
            space[name] = make_range(name, low, high)
        elif widget.kind == "range":
            low, high = col.slider(name, widget.low, widget.high, widget.default, step=widget.step, key=f"search_range_{name}")
            space[name] = make_range(name, low, high)
        else:
            chosen = col.multiselect(name, widget.options, default=widget.default, key=f"search_range_{name}")
            space[name] = make_range(name, choices=chosen)
    except ConfigError as exc:
        problem = str(exc)

spec = None
if problem is None and data_path is not None:
    try:
        base = TrainConfig(data=str(data_path), model=model, epochs=epochs, image_size=image_size)
        spec = SearchSpec(base=base, space=space, trials=int(trials), objective=objective, pruner=pruner,
                          owner=owner if lim.demo else "").validate(lim)
    except ConfigError as exc:
        problem = str(exc)
if problem:
    st.error(problem)


@st.cache_data(show_spinner=False, max_entries=64)
def _speed(model: str, image_size: int, batch_size: int):
    return measure_speed(model, image_size, batch_size)


if spec is not None:
    try:
        overview = data_overview(str(data_path), tuple(spec.base.split), spec.base.seed)
        counts = {n: sum(c.values()) for n, c in split_sizes(overview.data.labels, spec.base.split, spec.base.seed).items()}
        # the slowest corner of the ranges: the smallest batch
        batch = min(space["batch_size"].extremes()) if "batch_size" in space else spec.base.batch_size
        with st.spinner(f"Measuring {model} at {image_size} px on this machine (once per model and size)..."):
            speed = _speed(model, image_size, int(batch))
        one = estimate_run(spec.base.replace(batch_size=int(batch)), counts, decoded=is_cached(data_path, image_size), speed=speed)
        most, likely = estimate_seconds(spec, one.total_seconds)
        pruned = f"; with the {pruner} pruner, likely about {format_duration(likely)}" if likely < most else ""
        st.info(f"Estimated time: at most {format_duration(most)} ({spec.trials} trials of about "
                f"{format_duration(one.total_seconds)}){pruned}.")
    except DataError as exc:
        spec, problem = None, f"the data set cannot be used: {exc}"
        st.error(f"The data set cannot be used: {exc}. Choose another on the Data page.")

if st.button("Start the search", type="primary", disabled=spec is None, icon=":material/travel_explore:"):
    try:
        search = launch_search(spec, limits=lim)
        st.session_state[WATCH_SEARCH] = st.session_state["search_pick"] = search.id  # show the new one
        st.toast(f"Queued {search.id}")
    except (ConfigError, RunError, DataError) as exc:
        st.error(str(exc))

# ---------------------------------------------------------------- live
st.divider()
st.subheader("Searches")
searches = store.list(owner=owner if lim.demo else None)
ids = [s.id for s in searches]
if not ids:
    st.info("No searches yet: choose ranges and press Start the search.")
    st.stop()
wanted = st.session_state.get(WATCH_SEARCH)
# labels that do not change as a search runs: a selectbox whose labels change loses its choice
shown_id = st.selectbox("Search shown", ids, index=ids.index(wanted) if wanted in ids else 0, key="search_pick")
st.session_state[WATCH_SEARCH] = shown_id
search = store.get(shown_id)


def live_search() -> None:
    status = search.status()
    state = status["state"]
    spec = search.spec
    rows = search.trials_table()
    finished = sum(r["state"] not in (RUNNING, QUEUED) for r in rows)
    ranges = "; ".join(f"{k} {r.describe()}" for k, r in spec.space.items())
    st.caption(f"{spec.base.model}, {spec.base.image_size} px, {spec.base.epochs} epochs, {spec.pruner} pruner, "
               f"{OBJECTIVES[spec.objective].label}; ranges: {ranges}")
    if state == QUEUED:
        st.info(f"{search.id} is queued: it starts when the runs and searches before it finish.")
    elif state == RUNNING:
        st.progress(min(1.0, finished / spec.trials),
                    text=f"{finished} of {spec.trials} trials done · trial {status.get('current_trial')} training "
                         f"(run {status.get('current_run', '')})")
    elif state == COMPLETED:
        st.success(f"{search.id} completed: {finished} trials.")
    elif state in (STOPPED, INTERRUPTED):
        st.warning(f"{search.id} is {state}: {status.get('message', '')}")
    else:
        st.error(f"{search.id} is {state}: {status.get('message', '')}")
    b1, b2, _ = st.columns([1, 1, 4])
    if state in (QUEUED, RUNNING) and b1.button("Stop the search", key=f"stop_{search.id}", icon=":material/stop_circle:"):
        stop_search(search)
        st.toast(f"Asked {search.id} to stop")
    if state in (STOPPED, INTERRUPTED) and b2.button("Resume the search", key=f"resume_{search.id}"):
        resume_search_in_background(search, lim.max_concurrent_runs)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch", key="trials_table",
                     column_config={"objective": st.column_config.NumberColumn(format="%.4f"),
                                    "lr": st.column_config.NumberColumn(format="%.2e"),
                                    "weight_decay": st.column_config.NumberColumn(format="%.2e")})
    figures = study_figures(search)
    if figures:
        tabs = st.tabs(list(figures))
        for tab, (title, figure) in zip(tabs, figures.items()):
            tab.plotly_chart(figure, width="stretch", key=f"figure_{title}")
    elif rows:
        st.caption("The plots appear as trials complete (importances, slices and parallel coordinates need two).")
    was_active = st.session_state.get("search_was_active", False)
    st.session_state["search_was_active"] = state in (QUEUED, RUNNING)
    if was_active and state not in (QUEUED, RUNNING):
        st.rerun()  # it ended: redraw once (the best settings' button), which also stops the polling


active = search.state in (QUEUED, RUNNING)
st.fragment(live_search, run_every=2 if active else None)()

best = search.best()
if best is not None:
    values, notes = train_page_values(best["config"])
    params = ", ".join(f"{k} = {_fmt(v)}" for k, v in best["params"].items())
    st.write(f"Best so far: trial {best['trial']}, {OBJECTIVES[search.spec.objective].label} {best['value']:.4f} ({params}).")
    if notes:
        st.caption("On the Train page: " + "; ".join(notes) + ".")
    if st.button("Train the best settings", icon=":material/model_training:", help="fills the Train page with these settings"):
        # the Train page keeps its widget values in st.session_state["cfg_<field>"]: set them, then open it
        for key in TRAIN_PAGE_FIELDS:
            st.session_state[f"cfg_{key}"] = values[key]
        st.session_state["cfg_name"] = values["name"][:60]
        st.switch_page("pages/train.py")
