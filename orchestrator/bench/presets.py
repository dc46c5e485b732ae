"""The bench's student and teacher presets, by name, or any smp model as 'arch:encoder'.
Torch-free, so `bench --help` lists them without loading the trainer."""

from __future__ import annotations

STUDENTS: dict[str, dict[str, str]] = {
    "dlv3p_r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
    "dlv3p_mbv2": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2"},
    "pspnet_r18": {"arch": "pspnet", "encoder": "resnet18"},
}
TEACHERS: dict[str, dict[str, str]] = {
    "r101": {"arch": "deeplabv3plus", "encoder": "resnet101"},
    "r50": {"arch": "deeplabv3plus", "encoder": "resnet50"},
    "r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
}


def model_cfg(name: str, table: dict[str, dict[str, str]], role: str) -> dict[str, str]:
    """A preset name, or 'arch:encoder' (any smp model)."""
    if name in table:
        return dict(table[name])
    arch, sep, encoder = name.partition(":")
    if not sep:
        raise ValueError(f"unknown {role} {name!r}; use one of {', '.join(table)} or arch:encoder (e.g. unet:resnet34)")
    return {"arch": arch, "encoder": encoder}
