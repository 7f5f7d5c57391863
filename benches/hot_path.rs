//! The per-message hot path: encoding a message frame (and its ack),
//! fanning one message out to 1,000 local subscribers, writing it straight
//! to 300 idle loopback sockets (the WebSocket writer's idle path), and a
//! writer flushing a batch of 64 frames to one socket in one vectored
//! write, with the heap allocations each step makes (a counting allocator
//! wraps the system one).
//!
//!   cargo bench --bench `hot_path`
//!
//! The allocation counts are printed before the timings; the test
//! `tests/fanout_allocations.rs` holds the fan-out to none per subscriber,
//! queued or written directly. The socket benchmarks include the kernel's
//! loopback send, which is most of their time.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

#[path = "../tests/support/fanout.rs"]
mod fanout;

use std::hint::black_box;

use chat_relay::broker::LiveSink;
use chat_relay::http::socket::{FrameWriter, message_frame};
use chat_relay::protocol::{MessageFrameTail, MessageId, RoomName, message_frame, server_frame};
use chat_relay::session::LiveMessage;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fanout::{
    allocations_of, drain_live_queues, drain_sockets, hub_with_live_subscribers, hub_with_socket_subscribers,
    stored_message, writer_waits,
};

const SUBSCRIBERS: usize = 1000;
/// Idle sockets written to directly (two open files each, under the usual
/// limit of 1,024).
const SOCKETS: usize = 300;
/// Frames a writer hands to the kernel at once (the driver's batch).
const BATCH: usize = 64;

fn frame_encoding(criterion: &mut Criterion) {
    let room = RoomName::parse("team:42:general").expect("valid room");
    let body = r#"{"text":"hello, room","mentions":["bob"]}"#;
    let encode = |body: &str| {
        let tail = MessageFrameTail::new(Some("ann"), 1_795_579_107_415, Some("c-1"), body);
        message_frame::compose(&room, MessageId::new(1, 2), MessageId::new(1, 1), tail.as_str())
    };
    let (_, allocations) = allocations_of(|| black_box(encode(body)));
    println!("allocations: message frame (tail + frame) = {allocations}");
    criterion.bench_function("encode message frame (tail + whole frame)", |bench| {
        bench.iter(|| black_box(encode(black_box(body))));
    });
    criterion.bench_function("encode ack", |bench| {
        bench.iter(|| {
            black_box(server_frame::ack(
                None,
                &room,
                MessageId::new(1, 2),
                MessageId::new(1, 1),
                false,
            ))
        });
    });
}

fn fan_out(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let room = RoomName::parse("fanout").expect("valid room");
    let (hub, mut subscribers) = runtime.block_on(hub_with_live_subscribers(&room, SUBSCRIBERS));
    let mut sequence = 0;
    // Warm the queues up, then count one message's allocations.
    for _ in 0..64 {
        hub.deliver(&room, stored_message(&room, sequence));
        sequence += 1;
        drain_live_queues(&mut subscribers);
    }
    let message = stored_message(&room, sequence);
    sequence += 1;
    let ((), allocations) = allocations_of(|| hub.deliver(&room, message));
    drain_live_queues(&mut subscribers);
    println!("allocations: one message to {SUBSCRIBERS} local subscribers = {allocations}");
    criterion.bench_function("fan out one message to 1000 local subscribers", |bench| {
        bench.iter_batched(
            || {
                drain_live_queues(&mut subscribers);
                let message = stored_message(&room, sequence);
                sequence += 1;
                message
            },
            |message| hub.deliver(&room, message),
            BatchSize::SmallInput,
        );
    });
}

fn direct_writes(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();
    let room = RoomName::parse("direct").expect("valid room");
    let (hub, mut subscribers) = runtime.block_on(hub_with_socket_subscribers(&room, SOCKETS));
    let mut sequence = 0;
    let deliver = |hub: &chat_relay::session::RoomHub, sequence: &mut u64| {
        let message = stored_message(&room, *sequence);
        *sequence += 1;
        hub.deliver(&room, message);
    };
    for _ in 0..64 {
        deliver(&hub, &mut sequence);
        drain_sockets(&mut subscribers);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(10));
    let message = stored_message(&room, sequence);
    sequence += 1;
    let ((), allocations) = allocations_of(|| hub.deliver(&room, message));
    assert!(drain_sockets(&mut subscribers).iter().all(|&bytes| bytes > 0));
    for subscriber in &subscribers {
        writer_waits(&subscriber.queues);
    }
    println!("allocations: one message written straight to {SOCKETS} idle sockets = {allocations}");
    criterion.bench_function("write one message straight to 300 idle sockets", |bench| {
        bench.iter_batched(
            || {
                drop(drain_sockets(&mut subscribers));
                // The room's fan-out rests longer than it works, as below
                // saturation: it writes directly instead of queueing.
                std::thread::sleep(std::time::Duration::from_millis(10));
            },
            |()| deliver(&hub, &mut sequence),
            // Drained before every write: a full socket would change what is measured.
            BatchSize::PerIteration,
        );
    });

    // One writer, one socket: a batch of message frames in one vectored write.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let mut client = std::net::TcpStream::connect(listener.local_addr().expect("its address")).expect("connect");
    client.set_nonblocking(true).expect("a non-blocking client");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("a non-blocking server end");
    let server = std::sync::Arc::new(tokio::net::TcpStream::from_std(server).expect("a tokio socket"));
    let mut writer = FrameWriter::new(server);
    let live = LiveMessage::from_stored(&room, &stored_message(&room, 0)).expect("a live message");
    let frame = message_frame(&live);
    let drain = |client: &mut std::net::TcpStream| {
        let mut buffer = vec![0u8; 256 * 1024];
        while matches!(std::io::Read::read(client, &mut buffer), Ok(read) if read > 0) {}
    };
    let ((), allocations) = allocations_of(|| {
        for _ in 0..BATCH {
            writer.push_framed(frame.clone());
        }
    });
    runtime.block_on(writer.flush()).expect("a loopback write");
    drain(&mut client);
    println!("allocations: {BATCH} frames queued on a writer = {allocations}");
    criterion.bench_function(
        "write 64 queued message frames to a socket (one vectored write)",
        |bench| {
            bench.iter_batched(
                || drain(&mut client),
                |()| {
                    for _ in 0..BATCH {
                        writer.push_framed(frame.clone());
                    }
                    runtime.block_on(writer.flush()).expect("a loopback write");
                },
                // Drained before every write: a full socket would change what is measured.
                BatchSize::PerIteration,
            );
        },
    );
}

criterion_group!(benches, frame_encoding, fan_out, direct_writes);
criterion_main!(benches);
