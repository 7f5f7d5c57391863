//! The soak's clients, written as a careful application would write them
//! against the protocol alone: publishers that give every publish a `cmid`
//! and retry it with the same `cmid` across errors and reconnects until it
//! is acked; subscribers that resume every room with `since` (the last id
//! they received) on whichever node answers. Each keeps a raw log of what
//! it was told, for the checker.
//!
//! `broken_resume` makes subscribers resume without `since`, as a buggy
//! client would, so that a test can show the checker catches the loss.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::checker::{Acked, Seen, StreamId, SubscriberLog};

type Socket = WebSocketStream<TcpStream>;

const SILENCE_PING: Duration = Duration::from_secs(3);
const SILENCE_DEAD: Duration = Duration::from_secs(3);

/// What a fault asks of the clients.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// Every client on `node` drops its connection and reconnects at once.
    Storm { node: usize },
    /// Subscriber `subscriber` stops reading its socket...
    Stall { subscriber: usize },
    /// ...until this.
    Unstall { subscriber: usize },
}

/// What every client shares.
pub struct Shared {
    /// The nodes, on 127.0.0.1 or in this run's own namespaces.
    pub nodes: Vec<std::net::SocketAddr>,
    pub started: Instant,
    pub orders: broadcast::Sender<Order>,
    /// Publishers take no new sequence number once this is true.
    pub stop_publishing: watch::Receiver<bool>,
    /// Everyone stops once this is true.
    pub stop: watch::Receiver<bool>,
    pub broken_resume: bool,
    /// Acks so far, for the progress line.
    pub acked: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

pub fn room_name(room: usize) -> String {
    format!("soak-{room}")
}

/// Connects to a node and reads its `welcome`. A
/// subscriber's socket has a 4 KiB receive buffer, so that when it stops
/// reading the node notices within a burst, as with a real slow phone.
async fn connect(address: std::net::SocketAddr, small_buffer: bool) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    if small_buffer {
        socket.set_recv_buffer_size(4096)?;
    }
    let limit = Duration::from_secs(2);
    let tcp = tokio::time::timeout(limit, socket.connect(address))
        .await
        .context("connect timed out")??;
    let url = format!("ws://{address}/v1/ws");
    let (mut socket, _) = tokio::time::timeout(limit, tokio_tungstenite::client_async(url, tcp))
        .await
        .context("handshake timed out")??;
    let welcome = tokio::time::timeout(limit, socket.next())
        .await
        .context("no welcome")?
        .context("closed before welcome")??;
    match welcome {
        Message::Text(text) if text.contains(r#""welcome""#) => Ok(socket),
        other => bail!("expected welcome, got {other:?}"),
    }
}

/// Sleeps for `duration` unless `stop` turns true first (then false).
async fn pause(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        _ = stop.changed() => false,
    }
}

fn retry_after(frame: &Value, default_ms: u64) -> Duration {
    Duration::from_millis(frame["retry_after_ms"].as_u64().unwrap_or(default_ms).min(3000))
}

/// A subscriber of one room, from its beginning (`since: 0-0`) to the end
/// of the run. `progress` is the last id it received.
pub async fn subscriber(
    shared: Arc<Shared>,
    index: usize,
    room: usize,
    seed: u64,
    progress: Arc<Mutex<StreamId>>,
) -> SubscriberLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut log = SubscriberLog {
        room,
        events: Vec::new(),
    };
    let mut orders = shared.orders.subscribe();
    let mut stop = shared.stop.clone();
    let mut last = StreamId::default();
    let mut subscribed_once = false;
    let name = room_name(room);
    'run: loop {
        if *stop.borrow() {
            break;
        }
        let node = rng.usize(..shared.nodes.len());
        let Ok(mut socket) = connect(shared.nodes[node], true).await else {
            if !pause(&mut stop, Duration::from_millis(rng.u64(100..400))).await {
                break;
            }
            continue;
        };
        log.events.push((
            shared.now(),
            Seen::Note(format!("connected to node {node}, since {last}")),
        ));
        let subscribe = if shared.broken_resume && subscribed_once {
            json!({"type": "subscribe", "room": name, "req": "s"})
        } else {
            json!({"type": "subscribe", "room": name, "req": "s", "since": last.to_string()})
        };
        if socket.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        // Full jitter after an unplanned loss, as the SDK does.
        let mut delay = Duration::from_millis(rng.u64(50..500));
        // Liveness, as the SDK keeps it: a ping after 3 s of silence, and
        // after 6 s the connection is taken for dead (a partition that
        // drops packets ends no TCP connection for minutes).
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        loop {
            let check = heard
                + if pinged {
                    SILENCE_PING + SILENCE_DEAD
                } else {
                    SILENCE_PING
                };
            tokio::select! {
                _ = stop.changed() => break 'run,
                () = tokio::time::sleep_until(check) => {
                    if pinged {
                        log.events.push((shared.now(), Seen::Closed { code: None }));
                        break;
                    }
                    pinged = true;
                    if socket.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                        break;
                    }
                }
                order = orders.recv() => match order {
                    Ok(Order::Storm { node: stormed }) if stormed == node => {
                        delay = Duration::ZERO;
                        break;
                    }
                    Ok(Order::Stall { subscriber }) if subscriber == index => {
                        // Not reading: only orders, until the unstall (or
                        // 15 s, should it never come).
                        let limit = tokio::time::sleep(Duration::from_secs(15));
                        tokio::pin!(limit);
                        loop {
                            tokio::select! {
                                () = &mut limit => break,
                                order = orders.recv() => match order {
                                    Ok(Order::Unstall { subscriber }) if subscriber == index => break,
                                    Err(broadcast::error::RecvError::Closed) => break 'run,
                                    _ => {}
                                },
                            }
                        }
                        // What waits in the socket is read next: not silence.
                        heard = tokio::time::Instant::now();
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break 'run,
                },
                frame = socket.next() => {
                    heard = tokio::time::Instant::now();
                    pinged = false;
                    match frame {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(frame) = serde_json::from_str::<Value>(&text) else { break };
                        let at = shared.now();
                        match frame["type"].as_str() {
                            Some("subscribed") => {
                                subscribed_once = true;
                                log.events.push((at, Seen::Subscribed { recovered: frame["recovered"].as_bool() }));
                                log.events.push((at, Seen::Note(format!("replay {}", frame["replay"]))));
                            }
                            Some("message") => {
                                let id = frame["id"].as_str().and_then(StreamId::parse);
                                let prev = frame["prev"].as_str().and_then(StreamId::parse);
                                let (Some(id), Some(prev)) = (id, prev) else {
                                    eprintln!("soak: a message frame without a valid id or prev: {frame}");
                                    break;
                                };
                                last = id;
                                *progress.lock().expect("progress lock") = id;
                                log.events.push((at, Seen::Message { id, prev }));
                            }
                            Some("gap") => log.events.push((at, Seen::Gap)),
                            Some("reconnect") => {
                                delay = Duration::from_millis(frame["delay_ms"].as_u64().unwrap_or(0).min(5000));
                            }
                            Some("error") => {
                                // `unavailable`: before `subscribed` a refusal,
                                // after it the end of the subscription. Either
                                // way: again, later, with `since`.
                                if frame["code"] != "unavailable" {
                                    eprintln!("soak: subscriber {index} was refused: {frame}");
                                }
                                delay = retry_after(&frame, 500);
                                break;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        log.events.push((shared.now(), Seen::Closed { code: close.map(|close| u16::from(close.code)) }));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        log.events.push((shared.now(), Seen::Closed { code: None }));
                        break;
                    }
                    }
                }
            }
        }
        drop(socket);
        if !pause(&mut stop, delay).await {
            break;
        }
    }
    log
}

/// How one publish ended on one connection.
enum Outcome {
    Acked {
        id: StreamId,
    },
    /// `unavailable` or `rate_limited`: the same publish again after this.
    RetryAfter(Duration),
    /// The connection is gone (or silent): reconnect, then the same publish.
    Lost,
    Refused(Value),
}

/// Reads until the answer to `req` (an `ack` or an `error`), obeying
/// storms on the way.
async fn answer(socket: &mut Socket, req: u64, node: usize, orders: &mut broadcast::Receiver<Order>) -> Outcome {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Outcome::Lost,
            order = orders.recv() => {
                if let Ok(Order::Storm { node: stormed }) = order
                    && stormed == node
                {
                    return Outcome::Lost;
                }
            }
            frame = socket.next() => {
                let Some(Ok(frame)) = frame else { return Outcome::Lost };
                let Message::Text(text) = frame else {
                    if matches!(frame, Message::Close(_)) {
                        return Outcome::Lost;
                    }
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { return Outcome::Lost };
                if frame["req"].as_u64() != Some(req) {
                    continue;
                }
                return match frame["type"].as_str() {
                    Some("ack") => match frame["id"].as_str().and_then(StreamId::parse) {
                        Some(id) => Outcome::Acked { id },
                        None => Outcome::Refused(frame),
                    },
                    Some("error") if frame["code"] == "unavailable" => Outcome::RetryAfter(retry_after(&frame, 500)),
                    Some("error") if frame["code"] == "rate_limited" => Outcome::RetryAfter(retry_after(&frame, 100)),
                    _ => Outcome::Refused(frame),
                };
            }
        }
    }
}

/// What a publisher did.
#[derive(Debug, Default)]
pub struct Published {
    pub acked: Vec<Acked>,
    /// Publishes refused for a reason that retrying cannot fix (a bug).
    pub refused: Vec<String>,
    /// A publish still unacked when the run ended.
    pub unfinished: bool,
}

/// Publishes `count` messages (or, with `None`, until told to stop) to
/// `room` as publisher `publisher`, `rate` a second, each until acked.
/// `pad` bytes of filler make a burst that fills a slow subscriber's queue.
pub async fn publisher(
    shared: Arc<Shared>,
    publisher: u32,
    room: usize,
    rate: f64,
    count: Option<u64>,
    pad: usize,
    seed: u64,
) -> Published {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut orders = shared.orders.subscribe();
    let mut stop = shared.stop.clone();
    let stop_publishing = shared.stop_publishing.clone();
    let mut published = Published::default();
    let mut connection: Option<(usize, Socket)> = None;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next_at = tokio::time::Instant::now();
    let filler = "x".repeat(pad);
    let name = room_name(room);
    let mut seq = 0;
    while count.map_or(!*stop_publishing.borrow(), |count| seq < count) {
        tokio::time::sleep_until(next_at).await;
        next_at = (next_at + interval).max(tokio::time::Instant::now() - Duration::from_secs(1));
        let cmid = format!("{publisher}-{seq}");
        let frame = json!({
            "type": "publish", "room": name, "req": seq, "cmid": cmid,
            "body": {"p": publisher, "s": seq, "pad": filler},
        })
        .to_string();
        loop {
            if *stop.borrow() {
                published.unfinished = true;
                return published;
            }
            let (node, socket) = match &mut connection {
                Some((node, socket)) => (*node, socket),
                None => {
                    let node = rng.usize(..shared.nodes.len());
                    match connect(shared.nodes[node], false).await {
                        Ok(socket) => (node, &mut connection.insert((node, socket)).1),
                        Err(_) => {
                            pause(&mut stop, Duration::from_millis(rng.u64(100..400))).await;
                            continue;
                        }
                    }
                }
            };
            let outcome = if socket.send(Message::text(frame.clone())).await.is_err() {
                Outcome::Lost
            } else {
                answer(socket, seq, node, &mut orders).await
            };
            match outcome {
                Outcome::Acked { id } => {
                    shared.acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    published.acked.push(Acked {
                        room,
                        cmid: cmid.clone(),
                        id,
                        at: shared.now(),
                    });
                    break;
                }
                Outcome::RetryAfter(wait) => {
                    pause(&mut stop, wait).await;
                }
                Outcome::Lost => {
                    connection = None;
                    pause(&mut stop, Duration::from_millis(rng.u64(50..300))).await;
                }
                Outcome::Refused(frame) => {
                    published.refused.push(frame.to_string());
                    break;
                }
            }
        }
        seq += 1;
    }
    published
}
