"""The hand-written Prometheus exposition: cumulative buckets, labels, gauges read at scrape time."""

from __future__ import annotations

from pdplan.realrun.metrics import WorkerMetrics


def test_prometheus_text() -> None:
    metrics = WorkerMetrics("decode")
    level = [3]
    metrics.gauge("queue_length", "waiting", lambda: level[0])
    metrics.observe("ttft_seconds", 0.003)
    metrics.observe("ttft_seconds", 0.2)
    metrics.inc("requests_total", label="ok")
    metrics.inc("kv_transfer_bytes_total", 1024, label="socket")
    metrics.decode_step(4, 100, 0.02)
    level[0] = 5
    lines = metrics.render().splitlines()
    assert 'pdplan_worker_queue_length{role="decode"} 5' in lines
    assert 'pdplan_worker_ttft_seconds_bucket{role="decode",le="0.0025"} 0' in lines
    assert 'pdplan_worker_ttft_seconds_bucket{role="decode",le="0.005"} 1' in lines
    assert 'pdplan_worker_ttft_seconds_bucket{role="decode",le="+Inf"} 2' in lines
    assert 'pdplan_worker_ttft_seconds_count{role="decode"} 2' in lines
    assert 'pdplan_worker_requests_total{role="decode",status="ok"} 1' in lines
    assert 'pdplan_worker_kv_transfer_bytes_total{role="decode",path="socket"} 1024' in lines
    assert 'pdplan_worker_generated_tokens_total{role="decode"} 0' in lines
    assert "# TYPE pdplan_worker_itl_seconds histogram" in lines
    assert metrics.recent_steps() == [(4, 100, 20.0)]
