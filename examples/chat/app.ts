// The demo chat: one room, a name, the connection's state, each message
// once and in order across reconnects and reloads, and a marker where the
// SDK recovered messages that were missed while disconnected.
//
// Query parameters: relay (ws URL of the relay, default this host's
// /v1/ws), room (default lobby), name (default guest).
import { LocalStorageCursors, RelayClient, type Message } from "@chat-relay/client";

const params = new URLSearchParams(location.search);
const relay = params.get("relay") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
const room = params.get("room") ?? "lobby";
const name = params.get("name") ?? "guest";

const list = document.querySelector<HTMLUListElement>("#messages")!;
const stateBadge = document.querySelector<HTMLSpanElement>("#state")!;
const nodeLine = document.querySelector<HTMLDivElement>("#node")!;
const form = document.querySelector<HTMLFormElement>("#composer")!;
document.querySelector("#room")!.textContent = room;
document.querySelector("#name")!.textContent = name;

// What the page showed before a reload, so that the resume (which sends
// only what came after the cursor) continues the same transcript.
const transcriptKey = `chat-demo:transcript:${room}`;
type Line = { kind: "message"; id: string; prev: string; who: string; text: string; ts: number } | { kind: "marker"; text: string; lost: boolean };
const transcript: Line[] = JSON.parse(localStorage.getItem(transcriptKey) ?? "[]") as Line[];

function render(line: Line): void {
  const item = document.createElement("li");
  if (line.kind === "marker") {
    item.className = line.lost ? "marker lost" : "marker";
    item.textContent = line.text;
  } else {
    item.dataset["id"] = line.id;
    item.dataset["prev"] = line.prev;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = line.who;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = new Date(line.ts).toLocaleTimeString();
    item.append(when, who, document.createTextNode(line.text));
  }
  list.append(item);
  item.scrollIntoView({ block: "end" });
}

function add(line: Line): void {
  transcript.push(line);
  localStorage.setItem(transcriptKey, JSON.stringify(transcript.slice(-500)));
  render(line);
}

for (const line of transcript) render(line);

const client = new RelayClient({ url: relay, cursors: new LocalStorageCursors("chat-demo:cursor:") });
client.on("state", (state, detail) => {
  stateBadge.dataset["state"] = state;
  stateBadge.textContent = state;
  if (state === "connected") nodeLine.textContent = `connected to node ${detail.node ?? "?"}`;
  else if (state === "disconnected") nodeLine.textContent = `disconnected (${detail.code ?? "?"}: ${detail.reason}); retrying in ${detail.delayMs ?? 0} ms`;
});
client.on("error", (error) => console.warn("chat-relay:", error.code, error.message));

client.subscribe(room, {
  last: 20,
  onSubscribed(info) {
    if (info.recovered === true && info.replay > 0) {
      add({ kind: "marker", text: `${info.replay} missed message${info.replay === 1 ? "" : "s"} recovered`, lost: false });
    }
  },
  onGap(info) {
    add({ kind: "marker", text: `messages after ${info.after} are no longer kept`, lost: true });
  },
  onMessage(message: Message) {
    const body = message.body as { name?: unknown; text?: unknown } | null;
    add({
      kind: "message",
      id: message.id,
      prev: message.prev,
      who: typeof body?.name === "string" ? body.name : (message.from ?? "someone"),
      text: typeof body?.text === "string" ? body.text : JSON.stringify(message.body),
      ts: message.ts,
    });
  },
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = form.elements.namedItem("text") as HTMLInputElement;
  const text = input.value.trim();
  input.value = "";
  if (text === "") return;
  client.publish(room, { name, text }).catch((error: { code?: string; message?: string }) => {
    add({ kind: "marker", text: `not sent (${error.code}): ${error.message}`, lost: true });
  });
});
