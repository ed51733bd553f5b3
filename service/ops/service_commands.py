"""The commands that talk to a running service over HTTP (CHANGEFEED_URL or ``--url``, with
CHANGEFEED_TOKEN or ``--token``): ``publish``, ``tail``, ``topics``, ``export``, ``import``
and ``consumers``, all through the Python client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from ..settings import Settings
from .commands import UNREACHABLE, USAGE, CommandError, Progress, show

if TYPE_CHECKING:
    from ..client import Client


def _client(settings: Settings) -> Client:
    from ..client import Client

    token = settings.token.get_secret_value() if settings.token else None
    return Client(settings.url, token=token)


def over_http(settings: Settings, work: Callable[[Client], Awaitable[Any]]) -> Any:
    """Runs ``work`` with a client of the service: a refusal is exit 1 (with the problem's
    detail), an unreachable service exit 3."""
    import httpx

    from ..client import ClientError

    async def run() -> Any:
        async with _client(settings) as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    except httpx.HTTPStatusError as exc:
        raise CommandError(f"{exc.response.status_code}: {exc.response.text}") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach {settings.url}: {reason}", UNREACHABLE) from None


def publish(settings: Settings, args: argparse.Namespace) -> None:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise CommandError(f"the data is not JSON: {exc}", USAGE) from None
    over_http(settings, lambda client: client.publish(args.topic, data, type=args.type, id=args.id))
    # Durable, not yet numbered: a repeated --id is accepted and stored once.
    show(args, json.dumps({"accepted": 1}), {"accepted": 1})


def tail(settings: Settings, args: argparse.Namespace) -> None:
    async def follow(client: Client) -> None:
        seen = 0
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

    over_http(settings, follow)


def _reset(frame: dict[str, Any]) -> None:
    """A tail goes on after a reset, saying so on stderr."""
    print(f"changefeed tail: reset ({frame.get('reason')}): {frame.get('detail')}", file=sys.stderr)


def topics(settings: Settings, args: argparse.Namespace) -> None:
    found = over_http(settings, lambda client: client.topics())
    for topic in found:
        # Seqs first_seq..head are held, fewer where compaction thinned them.
        topic["held"] = topic["head"] - topic["first_seq"] + 1 if topic["head"] else 0
    width = max((len(t["topic"]) for t in found), default=5)
    lines = [f"{'topic':<{width}}  {'head':>10}  {'first seq':>10}  {'held (at most)':>14}"]
    lines += [
        f"{t['topic']:<{width}}  {t['head']:>10,}  {t['first_seq']:>10,}  {t['held']:>14,}"
        for t in found
    ]
    show(args, "\n".join(lines) if found else "no topics", {"topics": found})


def consumers_list(settings: Settings, args: argparse.Namespace) -> None:
    found = over_http(settings, lambda client: client.consumers())
    lines = [f"{c['name']}: lag {c.get('lag', '?')}" for c in found]
    show(args, "\n".join(lines) or "no consumers", {"consumers": found})


def consumers_show(settings: Settings, args: argparse.Namespace) -> None:
    found = over_http(settings, lambda client: client.consumer(args.name))
    show(args, json.dumps(found, indent=2), found)


def consumers_create(settings: Settings, args: argparse.Namespace) -> None:
    found = over_http(
        settings,
        lambda client: client.define_consumer(
            args.name, args.topic, visibility_timeout=args.visibility_timeout, start=args.start
        ),
    )
    show(args, json.dumps(found, indent=2), found)


def consumers_delete(settings: Settings, args: argparse.Namespace) -> None:
    over_http(settings, lambda client: client.delete_consumer(args.name))
    show(args, f"deleted {args.name}", {"deleted": args.name})


def export(settings: Settings, args: argparse.Namespace) -> None:
    from ..client import IncompleteExport

    progress = Progress("events")

    async def write(client: Client) -> None:
        # A topic without events is an error (a typo, most likely), not an empty file.
        head = (await client.page(args.topic, limit=1))["head"]
        if head == 0:
            raise CommandError(f"{args.topic} has no events")
        out: IO[bytes] = _output(args.output) if args.output else sys.stdout.buffer
        try:
            chunks = client.export(
                args.topic, after=args.after, before=args.before, since=args.since, until=args.until
            )
            async for chunk in chunks:
                out.write(chunk)
                progress.add(chunk.count(b"\n"))
        finally:
            if args.output:
                out.close()
            else:
                out.flush()

    try:
        over_http(settings, write)
    except IncompleteExport as exc:
        # A cut stream ends without its final chunk: the export is incomplete, say so.
        raise CommandError(f"incomplete, {progress.count} events written: {exc}") from None
    progress.done()


def _output(path: str) -> IO[bytes]:
    """The export's file: not through a link someone planted at its name (a shared /tmp),
    and readable by this user only, since it holds the events."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", USAGE) from None
    return os.fdopen(fd, "wb")


def import_(settings: Settings, args: argparse.Namespace) -> None:
    try:
        source: IO[bytes] = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}", USAGE) from None
    progress = Progress("events sent")

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
                raise CommandError(
                    f"line {number} is not an export line ({exc}); {progress.count} events "
                    "were sent before it",
                    USAGE,
                ) from None

    async def send(client: Client) -> None:
        # In the export's order: a topic's pending batch goes before another topic's.
        topic = ""
        batch: list[dict[str, Any]] = []
        for line_topic, event in parsed():
            if batch and (line_topic != topic or len(batch) >= 500):
                progress.add(await client.publish_many(topic, batch))
                batch = []
            topic = line_topic
            batch.append(event)
        if batch:
            progress.add(await client.publish_many(topic, batch))

    try:
        over_http(settings, send)
    except CommandError as exc:
        if progress.count and "events were sent" not in str(exc):
            exc.args = (f"{exc}; stopped after {progress.count} events",)
        raise
    finally:
        if args.file:
            source.close()
    progress.done()
    show(
        args,
        f"{progress.count} events sent (events stored before, by id, are not stored again)",
        {"sent": progress.count},
    )
