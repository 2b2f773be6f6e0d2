"""Every generated RoleBasedGroup / LeaderWorkerSet validates against its CRD's openAPIV3Schema
(``shared/data/k8s``, the served storage version), strictly: an object schema that lists its
properties and does not preserve unknown fields gets ``additionalProperties: false``, as the API
server's strict field validation (``kubectl apply --validate=strict``) treats unknown fields. The
same validator passes the upstream examples whose shape the manifests follow, and catches a
misplaced field, so it can fail."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
import yaml
from target_cases import K8S_DATA, PLANS, tplan

from pdplan.realrun.targets import k8s

jsonschema = pytest.importorskip("jsonschema")

CRDS = {
    "RoleBasedGroup": ("rbg/workloads.x-k8s.io_rolebasedgroups.yaml", "v1alpha2"),
    "LeaderWorkerSet": ("lws/leaderworkerset.x-k8s.io_leaderworkersets.yaml", "v1"),
}


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        preserve = node.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in node and "additionalProperties" not in node and not preserve:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def _validator(kind: str) -> Any:
    rel, version = CRDS[kind]
    path = K8S_DATA / rel
    if not path.is_file():
        pytest.skip(f"CRD not present at {path}")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    entry = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    assert entry["served"], f"{kind} {version} is not served"
    schema = _strict(entry["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _errors(doc: dict[str, Any]) -> list[str]:
    if doc["kind"] not in CRDS:
        return []
    assert doc["apiVersion"].endswith("/" + CRDS[doc["kind"]][1]), doc["apiVersion"]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(doc["kind"]).iter_errors(doc)
    ]


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(autouse=True)
def _needs_data() -> None:
    if not K8S_DATA.is_dir():
        pytest.skip(f"shared data not present at {K8S_DATA}")


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("flavor", k8s.FLAVORS)
def test_generated_manifests_validate(flavor: str, name: str) -> None:
    docs = _docs(k8s.build(tplan(name), flavor).files["manifests.yaml"])
    kinds = [d["kind"] for d in docs]
    assert ("RoleBasedGroup" if flavor == "rbg" else "LeaderWorkerSet") in kinds
    for doc in docs:
        assert _errors(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize("flavor", k8s.FLAVORS)
def test_vllm_engine_manifests_validate(flavor: str) -> None:
    for doc in _docs(k8s.build(tplan("colocated"), flavor, engine="vllm").files["manifests.yaml"]):
        assert _errors(doc) == []


def test_mooncake_store_manifests_validate() -> None:
    plan = tplan("disagg", launch={"model_path": "meta-llama/Llama-3.1-8B-Instruct", "kv_store": "mooncake"})
    docs = _docs(k8s.build(plan, "rbg").files["manifests.yaml"])
    roles = {r["name"]: r for r in docs[0]["spec"]["roles"]}
    assert list(roles) == ["mooncake-master", "router", "prefill", "decode"]
    prefill = roles["prefill"]["standalonePattern"]["template"]["spec"]["containers"][0]
    assert "--hicache-storage-backend" in prefill["command"]
    assert {e["name"] for e in prefill["env"]} >= {"MOONCAKE_MASTER", "MOONCAKE_TE_META_DATA_SERVER"}
    for doc in docs:
        assert _errors(doc) == []


@pytest.mark.parametrize(
    "example",
    [
        "rbg/pd-disagg-standalone.yaml",
        "rbg/pd-disagg-leader-worker.yaml",
        "rbg/sgl-pd-disagg-with-mooncake-te.yaml",
        "lws/example-sglang-lws.yaml",
        "lws/example-vllm-lws.yaml",
    ],
)
def test_upstream_examples_pass_the_same_validator(example: str) -> None:
    for doc in _docs((K8S_DATA / example).read_text()):
        assert _errors(doc) == [], example


def test_validator_catches_a_misplaced_field() -> None:
    # the upstream agg-standalone example nests readinessProbe inside volumes[0]: an unknown field there
    docs = _docs((K8S_DATA / "rbg" / "agg-standalone.yaml").read_text())
    assert any("volumes/0" in e and "readinessProbe" in e for e in _errors(docs[0]))
    good = _docs(k8s.build(tplan("disagg"), "rbg").files["manifests.yaml"])[0]
    broken = copy.deepcopy(good)
    broken["spec"]["roles"][1]["replica"] = 2  # typo of replicas
    assert any("replica" in e for e in _errors(broken))


def test_lws_pods_request_a_node_of_gpus() -> None:
    docs = _docs(k8s.build(tplan("multinode"), "lws").files["manifests.yaml"])
    lws = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    assert [(d["spec"]["replicas"], d["spec"]["leaderWorkerTemplate"]["size"]) for d in lws] == [
        (1, 2),
        (2, 2),
    ]
    for d in lws:
        for key in ("leaderTemplate", "workerTemplate"):
            pod = d["spec"]["leaderWorkerTemplate"][key]["spec"]
            assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
