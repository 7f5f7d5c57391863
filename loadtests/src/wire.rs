//! A minimal WebSocket client of the relay protocol for load generation:
//! connect, skip `welcome`, send frames, read JSON frames.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Refuses anything but loopback: load never leaves this machine.
pub fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("{url}: load is only sent to loopback addresses (127.0.0.0/8, ::1, localhost)");
    }
    Ok(())
}

pub async fn connect(url: &str) -> anyhow::Result<Socket> {
    ensure_loopback(url)?;
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    let welcome = next_json(&mut socket).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok(socket)
}

pub async fn send(socket: &mut Socket, frame: &Value) -> anyhow::Result<()> {
    socket
        .send(Message::text(frame.to_string()))
        .await
        .context("send frame")
}

pub async fn send_text(socket: &mut Socket, frame: String) -> anyhow::Result<()> {
    socket.send(Message::text(frame)).await.context("send frame")
}

/// The next text frame, unparsed.
pub async fn next_text(socket: &mut Socket) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match socket
            .next()
            .await
            .context("connection closed")?
            .context("read frame")?
        {
            Message::Text(text) => return Ok(text),
            Message::Close(frame) => bail!("connection closed by the server: {frame:?}"),
            _ => {}
        }
    }
}

pub async fn next_json(socket: &mut Socket) -> anyhow::Result<Value> {
    let text = next_text(socket).await?;
    serde_json::from_str(&text).context("frame is not JSON")
}

/// Subscribes and waits for `subscribed`.
pub async fn subscribe(socket: &mut Socket, room: &str) -> anyhow::Result<()> {
    send(
        socket,
        &serde_json::json!({"type": "subscribe", "room": room, "req": "s"}),
    )
    .await?;
    loop {
        let frame = next_json(socket).await?;
        if frame["type"] == "subscribed" {
            return Ok(());
        }
        if frame["type"] == "error" {
            bail!("subscribe refused: {frame}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for url in [
            "ws://127.0.0.1:8080/v1/ws",
            "ws://localhost:1/v1/ws",
            "ws://[::1]:80/v1/ws",
            "ws://127.5.5.5/v1/ws",
        ] {
            assert!(ensure_loopback(url).is_ok(), "{url}");
        }
        for url in [
            "ws://10.0.0.1:8080/v1/ws",
            "ws://example.com/v1/ws",
            "ws://192.168.1.1/v1/ws",
        ] {
            assert!(ensure_loopback(url).is_err(), "{url}");
        }
    }
}
