"""A tiny trained run shared by the serving tests (a real backbone, so a server process can load it)."""

from __future__ import annotations

import pytest

from tests.helpers.serving import train_tiny_run
from tests.helpers.tinyrun import write_tiny_dataset


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    data = write_tiny_dataset(root / "data")
    return train_tiny_run(data, root / "srgnn")
