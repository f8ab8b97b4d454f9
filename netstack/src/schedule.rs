//! Which sockets a turn of the owner task lets send, so that a turn costs what its busy
//! sockets need and not a visit to every socket the stack holds.
//!
//! smoltcp's own way is a pass over the whole set: `poll_egress` asks every socket whether
//! it has something to send, and `poll_at` asks every socket for its next deadline. The
//! owner did both at every turn, so a stack holding many idle connections (an ingress's
//! pooled hop connections to many funnels) paid for each of them on every packet batch
//! and every application write (issue #8: with 64 pooled hop connections, half of them
//! idle, these visits were 1 to 2 µs of each request's CPU on each side of the mesh,
//! and more as the request rate fell).
//!
//! A socket needs egress only when:
//!
//! 1. a call on it changed it (a write, a read that opened its window, a close, a new
//!    connection, a changed option): the call [`touch`](EgressSchedule::touch)es it;
//! 2. its deadline has come (a retransmission, a delayed ACK, a keep-alive probe, a
//!    timeout, paced data): smoltcp's per-socket `poll_at_socket` (patch 11) says when,
//!    recorded with [`set_deadline`](EgressSchedule::set_deadline);
//! 3. a packet was processed by it: the stack lets that socket send right after the
//!    packet, as before.
//!
//! A socket's deadline changes only on those same events, so recording it after each of
//! them keeps the earliest deadline of the stack known without asking the others. What
//! the stack cannot pin to one socket (a packet no known connection took, shutting down)
//! gets the old full pass at once, after which every deadline is recorded afresh; a
//! listener going away touches each connection it resets. A turn falls back to the full
//! pass itself only when more sockets were touched since the last one than it remembers
//! ([`MAX_TOUCHED`]).
//!
//! The deadlines are kept in a map (the current one per socket) and a heap ordered by
//! time; a heap entry the map no longer agrees with is stale and skipped, so updating a
//! deadline is one push, with no search.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use smoltcp::iface::SocketHandle;
use smoltcp::time::Instant as SmolInstant;

/// Touched sockets remembered one by one before a turn falls back to the full pass: a
/// bound on memory should calls outpace turns by far.
const MAX_TOUCHED: usize = 1024;

/// What the next turn of the owner task lets send; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct EgressSchedule {
    /// Sockets touched since the last turn (may repeat; deduplicated when taken).
    touched: Vec<SocketHandle>,
    /// The next turn visits every socket.
    everything: bool,
    /// Each socket's current deadline, for those that have one.
    deadlines: HashMap<SocketHandle, SmolInstant>,
    /// The same deadlines, earliest first, with stale entries among them.
    timers: BinaryHeap<Reverse<(SmolInstant, SocketHandle)>>,
}

/// What a turn must visit, from [`EgressSchedule::take_turn`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Every socket (then record every socket's deadline afresh).
    Everything,
    /// The sockets put in the caller's list: touched, or their deadline has come.
    These,
}

impl EgressSchedule {
    /// Notes that a call changed the socket behind `handle`: the next turn lets it send.
    /// Call it with the stack's lock held, then wake the owner if the change should go out
    /// now (or leave it for the next turn, as a read that did not open the window much).
    pub(crate) fn touch(&mut self, handle: SocketHandle) {
        if self.everything || self.touched.last() == Some(&handle) {
            return;
        }
        if self.touched.len() >= MAX_TOUCHED {
            self.touch_all();
            return;
        }
        self.touched.push(handle);
    }

    /// Makes the next turn visit every socket (too many touched to remember one by one).
    fn touch_all(&mut self) {
        self.everything = true;
        self.touched.clear();
    }

    /// Takes what the turn at `now` must visit: [`Turn::Everything`], or the touched sockets
    /// and those whose deadline is at or before `now`, each once, put in `sockets` (which
    /// is cleared first). A socket taken for its deadline has none until the caller records
    /// the next one ([`set_deadline`](Self::set_deadline)), after letting it send.
    pub(crate) fn take_turn(&mut self, now: SmolInstant, sockets: &mut Vec<SocketHandle>) -> Turn {
        sockets.clear();
        if self.everything {
            self.everything = false;
            return Turn::Everything;
        }
        sockets.append(&mut self.touched);
        while let Some(&Reverse((at, handle))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.deadlines.get(&handle) == Some(&at) {
                self.deadlines.remove(&handle);
                sockets.push(handle);
            }
        }
        sockets.sort_unstable();
        sockets.dedup();
        Turn::These
    }

    /// Records the deadline smoltcp gives the socket behind `handle` now (`None`: it waits
    /// for a packet). Call it after every egress from the socket and every change the
    /// stack makes to it outside a call that touches it.
    pub(crate) fn set_deadline(&mut self, handle: SocketHandle, at: Option<SmolInstant>) {
        match at {
            Some(at) => {
                if self.deadlines.insert(handle, at) != Some(at) {
                    self.timers.push(Reverse((at, handle)));
                    self.compact();
                }
            }
            None => {
                self.deadlines.remove(&handle);
            }
        }
    }

    /// Forgets the socket behind `handle` (removed from the stack); its handle may be
    /// reused by a new socket, which starts touched.
    pub(crate) fn forget(&mut self, handle: SocketHandle) {
        self.deadlines.remove(&handle);
    }

    /// Forgets every deadline, before they are all recorded afresh after a full pass.
    pub(crate) fn clear_deadlines(&mut self) {
        self.deadlines.clear();
        self.timers.clear();
    }

    /// The earliest recorded deadline: when the owner must take a turn if nothing else
    /// wakes it first.
    pub(crate) fn next_deadline(&mut self) -> Option<SmolInstant> {
        while let Some(&Reverse((at, handle))) = self.timers.peek() {
            if self.deadlines.get(&handle) == Some(&at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// The deadline recorded for the socket behind `handle`.
    #[cfg(debug_assertions)]
    pub(crate) fn deadline(&self, handle: SocketHandle) -> Option<SmolInstant> {
        self.deadlines.get(&handle).copied()
    }

    /// Rebuilds the heap from the map when stale entries outnumber the live ones, so the
    /// heap stays within a few times the number of sockets.
    fn compact(&mut self) {
        if self.timers.len() > 2 * self.deadlines.len() + 64 {
            self.timers = self
                .deadlines
                .iter()
                .map(|(&handle, &at)| Reverse((at, handle)))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::iface::SocketSet;
    use smoltcp::socket::udp;

    use super::*;

    /// Real handles (smoltcp's are opaque): sockets added to a set.
    fn handles(count: usize) -> Vec<SocketHandle> {
        let mut set = SocketSet::new(Vec::new());
        (0..count)
            .map(|_| {
                set.add(udp::Socket::new(
                    udp::PacketBuffer::new(Vec::new(), Vec::new()),
                    udp::PacketBuffer::new(Vec::new(), Vec::new()),
                ))
            })
            .collect()
    }

    fn ms(at: i64) -> SmolInstant {
        SmolInstant::from_millis(at)
    }

    fn turn(schedule: &mut EgressSchedule, now: i64) -> (Turn, Vec<SocketHandle>) {
        let mut sockets = vec![];
        let turn = schedule.take_turn(ms(now), &mut sockets);
        (turn, sockets)
    }

    #[test]
    fn a_turn_visits_touched_sockets_once_and_then_forgets_them() {
        let h = handles(3);
        let mut schedule = EgressSchedule::default();
        assert_eq!(turn(&mut schedule, 0), (Turn::These, vec![]));
        for handle in [h[2], h[0], h[2], h[2], h[0]] {
            schedule.touch(handle);
        }
        assert_eq!(turn(&mut schedule, 0), (Turn::These, vec![h[0], h[2]]));
        assert_eq!(turn(&mut schedule, 0), (Turn::These, vec![]));
    }

    #[test]
    fn a_socket_is_visited_when_its_deadline_comes_and_not_before() {
        let h = handles(3);
        let mut schedule = EgressSchedule::default();
        schedule.set_deadline(h[0], Some(ms(30)));
        schedule.set_deadline(h[1], Some(ms(10)));
        schedule.set_deadline(h[2], None);
        assert_eq!(schedule.next_deadline(), Some(ms(10)));
        assert_eq!(turn(&mut schedule, 9), (Turn::These, vec![]));
        assert_eq!(turn(&mut schedule, 10), (Turn::These, vec![h[1]]));
        // Taken for its deadline, it has none until one is recorded again.
        assert_eq!(schedule.next_deadline(), Some(ms(30)));
        assert_eq!(turn(&mut schedule, 20), (Turn::These, vec![]));
        assert_eq!(turn(&mut schedule, 40), (Turn::These, vec![h[0]]));
        assert_eq!(schedule.next_deadline(), None);
    }

    #[test]
    fn a_moved_or_dropped_deadline_no_longer_counts() {
        let h = handles(2);
        let mut schedule = EgressSchedule::default();
        schedule.set_deadline(h[0], Some(ms(10)));
        schedule.set_deadline(h[0], Some(ms(50))); // later: the 10 ms entry is stale
        schedule.set_deadline(h[1], Some(ms(20)));
        schedule.set_deadline(h[1], None); // waits for a packet now
        assert_eq!(schedule.next_deadline(), Some(ms(50)));
        assert_eq!(turn(&mut schedule, 30), (Turn::These, vec![]));
        schedule.set_deadline(h[0], Some(ms(5))); // earlier
        assert_eq!(turn(&mut schedule, 5), (Turn::These, vec![h[0]]));
        schedule.set_deadline(h[1], Some(ms(60)));
        schedule.forget(h[1]);
        assert_eq!(schedule.next_deadline(), None);
        assert_eq!(turn(&mut schedule, 100), (Turn::These, vec![]));
    }

    #[test]
    fn touched_and_due_sockets_are_visited_once_in_the_same_turn() {
        let h = handles(2);
        let mut schedule = EgressSchedule::default();
        schedule.set_deadline(h[1], Some(ms(10)));
        schedule.touch(h[1]);
        schedule.touch(h[0]);
        assert_eq!(turn(&mut schedule, 10), (Turn::These, vec![h[0], h[1]]));
    }

    #[test]
    fn touch_all_makes_the_next_turn_visit_everything() {
        let h = handles(2);
        let mut schedule = EgressSchedule::default();
        schedule.touch(h[0]);
        schedule.touch_all();
        schedule.touch(h[1]);
        assert_eq!(turn(&mut schedule, 0), (Turn::Everything, vec![]));
        assert_eq!(turn(&mut schedule, 0), (Turn::These, vec![]));
    }

    #[test]
    fn too_many_touches_between_turns_fall_back_to_everything() {
        let h = handles(2);
        let mut schedule = EgressSchedule::default();
        for i in 0..=MAX_TOUCHED {
            schedule.touch(h[i % 2]);
        }
        assert_eq!(turn(&mut schedule, 0), (Turn::Everything, vec![]));
    }

    #[test]
    fn the_heap_stays_bounded_when_deadlines_move_often() {
        let h = handles(2);
        let mut schedule = EgressSchedule::default();
        for i in 0..10_000 {
            schedule.set_deadline(h[0], Some(ms(i)));
            schedule.set_deadline(h[1], Some(ms(20_000 - i)));
        }
        assert!(
            schedule.timers.len() <= 2 * 2 + 64 + 1,
            "{}",
            schedule.timers.len()
        );
        assert_eq!(schedule.next_deadline(), Some(ms(9_999)));
        assert_eq!(turn(&mut schedule, 10_001), (Turn::These, vec![h[0], h[1]]));
    }
}
