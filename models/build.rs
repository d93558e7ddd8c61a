//! Digests reelfarm-tiny's shipped weights at build time, so the farm's segment cache keys
//! change with them even in a scheduler built without the model (which never reads them).

use sha2::{Digest, Sha256};

fn main() {
    let path = "tiny/weights/reelfarm-tiny.safetensors";
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(path).expect("models/tiny/weights/reelfarm-tiny.safetensors");
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("cargo:rustc-env=REELFARM_TINY_WEIGHTS_SHA256={digest}");
}
