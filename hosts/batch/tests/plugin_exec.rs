//! `PluginExec` as a plan node: rebuilt from its serialised configuration it computes
//! what the reference executor computes, and it refuses other component bytes.

use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use lockstep_batch::{PluginExec, PluginNodeConfig};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::key::StateMap;
use lockstep_core::order::with_order_columns;
use lockstep_core::rows::row_json;
use lockstep_executor::Executor;
use lockstep_runtime::{Runtime, RuntimeConfig};
use std::path::Path;
use std::sync::Arc;

fn json_rows(batches: &[arrow_array::RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| serde_json::Value::Object(row_json(b, r)).to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rebuilt_from_its_bytes_computes_what_the_executor_computes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
    let built = lockstep_build::build(&dir, &Default::default()).expect("build plugin");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = runtime.load_file(&built.path).expect("load");
    let m = plugin.manifest().clone();

    let events = decode_json_lines(
        &lockstep_gen::transactions(4_000, 60, 5).to_json_lines(),
        &m,
        None,
    )
    .expect("decode");
    let reference = Executor::new(&plugin)
        .expect("executor")
        .run_to_end(&events, &mut StateMap::default())
        .expect("run");

    // The node's input: one partition, sorted as the batch host sorts.
    let ordered = with_order_columns(&events, &m).expect("order columns");
    let schema = ordered.schema();
    let sort: Vec<SortColumn> = lockstep_core::order::sort_columns(&m)
        .into_iter()
        .map(|name| SortColumn {
            values: ordered
                .column(schema.index_of(name).expect("column"))
                .clone(),
            options: Some(datafusion::arrow::compute::SortOptions {
                descending: false,
                nulls_first: false,
            }),
        })
        .collect();
    let indices = lexsort_to_indices(&sort, None).expect("sort");
    let sorted = take_record_batch(&ordered, &indices).expect("take");
    // Three batches: entities span batch boundaries.
    let third = sorted.num_rows() / 3;
    let input: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
        &[vec![
            sorted.slice(0, third),
            sorted.slice(third, third),
            sorted.slice(2 * third, sorted.num_rows() - 2 * third),
        ]],
        schema.clone(),
        None,
    )
    .expect("memory source");

    // The end of the input, known before the job here: it travels with the node.
    let end = lockstep_core::order::latest_event_time(&events, &m)
        .expect("times")
        .expect("events");
    let original = PluginExec::new(
        plugin.clone(),
        built.path.to_string_lossy().into_owned(),
        true,
        input.clone(),
    )
    .expect("node")
    .with_fire_until(lockstep_batch::FireUntil::At(end));
    let bytes = original.config().to_bytes();
    let config = PluginNodeConfig::from_bytes(&bytes).expect("config from bytes");
    assert_eq!(&config, original.config());

    // Another runtime stands in for another machine.
    let elsewhere = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let node = Arc::new(
        PluginExec::from_config(config.clone(), &elsewhere, input.clone()).expect("rebuilt"),
    );
    let mut stream = node
        .execute(0, SessionContext::new().task_ctx())
        .expect("execute");
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        rows.push(batch.expect("rows"));
    }
    assert_eq!(
        json_rows(&rows),
        json_rows(std::slice::from_ref(&reference.rows))
    );
    let finished = node.finished();
    assert_eq!(finished.partitions, 1);
    assert_eq!(
        finished.stats.events_applied,
        reference.stats.events_applied
    );
    assert_eq!(finished.stats.duplicates, reference.stats.duplicates);
    assert_eq!(finished.states.len(), reference.stats.entities);

    // The plan names the node and the component it runs.
    let shown = datafusion::physical_plan::displayable(node.as_ref())
        .one_line()
        .to_string();
    assert!(shown.contains("PluginExec: txn_velocity"), "{shown}");

    // Other bytes under the configured location are refused, naming both hashes.
    let mut forged = config.clone();
    forged.component_hash = "0".repeat(64);
    let err = PluginExec::from_config(forged, &elsewhere, input.clone())
        .expect_err("a different hash must be refused")
        .to_string();
    assert!(
        err.contains("is not the plan's plugin") && err.contains(plugin.hash()),
        "{err}"
    );
    assert!(matches!(
        PluginNodeConfig::from_bytes(b"{not json"),
        Err(lockstep_batch::BatchError::NodeConfig(_))
    ));

    // A component that is not where the plan says: the error names the location and
    // keeps the loader's reason as its source.
    let mut moved = config.clone();
    moved.component = "/nowhere/txn_velocity.wasm".into();
    let err = PluginExec::from_config(moved, &elsewhere, input.clone())
        .expect_err("a missing component must be refused");
    assert!(
        matches!(&err, lockstep_batch::BatchError::Component { component, .. } if component == "/nowhere/txn_velocity.wasm"),
        "{err:?}"
    );
    let reason = std::error::Error::source(&err)
        .expect("the loader's error")
        .to_string();
    assert!(reason.contains("/nowhere/txn_velocity.wasm"), "{reason}");
}
