//! The devices a worker offers. This version knows the CPU (memory budget from the host);
//! NVML-backed GPU inventory arrives with VRAM-aware placement.

use reelfarm_common::pb;

/// Bytes the kernel says it can hand out now (`MemAvailable`), or `None` off Linux.
pub fn host_available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One CPU device whose memory budget is `share` of the host's available memory, so that
/// several in-process workers together never promise more than the machine has.
pub fn cpu_device(share: f64) -> pb::Device {
    let available = host_available_memory_bytes().unwrap_or(8 << 30);
    let budget = (available as f64 * share.clamp(0.0, 1.0)) as u64;
    pb::Device {
        index: 0,
        kind: "cpu".into(),
        name: "cpu".into(),
        memory_total_bytes: budget,
        memory_free_bytes: budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_budget_is_a_share_of_available_memory() {
        let whole = cpu_device(1.0).memory_total_bytes;
        let half = cpu_device(0.5).memory_total_bytes;
        assert!(whole > 0);
        assert!(half <= whole / 2 + (64 << 20), "{half} vs {whole}");
    }
}
