//! # The reload service (SIGHUP, `systemctl reload assimd`)
//!
//! On every SIGHUP, re-read the config file and hand its `[qc]` section (blacklist, clear list,
//! thresholds) to the cycle engine, which applies it before its next cycle. A file that does not
//! load is logged and the running settings stay; the other sections need a restart.

use super::config::Config;
use std::path::PathBuf;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The reload service.
pub struct Reload {
    /// The config file.
    pub path: PathBuf,
    /// Where the new `[qc]` goes.
    pub tx: watch::Sender<crate::qc::QcSettings>,
}

impl Reload {
    /// Handle SIGHUP until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler: `systemctl reload` will not work");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                s = hup.recv() => if s.is_none() { return },
            }
            match Config::load(&self.path) {
                Ok(cfg) => {
                    tracing::info!(
                        "SIGHUP: re-read [qc] from {} (other sections need a restart)",
                        self.path.display()
                    );
                    let _ = self.tx.send(cfg.qc);
                }
                Err(e) => tracing::error!(
                    "SIGHUP: {} does not load, keeping the running settings: {e:#}",
                    self.path.display()
                ),
            }
        }
    }
}
