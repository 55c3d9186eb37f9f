// The portal's entry point: sign-in, tabs, and the role that decides what is shown (the API
// enforces the same rules whatever the page shows).

import { whenUnauthenticated } from "./api.js";
import { byId, fill } from "./dom.js";
import { notify } from "./notice.js";
import {
  isSignInLink,
  resume,
  signInWithCode,
  signInWithToken,
  signOut,
  takeLinkCode,
} from "./session.js";
import * as connections from "./connections.js";
import * as discovery from "./discovery.js";
import * as query from "./query.js";
import * as activity from "./activity.js";

const tabs = { connections, discovery, query, activity };
let current = "connections";

function showSignIn(message) {
  document.body.className = "signed-out";
  byId("app").hidden = true;
  byId("signout").hidden = true;
  fill(byId("whoami"));
  byId("signin").hidden = false;
  const error = byId("signin-error");
  error.hidden = !message;
  error.textContent = message || "";
  activity.stop();
}

function showApp(me) {
  document.body.className = `signed-in role-${me.role}`;
  byId("signin").hidden = true;
  byId("signin-error").hidden = true;
  byId("signin-token").value = "";
  byId("app").hidden = false;
  byId("signout").hidden = false;
  fill(byId("whoami"), `${me.principal} · ${me.role} · ${me.tenant} / ${me.stage}`);
  for (const module of Object.values(tabs)) module.start(me);
  openTab(current);
}

function openTab(name) {
  current = name;
  notify("");
  for (const button of byId("tabs").querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const key of Object.keys(tabs)) byId(`tab-${key}`).hidden = key !== name;
  tabs[name].shown();
}

const LEAVING_MESSAGE = "fabric.signin-message";

// Signing out loads the page afresh, so nothing the last user saw (results, previews,
// forms) stays in this tab for the next one; a message for the sign-in form survives it.
function leave(message) {
  signOut();
  if (message) sessionStorage.setItem(LEAVING_MESSAGE, message);
  window.location.replace(window.location.pathname);
}

async function boot() {
  const farewell = sessionStorage.getItem(LEAVING_MESSAGE) || "";
  sessionStorage.removeItem(LEAVING_MESSAGE);
  whenUnauthenticated(() => leave("Your session has ended: sign in again."));
  byId("tabs").addEventListener("click", (event) => {
    const tab = event.target.closest("button")?.dataset.tab;
    if (tab) openTab(tab);
  });
  byId("signout").addEventListener("click", () => leave(""));
  byId("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      showApp(await signInWithToken(byId("signin-token").value));
    } catch (error) {
      showSignIn(error.message);
    }
  });

  // A sign-in link opened in a tab that already shows the portal changes only the
  // fragment, which loads nothing: load the page afresh, which takes the code.
  window.addEventListener("hashchange", () => {
    if (isSignInLink()) window.location.reload();
  });

  const code = takeLinkCode();
  await enter(code ? signInWithCode(code) : resume(), farewell);
}

async function enter(signingIn, message = "") {
  try {
    const me = await signingIn;
    if (me) showApp(me);
    else showSignIn(message);
  } catch (error) {
    signOut();
    showSignIn(error.message);
  }
}

boot();
