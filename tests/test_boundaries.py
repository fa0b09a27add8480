"""Architecture rules checked on the source: where Lightning may be imported and where CUDA may be named."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avp"
LIGHTNING_ALLOWED = ("lit/", "cli.py")
CUDA_ALLOWED = ("render/gsplat_backend.py", "device.py")
LIGHTNING_MODULES = ("lightning", "pytorch_lightning", "lightning_fabric")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def lightning_imports(source: str) -> list[int]:
    """Line numbers of imports of Lightning packages (any form)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n.split(".")[0] in LIGHTNING_MODULES for n in names):
            lines.append(node.lineno)
    return lines


CUDA_PATTERN = re.compile(r"\.cuda\(|[\"']cuda(:\d+)?[\"']")


def cuda_mentions(source: str) -> list[int]:
    return [i for i, line in enumerate(source.splitlines(), 1) if CUDA_PATTERN.search(line.split("#")[0])]


# the files each rule applies to: the exempted ones are not collected at all, so no test passes without checking
LIGHTNING_CHECKED = [p for p in _sources() if not _rel(p).startswith(LIGHTNING_ALLOWED)]
CUDA_CHECKED = [p for p in _sources() if _rel(p) not in CUDA_ALLOWED]


def test_the_package_has_sources_and_the_rules_cover_them() -> None:
    sources = _sources()
    assert len(sources) > 3
    assert len(LIGHTNING_CHECKED) > len(sources) // 2 and len(CUDA_CHECKED) == len(sources) - len(CUDA_ALLOWED)


def test_the_exemptions_name_files_that_exist_and_use_them() -> None:
    """A stale or misspelt exemption would silently exempt nothing (or the wrong file): each must match a file
    that does what it is exempted for."""
    by_rel = {_rel(p): p for p in _sources()}
    for prefix in LIGHTNING_ALLOWED:
        exempt = [rel for rel in by_rel if rel.startswith(prefix)]
        assert exempt, f"LIGHTNING_ALLOWED names {prefix!r}, which matches no file"
        assert any(lightning_imports(by_rel[rel].read_text()) for rel in exempt), f"{prefix} needs no exemption"
    for rel in CUDA_ALLOWED:
        assert rel in by_rel, f"CUDA_ALLOWED names {rel!r}, which is not a file"
        assert cuda_mentions(by_rel[rel].read_text()), f"{rel} needs no exemption"


@pytest.mark.parametrize("path", LIGHTNING_CHECKED, ids=_rel)
def test_lightning_only_in_machinery(path: Path) -> None:
    assert not lightning_imports(path.read_text()), f"{_rel(path)} imports Lightning outside avp/lit/ and avp/cli.py"


@pytest.mark.parametrize("path", CUDA_CHECKED, ids=_rel)
def test_no_cuda_literals(path: Path) -> None:
    assert not cuda_mentions(path.read_text()), f"{_rel(path)} names CUDA; take the device from the tensors"


def test_checks_catch_violations() -> None:
    """The detectors themselves must fire on the forms they are meant to catch."""
    assert lightning_imports("import lightning.pytorch as pl") == [1]
    assert lightning_imports("x = 1\nfrom lightning.pytorch import Trainer") == [2]
    assert lightning_imports("import pytorch_lightning") == [1]
    assert lightning_imports("from avp.lit import x\nimport torch") == []
    assert cuda_mentions("x = t.cuda()") == [1]
    assert cuda_mentions("d = torch.device('cuda')") == [1]
    assert cuda_mentions('d = "cuda:0"') == [1]
    assert cuda_mentions("# .cuda() in a comment is fine") == []


LIGHTNING_FREE = ("avp.pipeline", "avp.eval.runner", "avp.eval.cli", "avp.checkpoints", "avp.models.avatar",
                  "avp.export.avatar", "avp.point_bank", "avp.benchmark_points")
"""Inference and evaluation: importing them (and all they import) must not load Lightning."""


def test_inference_and_evaluation_never_load_lightning() -> None:
    """Transitively, in a fresh interpreter: a lazy ``from avp.lit …`` anywhere under these would show up here."""
    import subprocess
    import sys

    code = (f"import sys\nfor m in {LIGHTNING_FREE!r}:\n    __import__(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING_MODULES!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]", f"importing {LIGHTNING_FREE} loads {out.strip()}"


def _imported_modules(path: Path) -> list[str]:
    """Every absolute module an ``import`` / ``from … import`` in ``path`` names (lazy ones included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_pipeline_takes_no_framing_from_synthetic_data() -> None:
    """The camera framing lives in :mod:`avp.head.framing`, shared by the data generator and the pipeline."""
    imported = _imported_modules(PACKAGE / "pipeline.py")
    assert not [m for m in imported if m.startswith("avp.data")], imported


# -------------------------------------------------------------------------------- layers (docs/ARCHITECTURE.md)

ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
LAYERS_MARKER = "<!-- layers:"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_layers(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The layer table after the ``<!-- layers:`` marker: ``(module -> layer, layer -> layers it may import)``.

    Rows are ``| layer | `module`, `module` | layer, layer |``; the header and the ``|---|`` rule are skipped and the
    table ends at the first line that is not a row."""
    lines = text.split(LAYERS_MARKER, 1)[1].splitlines()[1:]
    layer_of: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in lines:
        if not line.startswith("|"):
            break
        layer, modules, may_import = _cells(line)
        if layer.lower() == "layer" or set(layer) <= {"-", ":"}:
            continue
        for module in re.findall(r"`([^`]+)`", modules):
            if module in layer_of:
                raise ValueError(f"ARCHITECTURE.md: {module!r} is in layers {layer_of[module]!r} and {layer!r}")
            layer_of[module] = layer
        allowed[layer] = {name.strip() for name in may_import.split(",") if name.strip()}
    unknown = {n for names in allowed.values() for n in names} - set(allowed)
    if unknown:
        raise ValueError(f"ARCHITECTURE.md: 'may import' names layers that have no row: {sorted(unknown)}")
    return layer_of, allowed


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def avp_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of an ``avp`` module in ``path`` (its text, or ``source``; lazy imports
    included, relative ones resolved, ``from avp import x`` counted as ``avp.x``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "avp":
                found += [(node.lineno, f"avp.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, m) for line, m in found if m == "avp" or m.startswith("avp.")]


def _part(module: str) -> str:
    """The top-level part of ``avp`` a module belongs to (``avp.models.decoder`` -> ``models``; the package root
    -> ``avp``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "avp"


def layer_violations(path: Path, layer_of: dict[str, str], allowed: dict[str, set[str]],
                     source: str | None = None) -> list[str]:
    """What ``path`` (or ``source`` as if it were that file) imports against the table:
    ``"<file>:<line> (<layer>) imports <module> (<layer>); …"``."""
    own = _part(_module_name(path))
    mine = layer_of[own]
    bad = []
    for line, module in avp_imports(path, source):
        part = _part(module)
        if part == own:
            continue
        theirs = layer_of.get(part)
        if theirs is None:
            bad.append(f"{_rel(path)}:{line} imports {module}, whose part {part!r} is in no layer of ARCHITECTURE.md")
        elif theirs not in allowed[mine]:
            bad.append(f"{_rel(path)}:{line} ({mine}) imports {module} ({theirs}); {mine} may import only "
                       f"{', '.join(sorted(allowed[mine]))}")
    return bad


LAYER_OF, LAYERS_ALLOWED = parse_layers(ARCHITECTURE.read_text())


def test_every_part_of_the_package_has_a_layer_and_every_layer_entry_exists() -> None:
    parts = {_part(_module_name(p)) for p in _sources()}
    missing = sorted(parts - set(LAYER_OF))
    assert not missing, f"add {missing} to a row of the layer table in docs/ARCHITECTURE.md"
    stale = sorted(set(LAYER_OF) - parts)
    assert not stale, f"docs/ARCHITECTURE.md's layer table names {stale}, which are not in avp/"


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_imports_follow_the_layers(path: Path) -> None:
    bad = layer_violations(path, LAYER_OF, LAYERS_ALLOWED)
    assert not bad, "forbidden imports (docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_layer_checks_catch_violations(tmp_path: Path) -> None:
    """The parser reads a table like the document's, and a model importing the sampler above it, a relative import
    or a ``from avp import x`` of a higher layer are all caught, naming the file and the import."""
    layer_of, allowed = parse_layers("x\n<!-- layers: t -->\n| Layer | Modules | May import |\n|---|---|---|\n"
                                     "| low | `types`, `models` | low |\n| high | `lit` | low, high |\n\nafter\n")
    assert layer_of == {"types": "low", "models": "low", "lit": "high"}
    assert allowed == {"low": {"low"}, "high": {"low", "high"}}
    probe = PACKAGE / "models" / "_boundary_probe.py"  # never written: its text is passed in
    source = ("import torch\nfrom avp.types import X\nfrom avp.lit.decoder import D\nfrom ..lit import y\n"
              "from . import layers\ndef f():\n    from avp import lit\n")
    assert [m for _, m in avp_imports(probe, source)] == ["avp.types", "avp.lit.decoder", "avp.lit", "avp.models",
                                                         "avp.lit"]
    bad = layer_violations(probe, layer_of, allowed, source)
    assert len(bad) == 3 and all(b.startswith("models/_boundary_probe.py:") for b in bad), bad
    assert "imports avp.lit.decoder (high)" in bad[0]
    with pytest.raises(ValueError, match="no row"):
        parse_layers("<!-- layers: -->\n| a | `x` | b |\n")
