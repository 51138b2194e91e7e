import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random ColorDiff model folder written by `colordiff init-model --tiny` (the user-facing path)."""
    from colordiff.cli import main

    path = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["init-model", str(path), "--tiny"]) == 0
    return path
