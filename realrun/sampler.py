"""Next-token choice from logits: greedy, or temperature sampling with top-k and top-p (nucleus)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdplan.realrun.protocol import SamplingParams


def sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """One token per row of ``logits`` ``[rows, vocab]``.

    Greedy rows (temperature 0 or top-k 1) take the argmax; the others draw from
    softmax(logits / T) restricted to the top-k logits and then to the smallest set of tokens whose
    probability mass reaches top-p (Holtzman et al. 2020, "The Curious Case of Neural Text
    Degeneration"), with that row's generator.
    """
    assert logits.shape[0] == len(params) == len(generators), "one parameter set and generator per row"
    logits = logits.float()
    out = [int(t) for t in logits.argmax(dim=-1).tolist()]
    for i, p in enumerate(params):
        if p.is_greedy:
            continue
        row = logits[i] / p.temperature
        if p.top_k > 0:
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_row, order = torch.sort(row, descending=True)
            probs = torch.softmax(sorted_row, dim=-1)
            drop = probs.cumsum(-1) - probs > p.top_p  # the mass before this token already reaches top_p
            row = row.scatter(0, order[drop], float("-inf"))
        out[i] = int(torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generators[i]))
    return out
