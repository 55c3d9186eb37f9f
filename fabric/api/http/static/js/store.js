// What several tabs share: the signed-in identity and the list of connections.

let me = null;
let connections = [];
const listeners = new Set();

export function setIdentity(identity) {
  me = identity;
}

export const isAdmin = () => me?.role === "admin";

export function setConnections(list) {
  connections = list;
  for (const listener of listeners) listener(connections);
}

/** Calls `listener` with the list now and whenever it changes. */
export function onConnections(listener) {
  listeners.add(listener);
  listener(connections);
}

/** Fills a <select> with the connection names, keeping the current choice when it is still there. */
export function fillConnectionSelect(select, list) {
  const chosen = select.value;
  select.replaceChildren();
  for (const connection of list) {
    const option = document.createElement("option");
    option.value = connection.name;
    option.textContent = connection.name;
    select.append(option);
  }
  if (list.some((c) => c.name === chosen)) select.value = chosen;
}
