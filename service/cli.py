"""The ``changefeed`` command."""

from __future__ import annotations

import argparse
import sys

import pydantic

from service import __version__, logs


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
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
        "--migrate",
        action="store_true",
        help="apply migrations to CHANGEFEED_DATABASE_URL before serving",
    )
    commands.add_parser(
        "migrate",
        help="apply the schema migrations to CHANGEFEED_DATABASE_URL",
        description="Apply the migrations: idempotent, and safe to run from several "
        "replicas or jobs at once (they take turns on an advisory lock).",
    )
    capture = commands.add_parser(
        "capture",
        help="publish every INSERT, UPDATE, DELETE and TRUNCATE of a table",
        description="Install triggers on TABLE (schema.table) so that every change publishes "
        "an event in the same transaction, on TOPIC (default: the table's name). Declaring "
        "it again replaces it. SQL: SELECT changefeed.capture('schema.table', 'topic').",
    )
    capture.add_argument("table", help="the table, as schema.table")
    capture.add_argument("--topic", help="the topic (default: the table's name)")
    uncapture = commands.add_parser("uncapture", help="stop capturing a table's changes")
    uncapture.add_argument("table", help="the table, as schema.table")
    args = parser.parse_args(argv)

    from service.settings import Settings

    try:
        flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        print(f"changefeed: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)

    if args.command == "migrate":
        return _migrate(settings)
    if args.command in ("capture", "uncapture"):
        return _capture(settings, args.command, args.table, getattr(args, "topic", None))
    return _serve(settings, apply_migrations=args.migrate)


def _migrate(settings: object) -> int:
    from service import migrate
    from service.settings import Settings

    assert isinstance(settings, Settings)
    if not settings.database_url:
        print("changefeed migrate: set CHANGEFEED_DATABASE_URL=postgresql://…", file=sys.stderr)
        return 2
    try:
        migrate.upgrade(settings.database_url)
    except Exception as exc:
        print(f"changefeed migrate: {exc}", file=sys.stderr)
        return 1
    print(f"changefeed migrate: schema at revision {migrate.head_revision()}")
    return 0


def _serve(settings: object, *, apply_migrations: bool) -> int:
    from service import server
    from service.cluster import ClusterError
    from service.migrate import SchemaNotReady
    from service.settings import Settings

    assert isinstance(settings, Settings)
    try:
        with server.database(settings, apply_migrations=apply_migrations) as url:
            server.preflight(url)
            return 0 if server.serve(settings, url) else 1
    except (ClusterError, SchemaNotReady, OSError) as exc:
        print(f"changefeed serve: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # asyncpg errors while connecting or migrating: one readable line, not a traceback.
        print(f"changefeed serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _capture(settings: object, command: str, table: str, topic: str | None) -> int:
    import asyncio

    from service import capture
    from service.settings import Settings

    assert isinstance(settings, Settings)
    if not settings.database_url:
        print(f"changefeed {command}: set CHANGEFEED_DATABASE_URL=postgresql://…", file=sys.stderr)
        return 2
    try:
        if command == "capture":
            chosen = asyncio.run(capture.capture(settings.database_url, table, topic))
            print(f"changefeed capture: changes of {table} are published on topic {chosen}")
        elif asyncio.run(capture.uncapture(settings.database_url, table)):
            print(f"changefeed uncapture: {table} is no longer captured")
        else:
            print(f"changefeed uncapture: {table} was not captured")
    except Exception as exc:
        print(f"changefeed {command}: {exc}", file=sys.stderr)
        return 1
    return 0
