//! The per-message hot path: encoding a message frame (and its ack), and
//! fanning one message out to 1,000 local subscribers, with the heap
//! allocations each step makes (a counting allocator wraps the system one).
//!
//!   cargo bench --bench `hot_path`
//!
//! The allocation counts are printed before the timings; the test
//! `tests/fanout_allocations.rs` holds the fan-out to none per subscriber.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

#[path = "../tests/support/fanout.rs"]
mod fanout;

use std::hint::black_box;

use chat_relay::broker::LiveSink;
use chat_relay::protocol::{MessageFrameTail, MessageId, RoomName, message_frame, server_frame};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fanout::{allocations_of, drain_live_queues, hub_with_live_subscribers, stored_message};

const SUBSCRIBERS: usize = 1000;

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

criterion_group!(benches, frame_encoding, fan_out);
criterion_main!(benches);
