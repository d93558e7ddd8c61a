//! GPU classes and their relative speed, one table for the worker (which names its GPUs
//! from NVML or `--simulate-gpus`) and placement (which compares expected finish times).

/// (class, throughput on video diffusion relative to an L4, words that identify it in an
/// NVML device name). Rough public bf16 dense figures, rounded; placement only compares them.
const CLASSES: [(&str, f64, &[&str]); 10] = [
    ("B200", 5.0, &["B200"]),
    ("H200", 3.8, &["H200"]),
    ("H100", 3.5, &["H100", "H800"]),
    ("A100", 2.2, &["A100", "A800"]),
    ("L40S", 2.0, &["L40S"]),
    ("RTX4090", 1.8, &["4090"]),
    ("A10G", 1.1, &["A10G", "A10 "]),
    ("L4", 1.0, &["L4"]),
    ("T4", 0.5, &["T4"]),
    ("cpu", 0.05, &[]),
];

/// The speed of a class; an unknown class counts as an L4.
pub fn speed_of(class: &str) -> f64 {
    CLASSES
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(class))
        .map_or(1.0, |(_, speed, _)| *speed)
}

/// The class an NVML device name belongs to ("NVIDIA H100 80GB HBM3" → "H100"), or the
/// name itself when no class matches.
pub fn class_of_device_name(name: &str) -> String {
    let padded = format!("{name} ");
    CLASSES
        .iter()
        .find(|(_, _, words)| words.iter().any(|word| padded.contains(word)))
        .map_or_else(|| name.to_string(), |(class, _, _)| class.to_string())
}

/// The class names placement knows, for help texts and errors.
pub fn known_classes() -> Vec<&'static str> {
    CLASSES.iter().map(|(name, _, _)| *name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_names_map_to_their_class_and_speed() {
        assert_eq!(class_of_device_name("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(class_of_device_name("NVIDIA H200"), "H200");
        assert_eq!(class_of_device_name("NVIDIA L4"), "L4");
        assert_eq!(class_of_device_name("NVIDIA L40S"), "L40S");
        assert_eq!(class_of_device_name("NVIDIA A10G"), "A10G");
        assert_eq!(class_of_device_name("Mystery GPU"), "Mystery GPU");
        assert!(speed_of("h100") > speed_of("A100") && speed_of("A100") > speed_of("L4"));
        assert_eq!(speed_of("Mystery GPU"), 1.0);
    }
}
