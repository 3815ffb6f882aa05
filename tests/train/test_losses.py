"""The losses: the DMR recipe's (CE, Dice, log-Dice, Dice + CE, Eq. 7), the other papers'
(MapDice, LR-Net, exp-log, shape, position, code distance, adversarial; Qure.ai's weighted CE,
log-Dice and hybrid) on hand-made label maps with known values, and the ``LOSSES`` registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardioseg.errors import ConfigError
from cardioseg.preprocess import distance_maps
from cardioseg.train import LOSSES, dice_ce_loss, losses, multitask_loss, segmentation_loss


@pytest.mark.parametrize("kind", ["ce", "dice", "logdice", "dice_ce"])
def test_segmentation_loss_prefers_the_right_answer(kind: str) -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 0:2, :] = 1
    target[:, 2:6, 2:6] = 2
    target[:, 3:5, 3:5] = 3
    right = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 10
    wrong = torch.roll(right, 1, dims=1)
    good, bad = float(segmentation_loss(kind, right, target)), float(segmentation_loss(kind, wrong, target))
    assert 0 <= good < 0.05 < bad
    if kind == "dice_ce":
        assert float(dice_ce_loss(wrong, target, 4)) == pytest.approx(bad)


def test_unknown_loss() -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        segmentation_loss("focal", torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_multitask_loss_eq7_and_fixed() -> None:
    seg, dm = torch.tensor(0.7), torch.tensor(3.0)
    s = torch.tensor([0.5, -0.2], requires_grad=True)
    assert float(multitask_loss(seg, dm, s, "fixed", 2.0, 0.5).detach()) == pytest.approx(2 * 0.7 + 0.5 * 3.0)
    value = multitask_loss(seg, dm, s, "uncertainty", 1.0, 1.0)
    assert float(value.detach()) == pytest.approx(0.7 / math.exp(0.5) + 3.0 / math.exp(-0.2) + 0.5 - 0.2)
    value.backward()  # d/ds = 1 - L/sigma: the optimum is sigma = L
    np.testing.assert_allclose(s.grad.numpy(), [1 - 0.7 / math.exp(0.5), 1 - 3.0 / math.exp(-0.2)], rtol=1e-6)



def _labels() -> torch.Tensor:
    """(2, 16, 16): an RV strip, a myocardial square ring around an LV square; slice 2 shifted."""
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    y[:, 1:3, 2:14] = 1
    y[:, 5:13, 4:12] = 2
    y[:, 7:11, 6:10] = 3
    y[1] = torch.roll(y[1], 1, dims=1)
    return y


def _distmaps(y: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack([distance_maps(s.numpy(), (1, 2, 3)) for s in y]))


def _logits(probs: torch.Tensor) -> torch.Tensor:
    return torch.log(probs.clamp_min(1e-30))


def test_map_dice_perfect_disjoint_and_known_value() -> None:
    y = _labels()
    dm = _distmaps(y)
    right = losses.onehot(y, 4) * 30
    assert float(losses.map_dice_loss(right, y, dm)) < 1e-6
    wrong = torch.roll(right, 1, dims=1)  # every pixel gets the next class: no overlap at all
    disjoint = float(losses.map_dice_loss(wrong, y, dm))
    assert 0.9 < disjoint < 1
    # uniform probabilities: MapDice_c = (2 * 0.25 * sum_g w + 1) / (sum w * 0.25 + sum_g w + 1), w = 1 + 1/max(|d|, 1)
    w = 1 + 1 / np.maximum(np.abs(dm.numpy()), 1)
    g = losses.onehot(y, 4)[:, 1:].numpy()
    per_class = [(2 * 0.25 * (w[:, c] * g[:, c]).sum() + 1) / (0.25 * w[:, c].sum() + (w[:, c] * g[:, c]).sum() + 1)
                 for c in range(3)]  # fmt: skip
    value = float(losses.map_dice_loss(torch.zeros(2, 4, 16, 16), y, dm))
    assert value == pytest.approx(1 - np.mean(per_class), rel=1e-5)
    assert float(segmentation_loss("mapdice", torch.zeros(2, 4, 16, 16), y, distmaps=dm)) == pytest.approx(value)


def test_map_dice_penalises_boundary_errors_more_than_distant_ones() -> None:
    """Two predictions with the same number of false-positive RV pixels in the background: next
    to the RV, or far from it. Plain soft Dice cannot tell them apart; MapDice charges the
    boundary error more."""
    y = _labels()
    dm = _distmaps(y)
    near, far = y.clone(), y.clone()
    near[0, 3, 4:8] = near[1, 4, 4:8] = 1  # the background row just below the RV strip
    far[:, 15, 4:8] = 1  # background, 11+ px from the RV
    assert (y[near != y] == 0).all() and (y[far != y] == 0).all()
    to_logits = lambda lab: losses.onehot(lab, 4) * 30
    l_near, l_far = (float(losses.map_dice_loss(to_logits(p), y, dm)) for p in (near, far))
    d_near, d_far = (float(segmentation_loss("dice", to_logits(p), y)) for p in (near, far))
    assert d_near == pytest.approx(d_far, abs=1e-6)
    assert l_near > l_far > 0


def test_norm_inverse_distance_and_lrnet_loss() -> None:
    d = torch.tensor([[-250.0, -3.0, -1.0, 1.0, 2.0, 0.5]])
    np.testing.assert_allclose(losses.norm_inverse_distance(d).numpy(), [[1 / 250, 1 / 3, 1, 1, 0.5, 1]], rtol=1e-6)
    target = losses.norm_inverse_distance(d)
    assert float(losses.lrnet_loss(target, d)) == 0
    # smooth L1 with beta 1 is 0.5 x**2 for |x| < 1
    assert float(losses.lrnet_loss(target + 0.2, d)) == pytest.approx(0.5 * 0.04, rel=1e-5)


def test_exp_log_loss_perfect_wrong_and_known_value() -> None:
    y = _labels()
    right = losses.onehot(y, 4) * 40
    assert float(losses.exp_log_loss(right, y)) < 1e-3  # (1e-12) ** 0.3 floors
    assert float(losses.exp_log_loss(torch.roll(right, 1, dims=1), y)) > 1.0
    # uniform probabilities 1/4: -ln p = ln 4 everywhere; Dice_i = (2 n_i / 4 + 1) / (N / 4 + n_i + 1)
    n_pix = y.numel()
    counts = np.bincount(y.numpy().ravel(), minlength=4)
    dice = (2 * counts / 4 + 1) / (n_pix / 4 + counts + 1)
    weights = losses.label_frequency_weights(y.numpy(), 4)
    np.testing.assert_allclose(weights, np.sqrt(n_pix / counts))
    expected_dice = np.mean((-np.log(dice)) ** 0.3)
    expected_cross = np.mean(weights[y.numpy()]) * math.log(4) ** 0.3
    value = float(losses.exp_log_loss(torch.zeros(2, 4, 16, 16), y, torch.from_numpy(weights)))
    assert value == pytest.approx(0.8 * expected_dice + 0.2 * expected_cross, rel=1e-5)
    unweighted = float(segmentation_loss("explog", torch.zeros(2, 4, 16, 16), y))
    assert unweighted == pytest.approx(0.8 * expected_dice + 0.2 * math.log(4) ** 0.3, rel=1e-5)


def test_exp_log_loss_has_finite_gradients_at_a_perfect_prediction() -> None:
    y = _labels()
    logits = (losses.onehot(y, 4) * 200).requires_grad_(True)  # softmax saturates: -ln p is exactly 0
    losses.exp_log_loss(logits, y).backward()
    assert torch.isfinite(logits.grad).all()


def test_shape_position_code_and_adversarial_terms() -> None:
    a, b = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    b[0, 1, 0, 0], b[1, 2, 1, 1], b[1, 3, 2, 2] = 1.0, 2.0, 1.0
    # Eq. 3: squared Frobenius norms per slice (1 and 4 + 1), averaged over the batch
    assert float(losses.shape_reconstruction_loss(a, b)) == pytest.approx((1 + 5) / 2)
    assert float(losses.code_distance_loss(a, b)) == pytest.approx(3.0)
    assert float(losses.position_loss(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(0.125)
    zero = torch.zeros(3)
    assert float(losses.discriminator_loss(zero, zero)) == pytest.approx(math.log(2))
    assert float(losses.generator_loss(zero)) == pytest.approx(math.log(2))
    assert float(losses.discriminator_loss(torch.full((3,), 20.0), torch.full((3,), -20.0))) < 1e-8


def test_mapdice_without_maps() -> None:
    with pytest.raises(ConfigError, match="needs the distance maps"):
        segmentation_loss("mapdice", torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def _target() -> torch.Tensor:
    """(2, 8, 8) labels: 32 background, 16 RV, 12 myocardium, 4 LV pixels per slice."""
    t = torch.zeros(2, 8, 8, dtype=torch.long)
    t[:, 0:2, :] = 1
    t[:, 2:6, 2:6] = 2
    t[:, 3:5, 3:5] = 3
    return t


def _onehot_logits(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(t, 4).permute(0, 3, 1, 2).float() * 100  # softmax exactly one-hot in fp32


def test_qure_log_dice_perfect_and_wrong_predictions() -> None:
    t = _target()
    counts = np.array([64, 32, 24, 8], float)  # per class over the batch of 2 slices
    perfect = float(losses.qure_log_dice_loss(_onehot_logits(t), t))
    assert perfect == pytest.approx(np.mean(np.log(2 - (counts + 1) / (2 * counts + 1))), rel=1e-6)
    assert perfect == pytest.approx(math.log(1.5), abs=0.01)  # the printed formula: half the Dice, log 1.5 at best
    wrong_t = (t + 1) % 4  # every pixel predicted as the next class: no overlap
    pred_counts = np.roll(counts, 1)
    wrong = float(losses.qure_log_dice_loss(_onehot_logits(wrong_t), t))
    assert wrong == pytest.approx(np.mean(np.log(2 - 1 / (counts + pred_counts + 1))), rel=1e-6)
    assert wrong > 0.65 and perfect < 0.45
    w = np.array([1.0, 2.0, 3.0, 4.0])
    weighted = float(losses.qure_log_dice_loss(_onehot_logits(wrong_t), t, torch.tensor(w)))
    assert weighted == pytest.approx(np.sum(w / w.sum() * np.log(2 - 1 / (counts + pred_counts + 1))), rel=1e-6)
    absent = torch.zeros(1, 4, 4, dtype=torch.long)  # one class present, perfectly predicted: 3 absent classes score 0
    assert float(losses.qure_log_dice_loss(_onehot_logits(absent), absent)) == pytest.approx(np.log(2 - 17 / 33) / 4)


def test_weighted_cross_entropy_and_hybrid_known_values() -> None:
    a, b = 0.8, 0.3  # probability of the right class at two pixels of classes 0 and 1
    logits = torch.tensor([[math.log(a), math.log(1 - a)], [math.log(1 - b), math.log(b)]]).T.reshape(1, 2, 1, 2)
    t = torch.tensor([[[0, 1]]])
    w = torch.tensor([1.0, 3.0])
    expected = (-math.log(a) - 3 * math.log(b)) / 4
    assert float(losses.weighted_cross_entropy(logits, t, w)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.weighted_cross_entropy(logits, t)) == pytest.approx((-math.log(a) - math.log(b)) / 2, rel=1e-5)
    assert float(losses.weighted_cross_entropy(torch.zeros(2, 4, 3, 3), _target()[:, :3, :3], w.repeat(2))) == (
        pytest.approx(math.log(4), rel=1e-6)
    )
    t4, cw = _target(), torch.tensor([0.5, 1.0, 2.0, 4.0])
    logits4 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hybrid = float(segmentation_loss("qure_hybrid", logits4, t4, class_weights=cw))
    parts = float(losses.weighted_cross_entropy(logits4, t4, cw)) + float(losses.qure_log_dice_loss(logits4, t4, cw))
    assert hybrid == pytest.approx(parts, rel=1e-6)
    for kind, lo, hi in (("wce", 0.0, 1e-6), ("qure_logdice", 0.38, 0.41), ("qure_hybrid", 0.38, 0.41)):
        good = float(segmentation_loss(kind, _onehot_logits(t4), t4, class_weights=cw))
        bad = float(segmentation_loss(kind, _onehot_logits((t4 + 1) % 4), t4, class_weights=cw))
        assert lo <= good <= hi and bad > good + 0.2


def test_every_registered_loss_is_what_segmentation_loss_computes() -> None:
    y = _labels()
    logits = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    dm, cw = _distmaps(y), torch.tensor([0.5, 1.0, 2.0, 4.0])
    direct = {"mapdice": losses.map_dice_loss(logits, y, dm), "explog": losses.exp_log_loss(logits, y, cw),
              "wce": losses.weighted_cross_entropy(logits, y, cw), "qure_logdice": losses.qure_log_dice_loss(logits, y, cw),
              "qure_hybrid": losses.qure_hybrid_loss(logits, y, cw),
              "ce": torch.nn.functional.cross_entropy(logits, y), "dice": 1 - losses.soft_dice(logits, y, 4).mean()}  # fmt: skip
    for kind, spec in LOSSES.items():
        value = segmentation_loss(kind, logits.to(torch.bfloat16), y, distmaps=dm, class_weights=cw)
        assert value.dtype == torch.float32 and value.ndim == 0 and math.isfinite(float(value)), kind  # fp32 of bf16 logits
        assert float(spec.fn(logits, y, 4, dm, cw)) == float(segmentation_loss(kind, logits, y, 4, dm, cw))
        if kind in direct:
            assert float(segmentation_loss(kind, logits, y, distmaps=dm, class_weights=cw)) == float(direct[kind])
