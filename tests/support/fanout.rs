//! Shared by `tests/fanout_allocations.rs` and `benches/hot_path.rs`
//! (included by `#[path]`): a heap allocator that counts allocations, and a
//! hub with live local subscribers to fan messages out to.
//!
//! Including this file makes [`CountingAllocator`] the binary's global
//! allocator; it delegates every call to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chat_relay::broker::{MemoryBroker, RetentionSettings, StoredMessage};
use chat_relay::protocol::{MessageFrameTail, MessageId, RoomName, message_frame};
use chat_relay::session::{ConnectionHandle, ConnectionQueues, RoomHub, Subscription};
use chat_relay::telemetry::Metrics;

/// The system allocator, counting `alloc` and `realloc` calls.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `work` and returns its value with the heap allocations it made.
pub fn allocations_of<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let value = work();
    (value, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

/// A subscriber attached to the hub and switched to live, with its queues.
pub type LiveSubscriber = (Subscription, ConnectionQueues);

/// A hub on a memory broker with `count` live subscribers of `room`.
pub async fn hub_with_live_subscribers(room: &RoomName, count: usize) -> (Arc<RoomHub>, Vec<LiveSubscriber>) {
    let tasks = chat_relay::tasks::NodeTasks::new();
    let broker = MemoryBroker::new(
        RetentionSettings {
            history_maxlen: 1000,
            history_ttl: std::time::Duration::from_secs(3600),
            idempotency_ttl: std::time::Duration::from_secs(600),
            replicas_acked: 0,
        },
        &tasks,
    );
    let hub = RoomHub::new(
        broker,
        Arc::new(Metrics::new("fanout", "memory")),
        chat_relay::session::BufferLimit {
            messages: 1024,
            bytes: usize::MAX,
        },
        tasks,
        chat_relay::session::PresenceTiming {
            ttl: std::time::Duration::from_secs(45),
        },
    );
    let mut subscribers = Vec::with_capacity(count);
    for _ in 0..count {
        let (handle, _replies, queues) = ConnectionHandle::new(1024);
        let subscription = hub.attach(room, handle).await.expect("attach to the hub");
        assert!(subscription.take_buffered_or_go_live(None).is_none());
        subscribers.push((subscription, queues));
    }
    (hub, subscribers)
}

/// The `sequence`-th message of `room`, chained to the one before it.
pub fn stored_message(room: &RoomName, sequence: u64) -> Arc<StoredMessage> {
    let id = MessageId::new(1_795_579_107_415, sequence + 1);
    let prev = MessageId::new(1_795_579_107_415, sequence);
    let tail = MessageFrameTail::new(Some("ann"), 1_795_579_107_415, Some("c-1"), r#"{"text":"hello, room"}"#);
    Arc::new(StoredMessage {
        id,
        prev,
        frame: Bytes::from(message_frame::compose(room, id, prev, tail.as_str())),
        trace: None,
    })
}

/// Empties every subscriber's live queue; returns how many frames it held.
pub fn drain_live_queues(subscribers: &mut [LiveSubscriber]) -> usize {
    let mut received = 0;
    for (_, queues) in subscribers.iter_mut() {
        while queues.try_next().is_some() {
            received += 1;
        }
    }
    received
}

/// A live subscriber whose messages the fan-out writes straight to a
/// loopback socket (the WebSocket writer idle), with the client's end.
pub struct SocketSubscriber {
    /// Held to stay in the room (dropping it leaves).
    pub _subscription: Subscription,
    pub queues: ConnectionQueues,
    pub client: std::net::TcpStream,
}

/// A hub with `count` live subscribers of `room`, each on a loopback
/// socket that its (idle) writer lets the fan-out write to directly.
pub async fn hub_with_socket_subscribers(room: &RoomName, count: usize) -> (Arc<RoomHub>, Vec<SocketSubscriber>) {
    let (hub, live) = hub_with_live_subscribers(room, count).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let address = listener.local_addr().expect("its address");
    let mut subscribers = Vec::with_capacity(count);
    for (subscription, queues) in live {
        let client = std::net::TcpStream::connect(address).expect("connect on loopback");
        client.set_nonblocking(true).expect("a non-blocking client");
        let (server, _) = listener.accept().expect("accept on loopback");
        server.set_nonblocking(true).expect("a non-blocking server end");
        server.set_nodelay(true).expect("TCP_NODELAY");
        let server = Arc::new(tokio::net::TcpStream::from_std(server).expect("a tokio socket"));
        // tokio writes only once its reactor has seen the socket writable.
        server.writable().await.expect("a writable socket");
        queues.write_directly(Arc::new(chat_relay::http::socket::DirectText::new(server)));
        writer_waits(&queues);
        subscribers.push(SocketSubscriber {
            _subscription: subscription,
            queues,
            client,
        });
    }
    (hub, subscribers)
}

/// Plays a connection's writer that has written everything: it finds its
/// queues empty and waits, which lets the fan-out write to its socket.
pub fn writer_waits(queues: &ConnectionQueues) {
    let waiting = queues.poll_next(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(waiting.is_pending(), "nothing was queued for the writer");
}

/// Reads what each client received so far; returns the bytes per client.
pub fn drain_sockets(subscribers: &mut [SocketSubscriber]) -> Vec<usize> {
    use std::io::Read as _;
    let mut buffer = vec![0u8; 64 * 1024];
    subscribers
        .iter_mut()
        .map(|subscriber| {
            let mut received = 0;
            loop {
                match subscriber.client.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => received += read,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("reading a subscriber's socket: {error}"),
                }
            }
            received
        })
        .collect()
}
