"""PGD / FGSM-RS / robust accuracy: ball and box constraints, loss ascent, determinism, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.attacks import fgsm_rs, pgd, robust_accuracy
from trainables.data import load_dataset
from trainables.errors import ConfigError
from trainables.models import build_model

NORM_TOL = 1e-6
EPS = {"linf": 0.1, "l2": 0.5}


@pytest.fixture(scope="module")
def trained():
    """A small BatchNorm CNN trained for a few seconds on digits, plus 64 test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_dataset("digits", eval_size=64)
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=8, width=0.125,
                        mean=data.mean, std=data.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(data.train), generator=gen).split(128):
            x, y = data.train.batch(idx)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    X, y = data.eval_tensors()
    yield model, X, y
    torch.set_num_threads(threads)


def _norms(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box_and_raises_loss(trained, norm):
    model, X, y = trained
    eps = EPS[norm]
    x_adv = pgd(model, X, y, norm=norm, eps=eps, step_size=2.5 * eps / 10, steps=10,
                generator=torch.Generator().manual_seed(1))
    assert x_adv.shape == X.shape and x_adv.dtype == X.dtype
    assert bool((_norms(x_adv - X, norm) <= eps + NORM_TOL).all())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(model(X), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.1
    assert (adv >= clean - 1e-4).float().mean() >= 0.95  # nearly every sample's loss went up
    assert (model(x_adv).argmax(1) == y).float().mean() < (model(X).argmax(1) == y).float().mean()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_generator_same_result_and_eps_zero_is_identity(trained, norm):
    model, X, y = trained
    kw = dict(norm=norm, eps=EPS[norm], step_size=EPS[norm] / 4, steps=3)
    a = pgd(model, X, y, generator=torch.Generator().manual_seed(5), **kw)
    b = pgd(model, X, y, generator=torch.Generator().manual_seed(5), **kw)
    c = pgd(model, X, y, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    same = pgd(model, X, y, norm=norm, eps=0.0, step_size=0.1, steps=5)
    assert torch.equal(same, X) and same.data_ptr() != X.data_ptr()


def test_single_steps_have_the_documented_length(trained):
    """From an interior point without random start: Linf moves every pixel by the step, L2 moves
    each sample by exactly the step (per-sample normalised gradient)."""
    model, X, y = trained
    x = torch.full_like(X, 0.5)
    d_inf = pgd(model, x, y, norm="linf", eps=0.2, step_size=0.03, steps=1, random_start=False) - x
    moved = d_inf.abs() > 0
    assert moved.float().mean() > 0.5
    torch.testing.assert_close(d_inf.abs()[moved], torch.full_like(d_inf[moved], 0.03))
    d_2 = pgd(model, x, y, norm="l2", eps=1.0, step_size=0.3, steps=1, random_start=False) - x
    torch.testing.assert_close(_norms(d_2, "l2"), torch.full((len(x),), 0.3))
    d_proj = pgd(model, x, y, norm="l2", eps=0.1, step_size=0.3, steps=1, random_start=False) - x
    torch.testing.assert_close(_norms(d_proj, "l2"), torch.full((len(x),), 0.1))


def test_attack_restores_modes_and_leaves_weights_and_stats_alone(trained):
    model, X, y = trained
    model.train()
    model.body.stem.eval()  # a mixed state must come back exactly as it was
    modes = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        pgd(model, X, y, norm="linf", eps=0.1, step_size=0.03, steps=2)
        fgsm_rs(model, X, y, norm="l2", eps=0.5)
        after = {n: m.training for n, m in model.named_modules()}
    finally:
        model.eval()
    assert after == modes
    # Eval-mode attack: BatchNorm running statistics untouched; parameter grads untouched.
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_rs_stays_in_ball_and_box(trained, norm):
    model, X, y = trained
    x_adv = fgsm_rs(model, X, y, norm=norm, eps=EPS[norm], generator=torch.Generator().manual_seed(0))
    assert bool((_norms(x_adv - X, norm) <= EPS[norm] + NORM_TOL).all())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, X)


def test_robust_accuracy_properties(trained):
    model, X, y = trained
    with torch.no_grad():
        clean = (model(X).argmax(1) == y).float().mean().item()
    assert robust_accuracy(model, X, y, norm="linf", eps=0.0, steps=5, restarts=1) == clean

    def ra(restarts: int, seed: int = 0, steps: int = 10) -> float:
        return robust_accuracy(model, X, y, norm="linf", eps=0.1, steps=steps, restarts=restarts,
                               batch_size=32, generator=torch.Generator().manual_seed(seed))

    one, three = ra(1), ra(3)
    assert ra(1) == one  # seeded: reproducible
    # Same seed: the first restart is the same attack, later ones can only remove samples.
    assert three <= one < clean
    assert ra(1, steps=1) > one  # a 1-step attack finds fewer adversarial examples


@pytest.mark.parametrize("bad,match", [
    (dict(norm="l1"), "unknown norm 'l1'.*linf"),
    (dict(eps=-0.1), "eps"),
    (dict(steps=-1), "steps"),
])
def test_bad_arguments_are_config_errors(trained, bad, match):
    model, X, y = trained
    kw = dict(norm="linf", eps=0.1, step_size=0.01, steps=2) | bad
    with pytest.raises(ConfigError, match=match):
        pgd(model, X, y, **kw)
    with pytest.raises(ConfigError, match="restarts"):
        robust_accuracy(model, X, y, norm="linf", eps=0.1, steps=2, restarts=0)
