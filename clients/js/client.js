// changefeed's JavaScript client: follow a feed, resuming exactly where it left off.
//
//   import { feed } from "/client.js";            // served by every replica
//   const events = feed("/feeds/orders", { after: "0", token: async () => freshToken() });
//   for await (const e of events) { /* e.id, e.seq, e.topic, e.type, e.data */ }
//   events.close();
//
// One ES module with no dependencies, so that a page imports it without a build step. It
// keeps the full id of the last event (`<seq>.<hash8>`, or `<position>.<hash8>` for several
// topics) and reconnects with it as `Last-Event-ID`, so the server verifies it still holds
// that event and sends each event exactly once, in order, across restarts and replicas.
// It asks for `dispatch=message` frames, whose data names every event's type: no event type
// can be missed, and a producer's type can never be mistaken for the stream's own `reset`
// and `closed` frames.

/** A refusal that retrying will not fix (400, 401 with a fresh token, 403, 404, 409…), or
 * an event that cannot be read. `status` is the HTTP status (0 when there is none),
 * `problem` the server's problem document when it sent one. */
export class ClientError extends Error {
  constructor(message, status = 0, problem = undefined) {
    super(message);
    this.name = "ClientError";
    this.status = status;
    this.problem = problem;
  }
}

/** The stream does not continue where the feed asked (`frame.reason`: `mismatch` or
 * `behind` after a restore, `retention` when events were removed before delivery).
 * `frame.after` is where it continues: `feed(url, { after: String(frame.after) })`. */
export class StreamReset extends Error {
  constructor(frame) {
    super(frame.detail || "the stream was reset");
    this.name = "StreamReset";
    this.frame = frame;
  }
}

/** Follow `url` (`/feeds/<topic>`, `/feeds/<pattern>`, `/feeds?topic=a&topic=b`): an async
 * iterable of events that reconnects by itself until `close()`. */
export function feed(url, options = {}) {
  return new Feed(url, options);
}

// A stream that has not sent a byte for this long is taken for dead (a vanished peer whose
// connection never closed); the server's keep-alives come every 15 s by default.
const IDLE_MS = 90_000;
const FIRST_WAIT_MS = 100;
const MAX_RETRY_AFTER_MS = 300_000;

class Feed {
  #url;
  #token;
  #fetch;
  #onReset;
  #parse;
  #closed = false;
  #connection = null; // the AbortController of the request in flight
  #wake = null; // ends the wait between connections early (close)
  #events;

  constructor(url, { after, token, fetch: fetcher, signal, onReset, parse } = {}) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.#url = new URL(url, base);
    this.#url.searchParams.set("dispatch", "message");
    this.#token = token;
    this.#fetch = fetcher || globalThis.fetch.bind(globalThis);
    this.#onReset = onReset;
    this.#parse = parse || JSON.parse;
    /** The id to resume after (`after`, an event's `id`): the last event delivered, or
     * where the stream started before its first event. Persist it to resume later. */
    this.lastEventId = after === undefined || after === null ? null : String(after);
    if (signal) {
      if (signal.aborted) this.#closed = true;
      else signal.addEventListener("abort", () => this.close(), { once: true });
    }
    this.#events = this.#run();
  }

  [Symbol.asyncIterator]() {
    return this.#events;
  }

  next() {
    return this.#events.next();
  }

  /** Stop: the request in flight is aborted and the iteration ends. */
  close() {
    this.#closed = true;
    this.#connection?.abort();
    this.#wake?.();
  }

  async *#run() {
    let attempt = 0; // connections since the last event delivered
    let ceiling = 3000; // the server's `retry:`, which bounds every wait
    let refreshed = false; // a 401 already had one immediate retry
    while (!this.#closed) {
      let wait = null;
      try {
        const response = await this.#connect();
        if (response.status === 401 && typeof this.#token === "function" && !refreshed) {
          refreshed = true; // the provider may have handed out a token that just expired
          await discard(response);
          continue;
        }
        if (response.status !== 200) {
          wait = retryAfter(response);
          await refuse(response);
        }
        refreshed = false;
        for await (const frame of frames(response.body, IDLE_MS, () => this.#connection)) {
          if (frame.retry !== undefined) ceiling = Math.max(FIRST_WAIT_MS, frame.retry);
          if (frame.data === undefined) {
            // The opening frame: its id is where this stream starts, a resume point
            // before any event (so a feed cut before its first event loses nothing).
            if (this.lastEventId === null && frame.id) this.lastEventId = frame.id;
            continue;
          }
          if (frame.event === "reset") {
            const reset = this.#read(frame);
            this.lastEventId = String(reset.after);
            if (!this.#onReset) throw new StreamReset(reset);
            await this.#onReset(reset);
            continue;
          }
          if (frame.event === "closed") {
            // Ended on purpose (the token expired): reconnect at once, with a fresh one.
            attempt = 0;
            wait = 0;
            break;
          }
          if (frame.event !== "message") continue; // a frame of a later protocol version
          const body = this.#read(frame);
          if (frame.id) this.lastEventId = frame.id;
          yield { id: frame.id, seq: body.seq, topic: body.topic, type: body.type, data: body.data };
          attempt = 0;
        }
      } catch (error) {
        if (error instanceof ClientError || error instanceof StreamReset) throw error;
        if (this.#closed) return;
        // Anything else (a refused connection, a reset socket, a 5xx) is worth retrying.
      } finally {
        this.#connection?.abort();
        this.#connection = null;
      }
      if (this.#closed) return;
      // Full jitter: many clients that lost one replica do not all come back at once.
      const delay = wait ?? Math.random() * Math.min(ceiling, FIRST_WAIT_MS * 2 ** attempt);
      attempt += 1;
      await new Promise((resolve) => {
        // A plain (ref'd) timer: in Node it keeps the process alive until the reconnect.
        const timer = setTimeout(resolve, delay);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  async #connect() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    if (this.#token) {
      const token = typeof this.#token === "function" ? await this.#token() : this.#token;
      headers.Authorization = `Bearer ${token}`;
    }
    this.#connection = new AbortController();
    return this.#fetch(this.#url.href, {
      headers,
      cache: "no-store",
      signal: this.#connection.signal,
    });
  }

  #read(frame) {
    try {
      return this.#parse(frame.data);
    } catch (error) {
      // Reconnecting would receive it again: say so rather than reconnect forever.
      throw new ClientError(`event ${frame.id ?? frame.event} cannot be read: ${error}`);
    }
  }
}

async function discard(response) {
  await response.body?.cancel().catch(() => {});
}

/** Throws ClientError for a refusal retrying cannot fix; returns for one it can. */
async function refuse(response) {
  const transient = response.status >= 500 || response.status === 408 || response.status === 429;
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = undefined;
  }
  if (transient) throw new Error(`${response.status}`);
  const detail = problem && typeof problem.detail === "string" ? problem.detail : response.statusText;
  throw new ClientError(`${response.status}: ${detail}`, response.status, problem);
}

/** A 429's or 503's `Retry-After` in milliseconds (seconds or an HTTP date), bounded. */
function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  if (![429, 503].includes(response.status) || !value) return null;
  const ms = /^\d+$/.test(value.trim()) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS) : null;
}

/** The frames of an event stream's body. A frame is `{id, event, data, retry}`: `data`
 * undefined when it had no data line, `id` only when it had an id line, `event` "message"
 * unless it named one. Ends at the end of the body; throws if nothing arrives for `idleMs`. */
async function* frames(body, idleMs, connection) {
  const parser = new Parser();
  const reader = body.getReader();
  const decoder = new TextDecoder(); // UTF-8; drops a leading byte order mark, as the spec says
  try {
    for (;;) {
      const timer = setTimeout(() => connection()?.abort(), idleMs);
      let chunk;
      try {
        chunk = await reader.read();
      } finally {
        clearTimeout(timer);
      }
      if (chunk.done) {
        yield* parser.end();
        return;
      }
      yield* parser.push(decoder.decode(chunk.value, { stream: true }));
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** The event-stream format (https://html.spec.whatwg.org/multipage/server-sent-events.html),
 * as text arrives. Written here rather than imported so that /client.js needs no bundler;
 * it is checked against eventsource-parser on every split of the same streams. */
export class Parser {
  #pending = []; // the start of a line that has not ended yet, as it arrived
  #frame = { data: [] };

  /** The frames completed by `text`. */
  *push(text) {
    const last = this.#pending.at(-1);
    if (!/[\r\n]/.test(text) && !last?.endsWith("\r")) {
      // Still inside one line (a large event arriving in pieces): join the pieces once,
      // when the line ends, rather than once per piece.
      this.#pending.push(text);
      return;
    }
    this.#pending.push(text);
    const buffer = this.#pending.join("");
    let start = 0;
    let cr = -1; // the next CR at or after start, searched again only once passed
    while (start < buffer.length) {
      // Lines end at CRLF, LF or CR. A CR at the very end may be the start of a CRLF.
      if (cr < start) cr = buffer.indexOf("\r", start);
      let lf = buffer.indexOf("\n", start);
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        if (cr + 1 === buffer.length) break;
        lf = cr;
      } else if (lf < 0) break;
      const line = buffer.slice(start, lf);
      start = lf + (buffer[lf] === "\r" && buffer[lf + 1] === "\n" ? 2 : 1);
      const frame = this.#line(line);
      if (frame) yield frame;
    }
    this.#pending = start < buffer.length ? [buffer.slice(start)] : [];
  }

  /** The frame ended by a CR that was the last character of the stream, if any. */
  *end() {
    const rest = this.#pending.join("");
    this.#pending = [];
    if (!rest.endsWith("\r")) return;
    const frame = this.#line(rest.slice(0, -1));
    if (frame) yield frame;
  }

  #line(line) {
    if (line === "") {
      const frame = this.#frame;
      this.#frame = { data: [] };
      if (frame.data.length === 0 && frame.id === undefined && frame.retry === undefined) return;
      return {
        id: frame.id,
        event: frame.event || "message",
        data: frame.data.length ? frame.data.join("\n") : undefined,
        retry: frame.retry,
      };
    }
    if (line[0] === ":") return; // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.#frame.data.push(value);
    else if (field === "event") this.#frame.event = value;
    else if (field === "id" && !value.includes("\0")) this.#frame.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.#frame.retry = Number(value);
  }
}
