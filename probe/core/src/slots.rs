//! Concurrency slots for a run: `concurrency` bounds the targets that are doing something (and
//! so loading the volunteer's line), not the targets that are only waiting.
//!
//! A censored site typically costs a full step timeout of silence (a dropped SYN, a ClientHello
//! that is never answered). Holding a slot for that silence made a run cost about
//! ⌈stalled / concurrency⌉ timeouts. So a step that may stall runs through [`waiting`]: once it
//! has waited [`PARK_AFTER`] without an outcome, its target gives the slot to the next target,
//! and takes one back (waiting its turn) when the step ends. The number of targets in flight,
//! parked ones included, is bounded separately by the run ([`in_flight`]), which bounds
//! sockets and memory.
//!
//! Outside a run (the control service, tests) there is no slot and these are plain awaits.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a step may wait for an answer before its target gives up its slot. Longer than a
/// healthy handshake over a slow line, much shorter than any step timeout.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// Most targets in flight at once, parked ones included, for a given concurrency.
pub fn in_flight(concurrency: usize) -> usize {
    concurrency.max(1).saturating_mul(4)
}

tokio::task_local! {
    static SLOT: Arc<Slot>;
}

/// The slots of one run.
#[derive(Clone, Debug)]
pub struct Slots {
    active: Arc<Semaphore>,
}

/// One target's hold on a slot.
#[derive(Debug)]
struct Slot {
    active: Arc<Semaphore>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slots {
    /// `concurrency` targets active at once.
    pub fn new(concurrency: usize) -> Self {
        Slots {
            active: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Run one target's measurement: wait for a slot (in order: the semaphore is fair), then
    /// run `fut` holding it, except while one of its steps is parked.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        let permit = self.active.clone().acquire_owned().await.ok();
        let slot = Arc::new(Slot {
            active: self.active.clone(),
            permit: Mutex::new(permit),
        });
        SLOT.scope(slot, fut).await
    }
}

impl Slot {
    fn release(&self) {
        let permit = self.permit.lock().map(|mut p| p.take()).unwrap_or(None);
        drop(permit);
    }

    async fn reacquire(&self) {
        let held = self.permit.lock().map(|p| p.is_some()).unwrap_or(true);
        if held {
            return;
        }
        let permit = self.active.clone().acquire_owned().await.ok();
        if let Ok(mut p) = self.permit.lock() {
            *p = permit;
        }
    }
}

/// Await a step that may stall (a DNS query, a connect, a handshake). After [`PARK_AFTER`]
/// without an outcome the target gives up its slot; when the step ends it waits for a slot
/// again before going on.
pub async fn waiting<F: Future>(fut: F) -> F::Output {
    let Ok(slot) = SLOT.try_with(Arc::clone) else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return out,
        _ = tokio::time::sleep(PARK_AFTER) => {}
    }
    slot.release();
    let out = fut.await;
    slot.reacquire().await;
    out
}

/// The target's active work is over (what is left only waits: the DNS linger, the control's
/// reply): give the slot to the next target now.
pub fn done() {
    let _ = SLOT.try_with(|s| s.release());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Paused time: tokio's clock, not the wall clock.
    use tokio::time::Instant;

    /// Two slots, six targets of which four stall for 2 s in a step: holding the slots through
    /// the stalls would take two rounds (4.3 s); parked, the stalls overlap, each pair starting
    /// PARK_AFTER after the one before (2.6 s).
    #[tokio::test(start_paused = true)]
    async fn stalled_steps_give_their_slot_away() {
        let slots = Slots::new(2);
        let started = Instant::now();
        let busy = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let futs = (0..6).map(|i| {
            let slots = slots.clone();
            let (busy, peak) = (busy.clone(), peak.clone());
            async move {
                slots
                    .run(async move {
                        if i < 4 {
                            waiting(tokio::time::sleep(Duration::from_secs(2))).await;
                        }
                        // Active work: at most two targets at once.
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        busy.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }
        });
        futures::future::join_all(futs).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(
            peak.load(Ordering::SeqCst) <= 2,
            "more than 2 active at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quick_steps_keep_their_slot() {
        let slots = Slots::new(1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let futs = (0..3).map(|i| {
            let slots = slots.clone();
            let order = order.clone();
            async move {
                slots
                    .run(async move {
                        waiting(tokio::time::sleep(Duration::from_millis(100))).await;
                        order.lock().unwrap().push(i);
                    })
                    .await
            }
        });
        let started = Instant::now();
        futures::future::join_all(futs).await;
        // One at a time, in order: a step shorter than PARK_AFTER never lets another in.
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn outside_a_run_it_is_a_plain_await() {
        assert_eq!(waiting(async { 7 }).await, 7);
        done();
    }
}
