// Real services for the client's tests: `changefeed serve` processes on a database the
// Python suite created (tests/test_js_client.py runs these tests and passes it in).
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

export const DATABASE = process.env.CHANGEFEED_JS_TEST_DATABASE_URL;
const PYTHON = process.env.CHANGEFEED_JS_TEST_PYTHON || "python3";
const REPO = fileURLToPath(new URL("../../..", import.meta.url));
/** Why the tests that need a service cannot run, or false. */
export const NO_SERVICE = DATABASE ? false : "run by tests/test_js_client.py (needs a database)";
export const SECRET = "a-test-secret-that-is-long-enough-for-hs256";
export const JWT = {
  CHANGEFEED_AUTH: "jwt",
  CHANGEFEED_JWT_SECRET: SECRET,
  CHANGEFEED_JWT_LEEWAY_SECONDS: "0",
};

export async function freePort() {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

export function newTopic(prefix = "js") {
  return `${prefix}.${randomBytes(6).toString("hex")}`;
}

/** Waits (bounded) until `check()` is truthy. */
export async function until(check, what, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A `changefeed serve` process on `port`. */
export class Service {
  constructor(env = {}, port = null) {
    this.env = env;
    this.port = port;
    this.process = null;
    this.output = "";
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith("CHANGEFEED_")),
    );
    Object.assign(env, {
      CHANGEFEED_DATABASE_URL: DATABASE,
      CHANGEFEED_AUTH: "none",
      CHANGEFEED_LOG_FORMAT: "json",
      ...this.env,
    });
    const child = spawn(PYTHON, ["-m", "changefeed", "serve", "--port", String(this.port)], {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.process = child;
    child.stdout.on("data", (b) => (this.output += b));
    child.stderr.on("data", (b) => (this.output += b));
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`service exited:\n${this.output}`);
      try {
        return (await fetch(`${this.url}/readyz`)).status === 200;
      } catch {
        return false;
      }
    }, "the service is ready", 60_000);
    return this;
  }

  /** Stops it: SIGTERM (a clean shutdown) or SIGKILL (a crash). */
  async stop(signal = "SIGTERM") {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill(signal);
    await exited;
  }

  async publish(topic, events, token = null) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`${this.url}/feeds/${topic}`, {
      method: "POST",
      headers,
      body: JSON.stringify(events),
    });
    if (response.status !== 202) throw new Error(`publish: ${response.status} ${await response.text()}`);
  }
}

/** An HS256 token with changefeed's grants, expiring in `seconds`. */
export function mint(sub, { subscribe = [], publish = [] } = {}, seconds = 300) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000 + seconds);
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub, exp, changefeed: { subscribe, publish } })}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

/** Runs `events` in the background; `seen` fills as they arrive, `error` if it failed. */
export function collect(events) {
  const state = { seen: [], error: null, done: false };
  state.finished = (async () => {
    try {
      for await (const event of events) state.seen.push(event);
    } catch (error) {
      state.error = error;
    } finally {
      state.done = true;
    }
  })();
  state.stop = async () => {
    events.close();
    await state.finished;
  };
  state.count = (n, ms = 30_000) =>
    until(
      () => {
        if (state.error) throw state.error;
        return state.seen.length >= n;
      },
      `${n} events (have ${state.seen.length})`,
      ms,
    );
  return state;
}
