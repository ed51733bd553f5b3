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

// A connection that has not sent a byte for this long (the response's headers included)
// is taken for dead: a vanished peer whose connection never closed. The server's
// keep-alives come every 15 s by default; `idleTimeout` changes it.
const IDLE_MS = 90_000;
const FIRST_WAIT_MS = 100;
const MAX_RETRY_AFTER_MS = 300_000;
// The server's `retry:` is taken within these bounds (a hostile or broken one cannot make a
// client wait for days, or hammer it).
const RETRY_BOUNDS_MS = [100, 60_000];
// Characters of one event (or one line) at most: a peer sending an endless line must not
// take all memory. The service's largest event is CHANGEFEED_MAX_EVENT_BYTES (64 KiB).
const MAX_EVENT_SIZE = 16 * 1024 * 1024;
// What is kept of a refusal's body, and shown of a frame in an error message.
const MAX_ERROR_BODY = 64 * 1024;
const shown = (text) => (text.length > 200 ? `${text.slice(0, 200)}…` : text);

// What is worth connecting again for: the network failed, the server answered 5xx, 408 or
// 429, or went quiet. Anything else thrown while following (a ClientError, a StreamReset,
// an error of the caller's token function or onReset) ends the iteration with it.
class Transient extends Error {}

class Feed {
  #url;
  #token;
  #fetch;
  #onReset;
  #parse;
  #idleMs;
  #signal;
  #closed = false;
  #lastEventId;
  #connection = null; // the AbortController of the connection in use
  #watchdog = null; // aborts it when it has been quiet for #idleMs
  #wake = null; // ends the wait between connections early (close)
  #events;

  #maxEventSize;

  constructor(
    url,
    { after, token, fetch: fetcher, signal, onReset, parse, idleTimeout, maxEventSize, where } = {},
  ) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.#url = new URL(url, base);
    this.#url.searchParams.set("dispatch", "message");
    // Only events whose data contains it (the service's `where`, PostgreSQL's `@>`).
    if (where !== undefined && where !== null) this.#url.searchParams.set("where", JSON.stringify(where));
    this.#token = token;
    this.#fetch = fetcher || globalThis.fetch.bind(globalThis);
    this.#onReset = onReset;
    this.#parse = parse || JSON.parse;
    this.#idleMs = idleTimeout ?? IDLE_MS;
    this.#maxEventSize = maxEventSize ?? MAX_EVENT_SIZE;
    this.#lastEventId = after === undefined || after === null ? null : String(after);
    if (signal) {
      this.#signal = signal;
      if (signal.aborted) this.#closed = true;
      else signal.addEventListener("abort", this.close, { once: true });
    }
    this.#events = this.#run();
  }

  /** The id to resume after: the last event delivered, or, before the first, where the
   * stream started. Persist it and pass it as `after` to resume later. */
  get lastEventId() {
    return this.#lastEventId;
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  next() {
    return this.#events.next();
  }

  /** Ends the iteration (a `for await` that breaks calls it too). */
  return(value) {
    this.close();
    return this.#events.return(value);
  }

  /** Stop: the connection in use is aborted and the iteration ends. */
  close = () => {
    this.#closed = true;
    this.#signal?.removeEventListener("abort", this.close);
    this.#signal = null;
    this.#connection?.abort();
    this.#wake?.();
  };

  async *#run() {
    let attempt = 0; // connections since the last event delivered
    let ceiling = 3000; // the server's `retry:`, which bounds every wait
    let refreshed = false; // a 401 already had one immediate retry
    try {
      while (!this.#closed) {
        let wait = null;
        try {
          const response = await this.#connect();
          if (!response) return; // closed while connecting
          if (response.status === 401 && typeof this.#token === "function" && !refreshed) {
            refreshed = true; // the provider may have handed out a token that just expired
            await response.body?.cancel().catch(() => {});
            continue;
          }
          if (response.status !== 200) {
            wait = retryAfter(response);
            await refuse(response);
          }
          refreshed = false;
          const type = response.headers.get("Content-Type") || "";
          if (!type.startsWith("text/event-stream") || !response.body) {
            // Not the service (a captive portal, a misrouted proxy): retrying would not help.
            throw new ClientError(`not an event stream: 200 ${type || "with no body"}`, 200);
          }
          for await (const frame of this.#frames(response.body)) {
            if (this.#closed) return;
            if (frame.retry !== undefined) {
              ceiling = Math.min(Math.max(frame.retry, RETRY_BOUNDS_MS[0]), RETRY_BOUNDS_MS[1]);
            }
            if (frame.data === undefined) {
              // The opening frame: its id is where this stream starts, a resume point
              // before any event (so a feed cut before its first event loses nothing);
              // a filtered stream's id-only frame: how far it has passed over events it
              // left out.
              if (frame.id) this.#lastEventId = frame.id;
              continue;
            }
            if (frame.event === "reset") {
              const reset = this.#read(frame);
              if (!Number.isSafeInteger(reset.after) || reset.after < 0) {
                throw new ClientError(`a reset without a valid "after": ${shown(frame.data)}`);
              }
              this.#lastEventId = String(reset.after);
              if (!this.#onReset) throw new StreamReset(reset);
              await this.#onReset(reset);
              if (this.#closed) return;
              continue;
            }
            if (frame.event === "closed") {
              // Ended on purpose (the token expired): reconnect at once, with a fresh one.
              attempt = 0;
              break;
            }
            if (frame.event !== "message") continue; // a frame of a later protocol version
            const body = this.#read(frame);
            if (!frame.id) throw new ClientError(`an event without an id: ${shown(frame.data)}`);
            const event = { id: frame.id, seq: body.seq, topic: body.topic, type: body.type, data: body.data };
            this.#lastEventId = frame.id;
            yield event;
            attempt = 0;
          }
        } catch (error) {
          if (this.#closed) return;
          if (!(error instanceof Transient)) throw error;
        } finally {
          this.#disconnect();
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
    } finally {
      this.close(); // ended by an error too: nothing may reconnect, nothing keeps the signal
    }
  }

  /** The response to a new request, or nothing if the feed was closed meanwhile. */
  async #connect() {
    const connection = new AbortController();
    this.#connection = connection; // close() from here on aborts it
    const headers = { Accept: "text/event-stream" };
    if (this.#lastEventId !== null) headers["Last-Event-ID"] = this.#lastEventId;
    if (this.#token) {
      const token = typeof this.#token === "function" ? await this.#token() : this.#token;
      headers.Authorization = `Bearer ${token}`;
    }
    if (this.#closed) return null;
    for (const [name, value] of Object.entries(headers)) {
      if (typeof value !== "string" || !/^[\t\x20-\x7e]*$/.test(value)) {
        // Never the value itself: it may be the token.
        throw new ClientError(`${name} cannot be sent: not a string of printable ASCII`);
      }
    }
    this.#arm();
    try {
      return await this.#fetch(this.#url.href, { headers, cache: "no-store", signal: connection.signal });
    } catch (error) {
      throw new Transient(String(error));
    }
  }

  /** (Re)starts the watchdog of the connection in use. */
  #arm() {
    clearTimeout(this.#watchdog);
    const connection = this.#connection;
    this.#watchdog = setTimeout(() => connection?.abort(), this.#idleMs);
  }

  #disconnect() {
    clearTimeout(this.#watchdog);
    this.#connection?.abort();
    this.#connection = null;
  }

  /** The frames of the response's body, as they arrive. */
  async *#frames(body) {
    const parser = new Parser(this.#maxEventSize);
    const reader = body.getReader();
    const decoder = new TextDecoder(); // UTF-8; drops a leading byte order mark, as the spec says
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw new Transient(String(error));
        }
        this.#arm();
        if (chunk.done) {
          yield* parser.end();
          return;
        }
        try {
          yield* parser.push(decoder.decode(chunk.value, { stream: true }));
        } catch (error) {
          if (error instanceof RangeError) throw new ClientError(error.message);
          throw error;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /** A frame's data as an object; anything else is a ClientError (reconnecting would
   * receive the same frame again). */
  #read(frame) {
    let body;
    try {
      body = this.#parse(frame.data);
    } catch (error) {
      throw new ClientError(`event ${frame.id ?? frame.event} cannot be read: ${error}`);
    }
    if (body === null || typeof body !== "object") {
      throw new ClientError(`event ${frame.id ?? frame.event} is not an object: ${shown(frame.data)}`);
    }
    return body;
  }
}

/** Throws ClientError for a refusal retrying cannot fix, Transient for one it can. */
async function refuse(response) {
  const transient = response.status >= 500 || response.status === 408 || response.status === 429;
  if (transient) {
    await response.body?.cancel().catch(() => {});
    throw new Transient(`${response.status}`);
  }
  let problem;
  try {
    problem = JSON.parse(await readAtMost(response, MAX_ERROR_BODY));
  } catch {
    problem = undefined;
  }
  const detail = problem && typeof problem.detail === "string" ? problem.detail : response.statusText;
  throw new ClientError(`${response.status}: ${detail}`, response.status, problem);
}

/** The start of a response's body, as text (a refusal's problem document is small). */
async function readAtMost(response, limit) {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const parts = [];
  let size = 0;
  try {
    while (size < limit) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.length;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return new TextDecoder().decode(bytes.subarray(0, limit));
}

/** A 429's or 503's `Retry-After` in milliseconds (seconds or an HTTP date), bounded. */
function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  if (![429, 503].includes(response.status) || !value) return null;
  const ms = /^\d+$/.test(value.trim()) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS) : null;
}

function indexOr(text, search, from) {
  const at = text.indexOf(search, from);
  return at < 0 ? Infinity : at;
}

/** The event-stream format (https://html.spec.whatwg.org/multipage/server-sent-events.html),
 * as text arrives. Written here rather than imported so that /client.js needs no bundler;
 * it is checked against eventsource-parser on every split of the same streams. */
export class Parser {
  #pending = []; // the start of a line that has not ended yet, as it arrived
  #pendingSize = 0;
  #frame = { data: [], size: 0 };
  #limit;

  /** `limit`: characters of one line, or of one frame's data, beyond which push() throws
   * a RangeError (a peer sending an endless line must not take all memory). */
  constructor(limit = Infinity) {
    this.#limit = limit;
  }

  /** The frames completed by `text`. */
  *push(text) {
    const last = this.#pending.at(-1);
    if (!/[\r\n]/.test(text) && !last?.endsWith("\r")) {
      // Still inside one line (a large event arriving in pieces): join the pieces once,
      // when the line ends, rather than once per piece.
      this.#pending.push(text);
      this.#pendingSize += text.length;
      if (this.#pendingSize > this.#limit) throw new RangeError(`a line longer than ${this.#limit}`);
      return;
    }
    this.#pending.push(text);
    const buffer = this.#pending.join("");
    let start = 0;
    // The next CR and LF at or after start (Infinity: none left), each searched again only
    // once passed, so that a buffer of many lines costs one pass whatever its line endings.
    let cr = -1;
    let lf = -1;
    while (start < buffer.length) {
      // Lines end at CRLF, LF or CR. A CR at the very end may be the start of a CRLF.
      if (cr < start) cr = indexOr(buffer, "\r", start);
      if (lf < start) lf = indexOr(buffer, "\n", start);
      const end = Math.min(cr, lf);
      if (end === Infinity || (end === cr && cr + 1 === buffer.length)) break;
      const line = buffer.slice(start, end);
      start = end + (end === cr && lf === cr + 1 ? 2 : 1);
      const frame = this.#line(line);
      if (frame) yield frame;
    }
    this.#pending = start < buffer.length ? [buffer.slice(start)] : [];
    this.#pendingSize = buffer.length - start;
    if (this.#pendingSize > this.#limit) throw new RangeError(`a line longer than ${this.#limit}`);
  }

  /** The frame ended by a CR that was the last character of the stream, if any. */
  *end() {
    const rest = this.#pending.join("");
    this.#pending = [];
    this.#pendingSize = 0;
    if (!rest.endsWith("\r")) return;
    const frame = this.#line(rest.slice(0, -1));
    if (frame) yield frame;
  }

  #line(line) {
    if (line === "") {
      const frame = this.#frame;
      this.#frame = { data: [], size: 0 };
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
    if (field === "data") {
      this.#frame.data.push(value);
      this.#frame.size += value.length + 1;
      if (this.#frame.size > this.#limit) throw new RangeError(`an event larger than ${this.#limit}`);
    } else if (field === "event") this.#frame.event = value;
    else if (field === "id" && !value.includes("\0")) this.#frame.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.#frame.retry = Number(value);
  }
}
