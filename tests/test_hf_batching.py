"""The hf backend's batching in float32: a question's choices in one packed row score as they do one row
each, and greedy prompts decoded together generate what they generate one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mc_items import choices_picked, mc_requests
from qeval.backends import packing
from qeval.backends.base import GenerationRequest, LoglikelihoodRequest
from qeval.backends.hf import HFBackend, load_hf_model


def test_a_branch_sees_the_context_and_itself_only() -> None:
    requests = [LoglikelihoodRequest((1, 2, 3), (7, 8, 9)), LoglikelihoodRequest((1, 2, 3), (5,)),
                LoglikelihoodRequest((1, 2, 3), (4, 6))]
    row = packing.pack(requests)
    assert row.tokens == (1, 2, 3, 7, 8, 4)
    assert row.positions == (0, 1, 2, 3, 4, 3)  # each branch continues from the context's end
    assert row.predicting == ((2, 3, 4), (2,), (2, 5))
    other = packing.pack([LoglikelihoodRequest((1,), (2, 3)), LoglikelihoodRequest((1,), (4,))])
    b = packing.batch([row, other])
    assert b.input_ids.shape == (2, 6) and b.mask.shape == (2, 1, 6, 6)
    m = b.mask[0, 0]
    assert m[4].tolist() == [True, True, True, True, True, False]  # 8 sees the context, 7 and itself
    assert m[5].tolist() == [True, True, True, False, False, True]  # 4 sees the context and itself, not 7, 8
    assert not m[3, 4] and not m[2, 3]  # causal
    padding = b.mask[1, 0]
    assert padding[2:, :].sum() == 4 and all(padding[i, i] for i in range(6))  # padding queries: themselves only
    assert b.keep.tolist() == [0, 1, 2, 3, 4, 5]


def test_groups_take_shared_contexts_and_leave_the_rest() -> None:
    requests = [LoglikelihoodRequest((1, 2), (3,)), LoglikelihoodRequest((9,), (3,)),
                LoglikelihoodRequest((1, 2), (4, 5)), LoglikelihoodRequest((), (6,))]
    groups, rest = packing.shared_context_groups(requests, max_length=2048)
    assert groups == [[0, 2]] and rest == [1, 3]
    groups, rest = packing.shared_context_groups(requests, max_length=2)  # too long packed: one row each
    assert groups == [] and rest == [0, 1, 2, 3]


@pytest.mark.slow
def test_packed_scores_equal_one_row_each_on_the_real_model(qeval_model_dir: Path, qeval_tokenizer: Any) -> None:
    requests, owners = mc_requests(qeval_tokenizer, 12)  # the test task: four choices per question
    model = load_hf_model(qeval_model_dir, "float32")
    plain = HFBackend(model, qeval_tokenizer, share_context=False).loglikelihood(requests)
    backend = HFBackend(model, qeval_tokenizer)
    assert backend.share_context is None  # float32: on once checked
    packed = backend.loglikelihood(requests)
    assert backend.share_context is True
    worst = max(abs(a - b) for p, q in zip(plain, packed) for a, b in zip(p.token_logprobs, q.token_logprobs))
    assert worst < 1e-3
    assert [p.is_greedy for p in plain] == [q.is_greedy for q in packed]
    assert choices_picked(plain, owners) == choices_picked(packed, owners)


@pytest.mark.slow
def test_batched_greedy_generation_equals_one_at_a_time(qeval_model_dir: Path, qeval_tokenizer: Any) -> None:
    from mc_items import fixture_docs

    docs = fixture_docs()[:10]
    requests = [GenerationRequest(prompt=d["input"], max_tokens=12, stop=("\n",), temperature=0.0) for d in docs]
    requests.append(GenerationRequest(prompt=docs[0]["input"], max_tokens=2, stop=(), temperature=0.0))  # budget
    model = load_hf_model(qeval_model_dir, "float32")
    alone = HFBackend(model, qeval_tokenizer, batch_generation=False).generations(requests)
    backend = HFBackend(model, qeval_tokenizer, batch_size=4)
    batched = backend.generations(requests)
    assert backend.batch_generation is True
    assert batched == alone
    assert {g.finish for g in batched} >= {"stop", "length"}
    assert batched[-1].n_tokens == 2 and batched[-1].finish == "length"


@pytest.mark.slow
def test_bf16_keeps_one_row_per_request_and_one_generation_at_a_time(qeval_model_dir: Path,
                                                                    qeval_tokenizer: Any) -> None:
    backend = HFBackend(load_hf_model(qeval_model_dir, "bfloat16"), qeval_tokenizer)
    assert backend.share_context is False and backend.batch_generation is False
    assert backend.model.dtype == torch.bfloat16
