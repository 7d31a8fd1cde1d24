//! Idempotent producers against the real `corelog` binary: a retried batch
//! is stored once (raw retries, and a `Producer` whose response is lost on
//! the wire and retries by itself), a gap in sequences is refused, and the
//! producer state comes back after `kill -9` (rebuilt from the log) and
//! after a clean stop (from its snapshot).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use net::client::Connection;
use net::messages::acks;
use net::producer::{Producer, ProducerConfig};
use net::{ErrorCode, NetError};
use storage::batch::RecordBatchBuilder;

mod common;
use common::*;

fn batch(producer: (i64, i16), sequence: i32, values: std::ops::Range<u32>) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new().producer(producer.0, producer.1, sequence);
    for n in values {
        builder.push(0, None, Some(format!("v{n}").as_bytes()), vec![]);
    }
    builder.build()
}

#[test]
fn retried_batches_are_stored_once_across_kill_9_and_restart() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    let producer = run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("once", 2, vec![]).await.unwrap();
        let producer = c.init_producer_id().await.unwrap();
        let first = batch(producer, 0, 0..10);
        assert_eq!(c.produce("once", 1, &first, acks::ALL).await.unwrap(), Some(0));
        assert_eq!(
            c.produce("once", 1, &first, acks::ALL).await.unwrap(),
            Some(0),
            "a retry gets the offset its original got"
        );
        let second = batch(producer, 10, 10..15);
        assert_eq!(c.produce("once", 1, &second, acks::ALL).await.unwrap(), Some(10));
        let gap = c.produce("once", 1, &batch(producer, 40, 40..41), acks::ALL).await;
        assert!(
            matches!(
                gap,
                Err(NetError::Rejected {
                    code: ErrorCode::OutOfOrderSequenceNumber,
                    ..
                })
            ),
            "{gap:?}"
        );
        assert_eq!(consume_all(&mut c, "once", 1).await.len(), 15);
        producer
    });
    broker.kill9();

    // After a crash the state is rebuilt from the log.
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let second = batch(producer, 10, 10..15);
        assert_eq!(c.produce("once", 1, &second, acks::ALL).await.unwrap(), Some(10));
        let third = batch(producer, 15, 15..20);
        assert_eq!(c.produce("once", 1, &third, acks::ALL).await.unwrap(), Some(15));
        assert_eq!(consume_all(&mut c, "once", 1).await.len(), 20);
    });
    broker.stop();

    // After a clean stop, from the snapshot.
    assert!(dir.path().join("once-1/producers.json").exists());
    let broker = Broker::start(dir.path(), 1);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let third = batch(producer, 15, 15..20);
        assert_eq!(c.produce("once", 1, &third, acks::ALL).await.unwrap(), Some(15));
        let values = consume_all(&mut c, "once", 1).await;
        let expected: Vec<String> = (0..20).map(|n| format!("v{n}")).collect();
        assert_eq!(values, expected, "every record once, in order");
        // A new producer id starts its own sequences.
        let other = c.init_producer_id().await.unwrap();
        assert_ne!(other.0, producer.0);
        assert_eq!(
            c.produce("once", 1, &batch(other, 0, 20..21), acks::ALL).await.unwrap(),
            Some(20)
        );
    });
    broker.stop();
}

/// A TCP proxy in front of the broker that, on the first connection, holds
/// back every response once a request larger than `large` bytes has gone
/// through, then cuts that connection: the client's request was stored but
/// its answer is lost, and the client must retry. Later connections pass
/// through untouched.
fn lossy_proxy(broker: String, large: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicUsize::new(0));
    let cuts = cut.clone();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let upstream = TcpStream::connect(&broker).unwrap();
            let hold = Arc::new(AtomicBool::new(false));
            {
                // Broker to client, unless held.
                let (mut from, mut to, hold) =
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap(), hold.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(read) = from.read(&mut buf) {
                        if read == 0 || (!hold.load(Ordering::Acquire) && to.write_all(&buf[..read]).is_err()) {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
            let (mut from, mut to, cuts) = (client, upstream, cuts.clone());
            std::thread::spawn(move || {
                // Client to broker, frame by frame (a 4-byte length first).
                loop {
                    let mut len = [0u8; 4];
                    if from.read_exact(&mut len).is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
                    if from.read_exact(&mut body).is_err() {
                        break;
                    }
                    let lose_answer = n == 0 && body.len() > large;
                    if lose_answer {
                        hold.store(true, Ordering::Release);
                    }
                    if to.write_all(&len).and_then(|_| to.write_all(&body)).is_err() {
                        break;
                    }
                    if lose_answer {
                        // Let the broker store it, then cut the connection.
                        std::thread::sleep(Duration::from_millis(300));
                        cuts.fetch_add(1, Ordering::AcqRel);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        break;
                    }
                }
            });
        }
    });
    (addr, cut)
}

#[test]
fn a_producer_whose_answer_is_lost_retries_without_a_duplicate() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 1);
    let broker_addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&broker_addr).await.unwrap();
        c.create_topic("retried", 1, vec![]).await.unwrap();
        let (proxy, cuts) = lossy_proxy(broker_addr.clone(), 4096);
        let producer = Producer::connect(
            &proxy,
            ProducerConfig {
                acks: acks::ALL,
                batch_bytes: 16 << 10,
                linger: Duration::from_millis(5),
                retries: 5,
                retry_backoff: Duration::from_millis(20),
                idempotent: true,
                // Through the proxy only: the leader's own port would
                // bypass the lost answer this test is about.
                follow_leaders: false,
            },
        )
        .await
        .unwrap();
        let value = vec![b'x'; 1000];
        let mut futures = Vec::new();
        for n in 0..100u32 {
            let mut record = value.clone();
            record[..4].copy_from_slice(format!("{n:04}").as_bytes());
            futures.push(producer.send("retried", None, Some(&record), vec![], 0).await.unwrap());
        }
        producer.flush().await;
        let mut offsets = Vec::new();
        for future in futures {
            offsets.push(future.await.unwrap().unwrap());
        }
        assert_eq!(cuts.load(Ordering::Acquire), 1, "one answer was lost on the wire");
        assert_eq!(offsets, (0..100).collect::<Vec<u64>>(), "each record has one offset");
        let stored: Vec<String> = consume_all(&mut c, "retried", 0)
            .await
            .into_iter()
            .map(|v| v[..4].to_string())
            .collect();
        let expected: Vec<String> = (0..100).map(|n| format!("{n:04}")).collect();
        assert_eq!(stored, expected, "every record once, in order: no duplicate in the log");
    });
    broker.stop();
}

#[test]
fn bad_producer_requests_get_clear_errors_and_lose_nothing() {
    let dir = data_dir();
    let mut broker = Broker::start(dir.path(), 1);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("strict", 1, vec![]).await.unwrap();
        let producer = c.init_producer_id().await.unwrap();
        assert_eq!(
            c.produce("strict", 0, &batch(producer, 0, 0..3), acks::ALL)
                .await
                .unwrap(),
            Some(0)
        );
        // A transactional id with a timeout past the broker's limit.
        let transactional = c.init_transactional_id("tx", i32::MAX).await;
        assert!(
            matches!(
                transactional,
                Err(NetError::Rejected {
                    code: ErrorCode::InvalidTransactionTimeout,
                    ..
                })
            ),
            "{transactional:?}"
        );
        // A producer id with a negative sequence is not a valid batch.
        let negative = c.produce("strict", 0, &batch(producer, -5, 5..6), acks::ALL).await;
        assert!(
            matches!(
                negative,
                Err(NetError::Rejected {
                    code: ErrorCode::InvalidRecord,
                    ..
                })
            ),
            "{negative:?}"
        );
        // An older epoch of a known producer is fenced.
        let stale = c
            .produce("strict", 0, &batch((producer.0, 1), 0, 3..4), acks::ALL)
            .await
            .unwrap();
        assert_eq!(stale, Some(3), "epoch 1 starts at 0");
        let fenced = c.produce("strict", 0, &batch(producer, 3, 4..5), acks::ALL).await;
        assert!(
            matches!(
                fenced,
                Err(NetError::Rejected {
                    code: ErrorCode::InvalidProducerEpoch,
                    ..
                })
            ),
            "{fenced:?}"
        );
        let values = consume_all(&mut c, "strict", 0).await;
        assert_eq!(
            values,
            ["v0", "v1", "v2", "v3"],
            "nothing refused was stored, nothing stored was lost"
        );
    });
    broker.assert_alive();
    broker.stop();
}
