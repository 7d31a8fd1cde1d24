//! Leader dissemination: each node tells every other which partition
//! groups it leads, with each one's term and in-sync replicas, so that any
//! node answers Metadata for a partition it hosts no replica of with its
//! leader and leader epoch (Redpanda's metadata dissemination; Kafka's
//! controller sends UpdateMetadata). Only a leader announces its groups:
//! a note is the leader's own word, and a later term replaces it on every
//! node (`Metadata::learn_leaders`), so no node goes back an epoch.
//!
//! Changes go out on the next tick after they happen; every group led
//! here goes out again every `FULL_EVERY_TICKS`, for a node that started
//! since or lost a frame. An idle node sends nothing between those.

use std::collections::HashMap;
use std::sync::Arc;

use net::cluster::{LeaderNote, PeerFrame, PeerMessage, LEADER_NOTES_MAX};

use crate::config::Peer;
use crate::topics::Metadata;

/// Ticks between two announcements of every group led here (3 s at the
/// 100 ms tick): how long a node that restarted may answer a partition it
/// does not host with its preferred replica.
pub const FULL_EVERY_TICKS: u32 = 30;
/// Frames queued to one peer; past it, new ones are dropped (the next
/// full announcement says it again).
const PEER_QUEUE_DEPTH: usize = 16;

/// Runs on shard 0 of a cluster node for as long as the node does.
pub async fn announce(node: u64, peers: Vec<Peer>, metadata: Arc<Metadata>, tick: std::time::Duration) {
    let mut links = crate::controller::driver::open_peer_links(node, &peers, PEER_QUEUE_DEPTH);
    // What each group led here was last announced as.
    let mut announced: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
    let mut version_seen = None;
    let mut ticks = 0u32;
    loop {
        glommio::timer::sleep(tick).await;
        ticks = ticks.wrapping_add(1);
        let full = ticks % FULL_EVERY_TICKS == 0;
        let version = metadata.leaders_version();
        if !full && version_seen == Some(version) {
            continue;
        }
        version_seen = Some(version);
        let led = metadata.led_here(node);
        let notes: Vec<LeaderNote> = if full {
            led.clone()
        } else {
            led.iter()
                .filter(|n| announced.get(&n.group) != Some(&(n.term, n.in_sync.clone())))
                .cloned()
                .collect()
        };
        announced = led.into_iter().map(|n| (n.group, (n.term, n.in_sync))).collect();
        for chunk in notes.chunks(LEADER_NOTES_MAX) {
            let frame = PeerFrame {
                from: node,
                message: PeerMessage::Leaders {
                    leaders: chunk.to_vec(),
                },
            };
            let bytes = match frame.encode() {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(node, %error, "leader notes not sent");
                    continue;
                }
            };
            for (&peer, link) in links.iter_mut() {
                if link.try_send(bytes.clone()).is_err() {
                    tracing::debug!(node, peer, "leader notes: peer queue full, frame dropped");
                }
            }
        }
    }
}
