// The demo chat: one room, a name, the connection's state, each message
// once and in order across reconnects and reloads, a marker where the SDK
// recovered messages that were missed while disconnected, who is here
// (presence) and who is typing (signals).
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
const hereLine = document.querySelector<HTMLDivElement>("#here")!;
const typingLine = document.querySelector<HTMLDivElement>("#typing")!;
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

// With RELAY_AUTH=none the relay takes the user from the URL; with tokens
// it would be the token's subject.
const relayUrl = new URL(relay);
relayUrl.searchParams.set("user", name);
const client = new RelayClient({ url: relayUrl.toString(), cursors: new LocalStorageCursors("chat-demo:cursor:") });

// Who is typing: a signal at most every 2 s while typing, shown for 3 s.
const typing = new Map<string, number>();
function renderTyping(): void {
  const now = Date.now();
  for (const [who, until] of typing) if (until <= now) typing.delete(who);
  const names = [...typing.keys()].sort();
  typingLine.textContent = names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}
setInterval(renderTyping, 500);
client.on("state", (state, detail) => {
  stateBadge.dataset["state"] = state;
  stateBadge.textContent = state;
  if (state === "connected") nodeLine.textContent = `connected to node ${detail.node ?? "?"}`;
  else if (state === "disconnected") nodeLine.textContent = `disconnected (${detail.code ?? "?"}: ${detail.reason}); retrying in ${detail.delayMs ?? 0} ms`;
});
client.on("error", (error) => console.warn("chat-relay:", error.code, error.message));

client.subscribe(room, {
  last: 20,
  presence: true,
  onPresence(presence) {
    const others = presence.count - (presence.members.has(name) ? 1 : 0);
    hereLine.dataset["members"] = [...presence.members].sort().join(",");
    hereLine.textContent = `here: ${[...presence.members].sort().join(", ")}${presence.complete ? "" : ` and ${presence.count - presence.members.size} more`} (${others} besides you)`;
  },
  onSignal(signal) {
    const body = signal.body as { typing?: unknown } | null;
    if (signal.from === null || signal.from === name || body?.typing !== true) return;
    typing.set(signal.from, Date.now() + 3000);
    renderTyping();
  },
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

let lastTypingSignal = 0;
form.addEventListener("input", () => {
  if (Date.now() - lastTypingSignal < 2000) return;
  if (client.signal(room, { typing: true })) lastTypingSignal = Date.now();
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
