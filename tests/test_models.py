"""The model registry: every entry builds, returns 2-class logits, and names a real saliency layer."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from fvr_core.cnn import OriginalCNN
from fvr_core.models import MODELS, ModelError, build_model, get_spec


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_returns_two_logits_at_a_small_size(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
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
    out = OriginalCNN()(torch.randn(8, 3, 300, 300) * 3)
    # softmax output would sum to 1 per row and lie in [0, 1]; raw logits need not
    assert not torch.allclose(out.sum(1), torch.ones(8))


def test_cnn_at_300_is_the_original_layout():
    """At 300x300 the adaptive pool sees exactly the 35x35 map the original flattened into its
    64*35*35-input linear layer, so the pool changes nothing and the weights are the original's."""
    model = OriginalCNN()
    feats = model.features(torch.randn(1, 3, 300, 300))
    assert feats.shape == (1, 64, 35, 35)
    assert torch.equal(model.pool(feats), feats)
    assert model.classifier[1].in_features == 64 * 35 * 35


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
    fast, original = OriginalCNN(), OriginalCNN(relu_first=True)
    original.load_state_dict(fast.state_dict())  # the same weights fit both layer orders
    x = torch.randn(2, 3, 64, 64)
    out_fast, out_original = fast(x), original(x)
    assert torch.allclose(out_fast, out_original, atol=1e-6)
    out_fast.sum().backward()
    out_original.sum().backward()
    for (name, a), b in zip(fast.named_parameters(), original.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
