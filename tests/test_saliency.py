"""Grad-CAM saliency: planted evidence is found, maps match a hook-free reference, models stay untouched."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fvr_core.data.augment import normalize
from fvr_core.models.registry import MODELS, build_model, get_spec, has_saliency
from fvr_core.inference.saliency import gradcam, overlay, saliency_for, turbo
from fvr_core.settings import FAKE, REAL

torch.set_num_threads(1)

# image side and planted patch side: the write-up's cnn halves the side four times, so at 128 px its
# last map is 6x6 (at 64 px only 2x2, too coarse to tell a patch's place)
S, P = 128, 28
CORNERS = [(12, 12), (12, 88), (88, 12), (88, 88)]  # patch positions, one per quadrant


def background(seed: int, n: int | None = None) -> np.ndarray:
    shape = (3, S, S) if n is None else (n, 3, S, S)
    return np.clip(np.random.default_rng(seed).normal(110, 25, shape), 0, 255).astype(np.uint8)


def with_patch(image: np.ndarray, y: int, x: int) -> np.ndarray:
    image = image.copy()
    image[..., y:y + P, x:x + P] = 250
    return image


def patch_mask(y: int, x: int) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    mask[y:y + P, x:x + P] = True
    return mask


def quadrant_mask(y: int, x: int) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    qy, qx = (y + P // 2) // (S // 2), (x + P // 2) // (S // 2)
    mask[qy * S // 2:(qy + 1) * S // 2, qx * S // 2:(qx + 1) * S // 2] = True
    return mask


def synthetic_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fake (class 0) images carry a bright square at a random spot; real ones do not."""
    images = np.clip(rng.normal(110, 25, (n, 3, S, S)), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 2, n)
    for i in np.flatnonzero(labels == FAKE):
        y, x = rng.integers(0, S - P, 2)
        images[i, :, y:y + P, x:x + P] = 250
    return images, labels


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Module:
    """The registry's real cnn, trained for a few seconds to call an image fake when it has a bright square."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("cnn")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(25):
        images, labels = synthetic_batch(rng, 32)
        loss = F.cross_entropy(model(normalize(torch.from_numpy(images))), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    images, labels = synthetic_batch(np.random.default_rng(1), 100)
    with torch.no_grad():
        accuracy = (model(normalize(torch.from_numpy(images))).argmax(1).numpy() == labels).mean()
    assert accuracy > 0.95, f"the planted task did not train (accuracy {accuracy})"
    return model


@pytest.mark.parametrize("corner", CORNERS)
def test_trained_cnn_points_at_the_planted_patch(trained_cnn, corner):
    image = with_patch(background(2), *corner)
    fake = saliency_for(trained_cnn, "cnn", image)
    assert fake.layer == get_spec("cnn").saliency_layer and not fake.empty and fake.heatmap.max() == 1.0
    inside, quadrant = patch_mask(*corner), quadrant_mask(*corner)
    assert fake.heatmap[inside].mean() > 3 * fake.heatmap[~inside].mean()
    assert quadrant.flat[fake.heatmap.argmax()], "the peak is outside the patch's quadrant"
    assert fake.heatmap[quadrant].mean() > 3 * fake.heatmap[~quadrant].mean()
    # two classes: "real" log-odds are minus "fake" ones, so the real map is zero wherever fake is hot
    real = saliency_for(trained_cnn, "cnn", image, target=REAL)
    assert real.heatmap[inside].max() == 0.0
    assert not np.any(fake.heatmap * real.heatmap)


class Planted(nn.Module):
    """Hand-set weights: one channel is active only on near-white pixels; the logits are
    weights * its mean, so the patch raises "fake" by w_fake and "real" by w_real."""

    def __init__(self, w_fake: float, w_real: float):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(inplace=True))
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 3)
            self.features[0].bias.fill_(-1.5)  # normalised grey ~ -0.1 and white ~ +2.3
            self.head.weight.copy_(torch.tensor([[w_fake], [w_real]]))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_hand_set_model_and_empty_maps(monkeypatch):
    image = with_patch(background(3), *CORNERS[2])
    heat = gradcam(Planted(2.0, -1.0), image, FAKE, "features")
    assert heat.max() == 1.0 and heat[patch_mask(*CORNERS[2])].mean() > 0.5 and heat[~quadrant_mask(*CORNERS[2])].max() == 0.0
    assert not gradcam(Planted(2.0, -1.0), image, REAL, "features").any()
    # the patch raises both logits alike: it changes no probability, so it is no evidence for
    # either class (a raw-logit Grad-CAM would light it up)
    for target in (FAKE, REAL):
        assert not gradcam(Planted(1.0, 1.0), image, target, "features").any()
    # evidence against the class only: an empty map, reported as such and drawn untinted
    import fvr_core.models.registry as models

    monkeypatch.setitem(models.MODELS, "planted", models.ModelSpec("planted", lambda pretrained: Planted(0, 0), S, 8,
                                                                   "features", False, "test"))
    empty = saliency_for(Planted(-1.0, 1.0), "planted", image, FAKE)
    assert empty.empty and empty.peak == 0.0 and "empty" in empty.note and not empty.heatmap.any()
    assert np.array_equal(np.asarray(overlay(image, empty.heatmap)), image.transpose(1, 2, 0)), "an empty map must not tint"
    full = saliency_for(Planted(1.0, -1.0), "planted", image, FAKE)
    assert not full.empty and full.peak > 0 and full.heatmap.max() == 1.0


def reference_cam(head, tail, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM computed by hand, without hooks: head(x) is the layer's activation A, tail(A) the logits."""
    with torch.no_grad():
        activation = head(x)
    activation = activation.detach().clone().requires_grad_()
    logits = tail(activation)
    (grad,) = torch.autograd.grad(logits[0, target] - logits[0, 1 - target], activation)
    cam = (grad.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True).detach()
    cam = F.interpolate(cam, tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0].numpy()
    cam = np.maximum(cam, 0)
    return cam / cam.max() if cam.max() > 0 else cam


def cnn_cases(model):
    f = model.features
    return {
        "features.11": (lambda x: f(x), lambda a: model.classifier(model.pool(a))),
        # features.10 (max-pool) is followed by an inplace ReLU that overwrites its output: the map must
        # use the pre-ReLU activations and gradients, not the overwritten tensor
        "features.10": (lambda x: f[:11](x), lambda a: model.classifier(model.pool(torch.relu(a)))),
    }


def resnet_cases(model, x0):
    def stem_to(x, last):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4")[:last]:
            x = getattr(model, name)(x)
        return x

    def logits(a):
        return model.fc(torch.flatten(model.avgpool(a), 1))

    block = model.layer4[1]

    def into_block(x):
        return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))

    return {
        "layer4": (lambda x: stem_to(x, 4), logits),
        # bn2's output is followed by an inplace `out += identity` and an inplace ReLU
        "layer4.1.bn2": (lambda x: into_block(model.layer4[0](stem_to(x, 3))),
                         lambda a: logits(torch.relu(a + model.layer4[0](stem_to(x0, 3))))),
    }


@pytest.mark.parametrize("model_name", ["cnn", "resnet18"])
def test_maps_match_a_hook_free_reference(trained_cnn, model_name):
    torch.manual_seed(1)
    model = trained_cnn if model_name == "cnn" else build_model("resnet18").eval()
    image = with_patch(background(4), 6, 44)
    x = normalize(torch.from_numpy(image).unsqueeze(0))
    cases = cnn_cases(model) if model_name == "cnn" else resnet_cases(model, x)
    for layer, (head, tail) in cases.items():
        maps = [gradcam(model, image, target, layer) for target in (FAKE, REAL)]
        assert any(m.max() == 1.0 for m in maps), f"{layer}: both maps empty, nothing compared"
        for target, heat in zip((FAKE, REAL), maps):
            np.testing.assert_allclose(heat, reference_cam(head, tail, x, target), atol=2e-4, err_msg=f"{layer} target {target}")


def snapshot(model: nn.Module) -> dict:
    return {
        "tensors": {n: (t, t._version, t.detach().clone()) for n, t in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": [n for n, p in model.named_parameters() if p.grad is not None],
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
                  for n, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before["tensors"].keys()
    for name, (tensor, version, value) in before["tensors"].items():
        assert after[name] is tensor and tensor._version == version and torch.equal(tensor.detach(), value), name
    now = snapshot(model)
    for key in ("requires_grad", "grads", "training", "hooks"):
        assert now[key] == before[key], key
    assert not any(any(h) for h in now["hooks"].values()), "hooks left on the model"


def execution_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    order = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: order.append((n, m, tuple(o.shape))))
               for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def test_models_without_a_spatial_layer_say_there_is_no_map():
    flat = [name for name in MODELS if not has_saliency(name)]
    assert flat, "no registry model without a saliency layer: this test checks nothing"
    for name in flat:
        with pytest.raises(ValueError, match="no saliency map"):
            saliency_for(build_model(name).eval(), name, background(5))


@pytest.mark.parametrize("model_name", [name for name in MODELS if has_saliency(name)])
def test_every_registry_model(model_name):
    spec = get_spec(model_name)
    size = max(64, spec.min_image_size)
    torch.manual_seed(2)
    model = build_model(model_name)
    image = background(5)[:, :size, :size]
    x = normalize(torch.from_numpy(image).unsqueeze(0))

    # the registry's layer is the last one with a spatial map: it finishes after the last conv ran
    order = execution_order(model.eval(), x)
    names = [n for n, _, _ in order]
    layer_at = names.index(spec.saliency_layer)
    last_conv = max(i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Conv2d))
    assert layer_at > last_conv and len(order[layer_at][2]) == 4 and min(order[layer_at][2][2:]) > 1

    with torch.no_grad():
        expected = model(x)
    eval_map = saliency_for(model, model_name, image).heatmap
    # a model left in train mode: the map is the eval-mode one and batch-norm statistics stay as they were
    model.train()
    next(model.parameters()).requires_grad_(False)  # a frozen parameter must stay frozen
    before = snapshot(model)
    result = saliency_for(model, model_name, image)
    assert_unchanged(model, before)
    heat = result.heatmap
    assert heat.shape == (size, size) and heat.dtype == np.float32 and np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() in (0.0, 1.0) and result.empty == (heat.max() == 0.0)
    np.testing.assert_allclose(heat, eval_map, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)


def test_inference_mode_no_grad_and_channels_last(trained_cnn):
    image = with_patch(background(6), 44, 44)
    torch.manual_seed(3)
    resnet = build_model("resnet18").eval()
    for model, name in ((trained_cnn, "cnn"), (resnet, "resnet18")):
        plain = saliency_for(model, name, image).heatmap
        with torch.inference_mode():
            np.testing.assert_array_equal(saliency_for(model, name, image).heatmap, plain)
        with torch.no_grad():
            np.testing.assert_array_equal(saliency_for(model, name, image).heatmap, plain)
        channels_last = build_model(name).eval()
        channels_last.load_state_dict(model.state_dict())
        channels_last = channels_last.to(memory_format=torch.channels_last)
        first_conv = channels_last.get_parameter("features.0.weight" if name == "cnn" else "conv1.weight")
        assert first_conv.is_contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            np.testing.assert_allclose(saliency_for(channels_last, name, image).heatmap, plain, atol=1e-3)


def test_model_built_under_inference_mode(trained_cnn):
    """Weights created under inference_mode cannot be saved for backward; the map must still work."""
    image = with_patch(background(7), 6, 6)
    with torch.inference_mode():
        model = build_model("cnn").eval()
        model.load_state_dict(trained_cnn.state_dict())
    assert next(model.parameters()).is_inference()
    np.testing.assert_allclose(saliency_for(model, "cnn", image).heatmap,
                               saliency_for(trained_cnn, "cnn", image).heatmap, atol=1e-6)


def test_threads_share_one_model(trained_cnn):
    """Two saliency threads and a predicting thread on one model at once: each gets its own answer."""
    images = [with_patch(background(8), *CORNERS[0]), with_patch(background(9), *CORNERS[3])]
    expected_maps = [saliency_for(trained_cnn, "cnn", im).heatmap for im in images]
    batch = normalize(torch.from_numpy(np.stack(images)))
    with torch.inference_mode():
        expected_logits = trained_cnn(batch)
    rounds, start, failures = 8, threading.Barrier(3), []

    def saliency_worker(i):
        try:
            for _ in range(rounds):
                start.wait()
                np.testing.assert_allclose(saliency_for(trained_cnn, "cnn", images[i]).heatmap, expected_maps[i], atol=1e-6)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            failures.append(exc)
            start.abort()

    def predict_worker():
        try:
            for _ in range(rounds):
                start.wait()
                for _ in range(3):
                    with torch.inference_mode():
                        assert torch.allclose(trained_cnn(batch), expected_logits, atol=1e-6)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=saliency_worker, args=(i,)) for i in range(2)]
    threads.append(threading.Thread(target=predict_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[0]
    assert not [m for m in trained_cnn.modules() if m._forward_hooks or m._forward_pre_hooks]


def test_overlay_and_layout():
    image = background(10)
    heat = np.tile(np.linspace(0.0, 1.0, S, dtype=np.float32), (S, 1))  # cold left, hot right
    picture = overlay(image, heat, alpha=0.45)
    assert picture.mode == "RGB" and picture.size == (S, S)
    colour = (np.asarray(picture).astype(np.float32) - 0.55 * image.transpose(1, 2, 0)) / (0.45 * 255)
    np.testing.assert_allclose(colour, turbo(heat), atol=0.01)
    assert (colour[:, -1, 0] > colour[:, -1, 2] + 0.3).all(), "hot should be red"
    assert (colour[:, S // 4, 2] > colour[:, S // 4, 0] + 0.3).all(), "cool should be blue"
    assert np.array_equal(np.asarray(overlay(image, heat, alpha=0.0)), image.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="transpose"):
        overlay(image.transpose(1, 2, 0), heat)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, heat[:-1])


def test_bad_arguments(trained_cnn):
    image = background(11)
    with pytest.raises(ValueError, match=r"\(3, H, W\) uint8"):
        saliency_for(trained_cnn, "cnn", image.transpose(1, 2, 0))
    with pytest.raises(ValueError, match=r"\(3, H, W\) uint8"):
        saliency_for(trained_cnn, "cnn", image.astype(np.float32))
    with pytest.raises(ValueError, match="no module named"):
        gradcam(trained_cnn, image, FAKE, "features.99")
    with pytest.raises(ValueError, match="no spatial feature map"):
        gradcam(trained_cnn, image, FAKE, "classifier.1")
    with pytest.raises(ValueError, match="class index"):
        saliency_for(trained_cnn, "cnn", image, target=2)


def test_rounding_noise_is_not_stretched_into_a_map():
    from fvr_core.inference.saliency import _normalise

    cam = np.full((4, 4), -5.0, np.float32)
    cam[0, 0] = 1e-6  # positive only by float noise against the negative evidence
    heat, peak = _normalise(cam)
    assert peak == 0.0 and not heat.any()
    cam[0, 0] = 0.5
    heat, peak = _normalise(cam)
    assert peak == 0.5 and heat[0, 0] == 1.0 and heat.sum() == 1.0
    with pytest.raises(ValueError, match="not finite"):
        _normalise(np.array([[np.nan]], np.float32))


class OneCell(nn.Module):
    """A layer one cell wide (as a small model's last block at a small image size): its Grad-CAM
    is the same everywhere."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 3)
            self.features[0].bias.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_a_uniform_map_says_so_instead_of_a_wash(monkeypatch):
    import fvr_core.models.registry as models

    monkeypatch.setitem(models.MODELS, "onecell", models.ModelSpec("onecell", lambda pretrained: OneCell(), S, 8,
                                                                   "features", False, "test"))
    image = with_patch(background(3), *CORNERS[2])
    found = saliency_for(OneCell(), "onecell", image, FAKE)
    assert found.uniform and not found.empty and found.peak > 0
    assert not found.heatmap.any() and "uniform" in found.note and "points at no region" in found.note
    assert np.array_equal(np.asarray(overlay(image, found.heatmap)), image.transpose(1, 2, 0)), "no red wash"
    planted = saliency_for(Planted(1.0, -1.0), "onecell", image, FAKE)  # a map with a region is not uniform
    assert not planted.uniform and planted.heatmap.max() == 1.0
