"""Token choice: greedy is the argmax, top-k 1 and a tiny top-p are greedy too, seeds reproduce draws,
and sampling never picks a token outside the top-k / top-p set."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pdplan.realrun.protocol import SamplingParams  # noqa: E402
from pdplan.realrun.sampler import sample  # noqa: E402


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_forms_take_the_argmax() -> None:
    logits = torch.randn(3, 50, generator=_gen(1))
    params = [
        SamplingParams(4, temperature=0.0),
        SamplingParams(4, temperature=1.0, top_k=1),
        SamplingParams(4, temperature=1.0, top_p=1e-6),
    ]
    assert sample(logits, params, [_gen()] * 3) == logits.argmax(-1).tolist()


def test_seeded_draws_repeat_and_stay_inside_top_k_and_top_p() -> None:
    logits = torch.randn(1, 100, generator=_gen(2))
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    params = [SamplingParams(4, temperature=1.5, top_k=5)]
    draws = [sample(logits, params, [_gen(s)])[0] for s in range(40)]
    assert set(draws) <= top5 and len(set(draws)) > 1
    assert draws == [sample(logits, params, [_gen(s)])[0] for s in range(40)]
    probs = torch.softmax(logits[0], -1)
    order = torch.argsort(probs, descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    nucleus_draws = {sample(logits, [SamplingParams(4, top_p=0.5)], [_gen(s)])[0] for s in range(40)}
    assert nucleus_draws <= nucleus
