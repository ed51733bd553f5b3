"""changefeed: an exactly-resumable change feed over PostgreSQL, served as Server-Sent Events.

For applications: ``from changefeed import Client`` (see ``changefeed.client``). The rest is
the service: ``core`` (the log and its delivery, without HTTP), ``web`` (the HTTP surface)
and ``ops`` (running it); docs/design.md has the map.
"""

from .client import (
    Client,
    ClientError,
    Event,
    FileCheckpoint,
    MemoryCheckpoint,
    TableCheckpoint,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientError",
    "Event",
    "FileCheckpoint",
    "MemoryCheckpoint",
    "TableCheckpoint",
    "__version__",
]
