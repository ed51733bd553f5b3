// Types of changefeed's JavaScript client (client.js).

/** One event, exactly once and in order. */
export interface FeedEvent<T = unknown> {
  /** The id to resume after: `<seq>.<hash8>` (one topic) or `<position>.<hash8>` (several). */
  id: string;
  /** Its place in its topic. */
  seq: number;
  topic: string;
  type: string;
  data: T;
}

/** The frame of a `reset`: the stream does not continue where the feed asked. */
export interface ResetFrame {
  reason: "mismatch" | "behind" | "retention" | string;
  detail: string;
  /** The id the feed asked to resume after. */
  requested: string;
  /** Where the stream continues (0: the start of what the topic holds). */
  after: number;
  [key: string]: unknown;
}

export interface FeedOptions {
  /** Start after this id (`"0"`: from the first event); without it, at the live tail. */
  after?: string | number | null;
  /** Only the events whose data contains this object (PostgreSQL's `data @> where`). */
  where?: Record<string, unknown> | null;
  /** A bearer token, or a function returning one, called on every connect. */
  token?: string | (() => string | Promise<string>);
  /** The fetch to use (a custom one in Node, for proxies or TLS settings). */
  fetch?: typeof fetch;
  /** Aborting it closes the feed. */
  signal?: AbortSignal;
  /** Called on a reset, after which the feed goes on; without it, StreamReset is thrown. */
  onReset?: (frame: ResetFrame) => void | Promise<void>;
  /** Parses each frame's JSON (default JSON.parse; a lossless parser keeps big numbers). */
  parse?: (text: string) => any;
  /** Milliseconds without a byte (headers included) after which a connection is taken for
   * dead and replaced (default 90000; keep it above the server's keep-alive interval). */
  idleTimeout?: number;
  /** Characters of one event (or line) at most; a larger one ends the iteration with a
   * ClientError (default 16 Mi). */
  maxEventSize?: number;
}

export interface Feed<T = unknown> extends AsyncIterableIterator<FeedEvent<T>> {
  /** The id of the last event delivered (or where the stream started): persist it and
   * pass it as `after` to resume later. */
  readonly lastEventId: string | null;
  next(): Promise<IteratorResult<FeedEvent<T>, undefined>>;
  /** Closes the feed and ends the iteration (what a `for await` that breaks calls). */
  return(value?: undefined): Promise<IteratorResult<FeedEvent<T>, undefined>>;
  /** Stop: the connection in use is aborted and the iteration ends. */
  close(): void;
}

/** Follow `/feeds/<topic>`, `/feeds/<pattern>` or `/feeds?topic=a&topic=b`, reconnecting by
 * itself until closed. Refusals retrying cannot fix end the iteration with ClientError. */
export function feed<T = unknown>(url: string | URL, options?: FeedOptions): Feed<T>;

export class ClientError extends Error {
  constructor(message: string, status?: number, problem?: ClientError["problem"]);
  /** The HTTP status (0 when there is none). */
  readonly status: number;
  /** The server's problem document, when it sent one. */
  readonly problem?: { type?: string; title?: string; status?: number; detail?: string; [key: string]: unknown };
}

export class StreamReset extends Error {
  constructor(frame: ResetFrame);
  readonly frame: ResetFrame;
}

/** A frame of an event stream. */
export interface Frame {
  id?: string;
  event: string;
  data?: string;
  retry?: number;
}

/** The event-stream parser the client uses. */
export class Parser {
  /** `limit`: characters of one line or one frame's data; beyond it push() throws a RangeError. */
  constructor(limit?: number);
  push(text: string): Generator<Frame>;
  end(): Generator<Frame>;
}
