"""``python -m pdplan.realrun.targets.standin <sglang.launch_server flags>``: pdplan's own worker in
place of an SGLang server, so a ``--target sglang`` launch can run end to end where SGLang or GPUs are
absent (``pdplan deploy --target sglang --execute --stand-in``, and the tests).

The worker speaks SGLang's PD protocol, so the production router fronts it unchanged. Flags map as
``pdplan deploy --target local`` maps a plan: ``--disaggregation-mode`` → ``--role``,
``--max-running-requests`` → ``--max-batch-size``, the prefill token budget (``--chunked-prefill-size``
when chunking, else ``--max-prefill-tokens``; the local runtime does not split prompts) →
``--max-batch-tokens``, ``--max-total-tokens`` → ``--max-kv-tokens``. Flags that only matter on a GPU
engine (memory fraction, GPU ids, transfer backend, metrics) are logged as not applied. The stand-in
runs one process per instance, so ``--tp-size`` other than 1, multi-node and DP/EP flags are refused
(exit 2), as the local target refuses them. Environment: ``PDPLAN_STANDIN_SEED``,
``PDPLAN_STANDIN_DEVICE`` (default cpu), ``PDPLAN_STANDIN_THREADS`` (default 1).
"""

from __future__ import annotations

import os
import sys

from pdplan.profiles.errors import DeployError
from pdplan.realrun.targets import flags

_NOT_APPLIED = (
    "--mem-fraction-static", "--base-gpu-id", "--disaggregation-transfer-backend", "--enable-metrics",
    "--served-model-name", "--trust-remote-code",
)  # fmt: skip
_REFUSED = (
    "--pp-size", "--dp-size", "--ep-size", "--enable-dp-attention", "--dist-init-addr", "--nnodes",
    "--node-rank", "--enable-hierarchical-cache", "--hicache-storage-backend",
)  # fmt: skip


def worker_argv(args: list[str]) -> list[str]:
    """The ``pdplan.realrun.worker`` command equivalent to SGLang flags ``args``.

    Raises:
        DeployError: a flag outside the SGLang table, or one the stand-in cannot honour.
    """
    parent: list[str] = []
    if len(args) >= 2 and args[-2] == "--parent-pid":  # appended by pdplan's supervisor
        parent, args = args[-2:], args[:-2]
    given = dict((f, v[0] if v else "") for f, v in flags.flag_values(flags.SGLANG, args))
    refused = [f for f in _REFUSED if f in given]
    if refused or given.get("--tp-size", "1") != "1":
        raise DeployError(
            f"the stand-in runs one tp=1 process per instance; cannot honour {refused or ['--tp-size']}"
        )
    mode = given.get("--disaggregation-mode", "null")
    role = {"null": "colocated", "prefill": "prefill", "decode": "decode"}.get(mode)
    if role is None:
        raise DeployError(f"--disaggregation-mode {mode!r}: expected null, prefill or decode")
    chunk = int(given.get("--chunked-prefill-size", "-1"))
    tokens = chunk if chunk > 0 else int(given.get("--max-prefill-tokens", "16384"))
    argv = [sys.executable, "-m", "pdplan.realrun.worker", "--role", role, "--model", given["--model-path"]]
    argv += [
        "--name",
        f"standin-{role}",
        "--host",
        given.get("--host", "127.0.0.1"),
        "--port",
        given["--port"],
    ]
    argv += ["--max-batch-size", given.get("--max-running-requests", "32"), "--max-batch-tokens", str(tokens)]
    if "--max-total-tokens" in given:
        argv += ["--max-kv-tokens", given["--max-total-tokens"]]
    if role == "prefill":
        argv += ["--bootstrap-port", given.get("--disaggregation-bootstrap-port", "8998")]
    peers = os.environ.get("PDPLAN_STANDIN_PREFILL_PEERS")
    if role == "decode" and peers:  # a pdplan decode worker talks only to its deployment's prefills
        argv += ["--prefill-peers", peers]
    argv += ["--seed", os.environ.get("PDPLAN_STANDIN_SEED", "0")]
    argv += ["--device", os.environ.get("PDPLAN_STANDIN_DEVICE", "cpu")]
    argv += ["--threads", os.environ.get("PDPLAN_STANDIN_THREADS", "1")]
    return argv + parent


def main() -> None:
    args = sys.argv[1:]
    try:
        argv = worker_argv(args)
    except DeployError as err:
        print(f"pdplan stand-in: {err}", file=sys.stderr)
        sys.exit(2)
    ignored = [f for f in _NOT_APPLIED if f in args]
    if ignored:
        print(
            f"pdplan stand-in: not applied on pdplan's worker: {' '.join(ignored)}",
            file=sys.stderr,
            flush=True,
        )
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
