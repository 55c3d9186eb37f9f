// Signing in and out: a pasted token, or a one-time code from a `#signin=CODE` link that is
// exchanged once and removed from the address bar before anything else happens.

import { ApiError, forgetToken, get, keepToken, post, sessionToken } from "./api.js";

const LINK_PREFIX = "#signin=";

export const isSignInLink = () => window.location.hash.startsWith(LINK_PREFIX);

/** The sign-in code in the address, removed from it (and from history) at once. */
export function takeLinkCode() {
  const hash = window.location.hash;
  if (!hash.startsWith(LINK_PREFIX)) return null;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  return decodeURIComponent(hash.slice(LINK_PREFIX.length)) || null;
}

/** Exchanges a sign-in code for a session token; answers who signed in. */
export async function signInWithCode(code) {
  const session = await post("/session", { code }, { token: null });
  keepToken(session.token);
  return get("/me");
}

/** Checks a pasted token with the API and keeps it only if the API accepts it. */
export async function signInWithToken(token) {
  const trimmed = token.trim();
  if (!trimmed) throw new ApiError(400, "invalid_argument", "paste a token first");
  const me = await get("/me", { token: trimmed });
  keepToken(trimmed);
  return me;
}

/** Who the kept session token belongs to, or null when there is none or it is refused. */
export async function resume() {
  if (!sessionToken()) return null;
  try {
    return await get("/me");
  } catch (error) {
    forgetToken();
    throw error;
  }
}

export function signOut() {
  forgetToken();
}
