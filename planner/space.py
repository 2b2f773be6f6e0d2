"""The search space: candidate layouts on a GPU budget, and the memory-fit filter.

A ``Candidate`` is one layout the search may simulate: a disaggregated pair of pools (prefill
instances × TP, decode instances × TP, their batch limits) or a colocated pool (instances × TP,
policy, chunk size, batch limit). ``enumerate_candidates`` lists every layout of the grid that
uses at most the GPU budget, in a fixed order (so candidate ids are stable); ``memory_fit``
prices each role's instance (latency model + KV capacity) or says why it does not fit.

Prefill pools always chunk at their token budget (``chunk_tokens = max_batch_tokens``), as
SGLang's prefill servers do with ``--chunked-prefill-size``: a prompt longer than one batch is
split instead of rejected.

The grid's ``tps`` are instance *widths* (GPUs per instance, the keys of the profile set): a width
whose profile runs pipeline parallelism (``pps``; ``pdplan.profiles.layouts`` offers it only to
models that need more than a node) becomes pools of ``tp = width / pp`` and ``pp`` stages, so
every count of GPUs is ``instances × tp × pp``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pdplan.profiles.errors import ConfigError, ProfileError, choices_error
from pdplan.profiles.profile import Profile
from pdplan.sim.cluster import (
    ColocatedCluster,
    ColocatedPool,
    DecodePool,
    DisaggregatedCluster,
    InstanceCost,
    KvLink,
    PrefillPool,
)
from pdplan.sim.costs import instance_cost

MODES = ("disaggregated", "colocated")
POLICY_PREFILL_FIRST = "prefill-first"
POLICY_CHUNKED = "chunked"
#: Candidate layouts one search takes (the default grid reaches it near 137 GPUs, so a 128-GPU budget fits;
#: a 64-GPU search took 254 s on 1 worker at load 10): a larger space is refused up front.
MAX_CANDIDATES = 200_000


@dataclass(frozen=True)
class SpaceGrid:
    """The batch limits the search tries for every instance count and TP.

    Defaults: prefill token budgets around SGLang's chunked-prefill default (8192 on 80 GB GPUs);
    decode batch caps around vLLM's ``max_num_seqs`` default (256); colocated chunk sizes from
    Sarathi-Serve's range (512-2048 tokens, Agrawal et al., OSDI 2024) plus vLLM's unchunked
    prefill-first scheduler with an 8192-token step.
    """

    prefill_max_batch_tokens: tuple[int, ...] = (4096, 16384)
    prefill_max_batch_size: int = 64
    decode_max_batch_size: tuple[int, ...] = (128, 256, 512)
    colocated_max_batch_size: tuple[int, ...] = (128, 256)
    colocated_chunk_tokens: tuple[int, ...] = (512, 2048)
    colocated_prefill_first_tokens: tuple[int, ...] = (8192,)
    tps: tuple[int, ...] = (1, 2, 4, 8)  # the search narrows this to the TPs it has profiles for
    #: (width, pp) for the widths whose instances run ``pp`` pipeline stages (the rest: pp = 1)
    pps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "prefill_max_batch_tokens",
            "decode_max_batch_size",
            "colocated_max_batch_size",
            "colocated_chunk_tokens",
            "colocated_prefill_first_tokens",
            "tps",
        ):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ConfigError(f"search grid {name}={values!r}; expected integers ≥ 1")
        if self.prefill_max_batch_size < 1:
            raise ConfigError(
                f"search grid prefill_max_batch_size={self.prefill_max_batch_size!r}; expected ≥ 1"
            )
        for width, pp in self.pps:
            if not (isinstance(pp, int) and pp >= 1 and isinstance(width, int) and width % pp == 0):
                raise ConfigError(
                    f"search grid pps: width {width!r} with pp={pp!r}; expected pp dividing width"
                )

    def split(self, width: int) -> tuple[int, int]:
        """(tp, pp) of an instance of ``width`` GPUs."""
        pp = dict(self.pps).get(width, 1)
        return width // pp, pp


@dataclass(frozen=True)
class Candidate:
    """One layout. Exactly the pools of its ``mode`` are set."""

    candidate_id: str
    mode: str
    prefill: PrefillPool | None = None
    decode: DecodePool | None = None
    colocated: ColocatedPool | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise choices_error("mode", self.mode, MODES)
        disagg = self.prefill is not None and self.decode is not None and self.colocated is None
        colo = self.colocated is not None and self.prefill is None and self.decode is None
        assert disagg if self.mode == "disaggregated" else colo, f"pools do not match mode {self.mode}"

    @property
    def gpus(self) -> int:
        if self.colocated is not None:
            return self.colocated.gpus
        assert self.prefill is not None and self.decode is not None
        return self.prefill.gpus + self.decode.gpus

    @property
    def tps(self) -> tuple[int, ...]:
        """The instance widths (GPUs per instance, ``tp × pp``; the TP when there is no pipeline)
        this layout needs profiles for (distinct, sorted)."""
        if self.colocated is not None:
            return (self.colocated.width,)
        assert self.prefill is not None and self.decode is not None
        return tuple(sorted({self.prefill.width, self.decode.width}))

    @property
    def shape(self) -> str:
        """Instance counts and TP, e.g. ``2P:1D (TP1)``, ``3P (TP2) : 2D (TP1)``, ``4× (TP1)``,
        ``1P:1D (TP8×PP2)``."""
        if self.colocated is not None:
            return f"{self.colocated.instances}× ({_par(self.colocated)})"
        assert self.prefill is not None and self.decode is not None
        p, d = self.prefill, self.decode
        if (p.tp, p.pp) == (d.tp, d.pp):
            return f"{p.instances}P:{d.instances}D ({_par(p)})"
        return f"{p.instances}P ({_par(p)}) : {d.instances}D ({_par(d)})"

    @property
    def limits(self) -> str:
        """The batch limits, short: ``chunked 2048, batch ≤256`` or ``P 8192 tok, D batch ≤256``."""
        if self.colocated is not None:
            c = self.colocated
            step = c.chunk_tokens if c.policy == POLICY_CHUNKED else c.max_batch_tokens
            return f"{c.policy} {step}, batch ≤{c.max_batch_size}"
        assert self.prefill is not None and self.decode is not None
        return f"P {self.prefill.max_batch_tokens} tok, D batch ≤{self.decode.max_batch_size}"

    @property
    def pools(self) -> dict[str, PrefillPool | DecodePool | ColocatedPool]:
        """The pools by role (``prefill``/``decode`` or ``colocated``)."""
        if self.colocated is not None:
            return {"colocated": self.colocated}
        assert self.prefill is not None and self.decode is not None
        return {"prefill": self.prefill, "decode": self.decode}

    @property
    def instances(self) -> dict[str, int]:
        """Instance count per role (``prefill``/``decode`` or ``colocated``)."""
        if self.colocated is not None:
            return {"colocated": self.colocated.instances}
        assert self.prefill is not None and self.decode is not None
        return {"prefill": self.prefill.instances, "decode": self.decode.instances}

    def unit(self) -> Candidate:
        """The same TP and limits with one instance per role and no id: what per-instance
        quantities (bounds, latency floors) depend on, so they can be cached across counts."""
        if self.colocated is not None:
            return Candidate("", self.mode, colocated=replace(self.colocated, instances=1))
        assert self.prefill is not None and self.decode is not None
        return Candidate(
            "",
            self.mode,
            prefill=replace(self.prefill, instances=1),
            decode=replace(self.decode, instances=1),
        )

    @property
    def label(self) -> str:
        """``mode shape``, e.g. ``disaggregated 2P:1D (TP1)``, ``colocated 4× (TP1)``."""
        return f"{self.mode} {self.shape}"

    @property
    def description(self) -> str:
        """Label and limits, e.g. ``colocated 4× (TP1), chunked 2048, batch ≤256``."""
        return f"{self.label}, {self.limits}"

    def row(self) -> dict[str, Any]:
        """The layout columns of ``candidates.csv`` (None where a column does not apply)."""
        out: dict[str, Any] = {
            "candidate_id": self.candidate_id,
            "mode": self.mode,
            "prefill_instances": None,
            "prefill_tp": None,
            "prefill_pp": None,
            "decode_instances": None,
            "decode_tp": None,
            "decode_pp": None,
            "colocated_instances": None,
            "colocated_tp": None,
            "colocated_pp": None,
            "policy": None,
            "max_batch_size": None,
            "max_batch_tokens": None,
            "chunk_tokens": None,
            "gpus": self.gpus,
        }
        if self.colocated is not None:
            c = self.colocated
            out.update(
                colocated_instances=c.instances,
                colocated_tp=c.tp,
                colocated_pp=c.pp,
                policy=c.policy,
                max_batch_size=c.max_batch_size,
                max_batch_tokens=c.max_batch_tokens,
                chunk_tokens=c.chunk_tokens if c.policy == POLICY_CHUNKED else None,
            )
        else:
            assert self.prefill is not None and self.decode is not None
            out.update(
                prefill_instances=self.prefill.instances,
                prefill_tp=self.prefill.tp,
                prefill_pp=self.prefill.pp,
                decode_instances=self.decode.instances,
                decode_tp=self.decode.tp,
                decode_pp=self.decode.pp,
                max_batch_size=self.decode.max_batch_size,
                max_batch_tokens=self.prefill.max_batch_tokens,
                chunk_tokens=self.prefill.chunk_tokens,
            )
        return out


def _par(pool: PrefillPool | DecodePool | ColocatedPool) -> str:
    return f"TP{pool.tp}" + (f"×PP{pool.pp}" if pool.pp > 1 else "")


def enumerate_candidates(
    max_gpus: int, *, modes: Sequence[str] = MODES, grid: SpaceGrid = SpaceGrid(), min_gpus: int = 1
) -> list[Candidate]:
    """Every layout of ``grid`` with ``min_gpus`` ≤ GPUs ≤ ``max_gpus``, ids ``c0000``, ``c0001`` …

    Order: disaggregated before colocated; then TP (prefill, decode), instance counts, limits —
    fixed, so the same arguments always give the same ids.

    Raises:
        ConfigError: ``max_gpus`` < 1 or an unknown mode.
    """
    if not isinstance(max_gpus, int) or max_gpus < 1:
        raise ConfigError(f"--gpus {max_gpus!r}; expected an integer ≥ 1")
    for mode in modes:
        if mode not in MODES:
            raise choices_error("--mode", mode, MODES)
    count = count_candidates(max_gpus, modes=modes, grid=grid)
    if count > MAX_CANDIDATES:
        largest = max_gpus
        while largest > 1 and count_candidates(largest, modes=modes, grid=grid) > MAX_CANDIDATES:
            largest = largest // 2 if largest > 4096 else largest - max(1, largest // 64)
        raise ConfigError(
            f"a budget of {max_gpus} GPUs gives {'over ' if max_gpus > 10**6 else ''}{count:.3g} candidate "
            "layouts; the search takes at most "
            f"{MAX_CANDIDATES} (about {largest} GPUs with this grid): give a smaller --gpus, a lower "
            "--rate, or one --mode"
        )
    shapes: list[tuple[str, dict[str, Any]]] = []
    if "disaggregated" in modes:
        shapes += [("disaggregated", s) for s in _disaggregated(max_gpus, grid)]
    if "colocated" in modes:
        shapes += [("colocated", s) for s in _colocated(max_gpus, grid)]
    out: list[Candidate] = []
    for mode, pools in shapes:
        if sum(pool.gpus for pool in pools.values()) >= min_gpus:
            out.append(Candidate(f"c{len(out):04d}", mode, **pools))
    return out


def count_candidates(max_gpus: int, *, modes: Sequence[str] = MODES, grid: SpaceGrid = SpaceGrid()) -> int:
    """How many layouts ``enumerate_candidates`` would list, in closed form (no enumeration).

    Budgets above 10⁶ GPUs are counted as 10⁶ (already far beyond any search): a lower bound.
    """
    import numpy as np

    max_gpus = min(max_gpus, 10**6)
    total = 0
    if "disaggregated" in modes:
        limits = len(grid.prefill_max_batch_tokens) * len(grid.decode_max_batch_size)
        for p_tp in grid.tps:
            for d_tp in grid.tps:
                p_n = np.arange(1, max(0, (max_gpus - d_tp) // p_tp) + 1, dtype=np.int64)
                total += int(((max_gpus - p_n * p_tp) // d_tp).sum()) * limits
    if "colocated" in modes:
        per_batch = len(grid.colocated_chunk_tokens) + len(grid.colocated_prefill_first_tokens)
        limits = len(grid.colocated_max_batch_size) * per_batch
        total += sum(max_gpus // tp for tp in grid.tps) * limits
    return total


def _disaggregated(max_gpus: int, grid: SpaceGrid) -> list[dict[str, Any]]:
    out = []
    for p_w in grid.tps:  # widths: GPUs per instance
        p_tp, p_pp = grid.split(p_w)
        for d_w in grid.tps:
            d_tp, d_pp = grid.split(d_w)
            for p_n in range(1, (max_gpus - d_w) // p_w + 1):
                for d_n in range(1, (max_gpus - p_n * p_w) // d_w + 1):
                    for tokens in grid.prefill_max_batch_tokens:
                        for batch in grid.decode_max_batch_size:
                            out.append(
                                {
                                    "prefill": PrefillPool(
                                        p_n, p_tp, tokens, grid.prefill_max_batch_size, tokens, pp=p_pp
                                    ),
                                    "decode": DecodePool(d_n, d_tp, batch, pp=d_pp),
                                }
                            )
    return out


def _colocated(max_gpus: int, grid: SpaceGrid) -> list[dict[str, Any]]:
    out = []
    for width in grid.tps:
        tp, pp = grid.split(width)
        for n in range(1, max_gpus // width + 1):
            for batch in grid.colocated_max_batch_size:
                for chunk in grid.colocated_chunk_tokens:
                    pool = ColocatedPool(n, tp, POLICY_CHUNKED, batch, max(chunk, 8192), chunk, pp=pp)
                    out.append({"colocated": pool})
                for tokens in grid.colocated_prefill_first_tokens:
                    pool = ColocatedPool(n, tp, POLICY_PREFILL_FIRST, batch, tokens, min(tokens, 2048), pp=pp)
                    out.append({"colocated": pool})
    return out


# --- memory fit ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fit:
    """Each role's instance cost (``prefill``/``decode`` or ``colocated``), or why a role cannot
    run (``does not fit in memory: …`` when weights and activations leave no room for KV)."""

    costs: Mapping[str, InstanceCost] = field(default_factory=dict)
    reason: str = ""

    @property
    def fits(self) -> bool:
        return not self.reason


class CostCache:
    """``InstanceCost`` per (instance width, step tokens, batch size): one KV-capacity computation
    per key; ``profiles`` are keyed by width (``tp × pp``).

    ``unfit`` maps a TP whose profile could not be built to the reason (``does not fit in memory:
    …``, or why that TP cannot shard the model).
    """

    def __init__(self, profiles: Mapping[int, Profile], unfit: Mapping[int, str] | None = None) -> None:
        self.profiles = dict(profiles)
        self.unfit = dict(unfit or {})
        self._costs: dict[tuple[int, int, int], InstanceCost | str] = {}

    def cost(self, tp: int, step_tokens: int, batch_size: int) -> InstanceCost | str:
        key = (tp, step_tokens, batch_size)
        if key not in self._costs:
            self._costs[key] = self._price(tp, step_tokens, batch_size)
        return self._costs[key]

    def _price(self, tp: int, step_tokens: int, batch_size: int) -> InstanceCost | str:
        if tp not in self.profiles:
            return self.unfit.get(tp, f"no profile at tp={tp}")
        try:
            return instance_cost(self.profiles[tp], max_step_tokens=step_tokens, max_batch_size=batch_size)
        except ProfileError as err:
            return f"does not fit in memory: {err}"


def memory_fit(candidate: Candidate, cache: CostCache) -> Fit:
    """Price each role of ``candidate``; a role that leaves no room for KV makes it not fit."""
    if candidate.colocated is not None:
        c = candidate.colocated
        roles = {"colocated": cache.cost(c.width, c.step_tokens, c.max_batch_size)}
    else:
        assert candidate.prefill is not None and candidate.decode is not None
        p, d = candidate.prefill, candidate.decode
        roles = {
            "prefill": cache.cost(p.width, p.step_tokens, p.max_batch_size),
            "decode": cache.cost(d.width, d.max_batch_size, d.max_batch_size),
        }
    for role, cost in roles.items():
        if isinstance(cost, str):
            return Fit(reason=f"{cost} ({role})")
    return Fit(costs={role: cost for role, cost in roles.items() if isinstance(cost, InstanceCost)})


def build_cluster(
    candidate: Candidate, fit: Fit, link: KvLink, *, kv_bytes_per_token: int, num_layers: int
) -> DisaggregatedCluster | ColocatedCluster:
    """The cluster ``simulate`` takes, from a candidate that fits (costs already priced)."""
    assert fit.fits, "only a candidate that fits is simulated"
    if candidate.colocated is not None:
        return ColocatedCluster(candidate.colocated, fit.costs["colocated"])
    assert candidate.prefill is not None and candidate.decode is not None
    return DisaggregatedCluster(
        prefill=candidate.prefill,
        decode=candidate.decode,
        link=link,
        prefill_cost=fit.costs["prefill"],
        decode_cost=fit.costs["decode"],
        kv_bytes_per_token=kv_bytes_per_token,
        num_layers=num_layers,
    )
