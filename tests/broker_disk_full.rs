//! A full disk: the store cannot write, so publishes waiting on it are nacked and the
//! failure is logged, and the broker keeps serving. The data dir is a 1 MiB tmpfs, which
//! needs root (CI runs as root); elsewhere the test says why it skips.

mod support;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Confirmation};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const TEST: &str = "a_full_disk_nacks_persistent_publishes_and_the_broker_keeps_serving";

/// A tmpfs mounted over a directory for the length of a test.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path) -> TinyDisk {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        TinyDisk(dir.to_owned())
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

#[tokio::test]
async fn a_full_disk_nacks_persistent_publishes_and_the_broker_keeps_serving() {
    if !running_as_root() {
        let note = format!("SKIPPED {TEST}: mounting a small tmpfs needs root");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{note} (CI=true)"
        );
        eprintln!("{note}");
        return;
    }
    let Some(mut broker) = TestBroker::start_process(TEST, &[]).await else {
        return;
    };
    broker.stop().await;
    let _disk = TinyDisk::mount(&broker.data_dir());
    broker.restart().await;

    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("disk-full");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
    )
    .await;
    let body = vec![7u8; 64 * 1024];
    let mut nacked = false;
    for _ in 0..64 {
        let confirm = timeout(ch.basic_publish(
            "".into(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .expect("basic.publish");
        if let Confirmation::Nack(_) = timeout(confirm).await.expect("a confirm") {
            nacked = true;
            break;
        }
    }
    assert!(
        nacked,
        "64 × 64 KiB persistent messages on a 1 MiB disk were all acked"
    );
    assert!(
        broker.log().contains("writing the message log failed"),
        "the failure is logged; stderr:\n{}",
        broker.log()
    );

    // Still serving: a transient message is routed and confirmed.
    let other = unique("still-serving");
    declare_queue(&ch, &other).await;
    publish(&ch, "", &other, b"hello").await;
    assert_eq!(queue_exists(&conn, &other).await.expect("queue"), 1);
    broker.stop().await;
}
