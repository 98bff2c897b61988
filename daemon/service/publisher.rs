//! # The publisher service
//!
//! Sends what the engine and ingest produce — cycle summaries, retained means, the stations'
//! status, dead letters — to the broker with QoS 1, in order. It ends when every producer has
//! dropped its sender (the engine and ingest have stopped) or the client is gone.

use super::Outgoing;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

/// The publisher.
pub struct Publisher {
    /// The broker client (the connection service drives its event loop).
    pub client: AsyncClient,
    /// What to publish.
    pub rx: mpsc::UnboundedReceiver<Outgoing>,
}

impl Publisher {
    /// Publish until the producers are gone.
    pub async fn run(mut self) {
        while let Some(o) = self.rx.recv().await {
            let sent = self
                .client
                .publish(o.topic, QoS::AtLeastOnce, o.retain, o.payload)
                .await;
            if sent.is_err() {
                break;
            }
        }
    }
}
