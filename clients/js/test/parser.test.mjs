// The client's own event-stream parser against eventsource-parser (the most correct of the
// parsers measured), on random streams split every way: both must see the same events, ids
// and retry values.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createParser } from "eventsource-parser";
import { Parser } from "../client.js";

// Retry values are compared by the one in effect at the end: the spec applies each at once,
// eventsource-parser reports every one, and this parser the last of each frame.
const settled = (seen) => ({ ...seen, retries: seen.retries.at(-1) });

// A small seeded generator (mulberry32), so that a failure names a stream that can be rerun.
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = ["a", "é", "\u2028", "\u0085", "😀", " ", ":", "\0", "{\"n\": 1}", "id", "data", "x".repeat(300)];
const ENDINGS = ["\n", "\r\n", "\r"];

function stream(next) {
  const pick = (list) => list[Math.floor(next() * list.length)];
  const text = () => Array.from({ length: Math.floor(next() * 6) }, () => pick(PIECES)).join("");
  const lines = [];
  for (let frames = 1 + Math.floor(next() * 6); frames > 0; frames--) {
    for (let fields = Math.floor(next() * 5); fields > 0; fields--) {
      const kind = next();
      if (kind < 0.35) lines.push(`data${pick([":", ": ", ":  "])}${text()}`);
      else if (kind < 0.5) lines.push(`id: ${text()}`);
      else if (kind < 0.6) lines.push(`event:${pick(["", " "])}${text()}`);
      else if (kind < 0.65) lines.push(`retry: ${pick(["3000", "0", "12a", " 5", ""])}`);
      else if (kind < 0.75) lines.push(`: ${text()}`);
      else if (kind < 0.85) lines.push(pick(["data", "id", "event", "retry", "dat", ""]));
      else lines.push(`${text()}: ${text()}`.replace(/[\r\n]/g, ""));
    }
    lines.push("");
  }
  const bom = next() < 0.1 ? "\uFEFF" : "";
  // Every line with its own ending; the stream ends with a complete frame.
  return bom + lines.map((line) => line.replace(/[\r\n]/g, "") + pick(ENDINGS)).join("") + "\n\n";
}

function ours(chunks) {
  const parser = new Parser();
  const seen = { events: [], ids: [], retries: [] };
  const take = (frame) => {
    if (frame.data !== undefined) seen.events.push([frame.id, frame.event, frame.data]);
    if (frame.id !== undefined) seen.ids.push(frame.id);
    if (frame.retry !== undefined) seen.retries.push(frame.retry);
  };
  for (const chunk of chunks) for (const frame of parser.push(chunk)) take(frame);
  for (const frame of parser.end()) take(frame);
  return seen;
}

function theirs(chunks) {
  const seen = { events: [], ids: [], retries: [] };
  const parser = createParser({
    onEvent: (e) => seen.events.push([e.id, e.event ?? "message", e.data]),
    onId: (id) => seen.ids.push(id),
    onRetry: (ms) => seen.retries.push(ms),
  });
  for (const chunk of chunks) parser.feed(chunk);
  return seen;
}

/** The stream's bytes in pieces of the given sizes, decoded as the client decodes them. */
function split(text, sizes) {
  const bytes = new TextEncoder().encode(text);
  const decoder = new TextDecoder();
  const chunks = [];
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const size = sizes(i);
    chunks.push(decoder.decode(bytes.subarray(at, at + size), { stream: true }));
    at += size;
  }
  chunks.push(decoder.decode());
  return chunks;
}

test("the parser agrees with eventsource-parser on every split of random streams", () => {
  let compared = 0;
  for (let seed = 1; seed <= 1500; seed++) {
    const next = random(seed);
    const text = stream(next);
    const whole = theirs(split(text, () => 1 << 30));
    for (const sizes of [() => 1 << 30, () => 1, () => 7, () => 1 + Math.floor(next() * 64)]) {
      assert.deepEqual(settled(ours(split(text, sizes))), settled(whole), `seed ${seed}: ${JSON.stringify(text)}`);
      compared++;
    }
  }
  assert.equal(compared, 6000);
});

test("the server's own frames", () => {
  const text =
    "retry: 3000\nid: 0\n\n: keepalive\n" +
    'id: 1.0a1b2c3d\ndata: {"topic": "t", "seq": 1, "type": "a\u2028b", "data": "x"}\n\n' +
    'event: closed\ndata: {"reason": "expired"}\n\n';
  assert.deepEqual(ours([text]), {
    events: [
      ["1.0a1b2c3d", "message", '{"topic": "t", "seq": 1, "type": "a\u2028b", "data": "x"}'],
      [undefined, "closed", '{"reason": "expired"}'],
    ],
    ids: ["0", "1.0a1b2c3d"],
    retries: [3000],
  });
});

// The two ways the parser stays linear, checked by counting the characters its searches
// read (String.prototype.indexOf, watched for the test's duration): a quadratic version
// reads thousands of times more (measured before the fix: 1 MB of LF lines took 689 ms; a
// line in 200,000 pieces, 13 s).
function charactersSearched(run) {
  const original = String.prototype.indexOf;
  let total = 0;
  String.prototype.indexOf = function (search, from = 0) {
    const at = original.call(this, search, from);
    total += (at < 0 ? this.length : at + 1) - Math.max(0, from);
    return at;
  };
  try {
    run();
  } finally {
    String.prototype.indexOf = original;
  }
  return total;
}

test("a large line arriving in many small pieces is joined once", () => {
  const frames = [];
  const searched = charactersSearched(() => {
    const parser = new Parser();
    frames.push(...parser.push("data: "));
    for (let i = 0; i < 200_000; i++) frames.push(...parser.push("x"));
    frames.push(...parser.push("\n\n"));
  });
  assert.deepEqual([frames.length, frames[0].data.length], [1, 200_000]);
  assert.ok(searched <= 3 * 200_010, `searched ${searched} characters`);
});

test("a buffer of many LF-only (or CR-only) lines is one pass", () => {
  for (const ending of ["\n", "\r"]) {
    const text = `: keepalive${ending}`.repeat(100_000) + `data: 1${ending}${ending}`;
    const frames = [];
    const searched = charactersSearched(() => {
      const parser = new Parser();
      // A CR at the very end might begin a CRLF: the frame completes at the stream's end.
      frames.push(...parser.push(text), ...parser.end());
    });
    assert.equal(frames.length, 1);
    assert.ok(searched <= 3 * text.length, `searched ${searched} of ${text.length}`);
  }
});
