//! Works around glommio 0.9's probe of io_uring polled I/O (IOPOLL).
//!
//! The first time a thread opens a DMA file on a block device, glommio
//! probes whether the device supports polled I/O by reading the start of
//! that file on the poll ring, and caches the answer per device for the
//! thread. If that file is empty (as a new segment is), the kernel answers
//! the read at once without asking the device, the probe concludes "polled
//! I/O works", and every later read on a device without poll queues (virtio,
//! most SATA and many NVMe setups) fails with EOPNOTSUPP. So before a shard
//! opens segments, it opens one non-empty file on the same device, and the
//! probe asks the device for real.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{io_error, Result};

thread_local! {
    static PRIMED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Makes glommio probe polled I/O support of the device holding `dir` with a
/// real read. Call on the executor thread before any DMA file on that device
/// is opened; later calls for the same device are free.
pub async fn prime_iopoll_probe(dir: &Path) -> Result<()> {
    let device = std::fs::metadata(dir).map_err(|e| io_error("stat", dir, e))?.dev();
    if PRIMED.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(format!(".iopoll-probe-{}", std::process::id()));
    std::fs::write(&probe, [0u8; 4096]).map_err(|e| io_error("write iopoll probe", &probe, e))?;
    let opened = glommio::io::DmaFile::open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    let file = opened.map_err(|e| io_error("open iopoll probe", &probe, e))?;
    file.close()
        .await
        .map_err(|e| io_error("close iopoll probe", &probe, e))?;
    PRIMED.with(|p| p.borrow_mut().insert(device));
    Ok(())
}
