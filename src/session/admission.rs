//! Connection admission: a cap per node (past it new connections are
//! refused so a load balancer sends them elsewhere) and a cap per client
//! (token subject, or address without authentication), so that one client
//! cannot take the node's capacity. A granted [`ConnectionSlot`] gives its
//! place back when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is at `RELAY_MAX_CONNECTIONS`.
    NodeFull,
    /// This client is at `RELAY_MAX_CONNECTIONS_PER_CLIENT`.
    ClientFull,
}

/// The counters; one per node.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<String, usize>>,
}

/// A connection's place; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    client: Option<String>,
}

impl Admission {
    /// Caps of `max_total` connections, and `max_per_client` per client
    /// (0: no per-client cap).
    #[must_use]
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a client's new connection.
    ///
    /// # Errors
    /// [`Refusal`] when a cap is reached.
    pub fn admit(self: &Arc<Self>, client: &str) -> Result<ConnectionSlot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::NodeFull);
        }
        let mut slot = ConnectionSlot {
            admission: self.clone(),
            client: None,
        };
        if self.max_per_client > 0 {
            let mut per_client = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_client.entry(client.to_owned()).or_insert(0);
            if *count >= self.max_per_client {
                return Err(Refusal::ClientFull);
            }
            *count += 1;
            slot.client = Some(client.to_owned());
        }
        Ok(slot)
    }
}

impl ConnectionSlot {
    /// Moves this place to another client (a STOMP connection, admitted by
    /// its address at the upgrade, learns its subject at CONNECT). The
    /// node's count is unchanged.
    ///
    /// # Errors
    /// [`Refusal::ClientFull`] when the new client is at its cap; the place
    /// stays where it was.
    pub fn rekey(&mut self, client: &str) -> Result<(), Refusal> {
        let admission = self.admission.clone();
        if admission.max_per_client == 0 || self.client.as_deref() == Some(client) {
            return Ok(());
        }
        let mut per_client = admission.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_client.entry(client.to_owned()).or_insert(0);
        if *count >= admission.max_per_client {
            return Err(Refusal::ClientFull);
        }
        *count += 1;
        if let Some(old) = self.client.replace(client.to_owned())
            && let Some(count) = per_client.get_mut(&old)
        {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&old);
            }
        }
        Ok(())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(client) = &self.client {
            let mut per_client = self.admission.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_client.get_mut(client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_apply_and_places_come_back() {
        let admission = Admission::new(3, 2);
        let a1 = admission.admit("a").unwrap();
        let _a2 = admission.admit("a").unwrap();
        assert_eq!(admission.admit("a").unwrap_err(), Refusal::ClientFull);
        let _b1 = admission.admit("b").unwrap();
        assert_eq!(admission.admit("c").unwrap_err(), Refusal::NodeFull);
        drop(a1);
        assert!(admission.admit("a").is_ok());
        assert!(admission.per_client.lock().unwrap().values().all(|count| *count <= 2));
    }

    #[test]
    fn a_place_moves_to_another_client_without_changing_the_total() {
        let admission = Admission::new(3, 1);
        let mut slot = admission.admit("ip:1").unwrap();
        let _taken = admission.admit("sub:b").unwrap();
        assert_eq!(slot.rekey("sub:b").unwrap_err(), Refusal::ClientFull);
        slot.rekey("sub:a").unwrap();
        assert!(admission.admit("ip:1").is_ok(), "the address's place was given back");
        assert_eq!(admission.admit("sub:a").unwrap_err(), Refusal::ClientFull);
        drop(slot);
        assert!(admission.admit("sub:a").is_ok());
        assert_eq!(admission.total.load(Ordering::Acquire), 1, "only `_taken` is left");
    }
}
