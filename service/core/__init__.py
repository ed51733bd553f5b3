"""The log and its delivery, without HTTP: publishes go to the inbox, the sequencer numbers
them into the events table, and the fan-out, streams, pages, exports and durable consumers
read them out. Knows nothing of Litestar or uvicorn (checked in CI by import-linter)."""
