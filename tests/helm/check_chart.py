#!/usr/bin/env python3
"""Checks helm/reelfarm with the real Helm SDK (helm-python-sdk embeds Helm v4) and
kubernetes-validate: strict lint and render for the default values, the two-pool example and
three secured value sets (TLS from cert-manager or from Secrets, etcd TLS bundled and
external, tokens, worker certificates, NetworkPolicies), every manifest valid against
Kubernetes 1.31, and the chart's own promises (GPU requests, requests/limits/probes
everywhere, pinned images, hardened pods, secrets only as mounted files, the dashboard and
alert rules shipped as the files are, a misspelled values key refused, settings that cannot
work together refused naming the fix). Exit 0 when all hold."""

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
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "cert-manager.io/")
# Environment variables that name files the chart mounts from Secrets (or the csi-driver).
SECRET_FILES = (
    "REELFARM_TLS_CERT_FILE", "REELFARM_TLS_KEY_FILE", "REELFARM_TLS_CLIENT_CA_FILE", "REELFARM_TLS_CA_FILE",
    "REELFARM_ETCD_CA_FILE", "REELFARM_ETCD_CERT_FILE", "REELFARM_ETCD_KEY_FILE",
    "REELFARM_ADMIN_TOKEN_FILE", "REELFARM_WORKER_TOKEN_FILE", "REELFARM_TOKEN_FILE", "REELFARM_S3_CA_FILE",
)
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def lint(values, label):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE}.0")
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    check(not bad, f"{label}: helm lint --strict: {bad}")


def render(values, label, notes=()):
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="demo", namespace="render", is_install=True)
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            for line in ("reelfarm submit",) + tuple(notes):
                check(line in text, f"{label}: NOTES.txt does not show {line!r}")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec, spec.get("containers", [])


def check_manifests(docs, label, app_version, etcd_bundled=True):
    kinds = [d["kind"] for d in docs]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap") + (("StatefulSet",) if etcd_bundled else ()):
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
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                check(not ref or var["name"].startswith("AWS_"),
                      f"{where}: {var['name']} takes a Secret as a value; mount it as a file")
                if var["name"] in SECRET_FILES:
                    mounted_file(pod, container, var.get("value", ""), f"{where}: {var['name']}")
            # Kubernetes expands $(VAR) in command, args and env, never in lifecycle hooks.
            for hook in container.get("lifecycle", {}).values():
                check("$(" not in " ".join(hook.get("exec", {}).get("command", [])),
                      f"{where}: a hook's $(VAR) is passed on unexpanded: {hook}")
            labels = doc["metadata"]["labels"]
            if labels.get("app.kubernetes.io/component") == "worker" and labels.get("reelfarm.io/pool") != "hosted":
                for part in ("requests", "limits"):
                    check(int(resources.get(part, {}).get("nvidia.com/gpu", 0)) >= 1,
                          f"{where}: no nvidia.com/gpu in {part}")
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    check(len(dashboards) == 1, f"{label}: one dashboard ConfigMap expected")
    if dashboards:
        shipped = json.loads((CHART / "dashboards" / "reelfarm.json").read_text())
        check(json.loads(dashboards[0]["data"]["reelfarm.json"]) == shipped,
              f"{label}: the dashboard ConfigMap differs from dashboards/reelfarm.json")
        check(dashboards[0]["metadata"]["labels"].get("grafana_dashboard") == "1",
              f"{label}: dashboard ConfigMap lacks the Grafana sidecar label")
    return docs


def mounted_file(pod, container, path, where):
    """What provides the file at `path` in `container`: ("secret", name, key) or ("csi",
    volume, file). Records a failure, and returns None, when no mounted volume provides it."""
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        failures.append(f"{where}: {path} is under no volume mount")
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    check(mount.get("readOnly") is True, f"{where}: {mount['mountPath']} is mounted writable")
    name = path[len(mount["mountPath"].rstrip("/")) + 1:]
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
    if volume is None:
        failures.append(f"{where}: no volume {mount['name']}")
        return None
    sources = []
    if "secret" in volume:
        sources.append((volume["secret"]["secretName"], volume["secret"].get("items")))
    for source in volume.get("projected", {}).get("sources", []):
        if "secret" in source:
            sources.append((source["secret"]["name"], source["secret"].get("items")))
    for secret, items in sources:
        check(items, f"{where}: volume {mount['name']} projects every key of Secret {secret}")
        for item in items or []:
            if item["path"] == name:
                return ("secret", secret, item["key"])
    if volume.get("csi", {}).get("driver") == "csi.cert-manager.io" and name in ("tls.crt", "tls.key", "ca.crt"):
        return ("csi", mount["name"], name)
    failures.append(f"{where}: volume {mount['name']} does not provide {name}")
    return None


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def find(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    check(len(found) == 1, f"no {kind}/{name} rendered")
    return found[0] if found else {"spec": {}}


def check_plain(docs, label):
    """With the security options off the chart renders what it did before they existed."""
    kinds = {d["kind"] for d in docs}
    check(not kinds & {"NetworkPolicy", "Certificate"}, f"{label}: {kinds & {'NetworkPolicy', 'Certificate'}} though off")
    check(not any(d["kind"] == "Service" and d["metadata"]["name"].endswith("-scheduler-peers") for d in docs),
          f"{label}: a scheduler headless Service without TLS")
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod, pod_containers = containers(doc)
        check("subdomain" not in pod, f"{label}: {doc['metadata']['name']} has a subdomain without TLS")
        for container in pod_containers:
            env = env_of(container)
            check(not set(env) & set(SECRET_FILES), f"{label}: {doc['metadata']['name']}: {set(env) & set(SECRET_FILES)}")
            if "REELFARM_ADVERTISE_URL" in env:
                check(env["REELFARM_ADVERTISE_URL"].startswith("http://$(POD_IP):"), f"{label}: advertised {env['REELFARM_ADVERTISE_URL']}")
                check("grpc" in container["readinessProbe"], f"{label}: scheduler readiness is not the gRPC health check")
                check(env["REELFARM_ETCD"].startswith("http://"), f"{label}: REELFARM_ETCD {env['REELFARM_ETCD']}")
            if "REELFARM_SCHEDULER" in env:
                check(env["REELFARM_SCHEDULER"] == "http://demo-reelfarm-scheduler:7070", f"{label}: REELFARM_SCHEDULER {env['REELFARM_SCHEDULER']}")
                command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                check(command[:2] == ["sh", "-c"] and 'reelfarm drain "$POD_NAME" --wait' in command[-1],
                      f"{label}: worker preStop is {command}")
            if container["name"] == "etcd":
                check("--listen-client-urls=http://0.0.0.0:2379" in container["command"], f"{label}: etcd not on plain http")


def policy_ports(policy):
    """port -> the peers that may reach it, from one NetworkPolicy's ingress rules."""
    ports = {}
    for rule in policy["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            ports.setdefault(port["port"], []).extend(rule.get("from", []))
    return ports


def role(component):
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": component}}}


def check_network_policies(docs, label, values, etcd_bundled, etcd_tls):
    prometheus = values["networkPolicy"].get("prometheus", [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}])
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    expected = {"demo-reelfarm-scheduler", "demo-reelfarm-worker"} | ({"demo-reelfarm-etcd"} if etcd_bundled else set())
    check(set(policies) == expected, f"{label}: NetworkPolicies {sorted(policies)}, expected {sorted(expected)}")
    for name, policy in policies.items():
        check(policy["spec"]["policyTypes"] == ["Ingress"], f"{label}: {name} policyTypes {policy['spec']['policyTypes']}")
    if "demo-reelfarm-scheduler" in policies:
        policy = policies["demo-reelfarm-scheduler"]
        check(policy["spec"]["podSelector"] == {"matchLabels": role("scheduler")["podSelector"]["matchLabels"]}, f"{label}: scheduler policy selects {policy['spec']['podSelector']}")
        ports = policy_ports(policy)
        check(set(ports) == {7070, 9464}, f"{label}: scheduler policy opens {sorted(ports)}")
        grpc = ports.get(7070, [])
        for peer in [role("worker"), role("scheduler")] + values["networkPolicy"].get("clients", []):
            check(peer in grpc, f"{label}: scheduler gRPC not open to {peer}")
        check(ports.get(9464) == prometheus, f"{label}: scheduler metrics open to {ports.get(9464)}")
    if "demo-reelfarm-worker" in policies:
        ports = policy_ports(policies["demo-reelfarm-worker"])
        check(ports == {9465: prometheus}, f"{label}: worker policy opens {ports} (health 7071 is kubelet's alone)")
    if "demo-reelfarm-etcd" in policies:
        ports = policy_ports(policies["demo-reelfarm-etcd"])
        check(ports.get(2379) == [role("scheduler")], f"{label}: etcd clients {ports.get(2379)}, expected schedulers alone")
        check(ports.get(2380) == [role("etcd")], f"{label}: etcd peers {ports.get(2380)}")
        check(set(ports) == ({2379, 2380, 2381} if etcd_tls else {2379, 2380}), f"{label}: etcd policy opens {sorted(ports)}")


def check_secured(docs, label, values):
    """TLS, tokens and identities reach each process as the files its variables name."""
    tls, etcd, auth = values["tls"], values.get("etcd", {}), values.get("auth", {})
    etcd_tls = etcd.get("tls", {}).get("enabled", False)
    etcd_bundled = not etcd.get("external")
    csi = tls.get("workerCertificates", {}).get("csi", {}).get("enabled", False)
    cert_manager = tls.get("certManager", {}).get("enabled", False)
    tls_secret = tls.get("secretName") or "demo-reelfarm-scheduler-tls"
    ca_secret = tls.get("ca", {}).get("secretName") or tls_secret
    certificates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    expected = set()
    if cert_manager:
        expected.add("demo-reelfarm-scheduler")
    if etcd.get("tls", {}).get("certManager", {}).get("enabled"):
        expected |= {"demo-reelfarm-etcd-client"} | ({"demo-reelfarm-etcd-server"} if etcd_bundled else set())
    check(set(certificates) == expected, f"{label}: Certificates {sorted(certificates)}, expected {sorted(expected)}")

    # Schedulers: TLS on the gRPC port, advertised by a DNS name their certificate carries.
    scheduler = find(docs, "Deployment", "demo-reelfarm-scheduler")
    pod, (container, *_) = containers(scheduler)
    env = env_of(container)
    peers = find(docs, "Service", "demo-reelfarm-scheduler-peers")
    check(peers["spec"].get("clusterIP") == "None" and peers["spec"].get("publishNotReadyAddresses") is True,
          f"{label}: the scheduler peers Service is not headless with unready addresses published")
    check(pod.get("subdomain") == "demo-reelfarm-scheduler-peers", f"{label}: scheduler subdomain {pod.get('subdomain')}")
    check(env.get("REELFARM_ADVERTISE_URL") == "https://$(POD_NAME).demo-reelfarm-scheduler-peers.render.svc:7070",
          f"{label}: advertised {env.get('REELFARM_ADVERTISE_URL')}")
    check("tcpSocket" in container["readinessProbe"], f"{label}: a gRPC readiness probe cannot speak TLS")
    for var, key in (("REELFARM_TLS_CERT_FILE", "tls.crt"), ("REELFARM_TLS_KEY_FILE", "tls.key")):
        check(mounted_file(pod, container, env.get(var, ""), f"{label}: scheduler {var}") == ("secret", tls_secret, key),
              f"{label}: scheduler {var} is not {key} of {tls_secret}")
    if csi:
        worker_ca = tls["workerCertificates"].get("ca", {})
        source = mounted_file(pod, container, env.get("REELFARM_TLS_CLIENT_CA_FILE", ""), f"{label}: scheduler client CA")
        check(source == ("secret", worker_ca.get("secretName") or ca_secret, worker_ca.get("key", "ca.crt")),
              f"{label}: scheduler REELFARM_TLS_CLIENT_CA_FILE is {source}")
    else:
        check("REELFARM_TLS_CLIENT_CA_FILE" not in env, f"{label}: a client CA without worker certificates")
    if cert_manager:
        certificate = certificates.get("demo-reelfarm-scheduler", {"spec": {}})["spec"]
        check(certificate.get("secretName") == tls_secret, f"{label}: scheduler Certificate writes {certificate.get('secretName')}")
        for dns in ("demo-reelfarm-scheduler", "demo-reelfarm-scheduler.render.svc",
                    "demo-reelfarm-scheduler.render.svc.cluster.local", "*.demo-reelfarm-scheduler-peers.render.svc", "localhost"):
            check(dns in certificate.get("dnsNames", []), f"{label}: scheduler certificate lacks {dns}")
        check("server auth" in certificate.get("usages", []), f"{label}: scheduler certificate usages {certificate.get('usages')}")
        check(certificate.get("issuerRef", {}).get("name") == tls["certManager"]["issuerRef"]["name"], f"{label}: scheduler issuer {certificate.get('issuerRef')}")

    # Schedulers to etcd: https endpoints, the client certificate and the CA as files.
    if etcd_tls:
        client_secret = etcd["tls"].get("clientSecretName") or "demo-reelfarm-etcd-client"
        endpoints = env.get("REELFARM_ETCD", "").split(",")
        check(endpoints == (etcd["external"] if not etcd_bundled else ["https://demo-reelfarm-etcd.render.svc:2379"]),
              f"{label}: REELFARM_ETCD {endpoints}")
        for var, key in (("REELFARM_ETCD_CA_FILE", "ca.crt"), ("REELFARM_ETCD_CERT_FILE", "tls.crt"), ("REELFARM_ETCD_KEY_FILE", "tls.key")):
            check(mounted_file(pod, container, env.get(var, ""), f"{label}: scheduler {var}") == ("secret", client_secret, key),
                  f"{label}: scheduler {var} is not {key} of {client_secret}")
        if "demo-reelfarm-etcd-client" in certificates:
            spec = certificates["demo-reelfarm-etcd-client"]["spec"]
            check(spec.get("secretName") == client_secret and "client auth" in spec.get("usages", []),
                  f"{label}: etcd client Certificate {spec}")

    # Tokens: files from the named Secret keys.
    for var, setting in (("REELFARM_ADMIN_TOKEN_FILE", "adminTokenSecret"), ("REELFARM_WORKER_TOKEN_FILE", "workerTokenSecret")):
        secret = auth.get(setting, {})
        if secret.get("name"):
            source = mounted_file(pod, container, env.get(var, ""), f"{label}: scheduler {var}")
            check(source == ("secret", secret["name"], secret.get("key", {"adminTokenSecret": "admin-token"}.get(setting, "worker-token"))),
                  f"{label}: scheduler {var} is {source}")
        else:
            check(var not in env, f"{label}: scheduler {var} without auth.{setting}")

    # Workers: https to the schedulers' Service, trusting ca.crt alone; their identity.
    workers = [d for d in docs if d["kind"] == "Deployment" and "-worker-" in d["metadata"]["name"]]
    check(workers, f"{label}: no workers")
    for worker in workers:
        name = f"{label}: {worker['metadata']['name']}"
        pod, (container, *_) = containers(worker)
        env = env_of(container)
        check(env.get("REELFARM_SCHEDULER") == "https://demo-reelfarm-scheduler.render.svc:7070", f"{name}: REELFARM_SCHEDULER {env.get('REELFARM_SCHEDULER')}")
        check(mounted_file(pod, container, env.get("REELFARM_TLS_CA_FILE", ""), f"{name}: REELFARM_TLS_CA_FILE")
              == ("secret", ca_secret, tls.get("ca", {}).get("key", "ca.crt")), f"{name}: REELFARM_TLS_CA_FILE is not the CA")
        for volume in pod.get("volumes", []):
            items = [i["key"] for i in volume.get("secret", {}).get("items", [])
                     if volume["secret"]["secretName"] == tls_secret]
            check("tls.key" not in items, f"{name}: the schedulers' private key is mounted into workers")
        if csi:
            for var, file in (("REELFARM_TLS_CERT_FILE", "tls.crt"), ("REELFARM_TLS_KEY_FILE", "tls.key")):
                source = mounted_file(pod, container, env.get(var, ""), f"{name}: {var}")
                check(source is not None and source[0] == "csi" and source[2] == file, f"{name}: {var} is {source}")
            volume = next((v for v in pod["volumes"] if "csi" in v), {"csi": {}})["csi"]
            attributes = volume.get("volumeAttributes", {})
            check(volume.get("readOnly") is True, f"{name}: the csi identity volume is writable")
            check(attributes.get("csi.cert-manager.io/common-name") == "${POD_NAME}", f"{name}: worker certificate CN {attributes.get('csi.cert-manager.io/common-name')}")
            check(attributes.get("csi.cert-manager.io/issuer-name") == tls["workerCertificates"]["csi"]["issuerName"], f"{name}: worker issuer {attributes}")
            check("client auth" in attributes.get("csi.cert-manager.io/key-usages", ""), f"{name}: worker certificates lack client auth")
            check(attributes.get("csi.cert-manager.io/fs-group") == str(container["securityContext"]["runAsGroup"]),
                  f"{name}: the worker's group cannot read its key (fs-group {attributes.get('csi.cert-manager.io/fs-group')})")
            check("REELFARM_TOKEN_FILE" not in env, f"{name}: a token beside the worker certificate")
        elif auth.get("workerTokenSecret", {}).get("name"):
            source = mounted_file(pod, container, env.get("REELFARM_TOKEN_FILE", ""), f"{name}: REELFARM_TOKEN_FILE")
            check(source == ("secret", auth["workerTokenSecret"]["name"], auth["workerTokenSecret"].get("key", "worker-token")),
                  f"{name}: REELFARM_TOKEN_FILE is {source}")
        # With tokens on, the pod's own `reelfarm drain` could not act for its worker id:
        # SIGTERM drains with the worker's credentials instead.
        pre_stop = container.get("lifecycle", {}).get("preStop")
        if auth.get("adminTokenSecret", {}).get("name"):
            check(pre_stop is None, f"{name}: a preStop drain that tokens would refuse")
        else:
            check(pre_stop is not None, f"{name}: no preStop drain")

    if values.get("objectStore", {}).get("caSecret", {}).get("name"):
        for doc in [scheduler] + workers:
            pod, (container, *_) = containers(doc)
            source = mounted_file(pod, container, env_of(container).get("REELFARM_S3_CA_FILE", ""), f"{label}: {doc['metadata']['name']} S3 CA")
            check(source == ("secret", values["objectStore"]["caSecret"]["name"], values["objectStore"]["caSecret"].get("key", "ca.crt")),
                  f"{label}: {doc['metadata']['name']} REELFARM_S3_CA_FILE is {source}")

    # The bundled etcd: https for clients (client certificates required), members optionally,
    # probes still answered (plain /health on the metrics port).
    statefulsets = [d for d in docs if d["kind"] == "StatefulSet"]
    check(bool(statefulsets) == etcd_bundled, f"{label}: {len(statefulsets)} etcd StatefulSets")
    if statefulsets and etcd_tls:
        pod, (container, *_) = containers(statefulsets[0])
        flags = dict(f.split("=", 1) for f in container["command"][1:] if "=" in f)
        server_secret = etcd["tls"].get("serverSecretName") or "demo-reelfarm-etcd-server"
        check(flags.get("--client-cert-auth") == "true", f"{label}: etcd does not require client certificates")
        check(flags.get("--listen-client-urls", "").startswith("https://"), f"{label}: etcd clients on {flags.get('--listen-client-urls')}")
        for flag, key in (("--cert-file", "tls.crt"), ("--key-file", "tls.key"), ("--trusted-ca-file", "ca.crt")):
            check(mounted_file(pod, container, flags.get(flag, ""), f"{label}: etcd {flag}") == ("secret", server_secret, key),
                  f"{label}: etcd {flag} is not {key} of {server_secret}")
        peer = etcd["tls"].get("peer", False)
        check(("--peer-client-cert-auth" in flags) == peer and flags.get("--initial-cluster", "").count("https://") == (3 if peer else 0),
              f"{label}: etcd peer TLS is not {peer}: {flags.get('--initial-cluster')}")
        probe = container["readinessProbe"].get("httpGet", {})
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        check(probe.get("port") == "metrics" and ports.get("metrics") == 2381 and flags.get("--listen-metrics-urls") == "http://0.0.0.0:2381",
              f"{label}: etcd readiness {probe} cannot pass client-certificate TLS")
        if "demo-reelfarm-etcd-server" in certificates:
            spec = certificates["demo-reelfarm-etcd-server"]["spec"]
            check({"server auth", "client auth"} <= set(spec.get("usages", [])), f"{label}: etcd certificate usages {spec.get('usages')}")
            for dns in ("demo-reelfarm-etcd.render.svc", "*.demo-reelfarm-etcd-peers", "*.demo-reelfarm-etcd-peers.render.svc.cluster.local"):
                check(dns in spec.get("dnsNames", []), f"{label}: etcd certificate lacks {dns}")

    if values.get("networkPolicy", {}).get("enabled"):
        check_network_policies(docs, label, values, etcd_bundled, etcd_tls)


def merged(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_refused(values, words, what):
    """Settings that cannot work together fail the install, naming what to set."""
    try:
        helm.Chart.load(str(CHART)).render(values, name="demo", namespace="render")
        failures.append(f"{what} rendered without error")
    except Exception as error:
        check(all(w in str(error) for w in words), f"{what}: the error does not name {words}: {error}")


def check_hosted(docs, values):
    """The hosted worker: one replica, --hosted, no GPU, its keys a Secret mounted read-only."""
    hosted = find(docs, "Deployment", "demo-reelfarm-worker-hosted")
    if not hosted:
        failures.append("hosted: no demo-reelfarm-worker-hosted Deployment")
        return
    check(hosted["spec"]["replicas"] == 1, "hosted: one replica paces one API account")
    pod, pod_containers = containers(hosted)
    worker = pod_containers[0]
    check(worker.get("args") == ["worker", "--hosted"], f"hosted: args {worker.get('args')}")
    for part in ("requests", "limits"):
        check("nvidia.com/gpu" not in worker["resources"].get(part, {}), f"hosted: asks for a GPU in {part}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    keys = volumes.get("hosted-keys", {}).get("secret", {})
    check(keys.get("secretName") == values["hosted"]["keysSecret"], f"hosted: keys volume {keys}")
    mounts = {m["name"]: m for m in worker.get("volumeMounts", [])}
    check(mounts.get("hosted-keys", {}).get("readOnly") is True
          and mounts["hosted-keys"].get("mountPath") == "/var/run/secrets/reelfarm-hosted",
          f"hosted: keys mount {mounts.get('hosted-keys')}")
    check(env_of(worker).get("REELFARM_MODELS") == "/etc/reelfarm/models/models.toml", "hosted: no catalog")
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-models")]
    text = maps[0]["data"]["models.toml"] if maps else ""
    check('backend = "openai-videos"' in text, f"hosted: models.toml is {text!r}")
    out = os.environ.get("REELFARM_CHART_HOSTED_MODELS_OUT")
    if out:
        Path(out).write_text(text)


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
    check_plain(docs, "defaults")

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
    check_plain(docs, "two-pools")
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if rules:
        shipped = yaml.safe_load((CHART / "alerts" / "reelfarm.rules.yaml").read_text())
        check(rules[0]["spec"]["groups"] == shipped["groups"], "PrometheusRule differs from the rules file")

    # Secured: everything on. cert-manager issues the schedulers' and etcd's certificates and
    # (csi-driver) each worker's; the admin token comes from a Secret; NetworkPolicies.
    secure = merged(example, yaml.safe_load((ROOT / "helm" / "examples" / "secure.yaml").read_text()))
    issuers = {d["metadata"]["name"] for d in yaml.safe_load_all((ROOT / "helm" / "examples" / "reelfarm-ca.yaml").read_text())
               if d and d["kind"] == "Issuer"}
    for issuer in (secure["tls"]["certManager"]["issuerRef"]["name"], secure["tls"]["workerCertificates"]["csi"]["issuerName"],
                   secure["etcd"]["tls"]["certManager"]["issuerRef"]["name"]):
        check(issuer in issuers, f"secure.yaml names issuer {issuer}, which reelfarm-ca.yaml does not make")
    lint(secure, "secure")
    docs = check_manifests(render(secure, "secure", notes=("REELFARM_TLS_CA_FILE", "https://localhost:7070", "REELFARM_TOKEN_FILE")),
                           "secure", app_version)
    check_secured(docs, "secure", secure)

    # The same from Secrets the operator made: TLS, the bundled etcd's and the schedulers'
    # etcd certificates, both tokens, an S3 CA; workers share the worker token.
    from_secrets = {
        "objectStore": {"caSecret": {"name": "minio-ca", "key": "ca.crt"}},
        "tls": {"enabled": True, "secretName": "farm-scheduler-tls", "ca": {"secretName": "farm-ca", "key": "ca.crt"}},
        "etcd": {"tls": {"enabled": True, "peer": True, "clientSecretName": "farm-etcd-client", "serverSecretName": "farm-etcd-server"}},
        "auth": {"adminTokenSecret": {"name": "farm-tokens", "key": "admin"}, "workerTokenSecret": {"name": "farm-tokens", "key": "worker"}},
        "networkPolicy": {"enabled": True, "clients": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                          "prometheus": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
    }
    lint(from_secrets, "from-secrets")
    docs = check_manifests(render(from_secrets, "from-secrets", notes=("farm-ca", "REELFARM_TOKEN_FILE")), "from-secrets", app_version)
    check_secured(docs, "from-secrets", from_secrets)

    # An external etcd over TLS (client certificate from cert-manager), TLS without tokens:
    # the preStop drain stays and reaches the schedulers over https.
    external = {
        "tls": {"enabled": True, "secretName": "farm-scheduler-tls"},
        "etcd": {"external": ["https://etcd-a.db:2379", "https://etcd-b.db:2379"],
                 "tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "db-ca", "kind": "ClusterIssuer"}}}},
        "networkPolicy": {"enabled": True},
    }
    lint(external, "external-etcd")
    docs = check_manifests(render(external, "external-etcd"), "external-etcd", app_version, etcd_bundled=False)
    check_secured(docs, "external-etcd", external)

    # The hosted worker beside the GPU pools, with a Sora entry whose key is a Secret file.
    sora = {"id": "sora-2-pro", "backend": "openai-videos", "remote_model": "sora-2-pro",
            "base_url": "https://api.openai.com/v1", "api_key_file": "/var/run/secrets/reelfarm-hosted/openai",
            "clip_seconds": [4, 8, 12], "sizes": ["1280x720", "720x1280", "1792x1024", "1024x1792"],
            "price_per_second_usd": 0.5, "max_concurrent_jobs": 4, "requests_per_minute": 50}
    hosted = merged(example, {"hosted": {"enabled": True, "keysSecret": "reelfarm-hosted-keys"}})
    hosted["models"] = dict(hosted["models"], catalog=example["models"]["catalog"] + [sora])
    lint(hosted, "hosted")
    docs = check_manifests(render(hosted, "hosted"), "hosted", app_version)
    check_hosted(docs, hosted)
    check_refused({"hosted": {"enabled": True}}, ["hosted.keysSecret"], "a hosted worker without its keys")

    check_refused({"tls": {"enabled": True}}, ["tls.secretName", "tls.certManager.enabled"], "TLS without a certificate")
    check_refused({"tls": {"enabled": True, "certManager": {"enabled": True}}}, ["issuerRef.name"], "cert-manager without an issuer")
    check_refused({"tls": {"workerCertificates": {"csi": {"enabled": True, "issuerName": "x"}}}}, ["tls.enabled"], "worker certificates without TLS")
    check_refused({"etcd": {"external": ["http://etcd:2379"], "tls": {"enabled": True, "clientSecretName": "c"}}},
                  ["http://etcd:2379", "https://"], "etcd TLS to a plaintext endpoint")
    check_refused({"etcd": {"tls": {"enabled": True, "clientSecretName": "c"}}}, ["etcd.tls.serverSecretName"], "bundled etcd TLS without its certificate")
    check_refused({"auth": {"adminTokenSecret": {"name": "t", "key": "admin"}}}, ["auth.workerTokenSecret"], "tokens without worker credentials")
    check_refused({"networkPolicy": {"enabled": True, "clients": [{"podselector": {}}]}}, ["podselector"], "a misspelled NetworkPolicy peer")

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
