//! `trigger` steps: buildsets through the farm's triggerable schedulers, and waiting for them.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_model::{BuildId, BuildsetId, Event, Properties, Results, SourceStamp};
use kiln_remote::BoxFuture;
use kiln_store::{EventBus, Store};

use crate::farm::FarmHandle;
use crate::steps::{TriggerError, Triggerer};

pub(super) struct BuildTriggerer {
    pub farm: FarmHandle,
    pub store: Store,
    pub bus: EventBus,
    /// The triggering build.
    pub build: BuildId,
}

impl Triggerer for BuildTriggerer {
    fn trigger(
        &self,
        scheduler_names: &[String],
        properties: Properties,
        sources: BTreeMap<String, SourceStamp>,
        wait: bool,
    ) -> BoxFuture<'_, Result<Results, TriggerError>> {
        let names = scheduler_names.to_vec();
        Box::pin(async move {
            let sources: Vec<SourceStamp> = sources.into_values().collect();
            // Listening before submitting: no completion can slip past.
            let mut events = self.bus.subscribe();
            let mut buildsets = Vec::new();
            for name in names {
                let bs = self
                    .farm
                    .trigger(name, self.build, sources.clone(), properties.clone(), wait)
                    .await?;
                buildsets.push(bs);
            }
            if !wait {
                return Ok(Results::Success);
            }
            let mut worst = Results::Success;
            for bs in buildsets {
                worst = worst.worst(wait_for_buildset(&self.store, &mut events, bs).await?);
            }
            Ok(worst)
        })
    }
}

/// The buildset's result once it is complete. Re-reads it whenever a request completes here,
/// and every two seconds for completions the bus may not carry (another master on SQLite).
async fn wait_for_buildset(
    store: &Store,
    events: &mut kiln_store::Subscription,
    bs: BuildsetId,
) -> Result<Results, TriggerError> {
    loop {
        let row = store
            .get_buildset(bs)
            .await?
            .ok_or(TriggerError::Vanished(bs))?;
        if row.complete {
            return Ok(row.results.unwrap_or(Results::Success));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // Anything that may complete a request ends the wait: a completion or cancel (or a
        // missed event: lagging, or gaps from other masters).
        while let Ok(next) = tokio::time::timeout_at(deadline, events.recv()).await {
            match next {
                Ok(Event::BuildRequestCompleted { .. } | Event::BuildRequestCancelled { .. }) => {
                    break;
                }
                Ok(_) => {}
                Err(kiln_store::RecvError::Closed) => {
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
