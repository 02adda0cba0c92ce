// Time-series charts on uPlot (vendored, MIT): a window of the last few
// minutes, redrawn at most once per animation frame, sized to its
// container. The chart's element carries data-points (how many points it
// draws) so tests and people can tell that it moves.

import uPlot from "../vendor/uplot/uPlot.esm.js";

export const COLORS = ["#5eead4", "#60a5fa", "#f0abfc"];
const AXIS = "#8b9bb0";
const GRID = "#263241";

const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 1e5, 2e5, 5e5, 1e6];

function axis(scale, side, format, whole) {
  return {
    scale, side, stroke: AXIS, size: 56,
    incrs: whole ? WHOLE : undefined,
    grid: { show: side === 3, stroke: GRID, width: 1 },
    ticks: { show: false },
    values: format ? (u, values) => values.map(format) : byStep,
  };
}

export class TimeChart {
  // series: [{label, scale ("left" or "right"), format}]; span: seconds shown.
  // zero: the scales that start at zero (counts, rates).
  constructor(container, { series, height = 220, span = 600, formats = {}, zero = [] }) {
    this.container = container;
    this.span = span;
    this.data = [[], ...series.map(() => [])];
    this.pending = false;
    const scales = { x: { time: true } };
    const axes = [{
      stroke: AXIS, grid: { show: false }, ticks: { show: false }, size: 30, space: 90,
      incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600],
      values: (u, splits) => splits.map((t) => clock(t)),
    }];
    const used = [...new Set(series.map((s) => s.scale || "left"))];
    for (const name of used) {
      scales[name] = {
        auto: true,
        range: (u, min, max) => (zero.includes(name) ? [0, Math.max(1, (max || 0) * 1.15)] : padded(min, max)),
      };
      axes.push(axis(name, name === "right" ? 1 : 3, formats[name], zero.includes(name)));
    }
    const options = {
      width: Math.max(container.clientWidth, 200),
      height,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { show: false },
      scales,
      axes,
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label, scale: s.scale || "left", stroke: COLORS[i % COLORS.length],
          width: 2, points: { show: false },
          fill: i === 0 && series.length === 1 ? "rgba(94, 234, 212, 0.08)" : undefined,
        })),
      ],
    };
    this.plot = new uPlot(options, this.data, container);
    this.resize = new ResizeObserver(() => {
      this.plot.setSize({ width: Math.max(container.clientWidth, 200), height });
    });
    this.resize.observe(container);
    container.dataset.points = "0";
  }

  // Replace every point: rows of [time, value, value...].
  set(rows) {
    this.data = [[], ...this.data.slice(1).map(() => [])];
    for (const row of rows) this.add(row[0], row.slice(1), false);
    this.draw();
  }

  // One point at time t (seconds): values in series order.
  add(t, values, draw = true) {
    const times = this.data[0];
    if (times.length && t <= times[times.length - 1]) return;
    times.push(t);
    values.forEach((value, i) => this.data[i + 1].push(value));
    const oldest = t - this.span;
    let drop = 0;
    while (drop < times.length && times[drop] < oldest) drop++;
    if (drop) this.data = this.data.map((column) => column.slice(drop));
    if (draw) this.draw();
  }

  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData(this.data);
      this.container.dataset.points = String(this.data[0].length);
    });
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}

// Tick labels with as many decimals as the step between ticks needs.
function byStep(u, values, axisIndex, space, step) {
  const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(step || 1))));
  return values.map((v) => Number(v).toLocaleString("en-US", {
    minimumFractionDigits: decimals, maximumFractionDigits: decimals,
  }));
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", {
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function padded(min, max) {
  if (min === null || max === null) return [0, 1];
  if (min === max) {
    const pad = Math.abs(min) * 0.01 || 1;
    return [min - pad, max + pad];
  }
  const pad = (max - min) * 0.1;
  return [min - pad, max + pad];
}
