"""The ``changefeed`` command: run the service, manage its database, and talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pydantic

from .. import __version__, logs
from ..settings import Settings

if TYPE_CHECKING:
    from ..client import Client

Handler = Callable[[Settings, argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        print(f"changefeed: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if getattr(args, "url", None):
        settings = settings.model_copy(update={"url": args.url})
    logs.configure(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    return handler(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changefeed",
        description="An exactly-resumable change feed over PostgreSQL, served as SSE.",
    )
    parser.add_argument("--version", action="version", version=f"changefeed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve HTTP; without CHANGEFEED_DATABASE_URL on an embedded PostgreSQL",
        description="Serve the HTTP API. With no CHANGEFEED_DATABASE_URL, create (first run) "
        "and start a private PostgreSQL cluster in CHANGEFEED_DATA_DIR (default ./.changefeed), "
        "migrate it, and stop it on exit.",
    )
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1, CHANGEFEED_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, CHANGEFEED_PORT)")
    serve.add_argument(
        "--migrate", action="store_true", help="apply migrations to the database first"
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser(
        "migrate",
        help="apply the schema migrations to CHANGEFEED_DATABASE_URL",
        description="Apply the migrations: idempotent, and safe to run from several "
        "replicas or jobs at once (they take turns on an advisory lock).",
    )
    migrate.set_defaults(handler=_migrate)

    capture = commands.add_parser(
        "capture",
        help="publish every INSERT, UPDATE, DELETE and TRUNCATE of a table",
        description="Install triggers on TABLE (schema.table) so that every change publishes "
        "an event in the same transaction, on TOPIC (default: the table's name). Declaring "
        "it again replaces it. SQL: SELECT changefeed.capture('schema.table', 'topic').",
    )
    capture.add_argument("table", help="the table, as schema.table")
    capture.add_argument("--topic", help="the topic (default: the table's name)")
    capture.set_defaults(handler=_capture)
    uncapture = commands.add_parser("uncapture", help="stop capturing a table's changes")
    uncapture.add_argument("table", help="the table, as schema.table")
    uncapture.set_defaults(handler=_uncapture)

    verify = commands.add_parser(
        "verify",
        help="recompute topics' hash chains and report the first broken link",
        description="Recompute the chain hash of every event of each TOPIC (all topics when "
        "none is named) from CHANGEFEED_DATABASE_URL; exit 1 if any chain is broken.",
    )
    verify.add_argument("topics", nargs="*", metavar="TOPIC")
    verify.set_defaults(handler=_verify)

    retention = commands.add_parser(
        "retention",
        help="set, list or clear per-topic retention policies",
        description="Policies say how long topics keep their events (default: forever). "
        "The most specific policy governs a topic: its exact name, else the longest pattern "
        "that matches it. Every replica enforces them every CHANGEFEED_RETENTION_INTERVAL_"
        "SECONDS; `changefeed trim` enforces them now.",
    )
    policy_actions = retention.add_subparsers(dest="action", required=True, metavar="ACTION")
    policy_set = policy_actions.add_parser("set", help="create or replace a policy")
    policy_set.add_argument("pattern", help="a topic, or a pattern such as orders.*")
    policy_set.add_argument(
        "--max-age", help="keep events younger than this (PostgreSQL interval: 30d, 12h, P1W)"
    )
    policy_set.add_argument("--max-count", type=int, help="keep the latest N events")
    policy_set.add_argument(
        "--compact",
        action="store_true",
        help="beyond the bounds keep the latest event per key (data.key) instead of none",
    )
    policy_set.set_defaults(handler=_retention_set)
    policy_actions.add_parser("list", help="every policy").set_defaults(handler=_retention_list)
    policy_clear = policy_actions.add_parser("clear", help="remove a policy")
    policy_clear.add_argument("pattern")
    policy_clear.set_defaults(handler=_retention_clear)
    trim = commands.add_parser(
        "trim",
        help="enforce the retention policies now",
        description="Remove the events that retention policies no longer keep, in short "
        "transactions, and print how many per topic.",
    )
    trim.set_defaults(handler=_trim)

    publish = commands.add_parser(
        "publish", help="publish one event", description="Publish one event whose data is JSON."
    )
    publish.add_argument("topic")
    publish.add_argument("json", help="the event's data, any JSON value")
    publish.add_argument("--type", default="message", help="the event's type (default message)")
    publish.add_argument("--id", help="a unique id: publishing it again stores nothing new")
    publish.set_defaults(handler=_publish)

    tail = commands.add_parser(
        "tail",
        help="follow a topic, printing one JSON line per event",
        description="Follow TOPIC (or a pattern such as orders.*) live, reconnecting and "
        "resuming as needed; one JSON object per line.",
    )
    tail.add_argument("topic")
    tail.add_argument(
        "--after",
        help="start after this seq, or an event's last_event_id (<seq>.<hash8>, verified); "
        "0: from the start",
    )
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.set_defaults(handler=_tail)

    export = commands.add_parser(
        "export",
        help="write a topic's events as NDJSON",
        description="Stream TOPIC's events (one JSON object per line) to stdout or --output.",
    )
    export.add_argument("topic")
    export.add_argument("--after", type=int, default=0, help="events after this seq")
    export.add_argument("--before", type=int, help="events before this seq")
    export.add_argument("--since", help="events from this time on (ISO 8601)")
    export.add_argument("--until", help="events before this time (ISO 8601)")
    export.add_argument("--output", "-o", help="a file (default: stdout)")
    export.set_defaults(handler=_export)
    import_ = commands.add_parser(
        "import",
        help="publish an NDJSON export into this deployment (idempotent)",
        description="Publish the events of an export, in order. Each keeps its id; an event "
        "exported without one gets the id '<topic>:<seq>' from the export, so that running "
        "the same import twice stores every event once.",
    )
    import_.add_argument("file", nargs="?", help="the export (default: stdin)")
    import_.add_argument("--topic", help="publish on this topic instead of the exported one")
    import_.set_defaults(handler=_import)

    consumers = commands.add_parser("consumers", help="list, show, create or delete consumers")
    actions = consumers.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="all consumers with their lag").set_defaults(
        handler=_consumers_list
    )
    show = actions.add_parser("show", help="a consumer and its per-topic cursors")
    show.add_argument("name")
    show.set_defaults(handler=_consumers_show)
    create = actions.add_parser("create", help="create or update a consumer")
    create.add_argument("name")
    create.add_argument(
        "--topic", action="append", required=True, help="a topic or pattern; repeat for more"
    )
    create.add_argument("--visibility-timeout", type=float, default=30.0)
    create.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    create.set_defaults(handler=_consumers_create)
    remove = actions.add_parser("delete", help="delete a consumer")
    remove.add_argument("name")
    remove.set_defaults(handler=_consumers_delete)

    for client_command in (publish, tail, export, import_, consumers):
        client_command.add_argument(
            "--url", help="the service (default http://127.0.0.1:8000, CHANGEFEED_URL)"
        )
    return parser


# -- the service and its database ----------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from ..core.auth import Authenticator
    from . import server
    from .cluster import ClusterError
    from .migrate import SchemaNotReady

    if settings.auth is None:
        if settings.database_url:
            print(
                "changefeed serve: choose authentication for this database: "
                "CHANGEFEED_AUTH=jwt with a key (CHANGEFEED_JWT_SECRET, _PUBLIC_KEY_FILE or "
                "_JWKS_FILE), or CHANGEFEED_AUTH=none to let anyone who reaches the service "
                "read and publish every topic",
                file=sys.stderr,
            )
            return 2
        # The embedded development server: open, and the log says so.
        settings = settings.model_copy(update={"auth": "none"})
    try:
        Authenticator(settings)
    except (ValueError, OSError) as exc:
        print(f"changefeed serve: invalid authentication settings: {exc}", file=sys.stderr)
        return 2
    try:
        with server.database(settings, apply_migrations=args.migrate) as url:
            server.preflight(url)
            return 0 if server.serve(settings, url) else 1
    except (ClusterError, SchemaNotReady, OSError) as exc:
        print(f"changefeed serve: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # asyncpg errors while connecting or migrating: one readable line, not a traceback.
        print(f"changefeed serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _database_url(settings: Settings, command: str) -> str | None:
    if not settings.database_url:
        print(f"changefeed {command}: set CHANGEFEED_DATABASE_URL=postgresql://…", file=sys.stderr)
    return settings.database_url


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from . import migrate

    url = _database_url(settings, "migrate")
    if url is None:
        return 2
    try:
        migrate.upgrade(url, max_event_bytes=settings.max_event_bytes_if_set)
    except Exception as exc:
        print(f"changefeed migrate: {exc}", file=sys.stderr)
        return 1
    print(f"changefeed migrate: schema at revision {migrate.head_revision()}")
    return 0


def _capture(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import capture

    url = _database_url(settings, "capture")
    if url is None:
        return 2
    return _run(
        "capture",
        capture.capture(url, args.table, args.topic),
        lambda topic: f"changes of {args.table} are published on topic {topic}",
    )


def _uncapture(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import capture

    url = _database_url(settings, "uncapture")
    if url is None:
        return 2
    return _run(
        "uncapture",
        capture.uncapture(url, args.table),
        lambda removed: (
            f"{args.table} is no longer captured" if removed else f"{args.table} was not captured"
        ),
    )


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import audit

    url = _database_url(settings, "verify")
    if url is None:
        return 2
    try:
        broken, marks = asyncio.run(audit.verify(url, list(args.topics)))
    except Exception as exc:
        print(f"changefeed verify: {exc}", file=sys.stderr)
        return 1
    for topic, seq, problem in broken:
        print(f"changefeed verify: {topic}: broken at seq {seq}: {problem}")
    for topic, first_seq in sorted(marks.items()):
        print(f"changefeed verify: {topic}: checked from seq {first_seq}, its low-water mark")
    if broken:
        return 1
    print(f"changefeed verify: {', '.join(args.topics) or 'every topic'}: intact")
    return 0


def _retention_set(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import retention

    def say(policy: retention.Policy) -> str:
        return f"{policy.pattern}: {_describe(policy)}"

    return _with_connection(
        settings,
        "retention",
        lambda conn: retention.set_policy(
            conn, args.pattern, args.max_age, args.max_count, args.compact
        ),
        say,
    )


def _describe(policy: Any) -> str:
    bounds = []
    if policy.max_age is not None:
        bounds.append(f"events younger than {policy.max_age}")
    if policy.max_count is not None:
        bounds.append(f"the latest {policy.max_count} events")
    if not policy.compact:
        return "keep " + " and ".join(bounds)
    if not bounds:
        return "keep the latest event per key"
    return "keep " + " and ".join(bounds) + ", and before them the latest event per key"


def _retention_list(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import retention

    def say(found: list[retention.Policy]) -> str:
        if not found:
            return "no policies: every topic keeps every event"
        return "\n" + "\n".join(f"{p.pattern}: {_describe(p)}" for p in found)

    return _with_connection(settings, "retention", retention.policies, say)


def _retention_clear(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import retention

    return _with_connection(
        settings,
        "retention",
        lambda conn: retention.clear_policy(conn, args.pattern),
        lambda removed: f"cleared {args.pattern}" if removed else f"no policy for {args.pattern}",
    )


def _trim(settings: Settings, args: argparse.Namespace) -> int:
    from ..core import retention

    def say(removed: dict[str, int]) -> str:
        if not removed:
            return "nothing to remove"
        return ", ".join(f"{topic}: {n} removed" for topic, n in sorted(removed.items()))

    return _with_connection(
        settings,
        "trim",
        lambda conn: retention.trim(conn, settings.retention_batch_rows),
        say,
    )


def _with_connection(
    settings: Settings,
    command: str,
    work: Callable[[Any], Awaitable[Any]],
    say: Callable[[Any], str],
) -> int:
    """Run ``work`` on a connection to CHANGEFEED_DATABASE_URL and print what ``say`` makes
    of its result; a failure is one line on stderr and exit 1."""
    from ..core import database

    url = _database_url(settings, command)
    if url is None:
        return 2

    async def run() -> Any:
        conn = await database.connect(url, "cli")
        try:
            return await work(conn)
        finally:
            await conn.close()

    return _run(command, run(), say)


def _run(command: str, work: Awaitable[Any], say: Callable[[Any], str]) -> int:
    try:
        result = asyncio.run(_awaited(work))
    except Exception as exc:
        print(f"changefeed {command}: {exc}", file=sys.stderr)
        return 1
    print(f"changefeed {command}: {say(result)}")
    return 0


async def _awaited(work: Awaitable[Any]) -> Any:
    return await work


# -- talking to a running service ----------------------------------------------------------


def _client(settings: Settings) -> Client:
    """The Python client, for the commands that talk to a running service."""
    from ..client import Client

    token = settings.token.get_secret_value() if settings.token else None
    return Client(settings.url, token=token)


def _over_http(
    settings: Settings,
    command: str,
    work: Callable[[Client], Awaitable[Any]],
    say: Callable[[Any], str | None],
) -> int:
    """Run ``work`` with a client of CHANGEFEED_URL and print what ``say`` makes of its
    result; a refusal or an unreachable service is one line on stderr and exit 1."""
    import httpx

    from ..client import ClientError

    async def run() -> Any:
        async with _client(settings) as client:
            return await work(client)

    try:
        result = asyncio.run(run())
    except ClientError as exc:
        print(f"changefeed {command}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPStatusError as exc:
        print(f"changefeed {command}: {exc.response.status_code}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"changefeed {command}: cannot reach {settings.url}: {exc}", file=sys.stderr)
        return 1
    said = say(result)
    if said is not None:
        print(said)
    return 0


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.json)
    except ValueError as exc:
        print(f"changefeed publish: the data is not JSON: {exc}", file=sys.stderr)
        return 2
    return _over_http(
        settings,
        "publish",
        lambda client: client.publish(args.topic, data, type=args.type, id=args.id),
        lambda _: json.dumps({"accepted": 1}, indent=2),
    )


def _tail(settings: Settings, args: argparse.Namespace) -> int:
    from ..client import ClientError

    async def follow() -> None:
        seen = 0
        async with _client(settings) as client:
            async for event in client.feed(args.topic, after=args.after, on_reset=_reset):
                line = {
                    "id": event.id,
                    "last_event_id": event.last_event_id,
                    "topic": event.topic,
                    "seq": event.seq,
                    "type": event.type,
                    "data": event.data,
                }
                # default=str: numbers beyond float's range arrive as Decimals.
                print(json.dumps(line, default=str), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return

    try:
        asyncio.run(follow())
    except ClientError as exc:
        print(f"changefeed tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _reset(frame: dict[str, Any]) -> None:
    """A tail goes on after a reset, saying so on stderr."""
    print(f"changefeed tail: reset ({frame.get('reason')}): {frame.get('detail')}", file=sys.stderr)


def _shown(found: Any) -> str:
    return json.dumps(found, indent=2)


def _consumers_list(settings: Settings, args: argparse.Namespace) -> int:
    return _over_http(
        settings,
        "consumers",
        lambda client: client.consumers(),
        lambda found: _shown({"consumers": found}),
    )


def _consumers_show(settings: Settings, args: argparse.Namespace) -> int:
    return _over_http(settings, "consumers", lambda client: client.consumer(args.name), _shown)


def _consumers_create(settings: Settings, args: argparse.Namespace) -> int:
    return _over_http(
        settings,
        "consumers",
        lambda client: client.define_consumer(
            args.name, args.topic, visibility_timeout=args.visibility_timeout, start=args.start
        ),
        _shown,
    )


def _consumers_delete(settings: Settings, args: argparse.Namespace) -> int:
    return _over_http(
        settings,
        "consumers",
        lambda client: client.delete_consumer(args.name),
        lambda _: f"changefeed consumers: deleted {args.name}",
    )


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from ..client import IncompleteExport

    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115

    async def write(client: Client) -> None:
        chunks = client.export(
            args.topic, after=args.after, before=args.before, since=args.since, until=args.until
        )
        async for chunk in chunks:
            out.write(chunk)

    try:
        return _over_http(settings, "export", write, lambda _: None)
    except IncompleteExport as exc:
        # A cut stream ends without its final chunk: the export is incomplete, say so.
        print(f"changefeed export: incomplete: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.output:
            out.close()
        else:
            out.flush()


def _import(settings: Settings, args: argparse.Namespace) -> int:
    source = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
    imported = 0

    def parsed() -> Iterator[tuple[str, dict[str, Any]]]:
        for number, raw in enumerate(source, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                event = {
                    "type": line["type"],
                    "data": line["data"],
                    "id": line.get("id") or f"{line['topic']}:{line['seq']}",
                }
                yield args.topic or line["topic"], event
            except (ValueError, KeyError, TypeError) as exc:
                raise _NotAnExport(f"line {number} is not an export line: {exc}") from None

    async def send(client: Client) -> None:
        nonlocal imported
        # In the export's order: a topic's pending batch goes before another topic's.
        topic = ""
        batch: list[dict[str, Any]] = []
        for line_topic, event in parsed():
            if batch and (line_topic != topic or len(batch) >= 500):
                imported += await client.publish_many(topic, batch)
                batch = []
            topic = line_topic
            batch.append(event)
        if batch:
            imported += await client.publish_many(topic, batch)

    try:
        code = _over_http(
            settings,
            "import",
            send,
            lambda _: f"changefeed import: {imported} events sent (ones stored before are skipped)",
        )
    except _NotAnExport as exc:
        print(f"changefeed import: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.file:
            source.close()
    if code:
        print(f"changefeed import: stopped after {imported} events", file=sys.stderr)
    return code


class _NotAnExport(ValueError):
    """A line of the input is not a line of an export."""
