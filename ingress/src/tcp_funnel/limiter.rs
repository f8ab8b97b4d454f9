//! Concurrent connections per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open connections per client IP and refuses a new one over the bound.
///
/// One limiter is shared by the TLS port and every TCP funnel, so the bound is per client
/// across the whole edge. Call [`ClientLimiter::try_acquire`] right after `accept`; keep
/// the returned [`ClientSlot`] for as long as the connection lives (dropping it frees the
/// slot).
#[derive(Debug)]
pub struct ClientLimiter {
    max_per_client: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientLimiter {
    /// A limiter allowing `max_per_client` concurrent connections per client IP (`None`:
    /// unbounded; counted all the same).
    pub fn new(max_per_client: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max_per_client,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for a new connection from `client`, or `None` if the client already
    /// has the maximum open (the caller closes the connection and audits the refusal).
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if self.max_per_client.is_some_and(|max| *count >= max) {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            limiter: Arc::clone(self),
            client,
        })
    }

    /// How many connections `client` has open now.
    pub fn open_for(&self, client: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client).copied().unwrap_or(0)
    }
}

/// One open connection's place in the [`ClientLimiter`]; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_one_over_the_bound_and_frees_on_drop() {
        let limiter = ClientLimiter::new(Some(2));
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        let first = limiter.try_acquire(a).unwrap();
        let _second = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none());
        let _other_client = limiter.try_acquire(b).unwrap();
        drop(first);
        assert_eq!(limiter.open_for(a), 1);
        assert!(limiter.try_acquire(a).is_some());
    }

    #[test]
    fn unbounded_still_counts() {
        let limiter = ClientLimiter::new(None);
        let a: IpAddr = "::1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| limiter.try_acquire(a).unwrap()).collect();
        assert_eq!(limiter.open_for(a), 100);
        drop(slots);
        assert_eq!(limiter.open_for(a), 0);
    }
}
