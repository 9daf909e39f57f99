//! PLAIN and AMQPLAIN authentication against the configured users.
//!
//! Only these two mechanisms are offered: clients pick the first mechanism they know
//! from the broker's list, so an advertised but missing one would lock them out.

use crate::codec::table::check_table_body;
use crate::config::User;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::net::IpAddr;

/// The mechanisms offered in `connection.start`, space-separated as the spec asks.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// Checks a `connection.start-ok` response; returns the authenticated user's name, or
/// the reason for refusing (sent to the client with 403 ACCESS_REFUSED).
pub fn authenticate(
    mechanism: &str,
    response: &[u8],
    peer: IpAddr,
    users: &[User],
) -> Result<String, String> {
    let (name, password) = match mechanism {
        "PLAIN" => plain(response),
        "AMQPLAIN" => amqplain(response),
        other => {
            return Err(format!(
                "unsupported authentication mechanism '{other}'; this broker offers {MECHANISMS}"
            ));
        }
    }
    .ok_or_else(|| format!("malformed {mechanism} response"))?;
    let refused = || {
        format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        )
    };
    let user = users.iter().find(|u| u.name == name).ok_or_else(refused)?;
    if !constant_time_eq(user.password.as_bytes(), password.as_bytes()) {
        return Err(refused());
    }
    if user.loopback_only && !peer.is_loopback() {
        return Err(format!(
            "user '{name}' can only connect via localhost; configure another user for remote clients"
        ));
    }
    Ok(name)
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`.
fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    parts
        .next()
        .is_none()
        .then(|| (name.to_owned(), password.to_owned()))
}

/// AMQPLAIN: a field table body (no length prefix) with `LOGIN` and `PASSWORD`.
fn amqplain(response: &[u8]) -> Option<(String, String)> {
    check_table_body(response).ok()?;
    let mut framed = u32::try_from(response.len()).ok()?.to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table): (_, FieldTable) =
        amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn guest_is_accepted_from_loopback_only() {
        let users = [User::guest()];
        assert_eq!(
            authenticate("PLAIN", b"\0guest\0guest", LOOPBACK, &users).as_deref(),
            Ok("guest")
        );
        let remote = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(
            authenticate("PLAIN", b"\0guest\0guest", remote, &users)
                .unwrap_err()
                .contains("localhost")
        );
    }

    #[test]
    fn wrong_password_and_unknown_mechanism_are_refused() {
        let users = [User::guest()];
        assert!(authenticate("PLAIN", b"\0guest\0nope", LOOPBACK, &users).is_err());
        assert!(
            authenticate("EXTERNAL", b"", LOOPBACK, &users)
                .unwrap_err()
                .contains("PLAIN AMQPLAIN")
        );
    }

    #[test]
    fn amqplain_reads_login_and_password() {
        let mut body = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            body.push(k.len() as u8);
            body.extend_from_slice(k.as_bytes());
            body.push(b'S');
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v.as_bytes());
        }
        assert_eq!(
            authenticate("AMQPLAIN", &body, LOOPBACK, &[User::guest()]).as_deref(),
            Ok("guest")
        );
    }
}
