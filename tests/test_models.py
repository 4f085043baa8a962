"""Every registered architecture: builds, exposes features/head consistently, learns a tiny batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.models import MODELS, build_model, register_model

ARCHS = sorted(MODELS)
TOL = 1e-5
OVERFIT_STEPS = 15
OVERFIT_WIDTH = {"cnn": 0.5, "mlp": 0.5}  # the rest learn fine at 0.125
OVERFIT_LR = {"vit_tiny": 1e-3}  # the 12-layer transformer wants a gentler Adam step ...
OVERFIT_EXTRA_STEPS = {"vit_tiny": 35}  # ... and more of them


def _small(arch: str, **kw):
    width = 1.0 if MODELS[arch].fixed_width else 0.125
    return build_model(arch, width=width, **kw)


def test_registry_holds_the_documented_families():
    expected = {"mlp", "cnn", "resnet18", "resnet50", "wrn16_4", "vgg11_bn", "vgg16_bn",
                "densenet121", "vit_tiny", "tv_resnet18", "tv_resnet50"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_features_head_and_forward_agree(arch, channels, size):
    torch.manual_seed(0)
    mean, std = [0.3] * channels, [0.2] * channels
    model = _small(arch, num_classes=7, in_channels=channels, image_size=size, mean=mean, std=std)
    model.eval()
    x = torch.rand(3, channels, size, size)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    assert model.head.in_features == model.feature_dim and model.head.out_features == 7
    logits = model(x)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, model.head(feats), atol=TOL, rtol=TOL)
    # Normalize is the first layer and uses the given constants.
    torch.testing.assert_close(model.normalize(x), (x - 0.3) / 0.2)
    assert torch.isfinite(logits).all()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: the machine is shared and tiny models gain nothing from more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_a_tiny_batch(arch):
    """A few Adam steps drive the training loss on 8 random images toward 0 (gradients flow)."""
    torch.manual_seed(0)
    width = 1.0 if MODELS[arch].fixed_width else OVERFIT_WIDTH.get(arch, 0.125)
    model = build_model(arch, num_classes=4, in_channels=1, image_size=8, width=width)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR.get(arch, 1e-2))
    model.train()
    losses = []
    for _ in range(OVERFIT_STEPS + OVERFIT_EXTRA_STEPS.get(arch, 0)):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses
    assert bool((logits.argmax(1) == y).all()), losses


def test_width_scales_the_representation():
    small = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=0.125)
    full = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=1.0)
    assert (small.feature_dim, full.feature_dim) == (64, 512)
    dn = build_model("densenet121", num_classes=10, in_channels=3, image_size=32, width=0.25)
    assert dn.body.features.conv0.out_channels == 16  # 2 * growth, growth = 32 * 0.25


def test_vgg_drops_pools_that_would_empty_tiny_maps():
    model = build_model("vgg16_bn", num_classes=10, in_channels=1, image_size=8, width=0.125)
    pools = [m for m in model.body if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_arch_lists_known_names():
    with pytest.raises(ConfigError, match="unknown arch 'resnet19'.*resnet18"):
        build_model("resnet19", num_classes=10, in_channels=3, image_size=32)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), 17.0, "wide", True])
def test_bad_width_is_a_config_error(width):
    with pytest.raises(ConfigError, match="width"):
        build_model("cnn", num_classes=10, in_channels=1, image_size=8, width=width)


def test_fixed_width_models_refuse_other_widths():
    with pytest.raises(ConfigError, match="fixed width"):
        build_model("tv_resnet18", num_classes=10, in_channels=3, image_size=32, width=0.5)


def test_mean_std_must_match_channels():
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("cnn", num_classes=10, in_channels=3, image_size=8, mean=[0.5], std=[0.2])


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn", description="again")(lambda **kw: None)
