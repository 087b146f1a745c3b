"""The model registry: every entry builds, returns 2-class logits, and names a real saliency layer
(or, for the classical detector, says it has none)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from fvr_core.models.cnn import ReconstructedCNN, WriteupCNN
from fvr_core.models.registry import MODELS, ModelError, build_model, get_spec


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_returns_two_logits_at_a_small_size(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [name for name, spec in MODELS.items() if spec.has_saliency])
def test_saliency_layer_exists_and_gives_a_spatial_map(name):
    spec = get_spec(name)
    model = build_model(name).eval()
    layer = model.get_submodule(spec.saliency_layer)
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape) or None)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    assert len(seen["shape"]) == 4 and seen["shape"][-1] >= 1


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_matches_the_built_model(name):
    model = build_model(name)
    assert get_spec(name).parameter_count == sum(p.numel() for p in model.parameters())


def test_cnn_outputs_logits_not_probabilities():
    torch.manual_seed(0)
    out = WriteupCNN()(torch.randn(8, 3, 300, 300) * 3)
    # softmax output would sum to 1 per row and lie in [0, 1]; raw logits need not
    assert not torch.allclose(out.sum(1), torch.ones(8))


def test_cnn_has_the_writeups_layers_and_shapes():
    model = build_model("cnn")
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0]) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(3, 6, 5, 0), (6, 12, 5, 0), (12, 26, 5, 0), (26, 32, 3, 1)]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(9248, 512), (512, 256), (256, 128), (128, 64), (64, 32), (32, 2)]
    # the original has no activation between its linear layers
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.classifier)
    assert get_spec("cnn").parameter_count == 4_927_728
    feats = model.features(torch.randn(1, 3, 300, 300))
    assert feats.shape == (1, 32, 17, 17)
    assert torch.equal(model.pool(feats), feats)  # the adaptive pool is the identity at 300 px


def test_cnn_computes_the_writeups_model_minus_its_softmax():
    """The verbatim notebook model (benchmarks/writeup_cnn.py) with its weights loaded into fvr's
    `cnn`: fvr's logits through a softmax are the notebook's outputs, for both layer orders."""
    from benchmarks.writeup_cnn import fake_vs_real_Model, fvr_state_dict

    torch.manual_seed(0)
    original = fake_vs_real_Model().eval()
    x = torch.randn(3, 3, 300, 300)
    for model in (build_model("cnn"), WriteupCNN(relu_first=True)):
        model.load_state_dict(fvr_state_dict(original), strict=True)
        with torch.no_grad():
            assert torch.allclose(model.eval()(x).softmax(1), original(x), atol=1e-6)


def test_cnn_relu_differs_from_cnn_only_by_activations_between_linears():
    plain, relu = build_model("cnn"), build_model("cnn_relu")
    shapes = lambda m: [p.shape for p in m.parameters()]  # noqa: E731
    assert shapes(plain) == shapes(relu)
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu.classifier) == 5
    assert "ReLU" in get_spec("cnn_relu").description


def test_cnn_runs_from_its_smallest_size_and_refuses_smaller():
    model = build_model("cnn").eval()
    smallest = get_spec("cnn").min_image_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, smallest, smallest)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, smallest - 8, smallest - 8))


def test_reconstructed_cnn_keeps_its_old_layout_under_cnn_v0():
    model = ReconstructedCNN()
    feats = model.features(torch.randn(1, 3, 300, 300))
    assert feats.shape == (1, 64, 35, 35)
    assert model.classifier[1].in_features == 64 * 35 * 35
    assert get_spec("cnn_v0").parameter_count == 10_059_170


@pytest.mark.parametrize("name", ["resnet18", "vgg19", "vgg19_bn", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_heads_are_replaced_with_two_classes(name):
    model = build_model(name)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[-1].out_features == 2


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelError, match="resnet18"):
        build_model("resnet1000")


def test_pretrained_offline_fails_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18" in message and "download" in message and str(tmp_path) in message


def test_cnn_has_no_pretrained_weights():
    with pytest.raises(ModelError, match="no pretrained"):
        build_model("cnn", pretrained=True)


def test_pooling_before_relu_keeps_the_original_outputs_and_gradients():
    torch.manual_seed(0)
    fast, original = WriteupCNN(), WriteupCNN(relu_first=True)
    original.load_state_dict(fast.state_dict())  # the same weights fit both layer orders
    x = torch.randn(2, 3, 64, 64)
    out_fast, out_original = fast(x), original(x)
    assert torch.allclose(out_fast, out_original, atol=1e-6)
    out_fast.sum().backward()
    out_original.sum().backward()
    for (name, a), b in zip(fast.named_parameters(), original.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_a_checkpoint_saved_as_cnn_by_the_old_model_loads_as_cnn_v0(tmp_path):
    """Runs trained before `cnn` became the write-up's model name "cnn" in their JSON: their
    weights must load into the model they fit (cnn_v0), never fail or half-load into the new one."""
    from fvr_core.runs.checkpoint import load_checkpoint, save_checkpoint

    old = ReconstructedCNN().eval()
    save_checkpoint(tmp_path / "best", old, {"model": "cnn", "image_size": 64})
    model, meta = load_checkpoint(tmp_path / "best.safetensors")
    assert meta["model"] == "cnn_v0" and isinstance(model, ReconstructedCNN)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), old(x))


def test_new_cnn_checkpoints_load_as_cnn(tmp_path):
    from fvr_core.runs.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "best", WriteupCNN(), {"model": "cnn", "image_size": 64})
    model, meta = load_checkpoint(tmp_path / "best.safetensors")
    assert meta["model"] == "cnn" and isinstance(model, WriteupCNN)


def test_only_the_classical_detectors_have_no_saliency_layer_and_are_fitted_in_one_pass():
    assert [name for name, spec in MODELS.items() if not spec.has_saliency] == ["cooc_lr", "cooc_lr4"]
    assert [name for name, spec in MODELS.items() if spec.fit is not None] == ["cooc_lr", "cooc_lr4"]


def test_srm_net_sees_the_residual_at_full_resolution_before_any_pooling():
    from fvr_core.models.forensic import Residuals

    model = build_model("srm_net").eval()
    assert isinstance(model.features[0], Residuals)
    seen = []
    hook = model.features[7].register_forward_hook(lambda m, i, o: seen.append(o.shape))  # after two convolutions
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    hook.remove()
    assert seen[0][-2:] == (92, 92)  # only the 5x5 high-pass filters' border is lost
    # the fixed filters are high-pass: a flat picture leaves no residual at all
    flat = torch.zeros(1, 3, 16, 16)
    assert torch.allclose(model.features[0](flat), torch.zeros(()), atol=1e-4)
