"""The shipped deployment files hold together (Docker and Kubernetes do not run here; the
nginx config itself runs in test_faults.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import REPO

DEPLOY = REPO / "deploy"


def _k8s(kind: str) -> dict:  # type: ignore[type-arg]
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                return doc  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} in deploy/kubernetes")


def test_kubernetes_deployment_probes_and_grace_period() -> None:
    pod = _k8s("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > float(env["CHANGEFEED_SHUTDOWN_SECONDS"]) + 3
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["changefeed", "migrate"]
    assert migrate["image"] == container["image"]
    budget = _k8s("PodDisruptionBudget")["spec"]
    assert (
        budget["selector"]["matchLabels"] == _k8s("Deployment")["spec"]["selector"]["matchLabels"]
    )
    annotations = _k8s("Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60


def test_compose_waits_for_migrations_and_balances_replicas() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name in services if re.fullmatch(r"changefeed-\d+", name)]
    assert len(replicas) >= 2
    for name in replicas:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["changefeed", "migrate"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    upstreams = re.findall(
        r"server (changefeed-\d+):8000", (DEPLOY / "nginx" / "changefeed.conf").read_text()
    )
    assert sorted(upstreams) == sorted(replicas)


def test_nginx_config_suits_event_streams() -> None:
    conf = (DEPLOY / "nginx" / "changefeed.conf").read_text()
    found = re.search(r"(?ms)^    location ~ (\S*feeds\S*) \{\n(.*?)^    \}", conf)
    assert found is not None, "the long-response location was not found"
    regex, stream = re.compile(found[1]), found[2]
    assert "proxy_buffering off;" in stream
    assert "gzip off;" in stream
    assert "proxy_http_version 1.1;" in conf
    assert 'proxy_set_header Connection "";' in conf
    timeout = re.search(r"proxy_read_timeout (\d+)(h|m|s);", stream)
    assert timeout is not None
    seconds = int(timeout[1]) * {"h": 3600, "m": 60, "s": 1}[timeout[2]]
    assert seconds > 60
    # Every response that stays open or runs long goes there (nginx matches the path
    # without the query): streams of one topic, a pattern, several topics; replay pages
    # and exports; consumer long polls. Nothing else does.
    for path in [
        "/feeds/orders",
        "/feeds/orders.*",
        "/feeds",
        "/feeds/",
        "/feeds/o/events",
        "/consumers/billing/events",
    ]:
        assert regex.search(path), path
    for path in ["/consumers", "/consumers/billing", "/topics", "/metrics", "/healthz", "/"]:
        assert not regex.search(path), path
    # No query strings in the access log (tokens), no metrics to the world.
    log_format = re.search(r"(?s)log_format changefeed (.*?);", conf)
    assert log_format is not None
    assert "$request_uri" not in log_format[1] and "$args" not in log_format[1]
    assert "$request " not in log_format[1] and '$request"' not in log_format[1]
    assert re.search(r"(?s)location ~ \^/metrics\(/\|\$\) \{\s*deny all;", conf)


def test_dockerfile_runs_as_non_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"(?m)^USER (?!root)\S+", dockerfile)
    assert 'CMD ["changefeed", "serve"]' in dockerfile


def test_the_ingress_routes_the_api_and_not_the_metrics() -> None:
    rules = _k8s("Ingress")["spec"]["rules"][0]["http"]["paths"]

    def routed(path: str) -> bool:
        # Kubernetes' path types: Exact, or Prefix by whole path elements.
        return any(
            path == rule["path"]
            or (rule["pathType"] == "Prefix" and path.startswith(rule["path"].rstrip("/") + "/"))
            for rule in rules
        )

    for path in [
        "/",
        "/feeds",
        "/feeds/orders",
        "/feeds/o/events",
        "/consumers",
        "/consumers/billing/events",
        "/topics",
        "/schema/openapi.json",
    ]:
        assert routed(path), path
    for path in ["/metrics", "/healthz", "/readyz"]:
        assert not routed(path), path


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_the_memory_limit_covers_the_worst_case_of_its_settings() -> None:
    """Every stream may buffer SUBSCRIBER_BUFFER_BYTES of unsent events: the limit must hold
    all of them at once, over a base of 100 MiB for the process itself."""
    from changefeed.settings import Settings

    container = _k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    defaults = Settings()
    streams = int(env.get("CHANGEFEED_MAX_STREAMS", defaults.max_streams))
    buffer = int(env.get("CHANGEFEED_SUBSCRIBER_BUFFER_BYTES", defaults.subscriber_buffer_bytes))
    worst = 100 * 1024**2 + streams * buffer
    assert worst <= _bytes(container["resources"]["limits"]["memory"]), worst


def test_kubernetes_manifests_are_valid() -> None:
    """Against Kubernetes' own schemas (kubernetes-validate bundles them: no cluster, no
    network), every resource the kustomization lists."""
    import kubernetes_validate

    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    checked = 0
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()):
            kubernetes_validate.validate(doc, "1.33", strict=True)
            checked += 1
    assert checked == len(kustomization["resources"])


@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="docker-compose (Debian's, for `config`) is not installed",
)
def test_the_compose_file_is_valid() -> None:
    checked = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
