"""Access control: JWT modes, grants on every call, token sources, 401 versus 403,
per-subject limits, streams closed at expiry, and the SQL roles."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from httpx_sse import aconnect_sse

from changefeed.ops import migrate
from tests.support import (
    SECRET,
    SSE,
    Service,
    bearer,
    changefeed,
    create_database,
    new_topic,
    private_tempdir,
    token,
    url_as,
    wait_for,
)


@pytest.fixture(scope="module")
def service(module_database: str) -> Iterator[Service]:
    with Service(
        module_database,
        env={
            "CHANGEFEED_AUTH": "jwt",
            "CHANGEFEED_JWT_SECRET": SECRET,
            "CHANGEFEED_JWT_LEEWAY_SECONDS": "0",
            "CHANGEFEED_SUBJECT_MAX_STREAMS": "2",
            "CHANGEFEED_SUBJECT_PUBLISH_RATE": "1",
            "CHANGEFEED_SUBJECT_PUBLISH_BURST": "20",
            "CHANGEFEED_CORS_ORIGINS": "https://app.example",
        },
    ) as svc:
        yield svc


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient, path: str, **kwargs: object
) -> AsyncIterator[tuple[httpx.Response, SSE]]:
    async with aconnect_sse(client, "GET", path, **kwargs) as source:  # type: ignore[arg-type]
        sse = SSE(source.aiter_sse())
        try:
            yield source.response, sse
        finally:
            await sse.close()


async def test_no_or_bad_token_is_401_with_a_problem(client: httpx.AsyncClient) -> None:
    topic = new_topic("orders")
    wrong_key = token("mallory", subscribe=["*"], publish=["*"], key="another-secret-" * 4)
    expired = token("alice", subscribe=["*"], expires_in=-60)
    calls = [
        ("POST", f"/feeds/{topic}", {"json": {"data": 1}}),
        ("GET", f"/feeds/{topic}/events", {}),
        ("GET", f"/feeds/{topic}/events", {"headers": {"accept": "application/x-ndjson"}}),
        ("GET", "/consumers", {}),
    ]
    for method, path, kwargs in calls:
        for headers, says in [
            ({}, "bearer token is required"),
            (bearer(wrong_key), "invalid token"),
            (bearer(expired), "expired"),
        ]:
            extra = dict(kwargs)
            extra["headers"] = {**kwargs.get("headers", {}), **headers}  # type: ignore[dict-item]
            response = await client.request(method, path, **extra)  # type: ignore[arg-type]
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            problem = response.json()
            assert problem["type"] == "urn:changefeed:problem:unauthenticated"
            assert says in problem["detail"], problem
    async with stream(client, f"/feeds/{topic}") as (response, _):
        assert response.status_code == 401


async def test_grants_decide_every_call_and_403_says_which(client: httpx.AsyncClient) -> None:
    prefix = new_topic("orders")
    alice = bearer(token("alice", subscribe=[f"{prefix}.*"], publish=[f"{prefix}.eu"]))
    ok = await client.post(f"/feeds/{prefix}.eu", json={"data": 1}, headers=alice)
    assert ok.status_code == 202
    refused = await client.post(f"/feeds/{prefix}.us", json={"data": 1}, headers=alice)
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:changefeed:problem:forbidden"
    assert f"may not publish to '{prefix}.us'" in refused.json()["detail"]

    assert (await client.get(f"/feeds/{prefix}.eu/events", headers=alice)).status_code == 200
    await client.post(
        "/feeds/billing", json={"data": 1}, headers=bearer(token("ops", publish=["*"]))
    )

    async def listed(headers: dict[str, str]) -> list[str]:
        topics = (await client.get("/topics", headers=headers)).json()["topics"]
        return [t["topic"] for t in topics]

    everything = bearer(token("ops", subscribe=["*"]))

    async def both_exist() -> bool:
        return {"billing", f"{prefix}.eu"} <= set(await listed(everything))

    await wait_for(both_exist, timeout=30)
    # Only the topics the caller may subscribe to are listed.
    assert await listed(alice) == [f"{prefix}.eu"]
    assert (await client.get("/topics")).status_code == 401
    assert (await client.get("/feeds/billing/events", headers=alice)).status_code == 403
    ndjson = {**alice, "accept": "application/x-ndjson"}
    assert (await client.get("/feeds/billing/events", headers=ndjson)).status_code == 403
    # Streams: one topic, a pattern within the grant, and multi-topic streams checked per
    # topic and pattern.
    for path, params, status in [
        (f"/feeds/{prefix}.eu", None, 200),
        (f"/feeds/{prefix}.eu.*", None, 200),
        ("/feeds/billing", None, 403),
        ("/feeds/*", None, 403),
        ("/feeds", {"topic": [f"{prefix}.eu", f"{prefix}.*"]}, 200),
        ("/feeds", {"topic": [f"{prefix}.eu", "billing"]}, 403),
    ]:
        async with stream(client, path, params=params, headers=alice) as (response, _):
            assert response.status_code == status, (path, params)


async def test_tokens_from_cookie_and_query_never_reach_the_logs(
    client: httpx.AsyncClient, service: Service
) -> None:
    topic = new_topic("orders")
    secret = token("carol", subscribe=[topic], publish=[topic])
    assert (
        await client.post(f"/feeds/{topic}", json={"data": 1}, headers=bearer(secret))
    ).status_code == 202
    by_cookie = await client.get(
        f"/feeds/{topic}/events", headers={"cookie": f"changefeed_token={secret}"}
    )
    assert by_cookie.status_code == 200
    by_query = await client.get(f"/feeds/{topic}/events", params={"access_token": secret})
    assert by_query.status_code == 200
    # The header wins over the query: a bad header is not rescued by a good query token.
    mixed = await client.get(
        f"/feeds/{topic}/events", params={"access_token": secret}, headers=bearer("nonsense")
    )
    assert mixed.status_code == 401
    async with stream(client, f"/feeds/{topic}", params={"access_token": secret, "after": 0}) as (
        response,
        sse,
    ):
        assert response.status_code == 200
        await sse.next()  # retry
        assert (await sse.next()).data == "1"
    signature = secret.rsplit(".", 1)[1]
    await wait_for(lambda: _logged(service, "stream.close"), timeout=10)
    assert signature not in service.log()
    assert "access_token" not in service.log()


async def _logged(service: Service, text: str) -> bool:
    return text in service.log()


async def test_a_stream_ends_with_a_closed_frame_when_its_token_expires(
    client: httpx.AsyncClient,
) -> None:
    topic = new_topic("orders")
    short = token("dave", subscribe=[topic], expires_in=2)
    async with stream(client, f"/feeds/{topic}", headers=bearer(short)) as (response, sse):
        assert response.status_code == 200
        await sse.next()  # retry
        closed = await sse.next(timeout=15)
        assert closed.event == "closed"
        assert json.loads(closed.data)["reason"] == "token-expired"
        with pytest.raises(EOFError):
            await sse.next(timeout=5)


async def test_per_subject_stream_and_publish_limits_are_429(client: httpx.AsyncClient) -> None:
    topic = new_topic("orders")
    erin = bearer(token("erin", subscribe=[topic], publish=[topic]))
    frank = bearer(token("frank", subscribe=[topic]))
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            response, _ = await stack.enter_async_context(
                stream(client, f"/feeds/{topic}", headers=erin)
            )
            assert response.status_code == 200
        async with stream(client, f"/feeds/{topic}", headers=erin) as (third, _):
            assert third.status_code == 429
            assert int(third.headers["retry-after"]) >= 1
        async with stream(client, f"/feeds/{topic}", headers=frank) as (other, _):
            assert other.status_code == 200  # another subject has its own count

    async def reopened() -> bool:
        async with stream(client, f"/feeds/{topic}", headers=erin) as (again, _):
            return again.status_code == 200

    await wait_for(reopened, timeout=10)  # closed streams give their slots back

    burst = [{"data": i} for i in range(20)]
    assert (await client.post(f"/feeds/{topic}", json=burst, headers=erin)).status_code == 202
    limited = await client.post(f"/feeds/{topic}", json=burst, headers=erin)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["type"] == "urn:changefeed:problem:rate-limited"


async def test_consumers_belong_to_their_creator(client: httpx.AsyncClient) -> None:
    prefix = new_topic("orders")
    name = new_topic("consumer")
    owner = bearer(token("grace", subscribe=[f"{prefix}.*"]))
    # Another service with the same topics, and one with others: neither may touch it,
    # nor learn what it reads.
    same_topics = bearer(token("heidi", subscribe=["*"]))
    other_topics = bearer(token("ivan", subscribe=["billing.*"]))
    # A worker of grace's with an identity of its own, granted the consumer by name.
    worker = bearer(token("grace-worker-1", subscribe=[f"{prefix}.*"], consume=[name]))
    too_wide = await client.put(f"/consumers/{name}", json={"topics": ["*"]}, headers=owner)
    assert too_wide.status_code == 403
    created = await client.put(
        f"/consumers/{name}", json={"topics": [f"{prefix}.*"]}, headers=owner
    )
    assert created.status_code == 201
    assert created.json()["owner"] == "grace"
    assert (await client.get(f"/consumers/{name}/events", headers=owner)).status_code == 200
    assert (await client.get(f"/consumers/{name}/events", headers=worker)).status_code == 200
    for stranger in (same_topics, other_topics):
        for method, path in [
            ("GET", f"/consumers/{name}"),
            ("GET", f"/consumers/{name}/events"),
            ("DELETE", f"/consumers/{name}"),
        ]:
            refused = await client.request(method, path, headers=stranger)
            assert refused.status_code == 404, (method, path)
            assert prefix not in refused.text  # its topics are not named
        ack = await client.post(
            f"/consumers/{name}/ack",
            json={"lease": "00000000-0000-0000-0000-000000000000"},
            headers=stranger,
        )
        assert ack.status_code == 404
        hijack = await client.put(f"/consumers/{name}", json={"topics": ["x"]}, headers=stranger)
        assert hijack.status_code == 409
        assert hijack.json()["type"] == "urn:changefeed:problem:name-taken"
        listed = (await client.get("/consumers", headers=stranger)).json()["consumers"]
        assert name not in [c["name"] for c in listed]
    # The owner's own grants still bound what it may do with it.
    narrowed = bearer(token("grace", subscribe=[f"{prefix}.eu"]))
    assert (await client.get(f"/consumers/{name}", headers=narrowed)).status_code == 403
    assert (await client.delete(f"/consumers/{name}", headers=owner)).status_code == 204


async def test_cookies_authenticate_reads_only_and_other_sites_cannot_write(
    client: httpx.AsyncClient, service: Service
) -> None:
    topic = new_topic("orders")
    secret = token("kim", subscribe=[topic], publish=[topic])
    cookie = {"cookie": f"changefeed_token={secret}"}
    url = f"/feeds/{topic}"
    # The request: a page on another site posting text with the browser's cookie.
    csrf = await client.post(
        url,
        content=b'{"data": 1}',
        headers={**cookie, "origin": "https://evil.example", "content-type": "text/plain"},
    )
    assert csrf.status_code == 403
    # Without the Origin (older browsers, or a form): not JSON, refused.
    form = await client.post(
        url,
        content=b"data=1",
        headers={**cookie, "content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    assert form.json()["type"] == "urn:changefeed:problem:unsupported-media-type"
    # JSON with only the cookie: the cookie does not authenticate a write.
    assert (await client.post(url, json={"data": 1}, headers=cookie)).status_code == 401
    # The cookie does authenticate reads (an EventSource can send nothing else).
    assert (await client.get(f"{url}/events", headers=cookie)).status_code == 200
    # Writes with the token in the header: from no page, this service's own, a listed one.
    auth = bearer(secret)
    own = service.base_url
    for origin in (None, own, "https://app.example"):
        headers = {**auth, **({"origin": origin} if origin else {})}
        published = await client.post(url, json={"data": 2}, headers=headers)
        assert published.status_code == 202, (origin, published.text)
    for origin in ("https://evil.example", "null", own.replace("127.0.0.1", "localhost")):
        refused = await client.post(url, json={"data": 3}, headers={**auth, "origin": origin})
        assert refused.status_code == 403, origin
    # Every body that changes something must be JSON: consumers and acknowledgements too.
    name = f"c-{topic}"
    for method, path in [("PUT", f"/consumers/{name}"), ("POST", f"/consumers/{name}/ack")]:
        plain = await client.request(
            method, path, content=b"{}", headers={**auth, "content-type": "text/plain"}
        )
        assert plain.status_code == 415, (method, path)


async def test_a_consumers_lease_needs_the_header(client: httpx.AsyncClient) -> None:
    """Leasing is a GET that hands events to the caller and hides them from the
    consumer's workers: neither the cookie nor a query token may do it."""
    topic = new_topic("orders")
    name = new_topic("lease")
    secret = token("nia", subscribe=[topic])
    assert (
        await client.put(f"/consumers/{name}", json={"topics": [topic]}, headers=bearer(secret))
    ).status_code == 201
    url = f"/consumers/{name}/events"
    by_cookie = await client.get(url, headers={"cookie": f"changefeed_token={secret}"})
    assert by_cookie.status_code == 401
    assert (await client.get(url, params={"access_token": secret})).status_code == 401
    assert (await client.get(url, headers=bearer(secret))).status_code == 200
    # A query token does not authenticate a write either (it would end up in logs).
    published = await client.post(
        f"/feeds/{topic}", json={"data": 1}, params={"access_token": secret}
    )
    assert published.status_code == 401


async def test_an_empty_subject_is_no_one(client: httpx.AsyncClient) -> None:
    for sub in ("", "   "):
        nobody = bearer(token(sub, subscribe=["*"], publish=["*"]))
        response = await client.get(f"/feeds/{new_topic()}/events", headers=nobody)
        assert response.status_code == 401
        assert "sub" in response.json()["detail"]


async def test_a_token_dead_but_within_the_leeway_opens_no_stream(database: str) -> None:
    svc = Service(
        database,
        env={
            "CHANGEFEED_AUTH": "jwt",
            "CHANGEFEED_JWT_SECRET": SECRET,
            "CHANGEFEED_JWT_LEEWAY_SECONDS": "60",
        },
    ).start()
    try:
        topic = new_topic("orders")
        late = bearer(token("lee", subscribe=[topic], expires_in=-5))
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as http:
            # The leeway is for clock skew: a page read still passes...
            assert (await http.get(f"/feeds/{topic}/events", headers=late)).status_code == 200
            # ...but a stream would be closed as expired at once, and reopened in a loop.
            async with stream(http, f"/feeds/{topic}", headers=late) as (response, _):
                assert response.status_code == 401
                assert "expired" in (await response.aread()).decode()
    finally:
        svc.stop()


async def test_cors_never_pairs_a_wildcard_with_credentials(client: httpx.AsyncClient) -> None:
    allowed = await client.options(
        "/feeds/x",
        headers={"origin": "https://app.example", "access-control-request-method": "GET"},
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    other = await client.options(
        "/feeds/x",
        headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.fixture(scope="module")
def keys() -> Iterator[dict[str, object]]:
    directory = private_tempdir("changefeed-keys-")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = directory / "ec.pem"
    pem.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    yield {"ec": ec_key, "ec_pem": pem, "pem_bytes": pem.read_bytes(), "rsa": rsa_key, "jwks": jwks}
    shutil.rmtree(directory, ignore_errors=True)


def _hs256_by_hand(claims: dict[str, object], secret: object) -> str:
    """An HS256 token keyed with arbitrary bytes (PyJWT itself refuses a PEM as secret)."""

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    assert isinstance(secret, bytes)
    signing = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + part(signature)


@pytest.mark.parametrize("mode", ["es256-pem", "rs256-jwks"])
async def test_public_key_modes(database: str, keys: dict[str, object], mode: str) -> None:
    if mode == "es256-pem":
        env = {"CHANGEFEED_JWT_PUBLIC_KEY_FILE": str(keys["ec_pem"])}
        good = token("ivan", publish=["*"], key=keys["ec"], algorithm="ES256")
        # An HS256 token "signed" with the public key must not pass (algorithm confusion).
        forged = _hs256_by_hand({"sub": "ivan", "exp": int(time.time()) + 60}, keys["pem_bytes"])
    else:
        env = {"CHANGEFEED_JWT_JWKS_FILE": str(keys["jwks"])}
        good = token("ivan", publish=["*"], key=keys["rsa"], algorithm="RS256", kid="k1")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = token("ivan", publish=["*"], key=other, algorithm="RS256", kid="k1")
    svc = Service(database, env={"CHANGEFEED_AUTH": "jwt", **env}).start()
    try:
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as http:
            ok = await http.post("/feeds/t", json={"data": 1}, headers=bearer(good))
            assert ok.status_code == 202, ok.text
            bad = await http.post("/feeds/t", json={"data": 1}, headers=bearer(forged))
            assert bad.status_code == 401
    finally:
        svc.stop()


@pytest.mark.slow
def test_serve_makes_a_configured_database_choose_authentication(module_database: str) -> None:
    unset = changefeed("serve", "--port", "0", env={"CHANGEFEED_DATABASE_URL": module_database})
    assert unset.returncode == 2
    assert "CHANGEFEED_AUTH=jwt" in unset.stderr and "CHANGEFEED_AUTH=none" in unset.stderr
    keyless = changefeed(
        "serve",
        "--port",
        "0",
        env={"CHANGEFEED_DATABASE_URL": module_database, "CHANGEFEED_AUTH": "jwt"},
    )
    assert keyless.returncode == 2 and "needs a key" in keyless.stderr


async def test_none_says_so_in_the_log(database: str) -> None:
    svc = Service(database, env={"CHANGEFEED_AUTH": "none"}).start()
    try:
        assert "auth.disabled" in svc.log()
    finally:
        svc.stop()


async def test_sql_roles_producer_publishes_only_and_the_service_needs_no_superuser(
    admin_url: str,
) -> None:
    admin = await asyncpg.connect(admin_url)
    owner, app = f"cf_owner_{int(time.time() * 1000)}", f"cf_app_{int(time.time() * 1000)}"
    try:
        # The producer role exists since the test template was migrated.
        await admin.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER CREATEROLE")
        await admin.execute(f"CREATE ROLE {app} LOGIN NOSUPERUSER")
        await admin.execute(f"GRANT changefeed_producer TO {app}")
    finally:
        await admin.close()
    bare = await create_database(admin_url)
    name = bare.rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"ALTER DATABASE {name} OWNER TO {owner}")
    finally:
        await admin.close()
    owner_url = url_as(bare, owner)
    await asyncio.to_thread(migrate.upgrade, owner_url)
    svc = Service(owner_url).start()
    try:
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as http:
            assert (await http.post("/feeds/roles", json={"data": 1})).status_code == 202
        producer = await asyncpg.connect(url_as(bare, app))
        try:
            await producer.execute("SELECT changefeed.publish('roles', 'sql', '2'::jsonb)")
            for statement in [
                "SELECT * FROM changefeed.events",
                "INSERT INTO changefeed.inbox (topic, type, data) VALUES ('roles', 'x', '3')",
                "SELECT changefeed.sequence()",
                "SELECT changefeed.trim()",
            ]:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await producer.execute(statement)
        finally:
            await producer.close()
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as http:

            async def both() -> list[object]:
                page = (await http.get("/feeds/roles/events")).json()
                return [e["data"] for e in page["events"]] == [1, 2]

            await wait_for(both, timeout=30)
    finally:
        svc.stop()


def test_the_cli_sends_its_token(service: Service) -> None:
    topic = new_topic("orders")
    env = {"CHANGEFEED_URL": service.base_url}
    refused = changefeed("publish", topic, '{"n": 1}', env=env, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr
    env["CHANGEFEED_TOKEN"] = token("cli", publish=[topic], subscribe=[topic])
    assert changefeed("publish", topic, '{"n": 1}', env=env, timeout=60).returncode == 0
    tailed = changefeed("tail", topic, "--after", "0", "--count", "1", env=env, timeout=60)
    assert tailed.returncode == 0 and '"n": 1' in tailed.stdout
