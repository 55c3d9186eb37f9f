// The REST client: JSON in and out, the session token in the Authorization header (no
// cookie carries authority), errors as ApiError with the API's code, message and position.

const TOKEN_KEY = "fabric.token";
const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message, position) {
    super(message);
    this.status = status;
    this.code = code;
    this.position = position || null;
  }
}

let onUnauthenticated = () => {};

/** Called when the API says the session token is no longer accepted (401). */
export function whenUnauthenticated(callback) {
  onUnauthenticated = callback;
}

export function sessionToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function keepToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** One API call. `token` overrides the session's (used to check a token before keeping it). */
export async function call(method, path, body, { token } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? sessionToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch {
    throw new ApiError(0, "unavailable", "the gateway cannot be reached");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || `the gateway answered ${response.status}`,
      error.position,
    );
    if (response.status === 401 && token === undefined) onUnauthenticated(failure);
    throw failure;
  }
  return data;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body ?? {}, options);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

/** A path segment, escaped. */
export const seg = (name) => encodeURIComponent(name);
