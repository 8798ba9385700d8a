//! The store on a real SQLite file: migrations run once and survive a reopen, ids and
//! event numbers follow on, cancel only reaches jobs that are not over.
use volt_config::{JobSpec, LoadedJob};
use volt_studio::{JobStatus, Node, NodeStatus, Store};

fn job(name: &str) -> LoadedJob {
    let spec = JobSpec { name: name.into(), run: "true".into(), num_nodes: 2, ..JobSpec::default() };
    LoadedJob { spec, workdir: std::env::temp_dir(), hosts: Vec::new() }
}

#[tokio::test]
async fn jobs_nodes_and_events_round_trip_and_survive_a_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("studio.db");
    let store = Store::open(&path).await.expect("open");
    let a = store.insert_job(&job("a")).await.expect("a");
    let b = store.insert_job(&job("b")).await.expect("b");
    assert_eq!((a, b), (1, 2));
    store.set_job(a, JobStatus::Running, 1, None).await.expect("set");
    let node = Node {
        job_id: a,
        attempt: 1,
        rank: 1,
        host: "localhost".into(),
        handle: "{\"pid\": 1}".into(),
        status: NodeStatus::Running,
        exit_code: None,
        started_at: 5,
        ended_at: None,
    };
    store.insert_node(&node).await.expect("node");
    store.set_node(&node, NodeStatus::Failed, Some(3)).await.expect("set node");
    for m in ["one", "two"] {
        store.event(a, 1, m).await.expect("event");
    }
    store.event(b, 0, "other job").await.expect("event");
    drop(store);

    // Reopened: the migration is not run again and everything is there.
    let store = Store::open(&path).await.expect("reopen");
    let jobs = store.jobs().await.expect("jobs");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [2, 1], "newest first");
    let ja = store.job(a).await.expect("get").expect("job a");
    assert_eq!(
        (ja.status, ja.attempt, ja.num_nodes, ja.spec.spec.name.as_str()),
        (JobStatus::Running, 1, 2, "a")
    );
    let nodes = store.nodes(a, Some(1)).await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!((nodes[0].status, nodes[0].exit_code), (NodeStatus::Failed, Some(3)));
    assert!(nodes[0].ended_at.is_some());
    assert!(store.nodes(a, Some(2)).await.expect("none").is_empty());
    assert_eq!(store.nodes(a, None).await.expect("all").len(), 1);
    let events: Vec<String> = store.events(a).await.expect("events").into_iter().map(|e| e.message).collect();
    assert_eq!(events, ["one", "two"]);
    assert_eq!(store.insert_job(&job("c")).await.expect("c"), 3, "ids go on after a reopen");
    assert!(store.job(99).await.expect("missing").is_none());

    // Cancel reaches a pending or running job, never a finished one.
    assert!(store.request_cancel(a).await.expect("cancel"));
    store.set_job(b, JobStatus::Succeeded, 1, None).await.expect("done");
    assert!(!store.request_cancel(b).await.expect("cancel done"));
    assert_eq!(store.active_jobs().await.expect("active").iter().map(|j| j.id).collect::<Vec<_>>(), [1, 3]);
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("studio.db");
    std::fs::write(&path, b"this is not a database, but it is long enough to look like a header")
        .expect("write");
    let e = Store::open(&path).await.err().expect("refused");
    assert!(e.to_string().contains("the store"), "{e}");
}
