"""All configuration, read once from ``CHANGEFEED_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings; every field is ``CHANGEFEED_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CHANGEFEED_", extra="ignore")

    # Where the data lives. No URL means: run an embedded private cluster in data_dir.
    database_url: str | None = None
    data_dir: Path = Path(".changefeed")
    # The embedded cluster's server binaries; found on PATH, in Debian's directories or in
    # the pgserver wheel when unset.
    pg_bin_dir: Path | None = None

    # Where the CLI's client commands (publish, tail, consumers) find the service.
    url: str = "http://127.0.0.1:8000"
    # The bearer token those commands send when the service checks tokens.
    token: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # Authentication: "jwt", or "none" (everyone may read and publish every topic). Unset:
    # none for the embedded development server; a configured database must choose.
    auth: Literal["none", "jwt"] | None = None
    # Keys for jwt: an HS256 secret, an RS256/ES256 public key (PEM), or a JWKS file.
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    # Required token audience and issuer, when set.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # Clock skew tolerated on exp/nbf.
    jwt_leeway_seconds: float = Field(5.0, ge=0)
    # The cookie a browser's EventSource sends its token in.
    auth_cookie: str = "changefeed_token"

    # Per-subject limits (a subject is a token's `sub`; none without auth), per replica:
    # open streams (429 beyond), and published events per second with a burst.
    subject_max_streams: int = Field(100, gt=0)
    subject_publish_rate: float = Field(10_000.0, gt=0)
    subject_publish_burst: int = Field(20_000, gt=0)

    # Browser origins allowed to subscribe and publish from other sites (CORS), comma
    # separated; "*" allows any. Unset: same-origin only.
    cors_origins: str = ""
    # Host names requests may be addressed to (the Host header, without its port), comma
    # separated; "*" for any. Unset: only localhost, 127.0.0.1 and ::1 when listening on a
    # loopback address (a page on any site could otherwise reach a development server
    # through a name of its own that resolves to 127.0.0.1: DNS rebinding), else any.
    allowed_hosts: str = ""

    # SSE behaviour.
    keepalive_seconds: float = Field(15.0, gt=0)
    retry_milliseconds: int = Field(3000, ge=0)

    # Input limits.
    # Event data as stored (its jsonb text, what subscribers receive), for every path:
    # a property of the database, which `changefeed migrate` sets from this when it is set.
    max_event_bytes: int = Field(64 * 1024, gt=0, le=1 << 28)
    max_batch_events: int = Field(1000, gt=0)
    max_page_events: int = Field(1000, gt=0)
    # A whole POST body, so a batch is bounded by count and by size.
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # The request line and headers together (431 beyond it).
    max_header_bytes: int = Field(32 * 1024, gt=1024)

    # Slow clients: a request head must arrive within this of its first byte, a body
    # within this of its head (408 and the connection closed otherwise).
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    # Open connections per replica (streams included); beyond it, 503 at once.
    max_connections: int = Field(20_000, gt=0)

    # Open SSE streams per replica; beyond it new streams get 503 with Retry-After.
    max_streams: int = Field(10_000, gt=0)

    # Fan-out: a subscriber whose unsent frames exceed this falls back to paging from the table.
    subscriber_buffer_bytes: int = Field(1024 * 1024, gt=0)

    # Sequencer.
    sequencer_batch_size: int = Field(1000, gt=0)
    sequencer_poll_seconds: float = Field(0.1, gt=0)
    election_seconds: float = Field(1.0, gt=0)
    # Publishing through the API answers 503 while this many events wait for the sequencer.
    max_inbox_events: int = Field(1_000_000, gt=0)

    # Retention (policies are set with `changefeed retention`): how often each replica
    # checks, and how many events one short transaction removes at most.
    retention_interval_seconds: float = Field(60.0, gt=0)
    retention_batch_rows: int = Field(5000, gt=0)

    # How often each replica re-reads its subscribed topics' heads in case a notification was lost.
    recheck_seconds: float = Field(5.0, gt=0)

    # Database pool.
    pool_min_size: int = Field(2, ge=0)
    pool_max_size: int = Field(10, gt=0)
    # Bound on waiting for a pooled connection and on each query through it.
    query_timeout_seconds: float = Field(10.0, gt=0)

    shutdown_seconds: float = Field(10.0, gt=0)

    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def allowed_host_list(self) -> list[str]:
        """CHANGEFEED_ALLOWED_HOSTS as a list, lower case, or its default."""
        listed = [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
        if listed:
            return listed
        if self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127."):
            return ["localhost", "127.0.0.1", "::1"]
        return ["*"]

    @property
    def max_event_bytes_if_set(self) -> int | None:
        """CHANGEFEED_MAX_EVENT_BYTES if it was set; unset, the database keeps its limit."""
        return self.max_event_bytes if "max_event_bytes" in self.model_fields_set else None

    @property
    def cors_origin_list(self) -> list[str]:
        """CHANGEFEED_CORS_ORIGINS as a list."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
