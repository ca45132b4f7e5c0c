//! Fair turns: when the rate limit has fewer turns than the callers want,
//! the calls wait in their callers' flows, and the turns go round robin
//! among the flows with calls waiting, a named caller taking as many turns
//! in a round as its weight (deficit round robin). A caller within its
//! share never waits behind another's excess: its calls are served in the
//! next round, whatever the length of the other queues.
//!
//! A flow whose queue was empty goes first (as FQ-CoDel serves new flows):
//! a caller with one call at a time waits for the next turn only.
//!
//! The queues are bounded whatever the number of identities: one per
//! named caller, one for `anonymous`, one per other identity with calls
//! waiting, up to [`IDENTITY_QUEUES`] of them; past that, the others share
//! [`OVERFLOW_QUEUES`] queues by a keyed hash of the identity (as
//! Kubernetes' API Priority and Fairness hashes its flows into queues).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::base::caller::Flow;

/// Most identities not named with a queue of their own at once.
pub(crate) const IDENTITY_QUEUES: usize = 256;

/// The queues the identities past [`IDENTITY_QUEUES`] share.
const OVERFLOW_QUEUES: u64 = 16;

/// A flow's queue, as the round robin knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Queue {
    Named(u16),
    Anonymous,
    Identity(u64),
    Overflow(u64),
}

/// The calls waiting for turns, by flow.
#[derive(Debug, Default)]
pub(crate) struct FairQueue {
    queues: HashMap<Queue, (u32, VecDeque<oneshot::Sender<()>>)>,
    /// The flows with calls waiting, in round-robin order; the front one's
    /// turn now.
    ring: VecDeque<Queue>,
    /// Turns left to the front flow in this round.
    credit: u32,
    /// Whether a dispatcher is giving the turns out.
    pub(crate) dispatching: bool,
    /// When the dispatcher's next turn comes, if it has one.
    pub(crate) next_turn: Option<Instant>,
    /// How many [`Queue::Identity`] queues there are.
    identities: usize,
}

impl FairQueue {
    /// Whether any call waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// How long a new call of `flow` would wait for its turn, at `interval`
    /// between turns, the next one `next` from now: at once for a flow
    /// with none waiting; else its queue's calls ahead of it, in rounds of
    /// its weight, each round a turn for every flow waiting.
    pub(crate) fn estimate(&mut self, flow: Flow, next: Duration, interval: Duration) -> Duration {
        let queue = self.queue_of(flow);
        self.prune(queue);
        let ahead = self
            .queues
            .get(&queue)
            .map_or(0, |(_, waiting)| waiting.len());
        if ahead == 0 {
            return next;
        }
        let rounds = (ahead + 1).div_ceil(flow.weight().max(1) as usize);
        let turns = (rounds * self.ring.len()).saturating_sub(1);
        next + interval.saturating_mul(u32::try_from(turns).unwrap_or(u32::MAX))
    }

    /// The queue a new call of `flow` waits in.
    fn queue_of(&self, flow: Flow) -> Queue {
        match flow {
            Flow::Named { index, .. } => Queue::Named(index),
            Flow::Anonymous => Queue::Anonymous,
            Flow::Other(hash) => {
                let own = Queue::Identity(hash);
                if self.identities < IDENTITY_QUEUES || self.queues.contains_key(&own) {
                    own
                } else {
                    Queue::Overflow(hash % OVERFLOW_QUEUES)
                }
            }
        }
    }

    /// Drops the calls of `queue` whose callers gave up (at their wait's
    /// bound), and the queue with them if none is left: a caller's next
    /// call is then a new flow's, not one behind its own dead calls.
    fn prune(&mut self, queue: Queue) {
        let Some((_, waiting)) = self.queues.get_mut(&queue) else {
            return;
        };
        waiting.retain(|tx| !tx.is_closed());
        if !waiting.is_empty() {
            return;
        }
        self.queues.remove(&queue);
        if let Queue::Identity(_) = queue {
            self.identities -= 1;
        }
        if let Some(at) = self.ring.iter().position(|&q| q == queue) {
            self.ring.remove(at);
            if at == 0 {
                self.credit = self.front_weight().unwrap_or(0);
            }
        }
    }

    /// A call of `flow` waits; the receiver hears when its turn comes.
    pub(crate) fn enqueue(&mut self, flow: Flow) -> oneshot::Receiver<()> {
        let queue = self.queue_of(flow);
        self.prune(queue);
        let (tx, rx) = oneshot::channel();
        let (_, waiting) = self.queues.entry(queue).or_insert_with(|| {
            if let Queue::Identity(_) = queue {
                self.identities += 1;
            }
            (flow.weight(), VecDeque::new())
        });
        waiting.push_back(tx);
        if waiting.len() == 1 {
            // A new flow goes first, with a round of its own.
            self.ring.push_front(queue);
            self.credit = flow.weight();
        }
        rx
    }

    /// Gives one turn to the call whose turn it is; `false` if none waits
    /// any more (their callers gave up).
    pub(crate) fn grant(&mut self) -> bool {
        while let Some(&queue) = self.ring.front() {
            let Some((weight, waiting)) = self.queues.get_mut(&queue) else {
                self.advance();
                continue;
            };
            let weight = *weight;
            let mut granted = false;
            while let Some(tx) = waiting.pop_front() {
                if tx.send(()).is_ok() {
                    granted = true;
                    break;
                }
            }
            if waiting.is_empty() {
                self.queues.remove(&queue);
                if let Queue::Identity(_) = queue {
                    self.identities -= 1;
                }
                self.advance();
            } else if granted {
                self.credit = self.credit.saturating_sub(1);
                if self.credit == 0 {
                    self.ring.rotate_left(1);
                    self.credit = self.front_weight().unwrap_or(weight);
                }
            }
            if granted {
                return true;
            }
        }
        false
    }

    /// The front flow is done for now (its queue empty): the next one's
    /// round starts.
    fn advance(&mut self) {
        self.ring.pop_front();
        self.credit = self.front_weight().unwrap_or(0);
    }

    fn front_weight(&self) -> Option<u32> {
        let front = self.ring.front()?;
        self.queues.get(front).map(|(weight, _)| *weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(index: u16, weight: u32) -> Flow {
        Flow::Named { index, weight }
    }

    /// Grants `turns` and says whose they were, by the order of `receivers`.
    fn served(
        queue: &mut FairQueue,
        receivers: &mut [(char, Vec<oneshot::Receiver<()>>)],
        turns: usize,
    ) -> String {
        let mut order = String::new();
        for _ in 0..turns {
            assert!(queue.grant());
            for (name, rxs) in receivers.iter_mut() {
                if let Some(at) = rxs.iter_mut().position(|rx| rx.try_recv().is_ok()) {
                    rxs.remove(at);
                    order.push(*name);
                }
            }
        }
        order
    }

    #[test]
    fn turns_go_round_robin_by_weight_and_a_new_flow_goes_first() {
        let mut queue = FairQueue::default();
        let mut heavy = Vec::new();
        for _ in 0..10 {
            heavy.push(queue.enqueue(named(1, 3)));
        }
        let mut flood = Vec::new();
        for _ in 0..100 {
            flood.push(queue.enqueue(named(0, 1)));
        }
        let mut receivers = [('f', flood), ('h', heavy), ('q', Vec::new())];
        assert_eq!(served(&mut queue, &mut receivers, 5), "fhhhf");
        receivers[2].1.push(queue.enqueue(Flow::Anonymous));
        assert_eq!(served(&mut queue, &mut receivers, 6), "qhhhfh");
    }

    #[test]
    fn a_callers_calls_that_gave_up_are_not_ahead_of_its_next() {
        let mut queue = FairQueue::default();
        let _flood = queue.enqueue(Flow::Other(1));
        let _more = queue.enqueue(Flow::Other(1));
        let gone = queue.enqueue(Flow::Other(2));
        drop(gone);
        let ms = Duration::from_millis;
        // Its dead call is dropped: its next call is a new flow's, first.
        assert_eq!(queue.estimate(Flow::Other(2), ms(7), ms(100)), ms(7));
        assert_eq!(queue.ring.len(), 1);
        let mut next = queue.enqueue(Flow::Other(2));
        assert!(queue.grant());
        assert!(next.try_recv().is_ok());
    }

    #[test]
    fn a_caller_that_gave_up_is_skipped_and_an_empty_queue_grants_nothing() {
        let mut queue = FairQueue::default();
        let gone = queue.enqueue(Flow::Anonymous);
        let mut kept = queue.enqueue(Flow::Anonymous);
        drop(gone);
        assert!(queue.grant());
        assert!(kept.try_recv().is_ok());
        assert!(queue.is_empty());
        assert!(!queue.grant());
    }

    #[test]
    fn identities_have_queues_of_their_own_up_to_a_bound() {
        let mut queue = FairQueue::default();
        let mut held = Vec::new();
        for id in 0..(IDENTITY_QUEUES as u64 + 100) {
            held.push(queue.enqueue(Flow::Other(id)));
            held.push(queue.enqueue(Flow::Other(id)));
        }
        assert_eq!(queue.identities, IDENTITY_QUEUES);
        assert_eq!(queue.ring.len(), IDENTITY_QUEUES + OVERFLOW_QUEUES as usize);
        let ms = Duration::from_millis;
        // A flow with none waiting: the next turn is its.
        assert_eq!(queue.estimate(Flow::Anonymous, ms(5), ms(50)), ms(5));
        // One with a call waiting: a round of every flow first.
        let flows = queue.ring.len() as u32;
        assert_eq!(
            queue.estimate(Flow::Other(0), ms(0), ms(1)),
            ms(u64::from(3 * flows - 1))
        );
        while queue.grant() {}
        assert_eq!((queue.identities, queue.ring.len()), (0, 0));
    }
}
