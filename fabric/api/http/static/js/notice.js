// A one-line status message under the top bar.

import { byId } from "./dom.js";

export function notify(text) {
  const notice = byId("notice");
  notice.textContent = text;
  notice.hidden = !text;
}
