//! The calls to Cognito in flight (`--max-concurrent-requests`), shared
//! fairly among the callers: while slots are free, any caller takes one;
//! once all are taken, a caller within its share (the slots divided among
//! the callers holding them and it, by weight) still gets one, and the
//! caller holding the most slots beyond its share is shed first: its newest
//! call ends `OVERLOADED` and gives its slot up. A caller at or over its
//! share is shed itself, at once, as before.
//!
//! The state is bounded by the slots: a caller is known only while it
//! holds one.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::sync::oneshot;

use crate::{
    base::{
        caller::{Caller, Flow},
        expiring::lock,
    },
    error::Error,
};

/// The slots and who holds them.
#[derive(Debug)]
pub(crate) struct Slots {
    capacity: usize,
    state: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    used: usize,
    /// By caller: its weight, and its calls (oldest first).
    callers: HashMap<Flow, (u32, Vec<HeldCall>)>,
    serial: u64,
}

/// One call's slot, as the slots know it: its serial, and the handle that
/// sheds it.
type HeldCall = (u64, oneshot::Sender<()>);

/// A slot held; dropped, it is given back.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Arc<Mutex<Held>>,
    flow: Flow,
    serial: u64,
    /// Fires when the slot is taken back for a caller within its share.
    pub(crate) shed: oneshot::Receiver<()>,
}

impl Slot {
    /// `call`'s outcome, or `OVERLOADED` if the slot is taken back first.
    /// The call is held in place, not copied into a state machine of its
    /// own: it is the largest future of the path (bench/PROFILE.md).
    pub(crate) fn hold<F, T>(self, call: F) -> Holding<F>
    where
        F: Future<Output = Result<T, Error>>,
    {
        Holding {
            call,
            slot: self,
            unheard: true,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call held under its slot (see [`Slot::hold`]).
    pub(crate) struct Holding<F> {
        #[pin]
        call: F,
        slot: Slot,
        // Until the shedding handle answers: a oneshot is not polled again.
        unheard: bool,
    }
}

impl<F, T> Future for Holding<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.call.poll(cx) {
            return Poll::Ready(outcome);
        }
        if !*this.unheard {
            return Poll::Pending;
        }
        match Pin::new(&mut this.slot.shed).poll(cx) {
            Poll::Ready(Ok(())) => {
                *this.unheard = false;
                metrics::counter!(crate::base::metric_names::SHED).increment(1);
                Poll::Ready(Err(Error::Overloaded))
            }
            // The handle dropped unsent: the call goes on, unsheddable.
            Poll::Ready(Err(_)) => {
                *this.unheard = false;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Slots {
    /// `capacity` slots.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Arc::default(),
        }
    }

    /// A slot for a call of `caller`, or `None`: shed.
    pub(crate) fn take(&self, caller: &Caller) -> Option<Slot> {
        let flow = caller.flow();
        let mut held = lock(&self.state);
        if held.used >= self.capacity {
            let victim = held.over_share(flow, self.capacity)?;
            let (_, calls) = held.callers.get_mut(&victim)?;
            let (_, newest) = calls.pop()?;
            let _ = newest.send(());
            held.release_caller(victim);
            held.used -= 1;
        }
        held.used += 1;
        held.serial += 1;
        let serial = held.serial;
        let (tx, rx) = oneshot::channel();
        let (_, calls) = held
            .callers
            .entry(flow)
            .or_insert_with(|| (flow.weight(), Vec::new()));
        calls.push((serial, tx));
        Some(Slot {
            state: Arc::clone(&self.state),
            flow,
            serial,
            shed: rx,
        })
    }
}

impl Held {
    /// With every slot taken, the caller to shed one of for a call of
    /// `flow`: the one holding the most beyond its share, if `flow` is
    /// within its own and that one is over its own.
    fn over_share(&self, flow: Flow, capacity: usize) -> Option<Flow> {
        let mut total: u64 = self.callers.values().map(|(w, _)| u64::from(*w)).sum();
        if !self.callers.contains_key(&flow) {
            total += u64::from(flow.weight());
        }
        let share = |weight: u32| capacity as f64 * f64::from(weight) / total as f64;
        let held = |flow: &Flow| self.callers.get(flow).map_or(0, |(_, calls)| calls.len());
        if held(&flow) as f64 + 1.0 > share(flow.weight()) {
            return None;
        }
        self.callers
            .iter()
            .map(|(victim, (weight, calls))| (*victim, calls.len() as f64 - share(*weight)))
            .filter(|(_, beyond)| *beyond > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(victim, _)| victim)
    }

    /// Forgets `flow` once it holds nothing.
    fn release_caller(&mut self, flow: Flow) {
        if self
            .callers
            .get(&flow)
            .is_some_and(|(_, calls)| calls.is_empty())
        {
            self.callers.remove(&flow);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.state);
        let Some((_, calls)) = held.callers.get_mut(&self.flow) else {
            return;
        };
        // A slot taken back was counted off already.
        let Some(at) = calls.iter().position(|(serial, _)| *serial == self.serial) else {
            return;
        };
        calls.remove(at);
        held.release_caller(self.flow);
        held.used -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::caller::{CallerWeights, Callers};

    #[test]
    fn a_caller_within_its_share_takes_a_slot_from_the_one_most_over_its_own() {
        let callers = Callers::new(&"heavy=3".parse::<CallerWeights>().unwrap());
        let (flood, quiet) = (callers.caller(Some("flood")), callers.caller(Some("quiet")));
        let slots = Slots::new(4);
        let mut flooding: Vec<Slot> = (0..4).map(|_| slots.take(&flood).unwrap()).collect();
        // Full: the flood is at its share and more, so its next is shed.
        assert!(slots.take(&flood).is_none());
        // The quiet caller's share is 2 of 4: the flood's newest call goes.
        let first = slots.take(&quiet).expect("within its share");
        assert!(flooding.last_mut().unwrap().shed.try_recv().is_ok());
        assert!(flooding[0].shed.try_recv().is_err());
        drop(flooding.pop());
        let _second = slots.take(&quiet).expect("still within its share");
        // 2 of 4 each: the quiet caller's third is over its share.
        assert!(slots.take(&quiet).is_none());
        drop(first);
        let heavy = callers.caller(Some("heavy"));
        // A slot free: taken whoever asks.
        let _heavy = slots.take(&heavy).unwrap();
        // Weighted: heavy's share is 3 of 4 (with flood and quiet, 4 × 3/5).
        let _more = slots.take(&heavy).expect("within its weighted share");
        assert_eq!(lock(&slots.state).used, 4);
        drop(flooding);
        assert_eq!(lock(&slots.state).used, 3);
    }
}
