"""The Ray internals the sweep subclasses, patches or reads still look the way the code expects.

Each module that relies on a private Ray API declares it in a module-level `RAY_INTERNALS` tuple
next to the code that uses it; this test resolves every entry against the installed Ray and fails
naming the symbol. pyproject.toml bounds Ray above at the newest version these passed with.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for pkg in ("orchestrator", "trainables") for p in (ROOT / pkg).rglob("*.py"))
DECLARES = re.compile(r"^RAY_INTERNALS = \(", re.M)
# an import of a private Ray module: ray.<...>._internal / ray._private / ray.train.v2 internals
PRIVATE_IMPORT = re.compile(r"^\s*(from|import) ray(\.\w+)*\.(_\w+|v2\.\w+)", re.M)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def declared() -> list[tuple[str, tuple]]:
    """(declaring module, entry) for every RAY_INTERNALS entry in the repo's packages."""
    out = []
    for path in SOURCES:
        if DECLARES.search(path.read_text()):
            mod = module_name(path)
            out += [(mod, entry) for entry in importlib.import_module(mod).RAY_INTERNALS]
    return out


ENTRIES = declared()


def resolve(symbol: str, where: str):
    module, _, attr_path = symbol.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{symbol} (used by {where}): module {module} no longer imports: {e}")
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            pytest.fail(f"{symbol} (used by {where}): {part!r} no longer exists in the installed Ray")
        obj = getattr(obj, part)
    return obj


def has_attr(cls, name: str) -> bool:
    """A class attribute or property, a dataclass field, or an annotated instance attribute."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    annotated = {k for c in inspect.getmro(cls) for k in getattr(c, "__annotations__", {})}
    return hasattr(cls, name) or name in fields or name in annotated


def check_params(obj, want: tuple) -> str | None:
    got = tuple(inspect.signature(obj).parameters)
    return None if got == want else f"parameters are {got}, the code expects {want}"


def check_attrs(obj, want: tuple) -> str | None:
    missing = [n for n in want if not has_attr(obj, n)]
    return f"has no {', '.join(missing)}" if missing else None


def check_reads(obj, want: tuple) -> str | None:
    code = inspect.unwrap(obj).__code__
    missing = [n for n in want if n not in code.co_names]
    return f"no longer looks up {', '.join(missing)} (the patch would have no effect)" if missing else None


CHECKS = {"params": check_params, "attrs": check_attrs, "reads": check_reads}


def test_every_module_importing_private_ray_declares_what_it_uses():
    undeclared = [
        module_name(p) for p in SOURCES if PRIVATE_IMPORT.search(p.read_text()) and not DECLARES.search(p.read_text())
    ]
    assert not undeclared, f"these import private Ray modules without a RAY_INTERNALS tuple: {undeclared}"
    assert ENTRIES, "no RAY_INTERNALS found: the scan of orchestrator/ and trainables/ is broken"


@pytest.mark.parametrize("where,entry", ENTRIES, ids=[e[1][0] for e in ENTRIES])
def test_ray_internal_is_as_the_code_expects(where, entry):
    import ray

    symbol, kind, want = entry
    assert kind in CHECKS, f"{where}: RAY_INTERNALS entry {symbol} has kind {kind!r}; allowed: {sorted(CHECKS)}"
    problem = CHECKS[kind](resolve(symbol, where), tuple(want))
    assert problem is None, (
        f"Ray {ray.__version__}: {symbol} (used by {where}) {problem}; "
        "update the code and its RAY_INTERNALS, then Ray's bound in pyproject.toml"
    )
