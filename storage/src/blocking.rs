//! File operations that can wait on the disk through the page cache
//! (std::fs: create, write, fsync, rename, remove, a directory's sync) run
//! on the executor's blocking thread, never on the shard's own: the reactor
//! keeps serving other partitions and connections while the disk answers.
//! Segment data itself goes through glommio's DMA files and needs none of
//! this.

/// Runs `op` on the executor's blocking thread and waits for its result.
/// Must be called on a glommio executor.
pub async fn off_shard<T: Send + 'static>(op: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(op).await
}
