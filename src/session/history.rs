//! Reading a room's history within a budget of messages and bytes: the
//! one paged range reader behind a resume's replay, a refill and the
//! history endpoint.
//!
//! A range is read in chunks, sized from what the chunks before it
//! weighed, so that what one read holds stays near its byte budget however
//! large the room's messages are (a page of a thousand 60 KB messages is
//! never read whole). Every page holds at least one message when the range
//! has one, whatever it weighs.

use std::sync::Arc;

use crate::broker::{Broker, BrokerError, StoredMessage};
use crate::protocol::{MessageId, RoomName};

/// Messages in the first chunk of a read: small enough that 32 of the
/// largest messages (64 KiB by default) stay near 2 MiB; later chunks are
/// sized from the average so far.
const FIRST_CHUNK: usize = 32;

/// The memory a node lets history reads hold at once (replays and pages
/// between their read and their hand-over to the socket), counted in KiB.
/// Each read reserves a whole budget before it reads (so that the node
/// never holds more than the sum), keeps what its messages weigh and gives
/// the rest back at once; it gives all of it back once its messages reached
/// the connection's writer. Past the sum, a read waits its turn for a
/// while, then is refused: a node full of readers that do not read (each
/// holds its replay until the write stall drops it) slows others' large
/// replays rather than growing.
#[derive(Debug, Clone)]
pub struct ReplayMemory {
    permits: Arc<tokio::sync::Semaphore>,
    per_read_kib: u32,
}

/// What a read holds of [`ReplayMemory`]; dropping it gives it back.
#[derive(Debug)]
pub struct ReplayReservation(tokio::sync::OwnedSemaphorePermit);

/// [`ReplayMemory`] had no room within the wait.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node holds as much history in flight as it may; read again shortly")]
pub struct ReplayMemoryBusy;

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl ReplayMemory {
    /// `total` bytes in all, reserved `per_read` bytes at a time (at least
    /// one read's worth).
    #[must_use]
    pub fn new(total: usize, per_read: usize) -> Self {
        let per_read_kib = kib(per_read).max(1);
        let total_kib = kib(total).max(per_read_kib);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            per_read_kib,
        }
    }

    /// Reserves a read's budget, waiting at most `wait`.
    ///
    /// # Errors
    /// [`ReplayMemoryBusy`] when no room came in time.
    pub async fn reserve(&self, wait: std::time::Duration) -> Result<ReplayReservation, ReplayMemoryBusy> {
        match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(self.per_read_kib)).await {
            Ok(Ok(permit)) => Ok(ReplayReservation(permit)),
            _ => Err(ReplayMemoryBusy),
        }
    }

    /// What is free now, in KiB (for tests and metrics).
    #[must_use]
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}

impl ReplayReservation {
    /// Keeps what `messages` weigh and gives the rest back.
    pub fn keep_for(&mut self, messages: &[Arc<StoredMessage>]) {
        let bytes: usize = messages.iter().map(|message| message.frame.len()).sum();
        let keep = kib(bytes) as usize;
        let surplus = self.0.num_permits().saturating_sub(keep);
        if surplus > 0 {
            drop(self.0.split(surplus));
        }
    }
}

/// How much one read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBudget {
    /// Most messages.
    pub messages: usize,
    /// Most bytes of frames (the first message counts whatever it weighs).
    pub bytes: usize,
}

impl HistoryBudget {
    /// A budget of `messages`, bytes unbounded (for callers that bound
    /// bytes otherwise, and tests).
    #[must_use]
    pub fn messages(messages: usize) -> Self {
        Self {
            messages,
            bytes: usize::MAX,
        }
    }
}

/// Messages read forwards or backwards, oldest first.
#[derive(Debug, Clone, Default)]
pub struct BoundedPage {
    /// The messages, oldest first.
    pub messages: Vec<Arc<StoredMessage>>,
    /// The newest id the history held at the first read; `None` for a
    /// room without history.
    pub last_id: Option<MessageId>,
    /// Every message of the range was read (its end, or its floor going
    /// backwards, was reached within the budget).
    pub whole: bool,
    /// The page stopped at its byte budget, before its count.
    pub cut_by_bytes: bool,
}

impl BoundedPage {
    fn bytes(&self) -> usize {
        self.messages.iter().map(|message| message.frame.len()).sum()
    }
}

/// How many to ask for next: what is left of the count, and of the bytes
/// at the average size read so far.
fn next_chunk(read: usize, read_bytes: usize, budget: HistoryBudget) -> usize {
    let left = budget.messages.saturating_sub(read);
    if read == 0 {
        return left.min(FIRST_CHUNK);
    }
    let average = (read_bytes / read).max(1);
    let fits = budget.bytes.saturating_sub(read_bytes) / average;
    left.min(fits.max(1))
}

/// Up to the budget of messages strictly after `after`, oldest first.
///
/// # Errors
/// [`BrokerError`] when history cannot be read.
pub async fn read_forward(
    broker: &dyn Broker,
    room: &RoomName,
    after: MessageId,
    budget: HistoryBudget,
) -> Result<BoundedPage, BrokerError> {
    let mut page = BoundedPage::default();
    let mut bytes = 0;
    let mut cursor = after;
    let mut first = true;
    while page.messages.len() < budget.messages {
        let asked = next_chunk(page.messages.len(), bytes, budget);
        let chunk = broker.read_after(room, cursor, asked).await?;
        if first {
            page.last_id = chunk.last_id;
            first = false;
        }
        let short = chunk.messages.len() < asked;
        for message in chunk.messages {
            if !page.messages.is_empty() && bytes + message.frame.len() > budget.bytes {
                page.cut_by_bytes = true;
                return Ok(page);
            }
            bytes += message.frame.len();
            cursor = message.id;
            page.messages.push(message);
        }
        if short {
            page.whole = true;
            return Ok(page);
        }
    }
    Ok(page)
}

/// The newest messages strictly before `before` (the end of the history
/// when `None`) and strictly after `floor` (when given), within the budget,
/// oldest first. `whole` says the floor (or the history's start) was
/// reached.
///
/// # Errors
/// [`BrokerError`] when history cannot be read.
pub async fn read_backward(
    broker: &dyn Broker,
    room: &RoomName,
    before: Option<MessageId>,
    floor: Option<MessageId>,
    budget: HistoryBudget,
) -> Result<BoundedPage, BrokerError> {
    let mut newest_first: Vec<Arc<StoredMessage>> = Vec::new();
    let mut bytes = 0;
    let mut cursor = before;
    let mut page = BoundedPage::default();
    let mut first = true;
    'chunks: while newest_first.len() < budget.messages {
        let asked = next_chunk(newest_first.len(), bytes, budget);
        let chunk = broker.read_before(room, cursor, asked).await?;
        if first {
            page.last_id = chunk.last_id;
            first = false;
        }
        let short = chunk.messages.len() < asked;
        for message in chunk.messages.into_iter().rev() {
            if floor.is_some_and(|floor| message.id <= floor) {
                page.whole = true;
                break 'chunks;
            }
            if !newest_first.is_empty() && bytes + message.frame.len() > budget.bytes {
                page.cut_by_bytes = true;
                break 'chunks;
            }
            bytes += message.frame.len();
            cursor = Some(message.id);
            newest_first.push(message);
        }
        if short {
            page.whole = true;
            break;
        }
    }
    newest_first.reverse();
    page.messages = newest_first;
    debug_assert!(page.bytes() <= budget.bytes || page.messages.len() == 1);
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{MemoryBroker, PublishRequest, RetentionSettings};
    use crate::protocol::MessageFrameTail;
    use crate::tasks::NodeTasks;

    fn broker() -> Arc<dyn Broker> {
        MemoryBroker::new(
            RetentionSettings {
                history_maxlen: 100_000,
                history_ttl: std::time::Duration::from_secs(600),
                idempotency_ttl: std::time::Duration::from_secs(600),
                replicas_acked: 0,
            },
            &NodeTasks::new(),
        )
    }

    async fn publish(broker: &dyn Broker, room: &RoomName, body_bytes: usize) -> MessageId {
        let body = format!("\"{}\"", "x".repeat(body_bytes));
        let tail = MessageFrameTail::new(None, 1, None, &body);
        broker
            .publish(PublishRequest {
                room: room.clone(),
                idempotency_key: None,
                tail,
                connection: None,
            })
            .await
            .unwrap()
            .id
    }

    fn ids(page: &BoundedPage) -> Vec<MessageId> {
        page.messages.iter().map(|message| message.id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn replay_memory_is_reserved_whole_kept_as_weighed_and_waited_for() {
        let memory = ReplayMemory::new(8 << 20, 4 << 20);
        let mut first = memory.reserve(std::time::Duration::from_secs(1)).await.unwrap();
        let _second = memory.reserve(std::time::Duration::from_secs(1)).await.unwrap();
        assert_eq!(memory.available_kib(), 0);
        assert!(memory.reserve(std::time::Duration::from_secs(1)).await.is_err(), "full");
        let message = Arc::new(StoredMessage {
            id: MessageId::new(1, 0),
            prev: MessageId::ZERO,
            frame: bytes::Bytes::from(vec![b'x'; 1500]),
            trace: None,
        });
        first.keep_for(&[message]);
        assert_eq!(memory.available_kib(), 4 * 1024 - 2, "1,500 bytes keep 2 KiB");
        drop(first);
        assert_eq!(memory.available_kib(), 4 * 1024);
    }

    #[tokio::test]
    async fn forward_reads_stop_at_the_byte_budget_and_always_hold_one_message() {
        let broker = broker();
        let room = RoomName::parse("big").unwrap();
        let mut published = Vec::new();
        for _ in 0..100 {
            published.push(publish(broker.as_ref(), &room, 10_000).await);
        }
        let budget = HistoryBudget {
            messages: 1000,
            bytes: 50_000,
        };
        let page = read_forward(broker.as_ref(), &room, MessageId::ZERO, budget)
            .await
            .unwrap();
        assert_eq!(ids(&page), published[..4], "four of about 10 KB fit in 50 KB");
        assert!(page.cut_by_bytes && !page.whole);
        let tiny = HistoryBudget {
            messages: 1000,
            bytes: 1,
        };
        let page = read_forward(broker.as_ref(), &room, published[9], tiny).await.unwrap();
        assert_eq!(ids(&page), [published[10]], "one message, whatever it weighs");
        let rest = read_forward(
            broker.as_ref(),
            &room,
            published[49],
            HistoryBudget {
                messages: 1000,
                bytes: 10_000_000,
            },
        )
        .await
        .unwrap();
        assert_eq!(ids(&rest), published[50..], "chunk after chunk to the end");
        assert!(rest.whole && !rest.cut_by_bytes);
        assert_eq!(rest.last_id, published.last().copied());
    }

    #[tokio::test]
    async fn a_forward_read_to_the_end_within_the_budget_is_whole() {
        let broker = broker();
        let room = RoomName::parse("small").unwrap();
        let mut published = Vec::new();
        for _ in 0..300 {
            published.push(publish(broker.as_ref(), &room, 30).await);
        }
        let budget = HistoryBudget {
            messages: 1001,
            bytes: 4 << 20,
        };
        let page = read_forward(broker.as_ref(), &room, published[195], budget)
            .await
            .unwrap();
        assert_eq!(ids(&page), published[196..]);
        assert!(page.whole && !page.cut_by_bytes);
    }

    #[tokio::test]
    async fn backward_reads_keep_the_newest_and_stop_at_the_floor() {
        let broker = broker();
        let room = RoomName::parse("r").unwrap();
        let mut published = Vec::new();
        for _ in 0..300 {
            published.push(publish(broker.as_ref(), &room, 100).await);
        }
        let budget = HistoryBudget {
            messages: 1000,
            bytes: 10_000_000,
        };
        let page = read_backward(broker.as_ref(), &room, None, Some(published[99]), budget)
            .await
            .unwrap();
        assert_eq!(ids(&page), published[100..], "everything after the floor, oldest first");
        assert!(page.whole);
        let count = HistoryBudget {
            messages: 50,
            bytes: 10_000_000,
        };
        let page = read_backward(broker.as_ref(), &room, Some(published[200]), None, count)
            .await
            .unwrap();
        assert_eq!(ids(&page), published[150..200]);
        assert!(!page.whole && !page.cut_by_bytes);
        let all = read_backward(broker.as_ref(), &room, None, None, budget).await.unwrap();
        assert_eq!(ids(&all), published);
        let newest_seven: usize = all.messages[293..].iter().map(|message| message.frame.len()).sum();
        let bytes = HistoryBudget {
            messages: 1000,
            bytes: newest_seven,
        };
        let page = read_backward(broker.as_ref(), &room, None, None, bytes).await.unwrap();
        assert_eq!(ids(&page), published[293..]);
        assert!(page.cut_by_bytes);
        let empty = read_backward(broker.as_ref(), &RoomName::parse("none").unwrap(), None, None, budget)
            .await
            .unwrap();
        assert!(empty.messages.is_empty() && empty.whole && empty.last_id.is_none());
    }
}
