//! The Kinesis client against a real (moto) server: ordered puts, reading every shard,
//! and a split mid-stream read parent first, nothing lost or repeated.

use lockstep_kinesis::{Kinesis, KinesisOptions, LineageReader, ShardEvent};
use lockstep_testkit::{ACCESS_KEY, Moto, REGION, SECRET_KEY};
use std::collections::HashMap;

async fn client(moto: &Moto) -> Kinesis {
    Kinesis::connect(&KinesisOptions {
        endpoint: Some(moto.endpoint()),
        region: Some(REGION.into()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    })
    .await
}

/// Reads until every shard is caught up; returns the events seen.
async fn read_all(reader: &mut LineageReader) -> Vec<ShardEvent> {
    let mut events = Vec::new();
    for _ in 0..200 {
        let round = reader.poll(1_000).await.expect("poll");
        let quiet = round.is_empty();
        events.extend(round);
        if quiet && reader.caught_up() {
            break;
        }
    }
    events
}

fn records(n: usize, keys: usize, offset: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let key = format!("entity-{}", (i * 7) % keys);
            (key.clone(), format!("{key}:{}", offset + i).into_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_mid_stream_is_read_parent_first_with_nothing_lost_or_repeated() {
    let moto = Moto::start();
    let kinesis = client(&moto).await;
    kinesis.create_stream("events", 1).await.expect("create");
    let before = records(700, 40, 0);
    kinesis.put_ordered("events", &before).await.expect("put");

    let shards = kinesis.list_shards("events").await.expect("list");
    assert_eq!(shards.len(), 1);
    let root = shards[0].clone();
    assert_eq!(root.hash_range, (0, u128::MAX));
    kinesis
        .split("events", &root.id, u128::MAX / 2 + 1)
        .await
        .expect("split");
    let after = records(900, 40, 700);
    kinesis.put_ordered("events", &after).await.expect("put");

    let mut reader = LineageReader::new(&kinesis, "events");
    let events = read_all(&mut reader).await;

    // The parent opens, ends, and only then do its two children open.
    let parent_end = events
        .iter()
        .position(|e| matches!(e, ShardEvent::Ended(id) if *id == root.id))
        .expect("the parent ends");
    let children: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, ShardEvent::Opened(s) if s.parents.contains(&root.id)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(children.len(), 2, "{events:?}");
    assert!(children.iter().all(|&c| c > parent_end));

    // Every record once, and each partition key's records in the order put.
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut total = 0;
    for e in &events {
        if let ShardEvent::Records(_, records) = e {
            for r in records {
                let text = String::from_utf8(r.data.clone()).expect("utf-8");
                let (key, n) = text.split_once(':').expect("key:n");
                assert_eq!(key, r.partition_key);
                seen.entry(key.to_owned())
                    .or_default()
                    .push(n.parse().expect("number"));
                total += 1;
            }
        }
    }
    assert_eq!(total, 1_600, "lost or repeated records");
    for (key, ns) in &seen {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_a_clear_error() {
    let moto = Moto::start();
    let kinesis = client(&moto).await;
    let err = kinesis
        .list_shards("no-such-stream")
        .await
        .expect_err("no stream")
        .to_string();
    assert!(
        err.contains("ListShards") && err.contains("no-such-stream"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_at_its_tip_is_read_once_per_interval_and_a_shard_behind_at_once() {
    let moto = Moto::start();
    let kinesis = client(&moto).await;
    kinesis.create_stream("paced", 2).await.expect("create");
    // One partition key: every record in one shard, the other shard empty.
    let one_key: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| ("entity".to_owned(), format!("entity:{i}").into_bytes()))
        .collect();
    kinesis.put_ordered("paced", &one_key).await.expect("put");

    // The empty shard is at its tip from the first read; the other is behind (10 of
    // 30 per read) and is read on at once, even with a long interval.
    let interval = std::time::Duration::from_secs(5);
    let mut reader = LineageReader::new(&kinesis, "paced").with_tip_interval(interval);
    let started = std::time::Instant::now();
    let mut read = 0;
    while read < 30 {
        for event in reader.poll(10).await.expect("poll") {
            if let ShardEvent::Records(_, batch) = event {
                read += batch.len();
            }
        }
    }
    assert_eq!(read, 30);
    assert!(
        started.elapsed() < interval,
        "a shard behind its tip waited for the tip interval ({:?})",
        started.elapsed()
    );

    // Every shard at its tip: each further poll waits for the interval.
    let interval = std::time::Duration::from_millis(300);
    let mut reader = LineageReader::new(&kinesis, "paced").with_tip_interval(interval);
    let started = std::time::Instant::now();
    let first = reader.poll(1_000).await.expect("poll");
    assert!(
        first
            .iter()
            .any(|e| matches!(e, ShardEvent::Records(_, r) if r.len() == 30))
    );
    for _ in 0..3 {
        reader.poll(1_000).await.expect("poll");
    }
    assert!(
        started.elapsed() >= interval * 3,
        "three reads at the tip took only {:?}",
        started.elapsed()
    );
}

/// An endpoint that takes connections and never answers (as behind a partition): a
/// call gives up with a timeout instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    // Holds every connection open, reading nothing and answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let kinesis = Kinesis::connect_with_timeout(
        &KinesisOptions {
            endpoint: Some(endpoint),
            region: Some(REGION.into()),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        },
        std::time::Duration::from_millis(300),
    )
    .await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        kinesis.describe("silent"),
    )
    .await
    .expect("the call gave up by itself, well within a minute");
    let err = outcome.expect_err("nothing answered");
    assert!(
        err.to_string().to_lowercase().contains("timeout")
            || err.to_string().to_lowercase().contains("timed out"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
