// The console's calls: the HTTP API under api/v1/ (the same operations as
// /api/v1/, the session cookie standing in for the bearer key) and the
// session itself. The CSRF token comes from GET session, is kept in memory
// only, and goes with every call that changes something.

let csrf = null;
const signedOutListeners = new Set();

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function onSignedOut(listener) {
  signedOutListeners.add(listener);
}

export function signedOut() {
  csrf = null;
  for (const listener of signedOutListeners) listener();
}

function url(path) {
  return new URL(path, document.baseURI);
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  let response;
  try {
    response = await fetch(url(path), {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "network", "the server cannot be reached; is it running?");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const detail = (data && data.error) || {};
    throw new ApiError(response.status, detail.code || "error",
      detail.message || `${response.status} ${response.statusText}`);
  }
  return data;
}

// An HTTP API operation, e.g. call("GET", "info"); a 401 means the session
// ended: the console goes back to the sign-in form.
export async function call(method, path, body) {
  try {
    return await request(method, "api/v1/" + path, body);
  } catch (error) {
    if (error.status === 401) signedOut();
    throw error;
  }
}

export async function currentSession() {
  try {
    const session = await request("GET", "session");
    csrf = session.csrf;
    return session;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

export async function signIn(key) {
  const session = await request("POST", "session", { key });
  csrf = session.csrf;
  return session;
}

export async function signOut() {
  try {
    await request("DELETE", "session");
  } finally {
    csrf = null;
  }
}
