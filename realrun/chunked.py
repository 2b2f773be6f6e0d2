"""Chunked prefill: extend a request's KV cache with the next slice of its prompt.

A worker with ``--chunk-tokens N`` prefills long prompts in slices of at most N tokens per forward
(SGLang's ``--chunked-prefill-size``, vLLM's chunked prefill): each step packs up to N prompt
tokens, taken FIFO, finishing the head prompt's slice before the next prompt's; a prompt's first
token is sampled once its last slice ran. Attention of a slice sees every earlier position of its
own prompt (already in the cache) and, causally, its own tokens, so the result equals one whole-
prompt forward (``tests/realrun/test_chunked.py`` checks the logits and the cache).

This drives the executor's layer loop (``Executor._forward``) with its own attention callback, the
same way ``Executor.prefill`` and ``Executor.decode`` do.

:func:`mixed_forward` is a colocated worker's step under ``--schedule chunked``: the running
requests' decode tokens ride in the same forward as the prompt slices (Sarathi-Serve's stall-free
batching, vLLM V1's scheduler; what the simulator prices with ``StepCoef.mixed_s``), one forward
where a slice and a decode step would otherwise be two. A decode is a one-token slice whose query
sees its whole cache, so its logits equal ``Executor.decode``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pdplan.profiles.executor import Executor
from pdplan.profiles.kv_cache import KVCache


@torch.no_grad()
def prefill_chunks(executor: Executor, items: Sequence[tuple[Sequence[int], KVCache]]) -> torch.Tensor:
    """Run each ``(slice, cache)``: the slice's tokens follow the ``cache.length`` positions already
    in the cache (which must have room for them). Returns the logits of each slice's last token
    ``[len(items), vocab]``; every cache's ``length`` grows by its slice.

    Raises:
        ConfigError: an empty slice or a token id outside the vocabulary.
    """
    return mixed_forward(executor, items, [])


@torch.no_grad()
def mixed_forward(
    executor: Executor,
    items: Sequence[tuple[Sequence[int], KVCache]],
    decodes: Sequence[tuple[int, KVCache]],
) -> torch.Tensor:
    """One forward over prompt slices ``items`` (as :func:`prefill_chunks`) and decode tokens
    ``decodes`` (``(token, cache)``: the token at position ``cache.length``, as
    ``Executor.decode``; the cache grows if full). Returns the logits of each slice's last token,
    then of each decode token: ``[len(items) + len(decodes), vocab]``; every cache's ``length``
    grows by its tokens.

    Raises:
        ConfigError: an empty slice or a token id outside the vocabulary.
    """
    assert items or decodes, "at least one slice or decode"
    device = executor.device
    for chunk, cache in items:
        executor._check_tokens(chunk)
        assert cache.length + len(chunk) <= cache.capacity, "the cache must hold the whole prompt"
    if decodes:
        executor._check_tokens([t for t, _ in decodes])
        for _, cache in decodes:
            cache.reserve(cache.length + 1)
    lengths = [len(chunk) for chunk, _ in items]
    tokens = [t for chunk, _ in items for t in chunk] + [t for t, _ in decodes]
    ids = torch.tensor(tokens, dtype=torch.long, device=device)
    positions = torch.cat(
        [
            *(
                torch.arange(c.length, c.length + n, device=device)
                for (_, c), n in zip(items, lengths, strict=True)
            ),
            torch.tensor([c.length for _, c in decodes], dtype=torch.long, device=device),
        ]
    )
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    split = starts[-1]  # decode rows follow the slices' rows
    decode_past = [c.length for _, c in decodes]
    spec = executor.spec
    num_kv, d = spec.num_kv_heads, spec.head_dim
    group = spec.num_heads // num_kv

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(q.shape[0], q.shape[1] * q.shape[2], dtype=q.dtype, device=q.device)
        if decodes:  # as Executor.decode: append each key/value, one query per sequence, GQA folded
            dkeys = [c.k[layer] for _, c in decodes]
            dvalues = [c.v[layer] for _, c in decodes]
            torch._foreach_copy_(
                [kc[:, p] for kc, p in zip(dkeys, decode_past, strict=True)], k[split:].unbind(0)
            )
            torch._foreach_copy_(
                [vc[:, p] for vc, p in zip(dvalues, decode_past, strict=True)], v[split:].unbind(0)
            )
            queries = q[split:].reshape(len(decodes), 1, num_kv, group, d).unbind(0)
            outs = [
                F.scaled_dot_product_attention(qi, kc[None, :, : p + 1], vc[None, :, : p + 1])
                for qi, kc, vc, p in zip(queries, dkeys, dvalues, decode_past, strict=True)
            ]
            out[split:] = torch.cat(outs).view(len(decodes), -1)
        for i, (_, cache) in enumerate(items):
            lo, hi = starts[i], starts[i + 1]
            n, past = hi - lo, cache.length
            cache.k[layer, :, past : past + n].copy_(k[lo:hi].transpose(0, 1))
            cache.v[layer, :, past : past + n].copy_(v[lo:hi].transpose(0, 1))
            kc, vc = cache.k[layer, :, : past + n], cache.v[layer, :, : past + n]
            query = q[lo:hi].transpose(0, 1)[None]
            if past == 0:
                att = F.scaled_dot_product_attention(
                    query, kc[None], vc[None], is_causal=True, enable_gqa=True
                )
            else:  # query i sits at position past + i: it sees keys 0 .. past + i
                keys = torch.arange(past + n, device=q.device)
                mask = keys[None, :] <= (past + torch.arange(n, device=q.device))[:, None]
                att = F.scaled_dot_product_attention(
                    query, kc[None], vc[None], attn_mask=mask[None, None], enable_gqa=True
                )
            out[lo:hi] = att[0].transpose(0, 1).reshape(n, -1)
        return out

    hidden = executor._forward(ids, positions, attend)
    rows = [s - 1 for s in starts[1:]] + list(range(split, split + len(decodes)))
    logits = executor._logits(hidden[torch.tensor(rows, device=device)])
    for (_, cache), n in zip(items, lengths, strict=True):
        cache.length += n
    for _, cache in decodes:
        cache.length += 1
    return logits
