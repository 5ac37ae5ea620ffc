"""Shared-context scoring: the choices of one question in one packed row.

lm-eval scores a multiple-choice question as one (context, continuation) request per choice, and a
plain forward pass computes the shared context once per choice. A packed row holds the context once,
then each choice's tokens as its own branch: a branch's tokens sit at the positions they would have
after the context (`position_ids`) and attend to the context and to their own branch only (a 4-D
attention mask), so each choice's log-probabilities are those of its own request up to float rounding.
On a CPU, where scoring is compute-bound, a three-choice question with a long context costs about a
third. Written here because lm-eval's HF model and transformers have no such scorer (lm-eval shares
a context only for one-token continuations).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from qeval.backends.base import LoglikelihoodRequest


@dataclass(frozen=True)
class PackedRow:
    """One context and its continuations in one row.

    Attributes:
        tokens: the context, then each continuation but its last token (a branch).
        positions: each token's position as in its own request.
        branch: -1 for the context, else the continuation it belongs to.
        continuations: the scored tokens of each request.
        predicting: per continuation, the row positions whose next-token distribution scores its tokens
            (the context's last token, then the branch's own tokens).
    """

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    branch: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    predicting: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]
    mask: torch.Tensor  # [rows, 1, width, width] bool: True where a query may attend to a key
    keep: torch.Tensor  # the row positions whose logits are needed, sorted


def shared_context_groups(requests: Sequence[LoglikelihoodRequest],
                          max_length: int) -> tuple[list[list[int]], list[int]]:
    """Indices of requests grouped by identical context (groups of two or more that fit in `max_length`
    packed), and the indices of the rest (scored one row each, truncation included)."""
    by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(requests):
        by_context[r.context_tokens].append(i)
    groups, rest = [], []
    for context, members in by_context.items():
        packed = len(context) + sum(len(requests[i].continuation_tokens) - 1 for i in members)
        if (len(members) > 1 and context and packed <= max_length
                and all(requests[i].continuation_tokens for i in members)):
            groups.append(members)
        else:
            rest.extend(members)
    # Longest packed row first: rows of similar width batch together with little padding.
    groups.sort(key=lambda g: -(len(requests[g[0]].context_tokens)
                                + sum(len(requests[i].continuation_tokens) - 1 for i in g)))
    return groups, sorted(rest)


def pack(requests: Sequence[LoglikelihoodRequest]) -> PackedRow:
    """One row for requests that share their context."""
    context = requests[0].context_tokens
    tokens, positions, branch = list(context), list(range(len(context))), [-1] * len(context)
    predicting = []
    for b, r in enumerate(requests):
        cont = r.continuation_tokens
        first = len(tokens)
        tokens.extend(cont[:-1])
        positions.extend(range(len(context), len(context) + len(cont) - 1))
        branch.extend([b] * (len(cont) - 1))
        predicting.append((len(context) - 1, *range(first, first + len(cont) - 1)))
    return PackedRow(tuple(tokens), tuple(positions), tuple(branch),
                     tuple(r.continuation_tokens for r in requests), tuple(predicting))


def batch(rows: Sequence[PackedRow]) -> PackedBatch:
    """Right-padded tensors for a forward pass; a padding query attends to itself only (no empty row)."""
    width = max(len(r.tokens) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for n, row in enumerate(rows):
        length = len(row.tokens)
        ids[n, :length] = torch.tensor(row.tokens)
        pos[n, :length] = torch.tensor(row.positions)
        b = torch.tensor(row.branch)
        same = (b[None, :] == -1) | (b[None, :] == b[:, None])
        mask[n, 0, :length, :length] = same & causal[:length, :length]
        idle = torch.arange(length, width)
        mask[n, 0, idle, idle] = True
    keep = sorted({p for r in rows for positions in r.predicting for p in positions})
    return PackedBatch(ids, pos, mask, torch.tensor(keep, dtype=torch.long))


def tolerance(dtype: torch.dtype) -> float:
    """How far a packed score may lie from the one-row score before the packing counts as broken: float
    rounding of a different batch shape (about 1e-5 in float32; bf16 keeps 8 bits of mantissa)."""
    return 1e-3 if dtype == torch.float32 else 1.0
