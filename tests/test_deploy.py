"""Deployment files: compose and Prometheus configs pass their own tools; the dashboard queries real metrics.

No Docker engine here: `docker-compose config` (Debian's docker-compose) validates the compose
file and `promtool check config` (Debian's prometheus) the scrape config. `.ci/run` installs both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (.ci/run installs it with apt)")
    return path


def test_compose_file_is_valid_and_wires_the_stack() -> None:
    out = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for service in ("gateway", "triton", "redis", "prometheus", "grafana"):
        assert re.search(rf"^  {service}:", text, re.M), service
    assert "service_healthy" in text and "--model-control-mode=explicit" in text


def test_prometheus_config_passes_promtool() -> None:
    out = subprocess.run(
        [_tool("promtool"), "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    out = subprocess.run(
        [_tool("promtool"), "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT / "deploy" / "prometheus",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (ROOT / "deploy" / "prometheus" / "alerts_test.yml").read_text())
    )
    defined = set(re.findall(r"- alert: (\w+)", (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()))
    assert defined and defined <= tested, defined - tested  # every alert has a unit test


def exported_metrics() -> set[str]:
    from prometheus_client import REGISTRY

    import service.drift
    import service.metrics  # noqa: F401

    exported: set[str] = set()
    for family in REGISTRY.collect():
        exported |= {s.name for s in family.samples} | {family.name, family.name + "_total"}
    return exported | {n + suffix for n in list(exported) for suffix in ("_bucket", "_sum", "_count")}


def test_alert_rules_use_only_metrics_the_gateway_exports() -> None:
    text = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"pulsefm_\w+", text))
    assert used and used <= exported_metrics(), used - exported_metrics()


def test_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    exported = exported_metrics()
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "pulse-fm.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"pulsefm_\w+", t["expr"])}
    assert used and used <= exported, used - exported
    assert all(p.get("description") for p in dash["panels"])  # every panel says what it means


def test_dockerfile_images_are_slim_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    final = {
        s.split()[2]: s for s in stages if " AS " in s.split("\n")[0] and s.split()[2] in ("gateway", "train")
    }
    assert set(final) == {"gateway", "train"}
    for name, body in final.items():
        assert body.startswith("python:3.11-slim"), name
        assert re.search(r"^USER pulse$", body, re.M), name
        assert "HEALTHCHECK" in body, name
    assert "/readyz" in final["gateway"] and "torch" not in final["gateway"]


def _k8s_documents() -> dict[str, list[dict]]:
    import yaml

    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    docs: dict[str, list[dict]] = {}
    for name in kustomization["resources"]:
        docs[name] = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in _k8s_documents().values() for d in docs if d["kind"] == kind}


def test_kubernetes_manifests_pass_the_api_schemas() -> None:
    """Every resource of deploy/k8s against Kubernetes' own OpenAPI schemas (kubernetes-validate,
    strict: unknown fields are errors), as `kubectl apply --dry-run=client` would."""
    import kubernetes_validate

    docs = _k8s_documents()
    assert sum(len(v) for v in docs.values()) >= 10
    for name, resources in docs.items():
        for resource in resources:
            try:
                kubernetes_validate.validate(resource, "1.30", strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"deploy/k8s/{name}: {resource['kind']} {resource['metadata']['name']}: {exc}")
    typo = {**_by_kind("Deployment")["gateway"]}
    typo["spec"] = {**typo["spec"], "replica": 2}  # the validator does catch a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.30", strict=True)


def test_kubernetes_manifests_are_wired_to_each_other_and_to_the_gateway() -> None:
    """Selectors match pod labels, probes name the gateway's routes, env names are settings, the
    HPA's custom metrics are the adapter's, and those come from metrics the gateway exports."""
    from service.settings import Settings

    deployments, services = _by_kind("Deployment"), _by_kind("Service")
    for name, svc in services.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), name
    gw = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    fields = {f"PULSEFM_{k.upper()}" for k in Settings.model_fields}
    env = {e["name"] for e in gw["env"]}
    assert {e for e in env if e.startswith("PULSEFM_")} <= fields, env - fields
    assert "PROMETHEUS_MULTIPROC_DIR" in env  # several workers per pod: one metrics folder
    assert any(e["name"] == "PULSEFM_TRITON_URL" and e["value"].startswith("triton:") for e in gw["env"])
    assert deployments["triton"]["spec"]["template"]["spec"]["nodeSelector"]
    pdb = _by_kind("PodDisruptionBudget")["gateway"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= deployments["gateway"]["spec"]["template"]["metadata"]["labels"].items()
    )

    import yaml

    rules = yaml.safe_load(_by_kind("ConfigMap")["prometheus-adapter-rules"]["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    hpa = _by_kind("HorizontalPodAutoscaler")["gateway"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served, wanted - served
    exported = exported_metrics()
    for r in rules:
        series = re.match(r"(\w+)\{", r["seriesQuery"])
        assert series is not None and series.group(1) in exported, r["seriesQuery"]
