// Transactions: find a transaction by id, or an address's transactions;
// each shows its status, block, amount and parties, and changes live (a
// pending transfer becomes confirmed when a block takes it).

import { call } from "../api.js";
import { h, replace, table } from "../dom.js";
import * as format from "../format.js";
import { catalog, Live } from "../live.js";

const TRANSACTION = /^0x[0-9a-fA-F]{64}$/;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

function status(value) {
  return h("span", { class: `badge ${value}` }, value);
}

function amount(tx) {
  const token = catalog.tokens.get(tx.token_id);
  return `${format.decimal(tx.amount, 18)} ${token ? token.symbol : format.short(tx.token_id)}`;
}

function block(tx) {
  return tx.block_number === null || tx.block_number === undefined ? "—" : format.count(tx.block_number);
}

export function mount(root, { params, navigate }) {
  const query = (params.get("q") || "").trim();
  const input = h("input", {
    type: "search", id: "search", name: "q", value: query, spellcheck: "false",
    "aria-label": "Transaction id or address", autocomplete: "off",
    placeholder: "Transaction id (0x + 64 hex) or address (0x + 40 hex)",
  });
  const form = h("form", { class: "search", role: "search" }, input, h("button", { type: "submit" }, "Search"));
  const result = h("div", { id: "result" });
  root.append(h("h1", {}, "Transactions"), form, result);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = input.value.trim();
    navigate(q ? `transactions?q=${encodeURIComponent(q)}` : "transactions");
  });

  let live = null;
  let closed = false;

  if (!query) {
    result.append(h("p", { class: "muted" },
      "Enter a transaction id to see its status, or an address to see its last transactions. "
      + "Both follow new blocks live."));
  } else if (TRANSACTION.test(query)) {
    showTransaction(query.toLowerCase());
  } else if (ADDRESS.test(query)) {
    showAddress(query.toLowerCase());
  } else {
    result.append(h("p", { class: "error", role: "alert" },
      "Not a transaction id (0x and 64 hex digits) nor an address (0x and 40 hex digits)."));
  }

  function failed(error) {
    replace(result, h("p", { class: error.status === 404 ? "muted" : "error", role: "alert" },
      error.status === 404 ? `Nothing found: ${error.message}.` : `Cannot load it: ${error.message}`));
  }

  async function showTransaction(id) {
    let tx;
    try {
      tx = await call("GET", `transactions/${id}`);
    } catch (error) {
      if (!closed) failed(error);
      return;
    }
    if (closed) return;
    const render = () => replace(result, h("section", { class: "panel", id: "transaction" },
      h("h2", {}, "Transaction"),
      h("dl", { class: "details" },
        h("dt", {}, "Id"), h("dd", { class: "mono" }, tx.transaction_id),
        h("dt", {}, "Status"), h("dd", { id: "tx-status" }, status(tx.status)),
        h("dt", {}, "Block"), h("dd", { id: "tx-block" }, block(tx)),
        h("dt", {}, "Amount"), h("dd", { id: "tx-amount" }, amount(tx)),
        h("dt", {}, "From"), h("dd", { class: "mono" }, linkTo(tx.from)),
        h("dt", {}, "To"), h("dd", { class: "mono" }, linkTo(tx.to)),
        h("dt", {}, "Submitted"), h("dd", {}, format.time(tx.timestamp)),
        tx.reason ? [h("dt", {}, "Reason"), h("dd", {}, tx.reason)] : null)));
    render();
    live = new Live({ addresses: [tx.from, tx.to] });
    live.on("hello", render);
    live.on("transaction", (update) => {
      if (update.transaction_id !== tx.transaction_id) return;
      tx = { ...tx, status: update.status, block_number: update.block_number ?? tx.block_number,
             reason: update.reason ?? tx.reason };
      render();
    });
    live.on("watching", async () => {
      // Anything that happened before the stream followed the addresses.
      try {
        const fresh = await call("GET", `transactions/${id}`);
        if (!closed) {
          tx = fresh;
          render();
        }
      } catch (error) {
        // The live updates go on; the next one brings it up to date.
      }
    });
  }

  async function showAddress(address) {
    let rows;
    try {
      rows = (await call("GET", `addresses/${address}/transactions?limit=100`)).transactions;
    } catch (error) {
      if (!closed) failed(error);
      return;
    }
    if (closed) return;
    const render = () => replace(result, h("section", { class: "panel", id: "address" },
      h("div", { class: "panel-head" }, h("h2", {}, "Transactions of ", h("span", { class: "mono" }, address)),
        h("span", { class: "muted" }, `${rows.length} shown, newest first`)),
      table([
        { label: "Transaction", value: (tx) => h("a", { href: `transactions?q=${tx.transaction_id}`, "data-route": "transactions", class: "mono" }, format.short(tx.transaction_id, 8)) },
        { label: "Status", value: (tx) => status(tx.status) },
        { label: "Block", value: block, class: "num" },
        { label: "Amount", value: amount, class: "num" },
        { label: "From", value: (tx) => h("span", { class: "mono" }, format.short(tx.from)) },
        { label: "To", value: (tx) => h("span", { class: "mono" }, format.short(tx.to)) },
        { label: "Submitted", value: (tx) => format.time(tx.timestamp) },
      ], rows, "No transactions from or to this address")));
    render();
    live = new Live({ addresses: [address] });
    live.on("hello", render);
    live.on("transaction", (update) => {
      const index = rows.findIndex((tx) => tx.transaction_id === update.transaction_id);
      if (index >= 0) {
        rows[index] = { ...rows[index], status: update.status,
                        block_number: update.block_number ?? rows[index].block_number };
      } else {
        rows.unshift({ ...update, block_number: update.block_number ?? null,
                       timestamp: new Date().toISOString() });
      }
      render();
    });
    live.on("watching", async () => {
      try {
        const fresh = (await call("GET", `addresses/${address}/transactions?limit=100`)).transactions;
        if (!closed) {
          rows = fresh;
          render();
        }
      } catch (error) {
        // As above.
      }
    });
  }

  function linkTo(address) {
    return h("a", { href: `transactions?q=${address}`, "data-route": "transactions" }, address);
  }

  return {
    unmount() {
      closed = true;
      if (live) live.close();
    },
  };
}
