"""Every loss of the training methods, and ``LOSSES``: the registry of segmentation losses.

- The DMR recipe (Dangi et al.): cross-entropy, soft Dice, log-Dice, Dice + CE
  (``segmentation_loss``) and Eq. 7's uncertainty-weighted multi-task loss (``multitask_loss``).
- Li et al. (distance map regression): the norm inverse distance map (NI-DM), the shape-aware
  MapDice loss that uses it as a penalty map, and the smooth-L1 loss of the LR-Net's maps.
- SRSCN (Yue et al.): the exponential-logarithmic loss (Eq. 1, after Wong et al.), the shape
  reconstruction loss (Eq. 3), the spatial-constraint (slice position) loss (Eq. 4).
- The papers' comparisons: ACNN's code distance (Oktay et al.) and the adversarial terms of a
  GAN discriminator on label maps.
- Qure.ai's 2D-3D FCNs (Patravali et al.): the weighted log-Dice loss of their poster
  (``qure_log_dice_loss``) and its hybrid with weighted cross-entropy (``qure_hybrid_loss``).

Tensors are (N, C, H, W) logits or probabilities, (N, H, W) integer labels, and (N, C-1, H, W)
truncated signed distance maps in pixels (``cardioseg.preprocess.distance_maps``: >= 1 inside,
<= -1 outside an object). Every function returns a scalar tensor and leaves its inputs alone.
``LOSSES`` names the segmentation losses that ``TrainConfig.loss`` and ``cardioseg train
--loss`` choose from; numpy and torch are imported only when a loss is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cardioseg.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LOSSES",
    "LossSpec",
    "code_distance_loss",
    "dice_ce_loss",
    "discriminator_loss",
    "exp_log_loss",
    "generator_loss",
    "label_frequency_weights",
    "lrnet_loss",
    "map_dice_loss",
    "multitask_loss",
    "norm_inverse_distance",
    "onehot",
    "position_loss",
    "qure_hybrid_loss",
    "qure_log_dice_loss",
    "segmentation_loss",
    "shape_reconstruction_loss",
    "soft_dice",
    "weighted_cross_entropy",
]


def onehot(target: Any, n_classes: int) -> Any:
    """(N, H, W) labels -> (N, n_classes, H, W) float one-hot maps."""
    import torch.nn.functional as F

    return F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()


def norm_inverse_distance(distmaps: Any) -> Any:
    """Li et al.'s norm inverse distance map: 1 / |d|, with |d| clamped at 1 px.

    The signed maps are >= 1 px inside and <= -1 px outside each object, so the result lies in
    (0, 1]: 1 on the pixels either side of the boundary, falling as 1/distance away from it
    (1/250 for an absent structure at the default truncation).

    >>> import torch
    >>> norm_inverse_distance(torch.tensor([-4.0, -1.0, 0.3, 1.0, 2.0])).tolist()
    [0.25, 1.0, 1.0, 1.0, 0.5]
    """
    return 1.0 / distmaps.float().abs().clamp_min(1.0)


def map_dice_loss(logits: Any, target: Any, distmaps: Any, smooth: float = 1.0) -> Any:
    """Shape-aware MapDice (Li et al.): 1 - mean over the foreground classes of a soft Dice
    whose pixels are weighted by the penalty map w = 1 + NI-DM of that class.

        MapDice_c = (2 sum w p g + smooth) / (sum w (p + g) + smooth)

    with p the softmax probability and g the one-hot reference of class c, sums over the batch.
    A perfect prediction gives 0 and a prediction disjoint from the reference ~1, as for Dice;
    in between, a misclassified pixel at the boundary costs up to twice one far from it, so the
    loss concentrates on the outline of each structure.
    """
    import torch

    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    ref = onehot(target, logits.shape[1])[:, 1:]
    w = 1.0 + norm_inverse_distance(distmaps)
    dims = (0, 2, 3)
    inter = (w * probs * ref).sum(dims)
    denom = (w * (probs + ref)).sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def lrnet_loss(pred_maps: Any, distmaps: Any) -> Any:
    """Smooth-L1 loss (beta 1) between the LR-Net's maps and the reference NI-DMs."""
    import torch.nn.functional as F

    return F.smooth_l1_loss(pred_maps.float(), norm_inverse_distance(distmaps))


def label_frequency_weights(labels: np.ndarray, n_classes: int, power: float = 0.5) -> np.ndarray:
    """Wong et al.'s label weights w_l = (sum_k f_k / f_l) ** power, f_k the count of label k
    (at least 1, so that an absent label gets a large, finite weight).

    >>> import numpy as np
    >>> label_frequency_weights(np.array([0, 0, 0, 1]), 2).round(4).tolist()
    [1.1547, 2.0]
    """
    import numpy as np

    counts = np.bincount(np.asarray(labels).ravel(), minlength=n_classes)[:n_classes].astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return (counts.sum() / counts) ** power


def exp_log_loss(
    logits: Any,
    target: Any,
    class_weights: Any = None,
    w_dice: float = 0.8,
    w_cross: float = 0.2,
    gamma_dice: float = 0.3,
    gamma_cross: float = 0.3,
    smooth: float = 1.0,
) -> Any:
    """SRSCN Eq. 1, the exponential-logarithmic loss of Wong et al. (their defaults):

        L = w_dice E_i[(-ln Dice_i) ** gamma_dice] + w_cross E_x[w_l (-ln p_l(x)) ** gamma_cross]

    Dice_i is the soft Dice of label i over the batch (all labels, background included, smooth
    1), l the reference label at pixel x, w_l its weight (``label_frequency_weights``; 1 when
    ``class_weights`` is None). The logarithms are clamped at 1e-12 so that the powers keep a
    finite gradient: a perfect prediction scores (1e-12) ** 0.3 ~ 2.5e-4 (times the weights).
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    n = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    ref = onehot(target, n)
    dims = (0, 2, 3)
    dice = (2 * (probs * ref).sum(dims) + smooth) / (probs.sum(dims) + ref.sum(dims) + smooth)
    l_dice = (-torch.log(dice)).clamp_min(1e-12).pow(gamma_dice).mean()
    nll = F.cross_entropy(logits, target, reduction="none").clamp_min(1e-12)
    weights = torch.ones(n, device=logits.device) if class_weights is None else torch.as_tensor(class_weights)
    l_cross = (weights.to(logits.device, torch.float32)[target] * nll.pow(gamma_cross)).mean()
    return w_dice * l_dice + w_cross * l_cross


def shape_reconstruction_loss(recon_pred: Any, recon_ref: Any) -> Any:
    """SRSCN Eq. 3: squared Frobenius norm of the difference of the shape autoencoder's
    reconstructions of the prediction and of the reference, summed over classes and pixels and
    averaged over the batch (the paper sums over the training samples)."""
    diff = recon_pred.float() - recon_ref.float()
    return diff.pow(2).flatten(1).sum(1).mean()


def position_loss(pred: Any, position: Any) -> Any:
    """SRSCN Eq. 4: squared error of the predicted slice position, averaged over the batch."""
    return (pred.float().reshape(-1) - position.float().reshape(-1)).pow(2).mean()


def code_distance_loss(code_pred: Any, code_ref: Any) -> Any:
    """ACNN (Oktay et al.): squared L2 distance between the shape codes of prediction and
    reference, per slice, averaged over the batch."""
    return (code_pred.float() - code_ref.float()).pow(2).flatten(1).sum(1).mean()


def discriminator_loss(real_logits: Any, fake_logits: Any) -> Any:
    """The discriminator's sigmoid cross-entropy: references are real (1), segmentations fake
    (0); the mean of the two terms."""
    import torch
    import torch.nn.functional as F

    real, fake = real_logits.float(), fake_logits.float()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


def generator_loss(fake_logits: Any) -> Any:
    """The segmentation network's adversarial term: the sigmoid cross-entropy of its outputs
    labelled real, under the (fixed) discriminator."""
    import torch
    import torch.nn.functional as F

    fake = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _normalised(class_weights: Any, n: int, device: Any) -> Any:
    """(n,) float32 weights summing to 1 (uniform 1/n when ``class_weights`` is None)."""
    import torch

    w = torch.ones(n) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    w = w.to(device, torch.float32)
    return w / w.sum()


def weighted_cross_entropy(logits: Any, target: Any, class_weights: Any = None) -> Any:
    """Class-weighted cross-entropy, normalised by the weights of the pixels' reference labels
    (PyTorch's weighted mean): sum_x w_l(x) (-ln p_l(x)) / sum_x w_l(x). Plain CE when
    ``class_weights`` is None."""
    import torch.nn.functional as F

    logits = logits.float()
    weight = None if class_weights is None else _normalised(class_weights, logits.shape[1], logits.device)
    return F.cross_entropy(logits, target, weight=weight)


def qure_log_dice_loss(logits: Any, target: Any, class_weights: Any = None, eps: float = 1.0) -> Any:
    """Qure.ai's weighted log-Dice loss, as printed in Patravali et al.'s poster:

        L_dice = sum_i w_i l_i,   l_i = log(2 - (sum_x t_i(x) p(x, i) + eps) / (sum_x (t_i(x) + p(x, i)) + eps))

    over every class i (background included), t_i the one-hot reference, p the softmax, sums
    over all pixels of the batch (of all slices of the volumes, for a 3D network's flattened
    output). The weights are normalised to sum to 1 (uniform when ``class_weights`` is None).

    The printed ratio lacks the usual factor 2 of the Dice coefficient, so it is half the soft
    Dice (up to eps): a perfect prediction scores l_i = log(1.5) ~ 0.405 for a class present
    in the batch (eps/eps: log 1 = 0 for an absent one) and a disjoint one log 2 ~ 0.693. The
    minimiser is the same as with the factor (the ratio is largest at p = t); the gradient is
    a smooth reweighting of the soft Dice's. ``eps`` is not given in the poster: 1, as for the
    other Dice losses here.
    """
    import torch

    logits = logits.float()
    n = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    ref = onehot(target, n)
    dims = (0, 2, 3)
    ratio = ((probs * ref).sum(dims) + eps) / ((ref + probs).sum(dims) + eps)
    return (_normalised(class_weights, n, logits.device) * torch.log(2 - ratio)).sum()


def qure_hybrid_loss(logits: Any, target: Any, class_weights: Any = None) -> Any:
    """Qure.ai's "hybrid combination" (Dice-CE): weighted cross-entropy + weighted log-Dice,
    unit weights (the poster gives none)."""
    return weighted_cross_entropy(logits, target, class_weights) + qure_log_dice_loss(logits, target, class_weights)


# ---------------------------------------------------------------------------- the DMR recipe's


def soft_dice(logits: Any, target: Any, n_classes: int, smooth: float = 1.0) -> Any:
    """Soft Dice per foreground class over the batch, (n_classes - 1,)."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return ((2 * inter + smooth) / (denom + smooth))[1:]


def multitask_loss(seg: Any, dm: Any, log_sigma: Any, weighting: str, seg_weight: float, dm_weight: float) -> Any:
    """Eq. 7: seg/sigma_seg + MAD/sigma_dm + log sigma_seg + log sigma_dm, sigma = exp(s); or,
    with ``fixed`` weighting, seg_weight * seg + dm_weight * MAD."""
    import torch

    if weighting == "fixed":  # log_sigma stays in the graph so that DDP sees every parameter used
        return seg_weight * seg + dm_weight * dm + 0.0 * log_sigma.sum()
    s_seg, s_dm = log_sigma[0], log_sigma[1]
    return torch.exp(-s_seg) * seg + torch.exp(-s_dm) * dm + s_seg + s_dm


# ---------------------------------------------------------------------------- the registry

# Every registered loss takes (float32 logits, target, n_classes, distmaps | None, class_weights | None).
SegmentationLoss = Callable[[Any, Any, int, Any, Any], Any]


@dataclass(frozen=True)
class LossSpec:
    """A segmentation loss of ``LOSSES``: the function, a short description (the CLI's help)
    and what it needs from the training loop."""

    fn: SegmentationLoss
    description: str
    class_weighted: bool = False  # takes the label-frequency class weights (``label_frequency_weights``)
    needs_distmaps: bool = False  # takes the references' distance maps
    named: bool = False  # its name goes in the weights' name (Qure.ai's losses)


def _ce(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(logits, target)


def _dice(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    return 1 - soft_dice(logits, target, n_classes).mean()


def _logdice(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    import torch

    return -torch.log(soft_dice(logits, target, n_classes).mean().clamp_min(1e-6))


def _dice_ce(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    import torch.nn.functional as F

    dice = soft_dice(logits, target, n_classes).mean()  # first, as ever: autograd's order stays the same
    return F.cross_entropy(logits, target) + (1 - dice)


def _mapdice(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    if distmaps is None:
        raise ConfigError("the mapdice loss needs the distance maps of the references")
    return map_dice_loss(logits, target, distmaps)


def _explog(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    return exp_log_loss(logits, target, class_weights)


def _wce(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    return weighted_cross_entropy(logits, target, class_weights)


def _qure_logdice(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    return qure_log_dice_loss(logits, target, class_weights)


def _qure_hybrid(logits: Any, target: Any, n_classes: int, distmaps: Any, class_weights: Any) -> Any:
    return qure_hybrid_loss(logits, target, class_weights)


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(_ce, "cross-entropy"),
    "dice": LossSpec(_dice, "1 - mean soft Dice"),
    "logdice": LossSpec(_logdice, "-log mean soft Dice"),
    "dice_ce": LossSpec(_dice_ce, "ce + dice"),
    "mapdice": LossSpec(_mapdice, "Li et al.'s shape-aware Dice", needs_distmaps=True),
    "explog": LossSpec(_explog, "SRSCN Eq. 1", class_weighted=True),
    "wce": LossSpec(_wce, "weighted CE", class_weighted=True, named=True),
    "qure_logdice": LossSpec(_qure_logdice, "Qure.ai's weighted log-Dice", class_weighted=True, named=True),
    "qure_hybrid": LossSpec(_qure_hybrid, "wce + qure_logdice", class_weighted=True, named=True),
}


def segmentation_loss(
    kind: str, logits: Any, target: Any, n_classes: int = 4, distmaps: Any = None, class_weights: Any = None
) -> Any:
    """The ``LOSSES[kind]`` loss of (N, n_classes, H, W) ``logits`` (computed in float32) for
    (N, H, W) ``target`` labels: ``ce``: cross-entropy; ``dice``: 1 - mean soft Dice of the
    foreground classes (smooth 1); ``logdice``: -log of that mean soft Dice; ``dice_ce``: CE +
    (1 - mean soft Dice); ``mapdice``: Li et al.'s MapDice (needs the (N, n_classes - 1, H, W)
    ``distmaps``, px); ``explog``: SRSCN's Eq. 1 (``class_weights``: the (n_classes,) w_l,
    default 1); ``wce``, ``qure_logdice``, ``qure_hybrid``: Qure.ai's weighted cross-entropy,
    weighted log-Dice and their sum (``class_weights`` as for ``explog``).

    Raises ConfigError for an unknown ``kind`` (listing the registered ones) and for
    ``mapdice`` without ``distmaps``."""
    spec = LOSSES.get(kind)
    if spec is None:
        raise ConfigError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")
    return spec.fn(logits.float(), target, n_classes, distmaps, class_weights)


def dice_ce_loss(logits: Any, target: Any, n_classes: int) -> Any:
    """Cross-entropy + (1 - mean soft Dice over the foreground classes)."""
    return segmentation_loss("dice_ce", logits, target, n_classes)
