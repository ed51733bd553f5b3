// The client against the real service: replicas killed and restarted mid-stream, tokens
// that expire every two seconds, resets, large and odd events, refusals, Retry-After.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { ClientError, StreamReset, feed } from "../client.js";
import { JWT, NO_SERVICE, Service, collect, mint, newTopic, until } from "./support.mjs";

const TYPES = ["order.created", "order.paid", "a type nobody listens for: é ✓"];
const events = (from, to) =>
  Array.from({ length: to - from + 1 }, (_, i) => ({ type: TYPES[(from + i) % 3], data: { n: from + i } }));
const ns = (seen) => seen.map((e) => e.data.n);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("against the service", { skip: NO_SERVICE, timeout: 120_000 }, () => {
  let open;
  before(async () => {
    open = await new Service({ CHANGEFEED_RETRY_MILLISECONDS: "500" }).start();
  });
  after(() => open?.stop());

  test("every event once, in order, through a replica killed and restarted", async () => {
    const topic = newTopic();
    const replica = await new Service({ CHANGEFEED_RETRY_MILLISECONDS: "500" }).start();
    const events1 = feed(`${replica.url}/feeds/${topic}`);
    const got = collect(events1);
    try {
      // Before the first event: the opening frame's id is already a resume point.
      await until(() => events1.lastEventId === "0", "the opening id");
      await open.publish(topic, events(1, 10));
      await got.count(10);
      await replica.stop("SIGKILL");
      await open.publish(topic, events(11, 20)); // while the replica is down
      await replica.start();
      await open.publish(topic, events(21, 30));
      await got.count(30);
      assert.deepEqual(ns(got.seen), range(1, 30));
      assert.deepEqual(got.seen.map((e) => e.seq), range(1, 30));
      assert.deepEqual(got.seen.map((e) => e.type), range(1, 30).map((n) => TYPES[n % 3]));
      assert.ok(got.seen.every((e) => e.topic === topic && /^\d+\.[0-9a-f]{8}$/.test(e.id)));
      assert.equal(events1.lastEventId, got.seen.at(-1).id);
    } finally {
      events1.close();
      await got.finished;
      await replica.stop();
    }
  });

  test("a filtered feed: its events only, and its resume point passes the others", async () => {
    const quick = await new Service({ CHANGEFEED_KEEPALIVE_SECONDS: "0.3" }).start();
    const topic = newTopic();
    try {
      const odd = feed(`${quick.url}/feeds/${topic}`, { after: 0, where: { odd: true } });
      const got = collect(odd);
      await quick.publish(topic, range(1, 20).map((n) => ({ type: "t", data: { n, odd: n % 2 === 1 } })));
      await got.count(10);
      assert.deepEqual(ns(got.seen), range(1, 20).filter((n) => n % 2 === 1));
      // The last event (19) is behind the stream's position (20): the id-only frame with the
      // next keep-alive moves the feed's resume point there.
      await until(() => odd.lastEventId?.startsWith("20."), "the id of seq 20");
      odd.close();
    } finally {
      await quick.stop();
    }
  });

  test("a feed cut before its first event loses nothing", async () => {
    const topic = newTopic();
    await open.publish(topic, events(1, 2));
    const replica = await new Service().start();
    const live = feed(`${replica.url}/feeds/${topic}`); // the live tail: after seq 2
    const got = collect(live);
    try {
      await until(() => live.lastEventId !== null, "the opening id");
      assert.match(live.lastEventId, /^2\.[0-9a-f]{8}$/);
      await replica.stop("SIGKILL");
      await open.publish(topic, events(3, 4));
      await replica.start();
      await got.count(2);
      assert.deepEqual(ns(got.seen), [3, 4]);
    } finally {
      live.close();
      await got.finished;
      await replica.stop();
    }
  });

  test("several topics, a pattern, resumed from a kept id", async () => {
    const prefix = newTopic();
    await open.publish(`${prefix}.a`, events(1, 2));
    await open.publish(`${prefix}.b`, events(3, 4));
    const several = feed(`${open.url}/feeds?topic=${prefix}.a&topic=${prefix}.b`, { after: 0 });
    const first = [];
    for await (const e of several) {
      first.push(e);
      if (first.length === 3) break;
    }
    assert.deepEqual(first.map((e) => [e.topic.slice(-1), e.seq]), [["a", 1], ["a", 2], ["b", 1]]);
    // A new feed after the third event's id (as a page would persist it) goes on from there.
    const pattern = feed(`${open.url}/feeds/${prefix}.*`, { after: first[2].id });
    const rest = await pattern.next();
    pattern.close();
    assert.deepEqual([rest.value.topic, rest.value.seq, rest.value.data.n], [`${prefix}.b`, 2, 4]);
  });

  test("events of 60 KB and every kind of character arrive whole", async () => {
    const topic = newTopic();
    // About 60 KB each as stored (the limit is 64 KB), in many network reads.
    const text = "é😀\u2028\u2029\u0085\"\\\n\r".repeat(1400) + "x".repeat(29_000);
    const big = [
      { type: "big", data: { text } },
      { type: "big", data: ["y".repeat(60_000), { nested: { deep: [1.5, 0, null, true] } }] },
      { type: "small", data: "after" },
    ];
    await open.publish(topic, big);
    const one = feed(`${open.url}/feeds/${topic}`, { after: "0" });
    const got = [];
    for await (const e of one) {
      got.push(e.data);
      if (got.length === 3) break;
    }
    for (const e of big.slice(0, 2)) assert.ok(Buffer.byteLength(JSON.stringify(e.data)) > 59_000);
    assert.deepEqual(got, big.map((e) => e.data));
  });

  test("a reset is thrown as StreamReset, or handed to onReset", async () => {
    const topic = newTopic();
    await open.publish(topic, events(1, 3));
    const url = `${open.url}/feeds/${topic}`;
    // An id of another history, as after a database restore.
    const raising = feed(url, { after: "2.00000000" });
    await assert.rejects(
      async () => {
        for await (const _ of raising);
      },
      (error) => error instanceof StreamReset && error.frame.reason === "mismatch",
    );
    assert.equal(raising.lastEventId, "0");
    const frames = [];
    const handled = feed(url, { after: "2.00000000", onReset: (frame) => frames.push(frame) });
    const got = [];
    for await (const e of handled) {
      got.push(e.data.n);
      if (got.length === 3) break;
    }
    assert.deepEqual([frames.map((f) => f.reason), got], [["mismatch"], [1, 2, 3]]);
  });

  test("close() and an aborted signal end the iteration", async () => {
    const topic = newTopic();
    const quiet = feed(`${open.url}/feeds/${topic}`);
    const waiting = quiet.next();
    await until(() => quiet.lastEventId === "0", "connected");
    quiet.close();
    assert.deepEqual(await waiting, { value: undefined, done: true });
    const controller = new AbortController();
    const aborted = feed(`${open.url}/feeds/${topic}`, { signal: controller.signal });
    const pending = aborted.next();
    controller.abort();
    assert.deepEqual(await pending, { value: undefined, done: true });
  });

  test("refusals that retrying cannot fix are thrown", async () => {
    const topic = newTopic();
    await open.publish(topic, events(1, 1));
    const refusal = async (url, options = {}) => {
      try {
        for await (const _ of feed(url, options));
      } catch (error) {
        assert.ok(error instanceof ClientError, String(error));
        return [error.status, error.problem?.status];
      }
      assert.fail("the feed ended");
    };
    assert.deepEqual(await refusal(`${open.url}/feeds/${topic}`, { after: "9" }), [409, 409]);
    assert.deepEqual(await refusal(`${open.url}/feeds/${topic}`, { after: "x" }), [400, 400]);
    assert.deepEqual(await refusal(`${open.url}/feeds/bad%20topic`), [400, 400]);
  });

  test("Retry-After is honoured, and server errors are retried", async () => {
    const topic = newTopic();
    await open.publish(topic, events(1, 1));
    const calls = [];
    // A proxy in front that refuses twice: a 503 asking for one second, then a 502.
    const flaky = async (url, init) => {
      calls.push(Date.now());
      if (calls.length === 1) return new Response("busy", { status: 503, headers: { "Retry-After": "1" } });
      if (calls.length === 2) return new Response("bad gateway", { status: 502 });
      return fetch(url, init);
    };
    const one = feed(`${open.url}/feeds/${topic}`, { after: "0", fetch: flaky });
    const first = await one.next();
    one.close();
    assert.equal(first.value.data.n, 1);
    assert.equal(calls.length, 3);
    assert.ok(calls[1] - calls[0] >= 950, `waited ${calls[1] - calls[0]} ms`);
    assert.ok(calls[2] - calls[1] < 1000, `then ${calls[2] - calls[1]} ms (retry: 500)`);
  });
});

describe("with tokens", { skip: NO_SERVICE, timeout: 120_000 }, () => {
  let service;
  before(async () => {
    service = await new Service(JWT).start();
  });
  after(() => service?.stop());

  test("tokens that expire every two seconds: every event once, a few fresh tokens", async () => {
    const prefix = newTopic();
    let asked = 0;
    const fresh = async () => {
      asked += 1;
      return mint("reader", { subscribe: [`${prefix}.*`] }, 2);
    };
    const one = collect(feed(`${service.url}/feeds/${prefix}.a`, { after: "0", token: fresh }));
    const pattern = collect(feed(`${service.url}/feeds/${prefix}.*`, { after: 0, token: fresh }));
    const writer = mint("writer", { publish: [`${prefix}.*`] });
    for (let n = 1; n <= 40; n++) {
      await service.publish(`${prefix}.a`, [{ data: n }], writer);
      await new Promise((resolve) => setTimeout(resolve, 150)); // pacing: three token lifetimes
    }
    try {
      await Promise.all([one.count(40), pattern.count(40)]);
    } finally {
      await Promise.all([one.stop(), pattern.stop()]);
    }
    for (const got of [one, pattern]) assert.deepEqual(got.seen.map((e) => e.data), range(1, 40));
    assert.ok(asked >= 6 && asked <= 40, `asked for ${asked} tokens`);
  });

  test("an expired static token, or a token without the grant, is thrown", async () => {
    const topic = newTopic();
    const url = `${service.url}/feeds/${topic}`;
    for (const [token, status] of [
      [mint("r", { subscribe: [topic] }, -10), 401],
      [mint("r", { subscribe: ["elsewhere"] }), 403],
    ]) {
      await assert.rejects(
        async () => {
          for await (const _ of feed(url, { token }));
        },
        (error) => error instanceof ClientError && error.status === status,
      );
    }
  });
});

test("a Node process that only follows a feed stays alive across a restart", { skip: NO_SERVICE, timeout: 120_000 }, async () => {
  const topic = newTopic();
  const publisher = await new Service().start();
  const replica = await new Service({ CHANGEFEED_RETRY_MILLISECONDS: "300" }).start();
  const script = `
    import { feed } from ${JSON.stringify(new URL("../client.js", import.meta.url).href)};
    for await (const e of feed(${JSON.stringify(`${replica.url}/feeds/${topic}`)}, { after: "0" })) {
      console.log(e.data.n);
    }`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let printed = "";
  child.stdout.on("data", (b) => (printed += b));
  try {
    await publisher.publish(topic, events(1, 1));
    await until(() => printed === "1\n", "the first event printed");
    await replica.stop();
    await publisher.publish(topic, events(2, 2));
    await replica.start();
    await until(() => printed === "1\n2\n", `the second event printed (exit ${child.exitCode})`);
    assert.equal(child.exitCode, null);
  } finally {
    child.kill();
    await Promise.all([publisher.stop(), replica.stop()]);
  }
});
