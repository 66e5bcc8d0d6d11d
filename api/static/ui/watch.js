// Following GET /api/v1/watch (README, "Watching changes"): a snapshot, then one
// message per change. When the connection ends the watch reconnects, with backoff
// and jitter, asking for the changes after the last revision it saw (since=); the
// registry answers with those, or with a resync (a fresh snapshot) when it no longer
// keeps them or restarted. Close codes: 1013 (fell behind, or changes may have been
// missed) and 1001 (the registry is shutting down) both mean "come back".

const FIRST_DELAY_MS = 200;
const MAX_DELAY_MS = 4000;
// A connection that lived this long, or delivered a message, resets the backoff.
const STABLE_MS = 3000;

const REASONS = {
  1001: "the registry is shutting down",
  1006: "the connection was lost",
  1008: "the registry refused the watch's parameters",
  1011: "the registry failed",
  1013: "the registry asked to reconnect",
};

export class Watch {
  // handlers: status(state, detail), reset(instances, revision, kind), event(event),
  // refused() when a connection failed before it opened (perhaps the session ended).
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.revision = null;
    this.ws = null;
    this.attempts = 0;
    this.timer = null;
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.#connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "the page stopped watching");
  }

  // Forget the revision: the next connection starts with a snapshot.
  forget() {
    this.revision = null;
  }

  #connect() {
    if (this.stopped) return;
    const url = new URL(this.url);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.revision !== null) url.searchParams.set("since", String(this.revision));
    const ws = new WebSocket(url);
    const opened = { at: 0, messages: 0 };
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened.at = performance.now();
      this.handlers.status("live", "");
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      opened.messages += 1;
      this.attempts = 0;
      this.#receive(JSON.parse(message.data));
    };
    ws.onclose = (close) => {
      if (ws !== this.ws) return;
      this.ws = null;
      const lived = opened.at ? performance.now() - opened.at : 0;
      if (opened.messages > 0 || lived >= STABLE_MS) this.attempts = 0;
      if (!opened.at) this.handlers.refused?.();
      this.#retry(close);
    };
  }

  #receive(data) {
    if (data.type === "snapshot" || data.type === "resync") {
      this.revision = data.revision;
      this.handlers.reset(data.instances ?? [], data.revision, data.type);
      return;
    }
    if (typeof data.revision === "number") this.revision = data.revision;
    this.handlers.event(data);
  }

  #retry(close) {
    if (this.stopped) return;
    // Behind or cut off (1013): come back at once; anything else backs off.
    const base = close.code === 1013 ? FIRST_DELAY_MS / 2 : FIRST_DELAY_MS * 2 ** this.attempts;
    const delay = Math.min(MAX_DELAY_MS, base) * (0.75 + Math.random() / 2);
    this.attempts = Math.min(this.attempts + 1, 10);
    const why = close.reason || REASONS[close.code] || `closed (${close.code})`;
    this.handlers.status("reconnecting", `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => this.#connect(), delay);
  }
}
