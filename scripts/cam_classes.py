"""Which classes should XGD's CAM target hold? Measures, for a dataset split and a trained model:

- the share of labelled pixels that are background (the dataset's declared background class,
  trainables.data.background_index; the dataset must declare one): with `cam_classes: all` the summed
  target's gradient at the logits is the one-hot mask, so this share of it starts at background;
- the share of the model's normalised summed-target CAM mass that lies on foreground pixels, with
  the target over all classes and over the foreground only (a map spread evenly over the labelled
  pixels would score the foreground pixel share).

    .venv/bin/python scripts/cam_classes.py results/teachers/<hash>/best.pt --data '{kind: synthetic}'
    .venv/bin/python scripts/cam_classes.py --data '{kind: ttpla, root: ...}'   # pixel shares only
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import yaml

from orchestrator.spec.train import DataSpec
from trainables import checkpoint
from trainables.constants import IGNORE_INDEX as IGNORE
from trainables.data import background_index, build_dataset, class_names, pad_collate
from trainables.models import default_cam_layer, model_from_config
from trainables.saliency import cam_maps, class_masks, normalize_maps
from trainables.taps import tap


def pixel_shares(ds, bg: int) -> dict:
    counts = torch.zeros(256, dtype=torch.long)
    for i in range(len(ds)):
        counts += torch.bincount(ds[i][1].flatten(), minlength=256)
    labelled = counts.sum() - counts[IGNORE]
    return {"images": len(ds), "background_share": float(counts[bg] / labelled)}


def foreground_mass(model, ds, method: str, bg: int, batch: int = 8) -> dict:
    layer = default_cam_layer(model)
    out = {"all": [], "foreground": []}
    fg_share = []
    for start in range(0, len(ds), batch):
        x, y = pad_collate([ds[i] for i in range(start, min(start + batch, len(ds)))])
        with torch.enable_grad(), tap(model, {"cam": layer}, leaf=True) as f:
            logits = model(x)
        fg = ((y != bg) & (y != IGNORE)).float()
        labelled = (y != IGNORE).float()
        for classes in out:
            masks = class_masks(y, None, logits.shape[1], "gt", classes, bg)
            maps = cam_maps(logits, f["cam"], masks, method, "sum").detach()
            maps = normalize_maps(F.interpolate(maps, size=y.shape[-2:], mode="bilinear", align_corners=False))[:, 0]
            mass = (maps * labelled).sum(dim=(1, 2))
            keep = mass > 0
            out[classes] += ((maps * fg).sum(dim=(1, 2))[keep] / mass[keep]).tolist()
        fg_share += (fg.sum(dim=(1, 2)) / labelled.sum(dim=(1, 2)).clamp_min(1)).tolist()
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    return {
        "foreground_pixel_share": mean(fg_share),
        **{f"cam_mass_on_foreground_{k}": mean(v) for k, v in out.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="a best.pt written by `orchestrator train` (omit: pixel shares only)")
    p.add_argument("--data", default="{kind: synthetic}", help="a data section as YAML")
    p.add_argument("--split", default="val")
    p.add_argument("--cam", default="gradcam")
    a = p.parse_args()
    data = DataSpec(**yaml.safe_load(a.data)).model_dump()
    bg = background_index(data)
    if bg is None:
        raise SystemExit(f"error: data.kind={data['kind']!r} declares no background class (data.background)")
    ds = build_dataset(data, a.split, train=False)
    result = {"data": data["kind"], "split": a.split, **pixel_shares(ds, bg)}
    if a.checkpoint:
        state = checkpoint.load(a.checkpoint)
        model = model_from_config(state["model_cfg"], len(class_names(data)))
        model.load_state_dict(state["model"])
        model.eval().requires_grad_(False)
        result.update(cam=a.cam, **foreground_mass(model, ds, a.cam, bg))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
