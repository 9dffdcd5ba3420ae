"""The Kubernetes manifests (deploy/kubernetes/), validated offline against the Kubernetes 1.33 schemas
(kubernetes-validate), and held to the gateway they deploy: probes on the real routes, a grace period that
covers the drain, settings the gateway accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def kustomized() -> list[str]:
    return load("kustomization.yaml")["resources"]


@pytest.mark.parametrize("name", kustomized())
def test_each_manifest_is_valid_kubernetes(name):
    for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on an unknown or invalid field


def test_the_bank_as_an_image_layer_is_valid_once_patched_in():
    deployment, patch = load("deployment.yaml"), load("bank-image-volume.yaml")
    (volume,) = patch["spec"]["template"]["spec"]["volumes"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    index = next(i for i, v in enumerate(volumes) if v["name"] == volume["name"])
    volumes[index] = {k: v for k, v in volume.items() if v is not None}  # strategic merge: null deletes
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    assert volumes[index]["image"]["reference"]


def test_the_deployment_matches_the_gateway(monkeypatch, tmp_path):
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = yaml.safe_load(load("configmap.yaml")["data"]["gateway.yaml"])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("JISI_CONFIG", str(path))
    settings = Settings()  # the ConfigMap's settings are the gateway's own format
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # the kubelet kills at terminationGracePeriodSeconds, counted from preStop's start
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + settings.drain.grace_s + settings.drain.deadline_s
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["bank"]["readOnly"] and mounts["bank"]["mountPath"] == str(settings.bank_path)
    assert {"name": "JISI_CONFIG", "value": f"{mounts['config']['mountPath']}/gateway.yaml"} in container["env"]
    service = load("service.yaml")
    assert service["spec"]["selector"] == load("deployment.yaml")["spec"]["selector"]["matchLabels"]
