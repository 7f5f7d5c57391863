//! Fan-out makes no allocation per subscriber: handing one message to
//! 1,000 local subscribers allocates no more than handing it to 10 (the
//! message is shared; each queue slot holds a pointer). A counting
//! allocator wraps the system one for this test binary.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

#[path = "support/fanout.rs"]
mod fanout;

use chat_relay::broker::LiveSink;
use chat_relay::protocol::RoomName;
use fanout::{allocations_of, drain_live_queues, hub_with_live_subscribers, stored_message};

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

#[tokio::test(flavor = "current_thread")]
async fn fanning_out_to_1000_subscribers_allocates_no_more_than_to_10() {
    let few = allocations_for(10).await;
    let many = allocations_for(1000).await;
    assert!(
        many <= few + 2,
        "one message to 1000 subscribers made {many} allocations, to 10 made {few}: something allocates per subscriber"
    );
    assert!(many < 16, "{many} allocations for one message");
}
