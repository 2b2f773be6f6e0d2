"""Running the search's candidates on a Ray cluster instead of local processes (``--executor ray``).

When a search space outgrows one machine (hardware lists × models × policies), the rate searches
of a wave can run as Ray tasks: ``--executor ray`` starts (or joins, with ``RAY_ADDRESS`` set) a
local Ray instance, ``--executor ray://HOST:PORT`` connects to a running cluster through Ray
Client. ``RayExecutor`` is a ``concurrent.futures.Executor`` — each ``submit`` becomes one remote
task whose ``ObjectRef.future()`` is returned — so the search's scheduler (``pdplan.planner.waves``)
is unchanged: decisions are taken per wave from what was known when it started and outcomes are
recorded in submission order, so the results are the same as with the local process pool, byte
for byte, whatever the cluster's size or timing. Ray is optional (``pip install 'pdplan[ray]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from pdplan.profiles.errors import ConfigError

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")


def check_executor(name: str) -> str:
    """``local``, ``ray`` or ``ray://HOST:PORT``.

    Raises:
        ConfigError: anything else, or ``ray`` when Ray is not installed.
    """
    if name == "local":
        return name
    if name != "ray" and not name.startswith("ray://"):
        raise ConfigError(f"--executor {name!r}; expected local, ray or ray://HOST:PORT")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor {name}: Ray is not installed (pip install 'pdplan[ray]')") from None
    return name


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """Submits each call as a Ray task (one CPU each). Starts Ray when it is not running yet, with
    ``workers`` CPUs for a local instance, and shuts down only what it started."""

    def __init__(self, address: str, workers: int) -> None:
        import ray

        self._started = not ray.is_initialized()
        if self._started:
            if address.startswith("ray://"):
                ray.init(address=address, log_to_driver=False)
            else:  # join RAY_ADDRESS when set, else start a local instance
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            log.info("ray: %s", ray.cluster_resources())
        self._remote = ray.remote(num_cpus=1)(_call)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._remote.remote(fn, *args, **kwargs).future()  # type: ignore[no-any-return]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
