"""The coalesced decode gives exactly the records of the one-event-per-step reference."""

from __future__ import annotations

import numpy as np
import simcases as sc
from hypothesis import given, settings
from hypothesis import strategies as st
from stepped_reference import SteppedColocated, SteppedDecode

from pdplan.sim import DecodePool, KvLink, PrefillPool, Requests
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.disagg import Run

FIELDS = ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s", "status_code")


def _workload(rng: np.random.Generator, n: int, dyadic: bool) -> Requests:
    gaps = rng.exponential(rng.uniform(0.005, 0.2), n)
    arrival = np.cumsum(gaps) - gaps[0]
    if dyadic:  # arrivals on a 1/64 s grid: many exact ties with step boundaries
        arrival = np.floor(arrival * 64) / 64
    prompt = rng.integers(1, 400, n)
    output = rng.integers(1, rng.integers(2, 60), n)
    return Requests(arrival, prompt, output)


def _disagg(rng: np.random.Generator, dyadic: bool, admission: str = "reserve"):
    model = sc.dyadic_model() if dyadic else sc.random_model(rng)
    chunk = None if rng.random() < 0.5 else int(rng.integers(16, 300))
    return sc.disagg(
        model,
        prefill=PrefillPool(
            int(rng.integers(1, 4)),
            max_batch_tokens=int(rng.integers(400, 1200)),
            max_batch_size=int(rng.integers(1, 7)),
            chunk_tokens=chunk,
        ),
        # the stepped reference implements the conservative policy (test_preemption.py the other)
        decode=DecodePool(
            int(rng.integers(1, 4)), max_batch_size=int(rng.integers(1, 9)), admission=admission
        ),
        link=KvLink(
            float(rng.uniform(0.5, 50)),
            float(rng.uniform(0, 5)) if not dyadic else sc.LINK_MS,
            contention=str(rng.choice(["none", "per_instance", "shared"])),
            layerwise_overlap=bool(rng.random() < 0.3),
        ),
        kv_tokens=int(rng.integers(500, 3000)),
        kv_bytes_per_token=0 if dyadic else int(rng.integers(0, 200_000)),
        num_layers=int(rng.integers(1, 40)),
        decode_latency=None if dyadic else sc.random_model(rng),
    )


def _colocated(rng: np.random.Generator, dyadic: bool, admission: str = "reserve"):
    model = sc.dyadic_model() if dyadic else sc.random_model(rng)
    return sc.colocated(
        model,
        kv_tokens=int(rng.integers(500, 3000)),
        instances=int(rng.integers(1, 4)),
        policy=str(rng.choice(["prefill-first", "chunked"])),
        max_batch_size=int(rng.integers(1, 9)),
        max_batch_tokens=int(rng.integers(400, 1200)),
        chunk_tokens=int(rng.integers(4, 300)),
        admission=admission,
    )


def _assert_same(fast, slow):
    for name in FIELDS:
        a, b = getattr(fast.records, name), getattr(slow.records, name)
        assert np.array_equal(a, b, equal_nan=True), (
            name,
            np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b)))),
        )
    assert np.array_equal(fast.kv_start_s, slow.kv_start_s, equal_nan=True)
    assert np.array_equal(fast.transfer_end_s, slow.transfer_end_s, equal_nan=True)
    for role, busy in fast.busy_s.items():
        assert np.isclose(busy, slow.busy_s[role], rtol=1e-9, atol=1e-12)


def _compare(seed: int, n: int, dyadic: bool, colocated: bool, router: str):
    rng = np.random.default_rng(seed)
    reqs = _workload(rng, n, dyadic)
    if colocated:
        cluster = _colocated(rng, dyadic)
        fast = ColocatedRun(reqs, cluster, router, np.random.default_rng(seed)).run(None)
        slow = ColocatedRun(reqs, cluster, router, np.random.default_rng(seed), SteppedColocated).run(None)
    else:
        cluster = _disagg(rng, dyadic)
        fast = Run(reqs, cluster, router, np.random.default_rng(seed)).run(None)
        slow = Run(reqs, cluster, router, np.random.default_rng(seed), SteppedDecode).run(None)
    _assert_same(fast, slow)
    return fast


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    dyadic=st.booleans(),
    colocated=st.booleans(),
    router=st.sampled_from(["round_robin", "least_loaded", "random"]),
)
def test_coalesced_equals_stepped_reference(seed, n, dyadic, colocated, router):
    _compare(seed, n, dyadic, colocated, router)


def test_coalesced_equals_stepped_reference_under_load():
    # Long runs with large batches, so many joins land mid-run and many runs are cut.
    for seed, colocated in ((1, False), (2, True), (3, False), (4, True)):
        result = _compare(seed, 1500, dyadic=seed % 2 == 0, colocated=colocated, router="least_loaded")
        assert (result.records.status_code == 0).mean() > 0.5
