"""Batched, differentiable CAMs with pytorch-grad-cam 1.5.x's formulas, in torch.

pytorch-grad-cam returns numpy arrays, so a loss on its maps has no gradient (why the published
XGD code's saliency loss trained nothing: docs/method.md). Here every method is a pure torch
function of one layer's activations and the gradients of a target with respect to them, so a map
computed from gradients taken with `create_graph=True` trains the model that produced them.

Design as in pytorch-grad-cam: one base (`weighted`: map = sum_c w * A_c, BaseCAM.get_cam_image)
and each method a small override of how the weights are made; EigenGradCAM overrides the image.
`CAMS[name](acts, grads)` is the method's map before the ReLU; `cam()` adds float32 (autocast off) and the
ReLU (pytorch-grad-cam's `np.maximum(cam, 0)`), and is what callers use.

EigenGradCAM (pytorch-grad-cam's `get_2d_projection(grads * acts)`): the projection of the
centred (hw x C) matrix X = grads*acts onto its top right-singular vector, computed without SVD
or numpy from the top eigenvector of the C x C Gram matrix (or of the hw x hw one when hw < C),
batched. Two choices pytorch-grad-cam leaves open:
- Sign. SVD's sign is arbitrary, and a projection of centred data always sums to zero, so
  "make the sum non-negative" cannot fix it. Rule used: flip the projection when its dot product
  with the HiResCAM map sum_c(grads*acts) is negative, i.e. the principal direction points the
  way the layer's first-order contribution to the target does (in the C x C route this is
  sum(v) >= 0 for the eigenvector v). Deterministic, sync-free (torch.where), and the same
  meaning for teacher and student, whose channel spaces differ.
- Gradient. torch.linalg.eigh's backward divides by eigenvalue gaps and gives NaN on a zero map
  (an absent class, a fully ignored image). The eigenvector here carries the exact first-order
  derivative dv1 = sum_j v_j v_j^T dG v1 / (l1 - lj), with near-degenerate gaps (< 1e-6 l1)
  dropped instead of divided by; that is all a loss on the map needs (one backward through it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CamFn = Callable[[Tensor, Tensor], Tensor]  # (acts, grads) (N, C, h, w) float32 -> (N, h, w) pre-ReLU
WeightFn = Callable[[Tensor, Tensor], Tensor]  # (acts, grads) -> weights broadcastable to acts

GAP_TOL = 1e-6  # relative eigenvalue gap below which an eigenvector derivative term is dropped


def weighted(weights: WeightFn) -> CamFn:
    """BaseCAM.get_cam_image without eigen smoothing: sum over channels of weights * acts."""

    def image(acts: Tensor, grads: Tensor) -> Tensor:
        return (weights(acts, grads) * acts).sum(dim=1)

    return image


def _gradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    return grads.mean(dim=(2, 3), keepdim=True)  # grad_cam.py: np.mean(grads, axis=(2, 3))


def _gradcam_pp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    # grad_cam_plusplus.py (eq. 19 of arXiv:1710.11063), same eps and the same zeroing where grads == 0
    g2 = grads * grads
    g3 = g2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    aij = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    return (grads.clamp_min(0) * aij).sum(dim=(2, 3), keepdim=True)


def _hirescam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    return grads  # hirescam.py: (grads * acts).sum(axis=1)


def _layercam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    return grads.clamp_min(0)  # layer_cam.py: (np.maximum(grads, 0) * acts).sum(axis=1)


def top_eigenvector(gram: Tensor) -> Tensor:
    """Unit top eigenvector (..., n) of symmetric `gram` (..., n, n), NaN-free first derivative.

    The value is eigh's; the graph is a zero-valued first-order term built from the
    perturbation formula, so degenerate spectra (e.g. a zero matrix) give finite gradients.
    """
    with torch.no_grad():
        evals, evecs = torch.linalg.eigh(gram)  # ascending
        v1 = evecs[..., -1]
        rest = evecs[..., :-1]  # (..., n, n-1)
        gap = evals[..., -1:] - evals[..., :-1]
        tol = GAP_TOL * evals[..., -1:].abs()
        inv_gap = torch.where(gap > tol, 1.0 / gap.clamp_min(torch.finfo(gap.dtype).tiny), torch.zeros_like(gap))
    if not gram.requires_grad:
        return v1
    d_gram = gram - gram.detach()  # zero value, carries gram's graph
    coef = (rest.transpose(-1, -2) @ (d_gram @ v1.unsqueeze(-1))).squeeze(-1) * inv_gap
    return v1 + (rest @ coef.unsqueeze(-1)).squeeze(-1)


def first_component_projection(x: Tensor) -> Tensor:
    """get_2d_projection: (N, C, h, w) -> (N, h, w) projection on the first principal component.

    The rows (pixels) of the (hw x C) matrix are centred per channel as pytorch-grad-cam does;
    the Gram matrix is built on the smaller side. Sign rule: see the module docstring.
    """
    n, c, h, w = x.shape
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # as get_2d_projection
    flat = x.reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    centred = flat - flat.mean(dim=1, keepdim=True)
    if c <= h * w:
        v = top_eigenvector(centred.transpose(1, 2) @ centred)  # C x C
    else:
        u = top_eigenvector(centred @ centred.transpose(1, 2))  # hw x hw; v = A^T u / |A^T u|
        v = torch.nn.functional.normalize((centred.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1), dim=-1, eps=1e-30)
    proj = (centred @ v.unsqueeze(-1)).squeeze(-1)  # (N, hw)
    agree = (proj * flat.sum(dim=2)).sum(dim=1, keepdim=True)  # dot with the HiResCAM map
    proj = torch.where(agree < 0, -proj, proj)
    return proj.reshape(n, h, w)


def _eigengradcam(acts: Tensor, grads: Tensor) -> Tensor:
    return first_component_projection(grads * acts)  # eigen_grad_cam.py


CAMS: dict[str, CamFn] = {
    "gradcam": weighted(_gradcam_weights),
    "gradcam++": weighted(_gradcam_pp_weights),
    "hirescam": weighted(_hirescam_weights),
    "eigengradcam": _eigengradcam,
    "layercam": weighted(_layercam_weights),
}


def check_method(method: str) -> None:
    if method not in CAMS:
        raise ValueError(f"unknown CAM method {method!r}; allowed: {', '.join(CAMS)}")


def cam(method: str, acts: Tensor, grads: Tensor) -> Tensor:
    """ReLU of `method`'s map, (B, C, h, w) activations and gradients -> (B, h, w) float32."""
    check_method(method)
    if acts.shape != grads.shape or acts.dim() != 4:
        raise ValueError(
            f"CAM needs activations and gradients of one (B, C, h, w) shape, got "
            f"{tuple(acts.shape)} and {tuple(grads.shape)}"
        )
    with torch.autocast(device_type=acts.device.type, enabled=False):  # Gram + eigh need float32
        return CAMS[method](acts.float(), grads.float()).clamp_min(0)
