// Connections: every open WebSocket connection of the cluster (listed
// again whenever the live overview's count changes, and every five seconds),
// and Disconnect, with the close code that tells the client what to do next.

import { call } from "../api.js";
import { h, replace, table } from "../dom.js";
import * as format from "../format.js";
import { Live } from "../live.js";

const REFRESH = 5000;
const CODES = [
  [4000, "4000 — do not reconnect as is"],
  [4100, "4100 — reconnect with backoff"],
  [4200, "4200 — reconnect at once"],
];

function subscriptions(connection) {
  const list = connection.subscriptions || [];
  if (!list.length) return h("span", { class: "muted" }, "none");
  const channels = {};
  for (const s of list) channels[s.channel] = (channels[s.channel] || 0) + 1;
  return `${list.length}: ` + Object.entries(channels).map(([c, n]) => `${c} ×${n}`).join(", ");
}

export function mount(root) {
  let closed = false;
  let timer = null;
  const message = h("div", { id: "connections-message", role: "status", "aria-live": "polite" });
  const list = h("div", { id: "connections" }, h("p", { class: "muted" }, "Loading…"));
  const filter = h("input", { type: "search", id: "key-filter", placeholder: "Key name", "aria-label": "Only the connections of the key named", autocomplete: "off" });
  const counted = h("span", { class: "muted" });

  const code = h("select", { id: "close-code", name: "code" }, CODES.map(([value, label]) => h("option", { value }, label)));
  const reason = h("input", { id: "close-reason", name: "reason", value: "closed by an operator", maxlength: 100 });
  const target = h("p", { class: "mono note" });
  const dialogError = h("p", { class: "error", role: "alert" });
  const dialog = h("dialog", { id: "disconnect-dialog", "aria-labelledby": "disconnect-title" },
    h("form", { method: "dialog" },
      h("h2", { id: "disconnect-title" }, "Disconnect"),
      target,
      h("div", { class: "field" }, h("label", { for: "close-code" }, "Close code"), code),
      h("div", { class: "field" }, h("label", { for: "close-reason" }, "Reason"), reason),
      dialogError,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "quiet", id: "disconnect-cancel" }, "Cancel"),
        h("button", { type: "submit", class: "danger", id: "disconnect-confirm", value: "close" }, "Disconnect"))));
  let chosen = null;
  let last = null;

  root.append(
    h("h1", {}, "Connections"), message,
    h("section", { class: "panel" },
      h("div", { class: "panel-head" },
        h("h2", {}, "Open connections"),
        h("div", { class: "form-row" }, filter, counted)),
      list),
    dialog);

  dialog.querySelector("#disconnect-cancel").addEventListener("click", () => dialog.close());
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    dialogError.textContent = "";
    try {
      const answer = await call("POST", `connections/${encodeURIComponent(chosen.id)}/close`,
        { code: Number(code.value), reason: reason.value || "closed by an operator" });
      dialog.close();
      replace(message, h("p", { class: "banner good" },
        `Disconnected ${answer.id} with ${answer.code}.`));
      last = null;
      load();
    } catch (failure) {
      dialogError.textContent = failure.message;
    }
  });
  filter.addEventListener("input", () => load());

  function ask(connection) {
    chosen = connection;
    target.textContent = `${connection.id} (key ${connection.key_name}, ${connection.peer})`;
    dialogError.textContent = "";
    dialog.showModal();
    code.focus();
  }

  async function load() {
    clearTimeout(timer);
    const key = filter.value.trim();
    let answer;
    try {
      answer = await call("GET", "connections" + (key ? `?key=${encodeURIComponent(key)}` : ""));
    } catch (failure) {
      if (!closed) replace(list, h("p", { class: "error" }, `Cannot list the connections: ${failure.message}`));
      schedule();
      return;
    }
    if (closed) return;
    const seen = JSON.stringify(answer);
    if (seen === last) {
      schedule();
      return;
    }
    last = seen;
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.connection : undefined;
    counted.textContent = `${answer.connections.length}${answer.truncated ? "+" : ""} open`
      + (answer.unanswered.length ? ` · no answer from ${answer.unanswered.join(", ")}` : "");
    replace(list, table([
      { label: "Node", value: (c) => c.node },
      { label: "Key", value: (c) => c.key_name },
      { label: "Peer", value: (c) => h("span", { class: "mono" }, c.peer) },
      { label: "Opened", value: (c) => format.time(c.opened) },
      { label: "Subscriptions", value: subscriptions },
      { label: "", value: (c) => {
        const button = h("button", { type: "button", class: "danger small", "aria-label": `Disconnect ${c.id}`, dataset: { connection: c.id } }, "Disconnect");
        button.addEventListener("click", () => ask(c));
        return button;
      } },
    ], answer.connections, key ? `No open connection of the key “${key}”` : "No open connections"));
    if (focused) {
      const again = [...list.querySelectorAll("button[data-connection]")].find((b) => b.dataset.connection === focused);
      if (again) again.focus();
    }
    schedule();
  }

  function schedule() {
    if (!closed) timer = setTimeout(() => {
      if (!dialog.open) load();
      else schedule();
    }, REFRESH);
  }

  let count = null;
  const live = new Live({ topics: ["overview"] });
  live.on("overview", (data) => {
    if (data.available && data.connections !== count) {
      count = data.connections;
      if (!dialog.open) load();
    }
  });

  load();
  return {
    unmount() {
      closed = true;
      live.close();
      clearTimeout(timer);
      if (dialog.open) dialog.close();
    },
  };
}
