"""The naive baseline: SSE with one polling loop per subscriber, as the common tutorials
show it. Each subscriber's request loops on ``SELECT … WHERE seq > last`` and sleeps 100 ms.
It reads changefeed's events table (which the changefeed service fills).

    CHANGEFEED_DATABASE_URL=… python bench/naive.py PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import asyncpg
import uvicorn
from litestar import Litestar, get
from litestar.response import Stream

POLL_SECONDS = 0.1
pool: asyncpg.Pool | None = None


@get("/feeds/{topic:str}")
async def feed(topic: str) -> Stream:
    async def events() -> AsyncIterator[bytes]:
        assert pool is not None
        last = await pool.fetchval(
            "SELECT coalesce(max(head), 0) FROM changefeed.topics WHERE topic = $1", topic
        )
        while True:
            rows = await pool.fetch(
                "SELECT seq, type, data::text AS data FROM changefeed.events "
                "WHERE topic = $1 AND seq > $2 ORDER BY seq",
                topic,
                last,
            )
            for row in rows:
                yield f"id: {row['seq']}\nevent: {row['type']}\ndata: {row['data']}\n\n".encode()
                last = row["seq"]
            await asyncio.sleep(POLL_SECONDS)

    return Stream(events(), media_type="text/event-stream")


async def startup() -> None:
    global pool
    pool = await asyncpg.create_pool(os.environ["CHANGEFEED_DATABASE_URL"], max_size=20)


app = Litestar([feed], on_startup=[startup])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
