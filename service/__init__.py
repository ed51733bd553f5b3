"""changefeed: an exactly-resumable change feed over PostgreSQL, served as Server-Sent Events."""

__version__ = "0.1.0"
