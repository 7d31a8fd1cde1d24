//! A full disk: appends fail with a clear error naming the path, nothing
//! acknowledged is lost, reads go on, and appends resume once space is freed.
//!
//! Needs root to loop-mount a small ext4 image. Elsewhere it says so and
//! passes, except under CI (CI=true), where it must run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use storage::{LogConfig, Offset, PartitionLog, StorageError};

struct SmallDisk {
    mount: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(megabytes: u32) -> Result<SmallDisk, String> {
        let dir = test_dir();
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let run = |program: &str, args: &[&str]| -> Result<String, String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        let image_arg = image.to_str().unwrap();
        run("truncate", &["-s", &format!("{megabytes}M"), image_arg])?;
        run("mkfs.ext4", &["-q", "-m", "0", image_arg])?;
        let device = run("losetup", &["--find", "--show", image_arg])?;
        if let Err(e) = run("mount", &[&device, mount.to_str().unwrap()]) {
            let _ = run("losetup", &["-d", &device]);
            return Err(e);
        }
        Ok(SmallDisk {
            mount,
            device,
            _dir: dir,
        })
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The files the test's executor opened stay referenced (by its
        // io_uring, torn down with the thread) after the log is closed, so
        // the mount is busy while the test runs: a plain unmount left every
        // run's disk mounted. Detach it lazily: the kernel finishes the
        // unmount, and the loop device's detach, once the last file goes.
        let quiet = |program: &str, args: &[&str]| {
            let _ = Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("umount", &["-l", self.mount.to_str().unwrap()]);
        quiet("losetup", &["-d", &self.device]);
    }
}

#[test]
fn a_full_disk_refuses_appends_and_loses_nothing() {
    let disk = match SmallDisk::new(24) {
        Ok(disk) => disk,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the full-disk test: {why}"
            );
            eprintln!("skipping the full-disk test, no loop mount here: {why}");
            return;
        }
    };
    let dir = disk.path().join("partition");
    let config = LogConfig {
        segment_bytes: 2 << 20,
        segment_preallocate_bytes: 1 << 20,
        retention_bytes: Some(4 << 20),
        retention_ms: None,
        ..small_config()
    };
    run(|| async {
        let log = PartitionLog::open(&dir, config.clone()).await.unwrap();
        let mut acknowledged = Offset(0);
        let error = loop {
            match log.append(&batch(acknowledged.0, 1, 30_000, 0)).await {
                Ok(info) => match log.flush().await {
                    Ok(_) => acknowledged = info.last_offset.next(),
                    Err(e) => break e,
                },
                Err(e) => break e,
            }
            assert!(acknowledged.0 < 10_000, "a 24 MiB disk never filled");
        };
        match &error {
            StorageError::Io { path, source, .. } => {
                assert!(path.starts_with(&dir), "{error}");
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "ENOSPC: {error}");
            }
            other => panic!("expected an I/O error naming the path, got {other}"),
        }
        assert!(acknowledged.0 > 100, "the disk held {} batches", acknowledged.0);
        eprintln!("disk full after {} acknowledged batches: {error}", acknowledged.0);

        // Every acknowledged batch reads back; the refused ones are absent.
        let seen = read_all(&log, 1 << 20).await;
        assert!(seen.len() as u64 >= acknowledged.0);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.key, (i as u64).to_le_bytes());
        }

        // Retention frees space and appends resume.
        assert!(log.apply_retention().await.unwrap() > 0);
        let info = log.append(&batch(777, 1, 30_000, 0)).await.unwrap();
        log.flush().await.unwrap();
        let end = info.last_offset.next();
        let start = log.log_start_offset();
        log.close().await.unwrap();

        let log = PartitionLog::open(&dir, config).await.unwrap();
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(read_all(&log, 1 << 20).await.len() as u64, end.0 - start.0);
        log.close().await.unwrap();
    });
}
