"""AttnFD [AttnFD]: distil CBAM-refined features at the encoder's last stage, the ASPP (or
pyramid pooling) output and the decoder output.

Student side: a learned CBAM per layer (channel gate sigmoid(MLP(avg) + MLP(max)), reduction
16; spatial gate sigmoid(BN(conv7x7([mean_c; max_c])))), then a 1x1 conv + BN connector where
the channels differ; these modules are built here and trained with the student.
Teacher side: the authors' code (github AmirMansurian/AttnFD, cbam.py with model='teacher')
refines teacher features with the same gates made parameter-free (identity MLP, channel-pool
sum instead of the 7x7 conv). That is the default here: a learned teacher gate would be trained
by the same loss and could drift towards the student instead of carrying the teacher's
attention. weights.attnfd_teacher_cbam = 1 uses a learned CBAM on the teacher too.

Loss: sum over layers of mean_b || F''_S / ||F''_S|| - F''_T / ||F''_T|| ||^2, norms over
(C, H, W) per image. The public code normalises over the whole batch tensor and divides by B,
which is about 1/B of this value and changes with the batch size; with per-image norms the
public weight 2 means the same at any batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.losses.features import connector, fit
from trainables.losses.hyperparams import hp
from trainables.losses.registry import Step, register, weight_from
from trainables.losses.roles import role_taps

LAYERS = ("enc", "aspp", "dec")


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        att = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel gate, then spatial gate (Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


def fixed_cbam(x: Tensor) -> Tensor:
    """The public code's parameter-free teacher CBAM: sigmoid(avg + max) per channel, then
    sigmoid(mean_c + max_c) per pixel."""
    x = x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True) + x.amax(dim=(2, 3), keepdim=True))
    return x * torch.sigmoid(x.mean(dim=1, keepdim=True) + x.amax(dim=1, keepdim=True))


def attnfd_layer_loss(s_ref: Tensor, t_ref: Tensor) -> Tensor:
    """mean_b || s/||s|| - t/||t|| ||^2 with per-image norms; `s_ref` already has the teacher's channels."""
    s = F.normalize(fit(s_ref, t_ref.shape[-2:]).float().flatten(1), dim=1)
    t = F.normalize(t_ref.float().flatten(1), dim=1)
    return (s - t).pow(2).sum(dim=1).mean()


class AttnFDModules(nn.Module):
    """Per layer: student CBAM + connector; optional learned teacher CBAM."""

    def __init__(self, s_channels: dict[str, int], t_channels: dict[str, int], reduction: int, teacher_cbam: bool):
        super().__init__()
        self.student = nn.ModuleDict(
            {k: nn.Sequential(CBAM(s_channels[k], reduction), connector(s_channels[k], t_channels[k])) for k in LAYERS}
        )
        self.teacher = nn.ModuleDict({k: CBAM(t_channels[k], reduction) for k in LAYERS}) if teacher_cbam else None

    def refine_teacher(self, name: str, x: Tensor) -> Tensor:
        return fixed_cbam(x) if self.teacher is None else self.teacher[name](x)


def _build(s_shapes: dict, t_shapes: dict, cfg: dict) -> nn.Module:
    return AttnFDModules(
        {k: s_shapes[k][1] for k in LAYERS},
        {k: t_shapes[k][1] for k in LAYERS},
        int(hp(cfg, "attnfd_reduction")),
        hp(cfg, "attnfd_teacher_cbam") == 1.0,
    )


@register(
    "attnfd",
    weight=weight_from("attnfd", 2.0),
    student_taps=role_taps(*LAYERS),
    teacher_taps=role_taps(*LAYERS),
    build=_build,
)
def _attnfd(step: Step, cfg: dict) -> Tensor:
    mods: AttnFDModules = step.extras["attnfd"]
    total = step.s_logits.new_zeros((), dtype=torch.float32)
    for k in LAYERS:
        s_ref = mods.student[k](step.s_feats[k])
        t_ref = mods.refine_teacher(k, step.t_feats[k].detach())
        total = total + attnfd_layer_loss(s_ref, t_ref)
    return total
