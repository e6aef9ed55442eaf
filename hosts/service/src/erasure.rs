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

/// The erasures a running service honours.
pub(crate) struct Watching {
    watch: ErasureWatch,
    group: String,
    version: String,
    key_type: DataType,
    known: Erasures,
    next: Instant,
}

impl Watching {
    /// Reads the whole ledger and hands what applies to `group@version` to
    /// `processor`; fails when the ledger cannot be read.
    pub(crate) fn start(
        io: &Handle,
        watch: &ErasureWatch,
        group: &str,
        version: &str,
        key_type: DataType,
        processor: &mut ShardedProcessor,
        metrics: &Metrics,
    ) -> Result<Self, ServiceError> {
        let entries = io
            .block_on(watch.ledger.read_all())
            .map_err(|e| ServiceError::Erasures(Box::new(e)))?;
        let known = lockstep_erasure::boundary(&entries, group, version, &key_type);
        let watching = Watching {
            watch: watch.clone(),
            group: group.to_owned(),
            version: version.to_owned(),
            key_type,
            known,
            next: Instant::now() + watch.every,
        };
        if !watching.known.is_empty() {
            let dropped = processor.set_erasures(Arc::new(watching.known.clone()))?;
            metrics.erased_states.inc_by(dropped as u64);
            tracing::info!(
                entities = watching.known.len(),
                states_dropped = dropped,
                ledger = watching.watch.ledger.location(),
                "honouring erasures"
            );
        }
        Ok(watching)
    }

    /// When due, reads the erasures recorded since the last look and hands them to
    /// `processor`; returns whether any state was dropped (the round then has a change
    /// to checkpoint). A failed read is counted and retried at the next look: the
    /// erasures known so far stay in force.
    pub(crate) fn poll(
        &mut self,
        io: &Handle,
        processor: &mut ShardedProcessor,
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
        let new = lockstep_erasure::boundary(&fresh, &self.group, &self.version, &self.key_type);
        if new.is_empty() {
            return Ok(false);
        }
        self.known.extend(&new);
        let dropped = processor.set_erasures(Arc::new(self.known.clone()))?;
        metrics.erased_states.inc_by(dropped as u64);
        tracing::info!(
            entities = new.len(),
            states_dropped = dropped,
            "erasure picked up while running"
        );
        Ok(true)
    }
}
