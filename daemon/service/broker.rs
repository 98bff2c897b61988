//! # Embedded broker (rumqttd), for the demo and tests
//!
//! rumqttd's `Broker::start` never returns and cannot report its port, so the caller picks a free
//! port ([`free_port`]), the broker runs on its own thread, and [`start_embedded`] polls until the
//! port accepts connections. Its Prometheus exporter stays off.

use anyhow::{bail, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Start rumqttd (MQTT 3.1.1) on 127.0.0.1:`port` and wait until it accepts connections.
pub fn start_embedded(port: u16) -> Result<()> {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            // Unacknowledged QoS 1 messages in flight to one client: the daemon acknowledges a
            // whole journal batch at once, so allow at least one batch.
            max_inflight_count: 2048,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 2048,
            max_segment_size: 64 << 20,
            max_segment_count: 16,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })?;
    let t0 = Instant::now();
    while TcpStream::connect(listen).is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("the embedded broker did not accept connections on {listen} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
