// Markets: for each market symbol, a live price chart (the retained prices
// of the last minutes, then every new price), the last price, the 24 h
// change and the 24 h volume.

import { TimeChart } from "../charts.js";
import { h } from "../dom.js";
import * as format from "../format.js";
import { Live } from "../live.js";

function seconds(update) {
  return Date.parse(update.timestamp) / 1000;
}

class MarketCard {
  constructor(symbol) {
    this.symbol = symbol;
    const id = symbol.replace(/[^A-Za-z0-9]/g, "-").toLowerCase();
    this.price = h("p", { class: "price", id: `price-${id}` }, "—");
    this.change = h("strong", {}, "—");
    this.volume = h("strong", {}, "—");
    this.updated = h("strong", {}, "—");
    this.chartBox = h("div", { class: "chart", id: `chart-${id}`, dataset: { symbol } });
    this.element = h("section", { class: "panel market", "aria-label": `${symbol} market` },
      h("div", { class: "panel-head" }, h("h2", {}, symbol), this.price),
      h("p", { class: "facts" },
        h("span", {}, "24 h change ", this.change),
        h("span", {}, "Volume 24 h ", this.volume),
        h("span", {}, "Updated ", this.updated)),
      this.chartBox);
  }

  start() {
    this.chart = new TimeChart(this.chartBox, {
      series: [{ label: `${this.symbol} price` }],
      height: 170,
    });
  }

  // The prices kept on the server: [[seconds, price]...] and the last update.
  history(points, last) {
    this.chart.set(points.map(([t, price]) => [t, Number(price)]));
    if (last) this.show(last);
  }

  update(data) {
    this.chart.add(seconds(data), [Number(data.price)]);
    this.show(data);
  }

  show(data) {
    this.price.textContent = format.decimal(data.price, 6);
    this.chartBox.dataset.last = data.price;
    this.change.textContent = format.percent(data.change_24h);
    const change = Number(data.change_24h);
    this.change.className = change > 0 ? "up" : change < 0 ? "down" : "";
    this.volume.textContent = format.decimal(data.volume_24h, 2);
    this.updated.textContent = new Date(data.timestamp).toLocaleTimeString("en-GB");
  }

  destroy() {
    if (this.chart) this.chart.destroy();
  }
}

export function mount(root) {
  const grid = h("div", { class: "markets", id: "markets" });
  const note = h("p", { class: "muted" }, "Waiting for the markets…");
  root.append(h("h1", {}, "Markets"), note, grid);
  const cards = new Map();

  const live = new Live({ topics: ["markets"] });
  live.on("markets", (data) => {
    note.hidden = true;
    for (const market of data.markets) {
      let card = cards.get(market.symbol);
      if (!card) {
        card = new MarketCard(market.symbol);
        cards.set(market.symbol, card);
        grid.append(card.element);
        card.start();
      }
      card.history(market.points, market.last);
    }
  });
  live.on("prices", (prices) => {
    for (const data of prices) {
      const card = cards.get(data.symbol);
      if (card) card.update(data);
    }
  });

  return {
    unmount() {
      live.close();
      for (const card of cards.values()) card.destroy();
    },
  };
}
