//! A raw STOMP client over a WebSocket, for tests that need to send what a
//! STOMP library would not (header bombs, NULs, frames split anywhere) and
//! see every frame the node writes.

use std::fmt::Write as _;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct StompClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl StompClient {
    /// Upgrades to STOMP at `url` (`ws://host/v1/stomp`), without CONNECT.
    pub async fn open(url: &str) -> Self {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade in time")
            .expect("STOMP upgrade");
        Self { stream }
    }

    /// Upgrades and CONNECTs with `headers` (a `passcode`, a `login`...).
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut client = Self::open(url).await;
        let mut frame = "CONNECT\naccept-version:1.2\nhost:relay\n".to_owned();
        for (name, value) in headers {
            let _ = writeln!(frame, "{name}:{value}");
        }
        frame.push_str("\n\0");
        client.send(&frame).await;
        let connected = client.frame("CONNECTED").await;
        assert!(connected.starts_with("CONNECTED"), "{connected}");
        client
    }

    /// Sends text as one WebSocket message (any number of frames, or part of one).
    pub async fn send(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// The next frame of this command (heart-beats and other frames skipped).
    pub async fn frame(&mut self, command: &str) -> String {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("a {command} within 10 s"))
                .unwrap_or_else(|| panic!("the connection closed before a {command}"))
                .unwrap_or_else(|error| panic!("read error before a {command}: {error}"));
            if let Message::Text(text) = message
                && text.starts_with(command)
            {
                return text.to_string();
            }
        }
    }

    /// The value of header `name` in a frame's text.
    pub fn header<'a>(frame: &'a str, name: &str) -> Option<&'a str> {
        let head = frame.split("\n\n").next()?;
        head.lines()
            .skip(1)
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
    }

    /// A frame's body (up to its NUL).
    pub fn body(frame: &str) -> &str {
        let body = frame.split_once("\n\n").map_or("", |(_, body)| body);
        body.strip_suffix('\0').unwrap_or(body)
    }
}
