// The console's shell: sign-in, navigation between the five views (each
// its own URL under the console's base, with history.pushState, so views
// are bookmarkable and the back button works), and the live indicator.

import { currentSession, onSignedOut, signIn, signOut } from "./api.js";
import { setIndicator } from "./live.js";
import * as connections from "./pages/connections.js";
import * as keys from "./pages/keys.js";
import * as markets from "./pages/markets.js";
import * as overview from "./pages/overview.js";
import * as transactions from "./pages/transactions.js";

const VIEWS = { overview, markets, transactions, keys, connections };
const TITLES = {
  overview: "Overview", markets: "Markets", transactions: "Transactions",
  keys: "Keys", connections: "Connections",
};

const base = new URL(document.baseURI);
const $ = (id) => document.getElementById(id);
let current = null;
let signedIn = false;

function viewOf(location) {
  const rest = location.pathname.startsWith(base.pathname)
    ? location.pathname.slice(base.pathname.length) : "";
  const name = rest.split("/")[0];
  return VIEWS[name] ? name : "overview";
}

export function navigate(href, { replace = false } = {}) {
  const target = new URL(href, document.baseURI);
  if (target.href !== window.location.href) {
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
  }
  render();
}

function render() {
  if (!signedIn) return;
  if (current) {
    current.unmount();
    current = null;
  }
  const name = viewOf(window.location);
  const asked = window.location.pathname.slice(base.pathname.length).split("/")[0];
  if (asked !== name) {
    // The bare console URL (or an unknown one) shows the overview, at its URL.
    history.replaceState(null, "", new URL(name + window.location.search, base));
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${TITLES[name]} · Rustorium console`;
  const root = $("page");
  root.replaceChildren();
  current = VIEWS[name].mount(root, {
    params: new URLSearchParams(window.location.search),
    navigate,
  });
}

function showSignIn(message = "") {
  signedIn = false;
  if (current) {
    current.unmount();
    current = null;
  }
  $("page").replaceChildren();
  $("nav").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  document.title = "Sign in · Rustorium console";
  $("admin-key").focus();
}

function showConsole(session) {
  signedIn = true;
  $("sign-in").hidden = true;
  $("admin-key").value = "";
  $("sign-in-error").textContent = "";
  $("nav").hidden = false;
  $("session").hidden = false;
  $("who").textContent = session.key_name;
  render();
}

async function submitSignIn(event) {
  event.preventDefault();
  const input = $("admin-key");
  const button = event.target.querySelector("button");
  const key = input.value.trim();
  if (!key) return;
  button.disabled = true;
  $("sign-in-error").textContent = "";
  try {
    const session = await signIn(key);
    input.value = "";
    showConsole(session);
    $("view").focus();
  } catch (error) {
    $("sign-in-error").textContent = error.status === 403 || error.status === 401
      ? error.message.charAt(0).toUpperCase() + error.message.slice(1) + "."
      : `Cannot sign in: ${error.message}`;
    input.select();
  } finally {
    button.disabled = false;
  }
}

async function start() {
  setIndicator($("live"));
  $("sign-in-form").addEventListener("submit", submitSignIn);
  $("sign-out").addEventListener("click", async () => {
    try {
      await signOut();
    } finally {
      showSignIn("Signed out.");
    }
  });
  onSignedOut(() => {
    if (signedIn) showSignIn("Your session ended; sign in again.");
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-route]");
    if (!link || event.defaultPrevented || event.button !== 0
        || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
    $("view").focus({ preventScroll: true });
  });
  window.addEventListener("popstate", render);
  let session = null;
  try {
    session = await currentSession();
  } catch (error) {
    showSignIn(`Cannot reach the server: ${error.message}`);
    return;
  }
  if (session) showConsole(session);
  else showSignIn();
}

start();
