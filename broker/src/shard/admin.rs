//! Changing a topic after its creation, as Kafka's admin APIs ask:
//! its configs changed live (AlterConfigs, IncrementalAlterConfigs), its
//! partitions added (CreatePartitions), and its log start moved
//! (DeleteRecords). On one node the topic table changes and the owning
//! shards follow; in a cluster the controller's log carries the change and
//! every node's reconciliation puts it in force, and a replicated
//! partition's log start moves by an entry of its own Raft log.

use futures::FutureExt;
use storage::Offset;

use super::{refuse_internal, unknown, Shard, ShardMessage, TopicChange};
use crate::error::BrokerError;
use crate::replication::driver::{Command, COMMIT_WAIT_MAX};
use crate::topics::{log_config, TopicMeta};
use storage::PartitionLog;

/// DeleteRecords' offset that names the partition's high watermark.
pub const HIGH_WATERMARK: i64 = -1;

impl Shard {
    /// Changes a topic's configs live (AlterConfigs,
    /// IncrementalAlterConfigs): checked whole, persisted (on one node in
    /// the topic table, in a cluster through the controller), then put in
    /// force in every partition log of the topic. Answered once this
    /// node's logs have them.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        changes: crate::topics::ConfigChanges,
        validate_only: bool,
        forwarded: bool,
    ) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        if let Some(controller) = &self.controller {
            let table = self.metadata.snapshot();
            let topic = table.topics.get(name).ok_or_else(|| unknown(name, 0))?;
            log_config(&changes.apply(&topic.configs))?;
            if validate_only {
                return Ok(());
            }
            match controller.alter_topic_configs(name, changes.clone()).await {
                Err(BrokerError::NotController { leader: Some(leader) }) if !forwarded => {
                    let request = net::messages::AlterConfigsRequest {
                        topic: name.to_string(),
                        replace: changes.replace,
                        set: changes
                            .set
                            .iter()
                            .map(|(key, value)| net::messages::TopicConfig {
                                key: key.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                        delete: changes.delete.clone(),
                        validate_only: false,
                        forwarded: true,
                    };
                    self.forward_to_controller(leader, async |c| c.alter_configs(&request).await)
                        .await?
                }
                other => other?,
            }
            self.await_reconciled(&format!("topic {name}'s configs changed"), |t| {
                t.topics.get(name).is_some_and(|t| changes.made_in(&t.configs))
            })
            .await?;
            tracing::info!(topic = name, "changed topic configs through the controller");
            return Ok(());
        }
        let (metadata, topic) = (self.metadata.clone(), name.to_string());
        let meta =
            storage::blocking::off_shard(move || metadata.alter_configs(&topic, &changes, validate_only)).await?;
        if validate_only {
            return Ok(());
        }
        self.change_on_owners(&meta, TopicChange::Configs).await?;
        tracing::info!(topic = name, configs = ?meta.configs, "changed topic configs");
        Ok(())
    }

    /// Puts a topic's configs in force in the partition logs this shard
    /// owns: those of the table now, whatever change asked (two changes
    /// told in one order and arriving in the other still end at the last).
    pub(super) async fn apply_topic_configs(&self, topic: &TopicMeta) -> Result<(), BrokerError> {
        let table = self.metadata.snapshot();
        let Some(topic) = table.topics.get(&topic.name).filter(|t| t.id == topic.id) else {
            return Ok(()); // deleted meanwhile
        };
        let config = log_config(&topic.configs)?;
        let logs: Vec<(u32, PartitionLog)> = self
            .logs
            .borrow()
            .iter()
            .filter(|((name, _), _)| *name == topic.name)
            .map(|((_, partition), log)| (*partition, log.clone()))
            .collect();
        for (partition, log) in logs {
            log.set_config(config.clone())
                .await
                .map_err(|source| BrokerError::Storage {
                    topic: topic.name.clone(),
                    partition,
                    source,
                })?;
        }
        Ok(())
    }

    /// Grows a topic to `count` partitions (CreatePartitions): placed (on
    /// one node over the shards, in a cluster by the controller's leader),
    /// persisted, then opened where they live. Answered once this node has
    /// opened its own.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: u32,
        validate_only: bool,
        forwarded: bool,
    ) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        if let Some(controller) = &self.controller {
            let table = self.metadata.snapshot();
            let topic = table.topics.get(name).ok_or_else(|| unknown(name, 0))?;
            crate::topics::check_growth(name, topic.shards.len(), count)?;
            if validate_only {
                return Ok(());
            }
            match controller.create_partitions(name, count).await {
                Err(BrokerError::NotController { leader: Some(leader) }) if !forwarded => {
                    let request = net::messages::CreatePartitionsRequest {
                        topic: name.to_string(),
                        count,
                        validate_only: false,
                        forwarded: true,
                    };
                    self.forward_to_controller(leader, async |c| c.create_partitions(&request).await)
                        .await?
                }
                other => other?,
            }
            self.await_reconciled(&format!("topic {name} grown to {count} partitions"), |t| {
                t.topics.get(name).is_some_and(|t| t.shards.len() >= count as usize)
            })
            .await?;
            tracing::info!(topic = name, count, "added partitions through the controller");
            return Ok(());
        }
        let (metadata, topic) = (self.metadata.clone(), name.to_string());
        let meta = storage::blocking::off_shard(move || metadata.add_partitions(&topic, count, validate_only)).await?;
        if validate_only {
            return Ok(());
        }
        self.change_on_owners(&meta, TopicChange::Open).await?;
        tracing::info!(topic = name, count, "added partitions");
        Ok(())
    }

    /// Moves a partition's log start to `offset` (DeleteRecords), on the
    /// shard that owns it: at most the high watermark, -1 naming it.
    /// Answers where the log starts now. A replicated partition must be
    /// led here; the move is an entry of its Raft log, answered once this
    /// replica has made it.
    pub async fn delete_records(&self, topic: &str, partition: u32, offset: i64) -> Result<Offset, BrokerError> {
        refuse_internal(topic)?;
        let owner = self.owner(topic, partition)?;
        if owner != self.id {
            let topic = topic.to_string();
            return self
                .ask(owner, |reply| ShardMessage::DeleteRecords {
                    topic,
                    partition,
                    offset,
                    reply,
                })
                .await;
        }
        self.delete_records_here(topic, partition, offset).await
    }

    pub(super) async fn delete_records_here(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<Offset, BrokerError> {
        let log = self.log(topic, partition)?;
        let view = self.leading(topic, partition)?;
        let high_watermark = view.as_ref().map_or(log.log_end_offset(), |v| v.high_watermark());
        let target = match offset {
            HIGH_WATERMARK => high_watermark,
            offset if (0..=high_watermark.0 as i64).contains(&offset) => Offset(offset as u64),
            offset => {
                return Err(BrokerError::DeleteRecordsOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    high_watermark: high_watermark.0,
                })
            }
        };
        let storage_error = |source| BrokerError::Storage {
            topic: topic.to_string(),
            partition,
            source,
        };
        let Some(view) = view else {
            log.delete_records_before(target).await.map_err(storage_error)?;
            tracing::info!(topic, partition, log_start_offset = %log.log_start_offset(), "records deleted");
            return Ok(log.log_start_offset());
        };
        use futures::SinkExt;
        let mut handle = self
            .replication
            .clone()
            .expect("a replicated partition has a replication task");
        let (reply, proposed) = futures::channel::oneshot::channel();
        handle
            .send(Command::DeleteRecords {
                group: view.group,
                offset: target,
                reply,
            })
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        let moved = proposed.await.map_err(|_| BrokerError::ShardGone(self.id))??;
        let unknown = |why: &str| {
            BrokerError::TimedOut(format!(
                "{topic}/{partition}: the log start's move to {target} {why}; whether it was made is unknown"
            ))
        };
        futures::select! {
            moved = moved.fuse() => match moved {
                Ok(Ok(start)) => Ok(start),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(unknown("was let go")),
            },
            _ = glommio::timer::sleep(COMMIT_WAIT_MAX).fuse() => Err(unknown(&format!("was not committed within {COMMIT_WAIT_MAX:?}"))),
        }
    }

    /// The producers a partition remembers (DescribeProducers), on its
    /// owning shard; a replicated one's from its leader.
    pub async fn describe_producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<crate::producer_state::ActiveProducer>, BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner != self.id {
            let topic = topic.to_string();
            return self
                .ask(owner, |reply| ShardMessage::DescribeProducers {
                    topic,
                    partition,
                    reply,
                })
                .await;
        }
        self.describe_producers_here(topic, partition).await
    }

    pub(super) async fn describe_producers_here(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<crate::producer_state::ActiveProducer>, BrokerError> {
        let log = self.log(topic, partition)?;
        let key = (topic.to_string(), partition);
        if let Some(view) = self.leading(topic, partition)? {
            let turn = self.idempotent_turn(&key);
            let _turn = turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            self.refresh_producer_states(&key, &log, &view).await?;
        }
        Ok(self
            .producer_states
            .borrow()
            .get(&key)
            .map(|states| states.active())
            .unwrap_or_default())
    }

    /// Every transaction the coordinators of this node's shards hold
    /// (ListTransactions): id, producer id and state.
    pub async fn list_all_transactions(&self) -> Result<Vec<(String, crate::txn::TxnMeta)>, BrokerError> {
        let mut all = Vec::new();
        for shard in 0..self.inboxes.len() as u16 {
            if shard == self.id {
                all.extend(self.transactions_here());
            } else {
                all.extend(
                    self.ask(shard, |reply| ShardMessage::ListTransactions { reply })
                        .await?,
                );
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// The transactions this shard's coordinator holds.
    pub fn transactions_here(&self) -> Vec<(String, crate::txn::TxnMeta)> {
        self.txn_coordinator.borrow().states(|_| true)
    }

    /// The total and usable bytes of the data directory's filesystem; -1
    /// each where statvfs fails. statvfs may wait on the disk: off the
    /// shard.
    pub async fn data_dir_bytes(&self) -> (i64, i64) {
        let dir = self.config.data_dir.clone();
        storage::blocking::off_shard(move || filesystem_bytes(&dir))
            .await
            .map_or((-1, -1), |(total, usable)| (total as i64, usable as i64))
    }
}

/// The total and usable (available to an unprivileged writer) bytes of the
/// filesystem holding `dir`; None where statvfs fails.
fn filesystem_bytes(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into `stats`, which outlives the call;
    // `path` is a NUL-terminated string that outlives it too.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    let block = stats.f_frsize as u64;
    Some((stats.f_blocks as u64 * block, stats.f_bavail as u64 * block))
}
