"""The shipped deployment files hold together (Docker and Kubernetes do not run here; the
nginx config itself runs in test_faults.py)."""

from __future__ import annotations

import re

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
    job = _k8s("Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["changefeed", "migrate"]
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
