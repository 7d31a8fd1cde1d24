//! Consumer groups end to end against the real `corelog` binary: members
//! joining, leaving and dying while the group's partitions stay covered
//! exactly once; at-least-once redelivery after a member dies mid-batch;
//! committed offsets surviving a clean restart and `kill -9`; the `group`
//! CLI; and the errors a misbehaving member gets.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use net::client::Connection;
use net::group::{GroupConfig, GroupConsumer};
use net::messages::{acks, JoinGroupRequest};
use net::{ErrorCode, NetError};

mod common;
use common::*;

const PARTITIONS: u32 = 6;

fn config(group: &str, topic: &str) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_millis(2_000),
        rebalance_timeout: Duration::from_millis(4_000),
        heartbeat_interval: Duration::from_millis(100),
        max_wait_ms: 50,
        auto_commit: None,
        ..GroupConfig::new(group, &[topic])
    }
}

/// Each live member's last (generation, assignment), as its poll loop saw it.
type Members = BTreeMap<String, (i32, Vec<(String, u32)>)>;
type Seen = Rc<RefCell<Members>>;

fn spawn_member(
    addr: &str,
    name: &str,
    seen: Seen,
    stop: Rc<RefCell<BTreeSet<String>>>,
) -> glommio::task::JoinHandle<()> {
    let (addr, name) = (addr.to_string(), name.to_string());
    glommio::spawn_local(async move {
        let mut member = GroupConsumer::join(&addr, config("g", "orders")).await.unwrap();
        loop {
            seen.borrow_mut()
                .insert(name.clone(), (member.generation(), member.assignment().to_vec()));
            if stop.borrow().contains(&name) {
                seen.borrow_mut().remove(&name);
                member.close().await.unwrap();
                return;
            }
            member.poll().await.unwrap();
        }
    })
    .detach()
}

/// No two members of one generation share a partition.
fn check_no_overlap(seen: &Members) {
    let mut owner: BTreeMap<(i32, u32), &str> = BTreeMap::new();
    for (name, (generation, assignment)) in seen {
        for (_, p) in assignment {
            if let Some(other) = owner.insert((*generation, *p), name) {
                panic!("partition {p} owned by {other} and {name} in generation {generation}");
            }
        }
    }
}

/// Waits until exactly `members` report one generation whose assignments
/// cover every partition once; checks no overlap at every look.
async fn settled(seen: &Seen, members: &[&str]) -> BTreeMap<String, Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let seen = seen.borrow();
            check_no_overlap(&seen);
            let names: Vec<&str> = seen.keys().map(String::as_str).collect();
            let generations: BTreeSet<i32> = seen.values().map(|(g, _)| *g).collect();
            let mut covered: Vec<u32> = seen.values().flat_map(|(_, a)| a.iter().map(|(_, p)| *p)).collect();
            covered.sort_unstable();
            if names == members && generations.len() == 1 && covered == (0..PARTITIONS).collect::<Vec<_>>() {
                return seen
                    .iter()
                    .map(|(n, (_, a))| (n.clone(), a.iter().map(|(_, p)| *p).collect()))
                    .collect();
            }
        }
        assert!(
            Instant::now() < deadline,
            "group did not settle on {members:?}: {:?}",
            seen.borrow()
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn members_join_leave_and_die_and_every_partition_has_one_owner() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("orders", PARTITIONS, vec![]).await.unwrap();
        let seen: Seen = Rc::default();
        let stop: Rc<RefCell<BTreeSet<String>>> = Rc::default();
        let _a = spawn_member(&addr, "a", seen.clone(), stop.clone());
        assert_eq!(settled(&seen, &["a"]).await["a"].len(), 6);
        let _b = spawn_member(&addr, "b", seen.clone(), stop.clone());
        let split = settled(&seen, &["a", "b"]).await;
        assert_eq!((split["a"].len(), split["b"].len()), (3, 3));
        let c = spawn_member(&addr, "c", seen.clone(), stop.clone());
        let split = settled(&seen, &["a", "b", "c"]).await;
        assert!(split.values().all(|p| p.len() == 2), "{split:?}");
        // c leaves cleanly: the others rebalance at once.
        stop.borrow_mut().insert("c".into());
        c.await;
        settled(&seen, &["a", "b"]).await;
        // b dies without leaving: a takes everything after b's session
        // (2 s) lapses.
        let b = _b;
        b.cancel();
        seen.borrow_mut().remove("b");
        let died = Instant::now();
        assert_eq!(settled(&seen, &["a"]).await["a"].len(), 6);
        assert!(
            died.elapsed() >= Duration::from_millis(1_500),
            "after the session timeout"
        );
        let described = admin.describe_group("g").await.unwrap();
        assert_eq!((described.state.as_str(), described.members.len()), ("Stable", 1));
        assert!(admin
            .list_groups()
            .await
            .unwrap()
            .iter()
            .any(|g| g.group == "g" && g.protocol_type == "consumer"));
    });
    broker.stop();
}

#[test]
fn a_member_killed_mid_batch_leaves_its_uncommitted_records_to_the_next() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("work", 1, vec![]).await.unwrap();
        admin.produce("work", 0, &batch_of(0, 0..50), acks::ALL).await.unwrap();
        // The first member processes and commits the records it polls (at
        // least once: process, then commit), then takes more and dies
        // before committing them.
        let mut first = GroupConsumer::join(&addr, config("workers", "work")).await.unwrap();
        let mut processed = Vec::new();
        while processed.len() < 50 {
            processed.extend(first.poll().await.unwrap());
        }
        first.commit_sync().await.unwrap();
        let committed = processed.last().unwrap().record.offset + 1;
        assert_eq!(committed, 50);
        admin
            .produce("work", 0, &batch_of(0, 50..100), acks::ALL)
            .await
            .unwrap();
        let mut uncommitted = Vec::new();
        while uncommitted.is_empty() {
            uncommitted = first.poll().await.unwrap();
        }
        drop(first);

        let mut second = GroupConsumer::join(&addr, config("workers", "work")).await.unwrap();
        assert_eq!(second.assignment(), &[("work".to_string(), 0)]);
        let mut offsets = Vec::new();
        while offsets.len() < (100 - committed) as usize {
            offsets.extend(second.poll().await.unwrap().into_iter().map(|r| r.record.offset));
        }
        assert_eq!(offsets.first(), Some(&committed), "resumes at the commit: no gap");
        assert_eq!(offsets, (committed..100).collect::<Vec<_>>(), "in order, none lost");
        assert!(
            offsets.contains(&uncommitted[0].record.offset),
            "what the dead member took uncommitted comes again"
        );
        second.commit_sync().await.unwrap();
        second.close().await.unwrap();
        let offsets = admin.fetch_offsets("workers", None).await.unwrap();
        assert_eq!(offsets, vec![("work".to_string(), 0, Some(100))]);
    });
    broker.stop();
}

fn corelog(addr: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .args(["--broker", addr])
        .output()
        .expect("corelog runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn committed_offsets_survive_restart_and_kill_9_and_the_cli_resets_them() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    let group = "survivor";
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("events", 3, vec![]).await.unwrap();
        for p in 0..3 {
            admin
                .produce("events", p, &batch_of(p, 0..20), acks::LEADER)
                .await
                .unwrap();
        }
        let offsets: Vec<(String, u32, u64)> = (0..3).map(|p| ("events".to_string(), p, 5 + u64::from(p))).collect();
        admin.commit_offsets(group, -1, "", &offsets).await.unwrap();
    });
    broker.stop();

    let broker = Broker::start(dir.path(), 1);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        let offsets = admin.fetch_offsets(group, None).await.unwrap();
        let expected: Vec<(String, u32, Option<u64>)> = (0..3)
            .map(|p| ("events".to_string(), p, Some(5 + u64::from(p))))
            .collect();
        assert_eq!(offsets, expected, "after a clean restart, on fewer shards");
        admin
            .commit_offsets(group, -1, "", &[("events".to_string(), 1, 17)])
            .await
            .unwrap();
    });
    broker.kill9();

    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    {
        let addr = addr.clone();
        run(async move {
            let mut admin = Connection::connect(&addr).await.unwrap();
            let offsets = admin.fetch_offsets(group, None).await.unwrap();
            assert_eq!(
                offsets[1],
                ("events".to_string(), 1, Some(17)),
                "an acknowledged commit survives kill -9"
            );
        });
    }
    // The CLI: list, describe with lag, reset refused while a member is in
    // the group, then done once it left.
    let (ok, out, _) = corelog(&addr, &["group", "list"]);
    assert!(ok && out.contains(group), "{out}");
    let (ok, out, _) = corelog(&addr, &["group", "describe", group]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("events") && l.split_whitespace().nth(1) == Some("1"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &fields[1..5],
        &["1", "17", "20", "3"],
        "partition, committed, log end, lag: {line}"
    );

    let addr_member = addr.clone();
    let executor = std::thread::spawn(move || {
        run(async move {
            let mut member = GroupConsumer::join(&addr_member, config(group, "events"))
                .await
                .unwrap();
            let started = Instant::now();
            // Stay in the group for 3 s, heartbeating.
            while started.elapsed() < Duration::from_secs(3) {
                member.poll().await.unwrap();
            }
            member.close().await.unwrap();
        })
    });
    std::thread::sleep(Duration::from_millis(1_200));
    let (ok, _, err) = corelog(&addr, &["group", "reset-offsets", group, "--to", "earliest"]);
    assert!(!ok && err.contains("active members"), "{err}");
    executor.join().unwrap();
    let (ok, out, err) = corelog(
        &addr,
        &["group", "reset-offsets", group, "--topic", "events", "--to", "earliest"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        let offsets = admin.fetch_offsets(group, None).await.unwrap();
        assert!(offsets.iter().all(|(_, _, o)| *o == Some(0)), "{offsets:?}");
    });
    broker.stop();
}

#[test]
fn misbehaving_members_and_clients_get_clear_errors() {
    let dir = data_dir();
    let mut broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("t", 2, vec![]).await.unwrap();
        let join = |session_timeout_ms| JoinGroupRequest {
            group: "bad".into(),
            member_id: String::new(),
            client_id: "test".into(),
            protocol_type: "consumer".into(),
            protocols: vec![net::messages::GroupProtocol {
                name: "range".into(),
                metadata: vec![],
            }],
            session_timeout_ms,
            rebalance_timeout_ms: 1_000,
        };
        let refused = c.join_group(&join(10)).await.unwrap();
        assert_eq!(ErrorCode::from_code(refused.error), ErrorCode::InvalidSessionTimeout);
        let joined = c.join_group(&join(5_000)).await.unwrap();
        assert_eq!(ErrorCode::from_code(joined.error), ErrorCode::None);
        assert_eq!(
            c.heartbeat("bad", joined.generation + 7, &joined.member_id)
                .await
                .unwrap(),
            ErrorCode::IllegalGeneration
        );
        assert_eq!(
            c.heartbeat("bad", joined.generation, "stranger").await.unwrap(),
            ErrorCode::UnknownMemberId
        );
        let stale = c
            .commit_offsets("bad", joined.generation - 1, &joined.member_id, &[("t".into(), 0, 1)])
            .await;
        assert!(
            matches!(
                stale,
                Err(NetError::Rejected {
                    code: ErrorCode::IllegalGeneration,
                    ..
                })
            ),
            "{stale:?}"
        );
        let unknown = c.commit_offsets("other", -1, "", &[("nope".into(), 0, 1)]).await;
        assert!(
            matches!(
                unknown,
                Err(NetError::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                })
            ),
            "{unknown:?}"
        );
        let missing = c.describe_group("nobody").await;
        assert!(
            matches!(
                missing,
                Err(NetError::Rejected {
                    code: ErrorCode::GroupIdNotFound,
                    ..
                })
            ),
            "{missing:?}"
        );
        // The offsets topic is the broker's own.
        let produce = c
            .produce("__consumer_offsets", 0, &batch_of(0, 0..1), acks::LEADER)
            .await;
        assert!(
            matches!(
                produce,
                Err(NetError::Rejected {
                    code: ErrorCode::InvalidTopic,
                    ..
                })
            ),
            "{produce:?}"
        );
        let delete = c.delete_topic("__consumer_offsets").await;
        assert!(
            matches!(
                delete,
                Err(NetError::Rejected {
                    code: ErrorCode::InvalidTopic,
                    ..
                })
            ),
            "{delete:?}"
        );
        assert_eq!(c.leave_group("bad", &joined.member_id).await.unwrap(), ErrorCode::None);
        assert_eq!(
            c.leave_group("bad", &joined.member_id).await.unwrap(),
            ErrorCode::UnknownMemberId
        );
    });
    broker.assert_alive();
    broker.stop();
}

#[test]
fn a_grown_offsets_log_is_compacted_and_keeps_every_live_commit() {
    let dir = data_dir();
    let config = "offsets_compact_bytes = 4096\noffsets_compact_interval_ms = 200\n";
    let broker = Broker::start_with_config(dir.path(), 2, config);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("busy", 2, vec![]).await.unwrap();
        for n in 1..=200u64 {
            let offsets = [("busy".to_string(), 0, n), ("busy".to_string(), 1, 1000 + n)];
            c.commit_offsets("compacted", -1, "", &offsets).await.unwrap();
        }
        // Wait for a compaction: the offsets partition's log start moves.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metadata = c.metadata(Some(vec!["__consumer_offsets".into()])).await.unwrap();
            if metadata.topics[0].partitions.iter().any(|p| p.log_start_offset > 0) {
                break;
            }
            assert!(Instant::now() < deadline, "no compaction: {metadata:?}");
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        let offsets = c.fetch_offsets("compacted", None).await.unwrap();
        assert_eq!(
            offsets,
            vec![("busy".to_string(), 0, Some(200)), ("busy".to_string(), 1, Some(1200))]
        );
    });
    broker.stop();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let offsets = c.fetch_offsets("compacted", None).await.unwrap();
        assert_eq!(
            offsets,
            vec![("busy".to_string(), 0, Some(200)), ("busy".to_string(), 1, Some(1200))],
            "replayed from the compacted log"
        );
    });
    broker.stop();
}

#[test]
fn the_console_consumer_in_a_group_resumes_where_it_stopped() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    {
        let addr = addr.clone();
        run(async move {
            let mut c = Connection::connect(&addr).await.unwrap();
            c.create_topic("lines", 1, vec![]).await.unwrap();
            c.produce("lines", 0, &batch_of(0, 0..10), acks::ALL).await.unwrap();
        });
    }
    let consume = || {
        corelog(
            &addr,
            &[
                "consume",
                "lines",
                "--group",
                "console",
                "--from-beginning",
                "--max-messages",
                "4",
                "--timeout-ms",
                "10000",
            ],
        )
    };
    let (ok, out, err) = consume();
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0:0", "0:1", "0:2", "0:3"]);
    let (ok, out, err) = consume();
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["0:4", "0:5", "0:6", "0:7"],
        "the second run starts at the first's commit"
    );
    let (ok, out, _) = corelog(&addr, &["group", "describe", "console"]);
    assert!(ok);
    let line = out.lines().find(|l| l.trim_start().starts_with("lines")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &fields[1..5],
        &["0", "8", "10", "2"],
        "partition, committed, log end, lag: {line}"
    );
    broker.stop();
}

#[test]
fn async_commits_land_in_order_and_a_new_member_resumes_at_the_last() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("async", 1, vec![]).await.unwrap();
        c.produce("async", 0, &batch_of(0, 0..30), acks::ALL).await.unwrap();
        let mut member = GroupConsumer::join(&addr, config("async-group", "async"))
            .await
            .unwrap();
        let mut seen = 0;
        while seen < 30 {
            seen += member.poll().await.unwrap().len();
            // A commit per poll, none awaited: each waits for the last.
            member.commit_async().await.unwrap();
        }
        member.wait_commits().await.unwrap();
        let committed = c.fetch_offsets("async-group", None).await.unwrap();
        assert_eq!(committed, vec![("async".to_string(), 0, Some(30))]);
        member.close().await.unwrap();
        c.produce("async", 0, &batch_of(0, 30..35), acks::ALL).await.unwrap();
        let mut next = GroupConsumer::join(&addr, config("async-group", "async"))
            .await
            .unwrap();
        let mut values = Vec::new();
        while values.len() < 5 {
            for r in next.poll().await.unwrap() {
                values.push(String::from_utf8(r.record.value.unwrap()).unwrap());
            }
        }
        assert_eq!(
            values,
            ["0:30", "0:31", "0:32", "0:33", "0:34"],
            "resumed at the async commit"
        );
        next.close().await.unwrap();
    });
    broker.stop();
}
