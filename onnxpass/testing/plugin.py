"""pytest plugin (installed with onnxpass): collects ``*.golden`` files as tests and adds
``--update-goldens`` to rewrite their expected sections after a deliberate change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from onnxpass.testing.golden import GoldenMismatch, check_golden


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite the expected section of .golden files from the actual output")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".golden":
        return GoldenFile.from_parent(parent, path=file_path)
    return None


class GoldenFile(pytest.File):
    def collect(self) -> Iterator[GoldenItem]:
        yield GoldenItem.from_parent(self, name=self.path.stem)


class GoldenItem(pytest.Item):
    def runtest(self) -> None:
        check_golden(self.path, update=bool(self.config.getoption("--update-goldens")))

    def repr_failure(self, excinfo, style=None):  # type: ignore[no-untyped-def]
        if isinstance(excinfo.value, GoldenMismatch):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"golden: {self.path.name}"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str | Path], None]:
    """``golden(path)`` checks one golden file from a Python test (honours --update-goldens)."""
    update = bool(request.config.getoption("--update-goldens"))
    return lambda path: check_golden(path, update=update)
