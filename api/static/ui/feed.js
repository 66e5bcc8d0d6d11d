// The feed of recent changes (newest first, a bounded list: only the new entries of
// a frame are added), and the messages that say what an action did or why it failed.

const FEED_SHOWN = 200;
const NOTICE_MS = 6000;
const ERROR_MS = 20000;

export class Feed {
  constructor(list) {
    this.list = list;
  }

  // ``entries`` newest last; the last ``fresh`` of them are new since the last call.
  show(entries, fresh) {
    const added = entries.slice(-Math.min(fresh, FEED_SHOWN)).reverse().map(item);
    this.list.prepend(...added);
    while (this.list.childElementCount > FEED_SHOWN) this.list.lastElementChild.remove();
  }
}

function item(entry) {
  const li = document.createElement("li");
  li.dataset.testid = "feed-item";
  li.dataset.type = entry.type;
  if (entry.model !== null) li.dataset.model = entry.model;
  if (entry.key !== null) li.dataset.key = entry.key;
  const time = document.createElement("time");
  time.dateTime = new Date(entry.at).toISOString();
  time.textContent = new Date(entry.at).toLocaleTimeString();
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = entry.type;
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = entry.model === null ? entry.detail : `${entry.model} ${entry.address}`;
  what.title = what.textContent;
  li.append(time, type, what);
  return li;
}

export class Messages {
  constructor(box) {
    this.box = box;
  }

  notice(text) {
    this.#add(text, "notice", NOTICE_MS);
  }

  error(text) {
    this.#add(text, "error", ERROR_MS);
  }

  #add(text, kind, lasts) {
    const message = document.createElement("div");
    message.className = `message ${kind}`;
    message.dataset.testid = kind;
    message.setAttribute("role", kind === "error" ? "alert" : "status");
    const words = document.createElement("span");
    words.textContent = text;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => message.remove());
    message.append(words, dismiss);
    this.box.append(message);
    while (this.box.childElementCount > 5) this.box.firstElementChild.remove();
    setTimeout(() => message.remove(), lasts);
  }
}
