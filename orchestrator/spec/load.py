"""Loading any spec: YAML files, `--set key=value` overrides, and pydantic's errors turned into
one `SpecError` line that names the key (with a did-you-mean for unknown keys); `Strict` is the
base of every schema (unknown keys are errors)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.errors import SpecError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec file {str(p)!r}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"spec file {str(p)!r} cannot be read: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.01")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {item!r}: {part!r} is not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return raw


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc`, for did-you-mean."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cls = cand
                break
        else:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(model: type[BaseModel], err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not isinstance(p, int) or True)
    key = prefix + ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        known = _fields_at(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"
        return f"unknown key {key!r}{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error" or not loc:
        return msg if not loc else f"{key}: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{got_s}"


def validate(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(model, err, prefix)) from None


def canonical(obj: Any) -> str:
    """Stable JSON of a spec part (sorted keys) for hashing and for comparing on resume."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
