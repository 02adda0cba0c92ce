// The live stream (server-sent events from the events endpoint): what a
// page listens to, and the header's indicator of whether it is live. The
// browser's EventSource reconnects by itself after a network error; when it
// gives up (the server answered with an error), or when nothing has been
// heard for a while (every stream hears something each second), this
// reopens it with a growing delay, after checking that the session is
// still there.

import { currentSession, signedOut } from "./api.js";

const SILENCE = 5000;
const MAX_DELAY = 10000;

let indicator = null;

// What the server's hello says of its catalog: market symbols, and each
// token's symbol and decimals by id.
export const catalog = { markets: [], tokens: new Map() };

export function setIndicator(element) {
  indicator = element;
}

function show(state, text) {
  if (!indicator) return;
  indicator.dataset.state = state;
  indicator.querySelector("#live-text").textContent = text;
}

export class Live {
  constructor({ topics = [], addresses = [] } = {}) {
    this.topics = topics;
    this.addresses = addresses;
    this.handlers = new Map();
    this.source = null;
    this.closed = false;
    this.delay = 1000;
    this.retry = null;
    this.heard = Date.now();
    this.watchdog = setInterval(() => this.check(), 1000);
    this.open();
  }

  on(kind, handler) {
    if (!this.handlers.has(kind)) {
      this.handlers.set(kind, []);
      if (this.source) this.listen(this.source, kind);
    }
    this.handlers.get(kind).push(handler);
    return this;
  }

  listen(source, kind) {
    source.addEventListener(kind, (message) => {
      if (source !== this.source) return;
      this.heard = Date.now();
      let data;
      try {
        data = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      for (const handler of this.handlers.get(kind) || []) handler(data);
    });
  }

  open() {
    if (this.closed) return;
    const url = new URL("events", document.baseURI);
    if (this.topics.length) url.searchParams.set("topics", this.topics.join(","));
    for (const address of this.addresses) url.searchParams.append("address", address);
    const source = new EventSource(url);
    this.source = source;
    this.heard = Date.now();
    show("connecting", "Connecting");
    source.onopen = () => {
      if (source !== this.source) return;
      this.delay = 1000;
      this.heard = Date.now();
      show("live", "Live");
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) this.lost();
      else show("lost", "Stream lost, reconnecting");
    };
    for (const kind of ["hello", "ping", "overview", "prices", "transaction"]) {
      source.addEventListener(kind, () => {
        if (source === this.source) this.heard = Date.now();
      });
    }
    source.addEventListener("hello", (message) => {
      try {
        const hello = JSON.parse(message.data);
        catalog.markets = hello.markets;
        for (const token of hello.tokens) catalog.tokens.set(token.token_id, token);
      } catch (error) {
        // Not fatal: symbols show as token ids.
      }
    });
    source.addEventListener("signed-out", () => {
      if (source !== this.source) return;
      this.close();
      signedOut();
    });
    for (const kind of this.handlers.keys()) this.listen(source, kind);
  }

  // The stream is gone for good (or silent): reopen it later, if the
  // session still holds.
  lost() {
    if (this.closed || this.retry) return;
    if (this.source) this.source.close();
    this.source = null;
    show("lost", "Stream lost, reconnecting");
    this.retry = setTimeout(async () => {
      this.retry = null;
      try {
        const session = await currentSession();
        if (!session) {
          this.close();
          signedOut();
          return;
        }
      } catch (error) {
        // The server is unreachable: try again later.
        this.delay = Math.min(this.delay * 2, MAX_DELAY);
        this.lost();
        return;
      }
      this.delay = Math.min(this.delay * 2, MAX_DELAY);
      this.open();
    }, this.delay);
  }

  check() {
    if (this.closed || !this.source) return;
    if (Date.now() - this.heard > SILENCE) this.lost();
  }

  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    if (this.retry) clearTimeout(this.retry);
    if (this.source) this.source.close();
    this.source = null;
    show("idle", "");
  }
}
