"""The model registry: one place names every model with its builder, input size, saliency layer
and parameter count (torch loads only when a model is built or counted). Every model returns raw
2-class logits (fake=0, real=1): no softmax inside, because CrossEntropyLoss applies its own (the
original applied softmax twice)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch loads when a model is built, so configs and tables load without it
    from torch import nn


class ModelError(ValueError):
    """A model cannot be built as asked; the message says what to do."""


def _torchvision(name: str, head: str, pretrained: bool) -> nn.Module:
    """A torchvision model with its 1000-class head replaced by a 2-class one."""
    import torch  # torch loads on first use (start-up speed)
    import torchvision  # torchvision loads on first use (start-up speed)
    from torch import nn  # torch loads on first use (start-up speed)

    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated download is a RuntimeError
        cache = torch.hub.get_dir() + "/checkpoints"
        url = weights.url if weights is not None else "?"
        raise ModelError(
            f"cannot load ImageNet weights for {name} ({type(exc).__name__}: {exc}). They download from {url} "
            f"on first use; without internet, place that file in {cache} by hand, or train with pretrained off."
        ) from None
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Linear = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, 2))
    return model


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[[bool], nn.Module]  # builder(pretrained) -> model with a 2-class head
    default_image_size: int
    min_image_size: int
    saliency_layer: str  # module name for Grad-CAM: the activation after the last convolution (spatial, before pooling)
    pretrained_available: bool
    description: str
    # a classical detector fitted in one pass instead of by gradient steps:
    # fit(model, train_batches, train_labels, val_batches, val_labels, progress) -> summary dict
    fit: Callable | None = None

    @property
    def has_saliency(self) -> bool:
        """Whether Grad-CAM applies: the model has a spatial layer to explain (a histogram of
        residual co-occurrences has none)."""
        return bool(self.saliency_layer)

    @property
    def parameter_count(self) -> int:
        return _parameter_count(self.name)

    def build(self, pretrained: bool = False) -> nn.Module:
        if pretrained and not self.pretrained_available:
            raise ModelError(f"{self.name} has no pretrained weights: train it from scratch (pretrained off)")
        return self.builder(pretrained)


def _writeup_cnn(linear_relu: bool) -> nn.Module:
    from fvr_core.models.cnn import WriteupCNN  # loads torch: here, not when the module loads (start-up speed)

    return WriteupCNN(linear_relu=linear_relu)


def _reconstructed_cnn() -> nn.Module:
    from fvr_core.models.cnn import ReconstructedCNN  # loads torch: here, not when the module loads (start-up speed)

    return ReconstructedCNN()


def _srm_net() -> nn.Module:
    from fvr_core.models.forensic import SRMNet  # loads torch: here, not when the module loads (start-up speed)

    return SRMNet()


def _cooc_detector(directions: str) -> nn.Module:
    from fvr_core.models.forensic import CoocDetector  # loads torch: here, not when the module loads (start-up speed)

    return CoocDetector(directions=directions)


def _fit_cooc(*args, **kwargs) -> dict:
    from fvr_core.models.forensic import fit_cooc  # loads torch: here, not when the module loads (start-up speed)

    return fit_cooc(*args, **kwargs)


def _tiny_cnn() -> nn.Module:
    from fvr_core.models.cnn import TinyCNN  # loads torch: here, not when the module loads (start-up speed)

    return TinyCNN()


def _tv(name: str, head: str) -> Callable[[bool], nn.Module]:
    return functools.partial(_torchvision, name, head)


def _high_pass_tv(name: str, head: str, pretrained: bool) -> nn.Module:
    from fvr_core.models.cnn import high_pass  # loads torch: here, not when the module loads (start-up speed)

    return high_pass(_torchvision(name, head, pretrained))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("cnn", lambda pretrained: _writeup_cnn(False), 300, 44, "features.11", False,
                  "the original write-up's small CNN (4 conv blocks, 6 linear layers without activations, 4.9M "
                  "parameters), fixed to return logits at any size from 44 px"),
        ModelSpec("cnn_relu", lambda pretrained: _writeup_cnn(True), 300, 44, "features.11", False,
                  "the write-up's CNN with a ReLU between its linear layers (not the original: there the six "
                  "linear layers compose to one linear map)"),
        ModelSpec("resnet18", _tv("resnet18", "fc"), 300, 32, "layer4", True,
                  "ResNet-18 (11M parameters), the write-up's best model"),
        ModelSpec("vgg19", _tv("vgg19", "classifier.6"), 300, 32, "features.35", True,
                  "VGG-19 without batch norm (139M parameters): the original failed to train it"),
        ModelSpec("vgg19_bn", _tv("vgg19_bn", "classifier.6"), 300, 32, "features.51", True,
                  "VGG-19 with batch norm (139M parameters)"),
        ModelSpec("resnet18_hp", functools.partial(_high_pass_tv, "resnet18", "fc"), 300, 32, "1.layer4", True,
                  "ResNet-18 fed the image's high-pass residual (image minus its 3x3 mean), as forensic detectors are"),
        ModelSpec("srm_net", lambda pretrained: _srm_net(), 300, 32, "features.19", False,
                  "forensic residual CNN (0.28M parameters): fixed SRM high-pass filters on each colour channel, "
                  "truncated, two full-resolution convolutions before any pooling; train it at the images' native "
                  "size on crops (train_crop), it is evaluated on the whole image"),
        ModelSpec("cooc_lr", lambda pretrained: _cooc_detector("hv"), 300, 16, "", False,
                  "classical detector: co-occurrences of quantised high-pass residuals along rows and columns "
                  "(18000 features) and a logistic regression, fitted in about a minute on a CPU (epochs, lr and "
                  "batch settings do not apply); use the images' native size", fit=_fit_cooc),
        ModelSpec("cooc_lr4", lambda pretrained: _cooc_detector("hvda"), 300, 16, "", False,
                  "cooc_lr with the two diagonals too (36000 features): better on the shared set's validation "
                  "split (ROC AUC 0.952 against 0.942), features 1.4x slower", fit=_fit_cooc),
        ModelSpec("cnn_v0", lambda pretrained: _reconstructed_cnn(), 300, 32, "features.8", False,
                  "fvr's earlier CNN (3 conv blocks of 16/32/64, 10.1M parameters), a reconstruction that is not "
                  "the write-up's model: kept so runs trained with it load"),
        ModelSpec("tiny_cnn", lambda pretrained: _tiny_cnn(), 64, 8, "features.4", False,
                  "two conv layers (1.4 K parameters): a smoke test of the pipeline in seconds, used by the tests; "
                  "not a useful detector"),
        ModelSpec("mobilenet_v3_small", _tv("mobilenet_v3_small", "classifier.3"), 224, 32, "features.12", True,
                  "MobileNetV3-Small (1.5M parameters): fast on a CPU"),
        ModelSpec("efficientnet_b0", _tv("efficientnet_b0", "classifier.1"), 224, 32, "features.8", True,
                  "EfficientNet-B0 (4M parameters): accurate for its size"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None


def has_saliency(name: str) -> bool:
    """Whether Grad-CAM maps exist for runs of `name` (False for a model without a spatial layer
    and for an ensemble, whose members each explain something else)."""
    return name in MODELS and MODELS[name].has_saliency


def build_model(name: str, pretrained: bool = False) -> nn.Module:
    """Build a registered model with a 2-class head (random weights unless pretrained)."""
    return get_spec(name).build(pretrained)


@functools.cache
def _parameter_count(name: str) -> int:
    import torch  # torch loads on first use (start-up speed)

    with torch.device("meta"):  # no memory, no weights: counting needs only shapes
        model = MODELS[name].build(False)
    return sum(p.numel() for p in model.parameters())
