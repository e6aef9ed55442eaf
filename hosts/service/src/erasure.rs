//! Erasures in a running service: the ledger read at start (a service that cannot read
//! it does not start: it might replay an erased entity) and polled while it runs, so an
//! erasure reaches the service's state without a restart.

use crate::ServiceError;
use crate::metrics::Metrics;
use arrow_schema::DataType;
use lockstep_core::Erasures;
use lockstep_erasure::Ledger;
use lockstep_stream::ShardedProcessor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Where a service learns of erasures, and how often it looks again.
#[derive(Debug, Clone)]
pub struct ErasureWatch {
    /// The erasure ledger (beside the offline store by default).
    pub ledger: Arc<Ledger>,
    /// Time between two looks while running.
    pub every: Duration,
}

/// The erasures a running service honours, for each group it runs. The ledger is read
/// once for all of them: its new entries are handed to every group they name.
pub(crate) struct Watching {
    watch: ErasureWatch,
    groups: Vec<WatchedGroup>,
    next: Instant,
}

/// The group version one processor runs, and the erasures known for it.
pub(crate) struct WatchedGroup {
    /// Its name.
    pub(crate) group: String,
    /// Its version.
    pub(crate) version: String,
    /// The type of its entity key.
    pub(crate) key_type: DataType,
    known: Erasures,
}

impl WatchedGroup {
    /// The group `group@version`, its entity keys of `key_type`.
    pub(crate) fn new(group: &str, version: &str, key_type: DataType) -> Self {
        WatchedGroup {
            group: group.to_owned(),
            version: version.to_owned(),
            key_type,
            known: Erasures::default(),
        }
    }
}

impl Watching {
    /// Reads the whole ledger and hands what applies to each group to its processor
    /// (`processors[i]` runs `groups[i]`); fails when the ledger cannot be read.
    pub(crate) fn start(
        io: &Handle,
        watch: &ErasureWatch,
        groups: Vec<WatchedGroup>,
        processors: &mut [ShardedProcessor],
        metrics: &Metrics,
    ) -> Result<Self, ServiceError> {
        let entries = io
            .block_on(watch.ledger.read_all())
            .map_err(|e| ServiceError::Erasures(Box::new(e)))?;
        let mut watching = Watching {
            watch: watch.clone(),
            groups,
            next: Instant::now() + watch.every,
        };
        for (group, processor) in watching.groups.iter_mut().zip(processors.iter_mut()) {
            group.known =
                lockstep_erasure::boundary(&entries, &group.group, &group.version, &group.key_type);
            if !group.known.is_empty() {
                let dropped = processor.set_erasures(Arc::new(group.known.clone()))?;
                metrics.erased_states.inc_by(dropped as u64);
                tracing::info!(
                    group = %group.group,
                    entities = group.known.len(),
                    states_dropped = dropped,
                    ledger = watching.watch.ledger.location(),
                    "honouring erasures"
                );
            }
        }
        Ok(watching)
    }

    /// When due, reads the erasures recorded since the last look and hands them to the
    /// processors of the groups they name; returns whether any group got one (the
    /// round then has a change to checkpoint). A failed read is counted and retried at
    /// the next look: the erasures known so far stay in force.
    pub(crate) fn poll(
        &mut self,
        io: &Handle,
        processors: &mut [ShardedProcessor],
        metrics: &Metrics,
    ) -> Result<bool, ServiceError> {
        if Instant::now() < self.next {
            return Ok(false);
        }
        self.next = Instant::now() + self.watch.every;
        let fresh = match io.block_on(self.watch.ledger.read_new()) {
            Ok(fresh) => fresh,
            Err(e) => {
                metrics.source_errors.inc();
                tracing::warn!(error = %lockstep_core::ErrorChain(&e), "reading the erasure ledger failed; the erasures known so far stay in force");
                return Ok(false);
            }
        };
        let mut changed = false;
        for (group, processor) in self.groups.iter_mut().zip(processors.iter_mut()) {
            let new =
                lockstep_erasure::boundary(&fresh, &group.group, &group.version, &group.key_type);
            if new.is_empty() {
                continue;
            }
            group.known.extend(&new);
            let dropped = processor.set_erasures(Arc::new(group.known.clone()))?;
            metrics.erased_states.inc_by(dropped as u64);
            tracing::info!(
                group = %group.group,
                entities = new.len(),
                states_dropped = dropped,
                "erasure picked up while running"
            );
            changed = true;
        }
        Ok(changed)
    }
}
