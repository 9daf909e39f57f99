//! The checks a command passes before a minion runs it, as pure functions of the
//! delivered bytes, the master key, the minion's identity, its clock and its journal.
//!
//! In order: the bytes are a dispatch envelope; it is signed under
//! [`domain::COMMAND`] by the master (the pinned key, or the key whose fingerprint was
//! given with `--master-fingerprint`); the signed target names this minion; the command
//! has not expired (strictly: `now > expires_at` is refused); it was not issued further
//! in the future than the skew window; its job id is not in the journal. The first
//! failed check is the [`Refusal`], whose text is the reason sent back to the master,
//! unless the command is not known to come from the master ([`Refusal::reply_to`]):
//! those are only logged.

use crate::config::MAX_REFUSAL_BYTES;
use dispatch_common::envelope::{Envelope, EnvelopeError, domain};
use dispatch_common::keys::{Fingerprint, PublicKey};
use dispatch_common::message::Command;
use std::time::Duration;
use uuid::Uuid;

/// The key commands must be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterKey {
    /// The pinned master key.
    Pinned(PublicKey),
    /// `--master-fingerprint`, before any command pinned its key.
    Fingerprint(Fingerprint),
}

/// Who is checking, and when.
#[derive(Debug, Clone, Copy)]
pub struct Checker<'a> {
    pub id: &'a str,
    pub groups: &'a [String],
    pub now_ms: u64,
    pub skew_ms: u64,
}

/// A command that passed every check, with the master key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub command: Command,
    pub signer: PublicKey,
}

/// Why a command is not run. The text is the reason reported to the master; every
/// variant keeps it under [`MAX_REFUSAL_BYTES`] (see [`Refusal::reason`]), so neither an
/// AMQP reply text (255 bytes) nor a log line cuts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a dispatch command: {}", clip(.0, 100))]
    Undecodable(String),
    /// The signature does not verify: never answered (the job id is only claimed).
    #[error("signed by a key that is not the master's: {}", clip(.detail, 100))]
    NotFromMaster {
        job_id: Option<Uuid>,
        detail: String,
    },
    #[error("not for this minion: target '{}' (with its resolved recipients) does not name it", clip(.target, 60))]
    NotForMe {
        job_id: Uuid,
        target: String,
        id: String,
    },
    #[error(
        "expired {} ago (expiry {expires_at_ms} ms, minion clock {now_ms} ms)",
        ago(*now_ms, *expires_at_ms)
    )]
    Expired {
        job_id: Uuid,
        expires_at_ms: u64,
        now_ms: u64,
    },
    #[error(
        "future-dated: issued {} ahead of the minion clock (skew window {}); check the clocks",
        ago(*issued_at_ms, *now_ms),
        humantime::format_duration(Duration::from_millis(*skew_ms))
    )]
    FutureDated {
        job_id: Uuid,
        issued_at_ms: u64,
        now_ms: u64,
        skew_ms: u64,
    },
    #[error("replayed: job {job_id} was already taken by this minion")]
    Replayed { job_id: Uuid },
}

fn ago(later: u64, earlier: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(later.saturating_sub(earlier)))
}

/// `text` cut to at most `max` bytes (on a character boundary, ending in `…` when cut).
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

impl Refusal {
    /// The job the refusal is about, when known (for a forged command, the id it claims).
    pub fn job_id(&self) -> Option<Uuid> {
        match self {
            Refusal::Undecodable(_) => None,
            Refusal::NotFromMaster { job_id, .. } => *job_id,
            Refusal::NotForMe { job_id, .. }
            | Refusal::Expired { job_id, .. }
            | Refusal::FutureDated { job_id, .. }
            | Refusal::Replayed { job_id } => Some(*job_id),
        }
    }

    /// Whether someone other than the master tried to command this minion.
    pub fn is_forgery(&self) -> bool {
        matches!(self, Refusal::NotFromMaster { .. })
    }

    /// The job id to answer the refusal under: `None` when the command is not known to
    /// come from the master (undecodable, or its signature does not verify). Answering a
    /// forged command under the job id it claims would let a forger plant a
    /// minion-signed refusal under a real job.
    pub fn reply_to(&self) -> Option<Uuid> {
        if self.is_forgery() {
            None
        } else {
            self.job_id()
        }
    }

    /// The reason reported to the master, at most [`MAX_REFUSAL_BYTES`].
    pub fn reason(&self) -> String {
        clip(&self.to_string(), MAX_REFUSAL_BYTES)
    }
}

/// Refuses a command once the minion's clock (`now_ms`) has passed its signed expiry.
/// Checked at delivery and again right before the job is journalled and spawned (a
/// command may wait for a job slot past its expiry).
pub fn check_expiry(job_id: Uuid, expires_at_ms: u64, now_ms: u64) -> Result<(), Refusal> {
    if now_ms > expires_at_ms {
        return Err(Refusal::Expired {
            job_id,
            expires_at_ms,
            now_ms,
        });
    }
    Ok(())
}

/// Runs every check on delivered `bytes`. `seen` tells whether a job id is in the
/// journal.
pub fn verify(
    bytes: &[u8],
    master: &MasterKey,
    checker: &Checker<'_>,
    seen: impl Fn(&Uuid) -> bool,
) -> Result<Verified, Refusal> {
    let envelope = Envelope::decode(bytes).map_err(|e| Refusal::Undecodable(e.to_string()))?;
    let (command, signer) = open(&envelope, master)?;
    check(&command, checker, seen)?;
    Ok(Verified { command, signer })
}

/// Opens the envelope with the master key.
fn open(envelope: &Envelope, master: &MasterKey) -> Result<(Command, PublicKey), Refusal> {
    let claimed = envelope
        .claimed_key()
        .map_err(|e| Refusal::Undecodable(e.to_string()))?;
    let expected = match master {
        MasterKey::Pinned(key) => *key,
        MasterKey::Fingerprint(fp) if claimed.fingerprint() == *fp => claimed,
        MasterKey::Fingerprint(fp) => {
            return Err(Refusal::NotFromMaster {
                job_id: claimed_job_id(envelope),
                detail: format!("{} (master fingerprint: {fp})", claimed.fingerprint()),
            });
        }
    };
    match envelope.open::<Command>(domain::COMMAND, &expected) {
        Ok(command) => Ok((command, expected)),
        Err(EnvelopeError::BadPayload(e)) => Err(Refusal::Undecodable(format!(
            "signed by the master, but does not decode (version mismatch?): {e}"
        ))),
        Err(EnvelopeError::WrongKey { got, expected }) => Err(Refusal::NotFromMaster {
            job_id: claimed_job_id(envelope),
            detail: format!("{got} (pinned master key: {expected})"),
        }),
        Err(EnvelopeError::BadSignature(_)) => Err(Refusal::NotFromMaster {
            job_id: claimed_job_id(envelope),
            detail: format!(
                "bad signature of key {} (tampered with?)",
                claimed.fingerprint()
            ),
        }),
        Err(e) => Err(Refusal::Undecodable(e.to_string())),
    }
}

/// The job id an unverified payload claims, to log a forgery with (never to answer).
fn claimed_job_id(envelope: &Envelope) -> Option<Uuid> {
    rmp_serde::from_slice::<Command>(&envelope.payload)
        .ok()
        .map(|c| c.job_id)
}

/// The checks on a command whose signature is good.
pub fn check(
    command: &Command,
    checker: &Checker<'_>,
    seen: impl Fn(&Uuid) -> bool,
) -> Result<(), Refusal> {
    let job_id = command.job_id;
    if !command.is_for(checker.id, checker.groups) {
        return Err(Refusal::NotForMe {
            job_id,
            target: command.target.to_string(),
            id: checker.id.to_owned(),
        });
    }
    check_expiry(job_id, command.expires_at_ms, checker.now_ms)?;
    if command.issued_at_ms > checker.now_ms.saturating_add(checker.skew_ms) {
        return Err(Refusal::FutureDated {
            job_id,
            issued_at_ms: command.issued_at_ms,
            now_ms: checker.now_ms,
            skew_ms: checker.skew_ms,
        });
    }
    if seen(&job_id) {
        return Err(Refusal::Replayed { job_id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::keys::KeyPair;
    use dispatch_common::message::Exec;
    use dispatch_common::target::Target;

    const NOW: u64 = 1_700_000_000_000;
    const SKEW: u64 = 60_000;

    fn groups() -> Vec<String> {
        vec!["web".to_owned()]
    }

    fn command(target: Target) -> Command {
        Command {
            job_id: Uuid::now_v7(),
            target,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 60_000,
            exec: Exec {
                argv: vec!["true".into()],
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: None,
            },
            recipients: Vec::new(),
        }
    }

    fn seal(master: &KeyPair, command: &Command) -> Vec<u8> {
        Envelope::seal(domain::COMMAND, master, "master", command)
    }

    fn run(bytes: &[u8], master: &MasterKey, now_ms: u64) -> Result<Verified, Refusal> {
        let groups = groups();
        let checker = Checker {
            id: "web.01",
            groups: &groups,
            now_ms,
            skew_ms: SKEW,
        };
        verify(bytes, master, &checker, |_| false)
    }

    #[test]
    fn a_good_command_is_accepted() {
        let master = KeyPair::generate();
        let cmd = command(Target::pattern("web.*").unwrap());
        let verified = run(
            &seal(&master, &cmd),
            &MasterKey::Pinned(master.public()),
            NOW,
        )
        .unwrap();
        assert_eq!(verified.command, cmd);
        assert_eq!(verified.signer, master.public());
    }

    #[test]
    fn a_command_for_my_group_or_everyone_is_accepted() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        for target in [
            Target::group("web").unwrap(),
            Target::All,
            Target::list("x,web.01").unwrap(),
        ] {
            assert!(run(&seal(&master, &command(target)), &key, NOW).is_ok());
        }
    }

    #[test]
    fn a_command_signed_by_another_key_is_refused_as_not_from_the_master() {
        let master = KeyPair::generate();
        let forger = KeyPair::generate();
        let cmd = command(Target::All);
        let refusal = run(
            &seal(&forger, &cmd),
            &MasterKey::Pinned(master.public()),
            NOW,
        )
        .unwrap_err();
        assert!(refusal.is_forgery());
        assert_eq!(
            refusal.job_id(),
            Some(cmd.job_id),
            "the claimed job id is reported"
        );
        let text = refusal.to_string();
        assert!(
            text.contains("not the master's") && text.contains("pinned master key"),
            "{text}"
        );
    }

    #[test]
    fn a_tampered_payload_is_refused_for_its_bad_signature() {
        let master = KeyPair::generate();
        let cmd = command(Target::All);
        let mut envelope = Envelope::decode(&seal(&master, &cmd)).unwrap();
        let mut tampered = cmd.clone();
        tampered.exec.argv = vec!["rm".into(), "-rf".into(), "/".into()];
        envelope.payload = rmp_serde::to_vec_named(&tampered).unwrap();
        let bytes = rmp_serde::to_vec_named(&envelope).unwrap();
        let refusal = run(&bytes, &MasterKey::Pinned(master.public()), NOW).unwrap_err();
        assert!(refusal.is_forgery());
        assert_eq!(refusal.job_id(), Some(cmd.job_id));
        assert!(refusal.to_string().contains("bad signature"), "{refusal}");
    }

    #[test]
    fn the_fingerprint_accepts_its_key_and_refuses_others() {
        let master = KeyPair::generate();
        let by_fp = MasterKey::Fingerprint(master.public().fingerprint());
        let cmd = command(Target::All);
        assert_eq!(
            run(&seal(&master, &cmd), &by_fp, NOW).unwrap().signer,
            master.public()
        );
        let refusal = run(&seal(&KeyPair::generate(), &cmd), &by_fp, NOW).unwrap_err();
        assert!(
            refusal.is_forgery() && refusal.to_string().contains("fingerprint"),
            "{refusal}"
        );
    }

    #[test]
    fn garbage_is_refused_without_a_job_id() {
        let master = KeyPair::generate();
        let refusal = run(b"hello", &MasterKey::Pinned(master.public()), NOW).unwrap_err();
        assert!(matches!(refusal, Refusal::Undecodable(_)));
        assert_eq!(refusal.job_id(), None);
    }

    #[test]
    fn an_expired_command_is_refused_strictly_after_its_expiry() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        let cmd = command(Target::All);
        let bytes = seal(&master, &cmd);
        assert!(
            run(&bytes, &key, cmd.expires_at_ms).is_ok(),
            "at the expiry it still runs"
        );
        let refusal = run(&bytes, &key, cmd.expires_at_ms + 1).unwrap_err();
        assert!(matches!(refusal, Refusal::Expired { .. }));
        assert!(refusal.to_string().starts_with("expired"), "{refusal}");
        // The skew window does not extend an expiry.
        assert!(run(&bytes, &key, cmd.expires_at_ms + SKEW / 2).is_err());
    }

    #[test]
    fn a_future_dated_command_is_refused_beyond_the_skew_only() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        let mut cmd = command(Target::All);
        cmd.issued_at_ms = NOW + SKEW;
        cmd.expires_at_ms = NOW + 10 * SKEW;
        assert!(
            run(&seal(&master, &cmd), &key, NOW).is_ok(),
            "within the skew"
        );
        cmd.issued_at_ms = NOW + SKEW + 1;
        let refusal = run(&seal(&master, &cmd), &key, NOW).unwrap_err();
        assert!(matches!(refusal, Refusal::FutureDated { .. }));
        assert!(refusal.to_string().contains("future-dated"), "{refusal}");
    }

    #[test]
    fn a_copy_whose_recipients_do_not_name_the_minion_is_refused() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        let mut copy = command(Target::pattern("web.*").unwrap());
        copy.recipients = vec!["web.99".into()];
        let refusal = run(&seal(&master, &copy), &key, NOW).unwrap_err();
        assert!(matches!(refusal, Refusal::NotForMe { .. }), "{refusal}");
        copy.recipients.push("web.01".into());
        assert!(run(&seal(&master, &copy), &key, NOW).is_ok());
    }

    #[test]
    fn a_command_for_someone_else_is_refused() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        for target in [
            Target::pattern("db.*").unwrap(),
            Target::group("db").unwrap(),
            Target::list("web.02").unwrap(),
        ] {
            let refusal = run(&seal(&master, &command(target)), &key, NOW).unwrap_err();
            assert!(matches!(refusal, Refusal::NotForMe { .. }));
            assert!(
                refusal.to_string().contains("not for this minion"),
                "{refusal}"
            );
        }
    }

    #[test]
    fn a_job_already_in_the_journal_is_refused_as_replayed() {
        let master = KeyPair::generate();
        let cmd = command(Target::All);
        let groups = groups();
        let checker = Checker {
            id: "web.01",
            groups: &groups,
            now_ms: NOW,
            skew_ms: SKEW,
        };
        let seen = |id: &Uuid| *id == cmd.job_id;
        let refusal = verify(
            &seal(&master, &cmd),
            &MasterKey::Pinned(master.public()),
            &checker,
            seen,
        )
        .unwrap_err();
        assert_eq!(refusal, Refusal::Replayed { job_id: cmd.job_id });
        assert!(refusal.to_string().contains("replayed"), "{refusal}");
    }

    #[test]
    fn a_command_whose_signature_does_not_verify_is_never_answered() {
        let master = KeyPair::generate();
        let key = MasterKey::Pinned(master.public());
        let cmd = command(Target::All);
        let forged = run(&seal(&KeyPair::generate(), &cmd), &key, NOW).unwrap_err();
        assert_eq!(forged.job_id(), Some(cmd.job_id), "logged as claimed");
        assert_eq!(forged.reply_to(), None);
        let by_fp = MasterKey::Fingerprint(master.public().fingerprint());
        let forged = run(&seal(&KeyPair::generate(), &cmd), &by_fp, NOW).unwrap_err();
        assert_eq!(forged.reply_to(), None);
        // Verified but refused: answered.
        let expired = run(&seal(&master, &cmd), &key, cmd.expires_at_ms + 1).unwrap_err();
        assert_eq!(expired.reply_to(), Some(cmd.job_id));
        let replayed = Refusal::Replayed { job_id: cmd.job_id };
        assert_eq!(replayed.reply_to(), Some(cmd.job_id));
    }

    #[test]
    fn every_refusal_reason_is_short() {
        let job_id = Uuid::now_v7();
        let long_id = "a".repeat(255);
        let long_target = (0..200)
            .map(|i| format!("web.{i:04}"))
            .collect::<Vec<_>>()
            .join(",");
        let refusals = [
            Refusal::Undecodable("é".repeat(500)),
            Refusal::NotFromMaster {
                job_id: Some(job_id),
                detail: "x".repeat(500),
            },
            Refusal::NotForMe {
                job_id,
                target: long_target,
                id: long_id,
            },
            Refusal::Expired {
                job_id,
                expires_at_ms: 0,
                now_ms: u64::MAX,
            },
            Refusal::FutureDated {
                job_id,
                issued_at_ms: u64::MAX,
                now_ms: 0,
                skew_ms: u64::MAX,
            },
            Refusal::Replayed { job_id },
        ];
        for refusal in refusals {
            let reason = refusal.reason();
            assert!(
                reason.len() <= MAX_REFUSAL_BYTES,
                "{} bytes: {reason}",
                reason.len()
            );
            assert!(refusal.to_string().len() < 200, "{refusal}");
        }
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ééé", 5), "é…");
        assert_eq!(clip("ééé", 4), "…", "cut on a character boundary");
        assert!(clip(&"é".repeat(100), 10).len() <= 10);
    }
}
