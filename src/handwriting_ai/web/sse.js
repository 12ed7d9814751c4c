// Server-Sent Events read with fetch() and a ReadableStream: EventSource cannot send X-Api-Key.
// The stream is parsed here (event/data/id fields, comments, any line ending); a dropped
// connection is resumed with Last-Event-ID, so no event is lost or repeated.

import { ApiError, errorOf, keyHeaders, reportUnauthorized } from "./api.js";

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;

export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  // Feed decoded text; returns the frames completed by it, as {event, data, id}.
  push(text) {
    this.buffer += text;
    const frames = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      // A lone "\r" at the end may be the first half of "\r\n": wait for more.
      if (!match || (match[0] === "\r" && match.index === this.buffer.length - 1)) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const frame = this.line(line);
      if (frame) frames.push(frame);
    }
    return frames;
  }

  line(line) {
    if (line === "") {
      const frame = this.data.length
        ? { event: this.event || "message", data: this.data.join("\n"), id: this.id }
        : null;
      this.reset();
      return frame;
    }
    if (line.startsWith(":")) return null; // a comment: keep-alive, connected
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// Follow `url` until `onEvent(type, data, id)` returns true (the job's final event) or `signal`
// aborts. `onState(text)` hears about reconnects. Throws ApiError for a refusal that waiting
// does not cure (401, 404).
export async function followEvents(url, { onEvent, onState, signal }) {
  let lastId = null;
  let wait = RETRY_MIN_MS;
  while (!signal?.aborted) {
    const headers = { Accept: "text/event-stream", ...keyHeaders() };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let finished = false;
    try {
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const error = await errorOf(response);
        if (error.status === 401) reportUnauthorized(error);
        if (error.status < 500) throw error;
        wait = Math.max(wait, (error.retryAfterS || 0) * 1000);
        onState?.(`${error.message} Retrying…`);
      } else {
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = new SseParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const frame of parser.push(value)) {
            if (frame.id !== null) lastId = frame.id;
            wait = RETRY_MIN_MS;
            let data;
            try {
              data = JSON.parse(frame.data);
            } catch {
              continue; // not an event of ours
            }
            if (onEvent(frame.event, data, frame.id)) finished = true;
          }
          if (finished) {
            reader.cancel().catch(() => {});
            return;
          }
        }
        onState?.("The event stream ended early; reconnecting…");
      }
    } catch (error) {
      if (signal?.aborted || (error && error.name === "AbortError")) return;
      if (error instanceof ApiError && error.status > 0 && error.status < 500) throw error;
      onState?.("Connection lost; reconnecting…");
    }
    await sleep(wait, signal);
    wait = Math.min(wait * 2, RETRY_MAX_MS);
  }
}
