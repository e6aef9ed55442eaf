//! Redis stopped, then frozen (SIGSTOP), under load: every request still answers
//! within the timeout plus a small margin, tagged degraded, and the service recovers by
//! itself once Redis is back.

mod common;

use common::*;
use lockstep_cache::RedisCache;
use lockstep_client::api::{FeatureRequest, Source};
use lockstep_online::OnlineStore;
use lockstep_serving::{BreakerConfig, FeatureServer, ServeConfig};
use lockstep_testkit::Redis;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answered request: when it started, how long it took, whether degraded, and
/// whether every value was the store's or the default.
struct Sample {
    at: Instant,
    took: Duration,
    degraded: bool,
    sources: Vec<Source>,
}

const TIMEOUT: Duration = Duration::from_millis(20);
/// Scheduling on a loaded 2-core machine, in a debug build.
const MARGIN: Duration = Duration::from_millis(30);

#[test]
fn stopped_or_frozen_redis_degrades_every_answer_in_time_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(embedded(dir.path(), 1000));
    let mut redis = Redis::start(&[]);
    let rt = runtime();
    let server = rt.block_on(async {
        let cache = RedisCache::connect(&redis.url(), None, Duration::from_secs(1))
            .await
            .unwrap();
        let config = ServeConfig {
            timeout: TIMEOUT,
            cache_breaker: BreakerConfig {
                failures: 3,
                open_for: Duration::from_millis(300),
                ..BreakerConfig::default()
            },
            ..ServeConfig::default()
        };
        FeatureServer::new(vec![served()], store, Some(cache), config).unwrap()
    });
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for worker in 0..4u64 {
        let (server, samples, stop) = (server.clone(), samples.clone(), stop.clone());
        rt.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(worker);
            while !stop.load(Ordering::Relaxed) {
                let keys: Vec<String> = (0..10)
                    .map(|_| format!("card-{}", rng.usize(0..1000)))
                    .collect();
                let at = Instant::now();
                let answer = server
                    .get(&FeatureRequest::new("card_stats", keys))
                    .await
                    .unwrap();
                let took = at.elapsed();
                samples.lock().unwrap().push(Sample {
                    at,
                    took,
                    degraded: answer.degraded,
                    sources: answer.entities.iter().map(|e| e.source).collect(),
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let phase = |d: Duration| {
        let start = Instant::now();
        std::thread::sleep(d);
        (start, Instant::now())
    };
    let recovered_after = |since: Instant| -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let samples = samples.lock().unwrap();
            // Recovered: the last 20 answers came from the cache or the store.
            let recent: Vec<&Sample> = samples
                .iter()
                .rev()
                .take(20)
                .filter(|s| s.at > since)
                .collect();
            if recent.len() == 20 && recent.iter().all(|s| !s.degraded) {
                return Some(recent.last().unwrap().at - since);
            }
        }
        None
    };

    let normal = phase(Duration::from_secs(1));
    redis.stop();
    let stopped = phase(Duration::from_millis(1500));
    redis.restart();
    let back = Instant::now();
    let first_recovery = recovered_after(back).expect("recovers after a restart within 10 s");
    redis.freeze();
    let frozen = phase(Duration::from_millis(1500));
    redis.thaw();
    let thawed = Instant::now();
    let second_recovery = recovered_after(thawed).expect("recovers after a thaw within 10 s");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));

    let samples = samples.lock().unwrap();
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    // A phase's requests: those that started once it had settled and whose deadline
    // passed before it ended (one started just before a thaw may be answered after it).
    let within = |(from, to): (Instant, Instant), settle: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.at >= from + settle && s.at + TIMEOUT + MARGIN < to)
            .collect()
    };
    let normal = within(normal, Duration::from_millis(200));
    let stopped = within(stopped, Duration::from_millis(50));
    let frozen = within(frozen, Duration::from_millis(50));
    let degraded = |v: &[&Sample]| v.iter().filter(|s| s.degraded).count();
    println!(
        "{} requests; slowest {slowest:?}; normal {} ({} degraded); stopped {} ({} degraded); \
         recovered {first_recovery:?} after restart; frozen {} ({} degraded); recovered \
         {second_recovery:?} after thaw",
        samples.len(),
        normal.len(),
        degraded(&normal),
        stopped.len(),
        degraded(&stopped),
        frozen.len(),
        degraded(&frozen),
    );
    assert!(
        slowest <= TIMEOUT + MARGIN,
        "a request took {slowest:?}, beyond the {TIMEOUT:?} timeout plus {MARGIN:?}"
    );
    assert!(normal.len() > 50 && stopped.len() > 50 && frozen.len() > 50);
    assert!(
        degraded(&normal) * 20 <= normal.len(),
        "a healthy cache degrades at most 5% of answers on a loaded test machine"
    );
    for outage in [&stopped, &frozen] {
        assert_eq!(
            degraded(outage),
            outage.len(),
            "every answer in an outage is degraded"
        );
        assert!(
            outage
                .iter()
                .all(|s| s.sources.iter().all(|&src| src == Source::Default))
        );
    }
    // After the restart the cache was empty: values came from the store, then the cache.
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at > back).collect();
    assert!(after.iter().any(|s| s.sources.contains(&Source::Store)));
    assert!(after.iter().any(|s| s.sources.contains(&Source::Cache)));
    let m = server.metrics().encode();
    assert!(m.contains("lockstep_serve_degraded_responses_total"), "{m}");
    assert!(m.contains("backend=\"cache\""), "{m}");
}
