// How numbers, amounts, times and identifiers read in the console.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });

export function count(value) {
  return value === null || value === undefined ? "—" : integer.format(value);
}

export function rate(value) {
  return value === null || value === undefined ? "—" : oneDecimal.format(value);
}

// A decimal string (amounts and prices are exact strings): group the whole
// part's digits, keep the fraction as it is (never through a float).
export function decimal(text, maxFraction = 6) {
  if (text === null || text === undefined) return "—";
  const [whole, fraction = ""] = String(text).split(".");
  const negative = whole.startsWith("-");
  const digits = negative ? whole.slice(1) : whole;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const kept = fraction.slice(0, maxFraction).replace(/0+$/, "");
  return (negative ? "-" : "") + grouped + (kept ? "." + kept : "");
}

export function percent(text) {
  if (text === null || text === undefined) return "—";
  const value = Number(text);
  const sign = value > 0 ? "+" : "";
  return sign + value.toFixed(2) + " %";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let s = Math.max(0, Math.floor(seconds));
  const days = Math.floor(s / 86400); s -= days * 86400;
  const hours = Math.floor(s / 3600); s -= hours * 3600;
  const minutes = Math.floor(s / 60); s -= minutes * 60;
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${s} s`;
  return `${s} s`;
}

export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString("en-GB", {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function short(hex, keep = 6) {
  if (!hex || hex.length <= 2 * keep + 3) return hex || "—";
  return hex.slice(0, keep + 2) + "…" + hex.slice(-keep);
}
