"""Who is calling, and what they may do: bearer tokens (JWT) carrying topic grants.

A token's ``changefeed`` claim grants topic patterns (``*`` is any run of characters, as in
streams): ``{"subscribe": ["orders.*"], "publish": ["orders.eu"]}``. Subscribing covers
streams, replay, export and durable consumers; publishing covers ``POST /feeds``. A
consumer belongs to the subject that created it; ``"consume": ["billing*"]`` lets other
subjects use the consumers whose names it covers (workers with identities of their own).
With ``CHANGEFEED_AUTH=none`` every caller may do everything, and is told apart only by
address (only in logs: the per-subject limits apply to authenticated subjects).

Verification is PyJWT's; tokens come from ``Authorization: Bearer``, then a cookie (so a
browser's EventSource can authenticate), then ``?access_token=`` as a last resort.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .. import logs
from ..settings import Settings
from . import filters
from .filters import Where
from .topics import InvalidInput, glob_match

log = logs.get(__name__)

Action = Literal["subscribe", "publish"]


class Unauthenticated(Exception):
    """No usable token (401)."""


class Forbidden(Exception):
    """A valid token without the grant the call needs (403)."""


def covers(grants: tuple[str, ...], name: str) -> bool:
    """Whether some grant pattern matches ``name``: a topic, or a pattern, which is covered
    when every topic it can match is (its ``*`` then has to fall within a grant's ``*``,
    since no topic contains a ``*``)."""
    return any(glob_match(grant, name) for grant in grants)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    # Unix time at which the token expires; None: never (auth none).
    expires_at: float | None = None
    # Whether the per-subject limits apply. Not without authentication: every client
    # behind one proxy or NAT would share one address, and so one budget.
    limited: bool = True
    # Names of consumers created by other subjects that this one may use.
    consume: tuple[str, ...] = ()
    # Subscribe grants that come with a filter (``{"topic": …, "where": …}``): what they
    # grant is only the events whose data contains it.
    filtered: tuple[tuple[str, Where], ...] = ()
    # The subscribe grants without a filter (None: all of them).
    unfiltered: tuple[str, ...] | None = None

    def granted_filter(self, names: list[str] | str) -> tuple[Where, ...] | None:
        """The filters the grants put on reading ``names`` (topics or patterns): None when
        a grant without a filter covers them, else the filters of the grants that do, any
        of which an event may match. Forbidden when ``names`` differ in this (a stream of
        several topics has one filter): subscribe to them apart."""
        if not self.filtered:
            return None
        plain = self.subscribe if self.unfiltered is None else self.unfiltered
        found: set[frozenset[Where] | None] = set()
        for name in [names] if isinstance(names, str) else names:
            wheres = frozenset(w for grant, w in self.filtered if glob_match(grant, name))
            found.add(None if covers(plain, name) or not wheres else wheres)
        if len(found) > 1:
            raise Forbidden(
                f"{self.subject}'s grants filter these topics differently: subscribe to "
                "them one stream (or page) each"
            )
        result = found.pop()
        return None if result is None else tuple(result)

    def require(self, action: Action, names: list[str] | str) -> None:
        """Forbidden unless every topic or pattern in ``names`` is granted for ``action``."""
        grants = self.subscribe if action == "subscribe" else self.publish
        for name in [names] if isinstance(names, str) else names:
            if not covers(grants, name):
                raise Forbidden(f"{self.subject} may not {action} to {name!r}")

    def may(self, action: Action, names: list[str]) -> bool:
        grants = self.subscribe if action == "subscribe" else self.publish
        return all(covers(grants, name) for name in names)

    @property
    def owner(self) -> str | None:
        """Whom a consumer this caller creates belongs to (no one without authentication,
        where every caller is everyone)."""
        return self.subject if self.limited else None

    def may_use_consumer(self, name: str, owner: str | None) -> bool:
        """Whether a consumer is this caller's to use: its own, one its ``consume`` grant
        names, or one that belongs to no one (created without authentication, or before
        consumers had owners), subject to the subscribe grants as ever."""
        return owner is None or owner == self.owner or covers(self.consume, name)


def anonymous(address: str) -> Principal:
    """A caller when authentication is off: everything is allowed."""
    return Principal(f"anonymous@{address}", ("*",), ("*",), limited=False, consume=("*",))


class Authenticator:
    """Verifies tokens with the configured keys."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "jwt"
        self.cookie = settings.auth_cookie
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._keys: dict[str | None, tuple[Any, list[str]]] = {}
        if settings.jwt_secret is not None:
            self._keys[None] = (settings.jwt_secret.get_secret_value(), ["HS256"])
        if settings.jwt_public_key_file is not None:
            self._keys[None] = _public_key(settings.jwt_public_key_file)
        if settings.jwt_jwks_file is not None:
            self._keys.update(_jwks(settings.jwt_jwks_file))
        if self.enabled and not self._keys:
            raise ValueError(
                "CHANGEFEED_AUTH=jwt needs a key: CHANGEFEED_JWT_SECRET (HS256), "
                "CHANGEFEED_JWT_PUBLIC_KEY_FILE (RS256/ES256 PEM) or CHANGEFEED_JWT_JWKS_FILE"
            )

    def verify(self, token: str) -> Principal:
        """The token's principal, or Unauthenticated saying why."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key, algorithms = self._keys.get(kid) or self._keys.get(None) or (None, [])
            if key is None:
                raise Unauthenticated(f"no key for the token's key id {kid!r}")
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.strip():
            # An empty subject would be no one: it would escape the per-subject limits.
            raise Unauthenticated("invalid token: its sub must be a non-empty string")
        grants = claims.get("changefeed")
        if not isinstance(grants, dict):
            grants = {}
        plain, filtered = _subscribe_grants(grants.get("subscribe"))
        return Principal(
            subject=subject,
            subscribe=plain + tuple(grant for grant, _ in filtered),
            unfiltered=plain if filtered else None,
            publish=_patterns(grants.get("publish")),
            expires_at=float(claims["exp"]),
            consume=_patterns(grants.get("consume")),
            filtered=filtered,
        )

    def authenticate(
        self, headers: Any, cookies: dict[str, str], query: Any, address: str
    ) -> Principal:
        """The caller of a request: from its token when auth is on, else anonymous. Pass
        the cookies of reads only (see access.caller)."""
        if not self.enabled:
            return anonymous(address)
        token = _bearer(headers.get("authorization")) or cookies.get(self.cookie)
        token = token or query.get("access_token")
        if not token:
            raise Unauthenticated(
                "a bearer token is required (Authorization header, the "
                f"{self.cookie} cookie, or ?access_token=)"
            )
        return self.verify(token)


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _patterns(value: object) -> tuple[str, ...]:
    # A malformed claim grants nothing rather than failing the request.
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


def _subscribe_grants(value: object) -> tuple[tuple[str, ...], tuple[tuple[str, Where], ...]]:
    """The subscribe claim: plain patterns, and ``{"topic": pattern, "where": {…}}`` entries
    that grant the pattern's events whose data contains ``where``. A malformed entry grants
    nothing."""
    if not isinstance(value, list):
        return (), ()
    patterns: list[str] = []
    filtered: list[tuple[str, Where]] = []
    for entry in value:
        if isinstance(entry, str) and entry:
            patterns.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"topic", "where"}:
            topic = entry["topic"]
            try:
                where = filters.checked(filters.exact(entry["where"]), "the grant's where")
            except InvalidInput:
                continue
            if isinstance(topic, str) and topic:
                filtered.append((topic, where))
    return tuple(patterns), tuple(filtered)


def _public_key(path: Path) -> tuple[Any, list[str]]:
    key = load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise ValueError(f"{path}: an RSA or EC (P-256) public key is needed")


def _jwks(path: Path) -> dict[str | None, tuple[Any, list[str]]]:
    keys: dict[str | None, tuple[Any, list[str]]] = {}
    for jwk in jwt.PyJWKSet.from_json(path.read_text()).keys:
        algorithm = jwk.algorithm_name if jwk.algorithm_name in ("RS256", "ES256") else None
        if algorithm is None:
            algorithm = {"RSA": "RS256", "EC": "ES256"}.get(jwk.key_type or "")
        if algorithm is not None:
            keys[jwk.key_id] = (jwk.key, [algorithm])
    if len(keys) == 1:
        keys[None] = next(iter(keys.values()))  # a token without kid uses the only key
    return keys


def expires_in(principal: Principal) -> float | None:
    """Seconds until the principal's token expires (None: never)."""
    return None if principal.expires_at is None else principal.expires_at - time.time()


def describe(settings: Settings) -> str:
    """For the start-up log line."""
    if settings.auth != "jwt":
        return "none"
    sources = [
        name
        for name, value in (
            ("HS256 secret", settings.jwt_secret),
            ("public key", settings.jwt_public_key_file),
            ("JWKS", settings.jwt_jwks_file),
        )
        if value is not None
    ]
    return "jwt (" + ", ".join(sources) + ")"
