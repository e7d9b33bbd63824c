//! The Redis store on a Redis Cluster of three masters started by the test: exact limits
//! across two store instances, for clients spread over every master.
#![cfg(feature = "redis")]

#[path = "redis_support.rs"]
mod support;

use nonzero_ext::nonzero;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, RedisStore, Store};

fn cluster_ok(server: &RedisServer) -> bool {
    let Ok(mut conn) = server.connection() else { return false };
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap_or_default();
    info.contains("cluster_state:ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_exact_limits_on_a_cluster() {
    if !have_redis_binaries() {
        return;
    }
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start(&["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]))
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(nodes.iter().map(RedisServer::addr))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(status.status.success(), "cluster create: {}", String::from_utf8_lossy(&status.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(cluster_ok) {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let prefix = unique_prefix("cluster");
    let make =
        || RedisStore::cluster(urls.clone()).prefix(&prefix).timeout(Duration::from_secs(2)).build().unwrap();
    let stores = [make(), make()];
    // Two policies per client (burst 5, daily 8): the script touches both keys in one slot.
    let limits = Arc::new(
        Limits::builder()
            .tier(
                "anonymous",
                TierSpec::new(Quota::per_hour(nonzero!(1u32)).allow_burst(nonzero!(5u32))).daily(8),
            )
            .build()
            .unwrap(),
    );

    const CLIENTS: usize = 12;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS * 16 {
        let store = stores[i % 2].clone();
        let limits = Arc::clone(&limits);
        tasks.push(tokio::spawn(async move {
            let client = i % CLIENTS;
            let d = store
                .check(&Key::new(format!("client-{client}")), limits.default_tier(), Charge::new(1))
                .await;
            (client, d.expect("the cluster answers").is_admitted())
        }));
    }
    let mut admitted = [0; CLIENTS];
    for task in tasks {
        let (client, ok) = task.await.unwrap();
        admitted[client] += usize::from(ok);
    }
    assert_eq!(admitted, [5; CLIENTS], "each client gets exactly its burst");

    // The clients' keys really are spread over the masters.
    let mut holding = 0;
    for node in &nodes {
        let mut conn = node.connection().unwrap();
        let keys: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
        holding += usize::from(keys > 0);
    }
    assert!(holding >= 2, "all keys on one master");
    assert_eq!(stores[0].stats().errors + stores[1].stats().errors, 0);
}
