// Keys: every API key (never a key itself), making one (shown once, with a
// copy button) and revoking one (its connections are closed, 4001).

import { call } from "../api.js";
import { h, replace, table } from "../dom.js";
import * as format from "../format.js";

const SCOPES = [
  ["client", "opens WebSocket sessions"],
  ["publish", "posts prices"],
  ["admin", "every HTTP API operation and this console"],
];

export function mount(root) {
  let closed = false;
  const list = h("div", { id: "keys" }, h("p", { class: "muted" }, "Loading…"));
  const message = h("div", { id: "keys-message", role: "status", "aria-live": "polite" });
  const created = h("section", { class: "panel", id: "new-key", hidden: true });

  const name = h("input", { id: "key-name", name: "name", required: true, maxlength: 100, autocomplete: "off" });
  const scopes = SCOPES.map(([scope, what]) => h("label", { title: what },
    h("input", { type: "checkbox", name: "scope", value: scope, checked: scope === "client" }), scope));
  const addresses = h("textarea", { id: "key-addresses", name: "addresses", spellcheck: "false",
    placeholder: "0x… one per line (optional): the addresses this key may send from" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "panel", id: "create-key", "aria-labelledby": "create-key-title" },
    h("h2", { id: "create-key-title" }, "Create a key"),
    h("div", { class: "form-row" },
      h("div", { class: "field" }, h("label", { for: "key-name" }, "Name"), name),
      h("fieldset", { class: "field checks-field" },
        h("legend", { class: "muted" }, "Scopes"), h("div", { class: "checks" }, scopes))),
    h("div", { class: "field" }, h("label", { for: "key-addresses" }, "Addresses"), addresses),
    error,
    h("button", { type: "submit" }, "Create key"));

  root.append(h("h1", {}, "Keys"), message, created, form,
    h("section", { class: "panel" }, h("h2", {}, "Keys"), list));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const chosen = scopes.map((label) => label.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (!chosen.length) {
      error.textContent = "Choose at least one scope.";
      return;
    }
    const body = {
      name: name.value.trim() || "key",
      scope: chosen,
      addresses: addresses.value.split(/[\s,]+/).filter(Boolean),
    };
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const key = await call("POST", "keys", body);
      form.reset();
      showCreated(key);
      load();
    } catch (failure) {
      error.textContent = failure.message;
    } finally {
      button.disabled = false;
    }
  });

  function showCreated(key) {
    const field = h("input", { id: "new-key-value", readonly: true, value: key.key, "aria-label": "The new key", spellcheck: "false" });
    const copied = h("span", { class: "muted", role: "status", "aria-live": "polite" });
    const copy = h("button", { type: "button", id: "copy-key" }, "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(field.value);
        copied.textContent = "Copied.";
      } catch (failure) {
        field.select();
        copied.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
      }
    });
    const done = h("button", { type: "button", class: "quiet" }, "Done");
    done.addEventListener("click", () => {
      field.value = "";
      replace(created);
      created.hidden = true;
    });
    replace(created,
      h("h2", {}, `New key “${key.name}” (id ${key.id})`),
      h("p", { class: "note" }, "Copy it now: it is shown only this once, and the server keeps only its hash."),
      h("div", { class: "secret" }, field, copy, done),
      copied);
    created.hidden = false;
    field.focus();
    field.select();
  }

  async function revoke(key, button) {
    if (!window.confirm(`Revoke the key “${key.name}” (id ${key.id})? Its connections are closed at once.`)) return;
    button.disabled = true;
    try {
      const answer = await call("DELETE", `keys/${key.id}`);
      replace(message, h("p", { class: "banner good" },
        `Revoked “${answer.name}” (id ${answer.id}); ${answer.connections_closed ?? 0} connections closed.`));
    } catch (failure) {
      replace(message, h("p", { class: "banner bad" }, `Cannot revoke it: ${failure.message}`));
    }
    load();
  }

  async function load() {
    let keys;
    try {
      keys = (await call("GET", "keys")).keys;
    } catch (failure) {
      if (!closed) replace(list, h("p", { class: "error" }, `Cannot list the keys: ${failure.message}`));
      return;
    }
    if (closed) return;
    keys.sort((a, b) => b.id - a.id);
    replace(list, table([
      { label: "Id", value: (k) => String(k.id), class: "num" },
      { label: "Name", value: (k) => k.name },
      { label: "Scopes", value: (k) => k.scopes.map((s) => h("span", { class: "badge scope" }, s)) },
      { label: "Addresses", value: (k) => (k.addresses.length ? format.count(k.addresses.length) : "—"), class: "num" },
      { label: "Created", value: (k) => format.time(k.created_at) },
      { label: "Status", value: (k) => (k.revoked_at
        ? h("span", { class: "badge revoked", title: `revoked ${format.time(k.revoked_at)}` }, "revoked")
        : h("span", { class: "badge active" }, "active")) },
      { label: "", value: (k) => {
        if (k.revoked_at) return "";
        const button = h("button", { type: "button", class: "danger small", "aria-label": `Revoke ${k.name} (id ${k.id})`, dataset: { keyId: String(k.id) } }, "Revoke");
        button.addEventListener("click", () => revoke(k, button));
        return button;
      } },
    ], keys, "No keys yet"));
  }

  load();
  return {
    unmount() {
      closed = true;
    },
  };
}
