//! Stopping a build: a [`Cancel`] handle the caller keeps and triggers
//! (on `SIGINT`, a CI timeout, a user's click), which every part of the
//! build watches: steps stop between instructions, a running `RUN` has its
//! container killed, transfers stop, and the build's own state is removed
//! before [`Build::build`](super::Build::build) returns
//! [`BuildError::Cancelled`](super::BuildError::Cancelled).
//!
//! Dropping the build future instead cancels the same way: its drop only
//! sets the flag and hands the clean-up to a background reaper, a blocking
//! task on the runtime that waits for the build's own tasks to stop, then
//! removes the build's scratch state. Whatever a process that exits (or is
//! killed) first leaves is reclaimed by the next build on the same cache.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A cancellation handle; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancelled: Mutex<bool>,
    wake: Condvar,
    notify: tokio::sync::Notify,
}

impl Cancel {
    /// A handle not cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels: everything watching this handle stops.
    pub fn cancel(&self) {
        if let Ok(mut c) = self.inner.cancelled.lock() {
            *c = true;
        }
        self.inner.wake.notify_all();
        self.inner.notify.notify_waiters();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.lock().map_or(true, |c| *c)
    }

    /// Blocks for at most `timeout`; true when cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.inner.cancelled.lock() else { return true };
        match self.inner.wake.wait_timeout_while(guard, timeout, |c| !*c) {
            Ok((c, _)) => *c,
            Err(_) => true,
        }
    }

    /// Completes once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // registered before the check, so a cancel in between is not missed
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_when_cancelled() {
        let c = Cancel::new();
        assert!(!c.wait_timeout(Duration::from_millis(10)));
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        c.cancel();
        assert!(t.join().unwrap());
        assert!(c.is_cancelled());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(c.cancelled());
    }
}
