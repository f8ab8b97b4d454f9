//! `postern wg up` argument and configuration errors (no root needed).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::process::Command;

const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

fn postern(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_config_line_prints_file_and_line_and_exits_2_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wg0.conf");
    std::fs::write(
        &path,
        format!("[Interface]\nPrivateKey = {KEY}\nAddress = 10.0.0.2/32\nPostUp = iptables -F\n"),
    )
    .unwrap();
    let (code, text) = postern(&["wg", "up", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{}:4: ", path.display())),
        "no FILE:LINE in: {text}"
    );
    assert!(!text.contains(KEY), "the private key was printed: {text}");
}

#[test]
fn config_without_address_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wg0.conf");
    std::fs::write(&path, format!("[Interface]\nPrivateKey = {KEY}\n")).unwrap();
    let (code, text) = postern(&["wg", "up", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no Address"), "{text}");
    assert!(!text.contains(KEY), "{text}");
}

#[test]
fn bad_forward_is_a_usage_error() {
    let (code, text) = postern(&["wg", "up", "x.conf", "--forward", "tcp:127.0.0.1:80"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no remote address"), "{text}");
}

#[test]
fn tun_mode_refuses_a_bad_name_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wg0.conf");
    std::fs::write(
        &path,
        format!(
            "[Interface]\nPrivateKey = {KEY}\nAddress = 10.0.0.2/32\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 10.0.0.0/24, 0.0.0.0/0\n"
        ),
    )
    .unwrap();
    let (code, text) = postern(&[
        "wg",
        "up",
        path.to_str().unwrap(),
        "--tun=this-name-is-far-too-long",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a valid interface name"), "{text}");
    let (code, text) = postern(&[
        "wg",
        "up",
        path.to_str().unwrap(),
        "--tun",
        "--forward",
        "tcp:127.0.0.1:1:10.0.0.1:2",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot be used with"), "{text}");
}

#[test]
fn help_reads_like_a_man_page() {
    let (code, text) = postern(&["--help"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Exit status"), "{text}");
    assert!(text.contains("wg"), "{text}");
    let (code, text) = postern(&["wg", "up", "--help"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("--forward"), "{text}");
    assert!(text.contains("--socks5"), "{text}");
    assert!(text.contains("--tun"), "{text}");
}
