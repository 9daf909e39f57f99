//! The memory alarm: a publisher cannot grow the broker's memory without bound. Above
//! `--memory-limit`, publishing connections are blocked (`connection.blocked` to clients
//! that understand it) until consumers bring memory back down, and nothing is lost.

mod support;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueuePurgeOptions};
use support::*;

const BODY: usize = 10 * 1024;
const MESSAGES: usize = 300;

#[tokio::test]
async fn publishers_are_blocked_above_the_memory_limit_and_released_below_it() {
    let Some(broker) = TestBroker::start_process(
        "publishers_are_blocked_above_the_memory_limit_and_released_below_it",
        &["--memory-limit", "1000000"],
    )
    .await
    else {
        return;
    };
    let publisher = connect(&broker).await;
    let ch = confirm_channel(&publisher).await;
    let name = unique("memory-alarm");
    declare_queue(&ch, &name).await;

    let sending = {
        let (ch, name) = (ch.clone(), name.clone());
        tokio::spawn(async move {
            let mut confirms = Vec::new();
            for _ in 0..MESSAGES {
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        name.as_str().into(),
                        BasicPublishOptions::default(),
                        &[1u8; BODY],
                        BasicProperties::default(),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                confirm.await.expect("confirm");
            }
        })
    };

    eventually("the publisher is told it is blocked", || async {
        publisher.status().blocked()
    })
    .await;
    let other = connect(&broker).await;
    let queued = queue_exists(&other, &name).await.expect("queue") as usize;
    assert!(
        queued < MESSAGES,
        "the broker kept reading past its memory limit: {queued} messages of {BODY} bytes queued"
    );

    // A consumer-side connection is not blocked: it frees memory, and publishing resumes.
    let purger = channel(&other).await;
    let mut total = 0;
    while total < MESSAGES {
        total += timeout(purger.queue_purge(name.as_str().into(), QueuePurgeOptions::default()))
            .await
            .expect("purge") as usize;
        if total < MESSAGES {
            eventually("more messages arrive once unblocked", || async {
                queue_exists(&other, &name).await.unwrap_or(0) > 0
            })
            .await;
        }
    }
    timeout(sending).await.expect("every publish is confirmed");
    assert_eq!(total, MESSAGES, "every message arrived exactly once");
    eventually("the publisher is unblocked", || async {
        !publisher.status().blocked()
    })
    .await;
}
