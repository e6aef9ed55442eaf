//! Put-to-visible latency of the stream host: events put to Kinesis (a moto server on
//! loopback) at a fixed rate, read by the service, applied by `txn_velocity`, written
//! to the embedded store and through to Redis (a real redis-server); each event is
//! timed from the moment the producer makes it to the moment its row is in Redis. The
//! producer keeps order as `put_ordered` requires (one PutRecords in flight, carrying
//! every event made since the last one), so time spent waiting behind a slow put is
//! counted. Events never seen count as infinitely late.
//!
//! Where the time goes is reported beside the percentiles: the PutRecords round trip,
//! the allowed lateness (an event is applied once the watermark passes it), the tip
//! read interval and the service's write-and-commit time per round.
//!
//! Usage: `cargo run --release -p lockstep-bench --bin stream-latency -- [RATE/s]
//! [SECONDS] [LATENESS_MS] [IDLE_POLL_MS] [TIP_READ_MS]` (defaults 2000, 20, 200, 100,
//! 200: the service's default, Kinesis' five reads per second per shard).

use lockstep_bench::{arg, txn_velocity};
use lockstep_cache::{RedisCache, cache_key};
use lockstep_kinesis::{Kinesis, KinesisOptions};
use lockstep_online::{EmbeddedStore, GroupRef};
use lockstep_service::{ServiceConfig, StreamService};
use lockstep_stream::StreamConfig;
use lockstep_testkit::{Moto, Redis};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An event made by the producer: card, event time, when it was made.
type Made = (String, i64, Instant);

/// An event waiting to be seen: card, event time, when it was made and when its put
/// was acknowledged.
type Waiting = (String, i64, Instant, Instant);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `lockstep` does: the service measured as it runs.
    lockstep_service::tune_allocator();
    let rate = arg(1, 2_000);
    let seconds = arg(2, 20);
    let lateness_ms = arg(3, 200);
    // Events are made every tick; at most one PutRecords call per tick while puts keep
    // up. moto (one Python process) scans a shard's every record on each put and each
    // read, so it slows as the stream grows and as it is polled.
    let tick = Duration::from_millis(50);
    let per_tick = (rate / 20).max(1) as usize;
    let idle_poll = Duration::from_millis(arg(4, 100));
    let tip_read = Duration::from_millis(arg(5, 200));

    let moto = Moto::start();
    let redis = Redis::start(&[]);
    let work = tempfile::tempdir()?;
    let plugin = txn_velocity(work.path())?;
    let m = plugin.manifest().clone();
    let group = GroupRef::of(&m, plugin.hash());

    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = KinesisOptions {
        endpoint: Some(moto.endpoint()),
        region: Some("us-east-1".into()),
        credentials: Some(("testing".into(), "testing".into())),
    };
    let kinesis = io.block_on(Kinesis::connect(&options));
    io.block_on(kinesis.create_stream("latency", 2))?;
    io.block_on(kinesis.wait_active("latency"))?;
    let cache = io.block_on(RedisCache::connect(
        &redis.url(),
        None,
        Duration::from_secs(5),
    ))?;

    // The service, in this process, on its own thread.
    let mut config = ServiceConfig::new("latency", work.path().join("state"));
    config.kinesis = options.clone();
    config.stream_config = StreamConfig {
        allowed_lateness: lateness_ms as i64 * 1000,
        ..StreamConfig::default()
    };
    config.idle_poll = idle_poll;
    config.tip_read_interval = tip_read;
    config.handle_signals = false;
    config.cache = Some((redis.url(), None));
    let store = Arc::new(EmbeddedStore::open(work.path().join("online"))?);
    let service = StreamService::new(plugin.clone(), store, group.clone(), config);
    let stop = Arc::new(AtomicBool::new(false));
    let service_stop = stop.clone();
    // The service's I/O runtime: reads, writes and its HTTP endpoints.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let service_task = io.spawn(async move { service.run(service_stop).await });

    println!(
        "stream-latency: {rate} events/s for {seconds} s through moto Kinesis (2 shards) into Redis; \
         allowed lateness {lateness_ms} ms, idle poll {} ms, a shard at its tip read every {} ms",
        idle_poll.as_millis(),
        tip_read.as_millis()
    );
    // Producer, as a Kinesis producer that keeps order (one PutRecords in flight, as
    // `put_ordered` requires): every tick makes `per_tick` events stamped with the time
    // they were made; a sender puts everything made so far, waits for the answer, and
    // goes again. A slow put delays the events behind it, and that delay is measured:
    // latency runs from an event's making, not from its put.
    let pending: Arc<Mutex<VecDeque<Waiting>>> = Arc::default();
    let put_times: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (made_tx, mut made_rx) =
        tokio::sync::mpsc::unbounded_channel::<(Vec<(String, Vec<u8>)>, Vec<Made>, bool)>();
    let generator = io.spawn(async move {
        let started = Instant::now();
        let mut n = 0u64;
        let mut measured_events = 0u64;
        let mut next = started;
        // A tail after the measured window keeps the watermark moving past the last
        // measured events, as a live stream would.
        let measured = Duration::from_secs(seconds);
        let tail = Duration::from_millis(lateness_ms + 1_000);
        while started.elapsed() < measured + tail {
            let measure = started.elapsed() < measured;
            tokio::time::sleep_until(next.into()).await;
            next += tick;
            let made = Instant::now();
            let ts = now_micros();
            let mut records = Vec::with_capacity(per_tick);
            let mut sent = Vec::with_capacity(per_tick);
            for _ in 0..per_tick {
                let card = format!("card-{:05}", n % 5_000);
                let line = format!(
                    r#"{{"card_id":"{card}","ts":{ts},"amount":{}.25,"merchant":"m-{}","txn_id":"t-{n}"}}"#,
                    n % 97,
                    n % 13
                );
                records.push((card.clone(), line.into_bytes()));
                sent.push((card, ts, made));
                n += 1;
            }
            if measure {
                measured_events += sent.len() as u64;
            }
            if made_tx.send((records, sent, measure)).is_err() {
                break;
            }
        }
        (n, measured_events)
    });
    let producer = {
        let pending = pending.clone();
        let put_times = put_times.clone();
        let kinesis = kinesis.clone();
        io.spawn(async move {
            while let Some(first) = made_rx.recv().await {
                let mut ticks = vec![first];
                while let Ok(more) = made_rx.try_recv() {
                    ticks.push(more);
                }
                let records: Vec<(String, Vec<u8>)> = ticks
                    .iter_mut()
                    .flat_map(|(r, _, _)| std::mem::take(r))
                    .collect();
                let issued = Instant::now();
                // A put that fails after its retries ends the run: its events would
                // otherwise vanish from the figures.
                kinesis.put_ordered("latency", &records).await?;
                put_times
                    .lock()
                    .map(|mut p| p.push(issued.elapsed().as_secs_f64() * 1000.0))
                    .ok();
                let acked = Instant::now();
                if let Ok(mut p) = pending.lock() {
                    for (_, sent, measure) in ticks {
                        if measure {
                            p.extend(sent.into_iter().map(|(c, t, m)| (c, t, m, acked)));
                        }
                    }
                }
            }
            Ok::<(), lockstep_kinesis::KinesisError>(())
        })
    };

    // Watcher: an event is visible once its card's cached row has its event time.
    let mut latencies = Vec::new();
    // From the put's acknowledgement: the stream host's share, without the ingestion.
    let mut from_ack = Vec::new();
    let mut never = 0usize;
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    loop {
        let batch: Vec<Waiting> = pending
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        // The producer ends only after the generator, having put all it made.
        let finished = producer.is_finished();
        if batch.is_empty() && finished {
            break;
        }
        let keys: Vec<String> = batch
            .iter()
            .map(|(card, _, _, _)| cache_key(&group.id(), card))
            .collect();
        let cached = io.block_on(cache.get(&keys))?;
        let mut again = Vec::new();
        for ((card, ts, issued, acked), got) in batch.into_iter().zip(cached) {
            match got {
                Some((t, _)) if t >= ts => {
                    latencies.push(issued.elapsed().as_secs_f64() * 1000.0);
                    from_ack.push(acked.elapsed().as_secs_f64() * 1000.0);
                }
                _ => again.push((card, ts, issued, acked)),
            }
        }
        if Instant::now() > deadline {
            // Counted as never seen: they sit at the top of the percentiles.
            println!(
                "{} events never became visible (late: delivered more than the allowed lateness out of order)",
                again.len()
            );
            never = again.len();
            latencies.extend(std::iter::repeat_n(f64::INFINITY, never));
            from_ack.extend(std::iter::repeat_n(f64::INFINITY, never));
            break;
        }
        if let Ok(mut p) = pending.lock() {
            for item in again.into_iter().rev() {
                p.push_front(item);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (produced, measured) = io.block_on(generator)?;
    io.block_on(producer)??;
    stop.store(true, Ordering::SeqCst);
    let summary = io.block_on(service_task)??;

    latencies.sort_by(f64::total_cmp);
    from_ack.sort_by(f64::total_cmp);
    let mut puts = put_times.lock().map(|p| p.clone()).unwrap_or_default();
    puts.sort_by(f64::total_cmp);
    println!(
        "{produced} events put ({measured} measured), {} seen in Redis; put-to-visible ms: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
        latencies.len() - never,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "acknowledged-to-visible ms (the stream host's share): p50 {:.0}  p90 {:.0}  p99 {:.0}",
        percentile(&from_ack, 0.50),
        percentile(&from_ack, 0.90),
        percentile(&from_ack, 0.99)
    );
    println!(
        "where the time goes: PutRecords round trip p50 {:.0} ms / p99 {:.0} ms; allowed lateness {lateness_ms} ms \
         (an event waits until a later one moves the watermark past it); a shard at its tip \
         read every {} ms; write + commit {:.1} ms per round over {} rounds (store, Redis, logs, checkpoint)",
        percentile(&puts, 0.5),
        percentile(&puts, 0.99),
        tip_read.as_millis(),
        summary.commit_seconds * 1000.0 / summary.commits.max(1) as f64,
        summary.commits
    );
    Ok(())
}
