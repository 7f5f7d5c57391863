//! Fan-out makes no allocation per subscriber: handing one message to 256
//! local subscribers allocates no more than handing it to 10 (the message
//! is shared; each queue slot holds a pointer), and a room of 1,000 or
//! 3,000, whose writes are spread over the cores, only what the spreading
//! takes per message; writing it straight to 300 idle sockets allocates no
//! more than that either (the frame is built once and the same bytes go to
//! every socket). A counting allocator wraps the
//! system one for this test binary.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

#[path = "support/fanout.rs"]
mod fanout;

use chat_relay::broker::LiveSink;
use chat_relay::protocol::RoomName;
use fanout::{
    allocations_of, drain_live_queues, drain_sockets, hub_with_live_subscribers, hub_with_socket_subscribers,
    stored_message, writer_waits,
};

/// Most allocations made by delivering one message to `count` live
/// subscribers, over 20 messages after warming their queues up; also
/// checks that every subscriber got every message.
async fn allocations_for(count: usize) -> u64 {
    let room = RoomName::parse("fanout").unwrap();
    let (hub, mut subscribers) = hub_with_live_subscribers(&room, count).await;
    let mut sequence = 0;
    for _ in 0..100 {
        hub.deliver(&room, stored_message(&room, sequence));
        sequence += 1;
        assert_eq!(drain_live_queues(&mut subscribers), count);
    }
    let mut most = 0;
    for _ in 0..20 {
        let message = stored_message(&room, sequence);
        sequence += 1;
        let ((), allocations) = allocations_of(|| hub.deliver(&room, message));
        most = most.max(allocations);
        assert_eq!(
            drain_live_queues(&mut subscribers),
            count,
            "every subscriber got the message"
        );
    }
    most
}

/// What spreading a large room's writes over the cores (rayon) allocates
/// per fan-out, whatever the room's size: the list of connections, and the
/// pool's own job bookkeeping.
const SPREAD_ALLOCATIONS: u64 = 12;

#[tokio::test(flavor = "current_thread")]
async fn fanning_out_to_1000_subscribers_allocates_no_more_than_to_10() {
    let few = allocations_for(10).await;
    // Up to 256 subscribers the fan-out runs on one core.
    let one_core = allocations_for(256).await;
    assert!(
        one_core <= few + 2,
        "one message to 256 subscribers made {one_core} allocations, to 10 made {few}: something allocates per subscriber"
    );
    let many = allocations_for(1000).await;
    let more = allocations_for(3000).await;
    assert!(
        many <= few + SPREAD_ALLOCATIONS && more <= many + 4,
        "one message to 10, 1000 and 3000 subscribers made {few}, {many} and {more} allocations: something allocates per subscriber"
    );
}

/// A text frame's length: a 2-byte header, 4 from 126 bytes of payload on.
fn frame_bytes(message: &chat_relay::broker::StoredMessage) -> usize {
    message.frame.len() + if message.frame.len() < 126 { 2 } else { 4 }
}

/// Most allocations made by writing one message straight to `count` idle
/// sockets, over 20 messages after warming up; checks that every client
/// received every frame whole and that nothing was queued.
async fn direct_allocations_for(count: usize) -> u64 {
    let room = RoomName::parse("direct").unwrap();
    let (hub, mut subscribers) = hub_with_socket_subscribers(&room, count).await;
    let mut most = 0;
    for sequence in 0..40 {
        let message = stored_message(&room, sequence);
        let frame_bytes = frame_bytes(&message);
        let started = std::time::Instant::now();
        let ((), allocations) = allocations_of(|| hub.deliver(&room, message));
        // The room's fan-out rests well longer than its sends kept the
        // cores busy, so the next message is written directly too (see
        // the next test).
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        std::thread::sleep(started.elapsed() * (u32::try_from(cores).unwrap() + 1));
        if sequence >= 20 {
            most = most.max(allocations);
        }
        for (index, received) in drain_sockets(&mut subscribers).into_iter().enumerate() {
            assert_eq!(
                received, frame_bytes,
                "subscriber {index} got message {sequence} whole, once"
            );
            // Written directly, not queued (and the writer waits again).
            writer_waits(&subscribers[index].queues);
        }
    }
    most
}

#[tokio::test(flavor = "current_thread")]
async fn writing_straight_to_300_idle_sockets_allocates_no_more_than_to_10() {
    let few = direct_allocations_for(10).await;
    let many = direct_allocations_for(300).await;
    assert!(
        many <= few + SPREAD_ALLOCATIONS,
        "one message written to 300 sockets made {many} allocations, to 10 made {few}: something allocates per socket"
    );
}

/// Messages that come faster than the room's fan-out rests are queued for
/// the connections' writers instead (which batch them): every subscriber
/// still gets every message once and in order, the first ones written
/// directly, the rest from its queue.
#[tokio::test(flavor = "current_thread")]
async fn a_fan_out_that_falls_behind_queues_for_the_writers_and_keeps_the_order() {
    const MESSAGES: u64 = 20;
    let room = RoomName::parse("burst").unwrap();
    let (hub, mut subscribers) = hub_with_socket_subscribers(&room, 300).await;
    let messages: Vec<_> = (0..MESSAGES).map(|sequence| stored_message(&room, sequence)).collect();
    let frame_bytes = frame_bytes(&messages[0]);
    // Back to back: no rest between fan-outs.
    for message in &messages {
        hub.deliver(&room, message.clone());
    }
    let received = drain_sockets(&mut subscribers);
    let mut queued_in_all = 0;
    for (subscriber, bytes) in subscribers.iter().zip(received) {
        assert_eq!(bytes % frame_bytes, 0, "whole frames only");
        let direct = (bytes / frame_bytes) as u64;
        assert!(direct >= 1, "the first message went straight to the socket");
        let mut next = direct;
        while let Some(item) = subscriber.queues.try_next() {
            let chat_relay::session::Outbound::Message(message) = item else {
                panic!("only messages are queued here");
            };
            assert_eq!(
                message.id,
                messages[usize::try_from(next).unwrap()].id,
                "queued in order, after the direct ones"
            );
            next += 1;
        }
        assert_eq!(next, MESSAGES, "every message once");
        queued_in_all += MESSAGES - direct;
    }
    assert!(queued_in_all > 0, "a burst is queued, not written message by message");
}
