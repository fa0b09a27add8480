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


def test_the_package_has_sources() -> None:
    assert len(_sources()) > 3


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_lightning_only_in_machinery(path: Path) -> None:
    if _rel(path).startswith(LIGHTNING_ALLOWED):
        return
    assert not lightning_imports(path.read_text()), f"{_rel(path)} imports Lightning outside avp/lit/ and avp/cli.py"


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_no_cuda_literals(path: Path) -> None:
    if _rel(path) in CUDA_ALLOWED:
        return
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
