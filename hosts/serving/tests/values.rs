//! Values served equal the online store's, with their sources and versions: through
//! featurestore-local and a real redis-server, a 3-node Redis Cluster, and HTTP.

mod common;

use common::*;
use lockstep_cache::RedisCache;
use lockstep_client::api::{FeatureRequest, FeatureResponse, Source};
use lockstep_online::OnlineStore;
use lockstep_serving::FeatureServer;
use lockstep_testkit::{Redis, RedisCluster};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;

/// What the store holds for `keys`, as the feature values in manifest order.
async fn stored(store: &dyn OnlineStore, keys: &[String]) -> Vec<Option<(i64, Vec<Json>)>> {
    let features = served().features;
    store
        .get(&group(), keys)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            r.map(|r| {
                (
                    r.event_time,
                    features
                        .iter()
                        .map(|f| r.row.get(f).cloned().unwrap_or(Json::Null))
                        .collect(),
                )
            })
        })
        .collect()
}

/// Checks `answer` against the store; returns how many entities had a record.
async fn check_against_store(
    answer: &FeatureResponse,
    store: &dyn OnlineStore,
    keys: &[String],
    source: Source,
) -> usize {
    let mut found = 0;
    assert_eq!(answer.group, "card_stats");
    assert_eq!(answer.version, "1.2.0");
    assert!(!answer.degraded);
    assert_eq!(answer.features, served().features);
    let expected = stored(store, keys).await;
    assert_eq!(answer.entities.len(), keys.len());
    for ((entity, key), expected) in answer.entities.iter().zip(keys).zip(expected) {
        assert_eq!(&entity.entity, key);
        match expected {
            Some((event_time, values)) => {
                found += 1;
                assert_eq!(entity.source, source, "{key}");
                assert_eq!(entity.values, values, "{key}");
                assert_eq!(entity.plugin_hash.as_deref(), Some(HASH));
                assert_eq!(
                    entity.event_time.as_deref(),
                    lockstep_core::rows::format_timestamp(event_time).as_str()
                );
            }
            None => {
                assert_eq!(entity.source, Source::Missing, "{key}");
                assert_eq!(
                    entity.values,
                    vec![json!(0.0), json!(0), json!(false), json!("unknown")]
                );
                assert_eq!(entity.plugin_hash, None);
            }
        }
    }
    found
}

#[test]
fn misses_come_from_featurestore_local_then_from_redis_with_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = LocalEndpoint::start(embedded(dir.path(), 0));
    let redis = Redis::start(&[]);
    let client = endpoint.client();
    // Written through the SageMaker runtime API, as the stream host does.
    client.put(&group(), &rows(0, 200), T0).now().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(client);
    let rt = runtime();
    rt.block_on(async {
        let cache = RedisCache::connect(
            &redis.url(),
            Some(Duration::from_secs(60)),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        let server =
            FeatureServer::new(vec![served()], store.clone(), Some(cache), generous()).unwrap();
        // Values of every kind: infinities, nulls, negative and non-ASCII.
        let mut keys: Vec<String> = [0, 7, 11, 12, 77, 199]
            .iter()
            .map(|i| format!("card-{i}"))
            .collect();
        keys.push("card-nobody".into());
        keys.push("card-7".into());
        let request = FeatureRequest::new("card_stats", keys.clone());
        let first = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&first, store.as_ref(), &keys, Source::Store).await,
            keys.len() - 1
        );
        assert_eq!(
            first.entities[0].values[0],
            json!("Infinity"),
            "{:?}",
            first.entities[0]
        );
        assert_eq!(first.entities[1].values[3], Json::Null);
        // Written back: the next read hits the cache, with the same values.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&second, store.as_ref(), &keys, Source::Cache).await,
            keys.len() - 1
        );
        let m = server.metrics().encode();
        assert!(m.contains("lockstep_serve_cache_hits_total 7"), "{m}");
        assert!(m.contains("lockstep_serve_missing_entities_total 2"), "{m}");
        // Features chosen and ordered by the caller; a version named.
        let some = server
            .get(
                &FeatureRequest::new("card_stats", ["card-12"])
                    .features(["merchant", "spend"])
                    .version("1.2.0"),
            )
            .await
            .unwrap()
            .parsed();
        assert_eq!(some.features, vec!["merchant", "spend"]);
        assert_eq!(
            some.entities[0].values,
            vec![json!("m-12-é"), json!(12.0 * 0.1 + 1e-9)]
        );
    });
}

#[test]
fn a_redis_cluster_serves_the_same_values_as_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(embedded(dir.path(), 500));
    let cluster = RedisCluster::start(3, &[]);
    let rt = runtime();
    rt.block_on(async {
        let cache = RedisCache::connect(&cluster.url(), None, Duration::from_secs(2))
            .await
            .unwrap();
        let server =
            FeatureServer::new(vec![served()], store.clone(), Some(cache), generous()).unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("card-{}", i * 5)).collect();
        let request = FeatureRequest::new("card_stats", keys.clone());
        let first = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&first, store.as_ref(), &keys, Source::Store).await,
            100
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&second, store.as_ref(), &keys, Source::Cache).await,
            100
        );
    });
    // The entries spread over the nodes.
    for node in cluster.nodes() {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &node.port().to_string(), "dbsize"])
            .output()
            .unwrap();
        let size: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(
            size > 10,
            "node {} holds {size} of 100 entries",
            node.port()
        );
    }
}

#[test]
fn http_clients_and_feast_clients_read_the_same_values_and_bad_requests_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(embedded(dir.path(), 50));
    let rt = runtime();
    rt.block_on(async {
        let server = FeatureServer::new(vec![served()], store.clone(), None, generous()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(lockstep_serving::http::serve(
            listener,
            server,
            std::future::pending(),
        ));
        let client = lockstep_client::Client::new(&base).unwrap();
        let keys: Vec<String> = vec!["card-3".into(), "card-44".into(), "ghost".into()];
        let answer = client
            .get_features(&FeatureRequest::new("card_stats", keys.clone()))
            .await
            .unwrap();
        assert_eq!(
            check_against_store(&answer, store.as_ref(), &keys, Source::Store).await,
            2
        );

        // Refusals name the problem.
        let refused = |request: FeatureRequest| {
            let client = client.clone();
            async move { client.get_features(&request).await.unwrap_err().to_string() }
        };
        let e = refused(FeatureRequest::new("nope", ["a"])).await;
        assert!(
            e.contains("HTTP 404") && e.contains("`nope` is not served"),
            "{e}"
        );
        let e = refused(FeatureRequest::new("card_stats", ["a"]).version("9.9.9")).await;
        assert!(e.contains("at version 9.9.9"), "{e}");
        let e =
            refused(FeatureRequest::new("card_stats", ["a"]).features(["spend", "speed"])).await;
        assert!(
            e.contains("HTTP 400") && e.contains("no feature `speed`"),
            "{e}"
        );
        let e = refused(FeatureRequest::new(
            "card_stats",
            (0..1001).map(|i| format!("c{i}")),
        ))
        .await;
        assert!(
            e.contains("1001 entities") && e.contains("at most 1000"),
            "{e}"
        );
        let e = refused(FeatureRequest::new("card_stats", [""])).await;
        assert!(e.contains("empty key"), "{e}");

        let http = reqwest::Client::new();
        let post = |path: &str, body: String| {
            let request = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body);
            async move {
                let answer = request.send().await.unwrap();
                (answer.status().as_u16(), answer.text().await.unwrap())
            }
        };
        for body in [
            "",
            "{",
            "[]",
            r#"{"group":"card_stats","entities":"card-1"}"#,
            r#"{"group":"card_stats","entities":["card-1"],"extra":1}"#,
            r#"{"group":"card_stats","entities":[1.5]}"#,
        ] {
            let (status, text) = post("/v1/features", body.to_owned()).await;
            assert_eq!(status, 400, "{body}: {text}");
            assert!(
                text.starts_with(r#"{"error":"request body: "#),
                "{body}: {text}"
            );
        }

        // Several requests in one call: each answered as it is alone.
        let requests = [
            FeatureRequest::new("card_stats", ["card-3", "ghost"]).features(["merchant"]),
            FeatureRequest::new("card_stats", ["card-14", "card-3"]).features(["count", "spend"]),
        ];
        let batch = client.get_features_batch(&requests).await.unwrap();
        assert_eq!(batch.answers.len(), 2);
        assert_eq!(batch.request_ids.len(), 2);
        assert_ne!(batch.request_ids[0], batch.request_ids[1]);
        for (request, answer) in requests.iter().zip(&batch.answers) {
            assert_eq!(answer, &client.get_features(request).await.unwrap());
        }
        for (body, why) in [
            (json!({"requests": []}), "1 to 32 requests, not 0"),
            (
                json!({"requests": vec![json!({"group": "card_stats", "entities": ["a"]}); 33]}),
                "not 33",
            ),
            (
                json!({"requests": [{"group": "card_stats", "entities": ["a"]},
                                    {"group": "nope", "entities": ["a"]}]}),
                "`nope` is not served",
            ),
            (
                json!({"requests": [{"group": "card_stats", "entities": ["a"], "x": 1}]}),
                "request body",
            ),
            (
                json!({"group": "card_stats", "entities": ["a"]}),
                "request body",
            ),
        ] {
            let (status, text) = post("/v1/features/batch", body.to_string()).await;
            assert!(status == 400 || status == 404, "{body}: {status} {text}");
            assert!(text.contains(why), "{body}: {text}");
        }

        // The Feast feature server's request and response shape.
        let (status, text) = post(
            "/get-online-features",
            json!({
                "features": ["card_stats:merchant", "card_stats:count"],
                "entities": {"card": ["card-3", "ghost", "card-14"]},
                "full_feature_names": true,
            })
            .to_string(),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let feast: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            feast["metadata"]["feature_names"],
            json!(["card", "card_stats__merchant", "card_stats__count"])
        );
        assert_eq!(
            feast["results"][0]["values"],
            json!(["card-3", "ghost", "card-14"])
        );
        assert_eq!(feast["results"][1]["values"], json!(["m-3-é", null, null]));
        assert_eq!(
            feast["results"][1]["statuses"],
            json!(["PRESENT", "NOT_FOUND", "NULL_VALUE"])
        );
        assert_eq!(feast["results"][2]["values"], json!([-991, null, -958]));
        assert_eq!(
            feast["results"][2]["event_timestamps"][0],
            json!("2024-03-01T00:00:00.000003Z")
        );
        assert_eq!(feast["lockstep"]["degraded"], json!(false));
        assert_eq!(
            feast["lockstep"]["views"]["card_stats"]["sources"],
            json!(["store", "missing", "store"])
        );
        for (body, why) in [
            (
                json!({"feature_service": "fs", "entities": {"card": ["a"]}}),
                "feature services",
            ),
            (
                json!({"features": ["spend"], "entities": {"card": ["a"]}}),
                "view:feature",
            ),
            (
                json!({"features": ["card_stats:spend"], "entities": {"user": ["a"]}}),
                "keyed by `card`",
            ),
            (
                json!({"features": ["card_stats:spend"], "entities": {"card": ["a"], "x": []}}),
                "has 0 values",
            ),
            (
                json!({"features": ["other:spend"], "entities": {"card": ["a"]}}),
                "`other` is not served",
            ),
        ] {
            let (status, text) = post("/get-online-features", body.to_string()).await;
            assert!(status == 400 || status == 404, "{body}: {status} {text}");
            assert!(text.contains(why), "{body}: {text}");
        }
        let get = |path: &str| {
            let request = http.get(format!("{base}{path}"));
            async move { request.send().await.unwrap().text().await.unwrap() }
        };
        let metrics = get("/metrics").await;
        assert!(
            metrics.contains("lockstep_serve_request_seconds_count{api=\"feast\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("lockstep_serve_store_fallbacks_total"),
            "{metrics}"
        );
        let health = get("/healthz").await;
        assert!(health.contains(r#""status":"ok""#), "{health}");
    });
}

#[test]
fn corrupt_or_foreign_cache_entries_are_misses_that_the_store_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(embedded(dir.path(), 20));
    let redis = Redis::start(&[]);
    let rt = runtime();
    rt.block_on(async {
        let admin = redis::Client::open(redis.url()).unwrap();
        let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
        let key = |i: usize| lockstep_cache::cache_key("card_stats@1.2.0", &format!("card-{i}"));
        let huge = format!(
            "{{\"event_time\": 1, \"plugin_hash\": \"x\", \"row\": {{\"spend\": \"{}\"}}",
            "9".repeat(1 << 20)
        );
        let hostile: Vec<(String, String)> = vec![
            ("0".into(), "not json".into()),
            ("0".into(), r#"{"event_time": 1}"#.into()),
            (
                "abc".into(),
                r#"{"event_time": 1, "plugin_hash": "x", "row": {}}"#.into(),
            ),
            (
                "0".into(),
                r#"{"event_time": 1, "plugin_hash": "x", "row": {"sp\u0065nd": 1}}"#.into(),
            ),
            (
                "0".into(),
                r#"{"event_time": "soon", "plugin_hash": "x", "row": {}}"#.into(),
            ),
            ("0".into(), huge),
        ];
        for (i, (t, v)) in hostile.iter().enumerate() {
            let _: () = redis::cmd("HSET")
                .arg(key(i))
                .arg("t")
                .arg(t)
                .arg("v")
                .arg(v)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        let cache = RedisCache::connect(&redis.url(), None, Duration::from_secs(2))
            .await
            .unwrap();
        let server =
            FeatureServer::new(vec![served()], store.clone(), Some(cache), generous()).unwrap();
        let keys: Vec<String> = (0..hostile.len()).map(|i| format!("card-{i}")).collect();
        let request = FeatureRequest::new("card_stats", keys.clone());
        let first = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&first, store.as_ref(), &keys, Source::Store).await,
            keys.len()
        );
        // The write-backs replaced every one of them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = server.get(&request).await.unwrap().parsed();
        assert_eq!(
            check_against_store(&second, store.as_ref(), &keys, Source::Cache).await,
            keys.len()
        );
    });
}
