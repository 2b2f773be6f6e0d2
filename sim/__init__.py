"""pdplan.sim: workloads, the SimPy simulator of disaggregated and colocated clusters, records and
summaries. No file or network I/O and no global state: values in, values out.

Typical use::

    requests = draw_requests(workload)                      # or a trace parser
    cluster = disaggregated_cluster(prefill, decode, link, (prefill_profile, decode_profile))
    result = simulate(requests, cluster, SimOptions(router="least_loaded"))
    summary = summarize(result.records.columns(), slo_ms={"ttft": 1000}, utilisation=result.utilisation)
"""

# First: from here on the simulator's hot modules load compiled where built (``pdplan.sim.compiled``).
import pdplan.sim.compiled  # noqa: F401

# isort: split

from pdplan.sim.cluster import (
    ColocatedCluster,
    ColocatedPool,
    DecodePool,
    DisaggregatedCluster,
    InstanceCost,
    KvLink,
    PrefillPool,
)
from pdplan.sim.costs import (
    DEFAULT_GPU_MEMORY_UTILISATION,
    colocated_cluster,
    disaggregated_cluster,
    instance_cost,
    kv_capacity_tokens,
)
from pdplan.sim.prefix import PrefixBlocks
from pdplan.sim.prefix_cache import CacheStats, CacheTier, PrefixCache
from pdplan.sim.records import REQUEST_COLUMNS, STATUS_NAMES, Records, SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import ROUTERS
from pdplan.sim.simulate import SimOptions, simulate
from pdplan.sim.summary import summarize
from pdplan.sim.timeseries import TIMESERIES_COLUMNS, timeseries
from pdplan.sim.traces import parse_azure, parse_canonical, parse_mooncake
from pdplan.sim.workload import Arrival, Lengths, Workload, draw_requests, workload_from_dict

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILISATION",
    "REQUEST_COLUMNS",
    "ROUTERS",
    "STATUS_NAMES",
    "TIMESERIES_COLUMNS",
    "Arrival",
    "CacheStats",
    "CacheTier",
    "ColocatedCluster",
    "ColocatedPool",
    "DecodePool",
    "DisaggregatedCluster",
    "InstanceCost",
    "KvLink",
    "Lengths",
    "PrefillPool",
    "PrefixBlocks",
    "PrefixCache",
    "Records",
    "Requests",
    "SimOptions",
    "SimResult",
    "Workload",
    "colocated_cluster",
    "disaggregated_cluster",
    "draw_requests",
    "instance_cost",
    "kv_capacity_tokens",
    "parse_azure",
    "parse_canonical",
    "parse_mooncake",
    "simulate",
    "summarize",
    "timeseries",
    "workload_from_dict",
]
