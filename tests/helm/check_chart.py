#!/usr/bin/env python3
"""Checks helm/reelfarm with the real Helm SDK (helm-python-sdk embeds Helm v4) and
kubernetes-validate: strict lint and render for the default values and the two-pool example,
every manifest valid against Kubernetes 1.31, and the chart's own promises (GPU requests,
requests/limits/probes everywhere, pinned images, hardened pods, the dashboard and alert
rules shipped as the files are, a misspelled values key refused). Exit 0 when all hold."""

import json
import os
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "reelfarm"
KUBE = "1.31"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def lint(values, label):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE}.0")
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    check(not bad, f"{label}: helm lint --strict: {bad}")


def render(values, label):
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="demo", namespace="render", is_install=True)
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            check("reelfarm submit" in text, f"{label}: NOTES.txt does not show a first submit")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec, spec.get("containers", [])


def check_manifests(docs, label, app_version):
    kinds = [d["kind"] for d in docs]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "StatefulSet", "ConfigMap"):
        check(kind in kinds, f"{label}: no {kind} rendered")
    for doc in docs:
        name = f"{label}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CRD_GROUPS):
            check("spec" in doc, f"{name}: custom resource without spec")
        else:
            try:
                kubernetes_validate.validate(doc, KUBE, strict=True)
            except Exception as error:  # the library raises several error types
                first = str(error).splitlines()[0] if str(error) else repr(error)
                failures.append(f"{name}: kubernetes-validate --strict {KUBE}: {first}")
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod, pod_containers = containers(doc)
        check(pod.get("automountServiceAccountToken") is False, f"{name}: mounts a token")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: may run as root")
        for container in pod_containers:
            where = f"{name} container {container['name']}"
            resources = container.get("resources", {})
            check(resources.get("requests") and resources.get("limits"),
                  f"{where}: needs resource requests and limits")
            check("readinessProbe" in container and "livenessProbe" in container,
                  f"{where}: needs readiness and liveness probes")
            image = container["image"]
            check(":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"),
                  f"{where}: image {image} is not pinned")
            if "reelfarm-" in image:
                check(image.endswith(":" + app_version), f"{where}: {image} not at appVersion")
            security = container.get("securityContext", {})
            check(security.get("readOnlyRootFilesystem") is True, f"{where}: writable root")
            check(security.get("allowPrivilegeEscalation") is False, f"{where}: may escalate")
            if doc["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
                for part in ("requests", "limits"):
                    check(int(resources.get(part, {}).get("nvidia.com/gpu", 0)) >= 1,
                          f"{where}: no nvidia.com/gpu in {part}")
                check("preStop" in container.get("lifecycle", {}), f"{where}: no preStop drain")
                command = container["lifecycle"]["preStop"]["exec"]["command"]
                check(command[:2] == ["reelfarm", "drain"], f"{where}: preStop is {command}")
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    check(len(dashboards) == 1, f"{label}: one dashboard ConfigMap expected")
    if dashboards:
        shipped = json.loads((CHART / "dashboards" / "reelfarm.json").read_text())
        check(json.loads(dashboards[0]["data"]["reelfarm.json"]) == shipped,
              f"{label}: the dashboard ConfigMap differs from dashboards/reelfarm.json")
        check(dashboards[0]["metadata"]["labels"].get("grafana_dashboard") == "1",
              f"{label}: dashboard ConfigMap lacks the Grafana sidecar label")
    return docs


def check_models(docs, values):
    """The catalog reaches schedulers and workers as one file; workers mount the weights."""
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-models")]
    check(len(maps) == 1, "two-pools: one models ConfigMap expected")
    if not maps:
        return
    text = maps[0]["data"]["models.toml"]
    check("[[model]]" in text and 'id = "coastline-tiny"' in text, f"two-pools: models.toml is {text!r}")
    out = os.environ.get("REELFARM_CHART_MODELS_OUT")
    if out:
        Path(out).write_text(text)
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        pod, pod_containers = containers(doc)
        name = doc["metadata"]["name"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        check(volumes.get("models", {}).get("configMap", {}).get("name") == maps[0]["metadata"]["name"],
              f"two-pools: {name} does not mount the models ConfigMap")
        for container in pod_containers:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            check(env.get("REELFARM_MODELS") == mounts.get("models", {}).get("mountPath", "-") + "/models.toml",
                  f"two-pools: {name}: REELFARM_MODELS {env.get('REELFARM_MODELS')} is not the mounted file")
            if "-worker-" in name:
                check(mounts.get("weights", {}).get("mountPath") == values["models"].get("mountPath", "/models")
                      and mounts["weights"].get("readOnly") is True,
                      f"two-pools: {name} does not mount the weights read-only")
                check(volumes.get("weights", {}).get("persistentVolumeClaim", {}).get("claimName") == "reelfarm-weights",
                      f"two-pools: {name}: weights volume {volumes.get('weights')}")


def main():
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    lint(None, "defaults")
    docs = check_manifests(render(None, "defaults"), "defaults", app_version)
    check(not any(d["apiVersion"].startswith(CRD_GROUPS) for d in docs),
          "defaults: custom resources rendered though their options are off")
    check(not any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-models") for d in docs),
          "defaults: a models ConfigMap without models")

    example = yaml.safe_load((ROOT / "helm" / "examples" / "two-pools.yaml").read_text())
    lint(example, "two-pools")
    docs = check_manifests(render(example, "two-pools"), "two-pools", app_version)
    workers = [d for d in docs if d["kind"] == "Deployment" and "-worker-" in d["metadata"]["name"]]
    check(sorted(d["metadata"]["name"] for d in workers) == ["demo-reelfarm-worker-h100", "demo-reelfarm-worker-l4"],
          f"two-pools: worker Deployments {[d['metadata']['name'] for d in workers]}")
    kinds = {d["kind"] for d in docs}
    for kind in ("ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"):
        check(kind in kinds, f"two-pools: no {kind}")
    check_models(docs, example)
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if rules:
        shipped = yaml.safe_load((CHART / "alerts" / "reelfarm.rules.yaml").read_text())
        check(rules[0]["spec"]["groups"] == shipped["groups"], "PrometheusRule differs from the rules file")

    # A typo in values fails at install, naming the key.
    try:
        helm.Chart.load(str(CHART)).render({"scheduler": {"replcas": 3}}, name="demo")
        failures.append("a misspelled values key (scheduler.replcas) rendered without error")
    except Exception as error:
        check("replcas" in str(error), f"the schema error does not name the key: {error}")
    try:
        helm.Chart.load(str(CHART)).render({"image": {"registry": "r", "tag": "latest"}}, name="demo")
        failures.append("image.tag=latest rendered without error")
    except Exception as error:
        check("tag" in str(error), f"the image.tag=latest error does not name the field: {error}")

    for failure in failures:
        print("FAIL", failure)
    print(f"chart checks: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
