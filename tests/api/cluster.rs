//! The fleet on a three-master cluster (Redis or Valkey): one flight and
//! one cache for the fleet, scripts flushed from every node, a node lost
//! that serves none of a follower's channels, and a slot that moves.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::{
    fleet::{call, key_file, sixty_calls_of_one_token, token_expiring_in},
    helpers::{Reply, Running, StandIn, TOKEN, USERNAME, until_received},
    servers::Redis,
    store_server::store_server,
};

/// A three-master cluster made with `redis-cli --cluster create` (or
/// `valkey-cli`'s).
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                Redis::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{i}.conf"),
                    // A node killed by a test leaves the others serving.
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&store_server().cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{created:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not settle");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    fn seeds(&self) -> String {
        self.nodes[..2]
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every key of every node.
    fn keys(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.cli(&["--scan"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A replica of the binary on `cluster`, connected to it.
fn cluster_replica(stand_in: &StandIn, cluster: &Cluster, key: &Path, args: &[&str]) -> Running {
    let seeds = cluster.seeds();
    let mut all = vec![
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--fleet-key-file",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut running = Running::against(stand_in, &all, &[]);
    running.find_line("connected to the fleet store");
    running
}

#[tokio::test]
async fn in_a_cluster_losing_a_node_that_serves_none_of_its_channels_wakes_no_follower() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let mut cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 9);
    let leader = cluster_replica(&stand_in, &cluster, &key, &[]);
    let follower = cluster_replica(&stand_in, &cluster, &key, &[]);
    // Each replica keeps a connection to every node (the cluster client
    // opens them all), so a node's loss reaches both as a disconnection.
    for node in &cluster.nodes {
        let clients = node.cli(&["CLIENT", "LIST"]);
        assert!(clients.matches("resp=3").count() >= 2, "{clients}");
    }
    let leading = tokio::spawn(call(leader.addr, TOKEN));
    until_received(&stand_in, 1).await;
    // The node that serves the token's slot holds its flight's lease, the
    // only key in the cluster.
    let serving = cluster
        .nodes
        .iter()
        .position(|node| !node.cli(&["--scan"]).trim().is_empty())
        .expect("a node holds the flight's lease");
    let unrelated = (serving + 1) % cluster.nodes.len();
    let following = tokio::spawn(call(follower.addr, TOKEN));
    // Long enough to have subscribed to the leader's flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[unrelated].kill();
    let (username, source) = following.await.unwrap();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced", "the follower was woken");
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 1);
}

#[tokio::test]
async fn in_a_cluster_a_slot_that_moves_sends_its_followers_to_the_new_node() {
    let stand_in = StandIn::start().await;
    // The leader's call outlasts both bounded waits below, so the follower
    // is still following when it moves: the test is about where it listens,
    // not how fast (a loaded CI machine is slow).
    stand_in.always(Reply::Delay(
        Duration::from_secs(6),
        Box::new(Reply::full_success()),
    ));
    let cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 10);
    let slow = ["--attempt-timeout", "10s", "--call-timeout", "10s"];
    let leader = cluster_replica(&stand_in, &cluster, &key, &slow);
    let follower = cluster_replica(&stand_in, &cluster, &key, &slow);
    let leading = tokio::spawn(call(leader.addr, TOKEN));
    until_received(&stand_in, 1).await;
    let from = cluster
        .nodes
        .iter()
        .position(|node| !node.cli(&["--scan"]).trim().is_empty())
        .expect("a node holds the flight's lease");
    let following = tokio::spawn(call(follower.addr, TOKEN));
    let channel = until_shard_channel(&cluster.nodes[from]).await;
    // The slot moves to another node, its keys with it, as
    // `redis-cli --cluster reshard` moves one: the old node tells its
    // subscribers (`sunsubscribe`).
    let to = (from + 1) % cluster.nodes.len();
    let slot = cluster.nodes[from].cli(&["CLUSTER", "KEYSLOT", &channel]);
    let slot = slot.trim();
    let id = |node: &Redis| node.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(&cluster.nodes[from]), id(&cluster.nodes[to]));
    let (source, target) = (&cluster.nodes[from], &cluster.nodes[to]);
    assert_ok(target.cli(&["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]));
    assert_ok(source.cli(&["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]));
    for key in source
        .cli(&["CLUSTER", "GETKEYSINSLOT", slot, "100"])
        .lines()
    {
        let port = target.port.to_string();
        assert_ok(source.cli(&["MIGRATE", "127.0.0.1", &port, key, "0", "5000"]));
    }
    for node in [target, source] {
        assert_ok(node.cli(&["CLUSTER", "SETSLOT", slot, "NODE", &to_id]));
    }
    // The follower rejoins the flight where it now lives and listens there.
    assert_eq!(until_shard_channel(target).await, channel);
    let (username, source) = following.await.unwrap();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced");
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 1);
}

fn assert_ok(reply: String) {
    assert_eq!(reply.trim(), "OK", "{reply}");
}

/// The first shard channel `node` serves, once one is subscribed (bounded).
async fn until_shard_channel(node: &Redis) -> String {
    let deadline = Instant::now() + Duration::from_millis(2500);
    loop {
        let channels = node.cli(&["PUBSUB", "SHARDCHANNELS"]);
        if let Some(channel) = channels.lines().find(|line| !line.trim().is_empty()) {
            return channel.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no shard channel on {}",
            node.port
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn in_a_cluster_sixty_calls_over_three_replicas_make_one_upstream_call_and_share_the_cache() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::full_success()),
    ));
    let cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 8);
    let args = ["--cache-ttl", "10m"];
    let start = || cluster_replica(&stand_in, &cluster, &key, &args);
    let replicas = [start(), start(), start()];
    let sources = sixty_calls_of_one_token(&replicas).await;
    assert_eq!(stand_in.received().len(), 1, "{sources:?}");
    assert!(
        sources.iter().any(|s| s == "fleet_coalesced"),
        "{sources:?}"
    );
    // A token's keys share one slot (its hash tag), on one node.
    let keys = cluster.keys();
    let tags: std::collections::BTreeSet<&str> = keys
        .iter()
        .map(|k| &k[k.find('{').unwrap()..=k.find('}').unwrap()])
        .collect();
    assert_eq!(tags.len(), 1, "{keys:?}");
    let token = token_expiring_in(600, "cluster");
    assert_eq!(call(replicas[0].addr, &token).await.1, "cognito");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster.keys().iter().any(|key| key.ends_with(":a")) {
        assert!(Instant::now() < deadline, "{:?}", cluster.keys());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(call(replicas[1].addr, &token).await.1, "fleet_cache");
    // Scripts flushed from every node: the first call on each node runs
    // the whole script (EVAL, routed by its keys) and flights are shared
    // again (redis-rs's own fallback loads it on a node of its choosing).
    for node in &cluster.nodes {
        assert_eq!(node.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    }
    let flushed = token_expiring_in(600, "flushed");
    let mut calls = JoinSet::new();
    for i in 0..30 {
        let (addr, token) = (replicas[i % 3].addr, flushed.clone());
        calls.spawn(async move { call(addr, &token).await });
    }
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().0, USERNAME);
    }
    assert_eq!(
        stand_in.received().len(),
        3,
        "one call for the flushed token"
    );
}
