//! The `lora-wgpu` binary: `devices`, `--backend` and `--device`.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
        .args(args)
        .env_remove("WGPU_ADAPTER_NAME")
        .output()
        .expect("failed to start lora-wgpu");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_lists_adapters_and_marks_the_one_used() {
    let (ok, stdout, stderr) = run(&["devices"]);
    assert!(ok, "devices failed: {stderr}");
    let marked: Vec<_> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("*"))
        .collect();
    assert_eq!(
        marked.len(),
        1,
        "exactly one adapter is marked as used:\n{stdout}"
    );
    assert!(
        stdout.contains("storage bind") && stdout.contains("* = used"),
        "{stdout}"
    );
}

#[test]
fn backend_option_restricts_the_list() {
    let (ok, stdout, stderr) = run(&["devices", "--backend", "vulkan"]);
    assert!(ok, "{stderr}");
    let rows: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(!rows.is_empty(), "{stdout}");
    assert!(
        rows.iter().all(|l| l.contains("Vulkan")),
        "non-Vulkan adapter listed:\n{stdout}"
    );
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let (ok, _, stderr) = run(&["devices", "--backend", "cuda"]);
    assert!(!ok);
    assert!(
        stderr.contains("cuda") && stderr.contains("vulkan, metal, dx12, gl"),
        "{stderr}"
    );
}

#[test]
fn unknown_device_lists_what_exists() {
    let (ok, _, stderr) = run(&["devices", "--device", "no-such-gpu"]);
    assert!(!ok);
    assert!(
        stderr.contains("no-such-gpu") && stderr.contains("found: 0:"),
        "{stderr}"
    );
}
