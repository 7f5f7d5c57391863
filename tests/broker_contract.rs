//! Runs the broker conformance suite (`tests/contract`) against every broker,
//! plus property tests of the memory broker against a simple model.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;
mod contract;

use std::sync::Arc;

use chat_relay::broker::{Broker, MemoryBroker, RedisBroker, RetentionSettings};
use chat_relay::tasks::NodeTasks;

#[allow(clippy::unused_async, reason = "contract_tests! awaits every broker constructor")]
async fn memory_broker(retention: RetentionSettings) -> (Arc<dyn Broker>, ()) {
    (MemoryBroker::new(retention, &NodeTasks::new()), ())
}

/// A broker on its own Redis container, with a unique key prefix.
async fn redis_broker(retention: RetentionSettings) -> (Arc<dyn Broker>, common::redis::TestRedis) {
    let redis = common::redis::TestRedis::start().await;
    let prefix = format!("contract{}", fastrand::u32(..));
    let broker = RedisBroker::connect(&redis.url(), None, &prefix, retention, false, &NodeTasks::new())
        .await
        .expect("connect to the test Redis");
    (broker, redis)
}

/// A broker on a Redis Cluster of its own (three primaries), in cluster
/// mode.
async fn cluster_broker(retention: RetentionSettings) -> (Arc<dyn Broker>, common::cluster::TestCluster) {
    let cluster = tokio::task::spawn_blocking(common::cluster::TestCluster::start_primaries_only)
        .await
        .unwrap();
    let prefix = format!("contract{}", fastrand::u32(..));
    let broker = RedisBroker::connect(&cluster.seed_url(), None, &prefix, retention, true, &NodeTasks::new())
        .await
        .expect("connect to the test cluster");
    (broker, cluster)
}

contract_tests!(memory, crate::memory_broker, 0);
// Redis trims whole stream nodes (100 entries by default) with MAXLEN ~.
contract_tests!(redis, crate::redis_broker, 110);
contract_tests!(cluster, crate::cluster_broker, 110);

mod memory_model {
    use super::*;
    use chat_relay::protocol::{MessageId, ReplayRequest};
    use chat_relay::session::{HistoryBudget, read_requested_history};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any number of publishes, any maxlen, resume from any point: the
        /// broker keeps the newest maxlen, and `recovered` is true exactly
        /// when nothing after the point was trimmed and it fits max_replay.
        #[test]
        fn trimming_and_the_recovered_rule_match_a_model(
            total in 0usize..60, maxlen in 1u64..30, max_replay in 1usize..40, resume_at in 0usize..61,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (broker, ()) = memory_broker(contract::retention(maxlen)).await;
                let room = contract::room("model");
                let mut ids = vec![MessageId::ZERO];
                for n in 0..total {
                    ids.push(contract::publish(broker.as_ref(), &room, &n.to_string(), None).await.id);
                }
                let kept = total.min(usize::try_from(maxlen).unwrap());
                let stored = broker.read_after(&room, MessageId::ZERO, 1000).await.unwrap().messages;
                prop_assert_eq!(stored.len(), kept);
                let resume_at = resume_at.min(total);
                let since = ids[resume_at];
                let decision = read_requested_history(broker.as_ref(), &room, ReplayRequest::Since(since), HistoryBudget::messages(max_replay)).await.unwrap();
                let missed = total - resume_at;
                let first_kept = total - kept; // index in ids of the message before the oldest kept
                let all_there = resume_at >= first_kept;
                let expect_recovered = all_there && missed <= max_replay;
                prop_assert_eq!(decision.recovered, Some(expect_recovered));
                let expected: Vec<MessageId> = if expect_recovered {
                    ids[resume_at + 1..].to_vec()
                } else {
                    let available = &ids[(first_kept + 1).max(resume_at + 1)..];
                    available[available.len().saturating_sub(max_replay)..].to_vec()
                };
                prop_assert_eq!(decision.messages.iter().map(|m| m.id).collect::<Vec<_>>(), expected);
                Ok(())
            })?;
        }
    }
}
