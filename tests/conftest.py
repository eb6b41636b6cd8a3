"""Shared test set-up: offline, small thread count, reports into a temporary folder."""

from __future__ import annotations

import os

# Nothing in the tests may wait for a hub (see README: offline by default).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FTCOURSE_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    """tiny-lm and its tokenizer, loaded once per test module (the LM chapters' tests)."""
    from ftcourse import models

    loaded = models.load("tiny-lm")
    return loaded.model.eval(), loaded.tokenizer


@pytest.fixture
def report_dir(tmp_path, monkeypatch):
    """A fresh ``$FTCOURSE_REPORT_DIR`` for one test."""
    folder = tmp_path / "reports"
    monkeypatch.setenv("FTCOURSE_REPORT_DIR", str(folder))
    return folder
