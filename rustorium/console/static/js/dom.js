// Building the page from data without ever parsing data as HTML: every
// value goes in as text, so nothing the server returns can become markup.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
  return element;
}

export function replace(element, ...children) {
  return append(clear(element), children);
}

// A table: columns are {label, value(row) -> node or text, class}.
export function table(columns, rows, empty = "Nothing to show") {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.class || "", scope: "col" }, c.label)));
  const body = h("tbody");
  if (!rows.length) {
    body.append(h("tr", {}, h("td", { class: "empty", colspan: columns.length }, empty)));
  }
  for (const row of rows) {
    body.append(h("tr", {}, columns.map((c) => h("td", { class: c.class || "" }, c.value(row)))));
  }
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), body));
}

export function panel(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}
