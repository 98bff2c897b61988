//! # The cycle service
//!
//! Waits for the ingest service to close windows (the `closed` watch) and runs each closed cycle
//! on a blocking thread ([`Engine::catch_up`]). When ingest ends (its sender is dropped) it runs
//! what is closed and returns the last committed cycle; when `stop` is cancelled it returns after
//! the running cycle, abandoning the rest (redone from the journal after a restart).

use super::engine::Engine;
use anyhow::Result;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The cycle service.
pub struct Cycles {
    /// The engine (moved to a blocking thread for each catch-up).
    pub engine: Engine,
    /// The last closed window, from ingest.
    pub closed: watch::Receiver<u64>,
    /// Abandon the remaining cycles (checked between cycles).
    pub stop: CancellationToken,
}

impl Cycles {
    /// Run closed cycles until ingest ends or `stop`; returns the last committed cycle.
    pub async fn run(self) -> Result<u64> {
        let Cycles {
            mut engine,
            mut closed,
            stop,
        } = self;
        loop {
            let upto = *closed.borrow_and_update();
            if upto > engine.committed && !stop.is_cancelled() {
                let s = stop.clone();
                let (e, r) = tokio::task::spawn_blocking(move || {
                    let r = engine.catch_up(upto, &|| s.is_cancelled());
                    (engine, r)
                })
                .await?;
                engine = e;
                r?;
                continue;
            }
            tokio::select! {
                r = closed.changed() => if r.is_err() && *closed.borrow() <= engine.committed {
                    // Ingest ended and everything it closed is committed.
                    return Ok(engine.committed);
                },
                _ = stop.cancelled() => return Ok(engine.committed),
            }
        }
    }
}
