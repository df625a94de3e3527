"""Grad-CAM: which parts of the backbone's last convolutional feature map raise the classifier's
log-probability of a target. One forward pass through the trunk, a backward pass through the small
classifier head only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def efficientnet_trunk(backbone):
    """(stem, blocks, head) of a fused EfficientNet-Lite (the shared walker); the head's output is the last conv map."""
    from geopin.features.backbones import trunk_stages

    try:
        return trunk_stages(backbone.model)
    except ValueError:
        raise ValueError(
            f"Grad-CAM needs a convolutional backbone with a last conv block; {backbone.name!r} has none "
            f"(use an efficientnet_lite* model)"
        ) from None


def input_tensor(predictor, img: Image.Image):
    """The exact tensor `geopin predict` feeds the backbone (base view) and the photo box it covers."""
    from geopin.features.backbones import center_crop_box

    cfg, bb = predictor.embed_cfg, predictor.backbone
    x = bb.preprocess(img, cfg.mode, cfg.long_side)
    if cfg.mode == "center_crop":
        box = center_crop_box(img.width, img.height, bb.native_size, bb.config.crop_padding)
    else:
        box = (0, 0, img.width, img.height)
    return x, box


def feature_map(predictor, x):
    """Last conv feature map (B, C, h, w) of input batch x, without autograd (the trunk is not differentiated)."""
    import torch

    from geopin.features.backbones import channels_last

    stem, blocks, head = efficientnet_trunk(predictor.backbone)
    with torch.no_grad():
        return head(blocks(stem(channels_last(x)))).float()


def target_log_prob(model, pooled, mask: np.ndarray):
    """log of the hierarchical classifier probability summed over the masked fine places, differentiable.

    `mask` is (K,) bool, or (K,) float weights (a country's share of each place): the sum is then weighted.

    Reproduces `classifier_logits` (l2-normalised pooled embedding into CellClassifier) and
    `classifier_probs` (sum over levels of log_softmax(logit / t_clf) at each place's ancestor).
    """
    import torch

    heads = model.heads
    e = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
    logits = heads.classifier(e)
    t = float(model.params.t_clf)
    total = 0
    for lg, anc in zip(logits, heads.places.ancestors):
        total = total + torch.log_softmax(lg.double() / t, dim=1)[:, torch.from_numpy(np.asarray(anc, dtype=np.int64))]
    w = np.asarray(mask, dtype=np.float64)
    m = torch.from_numpy(w > 0)
    log_w = torch.from_numpy(np.log(w[w > 0]))
    return torch.logsumexp(total[:, m] + log_w, dim=1) - torch.logsumexp(total, dim=1)


def gradcam_from_features(predictor, feats, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM on feature map (1, C, h, w): ReLU(sum_c mean-gradient_c * A_c), scaled to [0, 1]; and the log-prob."""
    import torch

    a = feats.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = target_log_prob(predictor.model, a.mean((2, 3)), mask)[0]
        (grad,) = torch.autograd.grad(score, a)
    weights = grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * a.detach()).sum(1))[0].numpy().astype(np.float64)
    top = cam.max()
    return (cam / top if top > 0 else cam), float(score.detach())


__all__ = ["efficientnet_trunk", "input_tensor", "feature_map", "target_log_prob", "gradcam_from_features"]
