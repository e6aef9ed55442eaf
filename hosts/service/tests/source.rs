//! The service behind its `Source` seam: records held in memory (no network), the real
//! component, a real embedded store. The runs are awaited from a single-threaded
//! runtime, so nothing here relies on spare worker threads: the rounds run on a
//! blocking thread and every read and write is awaited on the caller's runtime.

use async_trait::async_trait;
use lockstep_online::{EmbeddedStore, GroupRef};
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use lockstep_service::source::{ShardEvent, ShardInfo, ShardRecord};
use lockstep_service::{MemorySource, Resume, ServiceConfig, ServiceError, Source, StreamService};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir)
}

fn plugin() -> Plugin {
    let built = lockstep_build::build(
        &repo("plugins").join("txn_velocity"),
        &lockstep_build::BuildOptions::default(),
    )
    .expect("build");
    Runtime::new(RuntimeConfig::default())
        .expect("runtime")
        .load_file(&built.path)
        .expect("load")
}

/// The golden events on two shards by card, as Kinesis puts them.
fn shards() -> Vec<(ShardInfo, Vec<ShardRecord>)> {
    let text = std::fs::read_to_string(repo("golden").join("txn_velocity/events.jsonl"))
        .expect("golden events");
    MemorySource::shards_by_hash(
        2,
        text.lines().enumerate().map(|(i, line)| {
            let event: serde_json::Value = serde_json::from_str(line).expect("json");
            let card = event["card_id"].as_str().expect("card").to_owned();
            (i as u64, card, line.as_bytes().to_vec())
        }),
    )
}

fn service(plugin: &Plugin, state: &Path) -> StreamService {
    let store = EmbeddedStore::open(state.join("online")).expect("store");
    let mut config = ServiceConfig::new("in-memory", state.join("state"));
    config.stop_when_idle = true;
    config.drain_on_stop = true;
    config.handle_signals = false;
    config.idle_poll = std::time::Duration::from_millis(5);
    config.round_records = 500;
    let group = GroupRef::of(plugin.manifest(), plugin.hash());
    StreamService::new(plugin.clone(), Arc::new(store), group, config)
}

fn memory(resume: Resume, per_round: usize) -> Box<dyn Source> {
    Box::new(MemorySource::new(shards(), &resume, per_round))
}

fn lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// A source that fails every `every`-th read (after the first), then reads on.
struct Flaky {
    inner: Box<dyn Source>,
    reads: Arc<AtomicUsize>,
    every: usize,
}

#[async_trait]
impl Source for Flaky {
    async fn poll(&mut self) -> Result<Vec<ShardEvent>, ServiceError> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        if n > 0 && n.is_multiple_of(self.every) {
            // A read that takes a while and fails, as a network read does.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            return Err(ServiceError::Start(format!("read {n} failed on purpose")));
        }
        self.inner.poll().await
    }

    fn caught_up(&self) -> bool {
        self.inner.caught_up()
    }
}

#[tokio::test]
async fn a_run_from_memory_writes_every_row_once_and_a_second_run_resumes_with_nothing_to_do() {
    let plugin = plugin();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = service(&plugin, dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), |resume| async move {
            Ok(memory(resume, 300))
        })
        .await
        .expect("first run");
    assert_eq!(first.stats.records, 3_461, "every golden event read");
    assert!(first.stats.rows > 3_000, "rows: {}", first.stats.rows);
    assert!(first.commits > 1, "several rounds: {}", first.commits);
    assert!(!first.resumed);
    let rows = lines(&first.rows_log);
    assert_eq!(rows.len() as u64, first.stats.rows);

    // The checkpoint names the last record of each shard: nothing is read again.
    let second = service(&plugin, dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), |resume| async move {
            assert_eq!(resume.positions.len(), 2, "both shards' positions");
            Ok(memory(resume, 300))
        })
        .await
        .expect("second run");
    assert!(second.resumed);
    assert_eq!(second.stats.records, 0);
    assert_eq!(lines(&second.rows_log), rows, "no row written twice");
}

#[tokio::test]
async fn failed_reads_are_retried_and_change_nothing_but_a_first_read_that_fails_is_an_error() {
    let plugin = plugin();
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let clean = service(&plugin, clean_dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), |resume| async move {
            Ok(memory(resume, 200))
        })
        .await
        .expect("clean run");

    let flaky_dir = tempfile::tempdir().expect("tempdir");
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    let flaky = service(&plugin, flaky_dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), move |resume| async move {
            Ok(Box::new(Flaky {
                inner: memory(resume, 200),
                reads: counted,
                every: 3,
            }) as Box<dyn Source>)
        })
        .await
        .expect("a run with failing reads");
    assert!(
        reads.load(Ordering::SeqCst) >= 9,
        "reads failed and were retried: {}",
        reads.load(Ordering::SeqCst)
    );
    assert_eq!(flaky.stats.records, clean.stats.records);
    assert_eq!(lines(&flaky.rows_log), lines(&clean.rows_log));

    // Nothing read yet: a wrong stream or endpoint, reported instead of retried.
    let never_dir = tempfile::tempdir().expect("tempdir");
    struct Broken;
    #[async_trait]
    impl Source for Broken {
        async fn poll(&mut self) -> Result<Vec<ShardEvent>, ServiceError> {
            Err(ServiceError::Start("no such stream".into()))
        }
        fn caught_up(&self) -> bool {
            false
        }
    }
    let error = service(&plugin, never_dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), |_| async move {
            Ok(Box::new(Broken) as Box<dyn Source>)
        })
        .await
        .expect_err("a source that never reads");
    assert!(error.to_string().contains("no such stream"), "{error}");

    // A source that cannot be opened at all is the run's error too.
    let unopened_dir = tempfile::tempdir().expect("tempdir");
    let unopened = service(&plugin, unopened_dir.path())
        .run_from(Arc::new(AtomicBool::new(false)), |_| async move {
            Err::<Box<dyn Source>, _>(ServiceError::Start("cannot connect".into()))
        })
        .await
        .expect_err("a source that cannot open");
    assert!(
        unopened.to_string().contains("cannot connect"),
        "{unopened}"
    );
}
