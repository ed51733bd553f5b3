// The client at the edges, against a small server that answers whatever each test needs
// (what a broken proxy or a hostile peer could send; the real service never does).
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { ClientError, StreamReset, feed } from "../client.js";

let server;
let base;
let answer; // (request, response) => void, set by each test
const requests = [];

before(async () => {
  server = createServer((request, response) => {
    requests.push(request.headers);
    answer(request, response);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  base = `http://127.0.0.1:${server.address().port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

const stream = (body) => (request, response) => {
  response.writeHead(200, { "Content-Type": "text/event-stream" });
  response.write(body); // and stays open
};
const event = (seq, data = { n: seq }) =>
  `id: ${seq}.0000000${seq}\ndata: ${JSON.stringify({ topic: "t", seq, type: "x", data })}\n\n`;

test("close() while the token function runs: no request, the iteration ends", async () => {
  requests.length = 0;
  answer = stream("retry: 100\nid: 0\n\n" + event(1));
  let release;
  const events = feed(`${base}/feeds/t`, { token: () => new Promise((r) => (release = r)) });
  const pending = events.next();
  await new Promise((r) => setTimeout(r, 20));
  events.close();
  release("a-token");
  assert.deepEqual(await pending, { value: undefined, done: true });
  assert.equal(requests.length, 0);
});

test("close() in the loop body: no more events, even those already read", async () => {
  answer = stream("retry: 100\nid: 0\n\n" + event(1) + event(2) + event(3));
  const events = feed(`${base}/feeds/t`, { after: "0" });
  const seen = [];
  for await (const e of events) {
    seen.push(e.seq);
    events.close();
  }
  assert.deepEqual(seen, [1]);
});

test("return() with a next() pending ends both, and aborts the connection", async () => {
  answer = stream("retry: 100\nid: 0\n\n");
  const events = feed(`${base}/feeds/t`, { after: "0" });
  const pending = events.next();
  await new Promise((r) => setTimeout(r, 50));
  const returned = events.return();
  assert.deepEqual(await pending, { value: undefined, done: true });
  assert.deepEqual(await returned, { value: undefined, done: true });
});

test("an error of onReset ends the iteration with it", async () => {
  const reset = { reason: "mismatch", detail: "x", requested: "2.0", after: 0 };
  answer = stream(`retry: 100\nid: 0\n\nevent: reset\ndata: ${JSON.stringify(reset)}\n\n` + event(1));
  const events = feed(`${base}/feeds/t`, {
    after: "2.00000000",
    onReset: () => {
      throw new Error("the application's own");
    },
  });
  await assert.rejects(events.next(), /the application's own/);
});

test("frames that cannot be events are thrown, never skipped", async () => {
  const cases = [
    ["id: 1.00000001\ndata: null\n\n", /not an object/],
    ["id: 1.00000001\ndata: {nope\n\n", /cannot be read/],
    ['data: {"topic": "t", "seq": 1, "type": "x", "data": 1}\n\n', /without an id/],
    ["event: reset\ndata: {}\n\n", /reset without a valid "after"/],
    ["event: reset\ndata: null\n\n", /not an object/],
  ];
  for (const [body, message] of cases) {
    answer = stream("retry: 100\nid: 0\n\n" + body);
    const events = feed(`${base}/feeds/t`, { after: "0" });
    await assert.rejects(events.next(), (error) => error instanceof ClientError && message.test(error.message));
  }
  const reset = { reason: "mismatch", detail: "x", requested: "2.0", after: 0 };
  answer = stream(`retry: 100\nid: 0\n\nevent: reset\ndata: ${JSON.stringify(reset)}\n\n`);
  await assert.rejects(feed(`${base}/feeds/t`).next(), StreamReset);
});

test("a 200 that is not an event stream is thrown (a captive portal, a misrouted proxy)", async () => {
  answer = (request, response) => {
    response.writeHead(200, { "Content-Type": "text/html" });
    response.end("<html>sign in</html>");
  };
  await assert.rejects(feed(`${base}/feeds/t`).next(), (e) => e instanceof ClientError && e.status === 200);
});

test("a token that cannot be a header value is thrown, and not shown", async () => {
  answer = stream("retry: 100\nid: 0\n\n");
  await assert.rejects(
    feed(`${base}/feeds/t`, { token: "s3cret\n" }).next(),
    (error) => /Authorization cannot be sent/.test(error.message) && !error.message.includes("s3cret"),
  );
});

test("an endless line from a peer ends the iteration instead of taking all memory", async () => {
  answer = (request, response) => {
    response.writeHead(200, { "Content-Type": "text/event-stream" });
    response.write("retry: 100\nid: 0\n\ndata: ");
    const chunk = "x".repeat(64 * 1024);
    const more = () => {
      while (response.write(chunk)) if (response.writableLength > 1 << 20) break;
    };
    response.on("drain", more);
    more();
  };
  const events = feed(`${base}/feeds/t`, { after: "0", maxEventSize: 1 << 20 });
  await assert.rejects(events.next(), (e) => e instanceof ClientError && /larger than|longer than/.test(e.message));
});

test("a server that accepts and never answers is left after idleTimeout", async () => {
  requests.length = 0;
  let calls = 0;
  answer = (request, response) => {
    calls += 1;
    if (calls === 1) return; // no headers, ever
    stream("retry: 100\nid: 0\n\n" + event(1))(request, response);
  };
  const events = feed(`${base}/feeds/t`, { after: "0", idleTimeout: 200 });
  const first = await events.next();
  events.close();
  assert.equal(first.value.seq, 1);
  assert.equal(calls, 2);
});

test("an aborted signal's listener is removed when the feed ends", async () => {
  answer = stream("retry: 100\nid: 0\n\n" + event(1));
  const controller = new AbortController();
  let listeners = 0;
  const signal = controller.signal;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args) => ((listeners += 1), add(...args));
  signal.removeEventListener = (...args) => ((listeners -= 1), remove(...args));
  for await (const _ of feed(`${base}/feeds/t`, { after: "0", signal })) break;
  assert.equal(listeners, 0);
});
