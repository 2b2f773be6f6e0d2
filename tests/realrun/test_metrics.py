"""A worker's Prometheus exposition (prometheus_client): cumulative buckets, labels, gauges read at
scrape time, and SGLang's metric names kept beside pdplan's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pdplan.realrun.metrics import WorkerMetrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_text() -> None:
    metrics = WorkerMetrics("decode", "tiny-llama")
    level = [3]
    metrics.gauge("queue_length", "waiting", lambda: level[0])
    metrics.observe("ttft_seconds", 0.003)
    metrics.observe("ttft_seconds", 0.2)
    metrics.inc("requests_total", label="ok")
    metrics.inc("kv_transfer_bytes_total", 1024, label="socket")
    metrics.inc("generated_tokens_total", 7)
    metrics.decode_step(4, 100, 0.02, 1.5e9, 3, cpu_s=0.015)
    metrics.prefill_batch([30, 12], [0, 4], 0.05, 0.04, 1.6e9)
    metrics.prefill_batch([8], [16], 0.03, 0.025, 1.7e9, decode_batch=3, decode_context=90)  # mixed
    level[0] = 5
    text = metrics.render()
    got = _samples(text)
    role = (("role", "decode"),)
    assert got[("pdplan_worker_queue_length", role)] == 5
    assert got[("pdplan_worker_ttft_seconds_bucket", (("le", "0.0025"), *role))] == 0
    assert got[("pdplan_worker_ttft_seconds_bucket", (("le", "0.005"), *role))] == 1
    assert got[("pdplan_worker_ttft_seconds_bucket", (("le", "+Inf"), *role))] == 2
    assert got[("pdplan_worker_ttft_seconds_count", role)] == 2
    assert got[("pdplan_worker_requests_total", (("role", "decode"), ("status", "ok")))] == 1
    assert got[("pdplan_worker_kv_transfer_bytes_total", (("path", "socket"), *role))] == 1024
    assert got[("pdplan_worker_generated_tokens_total", role)] == 7
    # The same facts under SGLang's names.
    model = (("model_name", "tiny-llama"),)
    assert got[("sglang:num_queue_reqs", model)] == 5
    assert got[("sglang:time_to_first_token_seconds_count", model)] == 2
    assert got[("sglang:generation_tokens_total", model)] == 7
    assert "# TYPE pdplan_worker_itl_seconds histogram" in text.splitlines()
    assert "_created" not in text
    assert metrics.recent_steps() == [(4, 100, 20.0, 1.5e9, 3, 15.0)]
    assert metrics.recent_prefills() == [
        ((30, 12), (0, 4), 50.0, 40.0, 1.6e9, 0, 0),
        ((8,), (16,), 30.0, 25.0, 1.7e9, 3, 90),
    ]
    assert got[("pdplan_worker_prefill_batch_seconds_count", role)] == 2
    assert metrics.counter("requests_total", "ok") == 1
