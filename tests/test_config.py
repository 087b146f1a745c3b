"""TrainConfig: defaults of the original recipe, validation, and a lossless JSON round trip."""

from __future__ import annotations

import pytest

from fvr_core.config import ConfigError, TrainConfig


def test_defaults_are_the_original_recipe():
    c = TrainConfig()
    assert (c.model, c.epochs, c.lr, c.optimizer, c.split, c.seed, c.image_size) == ("cnn", 30, 1e-3, "adam", (0.6, 0.2, 0.2), 42, 300)


def test_json_round_trip_is_lossless():
    c = TrainConfig(model="resnet18", lr=3e-4, split=(0.7, 0.15, 0.15), grad_clip=1.0, name="x")
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(__import__("json").loads(c.to_json())) == c


@pytest.mark.parametrize("changes, field", [
    ({"epochs": 0}, "epochs"), ({"epochs": -3}, "epochs"), ({"lr": 0}, "lr"), ({"lr": -1e-3}, "lr"),
    ({"batch_size": 0}, "batch_size"), ({"model": "alexnet"}, "model"), ({"optimizer": "lion"}, "optimizer"),
    ({"image_size": 8}, "image_size"), ({"split": (0.8, 0.2, 0.0)}, "split"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"augment": "extreme"}, "augment"), ({"pretrained": True}, "pretrained"),
    ({"ema": 1.0}, "ema"), ({"ema": -0.5}, "ema"), ({"ema": float("nan")}, "ema"),
])
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**changes).validate()


def test_unknown_keys_and_bad_types_are_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"epocs": 3})
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_dict({"epochs": "three"})


def test_strings_from_a_command_line_are_converted():
    c = TrainConfig.from_dict({"epochs": "5", "lr": "0.01", "pretrained": "false", "split": "0.5,0.25,0.25"})
    assert (c.epochs, c.lr, c.pretrained, c.split) == (5, 0.01, False, (0.5, 0.25, 0.25))


def test_settings_round_trip_through_a_link():
    """The Train page keeps its settings in the URL: what it writes reads back the same, and a
    link holds only what differs from the page's starting point."""
    from fvr_core.config import from_query_params, to_query_params

    chosen = {**TrainConfig().to_dict(), "model": "resnet18", "lr": 2e-4, "epochs": 7, "pretrained": True, "name": "my run"}
    params = to_query_params(chosen)
    assert params == {"model": "resnet18", "lr": "0.0002", "epochs": "7", "pretrained": "true", "name": "my run"}
    assert all(isinstance(v, str) for v in params.values())
    values, problems = from_query_params(params)
    assert problems == [] and {k: chosen[k] for k in values} == values and set(values) == set(params)
    start = {**TrainConfig().to_dict(), "epochs": 5}
    assert to_query_params({**start, "epochs": 5}, base=start) == {}


def test_a_bad_link_is_reported_not_raised():
    from fvr_core.config import from_query_params

    values, problems = from_query_params({"epochs": "many", "model": "gpt", "lr": "inf", "batch_size": "16", "seed": "-3",
                                          "data": "/x", "tab": "curves"}, names=("epochs", "model", "lr", "batch_size", "seed"))
    assert values == {"batch_size": 16}  # data and tab are no settings of this page: left to their owners
    assert len(problems) == 4 and any("seed=-3" in p for p in problems) and any("epochs='many'" in p for p in problems) and any("model='gpt'" in p for p in problems)
    assert all("using the default" in p for p in problems)


def test_a_preset_comes_back_within_the_apps_limits():
    """Presets are written for any machine: a capped app gets each setting clamped to its limit."""
    from fvr_core.config import check_limits, preset_settings, preset_settings_within
    from fvr_core.settings import AppLimits

    capped = AppLimits(demo=True, max_epochs=3, max_image_size=128, models=("cnn", "resnet18"))
    values = preset_settings_within("Original recipe", "vgg19", capped)  # 30 epochs of vgg19 at 300 px, batch 8
    assert (values["epochs"], values["image_size"], values["model"]) == (3, 128, "cnn")
    assert values["batch_size"] == preset_settings("Original recipe", "cnn")["batch_size"] == 32  # the batch of the model trained
    check_limits(TrainConfig.from_dict(values).validate(), capped)  # what the app allows, and a valid config
    assert preset_settings_within("Quick look", "resnet18", capped)["epochs"] == 3  # 5 in the preset

    free = preset_settings_within("Original recipe", "vgg19", AppLimits())  # within loose limits nothing changes
    assert free == {**TrainConfig().to_dict(), "model": "vgg19", **preset_settings("Original recipe", "vgg19")}
