//! The devices a worker offers and their live readings: NVIDIA GPUs through NVML when a
//! driver is present, a simulated pool given by `--simulate-gpus`, or else the CPU. NVML
//! missing is the ordinary case on a machine without a driver, never an error.

use std::sync::Mutex;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use reelfarm_common::gpu_class;
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
        class: "cpu".into(),
        speed: gpu_class::speed_of("cpu"),
        ..Default::default()
    }
}

/// `2x80GiB:H100,1x24GiB:L4` → simulated devices (the class is optional: `2x80GiB`).
pub fn parse_simulated_gpus(spec: &str) -> Result<Vec<pb::Device>, String> {
    let mut devices = Vec::new();
    for part in spec
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (sized, class) = match part.split_once(':') {
            Some((sized, class)) if !class.trim().is_empty() => (sized.trim(), class.trim()),
            Some(_) => {
                return Err(format!(
                    "--simulate-gpus: {part:?}: name a class after ':', one of {}",
                    gpu_class::known_classes().join(", ")
                ));
            }
            None => (part, "L4"),
        };
        let (count, size) = match sized.split_once('x') {
            Some((count, size)) => (
                count.trim().parse::<u32>().map_err(|_| {
                    format!("--simulate-gpus: {part:?}: the count before 'x' must be a number")
                })?,
                size.trim(),
            ),
            None => (1, sized),
        };
        let (number, unit) = size.split_at(
            size.find(|c: char| c.is_ascii_alphabetic())
                .unwrap_or(size.len()),
        );
        let number: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("--simulate-gpus: {part:?}: write sizes like 80GiB or 24GB"))?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "gib" | "g" | "gb" => f64::from(1u32 << 30),
            "mib" | "m" | "mb" => f64::from(1u32 << 20),
            other => {
                return Err(format!(
                    "--simulate-gpus: {part:?}: unknown unit {other:?} (use GiB or MiB)"
                ));
            }
        };
        if count == 0 || number <= 0.0 {
            return Err(format!(
                "--simulate-gpus: {part:?}: count and size must be positive"
            ));
        }
        let bytes = (number * scale) as u64;
        for _ in 0..count {
            let index = devices.len() as u32;
            devices.push(pb::Device {
                index,
                kind: "simulated".into(),
                name: format!("simulated {class} {index}"),
                memory_total_bytes: bytes,
                memory_free_bytes: bytes,
                uuid: format!("SIM-{class}-{index}"),
                class: class.to_string(),
                speed: gpu_class::speed_of(class),
                ..Default::default()
            });
        }
    }
    if devices.is_empty() {
        return Err(
            "--simulate-gpus: give at least one device, e.g. 2x80GiB:H100,1x24GiB:L4".into(),
        );
    }
    Ok(devices)
}

/// Where the worker's devices come from.
pub enum Inventory {
    Nvml(Box<Mutex<Nvml>>),
    Fixed(Vec<pb::Device>),
}

impl Inventory {
    /// NVML's GPUs when a driver answers, else `simulate` (a `--simulate-gpus` spec), else
    /// the CPU; with the one line that says which, for the log.
    pub fn discover(simulate: Option<&str>) -> Result<(Inventory, String), String> {
        if let Some(spec) = simulate {
            let devices = parse_simulated_gpus(spec)?;
            let line =
                format!("simulated GPUs ({spec}): placement sees them, the model runs on the CPU");
            return Ok((Inventory::Fixed(devices), line));
        }
        match Nvml::init() {
            Ok(nvml) => {
                let inventory = Inventory::Nvml(Box::new(Mutex::new(nvml)));
                let devices = inventory.devices();
                if devices.is_empty() {
                    return Ok((
                        Inventory::Fixed(vec![cpu_device(1.0)]),
                        "NVML found no GPU: running on the CPU".into(),
                    ));
                }
                let names: Vec<String> = devices
                    .iter()
                    .map(|d| format!("{} ({:.0} GiB)", d.name, gib(d.memory_total_bytes)))
                    .collect();
                let mut line = format!("NVML: {} GPU(s): {}", devices.len(), names.join(", "));
                if !cfg!(feature = "cuda") {
                    line.push_str(
                        " (this build has no cuda feature: readings come from these GPUs, \
                         rendering runs on the CPU)",
                    );
                }
                Ok((inventory, line))
            }
            Err(error) => Ok((
                Inventory::Fixed(vec![cpu_device(1.0)]),
                format!("no NVIDIA driver (NVML: {error}): running on the CPU"),
            )),
        }
    }

    /// The devices with fresh readings. A GPU NVML cannot read is left out, not fatal.
    pub fn devices(&self) -> Vec<pb::Device> {
        match self {
            Inventory::Fixed(devices) => devices.clone(),
            Inventory::Nvml(nvml) => {
                let nvml = nvml.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let count = nvml.device_count().unwrap_or(0);
                (0..count)
                    .filter_map(|index| nvml_device(&nvml, index))
                    .collect()
            }
        }
    }
}

fn nvml_device(nvml: &Nvml, index: u32) -> Option<pb::Device> {
    let device = nvml.device_by_index(index).ok()?;
    let name = device.name().unwrap_or_else(|_| format!("GPU {index}"));
    let memory = device.memory_info().ok()?;
    let class = gpu_class::class_of_device_name(&name);
    Some(pb::Device {
        index,
        kind: "cuda".into(),
        memory_total_bytes: memory.total,
        memory_free_bytes: memory.free,
        memory_used_bytes: memory.used,
        uuid: device.uuid().unwrap_or_default(),
        speed: gpu_class::speed_of(&class),
        class,
        utilization_percent: device.utilization_rates().map_or(0, |u| u.gpu),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).unwrap_or(0),
        power_milliwatts: device.power_usage().unwrap_or(0),
        name,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
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

    #[test]
    fn simulated_gpus_parse_with_classes_and_bad_ones_say_why() {
        let devices = parse_simulated_gpus("2x80GiB:H100,1x24GiB:L4").unwrap();
        assert_eq!(devices.len(), 3);
        assert_eq!(devices[0].memory_total_bytes, 80 << 30);
        assert_eq!((devices[1].class.as_str(), devices[1].index), ("H100", 1));
        assert_eq!(devices[2].class, "L4");
        assert!(devices[0].speed > devices[2].speed);
        assert_eq!(
            parse_simulated_gpus("512MiB").unwrap()[0].memory_total_bytes,
            512 << 20
        );
        let error = parse_simulated_gpus("2x80TB").unwrap_err();
        assert!(error.contains("unknown unit"), "{error}");
        assert!(
            parse_simulated_gpus("1x80GiB:")
                .unwrap_err()
                .contains("H100")
        );
        assert!(parse_simulated_gpus("").is_err());
        assert!(parse_simulated_gpus("0x24GiB").is_err());
    }

    #[test]
    fn without_a_driver_discovery_falls_back_to_the_cpu_and_says_so() {
        let (inventory, line) = Inventory::discover(None).unwrap();
        let devices = inventory.devices();
        assert!(!devices.is_empty());
        if devices[0].kind == "cpu" {
            assert!(line.contains("CPU"), "{line}");
        } else {
            assert!(line.starts_with("NVML"), "{line}");
        }
    }
}
