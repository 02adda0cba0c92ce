// Overview: the cluster's figures, live (one overview event a second), a
// chart of connections and message rates over the last ten minutes, and
// the nodes.

import { TimeChart } from "../charts.js";
import { h, replace, table } from "../dom.js";
import * as format from "../format.js";
import { Live } from "../live.js";

function card(title, figure) {
  return h("div", { class: "card" }, h("h2", {}, title), figure);
}

export function mount(root) {
  const figures = {
    connections: h("p", { class: "figure", id: "figure-connections" }, "—"),
    subscriptions: h("p", { class: "figure", id: "figure-subscriptions" }, "—"),
    messagesIn: h("span", { id: "figure-messages-in" }, "—"),
    messagesOut: h("span", { id: "figure-messages-out" }, "—"),
    block: h("p", { class: "figure", id: "figure-block-height" }, "—"),
    pending: h("p", { class: "figure", id: "figure-pending-transactions" }, "—"),
  };
  const rates = h("div", { class: "figure-pair" },
    h("p", { class: "figure" }, figures.messagesIn, h("small", {}, "in")),
    h("p", { class: "figure" }, figures.messagesOut, h("small", {}, "out")));
  const banner = h("div", { class: "banner bad", role: "alert", hidden: true });
  const chartBox = h("div", { class: "chart", id: "overview-chart" });
  const nodes = h("div", { id: "nodes" });
  const updated = h("span", { class: "muted" });

  root.append(
    h("h1", {}, "Overview"),
    banner,
    h("div", { class: "cards" },
      card("Connections", figures.connections),
      card("Subscriptions", figures.subscriptions),
      card("Messages per second", rates),
      card("Block height", figures.block),
      card("Pending transactions", figures.pending)),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" },
        h("h2", {}, "Connections and messages per second, last 10 minutes"), updated),
      h("div", { class: "legend" },
        h("span", {}, h("span", { class: "swatch s0" }), "Connections"),
        h("span", {}, h("span", { class: "swatch s1" }), "Messages in per second"),
        h("span", {}, h("span", { class: "swatch s2" }), "Messages out per second")),
      chartBox),
    h("section", { class: "panel" }, h("h2", {}, "Nodes"), nodes),
  );

  const chart = new TimeChart(chartBox, {
    series: [
      { label: "Connections", scale: "left" },
      { label: "Messages in/s", scale: "right" },
      { label: "Messages out/s", scale: "right" },
    ],
    height: 240,
    zero: ["left", "right"],
  });

  const live = new Live({ topics: ["overview"] });
  live.on("history", (history) => {
    chart.set(history.samples);
  });
  live.on("overview", (data) => {
    if (!data.available) {
      banner.hidden = false;
      banner.textContent = `The figures are unavailable: ${data.message}`;
      return;
    }
    banner.hidden = true;
    figures.connections.textContent = format.count(data.connections);
    figures.subscriptions.textContent = format.count(data.subscriptions);
    figures.messagesIn.textContent = format.rate(data.messages_in);
    figures.messagesOut.textContent = format.rate(data.messages_out);
    figures.block.textContent = format.count(data.block_height);
    figures.pending.textContent = format.count(data.pending_transactions);
    updated.textContent = `as of ${new Date(data.time * 1000).toLocaleTimeString("en-GB")}`;
    chart.add(data.time, [data.connections, data.messages_in, data.messages_out]);
    replace(nodes, table([
      { label: "Name", value: (n) => h("span", {}, n.name, n.name === data.node ? h("span", { class: "muted" }, " (this node)") : "") },
      { label: "Address", value: (n) => h("span", { class: "mono" }, n.address) },
      { label: "Version", value: (n) => n.version },
      { label: "Uptime", value: (n) => format.duration(n.uptime), class: "num" },
      { label: "Connections", value: (n) => format.count(n.connections), class: "num" },
      { label: "In/s", value: (n) => format.rate(n.messages_in), class: "num" },
      { label: "Out/s", value: (n) => format.rate(n.messages_out), class: "num" },
      { label: "Runs the market", value: (n) => (n.runs_market ? "yes" : "") },
    ], data.nodes, "No node has announced itself yet"));
  });

  return {
    unmount() {
      live.close();
      chart.destroy();
    },
  };
}
