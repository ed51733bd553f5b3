# PYTHON_ARGCOMPLETE_OK (argcomplete completes `changefeed` from this parser)
"""The ``changefeed`` command: run the service, manage its database, and talk to it.

Every command reports failure the same way: one line ``changefeed <command>: <why>`` on
stderr and an exit code from ``commands`` (1 failed, 2 usage, 3 unreachable)."""

from __future__ import annotations

import argparse
import sys
from argparse import SUPPRESS
from collections.abc import Callable
from typing import Any

import pydantic

from .. import __version__, logs
from ..settings import Settings
from . import commands, database_commands, service_commands

Handler = Callable[[Settings, argparse.Namespace], int | None]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _parser()
    try:
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    try:
        flags = {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "url": getattr(args, "url", None),
            "token": getattr(args, "token", None),
        }
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        print(f"changefeed: invalid configuration:\n{exc}", file=sys.stderr)
        return commands.USAGE
    if args.command == "serve":
        logs.configure(settings.log_level, settings.log_format)
    else:
        # Other commands print their results; their logs (HTTP requests, migrations) only
        # with -v.
        verbose = getattr(args, "verbose", 0) or 0
        level = "warning" if not verbose else "info" if verbose == 1 else "debug"
        logs.configure(level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(settings, args) or commands.OK
    except commands.CommandError as exc:
        print(f"changefeed {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _completion(settings: Settings, args: argparse.Namespace) -> None:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["changefeed"], shell=args.shell))


def _parser() -> argparse.ArgumentParser:
    # Options every command takes, before or after its name (SUPPRESS: a subcommand's
    # absent option must not overwrite one given before the subcommand).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--url",
        default=SUPPRESS,
        help="the service (default http://127.0.0.1:8000, CHANGEFEED_URL)",
    )
    shared.add_argument(
        "--token", default=SUPPRESS, help="a bearer token for the service (CHANGEFEED_TOKEN)"
    )
    shared.add_argument(
        "--json", action="store_true", default=SUPPRESS, help="print the result as JSON"
    )
    shared.add_argument(
        "-v", "--verbose", action="count", default=SUPPRESS, help="log more (-vv: debug)"
    )
    parser = argparse.ArgumentParser(
        prog="changefeed",
        description="An exactly-resumable change feed over PostgreSQL, served as SSE. "
        "Without CHANGEFEED_DATABASE_URL, serve and the database commands use the embedded "
        "PostgreSQL in CHANGEFEED_DATA_DIR (default ./.changefeed).",
        epilog=commands.EXIT_CODES,
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"changefeed {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return subcommands.add_parser(name, parents=[shared], epilog=commands.EXIT_CODES, **kwargs)

    def action(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return group.add_parser(name, parents=[shared], epilog=commands.EXIT_CODES, **kwargs)

    serve = command(
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
    serve.set_defaults(handler=database_commands.serve)

    migrate = command(
        "migrate",
        help="apply the schema migrations to CHANGEFEED_DATABASE_URL",
        description="Apply the migrations: idempotent, and safe to run from several "
        "replicas or jobs at once (they take turns on an advisory lock).",
    )
    migrate.set_defaults(handler=database_commands.migrate)

    capture = command(
        "capture",
        help="publish every INSERT, UPDATE, DELETE and TRUNCATE of a table",
        description="Install triggers on TABLE (schema.table) so that every change publishes "
        "an event in the same transaction, on TOPIC (default: the table's name). Declaring "
        "it again replaces it. SQL: SELECT changefeed.capture('schema.table', 'topic', "
        "exclude => '{column}', row_filter => 'condition'), then CALL "
        "changefeed.backfill('schema.table') outside a transaction block.",
    )
    capture.add_argument("table", nargs="?", help="the table, as schema.table")
    capture.add_argument("--list", action="store_true", help="list the captured tables instead")
    capture.add_argument("--topic", help="the topic (default: the table's name)")
    capture.add_argument(
        "--exclude",
        action="append",
        metavar="COLUMN",
        help="leave this column out of every event (repeat for more; not a key column)",
    )
    capture.add_argument(
        "--where",
        metavar="SQL-CONDITION",
        help="publish only the changes of rows satisfying this condition on the table's "
        "columns (an update taking a row out of it is a delete, into it an insert)",
    )
    capture.add_argument(
        "--backfill",
        action="store_true",
        help="then publish every existing row as a `read` event (see changefeed backfill)",
    )
    capture.set_defaults(handler=database_commands.capture)
    backfill = command(
        "backfill",
        help="publish a captured table's rows as `read` events",
        description="Publish every row of TABLE (or those matching --where) into its "
        "capture's topic as events of type read ({table, op: read, key, new}), in chunks of "
        "the primary key's order, each a short transaction. Exact under concurrent writes: "
        "a row's read is never ordered before a change of that row it does not include. "
        "Apply a read as an upsert of new at key. Killed half-way, run it again: reads are "
        "upserts, so a second full backfill is exact too. Progress: changefeed capture "
        "--list. SQL: CALL changefeed.backfill('schema.table', 'condition').",
    )
    backfill.add_argument("table", help="the table, as schema.table")
    backfill.add_argument(
        "--where",
        metavar="SQL-CONDITION",
        help="only the rows satisfying this condition on the table's columns",
    )
    backfill.add_argument(
        "--chunk-rows", type=int, default=1000, help="rows per transaction (default 1000)"
    )
    backfill.set_defaults(handler=database_commands.backfill)
    uncapture = command("uncapture", help="stop capturing a table's changes")
    uncapture.add_argument("table", help="the table, as schema.table")
    uncapture.set_defaults(handler=database_commands.uncapture)

    verify = command(
        "verify",
        help="recompute topics' hash chains and report the first broken link",
        description="Recompute the chain hash of every event of each TOPIC (all topics when "
        "none is named) from CHANGEFEED_DATABASE_URL; exit 1 if any chain is broken.",
    )
    verify.add_argument("topics", nargs="*", metavar="TOPIC")
    verify.set_defaults(handler=database_commands.verify)

    retention = command(
        "retention",
        help="set, list or clear per-topic retention policies",
        description="Policies say how long topics keep their events (default: forever). "
        "The most specific policy governs a topic: its exact name, else the longest pattern "
        "that matches it. Every replica enforces them every CHANGEFEED_RETENTION_INTERVAL_"
        "SECONDS; `changefeed trim` enforces them now.",
    )
    policy_actions = retention.add_subparsers(dest="action", required=True, metavar="ACTION")
    policy_set = action(policy_actions, "set", help="create or replace a policy")
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
    policy_set.set_defaults(handler=database_commands.retention_set)
    action(policy_actions, "list", help="every policy").set_defaults(
        handler=database_commands.retention_list
    )
    policy_clear = action(policy_actions, "clear", help="remove a policy")
    policy_clear.add_argument("pattern")
    policy_clear.set_defaults(handler=database_commands.retention_clear)
    trim = command(
        "trim",
        help="enforce the retention policies now",
        description="Remove the events that retention policies no longer keep, in short "
        "transactions, and print how many per topic.",
    )
    trim.set_defaults(handler=database_commands.trim)

    publish = command(
        "publish", help="publish one event", description="Publish one event whose data is JSON."
    )
    publish.add_argument("topic")
    publish.add_argument("data", metavar="json", help="the event's data, any JSON value")
    publish.add_argument("--type", default="message", help="the event's type (default message)")
    publish.add_argument("--id", help="a unique id: publishing it again stores nothing new")
    publish.set_defaults(handler=service_commands.publish)

    tail = command(
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
    tail.set_defaults(handler=service_commands.tail)

    export = command(
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
    export.set_defaults(handler=service_commands.export)
    import_ = command(
        "import",
        help="publish an NDJSON export into this deployment (idempotent)",
        description="Publish the events of an export, in order. Each keeps its id; an event "
        "exported without one gets the id '<topic>:<seq>' from the export, so that running "
        "the same import twice stores every event once.",
    )
    import_.add_argument("file", nargs="?", help="the export (default: stdin)")
    import_.add_argument("--topic", help="publish on this topic instead of the exported one")
    import_.set_defaults(handler=service_commands.import_)

    consumers = command("consumers", help="list, show, create or delete consumers")
    actions = consumers.add_subparsers(dest="action", required=True, metavar="ACTION")
    action(actions, "list", help="all consumers with their lag").set_defaults(
        handler=service_commands.consumers_list
    )
    show = action(actions, "show", help="a consumer and its per-topic cursors")
    show.add_argument("name")
    show.set_defaults(handler=service_commands.consumers_show)
    create = action(actions, "create", help="create or update a consumer")
    create.add_argument("name")
    create.add_argument(
        "--topic", action="append", required=True, help="a topic or pattern; repeat for more"
    )
    create.add_argument("--visibility-timeout", type=float, default=30.0)
    create.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    create.set_defaults(handler=service_commands.consumers_create)
    remove = action(actions, "delete", help="delete a consumer")
    remove.add_argument("name")
    remove.set_defaults(handler=service_commands.consumers_delete)

    topics = command("topics", help="list the topics with their heads and sizes")
    topics.set_defaults(handler=service_commands.topics)

    status = command(
        "status",
        help="where the service and its database are, and whether they run",
        description="The service URL and whether it answers, the data directory and whether "
        "serve runs on it, the database URL (for psql), the schema revision, the auth mode. "
        "Starts nothing.",
    )
    status.set_defaults(handler=database_commands.status)
    psql = command(
        "psql",
        help="open psql on the database (the embedded one without CHANGEFEED_DATABASE_URL)",
    )
    psql.add_argument(
        "psql_args",
        nargs=argparse.REMAINDER,
        help="passed on to psql, after -- (psql -- -c 'SELECT 1')",
    )
    psql.set_defaults(handler=database_commands.psql)

    completion = command(
        "completion",
        help="print a shell completion script",
        description='bash: eval "$(changefeed completion bash)" in ~/.bashrc; zsh: the same '
        "with zsh in ~/.zshrc.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=_completion)
    return parser
