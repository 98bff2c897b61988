//! # The systemd notifier service
//!
//! `Type=notify`: READY once the state is loaded, a STATUS line every 5 s (cycle committed,
//! messages journaled), WATCHDOG pings at half the `WatchdogSec=` interval when systemd asks for
//! them, and STOPPING when cancelled. Outside systemd the notifications go nowhere.

use super::store::Store;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The notifier.
pub struct Notifier {
    /// The store whose progress the status line reports.
    pub store: Store,
    /// The broker, for the first status line.
    pub endpoint: String,
}

impl Notifier {
    /// Notify until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let committed = self.store.assimilated_up_to().unwrap_or(0);
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        let first = format!(
            "cycle {committed} committed; connecting to {}",
            self.endpoint
        );
        let _ = sd_notify::notify(&[NotifyState::Status(&first)]);
        let mut status = tokio::time::interval(Duration::from_secs(5));
        // Without a watchdog the second timer never fires (an hour, re-armed).
        let watchdog = sd_notify::watchdog_enabled();
        let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = status.tick() => {
                    let s = format!(
                        "cycle {} committed; {} messages journaled",
                        self.store.assimilated_up_to().unwrap_or(0),
                        self.store.journaled_total().unwrap_or(0)
                    );
                    let _ = sd_notify::notify(&[NotifyState::Status(&s)]);
                }
                _ = ping.tick(), if watchdog.is_some() => {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
            }
        }
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }
}
