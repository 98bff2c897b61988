//! # Broker connection
//!
//! A rumqttc client with a persistent session (clean_session = false, a fixed client id) and
//! manual acknowledgements: the broker keeps QoS 1 messages for the daemon while it is away, and a
//! message is acknowledged only once it is journaled ([`super::ingest`]). The [`Connection`] service
//! drives the event loop: it forwards publishes to the journal writer, subscribes at every
//! connection, and reconnects with exponential backoff.
//!
//! ## Publications across a lost session
//! rumqttc resends the client's unacknowledged publications on a resumed session but drops them
//! when the broker answers without it; [`Unacknowledged`] keeps them at each connection error and
//! queues them again then, so the daemon's summaries, means and dead letters (and the simulator's
//! observations) are published at least once.
//!
//! ## Refused subscriptions
//! A SUBACK carries one return code per topic filter, and a broker may refuse some (0x80): an ACL
//! that forbids the topic, or a clustered broker that could not create the filter's consumer
//! while electing leaders. A refused filter's messages never come on that connection, so the
//! daemon reads the codes: it counts each refusal (`assimd_mqtt_subscribe_failures_total`), logs
//! the filters, asks again for those with the reconnect backoff, and reports itself subscribed
//! (`assimd_mqtt_subscribed`) only once every filter is granted.
//!
//! ## Several endpoints
//! With `mqtt.hosts` (the nodes of a clustered broker that replicates sessions, such as NATS
//! with JetStream, EMQX or VerneMQ) a lost connection moves the client to the next node at once,
//! and the backoff only grows when every node has failed in a row. The session is resumed on the
//! new node under the same client id: the cluster redelivers what was not acknowledged, the
//! journal's id check drops what was already journaled, and the client retransmits its own
//! unacknowledged publications. `assimd_mqtt_endpoint` says which node is in use.
//!
//! ## Acknowledgements stay on their connection
//! A message is acknowledged by its packet identifier, which only means something on the
//! connection it came in on: a cluster node that resumes the session numbers its (re)deliveries
//! afresh (nats-server reuses identifiers from 1 whenever nothing is pending), so an
//! acknowledgement carried over from the lost connection would acknowledge a different message,
//! one the daemon may never receive if that node is lost in turn. The [`AckGate`] numbers the
//! connections: a lost connection drops the acknowledgements still queued for it, and ingest
//! acknowledges a message only while the connection it came in on is the current one. What is left
//! unacknowledged comes again on the resumed session and the journal's id check drops it (a
//! single broker resends it under its old identifier, MQTT 3.1.1 §4.4; the same id check applies).

use super::config::MqttSection;
use super::telemetry as tm;
use anyhow::{Context, Result};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The client options of every endpoint (`mqtt.hosts`, or `host`/`port`), named `host:port`, in the
/// order they are tried; the same credentials and TLS settings for each.
pub fn endpoint_options(
    m: &MqttSection,
    client_id: &str,
    clean_session: bool,
) -> Result<Vec<(String, MqttOptions)>> {
    m.endpoints()?
        .into_iter()
        .map(|(host, port)| {
            let name = super::config::endpoint_name(&host, port);
            Ok((name, options_for(m, client_id, clean_session, host, port)?))
        })
        .collect()
}

/// Build the client options for one endpoint (reads the password and TLS files).
fn options_for(
    m: &MqttSection,
    client_id: &str,
    clean_session: bool,
    host: String,
    port: u16,
) -> Result<MqttOptions> {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(m.keep_alive_seconds));
    o.set_clean_session(clean_session);
    o.set_max_packet_size(m.max_packet_bytes, m.max_packet_bytes);
    o.set_inflight(1000);
    if let Some(user) = &m.username {
        let password = match &m.password_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading mqtt.password_file {}", p.display()))?
                .trim_end()
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if let Some(ca) = &m.tls_ca_file {
        let ca = std::fs::read(ca)
            .with_context(|| format!("reading mqtt.tls_ca_file {}", ca.display()))?;
        let client_auth = match (&m.tls_client_cert_file, &m.tls_client_key_file) {
            (Some(c), Some(k)) => Some((
                std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
                std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
            )),
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// The topic filters the daemon subscribes to.
pub fn subscriptions(prefix: &str, testbed: &str, truth: bool) -> Vec<String> {
    let mut v = vec![
        format!("{prefix}/obs/station/#"),
        format!("{prefix}/obs/satellite/#"),
    ];
    if truth {
        v.push(format!("{prefix}/truth/{testbed}"));
    }
    v
}

/// The number of the current broker connection, shared by the event loop and ingest (module doc:
/// acknowledgements stay on their connection).
#[derive(Clone, Debug, Default)]
pub struct AckGate(Arc<Mutex<u64>>);

/// The gate's number once the event loop has stopped: nothing is acknowledged any more.
const CLOSED: u64 = u64::MAX;

impl AckGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection's number.
    pub fn current(&self) -> u64 {
        *self.lock()
    }

    /// Acknowledge `p`, received on connection `connection`, if that is still the current one;
    /// otherwise do nothing (the broker redelivers it). Waits while the client's queue is full.
    pub async fn ack(&self, client: &AsyncClient, connection: u64, p: &Publish) {
        loop {
            {
                let current = self.lock();
                if *current != connection || client.try_ack(p).is_ok() {
                    return;
                }
            }
            // The request queue is full: the event loop is busy sending; try again shortly.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The connection is lost: a new number, so that ingest no longer acknowledges the old
    /// connection's messages, and the acknowledgements already queued for it are dropped
    /// (`EventLoop::clean` drops the queue's acknowledgements; it ran once when the loop failed,
    /// and runs again here, under the gate's lock, for those queued since).
    fn connection_lost(&self, eventloop: &mut EventLoop) {
        let mut current = self.lock();
        if *current != CLOSED {
            *current += 1;
        }
        eventloop.clean();
    }

    fn close(&self) {
        *self.lock() = CLOSED;
    }
}

/// The event-loop service.
pub struct Connection {
    /// The client (for subscribing).
    pub client: AsyncClient,
    /// The event loop it drives.
    pub eventloop: EventLoop,
    /// Topic filters to (re)subscribe.
    pub topics: Vec<String>,
    /// Every endpoint's name and options, in order; the event loop starts on the first.
    pub endpoints: Vec<(String, MqttOptions)>,
    /// Reconnect backoff bounds.
    pub backoff: (Duration, Duration),
    /// Where publishes go, with the number of the connection they came in on; dropped when
    /// ingestion stops.
    pub publishes: mpsc::UnboundedSender<(u64, Publish)>,
    /// The connection numbers ([`AckGate`]).
    pub gate: AckGate,
    /// Set to true once subscribed (SUBACK, or a CONNACK with the session present), false on loss.
    pub connected: watch::Sender<bool>,
    /// Whether the broker should already hold this client's session at the first connection (the
    /// store has journaled messages: an earlier run of the daemon subscribed). Every later
    /// connection expects it.
    pub expect_session: bool,
}

impl Connection {
    /// Drive the event loop until `stop_ingest` (then stop forwarding, but keep polling so that the
    /// last acknowledgements and publications go out) and `stop` (then disconnect).
    pub async fn run(self, stop_ingest: CancellationToken, stop: CancellationToken) {
        let Connection {
            client,
            mut eventloop,
            topics,
            endpoints,
            backoff,
            publishes,
            gate,
            connected,
            expect_session,
        } = self;
        let mut publishes = Some(publishes);
        let mut delay = backoff.0;
        let mut session_expected = expect_session;
        // The endpoint in use, and connection failures since the last CONNACK.
        let (mut current, mut failures) = (0usize, 0usize);
        let names: Vec<&str> = endpoints.iter().map(|(n, _)| n.as_str()).collect();
        set_endpoint(&names, current);
        // The filters of the SUBSCRIBE in flight (its SUBACK answers them in this order), and the
        // refused ones with the time to ask again.
        let mut asked: Vec<String> = Vec::new();
        let mut retry: Option<(tokio::time::Instant, Vec<String>)> = None;
        let mut retry_delay = backoff.0;
        let mut unacknowledged = Unacknowledged::default();
        loop {
            let retry_at = retry.as_ref().map(|(t, _)| *t);
            let ev = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = stop_ingest.cancelled(), if publishes.is_some() => { publishes = None; continue; }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    if let Some((_, refused)) = retry.take() {
                        asked = refused;
                        subscribe(&client, &asked);
                    }
                    continue;
                }
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(tx) = &publishes {
                        // Never block here: the event loop must keep running to send the journal
                        // writer's acknowledgements. The queue is bounded by the broker's in-flight
                        // window (unacknowledged QoS 1 messages), max_inflight_messages in Mosquitto.
                        if tx.send((gate.current(), p)).is_err() {
                            publishes = None;
                        }
                    }
                    // After stop_ingest the message stays unacknowledged: the broker redelivers it.
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    delay = backoff.0;
                    failures = 0;
                    metrics::gauge!(tm::MQTT_CONNECTED).set(1.0);
                    set_endpoint(&names, current);
                    let expected = std::mem::replace(&mut session_expected, true);
                    tracing::info!(
                        session_present = ack.session_present,
                        endpoint = names[current],
                        "connected to the broker at {}",
                        names[current]
                    );
                    if !ack.session_present && expected {
                        metrics::counter!(tm::MQTT_SESSIONS_LOST).increment(1);
                        tracing::warn!("the broker no longer had this client's session (restarted without persistence, or a cluster that lost it): QoS 1 messages it held for the daemon may be lost; check the journal counts of the open windows");
                    }
                    let again = unacknowledged.restore(&mut eventloop, ack.session_present);
                    if again > 0 {
                        tracing::warn!("publishing again {again} messages the broker had not acknowledged before it lost the session");
                    }
                    // Subscribe at every connection, session or not: idempotent, and a changed
                    // prefix or truth setting takes effect on a kept session too.
                    retry = None;
                    retry_delay = backoff.0;
                    asked = topics.clone();
                    subscribe(&client, &asked);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = refused_filters(&asked, &ack.return_codes);
                    if refused.is_empty() {
                        metrics::gauge!(tm::MQTT_SUBSCRIBED).set(1.0);
                        let _ = connected.send(true);
                        retry_delay = backoff.0;
                    } else {
                        // A clustered broker refuses a filter whose consumer it could not create
                        // (e.g. during a leader election): without asking again, that filter's
                        // messages would never come on this connection.
                        metrics::counter!(tm::MQTT_SUBSCRIBE_FAILURES)
                            .increment(refused.len() as u64);
                        tracing::warn!(
                            "the broker at {} refused the subscription to {refused:?}; asking again in {} ms",
                            names[current],
                            retry_delay.as_millis()
                        );
                        retry = Some((tokio::time::Instant::now() + retry_delay, refused));
                        retry_delay = (retry_delay * 2).min(backoff.1);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    gate.connection_lost(&mut eventloop);
                    unacknowledged.keep(&eventloop);
                    retry = None;
                    metrics::gauge!(tm::MQTT_CONNECTED).set(0.0);
                    metrics::gauge!(tm::MQTT_SUBSCRIBED).set(0.0);
                    metrics::counter!(tm::MQTT_ERRORS).increment(1);
                    let _ = connected.send(false);
                    // Next endpoint; back off only once every endpoint has failed in a row.
                    failures += 1;
                    let failed = current;
                    current = (current + 1) % endpoints.len();
                    eventloop.mqtt_options = endpoints[current].1.clone();
                    let wait = if failures % endpoints.len() == 0 {
                        let d = delay;
                        delay = (delay * 2).min(backoff.1);
                        d
                    } else {
                        backoff.0
                    };
                    tracing::warn!(
                        "broker connection to {}: {e}; trying {} in {} ms",
                        names[failed],
                        names[current],
                        wait.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
        disconnect(&client, &mut eventloop).await;
        gate.close();
        metrics::gauge!(tm::MQTT_CONNECTED).set(0.0);
    }
}

/// The client's own QoS 1 publications not yet acknowledged when a connection broke. rumqttc sends
/// them again itself on a resumed session, but drops them when the broker answers without the
/// session (a broker restarted without persistence, a cluster that lost the session record, or any
/// reconnect of a clean session): the daemon's summaries and the simulator's observations would be
/// lost without a word. Kept here at each connection error and queued again at a CONNACK without
/// the session, they go out as new messages: subscribers get them at least once (the journal's id
/// check drops a copy of an observation the broker had in fact received).
#[derive(Default)]
pub struct Unacknowledged(Vec<rumqttc::Request>);

impl Unacknowledged {
    /// After a connection error, once rumqttc has moved what was in flight or queued into
    /// `pending` ([`EventLoop::clean`]).
    pub fn keep(&mut self, eventloop: &EventLoop) {
        self.0 = eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, rumqttc::Request::Publish(_)))
            .cloned()
            .collect();
    }

    /// At a CONNACK: without the session, queue the kept publications again (ahead of anything
    /// queued since); the number queued.
    pub fn restore(&mut self, eventloop: &mut EventLoop, session_present: bool) -> usize {
        let kept = std::mem::take(&mut self.0);
        if session_present {
            return 0;
        }
        let n = kept.len();
        for r in kept.into_iter().rev() {
            eventloop.pending.push_front(r);
        }
        n
    }
}

/// SUBSCRIBE `filters` at QoS 1, in one packet.
fn subscribe(client: &AsyncClient, filters: &[String]) {
    let subs = filters
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
    if let Err(e) = client.try_subscribe_many(subs) {
        tracing::error!("subscribing: {e}");
    }
}

/// The filters of `asked` that a SUBACK's return codes (one per filter, in order) refused; a
/// code missing from a short SUBACK counts as refused. A filter granted at QoS 0 is not
/// refused, but its messages are not kept while the daemon is away: that is logged.
fn refused_filters(asked: &[String], codes: &[SubscribeReasonCode]) -> Vec<String> {
    asked
        .iter()
        .enumerate()
        .filter(|(i, f)| match codes.get(*i) {
            Some(SubscribeReasonCode::Success(QoS::AtMostOnce)) => {
                tracing::warn!("the broker granted {f} at QoS 0 only: messages published while the daemon is away are not kept for it");
                false
            }
            Some(SubscribeReasonCode::Success(_)) => false,
            Some(SubscribeReasonCode::Failure) | None => true,
        })
        .map(|(_, f)| f.clone())
        .collect()
}

/// `assimd_mqtt_endpoint{endpoint}`: 1 for the endpoint in use (or being tried), 0 for the others.
fn set_endpoint(names: &[&str], current: usize) {
    for (i, n) in names.iter().enumerate() {
        metrics::gauge!(tm::MQTT_ENDPOINT, "endpoint" => n.to_string()).set(if i == current {
            1.0
        } else {
            0.0
        });
    }
}

/// Say goodbye so that the broker keeps the session without waiting for keep-alive.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::Request;

    /// The client's request queue holds one request here, so whether an acknowledgement was
    /// queued shows in whether a publication still fits.
    fn fits(client: &AsyncClient) -> bool {
        client
            .try_publish("t", QoS::AtLeastOnce, false, vec![1])
            .is_ok()
    }

    #[tokio::test]
    async fn acknowledgements_go_only_to_the_connection_their_message_came_in_on() {
        let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 1);
        let mut p = Publish::new("obs/station/x", QoS::AtLeastOnce, vec![0]);
        p.pkid = 7;
        let gate = AckGate::default();
        let first = gate.current();
        // On the current connection: queued.
        gate.ack(&client, first, &p).await;
        assert!(!fits(&client), "the acknowledgement is queued");
        // The connection is lost: the queued acknowledgement is dropped, a queued publication kept.
        gate.connection_lost(&mut eventloop);
        assert_ne!(gate.current(), first);
        assert!(eventloop.pending.is_empty(), "no PubAck(7) left to send");
        assert!(fits(&client));
        eventloop.clean();
        assert!(matches!(
            eventloop.pending.iter().collect::<Vec<_>>()[..],
            [Request::Publish(_)]
        ));
        // A message of the lost connection is no longer acknowledged (the broker redelivers it).
        gate.ack(&client, first, &p).await;
        assert!(fits(&client), "nothing queued for the old connection");
        eventloop.clean();
        // Once the event loop has stopped, nothing is acknowledged.
        gate.close();
        gate.ack(&client, gate.current() - 1, &p).await;
        assert!(fits(&client));
    }
}
