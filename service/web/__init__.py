"""The HTTP surface: Litestar routes, problem responses, access checks, and the two fast
paths below the framework (the publish fast path, and uvicorn's protocol with its direct
writes to streams)."""
