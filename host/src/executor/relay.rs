//! The outbox relay: delivers committed events to their webhooks, at least
//! once, with the same body and `Idempotency-Key` on every attempt.
//!
//! Each iteration claims the due events (with a delivery lease, so two
//! hosts do not send the same event at once), POSTs them concurrently,
//! and records each outcome fenced on the attempt it claimed. An iteration
//! in which every event failed is a failed iteration: logged at error level
//! and counted; a partial failure names the events that failed and why.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Host;
use crate::health::Loop;
use crate::metrics::{Metrics, RelaySummary};
use crate::outbox::{ClaimedEvent, Delivery, Verdict, classify};
use crate::sandbox::{IDEMPOTENCY_KEY, pin_to_vetted_address};
use crate::store::StoreError;

impl Host {
    pub(super) async fn relay(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.outbox.poll_interval;
        // Whether only the timer woke this iteration: then it may be
        // skipped (see `idle`).
        let mut timed = false;
        // Whether the last iteration that had events due failed them all:
        // until one succeeds (or nothing is left pending), iterations with
        // nothing due do not count as progress, so that a relay whose
        // every delivery fails goes stale between its retries.
        let mut failing = false;
        loop {
            let started = std::time::Instant::now();
            let now = self.clock.now();
            let version = match timed {
                true => self.store.outside_version().await.ok().flatten(),
                false => None,
            };
            let full = if timed && self.relay_quiet.may_skip(now, version) {
                self.report_idle_relay(started, failing);
                false
            } else {
                self.relay_iteration(started, now, version, &mut failing)
                    .await
            };
            if *stop.borrow() {
                break;
            }
            if full {
                timed = false;
                continue;
            }
            timed = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = self.relay_wake.notified() => false,
                () = tokio::time::sleep(self.relay_quiet.interval(every, now)) => true,
            };
        }
    }

    /// Reports an iteration that had nothing due: progress, unless the
    /// last deliveries all failed and events are still pending.
    fn report_idle_relay(&self, started: std::time::Instant, failing: bool) {
        if !(failing && self.backlog.pending() > 0) {
            self.report(Loop::Relay, started, Ok((0, 0)));
        }
    }

    /// One reported relay iteration; returns whether its batch was full
    /// (more may be due at once).
    async fn relay_iteration(
        self: &Arc<Self>,
        started: std::time::Instant,
        now: crate::time::Timestamp,
        version: Option<u64>,
        failing: &mut bool,
    ) -> bool {
        match self.relay_once().await {
            Ok(summary) if summary.due == 0 => {
                self.relay_quiet.looked(true, version, now);
                self.report_idle_relay(started, *failing);
                false
            }
            Ok(summary) => {
                self.relay_quiet.looked(false, version, now);
                *failing = summary.outcome == "failed";
                let failed = u64::from(summary.retried + summary.failed);
                let result = if summary.outcome == "failed" {
                    Err(format!(
                        "every one of {} due deliveries failed",
                        summary.due
                    ))
                } else {
                    Ok((u64::from(summary.delivered), failed))
                };
                self.report(Loop::Relay, started, result);
                summary.due == self.config.outbox.batch
            }
            Err(e) => {
                Metrics::inc(&self.metrics.store_errors);
                tracing::error!("outbox relay: {e}");
                self.report(Loop::Relay, started, Err(e.to_string()));
                false
            }
        }
    }

    /// One relay iteration: claim due events, deliver, record.
    pub async fn relay_once(self: &Arc<Self>) -> Result<RelaySummary, StoreError> {
        let outbox = &self.config.outbox;
        self.backlog.set(self.store.pending_events().await?);
        let now = self.clock.now();
        // The lease outlives the request timeout, so a slow receiver is
        // never sent the same event by a second relay meanwhile.
        let lease = outbox.request_timeout * 2 + Duration::from_secs(1);
        let events = self.store.claim_events(now, outbox.batch, lease).await?;
        let mut summary = RelaySummary {
            at: now,
            due: events.len() as u32,
            outcome: "ok",
            ..RelaySummary::default()
        };
        if events.is_empty() {
            return Ok(summary);
        }

        let mut sends = JoinSet::new();
        for event in events {
            let timeout = outbox.request_timeout;
            let instruments = self.metrics.instruments.clone();
            // Sinks are the operator's; callbacks whoever enqueued gave.
            let allow_internal = event.topic != crate::outbox::CALLBACK_TOPIC
                || crate::outbox::callback_may_reach_internal(&event.url, &outbox.callback_allow);
            sends.spawn(async move {
                let sent = std::time::Instant::now();
                let verdict = deliver(&event, timeout, allow_internal).await;
                instruments.phase(crate::metrics::Phase::Delivery, sent.elapsed());
                (event, verdict)
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = sends.join_next().await {
            let Ok((event, verdict)) = joined else {
                continue;
            };
            let now = self.clock.now();
            let unknown = matches!(verdict.0, Verdict::Unknown(_));
            let (delivery, status) = match verdict {
                (Verdict::Delivered { note }, Some(status)) => {
                    (Delivery::Delivered { status, note }, Some(status))
                }
                (Verdict::Delivered { .. }, None) => unreachable!("delivered without a status"),
                (Verdict::Transient(error) | Verdict::Unknown(error), status) => {
                    if unknown {
                        summary.unknown += 1;
                        Metrics::inc(&self.metrics.events_unknown);
                    }
                    if event.attempt >= outbox.retry.max_attempts {
                        let error = format!(
                            "{error} (attempt {} of {}; giving up)",
                            event.attempt, outbox.retry.max_attempts
                        );
                        (Delivery::Failed { status, error }, status)
                    } else {
                        let next_attempt_at = now.plus(outbox.retry.backoff(event.attempt, None));
                        self.relay_quiet.due_at(next_attempt_at);
                        (
                            Delivery::Retry {
                                status,
                                error,
                                next_attempt_at,
                            },
                            status,
                        )
                    }
                }
                (Verdict::Permanent(error), status) => (Delivery::Failed { status, error }, status),
            };
            match &delivery {
                Delivery::Delivered { .. } => {
                    summary.delivered += 1;
                    Metrics::inc(&self.metrics.events_delivered);
                }
                Delivery::Retry { error, .. } => {
                    summary.retried += 1;
                    Metrics::inc(&self.metrics.events_retried);
                    failures.push(format!("event {} ({}): {error}", event.id, event.topic));
                }
                Delivery::Failed { error, .. } => {
                    summary.failed += 1;
                    Metrics::inc(&self.metrics.events_failed);
                    failures.push(format!("event {} ({}): {error}", event.id, event.topic));
                    tracing::error!(
                        event_id = event.id, topic = %event.topic, status,
                        "outbox event failed for good: {error}"
                    );
                }
            }
            if self
                .store
                .record_delivery(event.id, event.attempt, delivery, now)
                .await?
                == crate::job::Fenced::FencedOut
            {
                Metrics::inc(&self.metrics.fenced_out);
                tracing::warn!(
                    event_id = event.id,
                    attempt = event.attempt,
                    "delivery outcome fenced out: the event was re-claimed"
                );
            }
        }

        Metrics::inc(&self.metrics.relay_iterations);
        let failed = summary.retried + summary.failed;
        if failed == summary.due {
            summary.outcome = "failed";
            Metrics::inc(&self.metrics.relay_failed_iterations);
            tracing::error!(
                due = summary.due,
                retried = summary.retried,
                failed = summary.failed,
                "outbox relay iteration failed: no event was delivered: {}",
                failures.join("; ")
            );
        } else if failed > 0 {
            summary.outcome = "partial";
            Metrics::inc(&self.metrics.relay_partial_iterations);
            tracing::warn!(
                due = summary.due,
                delivered = summary.delivered,
                retried = summary.retried,
                failed = summary.failed,
                "outbox relay iteration partly failed: {}",
                failures.join("; ")
            );
        } else {
            tracing::debug!(
                delivered = summary.delivered,
                "outbox relay iteration delivered every event"
            );
        }
        self.metrics.record_relay(summary.clone());
        Ok(summary)
    }
}

/// POSTs one event as stored. Returns the verdict and the HTTP status, if
/// the receiver answered.
async fn deliver(
    event: &ClaimedEvent,
    timeout: Duration,
    allow_internal: bool,
) -> (Verdict, Option<u16>) {
    match tokio::time::timeout(timeout, post(event, allow_internal)).await {
        Ok(Ok(status)) => (classify(status), Some(status)),
        Ok(Err(verdict)) => (verdict, None),
        Err(_) => (
            Verdict::Unknown(format!(
                "sent, but no answer within {}: the receiver may have it",
                humantime::format_duration(timeout)
            )),
            None,
        ),
    }
}

/// Sends the event. A URL that can never work (malformed, or resolving to
/// a forbidden address) is a permanent failure; a network failure is
/// transient.
async fn post(event: &ClaimedEvent, allow_internal: bool) -> Result<u16, Verdict> {
    let uri: http::Uri = event
        .url
        .parse()
        .map_err(|e| Verdict::Permanent(format!("invalid URL {:?}: {e}", event.url)))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Verdict::Permanent(format!("URL {:?} has no host", event.url)))?
        .clone();
    let body = Full::new(Bytes::from(event.body.clone()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = http::Request::post(uri)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_KEY, event.idempotency_key.as_str())
        .body(body)
        .map_err(|e| Verdict::Permanent(format!("building the request: {e}")))?;
    // Callback URLs come from whoever enqueued the job: the same address
    // checks as plugins' requests apply, and plain HTTP goes to the very
    // address checked.
    let request = pin_to_vetted_address(request, "outbox relay", allow_internal)
        .await
        .map_err(|e| match e {
            wasmtime_wasi_http::Error::DestinationIpProhibited
            | wasmtime_wasi_http::Error::HttpRequestUriInvalid => {
                Verdict::Permanent(format!("{}: {e}", event.url))
            }
            other => Verdict::Transient(format!("{}: {other}", event.url)),
        })?;
    let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
        .await
        .map_err(|e| Verdict::Transient(format!("sending: {e}")))?;
    let conn = tokio::spawn(io);
    let status = response.status().as_u16();
    // Read (and drop) a bounded amount of the answer so the receiver is not
    // cut off mid-response; its content does not matter.
    let _ = http_body_util::Limited::new(response.into_body(), 64 << 10)
        .collect()
        .await;
    conn.abort();
    Ok(status)
}
