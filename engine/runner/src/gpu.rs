//! GPU slots. Each device has a lock file `.kiln/gpus/<host>/gpu<n>.lock`; a step leases devices by taking
//! an exclusive `flock` on their files. The lock descriptors are inherited by the supervisor and
//! the training program (see `kiln_plugin_host::GpuGrant`), so a device stays leased until the
//! last process of the training exits, even when the engine dies first, and is free again when
//! the process group is gone. Steps that need more devices than are free wait in line.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// The machine's GPUs.
#[derive(Debug, Clone)]
pub struct GpuPool {
    devices: Vec<u32>,
    lock_dir: PathBuf,
}

/// Devices held by one step, released when dropped (if no launched process still holds them).
#[derive(Debug)]
pub struct GpuLease {
    pub devices: Vec<u32>,
    files: Vec<File>,
}

impl GpuLease {
    pub fn grant(&self) -> kiln_plugin_host::GpuGrant {
        kiln_plugin_host::GpuGrant {
            devices: self.devices.clone(),
            lock_fds: self.files.iter().map(|f| f.as_raw_fd()).collect(),
        }
    }
}

impl GpuPool {
    pub fn new(devices: Vec<u32>, lock_dir: PathBuf) -> Self {
        Self { devices, lock_dir }
    }

    pub fn count(&self) -> u32 {
        self.devices.len() as u32
    }

    /// True when the machine has GPUs, so steps that ask for none must not see any.
    pub fn managed(&self) -> bool {
        !self.devices.is_empty()
    }

    fn try_lock(&self, device: u32) -> std::io::Result<Option<File>> {
        std::fs::create_dir_all(&self.lock_dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_dir.join(format!("gpu{device}.lock")))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Try to lease `n` free devices at once; None when fewer are free.
    pub fn try_lease(&self, n: u32) -> std::io::Result<Option<GpuLease>> {
        let mut lease = GpuLease {
            devices: Vec::new(),
            files: Vec::new(),
        };
        for &d in &self.devices {
            if lease.devices.len() as u32 == n {
                break;
            }
            if let Some(f) = self.try_lock(d)? {
                lease.devices.push(d);
                lease.files.push(f);
            }
        }
        Ok((lease.devices.len() as u32 == n).then_some(lease))
    }

    /// Lease `n` devices, waiting until they are free.
    pub async fn lease(&self, n: u32) -> std::io::Result<GpuLease> {
        loop {
            if let Some(lease) = self.try_lease(n)? {
                return Ok(lease);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Re-take the devices recorded for a step interrupted by an engine crash. Devices still
    /// locked are held by that step's own surviving processes, so they are not waited for.
    pub fn relock(&self, devices: &[u32]) -> std::io::Result<GpuLease> {
        let mut lease = GpuLease {
            devices: devices.to_vec(),
            files: Vec::new(),
        };
        for &d in devices {
            if let Some(f) = self.try_lock(d)? {
                lease.files.push(f);
            }
        }
        Ok(lease)
    }

    /// An empty lease: the step sees no GPU.
    pub fn none(&self) -> GpuLease {
        GpuLease {
            devices: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// The machine's GPUs: `KILN_GPUS`/`--gpus` (a count like `2` or a list like `0,2`), else the
/// devices `nvidia-smi -L` lists, else none.
/// Most GPUs a machine is configured with (and one more than the largest device index).
pub const MAX_GPUS: u32 = 1024;

pub fn detect(configured: Option<&str>) -> Result<Vec<u32>, String> {
    if let Some(spec) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        if spec.contains(',') {
            let devices: Vec<u32> = spec
                .split(',')
                .map(|d| {
                    d.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|&d| d < MAX_GPUS)
                        .ok_or_else(|| {
                            format!(
                                "GPU list `{spec}`: `{d}` is not a device index (0 to {})",
                                MAX_GPUS - 1
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            let mut sorted = devices.clone();
            sorted.sort_unstable();
            if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(format!(
                    "GPU list `{spec}`: device {} is listed twice",
                    pair[0]
                ));
            }
            return Ok(devices);
        }
        let n: u32 = spec
            .parse()
            .ok()
            .filter(|&n| n <= MAX_GPUS)
            .ok_or_else(|| {
                format!(
                    "GPUs `{spec}`: give a count from 0 to {MAX_GPUS} (2) or a list of device \
                     indices (0,1)"
                )
            })?;
        return Ok((0..n).collect());
    }
    // Spawning costs milliseconds: without nvidia-smi on PATH there is nothing to ask.
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nvidia-smi").is_file())
    });
    if !on_path {
        return Ok(Vec::new());
    }
    let Ok(out) = std::process::Command::new("nvidia-smi").arg("-L").output() else {
        return Ok(Vec::new());
    };
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("GPU "))
        .count() as u32;
    Ok((0..listed).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_gpus_are_a_count_or_a_list() {
        assert_eq!(detect(Some("2")).unwrap(), vec![0, 1]);
        assert_eq!(detect(Some("0,3")).unwrap(), vec![0, 3]);
        assert!(detect(Some("two")).is_err());
        assert!(
            detect(Some("4000000000"))
                .unwrap_err()
                .contains("from 0 to 1024")
        );
        assert!(detect(Some("-1")).is_err());
        assert!(
            detect(Some("0,99999"))
                .unwrap_err()
                .contains("not a device index")
        );
        assert!(detect(Some("1,1")).unwrap_err().contains("listed twice"));
        assert_eq!(detect(Some("1024")).unwrap().len(), 1024);
    }

    #[test]
    fn leases_are_exclusive_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let pool = GpuPool::new(vec![0, 1], dir.path().to_owned());
        let a = pool.try_lease(1).unwrap().unwrap();
        let b = pool.try_lease(1).unwrap().unwrap();
        assert_ne!(a.devices, b.devices);
        assert!(
            pool.try_lease(1).unwrap().is_none(),
            "both devices are leased"
        );
        drop(a);
        assert!(pool.try_lease(1).unwrap().is_some());
        assert!(
            pool.try_lease(3).unwrap().is_none(),
            "more than the machine has"
        );
    }
}
