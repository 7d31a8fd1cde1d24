//! The machine's own limits, measured in the same run as a workload: raw
//! O_DIRECT sequential write and read bandwidth of the data directory's disk
//! through glommio, loopback TCP bandwidth between two threads, and the
//! loopback round trip between two threads (the floor under any request's
//! latency on this machine: a wakeup of each side), and the latency of a
//! small O_DIRECT write made durable with fdatasync (the floor under an
//! acks=all produce).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use glommio::io::DmaFile;
use serde::{Deserialize, Serialize};

/// Bytes each disk measurement writes and reads.
const DISK_BYTES: u64 = 2 << 30;
/// Bytes the loopback measurement sends.
const LOOPBACK_BYTES: u64 = 4 << 30;
const READ_BYTES: usize = 2 << 20;
const READS_IN_FLIGHT: u64 = 8;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub disk_write_mb_per_s: f64,
    pub disk_read_mb_per_s: f64,
    pub loopback_mb_per_s: f64,
    /// A 64-byte ping-pong over loopback TCP between two blocking threads,
    /// paced like a fixed-rate client: median and 99th percentile.
    #[serde(default)]
    pub loopback_round_trip_p50_us: f64,
    #[serde(default)]
    pub loopback_round_trip_p99_us: f64,
    /// A 16 KiB O_DIRECT write at the end of a preallocated file, then
    /// fdatasync, one after another: median and 99th percentile.
    #[serde(default)]
    pub fdatasync_p50_us: f64,
    #[serde(default)]
    pub fdatasync_p99_us: f64,
    /// The same writes again over the blocks just written (as a log that
    /// zeroes ahead writes): no extent to convert, no journal commit.
    #[serde(default)]
    pub fdatasync_overwrite_p50_us: f64,
    #[serde(default)]
    pub fdatasync_overwrite_p99_us: f64,
    /// Those overwrites made by `SYNCED_STREAMS` files at once, each one
    /// after another (as that many partitions flushing on their own): the
    /// floor when the disk sees several fdatasyncs together.
    #[serde(default)]
    pub fdatasync_concurrent_p50_us: f64,
    #[serde(default)]
    pub fdatasync_concurrent_p99_us: f64,
}

/// Durable writes the fdatasync floor times, and the size of each.
const SYNCED_WRITES: u64 = 400;
const SYNCED_WRITE_BYTES: usize = 16 << 10;
/// Files making durable writes at once in the concurrent pass: the
/// partitions of the latency presets.
pub const SYNCED_STREAMS: usize = 4;

/// Round trips the latency floor measures.
const ROUND_TRIPS: usize = 5000;

pub fn measure(dir: &Path) -> Result<Limits, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let dir_owned = dir.to_path_buf();
    let (write, read, synced) = glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move {
            storage::device::prime_iopoll_probe(&dir_owned)
                .await
                .map_err(|e| e.to_string())?;
            let written = crate::storage_bench::raw_write(&dir_owned, 0, DISK_BYTES, true).await?;
            let read = read_back(&dir_owned.join("raw")).await?;
            let synced = synced_writes(&dir_owned.join("synced")).await?;
            let concurrent = concurrent_synced_writes(&dir_owned).await?;
            Ok::<_, String>((written.mb_per_s, read, (synced, concurrent)))
        })?;
    let (synced, concurrent) = synced;
    let _ = std::fs::remove_dir_all(dir);
    let (round_trip_p50, round_trip_p99) = round_trip()?;
    Ok(Limits {
        disk_write_mb_per_s: write,
        disk_read_mb_per_s: read,
        loopback_mb_per_s: loopback()?,
        loopback_round_trip_p50_us: round_trip_p50,
        loopback_round_trip_p99_us: round_trip_p99,
        fdatasync_p50_us: synced.fresh.0,
        fdatasync_p99_us: synced.fresh.1,
        fdatasync_overwrite_p50_us: synced.overwrite.0,
        fdatasync_overwrite_p99_us: synced.overwrite.1,
        fdatasync_concurrent_p50_us: concurrent.0,
        fdatasync_concurrent_p99_us: concurrent.1,
    })
}

/// Median and 99th percentile (µs) of durable writes into fresh
/// preallocated space, and over blocks already written.
struct SyncedWrites {
    fresh: (f64, f64),
    overwrite: (f64, f64),
}

/// Times `SYNCED_WRITES` appends of 16 KiB, each made durable before the
/// next, as a partition's group commit does at its slowest: into fresh
/// preallocated space, then over the same blocks.
async fn synced_writes(path: &Path) -> Result<SyncedWrites, String> {
    let file = synced_file(path).await?;
    let fresh = synced_pass(&file).await?;
    let overwrite = synced_pass(&file).await?;
    file.close().await.map_err(|e| e.to_string())?;
    Ok(SyncedWrites {
        fresh: quantiles(fresh),
        overwrite: quantiles(overwrite),
    })
}

/// `SYNCED_STREAMS` files, each written once and then overwritten by
/// durable writes one after another, all at the same time: the median and
/// 99th percentile (µs) of the overwrites of all of them.
async fn concurrent_synced_writes(dir: &Path) -> Result<(f64, f64), String> {
    let mut files = Vec::new();
    for stream in 0..SYNCED_STREAMS {
        let file = synced_file(&dir.join(format!("synced-{stream}"))).await?;
        synced_pass(&file).await?;
        files.push(file);
    }
    let passes = futures::future::join_all(files.iter().map(synced_pass)).await;
    let mut latencies = Vec::new();
    for pass in passes {
        latencies.extend(pass?);
    }
    for file in files {
        file.close().await.map_err(|e| e.to_string())?;
    }
    Ok(quantiles(latencies))
}

async fn synced_file(path: &Path) -> Result<DmaFile, String> {
    let file = glommio::io::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| e.to_string())?;
    let total = SYNCED_WRITES * SYNCED_WRITE_BYTES as u64;
    file.pre_allocate(total, false).await.map_err(|e| e.to_string())?;
    file.fdatasync().await.map_err(|e| e.to_string())?;
    Ok(file)
}

/// One pass of `SYNCED_WRITES` writes over the file's blocks, each made
/// durable before the next: their latencies (µs).
async fn synced_pass(file: &DmaFile) -> Result<Vec<f64>, String> {
    let mut latencies = Vec::with_capacity(SYNCED_WRITES as usize);
    for i in 0..SYNCED_WRITES {
        let mut buffer = file.alloc_dma_buffer(SYNCED_WRITE_BYTES);
        buffer.as_bytes_mut().fill(0x5a);
        let started = Instant::now();
        file.write_at(buffer, i * SYNCED_WRITE_BYTES as u64)
            .await
            .map_err(|e| e.to_string())?;
        file.fdatasync().await.map_err(|e| e.to_string())?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latencies)
}

/// Median and 99th percentile.
fn quantiles(mut latencies: Vec<f64>) -> (f64, f64) {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Reads the file written by the raw write back, 2 MiB at a time, eight
/// reads in flight.
async fn read_back(path: &Path) -> Result<f64, String> {
    let file = std::rc::Rc::new(DmaFile::open(path).await.map_err(|e| e.to_string())?);
    let size = file.file_size().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut position = 0u64;
    let mut read = 0u64;
    while position < size {
        let reads: Vec<_> = (0..READS_IN_FLIGHT)
            .map(|i| position + i * READ_BYTES as u64)
            .filter(|p| *p < size)
            .map(|p| {
                let file = file.clone();
                async move { file.read_at_aligned(p, READ_BYTES).await.map(|r| r.len()) }
            })
            .collect();
        for result in futures::future::join_all(reads).await {
            read += result.map_err(|e| e.to_string())? as u64;
        }
        position += READS_IN_FLIGHT * READ_BYTES as u64;
    }
    Ok(read as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn loopback() -> Result<f64, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    let start = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let chunk = vec![0x17u8; 1 << 20];
    let mut sent = 0u64;
    while sent < LOOPBACK_BYTES {
        stream.write_all(&chunk).map_err(|e| e.to_string())?;
        sent += chunk.len() as u64;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| "loopback reader panicked".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(received as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Median and 99th percentile of a 64-byte loopback ping-pong, in µs. The
/// client pauses 100 µs after each round trip so that both sides go to
/// sleep and are woken, as at a fixed rate, rather than spinning hot.
fn round_trip() -> Result<(f64, f64), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0u8; 64];
        loop {
            match stream.read_exact(&mut buffer) {
                Ok(()) => stream.write_all(&buffer)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    let mut buffer = [0x17u8; 64];
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        stream.write_all(&buffer).map_err(|e| e.to_string())?;
        stream.read_exact(&mut buffer).map_err(|e| e.to_string())?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    drop(stream);
    echo.join()
        .map_err(|_| "loopback echo panicked".to_string())?
        .map_err(|e| e.to_string())?;
    samples.sort_by(f64::total_cmp);
    Ok((samples[ROUND_TRIPS / 2], samples[ROUND_TRIPS * 99 / 100]))
}
