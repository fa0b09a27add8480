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
