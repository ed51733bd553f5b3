// Compiled (not run) by the tests: the types describe the client as a TypeScript user calls it.
import { ClientError, feed, StreamReset, type FeedEvent } from "../index.js";

async function follow(signal: AbortSignal): Promise<string | null> {
  const events = feed<{ n: number }>("http://127.0.0.1:8000/feeds/orders", {
    after: "0",
    token: async () => "a-token",
    signal,
    onReset: (frame) => console.log(frame.reason, frame.after),
  });
  try {
    for await (const e of events) {
      const event: FeedEvent<{ n: number }> = e;
      const n: number = event.data.n;
      if (n > 10 && event.seq > 0 && event.topic && event.type) break;
    }
  } catch (error) {
    if (error instanceof ClientError) console.log(error.status, error.problem?.detail);
    else if (error instanceof StreamReset) console.log(error.frame.after);
    else throw error;
  }
  events.close();
  return events.lastEventId;
}

void follow;
