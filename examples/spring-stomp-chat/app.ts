// A chat page written the way the Spring Boot STOMP tutorials write it:
// SockJS to /ws-stomp, subscribe to /topic/chat/room/{roomId}, send to
// /app/chat/message (a @MessageMapping there). It runs on chat-relay with
//   RELAY_STOMP_ENDPOINTS=/ws-stomp
//   RELAY_STOMP_APP_ROUTES=/app/chat/message=chat.room.{roomId}
// and no Spring server. The two lines marked "relay" are the whole
// migration: resume with `since` after a reconnect, and a `cmid` per SEND.
import { Client, type IMessage } from "@stomp/stompjs";
import SockJS from "sockjs-client";

interface ChatMessage {
  type: "TALK";
  roomId: string;
  sender: string;
  message: string;
}

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "http://localhost:8080";
const roomId = params.get("room") ?? "1";
const sender = params.get("name") ?? "guest";

const list = document.querySelector<HTMLUListElement>("#messages")!;
const stateLabel = document.querySelector<HTMLElement>("#state")!;
document.querySelector<HTMLElement>("#room")!.textContent = roomId;

/** The last message id this page showed: where a reconnect resumes. */
let lastSeen: string | undefined;

function setState(state: "connected" | "reconnecting"): void {
  stateLabel.dataset["state"] = state;
  stateLabel.textContent = state;
}

function show(frame: IMessage): void {
  const chat = JSON.parse(frame.body) as ChatMessage;
  const item = document.createElement("li");
  item.dataset["id"] = frame.headers["message-id"] ?? "";
  item.dataset["prev"] = frame.headers["prev"] ?? "";
  item.textContent = `${chat.sender}: ${chat.message}`;
  list.append(item);
  lastSeen = frame.headers["message-id"];
}

const stomp = new Client({
  webSocketFactory: () => new SockJS(`${server}/ws-stomp`),
  reconnectDelay: 500,
  onConnect: () => {
    // The room's recent history first, then live; after a reconnect,
    // exactly what was missed.
    const headers: Record<string, string> = { receipt: `subscribed-${Date.now()}` };
    if (lastSeen === undefined) headers["last"] = "100";
    else headers["since"] = lastSeen; // relay: resume where this page stopped
    stomp.watchForReceipt(headers["receipt"]!, () => setState("connected"));
    stomp.subscribe(`/topic/chat/room/${roomId}`, show, headers);
  },
  onWebSocketClose: () => setState("reconnecting"),
});
stomp.activate();

document.querySelector<HTMLFormElement>("#chat")!.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = (event.target as HTMLFormElement).elements.namedItem("text") as HTMLInputElement;
  const chat: ChatMessage = { type: "TALK", roomId, sender, message: input.value };
  stomp.publish({
    destination: "/app/chat/message",
    body: JSON.stringify(chat),
    headers: { "content-type": "application/json", cmid: crypto.randomUUID() }, // relay: stored once, however often resent
  });
  input.value = "";
});
